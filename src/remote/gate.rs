//! The health gate: is the device worse since a version was applied? Pure: status documents
//! and elapsed times in, a [`Verdict`] out. Elapsed time is the boot clock's (monotonic, also
//! across suspend), never the wall clock: an NTP step during the gate changes nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::status::{OverallStatus, StatusDoc};

/// What the gate compares: the device's summary, the codes it reports, its restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// The document's one-word summary (`Running`, `Error`, ...), as text.
    pub status: String,
    /// Codes that say something about the deployment's health (see [`counts`]).
    pub codes: BTreeSet<String>,
    /// Restarts of every component, summed.
    pub restarts: u64,
}

impl Health {
    /// The health a status document shows.
    pub fn of(doc: &StatusDoc) -> Self {
        let mut codes: BTreeSet<String> = (doc.errors.iter())
            .map(|e| e.code.clone())
            .filter(|c| counts(c))
            .collect();
        if let Some(e) = &doc.spec_error {
            codes.insert(e.code.clone());
        }
        Self {
            status: format!("{:?}", doc.status),
            codes,
            restarts: doc
                .components
                .iter()
                .map(|c| u64::from(c.restart_count))
                .sum(),
        }
    }

    fn running(&self) -> bool {
        self.status == format!("{:?}", OverallStatus::Running)
    }

    fn down(&self) -> bool {
        !self.running() && self.status != format!("{:?}", OverallStatus::Pending)
    }
}

/// Whether `doc` is the one the loop writes as roost stops (components stopped by roost).
pub fn is_shutdown(doc: &StatusDoc) -> bool {
    let stopped = |c: &crate::status::ComponentStatus| {
        c.reason == Some(crate::status::Reason::ReconcilerStopped)
    };
    doc.components.iter().any(stopped)
        || doc
            .deployments
            .iter()
            .any(|d| d.components.iter().any(stopped))
}

/// Whether a code counts against a version. Not: the link (DEP_E5xx: a link that drops right
/// after the message is no fault of the version), the remote desired state itself (DEP_E8xx),
/// roost's own liveness and the status file's age (DEP_E402, DEP_E403), the wall clock (DEP_E316
/// not yet synchronised, DEP_E317 recording times overlapping after NTP stepped it back), a
/// dependency not yet ready (DEP_E158, transient by nature), the board's power and heat
/// (DEP_E901..E905: the weather and the battery, not the version). A window that never opens
/// (DEP_E318) counts: it silences a device as surely as a wrong microphone; so does the energy
/// policy pausing work (DEP_E906): the policy is part of the version.
pub fn counts(code: &str) -> bool {
    let ignored = ["DEP_E5", "DEP_E8"];
    let ignored_codes = [
        "DEP_E402", "DEP_E403", "DEP_E316", "DEP_E317", "DEP_E158", "DEP_E901", "DEP_E902",
        "DEP_E903", "DEP_E904", "DEP_E905",
    ];
    !(ignored.iter().any(|p| code.starts_with(p)) || ignored_codes.contains(&code))
}

/// Restarts during the gate that make a crash loop.
pub const CRASH_RESTARTS: u64 = 3;

/// How the health now compares with the baseline: `None` when not worse, else the codes that
/// make it worse (a pseudo-reason when no code names it).
pub fn worse(baseline: &Health, now: &Health, at_gate_end: bool) -> Option<Vec<String>> {
    let mut why: Vec<String> = now.codes.difference(&baseline.codes).cloned().collect();
    // Restarts count only against a device that ran cleanly before: one already restarting
    // keeps restarting whatever the version.
    let looping = baseline.running() && now.restarts >= baseline.restarts + CRASH_RESTARTS;
    if looping && why.is_empty() {
        why.push(crate::errors::CRASH_LOOP.code.to_string());
    }
    let fell = baseline.running() && (now.down() || (at_gate_end && !now.running()));
    if why.is_empty() && fell {
        why = match now.codes.is_empty() {
            true => vec![format!("status {}", now.status)],
            false => now.codes.iter().cloned().collect(),
        };
    }
    (!why.is_empty()).then_some(why)
}

/// The gate's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Look again at the next status, or at `next` at the latest.
    Wait {
        /// When the gate must look again even without a new status (its end, or when a worse
        /// state will have lasted long enough).
        next: Duration,
    },
    /// Through the gate: the version stays.
    Pass,
    /// Go back to the files before the version, for these codes.
    Revert(Vec<String>),
}

/// How long a worse state must last before the gate reverts early: a quarter of the gate,
/// between 2 s and 60 s (a component restarting once is not a failure).
pub fn settle(length: Duration) -> Duration {
    (length / 4).clamp(Duration::from_secs(2), Duration::from_secs(60))
}

/// Decides at `elapsed` into a gate of `length`. `worse_since` is the elapsed time at which
/// the device was first seen worse without a better status since (the caller keeps it).
pub fn judge(
    baseline: &Health,
    now: &Health,
    elapsed: Duration,
    length: Duration,
    worse_since: Option<Duration>,
) -> Verdict {
    let at_end = elapsed >= length;
    match (worse(baseline, now, at_end), at_end) {
        (Some(codes), true) => Verdict::Revert(codes),
        (None, true) => Verdict::Pass,
        (Some(codes), false) => {
            let since = worse_since.unwrap_or(elapsed);
            let lasted = elapsed.saturating_sub(since);
            match lasted >= settle(length) {
                true => Verdict::Revert(codes),
                false => Verdict::Wait {
                    next: (since + settle(length)).min(length),
                },
            }
        }
        (None, false) => Verdict::Wait { next: length },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(status: &str, codes: &[&str], restarts: u64) -> Health {
        Health {
            status: status.into(),
            codes: codes.iter().map(|c| c.to_string()).collect(),
            restarts,
        }
    }
    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_gate_compares_with_the_baseline_not_with_perfection() {
        let running = h("Running", &[], 0);
        let broken_before = h("Error", &["DEP_E161"], 4);
        // (baseline, now, at end) -> worse?
        let cases: &[(&Health, Health, bool, Option<Vec<&str>>)] = &[
            (&running, h("Running", &[], 0), false, None),
            (
                &running,
                h("Error", &["DEP_E301"], 0),
                false,
                Some(vec!["DEP_E301"]),
            ),
            (
                &running,
                h("Running", &[], 3),
                false,
                Some(vec!["DEP_E163"]),
            ),
            (&running, h("Running", &[], 2), true, None),
            (&running, h("Pending", &[], 0), false, None),
            (
                &running,
                h("Pending", &[], 0),
                true,
                Some(vec!["status Pending"]),
            ),
            (
                &running,
                h("Stopped", &[], 0),
                false,
                Some(vec!["status Stopped"]),
            ),
            // What was broken before and is still broken is not the version's fault
            // (a revert that sticks to a broken previous state would be).
            (&broken_before, h("Error", &["DEP_E161"], 9), true, None),
            (&broken_before, h("Running", &[], 0), true, None),
            (
                &broken_before,
                h("Error", &["DEP_E161", "DEP_E152"], 4),
                true,
                Some(vec!["DEP_E152"]),
            ),
        ];
        for (base, now, end, want) in cases {
            let got = worse(base, now, *end);
            let want = want
                .as_ref()
                .map(|w| w.iter().map(|s| s.to_string()).collect());
            assert_eq!(got, want, "{base:?} -> {now:?} at end {end}");
        }
    }

    #[test]
    fn link_clock_and_remote_codes_never_count_against_a_version() {
        for code in [
            "DEP_E501", "DEP_E502", "DEP_E807", "DEP_E317", "DEP_E403", "DEP_E158",
        ] {
            assert!(!counts(code), "{code}");
        }
        for code in [
            "DEP_E152", "DEP_E161", "DEP_E163", "DEP_E301", "DEP_E162", "DEP_E311", "DEP_E313",
            "DEP_E318",
        ] {
            assert!(counts(code), "{code}");
        }
    }

    #[test]
    fn a_worse_state_reverts_once_it_has_lasted_or_at_the_gate_end() {
        let base = h("Running", &[], 0);
        let bad = h("Error", &["DEP_E301"], 0);
        let good = h("Running", &[], 0);
        let len = 10 * MIN;
        assert_eq!(settle(len), MIN);
        assert_eq!(settle(Duration::from_secs(5)), Duration::from_secs(2));
        // Worse for a moment: wait, and look again when it will have lasted.
        let v = judge(&base, &bad, Duration::from_secs(30), len, None);
        assert_eq!(
            v,
            Verdict::Wait {
                next: Duration::from_secs(90)
            }
        );
        let v = judge(
            &base,
            &bad,
            Duration::from_secs(89),
            len,
            Some(Duration::from_secs(30)),
        );
        assert!(matches!(v, Verdict::Wait { .. }));
        let v = judge(
            &base,
            &bad,
            Duration::from_secs(90),
            len,
            Some(Duration::from_secs(30)),
        );
        assert_eq!(v, Verdict::Revert(vec!["DEP_E301".into()]));
        // Healthy: wait for the end, then pass; worse at the end reverts at once.
        assert_eq!(
            judge(&base, &good, MIN, len, None),
            Verdict::Wait { next: len }
        );
        assert_eq!(judge(&base, &good, len, len, None), Verdict::Pass);
        let v = judge(&base, &bad, len, len, Some(len - Duration::from_secs(1)));
        assert_eq!(v, Verdict::Revert(vec!["DEP_E301".into()]));
        // The look-again time never passes the gate's end.
        let v = judge(&base, &bad, len - Duration::from_secs(5), len, None);
        assert_eq!(v, Verdict::Wait { next: len });
    }
}
