//! The recorder's output: the part of its report shown under the `recorder` component in
//! status.json (`components[].output`), and read back through this type by everything that
//! shows it (`roost status`, the page, the connector's messages, Prometheus, `roost fleet`).

use std::path::PathBuf;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::report::{RecorderReport, RecorderState, ReportError};
use crate::storage::RepairProgress;

/// `components[name=recorder].output` in status.json. Every field has a default: a status
/// document of an older roost (another device in `roost fleet`) still reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RecorderOutput {
    /// What it is doing now.
    pub state: RecorderState,
    /// The ALSA device name it captures from.
    pub device: String,
    /// Recordings completed and placed in recordings/ since it started.
    pub files_written: u64,
    /// The newest recording.
    pub last_file: Option<PathBuf>,
    /// When the newest recording was completed.
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub last_file_at: Option<Timestamp>,
    /// Frames delivered by the device since the recorder started.
    pub samples_captured: u64,
    /// Frames lost because the writer could not keep up.
    pub samples_dropped: u64,
    /// Frames delivered that could not be written (storage, low space, input not real time).
    pub samples_discarded: u64,
    /// Overruns (xruns) the audio driver reported.
    pub overruns: u64,
    /// Files discarded or cut short by onLowSpace or a full disk.
    pub files_discarded: u64,
    /// When the next file must be complete if all is well.
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub expected_file_by: Option<Timestamp>,
    /// While waiting outside the windows: when the next one opens (null: none within a year).
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub next_window_at: Option<Timestamp>,
    /// What the next opening was computed from (windows, time zone; never the coordinates).
    pub next_window_from: Option<String>,
    /// Finished files whose metadata.db row is not written yet.
    pub rows_owed: u64,
    /// Recordings deleted by `onLowSpace: deleteOldest` since the recorder started.
    pub files_deleted: u64,
    /// The latest of them (newest last, a few).
    pub recently_deleted: Vec<PathBuf>,
    /// Files whose claimed start lies before the end of an earlier file.
    pub time_overlaps: u64,
    /// Whether the kernel says the wall clock is synchronised (null: unknown).
    pub clock_synchronized: Option<bool>,
    /// Conditions that do not stop recording but should be known.
    pub warnings: Vec<ReportError>,
    /// The fault that keeps it from recording as it should.
    pub error: Option<ReportError>,
    /// When this recorder process started.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub started_at: Option<Timestamp>,
    /// While the start-up repair (or a rebuild of a lost metadata.db) runs: how far it got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairShown>,
    /// The board's power and heat, and what the energy policy pauses (absent on a board
    /// without such sensors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power: Option<crate::power::PowerOutput>,
}

/// The repair as the output shows it: its progress and totals, not the lists of paths.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RepairShown {
    /// Phase, counts and times.
    pub progress: Option<RepairProgress>,
}

impl From<&RecorderReport> for RecorderOutput {
    fn from(r: &RecorderReport) -> Self {
        let running = |p: &&RepairProgress| p.phase != crate::storage::RepairPhase::Done;
        Self {
            state: r.state,
            device: r.device.clone(),
            files_written: r.files_written,
            last_file: r.last_file.clone(),
            last_file_at: r.last_file_at,
            samples_captured: r.samples_captured,
            samples_dropped: r.samples_dropped,
            samples_discarded: r.samples_discarded,
            overruns: r.overruns,
            files_discarded: r.files_discarded,
            expected_file_by: r.expected_file_by,
            next_window_at: r.next_window_at,
            next_window_from: r.next_window_from.clone(),
            rows_owed: r.rows_owed,
            files_deleted: r.files_deleted,
            recently_deleted: r.recently_deleted.clone(),
            time_overlaps: r.time_overlaps,
            clock_synchronized: r.clock_synchronized,
            warnings: r.warnings.clone(),
            error: r.error.clone(),
            started_at: Some(r.started_at),
            // Only while it runs: a finished repair's totals stay in the report file.
            repair: (r.repair.progress.as_ref().filter(running)).map(|p| RepairShown {
                progress: Some(p.clone()),
            }),
            power: r.power.clone(),
        }
    }
}

impl RecorderOutput {
    /// The output as status.json holds it.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
