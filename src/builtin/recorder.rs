//! The recorder as a built-in component: `roost record` of this binary, reading the
//! configuration roost writes before starting it; its health is read from the report it keeps
//! in the state folder's run-time folder (`run/recorder-report.json`). Never judges what the report means for the
//! deployment: that is the planner's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use super::{Builtin, BuiltinError};
use crate::errors::{self, ErrorCode};
use crate::observe::{BuiltinHealth, BuiltinReport, ComponentRun, Trouble};
use crate::recorder::{
    FILE_GRACE, FIRST_REPORT_WITHIN, HEARTBEAT, Health, RecordConfig, RecorderReport,
};
use crate::spec::{self, Deployment, recorder::RECORDER_COMPONENT};
use crate::status::Reason;

/// How long a recorder lets its last file go before it has finished and registered it.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The recorder built-in of a roost running `exe` with its state in `state_dir`.
pub struct Recorder {
    exe: PathBuf,
    state_dir: PathBuf,
}

impl Recorder {
    /// The recorder started as `<exe> record`, its files in `state_dir`.
    pub fn new(exe: &Path, state_dir: &Path) -> Self {
        Self {
            exe: exe.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        }
    }

    fn configured(&self) -> super::Configured<'_> {
        super::Configured {
            component: RECORDER_COMPONENT,
            subcommand: "record",
            exe: &self.exe,
            state_dir: &self.state_dir,
            config_path: RecordConfig::path(&self.state_dir),
        }
    }
}

impl Builtin for Recorder {
    fn name(&self) -> &'static str {
        RECORDER_COMPONENT
    }

    fn run(&self, d: &Deployment) -> Option<ComponentRun> {
        let config = RecordConfig::from_deployment(d, &self.state_dir)?;
        let restart = config
            .recorder
            .restart_policy
            .unwrap_or(d.spec.restart_policy);
        let storage = config.storage_path(&self.state_dir);
        // Its storage and reports, the sound devices, no network, only roost's own code.
        let confinement = crate::sandbox::Confinement::storage_builtin(
            &self.state_dir,
            &storage,
            false,
            true,
            true,
        );
        Some(
            self.configured()
                .run(d, &config, restart, STOP_TIMEOUT, confinement),
        )
    }

    fn prepare(&self, d: &Deployment) -> Result<(), BuiltinError> {
        let Some(config) = RecordConfig::from_deployment(d, &self.state_dir) else {
            return Ok(());
        };
        self.configured().prepared(config.write(&self.state_dir))?;
        // Made here, as roost, when its user could not make it (a folder under one of root's),
        // but never on a card that is not mounted: the recorder waits for that itself.
        let storage = config.storage_path(&self.state_dir);
        if crate::sandbox::builtin_user().is_some()
            && !storage.exists()
            && crate::storage::Folders::new(&storage, &config.storage)
                .check_mounted()
                .is_ok()
        {
            let _ = crate::fsutil::create_dir_all_traversable(&storage);
        }
        Ok(())
    }

    fn health(&self, pid: Option<u32>, now: Timestamp) -> BuiltinHealth {
        match crate::recorder::read_report(&self.state_dir).filter(|r| Some(r.pid) == pid) {
            Some(report) => BuiltinHealth::Reported(reported(&report, now)),
            // Just started: it has until its first report is due, then it is an error.
            None => BuiltinHealth::Silent {
                within: FIRST_REPORT_WITHIN,
                code: &errors::NO_RECORDINGS,
                reason: Reason::NoRecordings,
            },
        }
    }

    fn desired_changed(&self, previous: &Deployment, next: &Deployment, now: Timestamp) {
        end_deployment_if_left(&self.state_dir, previous, next, now);
    }

    fn output_file(&self) -> Option<PathBuf> {
        Some(crate::recorder::report_path(&self.state_dir))
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
        output: output(report),
        trouble,
        produced: report.files_written > 0,
        look_again_at,
    }
}

/// The part of the recorder's report shown under the `recorder` component in status.json.
fn output(r: &RecorderReport) -> serde_json::Value {
    serde_json::json!({
        "state": r.state,
        "device": r.device,
        "filesWritten": r.files_written,
        "lastFile": r.last_file,
        "lastFileAt": r.last_file_at,
        "samplesCaptured": r.samples_captured,
        "samplesDropped": r.samples_dropped,
        "samplesDiscarded": r.samples_discarded,
        "overruns": r.overruns,
        "filesDiscarded": r.files_discarded,
        "expectedFileBy": r.expected_file_by,
        "nextWindowAt": r.next_window_at,
        "nextWindowFrom": r.next_window_from,
        "rowsOwed": r.rows_owed,
        "filesDeleted": r.files_deleted,
        "recentlyDeleted": r.recently_deleted,
        "timeOverlaps": r.time_overlaps,
        "clockSynchronized": r.clock_synchronized,
        "warnings": r.warnings,
        "error": r.error,
    })
}

fn reason_of(code: &ErrorCode) -> Reason {
    match code.code {
        "DEP_E301" => Reason::StorageUnusable,
        "DEP_E302" => Reason::LowDiskSpace,
        "DEP_E303" => Reason::DiskFull,
        "DEP_E311" => Reason::AudioDeviceUnavailable,
        "DEP_E312" => Reason::AudioFormatUnsupported,
        "DEP_E313" => Reason::NoRecordings,
        "DEP_E314" => Reason::SamplesDropped,
        "DEP_E315" => Reason::InputNotRealTime,
        "DEP_E321" => Reason::MetadataDbError,
        _ => Reason::RecorderError,
    }
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
