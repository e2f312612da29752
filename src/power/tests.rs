//! Reading fake sysfs trees, the warnings, and the energy policy's hysteresis.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::spec::power::SavingSpec;

/// Writes `rel` under `root` with `text`.
fn put(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("{text}\n")).unwrap();
}

/// A Raspberry Pi 4's tree: throttling bits, rpi_volt, two thermal zones, a UPS HAT battery.
fn pi_tree(root: &Path, bits: &str, alarm: &str, millideg: &str, battery: Option<(&str, &str)>) {
    put(root, THROTTLED_FILE, bits);
    put(root, "class/hwmon/hwmon0/name", "cpu_thermal");
    put(root, "class/hwmon/hwmon1/name", "rpi_volt");
    put(root, "class/hwmon/hwmon1/in0_lcrit_alarm", alarm);
    put(root, "class/thermal/thermal_zone0/type", "gpu-thermal");
    put(root, "class/thermal/thermal_zone0/temp", "30000");
    put(root, "class/thermal/thermal_zone1/type", "cpu-thermal");
    put(root, "class/thermal/thermal_zone1/temp", millideg);
    if let Some((capacity, status)) = battery {
        put(root, "class/power_supply/BAT0/type", "Battery");
        put(root, "class/power_supply/BAT0/capacity", capacity);
        put(root, "class/power_supply/BAT0/status", status);
        put(root, "class/power_supply/ac/type", "Mains");
        put(
            root,
            "class/power_supply/ac/online",
            if status == "Charging" { "1" } else { "0" },
        );
    }
}

fn codes(r: &Reading, spec: &PowerSpec) -> Vec<String> {
    warnings(r, spec, &[]).into_iter().map(|p| p.code).collect()
}

/// (get_throttled, rpi_volt alarm, temperature m°C) -> warnings.
#[test]
fn each_condition_raises_its_code_and_clears_it() {
    let cases: [(&str, &str, &str, &[&str]); 9] = [
        ("0x0", "0", "45000", &[]),
        ("0x50005", "0", "45000", &["DEP_E901", "DEP_E903"]),
        ("0x50000", "0", "45000", &["DEP_E902"]),
        ("0x0", "1", "45000", &["DEP_E901"]),
        ("0x20002", "0", "45000", &["DEP_E903"]),
        ("0x80008", "0", "61000", &["DEP_E904"]),
        ("0x0", "0", "80000", &["DEP_E904"]),
        ("0x0", "0", "79999", &[]),
        // A firmware that prints the bits without `0x`.
        ("50005", "0", "45000", &["DEP_E901", "DEP_E903"]),
    ];
    let spec = PowerSpec::default();
    for (bits, alarm, temp, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        pi_tree(dir.path(), bits, alarm, temp, None);
        let r = Sensors::find(dir.path()).read();
        assert_eq!(codes(&r, &spec), want, "{bits} alarm {alarm} {temp}");
    }
}

#[test]
fn the_bits_read_as_conditions_now_and_since_boot() {
    let dir = tempfile::tempdir().unwrap();
    pi_tree(dir.path(), "0x50005", "0", "52500", None);
    let r = Sensors::find(dir.path()).read();
    let now = r.now.unwrap();
    assert_eq!(now.names(), ["undervoltage", "throttled"]);
    assert_eq!(r.since_boot.unwrap().names(), ["undervoltage", "throttled"]);
    assert_eq!(
        r.temperature_c,
        Some(52.5),
        "the cpu-thermal zone, not the first"
    );
    assert_eq!(r.battery_percent, None);
}

/// (capacity, status) -> DEP_E905 at the default 20 %.
#[test]
fn a_low_battery_warns_only_while_it_is_not_charging() {
    let cases = [
        ("19", "Discharging", true),
        ("19", "Charging", false),
        ("19", "Not charging", true),
        ("20", "Discharging", false),
        ("5", "Full", false),
    ];
    for (capacity, status, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        pi_tree(dir.path(), "0x0", "0", "40000", Some((capacity, status)));
        let r = Sensors::find(dir.path()).read();
        let got = codes(&r, &PowerSpec::default()).contains(&"DEP_E905".to_string());
        assert_eq!(got, want, "{capacity} {status}");
    }
}

#[test]
fn a_board_without_the_interfaces_reads_as_absent_and_stays_quiet() {
    // A Pi Zero (no undervoltage detector, no firmware node), a laptop, an empty folder.
    let dir = tempfile::tempdir().unwrap();
    put(
        dir.path(),
        "class/thermal/thermal_zone0/type",
        "x86_pkg_temp",
    );
    put(dir.path(), "class/thermal/thermal_zone0/temp", "41000");
    let r = Sensors::find(dir.path()).read();
    assert_eq!(r.now, None);
    assert_eq!(r.interfaces(), ["temperature"]);
    assert!(warnings(&r, &PowerSpec::default(), &[]).is_empty());
    let empty = tempfile::tempdir().unwrap();
    let r = Sensors::find(empty.path()).read();
    assert_eq!(r, Reading::default());
    assert!(r.interfaces().is_empty());
    assert!(warnings(&r, &PowerSpec::default(), &[]).is_empty());
}

#[test]
fn garbage_in_the_files_reads_as_absent_never_a_panic() {
    for junk in [
        "",
        "zz",
        "0x",
        "-1",
        "99999999999999999999",
        "nan",
        "\u{0}\u{1}",
        "inf",
    ] {
        let dir = tempfile::tempdir().unwrap();
        pi_tree(dir.path(), junk, junk, junk, Some((junk, junk)));
        let r = Sensors::find(dir.path()).read();
        let _ = warnings(&r, &PowerSpec::default(), &[]);
        assert!(r.temperature_c.is_none_or(f64::is_finite), "{junk:?}");
    }
}

fn policy(on_undervoltage: SavingLevel) -> PowerSpec {
    PowerSpec {
        saving: Some(SavingSpec {
            reduce_below_percent: Some(40.0),
            stop_below_percent: Some(20.0),
            on_undervoltage,
            hysteresis_percent: 5.0,
            settle: Duration::from_secs(120).into(),
            check_every: Duration::from_secs(60).into(),
        }),
        ..PowerSpec::default()
    }
}

fn battery(pct: f64) -> Reading {
    Reading {
        battery_percent: Some(pct),
        battery_status: Some("Discharging".into()),
        ..Reading::default()
    }
}

/// A battery running down and charging back up: levels go down at the thresholds and come back
/// only past them plus the hysteresis.
#[test]
fn the_policy_pauses_in_order_and_resumes_with_hysteresis() {
    let spec = policy(SavingLevel::None);
    let steps: [(f64, SavingLevel); 12] = [
        (80.0, SavingLevel::None),
        (41.0, SavingLevel::None),
        (39.0, SavingLevel::Reduce),
        (42.0, SavingLevel::Reduce),
        (21.0, SavingLevel::Reduce),
        (19.0, SavingLevel::Stop),
        (24.0, SavingLevel::Stop),
        (25.0, SavingLevel::Reduce),
        (39.0, SavingLevel::Reduce),
        (44.9, SavingLevel::Reduce),
        (45.0, SavingLevel::None),
        (39.5, SavingLevel::Reduce),
    ];
    let mut state = Saving::default();
    for (i, (pct, want)) in steps.into_iter().enumerate() {
        state = state.next(&battery(pct), &spec, Duration::from_secs(i as u64 * 60));
        assert_eq!(state.level, want, "step {i}: {pct} %");
        assert_eq!(
            state.problem(&battery(pct)).is_some(),
            want != SavingLevel::None
        );
    }
}

#[test]
fn undervoltage_pauses_at_once_and_resumes_after_settling() {
    let spec = policy(SavingLevel::Stop);
    let uv = |on: bool| Reading {
        now: Some(Conditions {
            undervoltage: on,
            ..Conditions::default()
        }),
        ..Reading::default()
    };
    let at = Duration::from_secs;
    let mut s = Saving::default().next(&uv(true), &spec, at(0));
    assert_eq!(s.level, SavingLevel::Stop);
    for (t, on, want) in [
        (10, false, SavingLevel::Stop),
        (100, false, SavingLevel::Stop),
        (110, true, SavingLevel::Stop),
        (229, false, SavingLevel::Stop),
        (230, false, SavingLevel::None),
        (300, false, SavingLevel::None),
    ] {
        s = s.next(&uv(on), &spec, at(t));
        assert_eq!(s.level, want, "at {t} s, undervoltage {on}");
    }
}

#[test]
fn without_a_policy_nothing_pauses_whatever_the_power() {
    let spec = PowerSpec::default();
    let s = Saving::default().next(&battery(1.0), &spec, Duration::ZERO);
    assert_eq!(s.level, SavingLevel::None);
    assert_eq!(s.problem(&battery(1.0)), None);
}

/// A fuel gauge that cannot be read keeps what the battery paused: no resume on a nearly empty
/// battery just to stop again at the next look; and it pauses nothing that was running.
#[test]
fn a_battery_reading_that_fails_changes_nothing() {
    let spec = policy(SavingLevel::None);
    let gone = Reading::default();
    let at = Duration::from_secs;
    let s = Saving::default().next(&battery(10.0), &spec, at(0));
    assert_eq!(s.level, SavingLevel::Stop);
    let s = s.next(&gone, &spec, at(60));
    assert_eq!(s.level, SavingLevel::Stop, "held while unread");
    let s = s.next(&battery(30.0), &spec, at(120));
    assert_eq!(s.level, SavingLevel::Reduce);
    let fresh = Saving::default().next(&gone, &spec, at(0));
    assert_eq!(
        fresh.level,
        SavingLevel::None,
        "nothing paused on no reading"
    );
}

/// An alarm file that reads empty or garbled is no undervoltage.
#[test]
fn only_a_one_in_the_alarm_is_undervoltage() {
    for (text, want) in [
        ("1", true),
        ("0", false),
        ("", false),
        ("x", false),
        ("2", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "class/hwmon/hwmon0/name", "rpi_volt");
        put(dir.path(), "class/hwmon/hwmon0/in0_lcrit_alarm", text);
        let r = Sensors::find(dir.path()).read();
        assert_eq!(r.now.map(|c| c.undervoltage), Some(want), "{text:?}");
    }
}

/// (temperature, battery, shown last time) -> DEP_E904 / DEP_E905: a reading hovering at a
/// limit does not flip the warning at every look.
#[test]
fn heat_and_a_low_battery_clear_only_past_their_hysteresis() {
    let spec = PowerSpec::default();
    let shown = |codes: &[&str]| -> Vec<Problem> {
        codes
            .iter()
            .map(|c| Problem {
                code: c.to_string(),
                message: String::new(),
            })
            .collect()
    };
    let cases: [(f64, f64, &[&str], &[&str]); 8] = [
        (79.0, 50.0, &[], &[]),
        (80.0, 50.0, &[], &["DEP_E904"]),
        (78.0, 50.0, &["DEP_E904"], &["DEP_E904"]),
        (77.0, 50.0, &["DEP_E904"], &["DEP_E904"]),
        (76.9, 50.0, &["DEP_E904"], &[]),
        (50.0, 19.0, &[], &["DEP_E905"]),
        (50.0, 21.0, &["DEP_E905"], &["DEP_E905"]),
        (50.0, 22.0, &["DEP_E905"], &[]),
    ];
    for (t, b, before, want) in cases {
        let r = Reading {
            temperature_c: Some(t),
            ..battery(b)
        };
        let got: Vec<String> = warnings(&r, &spec, &shown(before))
            .into_iter()
            .map(|p| p.code)
            .collect();
        assert_eq!(got, want, "{t} C, {b} %, shown {before:?}");
    }
}
