//! What a reader makes of a status document beyond its own words: whether the roost that wrote
//! it still runs, and whether it was rewritten when it promised (a recorder's next file due).
//! One judgement for every channel (`roost status`, the page, the connector's retained status,
//! so the fleet view too), so that none is ever greener than the device. `judge` and `as_seen`
//! are pure; `look` reads the few facts they need. It never writes status.json.
//!
//! ```text
//! Stopped status                          -> Current (a clean stop says so itself)
//! roost's pid not running                 -> RoostGone   => status Unknown, DEP_E402
//! a file was due by T (recorder output),
//!   status written before T, now > T + 45 s -> Stale      => status Unknown, DEP_E403
//! otherwise                               -> Current
//! ```

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::errors;
use crate::status::{ComponentState, ErrorEntry, OverallStatus, StatusDoc};

/// How long past a recorder's due time a status not rewritten since is out of date: the
/// recorder's own grace of 30 s (a late file is DEP_E313, and a status write, by then), plus
/// 15 s for roost to write it.
pub const STALE_AFTER_DUE: SignedDuration = SignedDuration::from_secs(45);

/// The file in the run-time folder where roost says why it could not write status.json
/// (removed once it can again).
pub const WRITE_ERROR_FILE: &str = "status-write-error.json";

/// What a reader can tell about a status document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Seen {
    /// Written by a roost that runs, and as fresh as it promised.
    #[default]
    Current,
    /// The roost that wrote it is not running (killed, crashed).
    RoostGone,
    /// Not rewritten although a recording was due by `due`; `why` is roost's own word on its
    /// last failure to write status.json, when it left one.
    Stale {
        /// When the recorder's next file was due.
        due: Timestamp,
        /// Why roost could not write status.json, if it said.
        why: Option<String>,
    },
}

/// Why roost last failed to write status.json (the run-time folder's [`WRITE_ERROR_FILE`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteError {
    /// When it failed.
    pub at: Timestamp,
    /// The error, with its causes.
    pub error: String,
}

/// Judges `doc` at `now`: `roost_alive` whether the pid that wrote it runs, `write_error`
/// roost's last failure to write status.json, if any.
pub fn judge(
    doc: &StatusDoc,
    now: Timestamp,
    roost_alive: bool,
    write_error: Option<&WriteError>,
) -> Seen {
    if doc.status == OverallStatus::Stopped {
        return Seen::Current;
    }
    if !roost_alive {
        return Seen::RoostGone;
    }
    match due(doc) {
        Some(due)
            if doc.updated_at < due
                && due.checked_add(STALE_AFTER_DUE).is_ok_and(|at| now > at) =>
        {
            Seen::Stale {
                due,
                why: write_error.map(|w| w.error.clone()),
            }
        }
        _ => Seen::Current,
    }
}

/// When `doc` becomes out of date if nothing rewrites it (its recorder's due time plus
/// [`STALE_AFTER_DUE`]), while that is still ahead of its own writing; `None` without a promise.
pub fn stale_at(doc: &StatusDoc) -> Option<Timestamp> {
    let due = due(doc)?;
    let at = due
        .checked_add(STALE_AFTER_DUE + SignedDuration::from_secs(1))
        .ok()?;
    (doc.updated_at < due).then_some(at)
}

fn due(doc: &StatusDoc) -> Option<Timestamp> {
    (doc.output_as::<crate::recorder::RecorderOutput>(crate::spec::recorder::RECORDER_COMPONENT))
        .and_then(|o| o.expected_file_by)
}

/// The document as readers should show it: unchanged when `Current`; otherwise status
/// `Unknown` and an error entry saying what is known (DEP_E402 roost not running, DEP_E403
/// status out of date) and which components still run (`still_running`: name and pid).
pub fn as_seen(doc: &StatusDoc, seen: &Seen, still_running: &[(String, u32)]) -> StatusDoc {
    let mut out = doc.clone();
    let running = match still_running {
        [] => "nothing it started is running".to_string(),
        some => format!(
            "still running without supervision: {}",
            some.iter()
                .map(|(name, pid)| format!("{name} (pid {pid})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let entry = match seen {
        Seen::Current => return out,
        Seen::RoostGone => ErrorEntry::new(
            &errors::ROOST_NOT_RUNNING,
            None,
            format!(
                "roost (pid {}) is not running; this status is what it knew at {}; {running}",
                doc.reconciler.pid, doc.updated_at
            ),
        ),
        Seen::Stale { due, why } => ErrorEntry::new(
            &errors::STATUS_OUT_OF_DATE,
            None,
            format!(
                "status.json was last written at {} although a recording was due by {due}: {}",
                doc.updated_at,
                why.as_deref()
                    .map_or("roost may be stuck".to_string(), |w| format!(
                        "roost cannot write it ({w})"
                    ))
            ),
        ),
    };
    out.status = OverallStatus::Unknown;
    for c in &mut out.components {
        let alive = still_running.iter().any(|(n, _)| *n == c.name);
        if c.status == ComponentState::Running && !alive && *seen == Seen::RoostGone {
            c.status = ComponentState::Stopped;
            c.pid = None;
        }
    }
    out.errors.insert(0, entry);
    out
}

/// Reads what `judge` needs (roost's and the components' pids, roost's last write error) and
/// returns the judgement with the document as readers should show it.
pub fn look(doc: &StatusDoc, state_dir: &Path, now: Timestamp) -> (Seen, StatusDoc) {
    let write_error = crate::fsutil::read_run_file(state_dir, WRITE_ERROR_FILE)
        .and_then(|b| serde_json::from_slice::<WriteError>(&b).ok());
    let seen = judge(
        doc,
        now,
        roost_alive(doc.reconciler.pid),
        write_error.as_ref(),
    );
    let still: Vec<(String, u32)> = doc
        .components
        .iter()
        .filter_map(|c| Some((c.name.clone(), c.pid?)))
        .filter(|(_, pid)| pid_alive(*pid))
        .collect();
    let shown = as_seen(doc, &seen, &still);
    (seen, shown)
}

/// Whether a process with this pid runs (a zombie does not).
pub fn pid_alive(pid: u32) -> bool {
    pid != 0 && crate::procscan::alive(pid)
}

/// Whether the roost that wrote a status runs: its pid alive and still a roost program (after
/// a reboot the pid is often another program's).
pub fn roost_alive(pid: u32) -> bool {
    pid_alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let program = c.split(|b| *b == 0).next().unwrap_or_default();
            Path::new(std::ffi::OsStr::from_bytes(program))
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("roost"))
        })
}

/// Records (in the run-time folder, which is RAM when it can be) why status.json could not be
/// written, or that it can again (`None`): readers say it instead of showing the old status.
pub fn note_write_error(state_dir: &Path, error: Option<&str>) {
    match error {
        Some(e) => {
            let note = WriteError {
                at: Timestamp::now(),
                error: e.to_string(),
            };
            if let Ok(bytes) = serde_json::to_vec(&note) {
                let _ = crate::fsutil::replace_run_file(state_dir, WRITE_ERROR_FILE, &bytes);
            }
        }
        None => {
            let _ = std::fs::remove_file(crate::fsutil::run_dir(state_dir).join(WRITE_ERROR_FILE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(updated: &str, due: Option<&str>, status: OverallStatus) -> StatusDoc {
        let mut d: StatusDoc = serde_json::from_value(serde_json::json!({
            "apiVersion": "roost/v1", "kind": "DeploymentStatus", "deployment": "d",
            "generation": 1, "observedGeneration": 1, "phase": "Succeeded", "status": "Running",
            "components": [{"name": "recorder", "status": "Running", "restartCount": 0, "pid": 42,
                "output": {"state": "recording", "expectedFileBy": due}},
                {"name": "page", "status": "Running", "restartCount": 0, "pid": 43}],
            "errors": [], "reconciler": {"pid": 7, "version": "x", "runtime": "process"},
            "updatedAt": updated
        }))
        .unwrap();
        d.status = status;
        d
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A report rewritten only to say it is alive is no news for status.json; any other
    /// change of an output, or of the document, is.
    #[test]
    fn a_report_heartbeat_alone_is_not_a_new_status() {
        let with_output = |updated: &str, output: serde_json::Value| {
            let mut d = doc(updated, None, OverallStatus::Running);
            d.components[1].output = Some(output);
            d
        };
        let a = with_output(
            "2026-06-01T10:00:00Z",
            serde_json::json!({"updatedAt": "a", "queued": 3}),
        );
        let heartbeat = with_output(
            "2026-06-01T10:01:00Z",
            serde_json::json!({"updatedAt": "b", "queued": 3}),
        );
        let news = with_output(
            "2026-06-01T10:01:00Z",
            serde_json::json!({"updatedAt": "b", "queued": 4}),
        );
        assert!(a.same_content(&heartbeat));
        assert!(!a.same_content(&news));
        let mut stopped = a.clone();
        stopped.status = OverallStatus::Stopped;
        assert!(!a.same_content(&stopped));
    }

    #[test]
    fn a_status_is_judged_by_its_writer_and_its_promise() {
        let due = "2026-06-01T10:01:00Z";
        let d = doc("2026-06-01T10:00:00Z", Some(due), OverallStatus::Running);
        let now = |s: &str| t(s);
        // Within the promise and its grace: current.
        assert_eq!(
            judge(&d, now("2026-06-01T10:01:45Z"), true, None),
            Seen::Current
        );
        // Past it, not rewritten: stale, with roost's own reason when it left one.
        let failed = WriteError {
            at: t("2026-06-01T10:01:00Z"),
            error: "No space left on device (os error 28)".into(),
        };
        assert_eq!(
            judge(&d, now("2026-06-01T10:01:46Z"), true, Some(&failed)),
            Seen::Stale {
                due: t(due),
                why: Some(failed.error.clone())
            }
        );
        // Rewritten after the due time (the recorder said E313 itself): current.
        let later = doc("2026-06-01T10:01:30Z", Some(due), OverallStatus::Error);
        assert_eq!(
            judge(&later, now("2026-06-01T11:00:00Z"), true, None),
            Seen::Current
        );
        // No promise (waiting for a window far away, no recorder): only the writer counts.
        let none = doc("2026-06-01T10:00:00Z", None, OverallStatus::Running);
        assert_eq!(
            judge(&none, now("2026-06-03T00:00:00Z"), true, None),
            Seen::Current
        );
        assert_eq!(
            judge(&none, now("2026-06-01T10:00:01Z"), false, None),
            Seen::RoostGone
        );
        // A clean stop says so itself.
        let stopped = doc("2026-06-01T10:00:00Z", Some(due), OverallStatus::Stopped);
        assert_eq!(
            judge(&stopped, now("2026-06-02T00:00:00Z"), false, None),
            Seen::Current
        );
    }

    #[test]
    fn readers_see_unknown_with_what_still_runs() {
        let d = doc("2026-06-01T10:00:00Z", None, OverallStatus::Running);
        let shown = as_seen(&d, &Seen::RoostGone, &[("recorder".into(), 42)]);
        assert_eq!(shown.status, OverallStatus::Unknown);
        assert_eq!(shown.errors[0].code, "DEP_E402");
        assert!(
            shown.errors[0]
                .message
                .ends_with("still running without supervision: recorder (pid 42)"),
            "{}",
            shown.errors[0].message
        );
        assert_eq!(shown.components[0].status, ComponentState::Running);
        assert_eq!(
            shown.components[1].status,
            ComponentState::Stopped,
            "page died with it"
        );
        assert_eq!(shown.exit_code(), 1);
        let stale = as_seen(
            &d,
            &Seen::Stale {
                due: t("2026-06-01T10:01:00Z"),
                why: None,
            },
            &[],
        );
        assert_eq!(stale.errors[0].code, "DEP_E403");
        assert!(stale.errors[0].message.ends_with("roost may be stuck"));
        assert_eq!(as_seen(&d, &Seen::Current, &[]), d);
    }
}
