//! `spec.detectors` and `spec.storage.keep` / `maxAge` / `maxUsage`: what looks at each new
//! recording, and which recordings are kept or deleted. Parsing and cross-field checks only;
//! the work is `crate::curate`'s.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::recorder::{ByteSize, Window};
use super::{FieldIssue, HumanDuration};

pub use super::names::DetectorName;

/// The component name of the curator (detectors, keep rules, retention).
pub const CURATOR_COMPONENT: &str = "curator";

/// What kind of detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DetectorKind {
    /// Built in: band-limited energy above the noise floor (docs/DETECTORS.md); no model.
    BandEnergy,
    /// An external program run once per recording, printing its detections as JSON.
    Command,
}

/// One entry of `spec.detectors`. Fields belong to one kind each; the others are refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetectorSpec {
    /// Its name: `model_name` of its rows in metadata.db and of its messages.
    pub name: DetectorName,
    /// `bandEnergy` or `command`.
    pub kind: DetectorKind,
    /// bandEnergy: lower edge of the band, Hz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_hz: Option<f64>,
    /// bandEnergy: upper edge of the band, Hz (at most half the sample rate is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_hz: Option<f64>,
    /// bandEnergy: how far above the noise floor the band must rise, dB (default 12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_db: Option<f64>,
    /// bandEnergy: shortest event kept (default 100ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_duration: Option<HumanDuration>,
    /// command: the program and its arguments; the recording's absolute path is appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// command: how long one recording may take before the program is killed (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// command: further attempts on a recording after a failure that may pass (default 2);
    /// then the recording is marked failed for this detector and the queue goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// `command` detectors: the curator (and so every detector) may use the network; without
    /// it none has any (a model that phones home fails instead).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// Recordings waiting for this detector beyond which it is an error (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backlog: Option<u32>,
    /// Only detections scoring at least this (0..1) are sent as messages (default 0: all).
    /// Every detection is stored in metadata.db whatever its score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_min_score: Option<f64>,
}

/// Defaults of the optional detector fields.
pub mod defaults {
    /// `thresholdDb`.
    pub const THRESHOLD_DB: f64 = 12.0;
    /// `minDuration`, ms.
    pub const MIN_DURATION_MS: u64 = 100;
    /// `timeout`, s.
    pub const TIMEOUT_S: u64 = 60;
    /// `retries`.
    pub const RETRIES: u32 = 2;
    /// `maxBacklog`.
    pub const MAX_BACKLOG: u32 = 20;
}

impl DetectorSpec {
    /// `retries`, or its default.
    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(defaults::RETRIES)
    }
    /// `maxBacklog`, or its default.
    pub fn max_backlog(&self) -> u32 {
        self.max_backlog.unwrap_or(defaults::MAX_BACKLOG)
    }
    /// `sendMinScore`, or 0.
    pub fn send_min_score(&self) -> f64 {
        self.send_min_score.unwrap_or(0.0)
    }

    fn validate(&self, field: &str) -> Vec<FieldIssue> {
        let mut issues = Vec::new();
        let only = |set: bool, name: &str, kind: &str, issues: &mut Vec<FieldIssue>| {
            if set {
                issues.push(FieldIssue::new(
                    format!("{field}.{name}"),
                    format!("{name} belongs to kind {kind}; remove it or change kind"),
                ));
            }
        };
        match self.kind {
            DetectorKind::BandEnergy => {
                for (name, set) in [
                    ("command", self.command.is_some()),
                    ("timeout", self.timeout.is_some()),
                    ("retries", self.retries.is_some()),
                ] {
                    only(set, name, "command", &mut issues);
                }
                match (self.low_hz, self.high_hz) {
                    (Some(low), Some(high)) if low >= 0.0 && high > low && high.is_finite() => {}
                    (Some(_), Some(_)) => issues.push(FieldIssue::new(
                        format!("{field}.highHz"),
                        "the band needs 0 <= lowHz < highHz, in Hz",
                    )),
                    _ => issues.push(FieldIssue::new(
                        field,
                        "kind bandEnergy needs lowHz and highHz (the band, in Hz), e.g. {lowHz: 2000, highHz: 8000}",
                    )),
                }
                if self.threshold_db.is_some_and(|t| !(t > 0.0 && t <= 100.0)) {
                    issues.push(FieldIssue::new(
                        format!("{field}.thresholdDb"),
                        "thresholdDb must be above 0 and at most 100 dB",
                    ));
                }
            }
            DetectorKind::Command => {
                for (name, set) in [
                    ("lowHz", self.low_hz.is_some()),
                    ("highHz", self.high_hz.is_some()),
                    ("thresholdDb", self.threshold_db.is_some()),
                    ("minDuration", self.min_duration.is_some()),
                ] {
                    only(set, name, "bandEnergy", &mut issues);
                }
                match &self.command {
                    Some(argv) if argv.first().is_some_and(|p| !p.is_empty()) => {}
                    _ => issues.push(FieldIssue::new(
                        format!("{field}.command"),
                        "kind command needs command: the program and its arguments, e.g. [\"/usr/bin/python3\", \"/opt/birdnet/run.py\"]",
                    )),
                }
                if self.timeout.is_some_and(|t| t.as_std().is_zero()) {
                    issues.push(FieldIssue::new(
                        format!("{field}.timeout"),
                        "timeout must be longer than 0s",
                    ));
                }
            }
        }
        if self
            .send_min_score
            .is_some_and(|s| !(0.0..=1.0).contains(&s))
        {
            issues.push(FieldIssue::new(
                format!("{field}.sendMinScore"),
                "sendMinScore is a score between 0 and 1",
            ));
        }
        issues
    }
}

/// Checks `spec.detectors`: names unique, each entry's fields those of its kind.
pub fn validate_detectors(detectors: &[DetectorSpec]) -> Vec<FieldIssue> {
    let mut issues = Vec::new();
    for (i, d) in detectors.iter().enumerate() {
        let field = format!("spec.detectors[{i}]");
        if let Some(first) = detectors[..i].iter().position(|e| e.name == d.name) {
            issues.push(FieldIssue::new(
                format!("{field}.name"),
                format!("duplicate detector name {:?} (also spec.detectors[{first}]); names must be unique", d.name.as_str()),
            ));
        }
        issues.extend(d.validate(&field));
    }
    issues
}

/// A time around a sun event: from `before` it to `after` it.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AroundSun {
    /// How long before the event the span starts (default 0s).
    #[serde(default)]
    pub before: HumanDuration,
    /// How long after the event it ends (default 0s).
    #[serde(default)]
    pub after: HumanDuration,
}

/// Keep recordings with a detection scoring at least `minScore`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetectionRule {
    /// The lowest detection score that keeps a recording (0..1).
    pub min_score: f64,
    /// Only detections of this detector (default: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<DetectorName>,
    /// Only detections carrying one of these tag values (any key; default: any tag).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// One saving rule of `spec.storage.keep`: exactly one field is set. A recording is kept when
/// any rule keeps it.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeepRule {
    /// `always: true` keeps everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always: Option<bool>,
    /// Recordings that start within a daily window (the recorder's syntax: "HH:MM",
    /// "sunrise-30m", "sunset+1h").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Recordings that start from `before` sunrise to `after` it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dawn: Option<AroundSun>,
    /// Recordings that start from `before` sunset to `after` it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dusk: Option<AroundSun>,
    /// One recording in every such slot (slots counted from local midnight): the one holding
    /// the slot's start, e.g. `every: 10m` keeps the files of 00:00, 00:10, 00:20 ...; when no
    /// recording held a start (a gap), the first recording after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<HumanDuration>,
    /// Recordings with a detection scoring at least `minScore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<DetectionRule>,
}

impl KeepRule {
    /// The rule's name in reports: `always`, `window`, `dawn`, `dusk`, `every`, `detection`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self {
                always: Some(_), ..
            } => "always",
            Self {
                window: Some(_), ..
            } => "window",
            Self { dawn: Some(_), .. } => "dawn",
            Self { dusk: Some(_), .. } => "dusk",
            Self { every: Some(_), .. } => "every",
            _ => "detection",
        }
    }

    fn set_count(&self) -> usize {
        [
            self.always.is_some(),
            self.window.is_some(),
            self.dawn.is_some(),
            self.dusk.is_some(),
            self.every.is_some(),
            self.detection.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count()
    }

    /// Whether it follows the sun (needs `spec.location`).
    pub fn is_solar(&self) -> bool {
        self.dawn.is_some()
            || self.dusk.is_some()
            || self
                .window
                .as_ref()
                .is_some_and(|w| w.start.is_solar() || w.end.is_solar())
    }
}

/// `maxUsage`: bytes, or a percentage of the storage's file system.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Usage {
    /// At most this many bytes of recordings.
    Bytes(ByteSize),
    /// At most this percentage (0-100] of the file system's size used by recordings.
    Percent(f64),
}

impl FromStr for Usage {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().strip_suffix('%') {
            Some(number) => match number.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(Self::Percent(p)),
                _ => Err(format!(
                    "invalid usage {text:?}: a percentage must be above 0 and at most 100, e.g. \"80%\""
                )),
            },
            None => text
                .parse()
                .map(Self::Bytes)
                .map_err(|e| format!("{e}; or a percentage of the file system, e.g. \"80%\"")),
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "{b}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Usage {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Usage".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A size such as \"20GiB\", or a percentage of the file system such as \"80%\".",
            "examples": ["80%", "20GiB"]
        })
    }
}

/// Checks `spec.storage.keep`: one field per rule, sun rules with a location, sensible values.
pub fn validate_keep(rules: &[KeepRule], has_location: bool) -> Vec<FieldIssue> {
    let mut issues = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("spec.storage.keep[{i}]");
        if rule.set_count() != 1 {
            issues.push(FieldIssue::new(
                &field,
                "each keep rule has exactly one of always, window, dawn, dusk, every, detection; write one rule per list item",
            ));
            continue;
        }
        if rule.is_solar() && !has_location {
            issues.push(FieldIssue::new(
                &field,
                "sunrise and sunset need spec.location (latitude, longitude)",
            ));
        }
        if rule.every.is_some_and(|e| e.as_std().as_secs() < 60) {
            issues.push(FieldIssue::new(
                format!("{field}.every"),
                "every must be at least 1m",
            ));
        }
        if let Some(d) = &rule.detection
            && !(0.0..=1.0).contains(&d.min_score)
        {
            issues.push(FieldIssue::new(
                format!("{field}.detection.minScore"),
                "minScore is a score between 0 and 1",
            ));
        }
        if rule.always == Some(false) {
            issues.push(FieldIssue::new(
                format!("{field}.always"),
                "always: false keeps nothing; remove the rule",
            ));
        }
    }
    issues
}
