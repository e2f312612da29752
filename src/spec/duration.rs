//! Human-written durations such as `100ms`, `5s`, `1m30s`: the only duration form the desired state accepts.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration written as a string of `<number><unit>` parts (`ms`, `s`, `m`, `h`, `d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(Duration);

impl HumanDuration {
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
    /// A duration of `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    /// The duration as a [`std::time::Duration`].
    pub fn as_std(self) -> Duration {
        self.0
    }
    /// True for a zero duration (`0s`).
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

/// Why a duration string was refused; the message tells the user what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {text:?}: {why}; expected a number and a unit such as \"500ms\", \"5s\", \"5m\", \"2h\" or \"0s\""
)]
pub struct DurationParseError {
    text: String,
    why: &'static str,
}

impl std::str::FromStr for HumanDuration {
    type Err = DurationParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |why| DurationParseError {
            text: text.to_string(),
            why,
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(fail("it is empty"));
        }
        let mut total_ms: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(fail("a number must come before each unit"));
            }
            let number: u128 = rest[..digits]
                .parse()
                .map_err(|_| fail("the number is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit_ms: u128 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(fail("the unit is missing")),
                _ => return Err(fail("unknown unit")),
            };
            rest = &rest[unit_len..];
            total_ms = total_ms
                .checked_add(
                    number
                        .checked_mul(unit_ms)
                        .ok_or_else(|| fail("it is too large"))?,
                )
                .ok_or_else(|| fail("it is too large"))?;
        }
        // A year is far beyond any sensible timeout or back-off; refusing it catches typos like "5000000h".
        if total_ms > 366 * 86_400_000 {
            return Err(fail("it is longer than a year"));
        }
        Ok(Self(Duration::from_millis(total_ms as u64)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let mut rest = ms;
        for (unit, size) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if rest >= size {
                write!(f, "{}{}", rest / size, unit)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d))+$",
            "description": "A duration such as \"100ms\", \"5s\", \"5m\", \"1h30m\" or \"0s\".",
            "examples": ["100ms", "5s", "5m"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_combinations() {
        let cases = [
            ("100ms", 100),
            ("5s", 5_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("0s", 0),
            ("1m30s", 90_000),
        ];
        for (text, ms) in cases {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.as_std(), Duration::from_millis(ms), "{text}");
        }
    }

    #[test]
    fn refuses_garbage_with_a_reason() {
        for text in [
            "",
            "5",
            "s",
            "5 s",
            "5sec",
            "-1s",
            "1.5s",
            "9999999999999999999999h",
            "400d",
        ] {
            let err = text.parse::<HumanDuration>().unwrap_err();
            assert!(
                err.to_string().contains("expected a number and a unit"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn displays_in_the_form_it_reads() {
        for text in ["100ms", "5s", "1m30s", "0s", "1d2h"] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
    }
}
