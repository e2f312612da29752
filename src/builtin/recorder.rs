//! The recorder as a built-in component: `roost record` of this binary, reading the
//! configuration roost writes before starting it; its health is read from the report it keeps
//! in the state folder's run-time folder (`run/recorder-report.json`). Never judges what the report means for the
//! deployment: that is the planner's.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;

use super::process::{Adapter, Process};
use crate::errors::{self, ErrorCode};
use crate::observe::{BuiltinHealth, BuiltinReport, Trouble};
use crate::recorder::{
    FILE_GRACE, FIRST_REPORT_WITHIN, HEARTBEAT, Health, RecordConfig, RecorderReport,
};
use crate::sandbox::Confinement;
use crate::spec::{self, Deployment, RestartPolicy, recorder::RECORDER_COMPONENT};
use crate::status::Reason;

/// How long a recorder lets its last file go before it has finished and registered it.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The recorder built-in: `<exe> record`.
pub type Recorder = Adapter<RecordProcess>;

/// How the recorder runs and what its report means.
pub struct RecordProcess;

impl Process for RecordProcess {
    const NAME: &'static str = RECORDER_COMPONENT;
    const SUBCOMMAND: &'static str = "record";
    type Config = RecordConfig;
    type Report = RecorderReport;

    fn config(d: &Deployment, state_dir: &Path) -> Option<RecordConfig> {
        RecordConfig::from_deployment(d, state_dir)
    }

    fn how(
        config: &RecordConfig,
        d: &Deployment,
        state_dir: &Path,
    ) -> (RestartPolicy, Duration, Confinement) {
        let restart = (config.recorder.restart_policy).unwrap_or(d.spec.restart_policy);
        let storage = config.storage_path(state_dir);
        // Its storage and reports, the sound devices, no network, only roost's own code.
        let confinement = Confinement::storage_builtin(state_dir, &storage, false, true, true);
        (restart, STOP_TIMEOUT, confinement)
    }

    fn pid(report: &RecorderReport) -> u32 {
        report.pid
    }

    fn judge(report: &RecorderReport, now: Timestamp) -> BuiltinReport {
        reported(report, now)
    }

    // Just started: it has until its first report is due, then it is an error.
    fn silent() -> BuiltinHealth {
        BuiltinHealth::Silent {
            within: FIRST_REPORT_WITHIN,
            code: &errors::NO_RECORDINGS,
            reason: Reason::NoRecordings,
        }
    }

    // Made here, as roost, when its user could not make it (a folder under one of root's),
    // but never on a card that is not mounted: the recorder waits for that itself.
    fn prepare_more(config: &RecordConfig, state_dir: &Path) {
        let storage = config.storage_path(state_dir);
        if crate::sandbox::builtin_user().is_some()
            && !storage.exists()
            && crate::storage::Folders::new(&storage, &config.storage)
                .check_mounted()
                .is_ok()
        {
            let _ = crate::fsutil::create_dir_all_traversable(&storage);
        }
    }

    fn desired_changed(state_dir: &Path, previous: &Deployment, next: &Deployment, now: Timestamp) {
        end_deployment_if_left(state_dir, previous, next, now);
    }
}

/// Health is judged by output: a running recorder whose files do not arrive is in trouble,
/// whatever its process does.
fn reported(report: &RecorderReport, now: Timestamp) -> BuiltinReport {
    let trouble = match crate::recorder::assess(report, now) {
        Health::Healthy | Health::Stopped => None,
        Health::Error { code, message } => Some(Trouble {
            code,
            reason: reason_of(code),
            message,
        }),
    };
    // Look again when the next file is overdue, or when the report would go stale.
    let stale = report.updated_at + HEARTBEAT * 3 + FILE_GRACE;
    let look_again_at = report
        .expected_file_by
        .map(|t| t + FILE_GRACE)
        .into_iter()
        .chain([stale])
        .filter(|t| *t > now)
        .min();
    BuiltinReport {
        output: crate::recorder::RecorderOutput::from(report).to_value(),
        trouble,
        produced: report.files_written > 0,
        look_again_at,
    }
}

/// The catalogue's reason for the code, else the recorder's general one.
fn reason_of(code: &ErrorCode) -> Reason {
    code.reason().unwrap_or(Reason::RecorderError)
}

/// Marks the deployment's row in metadata.db as ended when the new desired state stops
/// recording under that name (stopped, recorder removed, renamed, storage moved).
fn end_deployment_if_left(
    state_dir: &Path,
    previous: &Deployment,
    next: &Deployment,
    now: Timestamp,
) {
    let Some(old) = RecordConfig::from_deployment(previous, state_dir) else {
        return;
    };
    let new = RecordConfig::from_deployment(next, state_dir);
    let continues = next.spec.state == spec::RunState::Running
        && new
            .as_ref()
            .is_some_and(|n| n.deployment == old.deployment && n.storage.path == old.storage.path);
    if continues {
        return;
    }
    let root = old.storage_path(state_dir);
    match crate::storage::end_deployment(&root, &old.storage, &old.deployment, now) {
        Ok(_) => tracing::info!(deployment = %old.deployment, "recording deployment ended"),
        Err(e) => {
            tracing::warn!(error = %errors::chain(&e), "cannot mark the deployment ended in metadata.db")
        }
    }
}
