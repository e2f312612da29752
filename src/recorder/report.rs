//! The recorder's report: what it produced and what is wrong, written to
//! `<state-dir>/run/recorder-report.json` (a run-time folder: [`crate::fsutil::RUN_DIR`]) (whole or not at all, not fsynced) on every file, every
//! state change and fault, and at least every [`HEARTBEAT`]. [`assess`] turns a report into health for the reconciler and
//! `roost check`: output decides, so a recorder that runs but writes nothing is an error.

use std::path::PathBuf;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::errors::{self, ErrorCode};
use crate::storage::RepairReport;

/// File name of the report in the state folder.
pub const REPORT_FILE: &str = "recorder-report.json";

/// The report is rewritten at least this often while the recorder runs, even when nothing a
/// reader acts on changed: the reconciler takes a report three heartbeats old (plus
/// [`FILE_GRACE`]) for a hung recorder. Files, state changes and faults rewrite it at once.
pub const HEARTBEAT: Duration = Duration::from_secs(60);

/// A recorder that has not written its first report this long after its start is in error.
pub const FIRST_REPORT_WITHIN: Duration = Duration::from_secs(30);

/// How late a file may be before the recorder counts as producing nothing.
pub const FILE_GRACE: SignedDuration = SignedDuration::from_secs(30);

/// What the recorder is doing (`state` in the report and in status.json's recorder output).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RecorderState {
    /// Opening the device and the storage.
    Starting,
    /// Writing a file.
    Recording,
    /// Outside the windows or between files.
    Waiting,
    /// Samples arrive far faster than real time; nothing is recorded until they do not.
    InputNotRealTime,
    /// The device is missing or stopped delivering samples; retrying.
    DeviceUnavailable,
    /// The storage cannot be written (or is full).
    StorageError,
    /// Free space is below minFreeSpace and onLowSpace keeps files from being written.
    LowSpace,
    /// The energy policy (`spec.power.saving`) stopped recording until power is back
    /// (DEP_E906); the last file was finished and kept.
    PowerSaving,
    /// Exited after SIGTERM/SIGINT (also what an output without a state reads as: never
    /// greener than what is known).
    #[default]
    Stopped,
}

/// An error in the report: a catalogue code and a message for humans.
pub type ReportError = crate::errors::Problem;

/// `<state-dir>/run/recorder-report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecorderReport {
    /// The recorder's process id (the reconciler ignores a report of another process).
    pub pid: u32,
    /// What it is doing now.
    pub state: RecorderState,
    /// The deployment it records for (metadata.db's `deployment.name`).
    pub deployment: String,
    /// The ALSA device name it captures from.
    pub device: String,
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Channels per frame.
    pub channels: u16,
    /// `i16`, `i24` or `f32`.
    pub sample_format: String,
    /// The storage folder (recordings/ and metadata.db inside).
    pub storage: PathBuf,
    /// When this recorder process started.
    pub started_at: Timestamp,
    /// Recordings completed and placed in recordings/ since it started.
    pub files_written: u64,
    /// The newest recording.
    pub last_file: Option<PathBuf>,
    /// When the newest recording was completed.
    pub last_file_at: Option<Timestamp>,
    /// Frames (samples per channel) delivered by the device since the recorder started.
    pub samples_captured: u64,
    /// Frames lost because the writer could not keep up (ring buffer full).
    pub samples_dropped: u64,
    /// Frames the device delivered that could not be written: the storage failed or was low on
    /// space, or the input was not in real time. (Frames outside the windows are not counted.)
    #[serde(default)]
    pub samples_discarded: u64,
    /// Overruns (xruns) the audio driver reported.
    pub overruns: u64,
    /// Files discarded or cut short by onLowSpace or a full disk.
    pub files_discarded: u64,
    /// When the next file must be complete if all is well.
    pub expected_file_by: Option<Timestamp>,
    /// While waiting outside the recording windows: when the next window opens (null: none
    /// within the search horizon of about a year, or not waiting for a window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window_at: Option<Timestamp>,
    /// While waiting outside the windows: what the next opening was computed from (the
    /// windows as written, and the location for sunrise and sunset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window_from: Option<String>,
    /// The fault that keeps it from recording as it should, if any.
    pub error: Option<ReportError>,
    /// What the start-up repair of the storage did (the latest paths of each kind), and in
    /// `repair.progress` how far it has got and its totals (a rebuild takes a while).
    #[serde(default)]
    pub repair: RepairReport,
    /// Finished files in recordings/ whose metadata.db row is not written yet (DEP_E321 once
    /// one is owed for more than a few seconds).
    #[serde(default)]
    pub rows_owed: u64,
    /// Recordings deleted by `onLowSpace: deleteOldest` since the recorder started, and the
    /// latest of them.
    #[serde(default)]
    pub files_deleted: u64,
    /// The latest recordings deleteOldest removed (newest last, a few).
    #[serde(default)]
    pub recently_deleted: Vec<PathBuf>,
    /// Files whose claimed start lies before the end of an earlier file (a clock stepped back).
    #[serde(default)]
    pub time_overlaps: u64,
    /// Whether the kernel says the wall clock is synchronised (null: unknown).
    #[serde(default)]
    pub clock_synchronized: Option<bool>,
    /// Conditions that do not stop recording but should be known (DEP_E304, DEP_E316, DEP_E317,
    /// the board's power and heat DEP_E901..E906).
    #[serde(default)]
    pub warnings: Vec<ReportError>,
    /// The board's power and heat as last read, and what the energy policy pauses; absent on a
    /// board without such sensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<crate::power::PowerOutput>,
    /// When this report was written.
    pub updated_at: Timestamp,
}

/// How the recorder is doing, judged from its report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Files arrive as expected (or none are expected right now).
    Healthy,
    /// Exited cleanly.
    Stopped,
    /// Not producing what it should: `code` is a `DEP_E3xx` catalogue entry.
    Error {
        /// The catalogue entry.
        code: &'static ErrorCode,
        /// What is wrong.
        message: String,
    },
}

/// Judges a report at `now`: its own error wins; a file overdue by more than [`FILE_GRACE`] is
/// DEP_E313; a report not refreshed for three heartbeats (a hung recorder) is DEP_E313 too.
pub fn assess(report: &RecorderReport, now: Timestamp) -> Health {
    if report.state == RecorderState::Stopped {
        return Health::Stopped;
    }
    if let Some(err) = &report.error {
        let code = errors::lookup(&err.code).unwrap_or(&errors::INTERNAL);
        return Health::Error {
            code,
            message: err.message.clone(),
        };
    }
    // A deadline a completed file already met is no deadline: a report the recorder has not
    // refreshed since is judged by its age below, never as a file overdue.
    let met = |due: Timestamp| report.last_file_at.is_some_and(|t| t >= due);
    if let Some(due) = report.expected_file_by.filter(|d| !met(*d))
        && now.duration_since(due) > FILE_GRACE
    {
        let last = match report.last_file_at {
            Some(t) => format!("the last file was completed at {t}"),
            None => "no file has been completed yet".to_string(),
        };
        return Health::Error {
            code: &errors::NO_RECORDINGS,
            message: format!("a recording was due by {due} and has not arrived; {last}"),
        };
    }
    let stale_after = SignedDuration::try_from(HEARTBEAT * 3)
        .unwrap_or(SignedDuration::from_secs(30))
        + FILE_GRACE;
    if now.duration_since(report.updated_at) > stale_after {
        return Health::Error {
            code: &errors::NO_RECORDINGS,
            message: format!(
                "the recorder has not reported since {}; it may be hung",
                report.updated_at
            ),
        };
    }
    Health::Healthy
}

/// `<state-dir>/run/recorder-report.json`, replaced whole (see [`crate::fsutil::replace_quietly`]).
impl crate::component::ReportFile for RecorderReport {
    const FILE: &'static str = REPORT_FILE;
    // Paths, device names and counters: nothing to mask (and written ~11 times a minute).
    const REDACT: bool = false;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A recording recorder's report started at `now` (for tests of what reads it).
    pub(crate) fn report(now: Timestamp) -> RecorderReport {
        RecorderReport {
            pid: 1,
            state: RecorderState::Recording,
            deployment: "meadow".into(),
            device: "default".into(),
            sample_rate: 48_000,
            channels: 1,
            sample_format: "i16".into(),
            storage: "/s".into(),
            started_at: now,
            files_written: 0,
            last_file: None,
            last_file_at: None,
            samples_captured: 0,
            samples_dropped: 0,
            samples_discarded: 0,
            overruns: 0,
            files_discarded: 0,
            expected_file_by: Some(now + SignedDuration::from_secs(60)),
            next_window_at: None,
            next_window_from: None,
            error: None,
            repair: RepairReport::default(),
            rows_owed: 0,
            files_deleted: 0,
            recently_deleted: Vec::new(),
            time_overlaps: 0,
            clock_synchronized: None,
            warnings: Vec::new(),
            power: None,
            updated_at: now,
        }
    }

    #[test]
    fn output_decides_health() {
        let t0: Timestamp = "2026-06-01T10:00:00Z".parse().unwrap();
        // Refreshed by heartbeats, but no new file: the file due at t0 + 60 s is what counts.
        let r = RecorderReport {
            updated_at: t0 + SignedDuration::from_secs(85),
            ..report(t0)
        };
        assert_eq!(
            assess(&r, t0 + SignedDuration::from_secs(80)),
            Health::Healthy
        );
        let Health::Error { code, .. } = assess(&r, t0 + SignedDuration::from_secs(91)) else {
            panic!()
        };
        assert_eq!(code.code, "DEP_E313");
        // The file due at t0 + 60 s arrived and nothing rewrote the report since: a deadline
        // met is no deadline (a false DEP_E313 from :30 to :00 of each minute otherwise);
        // only the report's age counts then.
        let met = RecorderReport {
            last_file_at: Some(t0 + SignedDuration::from_millis(60_200)),
            files_written: 1,
            updated_at: t0 + SignedDuration::from_millis(60_200),
            ..report(t0)
        };
        for after in [91, 119, 270] {
            assert_eq!(
                assess(&met, t0 + SignedDuration::from_secs(after)),
                Health::Healthy,
                "{after} s"
            );
        }
        let Health::Error { code, .. } = assess(&met, t0 + SignedDuration::from_secs(271)) else {
            panic!("a report not refreshed for three heartbeats and the grace")
        };
        assert_eq!(code.code, "DEP_E313");
        let waiting = RecorderReport {
            state: RecorderState::Waiting,
            expected_file_by: None,
            ..report(t0)
        };
        assert_eq!(
            assess(&waiting, t0 + SignedDuration::from_secs(60)),
            Health::Healthy
        );
        let Health::Error { code, .. } = assess(&waiting, t0 + SignedDuration::from_secs(3600))
        else {
            panic!()
        };
        assert_eq!(code.code, "DEP_E313");
        let lost = RecorderReport {
            error: Some(ReportError::new(errors::AUDIO_DEVICE_UNAVAILABLE, "gone")),
            ..r.clone()
        };
        let Health::Error { code, .. } = assess(&lost, t0) else {
            panic!()
        };
        assert_eq!(code.code, "DEP_E311");
        let stopped = RecorderReport {
            state: RecorderState::Stopped,
            ..r
        };
        assert_eq!(
            assess(&stopped, t0 + SignedDuration::from_secs(9999)),
            Health::Stopped
        );
    }

    #[test]
    fn report_round_trips_with_camel_case_names() {
        let t0: Timestamp = "2026-06-01T10:00:00Z".parse().unwrap();
        let json = serde_json::to_value(report(t0)).unwrap();
        for key in [
            "pid",
            "state",
            "device",
            "sampleRate",
            "channels",
            "filesWritten",
            "lastFile",
            "lastFileAt",
            "samplesCaptured",
            "samplesDropped",
            "overruns",
            "expectedFileBy",
            "error",
            "updatedAt",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["state"], "recording");
        let back: RecorderReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report(t0));
    }
}
