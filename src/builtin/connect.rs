//! The connector as a built-in component: `roost connect` of this binary, reading the
//! configuration roost writes before starting it; its health is read from its report
//! (`connect-report.json`). A link that is down is a warning in its output, never an error of
//! the deployment: the recording does not depend on the network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use super::{Builtin, BuiltinError};
use crate::connect::ConnectConfig;
use crate::connect::messages::CONNECT_COMPONENT;
use crate::observe::{BuiltinHealth, BuiltinReport, ComponentRun};
use crate::spec::Deployment;

/// The connector built-in of a roost running `exe` with its state in `state_dir`.
pub struct Connect {
    exe: PathBuf,
    state_dir: PathBuf,
}

impl Connect {
    /// The connector started as `<exe> connect`, its files in `state_dir`.
    pub fn new(exe: &Path, state_dir: &Path) -> Self {
        Self {
            exe: exe.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        }
    }

    fn configured(&self) -> super::Configured<'_> {
        super::Configured {
            component: CONNECT_COMPONENT,
            subcommand: "connect",
            exe: &self.exe,
            state_dir: &self.state_dir,
            config_path: ConnectConfig::path(&self.state_dir),
        }
    }
}

impl Builtin for Connect {
    fn name(&self) -> &'static str {
        CONNECT_COMPONENT
    }

    fn run(&self, d: &Deployment) -> Option<ComponentRun> {
        let config = ConnectConfig::from_deployment(d, &self.state_dir)?;
        let (restart, stop) = (crate::spec::RestartPolicy::Always, Duration::from_secs(5));
        let run_dir = crate::fsutil::run_dir(&self.state_dir);
        // The outbox (in the state folder) and its report; the network.
        let mut confinement = crate::sandbox::Confinement::builtin(
            &self.state_dir,
            &[&self.state_dir, &run_dir],
            true,
            false,
            true,
        );
        // node_exporter's textfile folder: written, never taken over.
        if let Some(folder) = (d.spec.connect.as_ref())
            .and_then(|c| c.prometheus.as_ref())
            .and_then(|p| p.textfile.as_path().parent())
        {
            confinement.shared.push(folder.to_path_buf());
        }
        Some(
            self.configured()
                .run(d, &config, restart, stop, confinement),
        )
    }

    fn prepare(&self, d: &Deployment) -> Result<(), BuiltinError> {
        let Some(config) = ConnectConfig::from_deployment(d, &self.state_dir) else {
            return Ok(());
        };
        self.configured().prepared(config.write(&self.state_dir))
    }

    fn health(&self, pid: Option<u32>, _now: Timestamp) -> BuiltinHealth {
        let report =
            crate::connect::report::read_report(&self.state_dir).filter(|r| Some(r.pid) == pid);
        BuiltinHealth::Reported(BuiltinReport {
            output: report
                .and_then(|r| serde_json::to_value(r).ok())
                .unwrap_or(serde_json::Value::Null),
            trouble: None,
            produced: true,
            look_again_at: None,
        })
    }

    fn output_file(&self) -> Option<PathBuf> {
        Some(crate::connect::report::report_path(&self.state_dir))
    }
}
