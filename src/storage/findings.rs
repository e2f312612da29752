//! What a detector found in one recording: the JSON document a command detector prints on
//! stdout, with the field names of acoupi's model output (`detections`, `location`,
//! `detection_score`, `tags`, `confidence_score`), and the range checks it must pass before
//! roost keeps any of it. This module only describes and checks; it never runs anything.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// More detections than this in one recording are refused: a model that reports more is
/// misconfigured (a threshold of 0), and each detection becomes a row downstream.
pub const MAX_DETECTIONS: usize = 10_000;
/// Tag keys and values longer than this (in characters) are refused: they are labels, not
/// documents.
pub const MAX_TAG_TEXT_CHARS: usize = 256;
/// How far past the recording's end a time may lie, in seconds: models round their frame
/// times, and the duration they saw may differ from roost's by a frame.
pub const TIME_TOLERANCE_S: f64 = 0.1;

/// What a model found in one recording.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Findings {
    /// Sounds found at a place in time and frequency. Absent means none.
    #[serde(default)]
    #[schemars(length(max = MAX_DETECTIONS))]
    pub detections: Vec<Detection>,
    /// Tags of the recording as a whole (file-level tags, e.g. "rain"). Absent means none.
    #[serde(default)]
    pub tags: Vec<PredictedTag>,
}

/// One sound a model found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    /// `[start_s, low_hz, end_s, high_hz]` (acoupi's `BoundingBox` coordinates order): seconds
    /// from the start of the recording and frequencies in hertz.
    pub location: [f64; 4],
    /// How sure the model is that there is a sound here at all, 0 to 1.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub detection_score: f64,
    /// What the sound is (species, call type ...), each with its own confidence. Absent means
    /// none.
    #[serde(default)]
    pub tags: Vec<PredictedTag>,
}

/// A label a model gave, with how sure it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictedTag {
    /// What the label is about, e.g. `species`.
    #[schemars(length(min = 1, max = MAX_TAG_TEXT_CHARS))]
    pub key: String,
    /// The label, e.g. `Turdus merula`.
    #[schemars(length(min = 1, max = MAX_TAG_TEXT_CHARS))]
    pub value: String,
    /// How sure the model is of this label, 0 to 1.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub confidence_score: f64,
}

/// The limits one recording sets on the numbers in its findings.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    duration_s: f64,
    nyquist_hz: f64,
}

impl Findings {
    /// Checks ranges against the recording the findings are about: scores in 0..=1, finite
    /// numbers, start <= end within 0..=`duration_s` (plus [`TIME_TOLERANCE_S`]), low <= high
    /// within 0..=`sample_rate`/2, keys and values not blank and of at most [`MAX_TAG_TEXT_CHARS`],
    /// at most [`MAX_DETECTIONS`]. The error names the JSON path of the first bad value, e.g.
    /// `detections[3].location[2]: end 12.5 s is past the recording's end (10 s)`.
    pub fn validate(&self, duration_s: f64, sample_rate: u32) -> Result<(), String> {
        if self.detections.len() > MAX_DETECTIONS {
            return Err(format!(
                "detections: {} detections, at most {MAX_DETECTIONS} are accepted per recording; raise the model's threshold",
                self.detections.len()
            ));
        }
        let bounds = Bounds {
            duration_s,
            nyquist_hz: f64::from(sample_rate) / 2.0,
        };
        validate_tags("tags", &self.tags)?;
        for (i, detection) in self.detections.iter().enumerate() {
            detection.validate(&format!("detections[{i}]"), bounds)?;
        }
        Ok(())
    }
}

impl Detection {
    fn validate(&self, path: &str, bounds: Bounds) -> Result<(), String> {
        for (j, value) in self.location.iter().enumerate() {
            if !value.is_finite() {
                return Err(format!(
                    "{path}.location[{j}]: {value} is not a finite number"
                ));
            }
        }
        let [start_s, low_hz, end_s, high_hz] = self.location;
        let latest_s = bounds.duration_s + TIME_TOLERANCE_S;
        let duration_s = bounds.duration_s;
        let nyquist_hz = bounds.nyquist_hz;
        let problem = if start_s < 0.0 {
            Some((
                0,
                format!("start {start_s} s is before the recording's start (0 s)"),
            ))
        } else if start_s > latest_s {
            Some((
                0,
                format!("start {start_s} s is past the recording's end ({duration_s} s)"),
            ))
        } else if end_s < start_s {
            Some((
                2,
                format!("end {end_s} s is before the start ({start_s} s)"),
            ))
        } else if end_s > latest_s {
            Some((
                2,
                format!("end {end_s} s is past the recording's end ({duration_s} s)"),
            ))
        } else if low_hz < 0.0 {
            Some((1, format!("low frequency {low_hz} Hz is below 0 Hz")))
        } else if high_hz < low_hz {
            Some((
                3,
                format!("high frequency {high_hz} Hz is below the low frequency ({low_hz} Hz)"),
            ))
        } else if high_hz > nyquist_hz {
            Some((
                3,
                format!(
                    "high frequency {high_hz} Hz is above half the sample rate ({nyquist_hz} Hz)"
                ),
            ))
        } else {
            None
        };
        if let Some((j, why)) = problem {
            return Err(format!("{path}.location[{j}]: {why}"));
        }
        check_score(&format!("{path}.detection_score"), self.detection_score)?;
        validate_tags(&format!("{path}.tags"), &self.tags)
    }
}

fn validate_tags(path: &str, tags: &[PredictedTag]) -> Result<(), String> {
    for (i, tag) in tags.iter().enumerate() {
        let path = format!("{path}[{i}]");
        check_text(&format!("{path}.key"), &tag.key)?;
        check_text(&format!("{path}.value"), &tag.value)?;
        check_score(&format!("{path}.confidence_score"), tag.confidence_score)?;
    }
    Ok(())
}

fn check_score(path: &str, score: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&score) {
        Ok(())
    } else {
        Err(format!("{path}: {score} is not a score between 0 and 1"))
    }
}

fn check_text(path: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        Err(format!("{path}: is empty"))
    } else if text.chars().count() > MAX_TAG_TEXT_CHARS {
        Err(format!(
            "{path}: {} characters long, at most {MAX_TAG_TEXT_CHARS} are accepted",
            text.chars().count()
        ))
    } else {
        Ok(())
    }
}

/// The JSON Schema of [`Findings`], pretty-printed (committed as `schemas/findings.schema.json`
/// for detector authors).
pub fn findings_schema() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(Findings)).expect("schema serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(location: [f64; 4], detection_score: f64) -> Findings {
        Findings {
            detections: vec![Detection {
                location,
                detection_score,
                tags: vec![tag("species", "Turdus merula", 0.8)],
            }],
            tags: vec![],
        }
    }

    fn tag(key: &str, value: &str, confidence_score: f64) -> PredictedTag {
        PredictedTag {
            key: key.into(),
            value: value.into(),
            confidence_score,
        }
    }

    #[test]
    fn the_documented_example_parses_and_passes() {
        let json = r#"{
            "detections": [
                {"location": [3.0, 0.0, 6.0, 15000.0], "detection_score": 0.91,
                 "tags": [{"key": "species", "value": "Turdus merula", "confidence_score": 0.91}]}
            ],
            "tags": [{"key": "weather", "value": "rain", "confidence_score": 0.7}]
        }"#;
        let findings: Findings = serde_json::from_str(json).unwrap();
        assert_eq!(findings.detections[0].location, [3.0, 0.0, 6.0, 15000.0]);
        findings.validate(10.0, 48_000).unwrap();
        let empty: Findings = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Findings::default());
        empty.validate(10.0, 48_000).unwrap();
    }

    #[test]
    fn unknown_and_missing_fields_are_refused() {
        let unknown =
            r#"{"detections": [{"location": [0,0,1,1], "detection_score": 1, "score": 1}]}"#;
        let e = serde_json::from_str::<Findings>(unknown).unwrap_err();
        assert!(e.to_string().contains("unknown field `score`"), "{e}");
        let missing = r#"{"detections": [{"location": [0,0,1,1]}]}"#;
        let e = serde_json::from_str::<Findings>(missing).unwrap_err();
        assert!(e.to_string().contains("detection_score"), "{e}");
        let short = r#"{"detections": [{"location": [0,0,1], "detection_score": 1}]}"#;
        assert!(serde_json::from_str::<Findings>(short).is_err());
    }

    #[test]
    fn each_range_is_checked_and_named_by_its_path() {
        let table: &[(Findings, &str)] = &[
            (
                one([-0.5, 0.0, 1.0, 100.0], 0.5),
                "detections[0].location[0]: start -0.5 s is before",
            ),
            (
                one([11.0, 0.0, 11.0, 100.0], 0.5),
                "detections[0].location[0]: start 11 s is past",
            ),
            (
                one([2.0, 0.0, 1.0, 100.0], 0.5),
                "detections[0].location[2]: end 1 s is before the start",
            ),
            (
                one([0.0, 0.0, 10.2, 100.0], 0.5),
                "detections[0].location[2]: end 10.2 s is past the recording's end (10 s)",
            ),
            (
                one([0.0, -1.0, 1.0, 100.0], 0.5),
                "detections[0].location[1]: low frequency -1 Hz",
            ),
            (
                one([0.0, 200.0, 1.0, 100.0], 0.5),
                "detections[0].location[3]: high frequency 100 Hz is below",
            ),
            (
                one([0.0, 0.0, 1.0, 24_000.5], 0.5),
                "detections[0].location[3]: high frequency 24000.5 Hz is above half the sample rate (24000 Hz)",
            ),
            (
                one([0.0, f64::NAN, 1.0, 100.0], 0.5),
                "detections[0].location[1]: NaN is not a finite number",
            ),
            (
                one([0.0, 0.0, 1.0, 100.0], 1.5),
                "detections[0].detection_score: 1.5 is not a score",
            ),
            (
                one([0.0, 0.0, 1.0, 100.0], -0.1),
                "detections[0].detection_score: -0.1 is not a score",
            ),
        ];
        for (findings, expected) in table {
            let e = findings.validate(10.0, 48_000).unwrap_err();
            assert!(
                e.starts_with(expected),
                "{e:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn edges_and_the_tolerance_pass() {
        one([0.0, 0.0, 10.0, 24_000.0], 0.0)
            .validate(10.0, 48_000)
            .unwrap();
        one([10.05, 0.0, 10.1, 100.0], 1.0)
            .validate(10.0, 48_000)
            .unwrap();
    }

    #[test]
    fn tags_are_checked_at_both_levels() {
        let mut findings = one([0.0, 0.0, 1.0, 100.0], 0.5);
        findings.detections.push(findings.detections[0].clone());
        findings.detections[1].tags.push(tag("species", " ", 0.5));
        let e = findings.validate(10.0, 48_000).unwrap_err();
        assert_eq!(e, "detections[1].tags[1].value: is empty");
        findings.detections.truncate(1);
        findings.tags.push(tag("weather", "rain", 2.0));
        let e = findings.validate(10.0, 48_000).unwrap_err();
        assert_eq!(
            e,
            "tags[0].confidence_score: 2 is not a score between 0 and 1"
        );
        findings.tags[0] = tag(&"k".repeat(MAX_TAG_TEXT_CHARS + 1), "rain", 0.5);
        let e = findings.validate(10.0, 48_000).unwrap_err();
        assert!(e.starts_with("tags[0].key: 257 characters long"), "{e}");
    }

    #[test]
    fn too_many_detections_are_refused() {
        let mut findings = one([0.0, 0.0, 1.0, 100.0], 0.5);
        findings.detections = vec![findings.detections[0].clone(); MAX_DETECTIONS + 1];
        let e = findings.validate(10.0, 48_000).unwrap_err();
        assert!(e.starts_with("detections: 10001 detections"), "{e}");
        findings.detections.truncate(MAX_DETECTIONS);
        findings.validate(10.0, 48_000).unwrap();
    }
}
