//! What the recorder's report says beside its state, pure: the error it shows (its own, files
//! it could not place, rows owed to metadata.db) and its warnings. Each function is given the
//! instant it judges at.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::registrar::{OWED_GRACE, Owed};
use super::report::{RecorderReport, RecorderState, ReportError};
use crate::errors;

/// A `Waiting` recorder whose next window is further than this warns (DEP_E318).
const FAR_WINDOW: SignedDuration = SignedDuration::from_hours(24 * 7);

/// Finished files that could not be moved into recordings/ yet: how many, and the first reason.
#[derive(Clone, Copy, Debug)]
pub struct Stranded<'a> {
    /// Files waiting in `.partial/`.
    pub files: usize,
    /// Why the first could not be moved.
    pub why: &'a str,
}

/// The error the report shows: the writer's own; else files kept in `.partial/` (DEP_E301);
/// else rows owed to metadata.db for longer than [`OWED_GRACE`] (DEP_E321, or DEP_E322/E323
/// when the database's layout is in the way). `mono` is the monotonic time now.
pub fn effective_error(
    own: Option<&ReportError>,
    stranded: Option<Stranded<'_>>,
    owed: Option<&Owed>,
    mono: Duration,
) -> Option<ReportError> {
    if let Some(own) = own {
        return Some(own.clone());
    }
    if let Some(Stranded { files, why }) = stranded {
        return Some(ReportError::new(
            errors::STORAGE_UNUSABLE,
            format!(
                "{files} finished recordings cannot be moved into recordings/ ({why}); they stay in .partial/ and are moved as soon as they can be"
            ),
        ));
    }
    let owed = owed?;
    if owed.rows == 0 || mono.saturating_sub(owed.since?) < OWED_GRACE {
        return None;
    }
    // Stable while the fault lasts (no per-second rewrite of the report): the count changes
    // once per file, the rest not at all.
    let since = owed
        .since_wall
        .map_or(String::new(), |t| format!(" since {t:.0}"));
    let why = owed
        .why
        .as_ref()
        .map_or(String::new(), |e| format!(" ({e})"));
    // metadata.db's layout in the way: its own code and action (upgrade roost, free room),
    // never DEP_E321's "move metadata.db aside", which would lose what it holds.
    let code = owed
        .code
        .filter(|c| [errors::METADATA_DB_NEWER, errors::METADATA_DB_MIGRATION].contains(c))
        .unwrap_or(errors::METADATA_DB_ERROR);
    Some(ReportError::new(
        code,
        format!(
            "{} recordings are in recordings/ without their metadata.db row{since}{why}; files keep being written and the rows are retried",
            owed.rows
        ),
    ))
}

/// Rows owed as the report counts them: a row written within `shown_after` of its file is not
/// owed in any sense a reader cares about (counting it made every file two rewrites of the
/// report and of status.json: one saying 1 owed, one saying 0).
pub fn rows_shown(owed: &Owed, mono: Duration, shown_after: Duration) -> u64 {
    match owed.since {
        Some(since) if mono.saturating_sub(since) >= shown_after => owed.rows,
        _ => 0,
    }
}

/// Warnings: conditions that do not stop recording but should be known (DEP_E318 no window
/// soon, DEP_E316 clock not synchronised, DEP_E304 recordings deleted, DEP_E314 frames lost,
/// DEP_E317 overlaps), judged at `now`.
pub fn warnings(report: &RecorderReport, now: Timestamp) -> Vec<ReportError> {
    let mut out = Vec::new();
    out.extend(no_window_soon(report, now));
    if report.clock_synchronized == Some(false) {
        out.push(ReportError::new(
            errors::CLOCK_NOT_SYNCHRONIZED,
            "the kernel says the wall clock is not synchronised; file times may be wrong (each file's GUANO says whether it was)",
        ));
    }
    if report.files_deleted > 0 {
        let latest = (report.recently_deleted.last())
            .map_or(String::new(), |p| format!("; the latest: {}", p.display()));
        out.push(ReportError::new(
            errors::RECORDINGS_DELETED,
            format!(
                "onLowSpace: deleteOldest deleted {} recordings since {} to keep minFreeSpace{latest}",
                report.files_deleted, report.started_at
            ),
        ));
    }
    let (dropped, discarded) = (report.samples_dropped, report.samples_discarded);
    if dropped + discarded > 0 {
        // One warning for all audio lost since the start, whatever lost it.
        out.push(ReportError::new(
            errors::SAMPLES_DROPPED,
            format!(
                "frames lost since {}: {dropped} dropped (the writer fell behind or the process stalled; files split at each gap), {discarded} not recorded (storage faults, low space, input not in real time; see the log)",
                report.started_at
            ),
        ));
    }
    if report.time_overlaps > 0 {
        out.push(ReportError::new(
            errors::TIME_OVERLAP,
            format!(
                "{} files claim start times before the end of earlier files (the wall clock was stepped back); none was overwritten",
                report.time_overlaps
            ),
        ));
    }
    out
}

/// DEP_E318 while waiting for a window more than a week away (or none within a year).
fn no_window_soon(report: &RecorderReport, now: Timestamp) -> Option<ReportError> {
    let from = report.next_window_from.as_ref()?;
    let far = (report.next_window_at).is_none_or(|at| at.duration_since(now) > FAR_WINDOW);
    if report.state != RecorderState::Waiting || !far {
        return None;
    }
    let when = (report.next_window_at).map_or("no window opens within a year".to_string(), |at| {
        format!("the next window opens at {at}")
    });
    Some(ReportError::new(
        errors::NO_WINDOW_SOON,
        format!("{when}; computed from {from}"),
    ))
}

#[cfg(test)]
mod tests;
