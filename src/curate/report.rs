//! `curator-report.json`: what the curator did and how far behind it is, read by `roost run`
//! for status.json (component `curator`) and by the page. Replaced whole, not fsynced (derived).

use std::collections::BTreeMap;
use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The file's name in the state folder.
pub const REPORT_FILE: &str = "curator-report.json";

/// A problem, with its code.
pub use crate::errors::Problem;

/// One detector's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DetectorFigures {
    /// Its name.
    pub name: String,
    /// Recordings it finished (with or without detections).
    pub analysed: u64,
    /// Recordings it gave up on after its retries.
    pub failed: u64,
    /// Recordings waiting for it.
    pub backlog: u64,
    /// When the oldest recording waiting for it started (wall clock), while any waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub backlog_oldest: Option<Timestamp>,
    /// Recordings it failed on in a row (0 after a success); at 3 it is a problem in status.
    #[serde(default)]
    pub failing: u32,
    /// The last recording it finished.
    pub last_analysed: Option<PathBuf>,
    /// When it finished it.
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub last_analysed_at: Option<Timestamp>,
    /// Detections it wrote in the last hour.
    pub detections_last_hour: u64,
    /// The last failure on a recording (code per recording), while it is the newest news.
    pub last_failure: Option<Problem>,
    /// The recording of that failure.
    pub last_failure_file: Option<PathBuf>,
}

/// What the storage holds and what was deleted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct StorageFigures {
    /// Bytes the recordings occupy on disk.
    pub bytes_used: u64,
    /// Recordings whose file is there.
    pub recordings: u64,
    /// Free bytes on the storage's file system.
    pub free_bytes: Option<u64>,
    /// Files deleted, by rule or cause (`keep`, `maxAge`, `maxUsage`, `onLowSpace`, `missing`).
    pub deleted_by_rule: BTreeMap<String, u64>,
    /// Recordings kept by the keep rules, and deleted by them, since the curator started.
    pub kept_this_run: u64,
    /// Deleted by the keep rules since the curator started.
    pub deleted_this_run: u64,
    /// Days until the disk is full at the last day's rate of kept recordings.
    pub days_until_full: Option<f64>,
    /// Recordings past `maxAge` or `maxUsage` kept for now: a detector has not analysed them
    /// or a message about them waits in the outbox (at the last retention round).
    #[serde(default)]
    pub held_for_retention: u64,
    /// Recordings whose wall-clock time disagrees by more than 10 minutes with how long they
    /// have existed on this device (a clock set or stepped since): their age is the device
    /// clock's.
    #[serde(default)]
    pub clock_disagrees: u64,
    /// What retention does about those, in words, when `maxAge` is set and some disagree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_note: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CuratorReport {
    /// The curator's process.
    pub pid: u32,
    /// When it was written.
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub updated_at: Option<Timestamp>,
    /// Per detector, in `spec.detectors` order.
    pub detectors: Vec<DetectorFigures>,
    /// The storage.
    pub storage: StorageFigures,
    /// What stops the curator's work now (storage unusable, a detector behind or stalled).
    pub error: Option<Problem>,
    /// What a detector is analysing now, and since when, while one run lasts longer than a
    /// heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysing: Option<String>,
    /// Whether it has stopped (SIGTERM).
    #[serde(default)]
    pub stopped: bool,
    /// Conditions that do not stop the curator but should be known: its detectors paused by
    /// the energy policy (DEP_E906).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Problem>,
}

/// `<state_dir>/run/curator-report.json`, replaced whole at each change.
impl crate::component::ReportFile for CuratorReport {
    const FILE: &'static str = REPORT_FILE;
    // Detector errors quote their programs' output: no credential goes into the report.
    const REDACT: bool = true;
}
