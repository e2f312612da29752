//! The curator as a built-in component: `roost curate` of this binary, reading the
//! configuration roost writes before starting it; health by output, from
//! `curator-report.json`: a detector far behind or stalled is an error of the component, never
//! of the recording (the recorder goes on whatever the curator does).

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;

use super::process::{Adapter, Process};
use crate::curate::report::CuratorReport;
use crate::curate::{CURATOR_COMPONENT, CurateConfig};
use crate::errors;
use crate::observe::{BuiltinHealth, BuiltinReport, Trouble};
use crate::sandbox::Confinement;
use crate::spec::{Deployment, RestartPolicy};
use crate::status::Reason;

/// The curator built-in: `<exe> curate`.
pub type Curator = Adapter<CurateProcess>;

/// How the curator runs and what its report means.
pub struct CurateProcess;

impl Process for CurateProcess {
    const NAME: &'static str = CURATOR_COMPONENT;
    const SUBCOMMAND: &'static str = "curate";
    type Config = CurateConfig;
    type Report = CuratorReport;

    fn config(d: &Deployment, state_dir: &Path) -> Option<CurateConfig> {
        CurateConfig::from_deployment(d, state_dir)
    }

    fn how(
        config: &CurateConfig,
        d: &Deployment,
        state_dir: &Path,
    ) -> (RestartPolicy, Duration, Confinement) {
        // Its storage and report; no network unless a detector asks for it; detectors may be
        // interpreters with a JIT (no W^X rule).
        let network = d.spec.detectors.iter().any(|det| det.network);
        let storage = config.storage_path();
        let confinement = Confinement::storage_builtin(state_dir, &storage, network, false, false);
        (RestartPolicy::Always, Duration::from_secs(10), confinement)
    }

    fn pid(report: &CuratorReport) -> u32 {
        report.pid
    }

    fn judge(report: &CuratorReport, now: Timestamp) -> BuiltinReport {
        reported(report, now)
    }

    fn silent() -> BuiltinHealth {
        BuiltinHealth::Silent {
            within: crate::recorder::FIRST_REPORT_WITHIN,
            code: &errors::CURATOR_SILENT,
            reason: Reason::CuratorError,
        }
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
        // Its detectors' codes carry their reason; anything else (its storage, itself) is
        // the curator's trouble, never the recording's.
        let reason = (code.reason())
            .filter(|_| code.code.starts_with("DEP_E6"))
            .unwrap_or(Reason::CuratorError);
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
