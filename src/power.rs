//! The board's power and heat, read from sysfs under a root folder (`spec.power.sysfsRoot`,
//! default `/sys`) and judged: warnings with codes, and the energy policy's level with
//! hysteresis. Reading is a handful of small files, done by the component processes at wake-ups
//! they have anyway (never a timer of its own while they record); judging is pure and takes
//! the time it judges at.
//!
//! Sources, where the board has them: the Raspberry Pi firmware's throttling bits
//! (`devices/platform/soc/soc:firmware/get_throttled`, bit 0 undervoltage, 1 frequency
//! capped, 2 throttled, 3 soft temperature limit; bits 16-19 the same since boot), the `rpi_volt`
//! hwmon undervoltage alarm (`class/hwmon/*/in0_lcrit_alarm`), the SoC temperature
//! (`class/thermal/thermal_zone*/temp`, millidegrees; the `cpu-thermal` zone first), and
//! batteries and chargers (`class/power_supply/*`: `type`, `capacity`, `status`, `online`).
//! A board without some of them (the Zero range has no undervoltage detector) reports them as
//! absent, once, never as a fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::errors::{self, Problem};
use crate::spec::power::{PowerSpec, SavingLevel};

/// Degrees below `hotCelsius` the board must cool before DEP_E904 clears.
pub const HOT_HYSTERESIS_C: f64 = 3.0;
/// Points above `batteryLowPercent` the battery must climb before DEP_E905 clears.
pub const LOW_HYSTERESIS_PERCENT: f64 = 2.0;

/// The firmware's throttling bits, relative to the sysfs root.
pub const THROTTLED_FILE: &str = "devices/platform/soc/soc:firmware/get_throttled";

/// What the firmware's bits say, now and since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Conditions {
    /// The supply is below what the board needs (about 4.63 V on a Pi).
    pub undervoltage: bool,
    /// The ARM clock is capped.
    pub frequency_capped: bool,
    /// The ARM clock is throttled.
    pub throttled: bool,
    /// The soft temperature limit is active.
    pub soft_temperature_limit: bool,
}

impl Conditions {
    /// Conditions of the four bits from `shift` (0 now, 16 since boot).
    fn of_bits(bits: u32, shift: u32) -> Self {
        let bit = |n: u32| bits & (1 << (n + shift)) != 0;
        Self {
            undervoltage: bit(0),
            frequency_capped: bit(1),
            throttled: bit(2),
            soft_temperature_limit: bit(3),
        }
    }

    /// Either's conditions.
    pub fn or(self, other: Self) -> Self {
        Self {
            undervoltage: self.undervoltage || other.undervoltage,
            frequency_capped: self.frequency_capped || other.frequency_capped,
            throttled: self.throttled || other.throttled,
            soft_temperature_limit: self.soft_temperature_limit || other.soft_temperature_limit,
        }
    }

    /// Whether any holds.
    pub fn any(self) -> bool {
        self.undervoltage || self.frequency_capped || self.throttled || self.soft_temperature_limit
    }

    /// The names of those that hold, for GUANO and messages (`undervoltage, throttled`).
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.undervoltage, "undervoltage"),
            (self.frequency_capped, "frequency capped"),
            (self.throttled, "throttled"),
            (self.soft_temperature_limit, "soft temperature limit"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// One look at the board. `None`: the board has no such interface.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Reading {
    /// The firmware's conditions now (with the hwmon undervoltage alarm).
    pub now: Option<Conditions>,
    /// The firmware's conditions at any time since boot.
    pub since_boot: Option<Conditions>,
    /// SoC temperature, °C.
    pub temperature_c: Option<f64>,
    /// The battery's level, percent.
    pub battery_percent: Option<f64>,
    /// The battery's `status` (`Charging`, `Discharging`, `Full`, `Not charging`).
    pub battery_status: Option<String>,
    /// Whether a mains or USB supply is online.
    pub external_power: Option<bool>,
}

impl Reading {
    /// Whether the battery is not being charged (discharging or unknown with no supply).
    fn discharging(&self) -> bool {
        match self.battery_status.as_deref() {
            Some("Charging" | "Full") => false,
            Some("Discharging") => true,
            _ => self.external_power != Some(true),
        }
    }

    /// Which interfaces the board has, in words (`throttling bits, temperature`), for the one
    /// line said at start.
    pub fn interfaces(&self) -> Vec<&'static str> {
        [
            (self.now.is_some(), "throttling bits"),
            (self.temperature_c.is_some(), "temperature"),
            (self.battery_percent.is_some(), "battery"),
            (self.external_power.is_some(), "charger"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect()
    }
}

/// Where a board's sensors are: found once under the root (and again when one disappears).
#[derive(Clone, Debug, Default)]
pub struct Sensors {
    root: PathBuf,
    throttled: Option<PathBuf>,
    undervoltage_alarm: Option<PathBuf>,
    thermal: Option<PathBuf>,
    batteries: Vec<PathBuf>,
    supplies: Vec<PathBuf>,
}

impl Sensors {
    /// Looks for the sensors under `root`.
    pub fn find(root: &Path) -> Self {
        let throttled = Some(root.join(THROTTLED_FILE)).filter(|p| p.is_file());
        let hwmon = entries(&root.join("class/hwmon"));
        let undervoltage_alarm = (hwmon.iter())
            .find(|d| read_text(&d.join("name")).as_deref() == Some("rpi_volt"))
            .map(|d| d.join("in0_lcrit_alarm"))
            .filter(|p| p.is_file());
        let zones = entries(&root.join("class/thermal"));
        let zones: Vec<&PathBuf> = (zones.iter())
            .filter(|z| {
                z.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone"))
            })
            .collect();
        let thermal = (zones.iter())
            .find(|z| read_text(&z.join("type")).as_deref() == Some("cpu-thermal"))
            .or(zones.first())
            .map(|z| z.join("temp"))
            .filter(|p| p.is_file());
        let supplies = entries(&root.join("class/power_supply"));
        let kind = |d: &PathBuf| read_text(&d.join("type")).unwrap_or_default();
        Self {
            root: root.to_path_buf(),
            throttled,
            undervoltage_alarm,
            thermal,
            batteries: (supplies.iter())
                .filter(|d| kind(d) == "Battery")
                .cloned()
                .collect(),
            supplies: (supplies.iter())
                .filter(|d| matches!(kind(d).as_str(), "Mains" | "USB" | "USB_PD"))
                .cloned()
                .collect(),
        }
    }

    /// The sysfs root they were found under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every sensor found (a sensor that cannot be read now reads as absent).
    pub fn read(&self) -> Reading {
        let bits = (self.throttled.as_deref())
            .and_then(read_text)
            .and_then(|t| u32::from_str_radix(t.trim_start_matches("0x"), 16).ok());
        // Only a 1 is an alarm: an empty or garbled read is no undervoltage.
        let alarm = (self.undervoltage_alarm.as_deref())
            .and_then(read_text)
            .map(|t| t == "1");
        let now = match (bits, alarm) {
            (None, None) => None,
            (b, a) => Some(
                Conditions {
                    undervoltage: a == Some(true),
                    ..Conditions::default()
                }
                .or(b.map_or_else(Conditions::default, |b| Conditions::of_bits(b, 0))),
            ),
        };
        let battery = self.batteries.first();
        Reading {
            now,
            since_boot: bits.map(|b| Conditions::of_bits(b, 16)),
            temperature_c: (self.thermal.as_deref())
                .and_then(read_number)
                .map(|m| m / 1000.0),
            battery_percent: battery.and_then(|b| read_number(&b.join("capacity"))),
            battery_status: battery.and_then(|b| read_text(&b.join("status"))),
            external_power: (!self.supplies.is_empty()).then(|| {
                (self.supplies.iter()).any(|s| read_number(&s.join("online")) == Some(1.0))
            }),
        }
    }

    /// Whether some kind of sensor was not found (it may appear later).
    pub fn incomplete(&self) -> bool {
        self.throttled.is_none()
            || self.thermal.is_none()
            || self.batteries.is_empty()
            || self.supplies.is_empty()
    }

    /// Whether a sensor found before can no longer be read (a tree that changed: look again).
    pub fn lost(&self) -> bool {
        let gone = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| !p.is_file());
        gone(&self.throttled) || gone(&self.undervoltage_alarm) || gone(&self.thermal)
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// A small sysfs file's content, trimmed; `None` when it cannot be read (or is over 64 bytes:
/// no sensor value is).
fn read_text(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let n = std::fs::File::open(path).ok()?.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

fn read_number(path: &Path) -> Option<f64> {
    read_text(path)?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

/// The warnings a reading gives (DEP_E901 undervoltage now, DEP_E902 since boot, DEP_E903
/// throttled or capped, DEP_E904 too hot, DEP_E905 battery low).
///
/// `shown` are the warnings given at the last look: heat and a low battery clear only
/// [`HOT_HYSTERESIS_C`] below the limit and [`LOW_HYSTERESIS_PERCENT`] above it, so that a
/// reading hovering at a limit does not flip the warning (and rewrite the report) at every look.
pub fn warnings(r: &Reading, spec: &PowerSpec, shown: &[Problem]) -> Vec<Problem> {
    let was = |code: &errors::ErrorCode| shown.iter().any(|p| p.code == code.code);
    let mut out = Vec::new();
    let now = r.now.unwrap_or_default();
    if now.undervoltage {
        out.push(Problem::new(
            errors::UNDERVOLTAGE,
            "the supply is below what the board needs now; SD cards get corrupted and boards reboot at this voltage",
        ));
    } else if r.since_boot.is_some_and(|c| c.undervoltage) {
        out.push(Problem::new(
            errors::UNDERVOLTAGE_SINCE_BOOT,
            "the supply fell below what the board needs at some time since boot (not now)",
        ));
    }
    if now.throttled || now.frequency_capped {
        let what = if now.throttled { "throttled" } else { "capped" };
        out.push(Problem::new(
            errors::THROTTLED,
            format!("the processor's clock is {what} now (power or heat); audio taken meanwhile may glitch"),
        ));
    }
    // Messages name the limits, never the readings (those are in the output): a reading that
    // moves must not rewrite the report and status.json at every look.
    let hot_from = match was(&errors::TOO_HOT) {
        true => spec.hot_celsius - HOT_HYSTERESIS_C,
        false => spec.hot_celsius,
    };
    let hot = r.temperature_c.filter(|t| *t >= hot_from);
    if hot.is_some() || now.soft_temperature_limit {
        out.push(Problem::new(
            errors::TOO_HOT,
            format!(
                "the board is too hot (at or above {} °C, or the firmware's soft limit); it slows down",
                spec.hot_celsius
            ),
        ));
    }
    let low_below = match was(&errors::BATTERY_LOW) {
        true => spec.battery_low_percent + LOW_HYSTERESIS_PERCENT,
        false => spec.battery_low_percent,
    };
    if r.battery_percent.is_some_and(|l| l < low_below) && r.discharging() {
        out.push(Problem::new(
            errors::BATTERY_LOW,
            format!(
                "the battery is below {} % and not charging",
                spec.battery_low_percent
            ),
        ));
    }
    out
}

/// Monotonic time since this process's first call (for [`Saving::next`] in processes that
/// keep no clock of their own).
pub fn mono_now() -> Duration {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

/// The energy policy's memory between looks: its level and when undervoltage was last seen
/// (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Saving {
    /// What is paused now.
    pub level: SavingLevel,
    /// Monotonic time undervoltage was last seen now.
    undervoltage_seen: Option<Duration>,
    /// What the battery's level alone pauses (its hysteresis is its own).
    battery: SavingLevel,
}

impl Saving {
    /// The policy's next state after reading `r` at monotonic time `mono`. Going down a level
    /// needs the battery past the threshold plus the hysteresis, and undervoltage gone for
    /// `settle`; going up is at once. Without a policy, nothing is ever paused.
    pub fn next(self, r: &Reading, spec: &PowerSpec, mono: Duration) -> Self {
        let Some(s) = &spec.saving else {
            return Self::default();
        };
        let undervoltage = r.now.is_some_and(|c| c.undervoltage);
        let undervoltage_seen = if undervoltage {
            Some(mono)
        } else {
            self.undervoltage_seen
        };
        let settling =
            undervoltage_seen.is_some_and(|t| mono.saturating_sub(t) < s.settle.as_std());
        let from_undervoltage = if settling {
            s.on_undervoltage
        } else {
            SavingLevel::None
        };
        let battery = |below: Option<f64>, level: SavingLevel| -> SavingLevel {
            let held = self.battery >= level;
            let Some(below) = below else {
                return SavingLevel::None;
            };
            // A reading that failed (a fuel gauge on a flaky bus) changes nothing: resuming on
            // a nearly empty battery to stop again at the next look would cut files for nothing.
            let Some(pct) = r.battery_percent else {
                return if held { level } else { SavingLevel::None };
            };
            let limit = if held {
                below + s.hysteresis_percent
            } else {
                below
            };
            // A charging battery below the line still pauses: the panel may not keep up.
            if pct < limit {
                level
            } else {
                SavingLevel::None
            }
        };
        let from_battery = battery(s.reduce_below_percent, SavingLevel::Reduce)
            .max(battery(s.stop_below_percent, SavingLevel::Stop));
        Self {
            level: from_undervoltage.max(from_battery),
            battery: from_battery,
            undervoltage_seen: undervoltage_seen.filter(|_| settling),
        }
    }

    /// DEP_E906 while the policy pauses something, saying what and why.
    pub fn problem(&self, r: &Reading) -> Option<Problem> {
        let what = match self.level {
            SavingLevel::None => return None,
            SavingLevel::Reduce => {
                "detectors and the page's spectrograms are paused; recording goes on"
            }
            SavingLevel::Stop => {
                "recording is stopped (the last file was finished and kept), and detectors and spectrograms are paused"
            }
        };
        let why = match (r.battery_percent, r.now.is_some_and(|c| c.undervoltage)) {
            (_, true) => "undervoltage".to_string(),
            (Some(p), _) => format!("battery at {p:.0} %"),
            _ => "power".to_string(),
        };
        Some(Problem::new(
            errors::POWER_SAVING,
            format!("spec.power.saving: {what} ({why}); it resumes by itself when power is back"),
        ))
    }
}

/// What the component processes show of power in their reports and status.json.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PowerOutput {
    /// The last look.
    pub reading: Reading,
    /// What the energy policy pauses.
    pub saving: SavingLevel,
}

#[cfg(test)]
mod tests;
