//! The curator as a built-in component: `roost curate` of this binary, reading the
//! configuration roost writes before starting it; health by output, from
//! `curator-report.json`: a detector far behind or stalled is an error of the component, never
//! of the recording (the recorder goes on whatever the curator does).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use super::{Builtin, BuiltinError};
use crate::curate::report::{CuratorReport, read_report, report_path};
use crate::curate::{CURATOR_COMPONENT, CurateConfig};
use crate::errors;
use crate::observe::{BuiltinHealth, BuiltinReport, ComponentRun, Trouble};
use crate::spec::Deployment;
use crate::status::Reason;

/// The curator built-in of a roost running `exe` with its state in `state_dir`.
pub struct Curator {
    exe: PathBuf,
    state_dir: PathBuf,
}

impl Curator {
    /// The curator started as `<exe> curate`, its files in `state_dir`.
    pub fn new(exe: &Path, state_dir: &Path) -> Self {
        Self {
            exe: exe.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        }
    }

    fn configured(&self) -> super::Configured<'_> {
        super::Configured {
            component: CURATOR_COMPONENT,
            subcommand: "curate",
            exe: &self.exe,
            state_dir: &self.state_dir,
            config_path: CurateConfig::path(&self.state_dir),
        }
    }
}

impl Builtin for Curator {
    fn name(&self) -> &'static str {
        CURATOR_COMPONENT
    }

    fn run(&self, d: &Deployment) -> Option<ComponentRun> {
        let config = CurateConfig::from_deployment(d, &self.state_dir)?;
        let (restart, stop) = (crate::spec::RestartPolicy::Always, Duration::from_secs(10));
        let storage = config.storage_path();
        // Its storage and report; no network unless a detector asks for it; detectors may be
        // interpreters with a JIT (no W^X rule).
        let network = d.spec.detectors.iter().any(|det| det.network);
        let confinement = crate::sandbox::Confinement::storage_builtin(
            &self.state_dir,
            &storage,
            network,
            false,
            false,
        );
        Some(
            self.configured()
                .run(d, &config, restart, stop, confinement),
        )
    }

    fn prepare(&self, d: &Deployment) -> Result<(), BuiltinError> {
        let Some(config) = CurateConfig::from_deployment(d, &self.state_dir) else {
            return Ok(());
        };
        self.configured().prepared(config.write(&self.state_dir))
    }

    fn health(&self, pid: Option<u32>, now: Timestamp) -> BuiltinHealth {
        match read_report(&self.state_dir).filter(|r| Some(r.pid) == pid) {
            Some(report) => BuiltinHealth::Reported(reported(&report, now)),
            None => BuiltinHealth::Silent {
                within: crate::recorder::FIRST_REPORT_WITHIN,
                code: &errors::CURATOR_SILENT,
                reason: Reason::CuratorError,
            },
        }
    }

    fn output_file(&self) -> Option<PathBuf> {
        Some(report_path(&self.state_dir))
    }
}

fn reported(report: &CuratorReport, now: Timestamp) -> BuiltinReport {
    // A report not refreshed for three heartbeats and a grace: the curator is hung (it
    // rewrites it at least every heartbeat, during a long detector run too), whatever its
    // last words said.
    let stale_at = report.updated_at.and_then(|t| {
        let after = jiff::SignedDuration::try_from(crate::recorder::HEARTBEAT * 3).ok()?;
        t.checked_add(after + crate::recorder::FILE_GRACE).ok()
    });
    if stale_at.is_some_and(|at| now > at) {
        return BuiltinReport {
            output: serde_json::to_value(report).unwrap_or(serde_json::Value::Null),
            trouble: Some(Trouble {
                code: &errors::CURATOR_SILENT,
                reason: Reason::CuratorError,
                message: format!(
                    "the curator has not reported since {}; it may be hung (its report is due every minute)",
                    report.updated_at.map(|t| t.to_string()).unwrap_or_default()
                ),
            }),
            produced: true,
            look_again_at: None,
        };
    }
    let trouble = report.error.as_ref().map(|p| {
        let code = errors::CATALOGUE
            .iter()
            .find(|c| c.code == p.code)
            .unwrap_or(&errors::CURATOR_SILENT);
        let reason = match code.code {
            "DEP_E611" => Reason::DetectorBehind,
            "DEP_E612" => Reason::DetectorStalled,
            "DEP_E601" | "DEP_E602" | "DEP_E603" | "DEP_E604" | "DEP_E605" | "DEP_E610" => {
                Reason::DetectorFailing
            }
            _ => Reason::CuratorError,
        };
        Trouble {
            code,
            reason,
            message: p.message.clone(),
        }
    });
    let stale = stale_at.filter(|t| *t > now);
    BuiltinReport {
        output: serde_json::to_value(report).unwrap_or(serde_json::Value::Null),
        trouble,
        produced: true,
        look_again_at: stale,
    }
}
