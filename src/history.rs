//! What roost remembers about each component between reconciles and across its own restarts:
//! restart counts, the last exit, back-off state. Kept in `<state-dir>/history.json`.
//! Transitions are pure functions of (record, event, now) so they are unit-tested without I/O.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::observe::ExitInfo;
use crate::spec::Backoff;

/// What `<state-dir>/history.json` holds: the generation of the accepted desired state and what
/// roost remembers of each component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// Generation of the last accepted desired state and the hash of its file content.
    #[serde(default)]
    pub generation: u64,
    /// Hash of the content of that accepted file.
    #[serde(default)]
    pub accepted_hash: Option<String>,
    /// Each component's record, by component name.
    #[serde(default)]
    pub components: BTreeMap<String, ComponentHistory>,
    /// The kernel's boot id when this history was written: a reboot is a new run.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// What roost remembers of one component under one spec: starts, exits, failed starts and
/// restarts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentHistory {
    /// The spec these counts belong to; a new spec starts a new record.
    pub spec_hash: String,
    /// Restarts roost did (the runtime's own restarts are added when shown).
    pub restart_count: u32,
    /// Exits in a row that came sooner than `backoff.resetAfter` after a start.
    pub consecutive_failures: u32,
    /// When roost last started it successfully.
    pub last_start: Option<Timestamp>,
    /// How its program last exited; cleared when roost stops it on purpose.
    pub last_exit: Option<ExitInfo>,
    /// Why the last start attempt failed before the program ran (e.g. executable not found).
    pub start_error: Option<String>,
    /// The error code of that failure (DEP_E161 executable not found, DEP_E162 invalid value, ...).
    #[serde(default)]
    pub start_error_code: Option<String>,
    /// When the last start attempt failed.
    pub start_error_at: Option<Timestamp>,
    /// The runtime's own restart counter (systemd's NRestarts) as last seen; it resets when the
    /// unit is stopped or the machine reboots, so what it had counted is folded into
    /// `restart_count` then.
    #[serde(default)]
    pub runtime_restarts_seen: u32,
}

impl ComponentHistory {
    /// An empty record for the spec whose hash is `spec_hash`.
    pub fn new(spec_hash: &str) -> Self {
        Self {
            spec_hash: spec_hash.to_string(),
            ..Self::default()
        }
    }

    /// Records a successful start. A start after an exit or a failed start is a restart.
    pub fn started(&mut self, now: Timestamp) {
        if self.last_exit.is_some() || self.start_error.is_some() {
            self.restart_count = self.restart_count.saturating_add(1);
        }
        self.last_start = Some(now);
        self.start_error = None;
        self.start_error_code = None;
        self.start_error_at = None;
    }

    /// Records an exit; a run shorter than `resetAfter` counts as one more quick failure.
    pub fn exited(&mut self, exit: ExitInfo, backoff: &Backoff) {
        let ran_long = self
            .last_start
            .map(|s| exit.at.duration_since(s).unsigned_abs() >= backoff.reset_after.as_std())
            .unwrap_or(false);
        self.consecutive_failures = if ran_long {
            1
        } else {
            self.consecutive_failures.saturating_add(1)
        };
        self.last_exit = Some(exit);
    }

    /// Takes note of the runtime's restart counter; a counter that went down was reset, and
    /// the restarts it had counted are kept.
    pub fn observe_runtime_restarts(&mut self, now_counted: u32) {
        if now_counted < self.runtime_restarts_seen {
            self.restart_count = self
                .restart_count
                .saturating_add(self.runtime_restarts_seen);
        }
        self.runtime_restarts_seen = now_counted;
    }

    /// Roost itself stopped the component (a stop of the deployment, roost shutting down): the
    /// next start is a fresh one, neither delayed nor counted as a restart.
    pub fn stopped_by_roost(&mut self) {
        self.last_exit = None;
        self.start_error = None;
        self.start_error_code = None;
        self.start_error_at = None;
        self.consecutive_failures = 0;
    }

    /// Records a start that failed before the program ran (one more quick failure): the catalogue
    /// `code` (e.g. DEP_E161), the `reason` and when.
    pub fn start_failed(&mut self, code: &str, reason: String, now: Timestamp) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.start_error_code = Some(code.to_string());
        self.start_error = Some(reason);
        self.start_error_at = Some(now);
    }

    /// When the last failure happened (exit or failed start), if any.
    pub fn last_failure_at(&self) -> Option<Timestamp> {
        match (self.start_error_at, self.last_exit.map(|e| e.at)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Quick failures in a row that make a crash loop.
pub const CRASH_LOOP_THRESHOLD: u32 = 3;
/// Least delay between restarts once in a crash loop (unless `max` is lower): `initial: 0s`
/// restarts a crash at once, but a component that keeps crashing must not spin the CPU and
/// wear the SD card with status writes.
pub const CRASH_LOOP_MIN_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Delay before the next start after `consecutive_failures` quick failures in a row: none
/// after none, then `backoff.initial` doubled for each further failure up to `backoff.max`; in a
/// crash loop at least [`CRASH_LOOP_MIN_DELAY`] (unless `max` is lower).
pub fn backoff_delay(backoff: &Backoff, consecutive_failures: u32) -> std::time::Duration {
    let initial = backoff.initial.as_std();
    let max = backoff.max.as_std();
    if consecutive_failures == 0 {
        return std::time::Duration::ZERO;
    }
    let doublings = (consecutive_failures - 1).min(31);
    let delay = initial.saturating_mul(1u32 << doublings).min(max);
    if consecutive_failures >= CRASH_LOOP_THRESHOLD {
        delay.max(CRASH_LOOP_MIN_DELAY.min(max))
    } else {
        delay
    }
}

fn current_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Why the history could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Writing history.json failed.
    #[error("cannot write {path}")]
    Write {
        /// The history file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl History {
    /// Reads the history; a missing or unreadable file starts empty (counts are best effort,
    /// never a reason to refuse to run). After a reboot, exits of the previous boot are
    /// forgotten (restart counts stay): every component gets its run, as systemd units do.
    pub fn load(path: &Path) -> Self {
        let mut history = Self::load_raw(path);
        let boot = current_boot_id();
        if history.boot_id.is_some() && history.boot_id != boot {
            history
                .components
                .values_mut()
                .for_each(ComponentHistory::stopped_by_roost);
        }
        history.boot_id = boot;
        history
    }

    fn load_raw(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "history file unreadable; starting afresh");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    /// Writes the history to `path` as JSON, whole or not at all (temp file, fsync, rename); errors:
    /// [`HistoryError::Write`].
    pub fn save(&self, path: &Path) -> Result<(), HistoryError> {
        let bytes = serde_json::to_vec_pretty(self).expect("history serializes");
        crate::fsutil::write_atomic(path, &bytes).map_err(|source| HistoryError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// The record for a component under its current spec: a changed spec starts from zero.
    pub fn for_spec(&mut self, name: &str, spec_hash: &str) -> &mut ComponentHistory {
        let entry = self
            .components
            .entry(name.to_string())
            .or_insert_with(|| ComponentHistory::new(spec_hash));
        if entry.spec_hash != spec_hash {
            *entry = ComponentHistory::new(spec_hash);
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::HumanDuration;

    fn backoff(initial: u64, max: u64) -> Backoff {
        Backoff {
            initial: HumanDuration::from_millis(initial),
            max: HumanDuration::from_millis(max),
            reset_after: HumanDuration::from_secs(600),
        }
    }

    #[test]
    fn delay_doubles_up_to_max() {
        let b = backoff(1000, 5000);
        let ms: Vec<u128> = (0..6).map(|n| backoff_delay(&b, n).as_millis()).collect();
        assert_eq!(ms, [0, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(
            backoff_delay(&backoff(0, 5000), 1).as_millis(),
            0,
            "initial 0s restarts at once"
        );
        assert_eq!(
            backoff_delay(&backoff(0, 5000), 3).as_millis(),
            1000,
            "but not in a crash loop"
        );
        assert_eq!(
            backoff_delay(&backoff(0, 0), 9).as_millis(),
            0,
            "unless max says so"
        );
        assert_eq!(backoff_delay(&b, u32::MAX).as_millis(), 5000);
    }

    #[test]
    fn long_run_resets_failures_and_restart_counts_grow() {
        let b = backoff(1000, 5000);
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut h = ComponentHistory::new("x");
        h.started(t0);
        assert_eq!(h.restart_count, 0);
        let exit = |secs: i64| ExitInfo {
            code: Some(1),
            signal: None,
            at: t0 + jiff::SignedDuration::from_secs(secs),
        };
        h.exited(exit(1), &b);
        h.started(t0);
        h.exited(exit(2), &b);
        assert_eq!((h.consecutive_failures, h.restart_count), (2, 1));
        h.started(t0);
        h.exited(exit(3600), &b);
        assert_eq!(h.consecutive_failures, 1);
    }

    #[test]
    fn a_reboot_forgets_exits_but_keeps_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.json");
        let mut h = History::load(&path);
        let rec = h.for_spec("a", "x");
        rec.restart_count = 3;
        rec.last_exit = Some(ExitInfo {
            code: Some(0),
            signal: None,
            at: Timestamp::UNIX_EPOCH,
        });
        h.save(&path).unwrap();
        assert!(
            History::load(&path).components["a"].last_exit.is_some(),
            "same boot keeps exits"
        );
        h.boot_id = Some("another-boot".into());
        h.save(&path).unwrap();
        let after = History::load(&path);
        assert_eq!(after.components["a"].last_exit, None);
        assert_eq!(after.components["a"].restart_count, 3);
    }

    #[test]
    fn runtime_restart_counts_survive_their_reset() {
        let mut h = ComponentHistory::new("x");
        h.observe_runtime_restarts(2);
        h.observe_runtime_restarts(3);
        assert_eq!(h.restart_count + h.runtime_restarts_seen, 3);
        h.observe_runtime_restarts(0); // StopUnit or a reboot reset NRestarts
        assert_eq!(h.restart_count + h.runtime_restarts_seen, 3);
        h.observe_runtime_restarts(1);
        assert_eq!(h.restart_count + h.runtime_restarts_seen, 4);
    }

    #[test]
    fn changed_spec_starts_a_new_record() {
        let mut hist = History::default();
        hist.for_spec("a", "h1").restart_count = 4;
        assert_eq!(hist.for_spec("a", "h1").restart_count, 4);
        assert_eq!(hist.for_spec("a", "h2").restart_count, 0);
    }
}
