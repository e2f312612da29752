//! The connector as a built-in component: `roost connect` of this binary, reading the
//! configuration roost writes before starting it; its health is read from its report
//! (`connect-report.json`). A link that is down is a warning in its output, never an error of
//! the deployment: the recording does not depend on the network.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;

use super::process::{Adapter, Process};
use crate::connect::ConnectConfig;
use crate::connect::messages::CONNECT_COMPONENT;
use crate::connect::report::ConnectReport;
use crate::observe::{BuiltinHealth, BuiltinReport};
use crate::sandbox::Confinement;
use crate::spec::{Deployment, RestartPolicy};

/// The connector built-in: `<exe> connect`.
pub type Connect = Adapter<ConnectProcess>;

/// How the connector runs and what its report means (never trouble of the deployment).
pub struct ConnectProcess;

impl Process for ConnectProcess {
    const NAME: &'static str = CONNECT_COMPONENT;
    const SUBCOMMAND: &'static str = "connect";
    type Config = ConnectConfig;
    type Report = ConnectReport;

    fn config(d: &Deployment, state_dir: &Path) -> Option<ConnectConfig> {
        ConnectConfig::from_deployment(d, state_dir)
    }

    fn how(
        _config: &ConnectConfig,
        d: &Deployment,
        state_dir: &Path,
    ) -> (RestartPolicy, Duration, Confinement) {
        let run_dir = crate::fsutil::run_dir(state_dir);
        // The outbox (in the state folder) and its report; the network.
        let mut confinement =
            Confinement::builtin(state_dir, &[state_dir, &run_dir], true, false, true);
        // node_exporter's textfile folder: written, never taken over.
        if let Some(folder) = (d.spec.connect.as_ref())
            .and_then(|c| c.prometheus.as_ref())
            .and_then(|p| p.textfile.as_path().parent())
        {
            confinement.shared.push(folder.to_path_buf());
        }
        (RestartPolicy::Always, Duration::from_secs(5), confinement)
    }

    fn pid(report: &ConnectReport) -> u32 {
        report.pid
    }

    fn judge(report: &ConnectReport, _now: Timestamp) -> BuiltinReport {
        BuiltinReport {
            output: serde_json::to_value(report).unwrap_or(serde_json::Value::Null),
            trouble: None,
            produced: true,
            look_again_at: None,
        }
    }

    fn silent() -> BuiltinHealth {
        BuiltinHealth::Reported(BuiltinReport {
            output: serde_json::Value::Null,
            trouble: None,
            produced: true,
            look_again_at: None,
        })
    }
}
