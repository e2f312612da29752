//! `spec.power`: where the board's power and heat are read, when they warn, and the energy
//! policy (what pauses when power runs short). Without it roost still reads `/sys` and warns
//! with the defaults; nothing pauses.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AbsolutePath, FieldIssue, HumanDuration};

/// `spec.power`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PowerSpec {
    /// The folder the kernel's sysfs is mounted on (default `/sys`): the firmware's throttling
    /// bits (`devices/platform/soc/soc:firmware/get_throttled`), the undervoltage alarm
    /// (`class/hwmon/*/in0_lcrit_alarm` of `rpi_volt`), thermal zones and `power_supply`
    /// are read below it. Another folder for a board whose tree lives elsewhere, or a test.
    #[serde(default = "default_root")]
    pub sysfs_root: AbsolutePath,
    /// SoC temperature (°C) at or above which DEP_E904 warns. Default 80 (the Pi's firmware
    /// caps the clock from 80 and throttles hard at 85).
    #[serde(default = "default_hot")]
    #[schemars(range(min = 30.0, max = 120.0))]
    pub hot_celsius: f64,
    /// Battery level (percent) below which DEP_E905 warns while the battery is not charging.
    /// Default 20.
    #[serde(default = "default_low")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub battery_low_percent: f64,
    /// The energy policy; unset, power problems only warn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saving: Option<SavingSpec>,
}

impl Default for PowerSpec {
    fn default() -> Self {
        Self {
            sysfs_root: default_root(),
            hot_celsius: default_hot(),
            battery_low_percent: default_low(),
            saving: None,
        }
    }
}

/// `spec.power.saving`: what pauses when power runs short, in this order: first the
/// detectors and the page's spectrograms (recording goes on), then recording (the file being
/// written is finished and kept first). What was paused resumes by itself once power is back
/// past the hysteresis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavingSpec {
    /// Battery level (percent) below which detectors and the page's spectrograms pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub reduce_below_percent: Option<f64>,
    /// Battery level (percent) below which recording stops (after the current file) until
    /// the level is back above it plus `hysteresisPercent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub stop_below_percent: Option<f64>,
    /// What undervoltage (now) does: `none` (default: it warns), `reduce` or `stop`.
    #[serde(default)]
    pub on_undervoltage: SavingLevel,
    /// How far above a threshold the battery must climb before what it paused resumes.
    /// Default 5 (percentage points).
    #[serde(default = "default_hysteresis")]
    #[schemars(range(min = 0.0, max = 50.0))]
    pub hysteresis_percent: f64,
    /// How long undervoltage must be gone before what it paused resumes. Default `2m`.
    #[serde(default = "default_settle")]
    pub settle: HumanDuration,
    /// How often a paused recorder looks at the power again. Default `60s`.
    #[serde(default = "default_check_every")]
    pub check_every: HumanDuration,
}

/// How much is paused to save power, in increasing order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum SavingLevel {
    /// Nothing paused (in `onUndervoltage`: undervoltage only warns).
    #[default]
    None,
    /// Detectors and the page's spectrograms pause; recording goes on.
    Reduce,
    /// Recording stops too, after the current file.
    Stop,
}

impl PowerSpec {
    /// Cross-field checks.
    pub fn validate(&self) -> Vec<FieldIssue> {
        let mut issues = Vec::new();
        let Some(s) = &self.saving else {
            return issues;
        };
        if let (Some(reduce), Some(stop)) = (s.reduce_below_percent, s.stop_below_percent)
            && stop > reduce
        {
            issues.push(FieldIssue::new(
                "spec.power.saving.stopBelowPercent",
                format!(
                    "stopBelowPercent ({stop}) is above reduceBelowPercent ({reduce}): recording would stop before the detectors pause; make it lower"
                ),
            ));
        }
        for (field, v) in [
            ("reduceBelowPercent", s.reduce_below_percent),
            ("stopBelowPercent", s.stop_below_percent),
        ] {
            if let Some(v) = v.filter(|v| !(0.0..=100.0).contains(v)) {
                issues.push(FieldIssue::new(
                    format!("spec.power.saving.{field}"),
                    format!("{v} is not a battery level; give a percentage from 0 to 100"),
                ));
            }
        }
        if s.check_every.as_std().is_zero() {
            issues.push(FieldIssue::new(
                "spec.power.saving.checkEvery",
                "0s would look at the power without rest; give at least 1s",
            ));
        }
        issues
    }
}

fn default_root() -> AbsolutePath {
    AbsolutePath::try_from("/sys".to_string()).expect("an absolute path")
}

fn default_hot() -> f64 {
    80.0
}

fn default_low() -> f64 {
    20.0
}

fn default_hysteresis() -> f64 {
    5.0
}

fn default_settle() -> HumanDuration {
    HumanDuration::from_secs(120)
}

fn default_check_every() -> HumanDuration {
    HumanDuration::from_secs(60)
}
