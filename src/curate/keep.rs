//! Saving rules and retention, decided without touching anything: which recordings
//! `spec.storage.keep` keeps, and which `maxAge` / `maxUsage` delete. Pure functions of the
//! facts and the time; the curator applies them.

use jiff::{SignedDuration, Timestamp};

use crate::schedule::Schedule;
use crate::spec::recorder::{RecorderSpec, SunEvent, TimeOfDay, Window};
use crate::spec::{Location, curate::KeepRule};

pub use crate::storage::curation::Found;

/// What the rules look at in one recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    /// When its first sample was captured.
    pub start: Timestamp,
    /// Its length, s.
    pub duration_s: f64,
    /// When the recording before it ended; `None` when it is the first.
    pub previous_end: Option<Timestamp>,
    /// Every detection of every detector.
    pub found: Vec<Found>,
    /// The deployment's detectors that finished this recording with findings.
    pub judged_by: Vec<String>,
    /// The deployment's detectors.
    pub detectors: Vec<String>,
}

/// What `kept_by` says when no rule keeps a recording but a detection rule could not judge
/// it: its detector has not analysed it (made before the detector was added, or the rule
/// names a detector the deployment does not run). Never deleted by a rule that did not look.
pub const NOT_ANALYSED: &str = "notAnalysed";

/// The rules of a deployment, with what the time rules need (the recorder's time zone and the
/// location, for sunrise and sunset).
pub struct Rules {
    rules: Vec<(String, Matcher)>,
}

enum Matcher {
    Always,
    Window(Schedule),
    Every {
        seconds: i64,
        tz: jiff::tz::TimeZone,
    },
    Detection(crate::spec::curate::DetectionRule),
}

impl Rules {
    /// The matchers of `keep` in the recorder's time zone at `location`.
    pub fn new(keep: &[KeepRule], recorder: &RecorderSpec, location: Option<&Location>) -> Self {
        let window = |w: Window| {
            let spec = RecorderSpec {
                windows: vec![w],
                ..recorder.clone()
            };
            Matcher::Window(Schedule::new(&spec, location))
        };
        let around = |event, a: &crate::spec::curate::AroundSun| Window {
            start: TimeOfDay::Solar {
                event,
                offset_seconds: -(a.before.as_std().as_secs() as i32),
            },
            end: TimeOfDay::Solar {
                event,
                offset_seconds: a.after.as_std().as_secs() as i32,
            },
        };
        let rules = keep
            .iter()
            .map(|rule| {
                let matcher = match rule {
                    KeepRule {
                        always: Some(_), ..
                    } => Matcher::Always,
                    KeepRule {
                        window: Some(w), ..
                    } => window(w.clone()),
                    KeepRule { dawn: Some(a), .. } => window(around(SunEvent::Sunrise, a)),
                    KeepRule { dusk: Some(a), .. } => window(around(SunEvent::Sunset, a)),
                    KeepRule { every: Some(e), .. } => Matcher::Every {
                        seconds: e.as_std().as_secs().max(1) as i64,
                        tz: recorder.time_zone(),
                    },
                    KeepRule {
                        detection: Some(d), ..
                    } => Matcher::Detection(d.clone()),
                    _ => Matcher::Always,
                };
                (rule.kind().to_string(), matcher)
            })
            .collect();
        Self { rules }
    }

    /// Whether there are rules at all (none: everything is kept).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule that keeps a recording with `facts` (`keep[i]:kind`), `None`: delete it.
    /// Without rules everything is kept (`none`).
    pub fn kept_by(&self, facts: &Facts) -> Option<String> {
        if self.rules.is_empty() {
            return Some("none".into());
        }
        let kept = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, (_, m))| m.keeps(facts))
            .map(|(i, (kind, _))| format!("keep[{i}]:{kind}"));
        kept.or_else(|| {
            let blind = self.rules.iter().any(|(_, m)| !m.judges(facts));
            blind.then(|| NOT_ANALYSED.to_string())
        })
    }
}

impl Matcher {
    /// Whether this rule could look at the recording: a detection rule only when its
    /// detector (or, without one, every detector of the deployment) finished it.
    fn judges(&self, facts: &Facts) -> bool {
        match self {
            Self::Detection(rule) => match &rule.detector {
                Some(d) => facts.judged_by.iter().any(|j| j == d.as_str()),
                None => {
                    !facts.detectors.is_empty() && facts.judged_by.len() == facts.detectors.len()
                }
            },
            Self::Always | Self::Window(_) | Self::Every { .. } => true,
        }
    }

    fn keeps(&self, facts: &Facts) -> bool {
        match self {
            Self::Always => true,
            Self::Window(schedule) => schedule.in_window(facts.start),
            Self::Every { seconds, tz } => holds_slot_start(facts, *seconds, tz),
            Self::Detection(rule) => facts.found.iter().any(|f| {
                f.score >= rule.min_score
                    && rule
                        .detector
                        .as_ref()
                        .is_none_or(|d| d.as_str() == f.detector)
                    && (rule.tags.is_empty() || f.tags.iter().any(|t| rule.tags.contains(t)))
            }),
        }
    }
}

/// Whether the recording is the one kept for a slot of `seconds` counted from local midnight:
/// it holds the slot's start, or it is the first recording after a start that no recording
/// held (a gap in the recording: a restart, a window opening mid-slot, a split at dropped
/// samples). So each slot that has recordings keeps exactly one: a boundary that the previous
/// recording held is its, not this one's.
fn holds_slot_start(facts: &Facts, seconds: i64, tz: &jiff::tz::TimeZone) -> bool {
    let local = facts.start.to_zoned(tz.clone());
    let since_midnight = local
        .start_of_day()
        .map(|m| facts.start.duration_since(m.timestamp()))
        .unwrap_or(SignedDuration::ZERO);
    // Microseconds: the precision of the recordings' start times, so a file that starts a few
    // microseconds after a boundary does not take it from the file before.
    let s = since_midnight.as_micros();
    let slot = i128::from(seconds) * 1_000_000;
    let end = s + (facts.duration_s * 1e6).round() as i128;
    // Boundaries from here on are this recording's to hold; the first recording of all holds
    // the one before it too.
    let from = match facts.previous_end {
        Some(previous) => s - facts.start.duration_since(previous).as_micros(),
        None => s - slot,
    };
    let mut next = from.div_euclid(slot) * slot;
    if next < from {
        next += slot;
    }
    next < end.max(s + 1)
}

/// Retention as a walk over the recordings, oldest first, that can stop early: `used` is the
/// bytes of every recording (from a tally, not from the walk), each recording taken decides
/// whether it goes, and [`Retention::done`] says when no later (younger) one can.
#[derive(Clone, Debug)]
pub struct Retention {
    used: u64,
    max_age_s: Option<f64>,
    max_usage: Option<u64>,
}

impl Retention {
    /// A walk with `used` bytes of recordings in all, `max_age` and `max_usage` (bytes).
    pub fn new(used: u64, max_age: Option<std::time::Duration>, max_usage: Option<u64>) -> Self {
        Self {
            used,
            max_age_s: max_age.map(|a| a.as_secs_f64()),
            max_usage,
        }
    }

    fn too_old(&self, age_s: f64) -> bool {
        self.max_age_s.is_some_and(|max| age_s > max)
    }

    fn too_much(&self) -> bool {
        self.max_usage.is_some_and(|limit| self.used > limit)
    }

    /// Whether the walk can stop before a recording of `age_s`: it is not too old (nor is
    /// any after it) and usage is within the limit.
    pub fn done(&self, age_s: f64) -> bool {
        !self.too_old(age_s) && !self.too_much()
    }

    /// The rule that deletes a recording of `age_s` and `bytes` (`None`: it stays); one that
    /// is not `deletable` never goes.
    pub fn take(&mut self, age_s: f64, bytes: u64, deletable: bool) -> Option<&'static str> {
        if !deletable {
            return None;
        }
        let rule = match (self.too_old(age_s), self.too_much()) {
            (true, _) => "maxAge",
            (false, true) => "maxUsage",
            (false, false) => return None,
        };
        self.used = self.used.saturating_sub(bytes);
        Some(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::spec::curate::{AroundSun, DetectionRule};

    /// A recording retention may delete, in the form of the table test below (the curator's
    /// walk reads the same facts from metadata.db).
    #[derive(Clone, Debug, PartialEq)]
    struct Candidate {
        id: String,
        /// How long it has really existed on this device, s.
        age_s: f64,
        bytes: u64,
        /// Not protected, every detector done, no message of it waiting.
        deletable: bool,
    }

    /// [`Retention`] walked over `candidates` (oldest first): which go, with the rule.
    fn retention(
        candidates: &[Candidate],
        max_age: Option<std::time::Duration>,
        max_usage: Option<u64>,
    ) -> Vec<(String, &'static str)> {
        let used = candidates.iter().map(|c| c.bytes).sum();
        let mut walk = Retention::new(used, max_age, max_usage);
        candidates
            .iter()
            .filter_map(|c| Some((c.id.clone(), walk.take(c.age_s, c.bytes, c.deletable)?)))
            .collect()
    }

    fn recorder() -> RecorderSpec {
        serde_json::from_value(serde_json::json!({"timezone": "Europe/London"})).unwrap()
    }

    fn location() -> Location {
        serde_json::from_value(serde_json::json!({"latitude": 51.76, "longitude": -1.26})).unwrap()
    }

    /// A 60 s recording starting at `t`, right after the previous one.
    fn at(t: &str, found: Vec<Found>) -> Facts {
        Facts {
            start: t.parse().unwrap(),
            duration_s: 60.0,
            previous_end: Some(t.parse().unwrap()),
            found,
            judged_by: ["birdnet", "bats", "x"].map(String::from).to_vec(),
            detectors: ["birdnet", "bats", "x"].map(String::from).to_vec(),
        }
    }

    fn rules(keep: serde_json::Value) -> Rules {
        let keep: Vec<KeepRule> = serde_json::from_value(keep).unwrap();
        Rules::new(&keep, &recorder(), Some(&location()))
    }

    #[test]
    fn no_rules_keep_everything_and_any_rule_keeps() {
        assert_eq!(
            rules(serde_json::json!([])).kept_by(&at("2026-06-01T12:00:00Z", vec![])),
            Some("none".into())
        );
        let r = rules(
            serde_json::json!([{"window": {"start": "05:00", "end": "07:00"}}, {"always": true}]),
        );
        assert_eq!(
            r.kept_by(&at("2026-06-01T04:30:00Z", vec![])),
            Some("keep[0]:window".into())
        );
        assert_eq!(
            r.kept_by(&at("2026-06-01T12:00:00Z", vec![])),
            Some("keep[1]:always".into())
        );
    }

    #[test]
    fn windows_dawn_and_dusk_follow_the_local_clock_and_the_sun() {
        // Oxford, 1 June 2026: sunrise about 03:50 UTC, sunset about 20:15 UTC.
        let r = rules(serde_json::json!([{"dawn": {"before": "30m", "after": "1h"}}]));
        assert!(r.kept_by(&at("2026-06-01T03:30:00Z", vec![])).is_some());
        assert!(r.kept_by(&at("2026-06-01T04:40:00Z", vec![])).is_some());
        assert!(r.kept_by(&at("2026-06-01T05:00:00Z", vec![])).is_none());
        assert!(r.kept_by(&at("2026-06-01T03:00:00Z", vec![])).is_none());
        let r = rules(serde_json::json!([{"dusk": {"before": "1h"}}]));
        assert!(r.kept_by(&at("2026-06-01T19:40:00Z", vec![])).is_some());
        assert!(r.kept_by(&at("2026-06-01T20:40:00Z", vec![])).is_none());
        let r = rules(serde_json::json!([{"window": {"start": "22:00", "end": "02:00"}}]));
        // 23:30 BST is 22:30 UTC; 02:30 BST is 01:30 UTC.
        assert!(r.kept_by(&at("2026-06-01T22:30:00Z", vec![])).is_some());
        assert!(r.kept_by(&at("2026-06-02T01:30:00Z", vec![])).is_none());
    }

    #[test]
    fn every_keeps_the_recording_holding_each_slot_start() {
        let r = rules(serde_json::json!([{"every": "10m"}]));
        // Local 13:10:00 BST, a slot start.
        assert!(r.kept_by(&at("2026-06-01T12:10:00Z", vec![])).is_some());
        assert!(r.kept_by(&at("2026-06-01T12:11:00Z", vec![])).is_none());
        // Starts 12:09:30.5, holds 12:10:00.
        assert!(r.kept_by(&at("2026-06-01T12:09:30.5Z", vec![])).is_some());
        let kept = (0..60)
            .filter(|m| {
                r.kept_by(&at(&format!("2026-06-01T12:{m:02}:00Z"), vec![]))
                    .is_some()
            })
            .count();
        assert_eq!(kept, 6, "one file of 60 s in every 10 minutes");
    }

    #[test]
    fn every_keeps_the_first_recording_after_a_slot_start_nobody_held() {
        let r = rules(serde_json::json!([{"every": "1m"}]));
        let after = |start: &str, previous_end: Option<&str>, duration_s: f64| Facts {
            start: start.parse().unwrap(),
            duration_s,
            previous_end: previous_end.map(|p| p.parse().unwrap()),
            found: vec![],
            judged_by: vec![],
            detectors: vec![],
        };
        let kept = |f: Facts| r.kept_by(&f).is_some();
        // A gap across the minute (dropped samples split the file): the first file after it.
        assert!(kept(after(
            "2026-06-01T12:10:00.135Z",
            Some("2026-06-01T12:09:59.9Z"),
            1.0
        )));
        assert!(!kept(after(
            "2026-06-01T12:10:01.135Z",
            Some("2026-06-01T12:10:01.135Z"),
            1.0
        )));
        // A recorder started (or a window opened) at 12:10:20: nobody held 12:10:00.
        assert!(kept(after(
            "2026-06-01T12:10:20Z",
            Some("2026-06-01T11:00:00Z"),
            1.0
        )));
        // The very first recording of all.
        assert!(kept(after("2026-06-01T12:10:20Z", None, 1.0)));
        // 120 µs after the minute, the file before ending there: that file held it.
        assert!(!kept(after(
            "2026-06-01T12:10:00.00012Z",
            Some("2026-06-01T12:10:00.00012Z"),
            1.0
        )));
        assert!(kept(after(
            "2026-06-01T12:09:59.00012Z",
            Some("2026-06-01T12:09:59.00012Z"),
            1.0
        )));
        // The previous file held the minute (it overlaps this one by 0.5 s): not this one.
        assert!(!kept(after(
            "2026-06-01T12:09:59.8Z",
            Some("2026-06-01T12:10:00.3Z"),
            1.0
        )));
        // A gap since yesterday: across midnight, still the first after it.
        assert!(kept(after(
            "2026-06-02T08:00:30Z",
            Some("2026-06-01T20:00:00Z"),
            1.0
        )));
        // 10 minutes of 1 s files from 12:00:00.4 on, contiguous: one per minute.
        let mut previous = None::<Timestamp>;
        let mut n = 0;
        for i in 0..600 {
            let start: Timestamp = "2026-06-01T12:00:00.4Z".parse::<Timestamp>().unwrap()
                + SignedDuration::from_secs(i);
            let facts = Facts {
                start,
                duration_s: 1.0,
                previous_end: previous,
                found: vec![],
                judged_by: vec![],
                detectors: vec![],
            };
            n += usize::from(kept(facts));
            previous = Some(start + SignedDuration::from_secs(1));
        }
        assert_eq!(
            n, 11,
            "the first file, then the ones holding 12:01 ... 12:10"
        );
    }

    #[test]
    fn detections_keep_by_score_detector_and_tag() {
        let found = |d: &str, s: f64, t: &str| Found {
            detector: d.into(),
            score: s,
            tags: vec![t.into()],
        };
        let r = rules(
            serde_json::json!([{"detection": {"minScore": 0.8, "detector": "birdnet", "tags": ["Turdus merula"]}}]),
        );
        assert!(
            r.kept_by(&at(
                "2026-06-01T12:00:00Z",
                vec![found("birdnet", 0.9, "Turdus merula")]
            ))
            .is_some()
        );
        assert!(
            r.kept_by(&at(
                "2026-06-01T12:00:00Z",
                vec![found("birdnet", 0.7, "Turdus merula")]
            ))
            .is_none()
        );
        assert!(
            r.kept_by(&at(
                "2026-06-01T12:00:00Z",
                vec![found("bats", 0.9, "Turdus merula")]
            ))
            .is_none()
        );
        assert!(
            r.kept_by(&at(
                "2026-06-01T12:00:00Z",
                vec![found("birdnet", 0.9, "Erithacus rubecula")]
            ))
            .is_none()
        );
        let any = Rules::new(
            &[KeepRule {
                detection: Some(DetectionRule {
                    min_score: 0.5,
                    detector: None,
                    tags: vec![],
                }),
                ..KeepRule::default()
            }],
            &recorder(),
            None,
        );
        assert!(
            any.kept_by(&at("2026-06-01T12:00:00Z", vec![found("x", 0.5, "sound")]))
                .is_some()
        );
        assert!(any.kept_by(&at("2026-06-01T12:00:00Z", vec![])).is_none());
        let _ = AroundSun::default();
    }

    /// A detection rule never deletes what its detector did not analyse: made before the
    /// detector was added, or a detector the deployment does not run. Other rules still keep.
    #[test]
    fn a_detection_rule_never_deletes_what_its_detector_did_not_judge() {
        let facts = |judged_by: &[&str], detectors: &[&str]| Facts {
            judged_by: judged_by.iter().map(|s| s.to_string()).collect(),
            detectors: detectors.iter().map(|s| s.to_string()).collect(),
            ..at("2026-06-01T12:00:00Z", vec![])
        };
        let named =
            rules(serde_json::json!([{"detection": {"minScore": 0.5, "detector": "birdnet"}}]));
        assert_eq!(named.kept_by(&facts(&["birdnet"], &["birdnet"])), None);
        assert_eq!(
            named.kept_by(&facts(&[], &["birdnet"])).as_deref(),
            Some(NOT_ANALYSED)
        );
        assert_eq!(
            named.kept_by(&facts(&["bats"], &["bats"])).as_deref(),
            Some(NOT_ANALYSED),
            "a detector the deployment does not run judges nothing"
        );
        let any = rules(serde_json::json!([{"detection": {"minScore": 0.5}}]));
        assert_eq!(any.kept_by(&facts(&["a", "b"], &["a", "b"])), None);
        for (judged, configured) in [(&["a"][..], &["a", "b"][..]), (&[], &[])] {
            assert_eq!(
                any.kept_by(&facts(judged, configured)).as_deref(),
                Some(NOT_ANALYSED),
                "{judged:?} of {configured:?}"
            );
        }
        // Another rule that keeps it is named first.
        let window = rules(serde_json::json!([
            {"detection": {"minScore": 0.5, "detector": "birdnet"}},
            {"window": {"start": "12:00", "end": "14:00"}}
        ]));
        assert_eq!(
            window.kept_by(&facts(&[], &["birdnet"])).as_deref(),
            Some("keep[1]:window")
        );
    }

    #[test]
    fn retention_deletes_the_oldest_deletable_by_age_then_by_usage() {
        // Ages as on 2026-06-10 12:00 of recordings made at midnight on day `day`.
        let c = |id: &str, day: u8, deletable: bool| Candidate {
            id: id.into(),
            age_s: (f64::from(10 - day) + 0.5) * 86_400.0,
            bytes: 100,
            deletable,
        };
        let cands = [
            c("a", 1, true),
            c("b", 2, false),
            c("c", 3, true),
            c("d", 8, true),
            c("e", 9, true),
        ];
        let week = Some(std::time::Duration::from_secs(7 * 86_400));
        assert_eq!(
            retention(&cands, week, None),
            vec![("a".into(), "maxAge"), ("c".into(), "maxAge")]
        );
        // 500 bytes used, at most 250: a, c (b is not deletable), then d.
        assert_eq!(
            retention(&cands, None, Some(250)),
            vec![
                ("a".into(), "maxUsage"),
                ("c".into(), "maxUsage"),
                ("d".into(), "maxUsage")
            ]
        );
        assert!(retention(&cands, None, Some(1000)).is_empty());
    }
}
