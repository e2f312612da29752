//! Power and heat end to end: `roost run` records through ALSA's file plugin while a fake sysfs
//! tree (`spec.power.sysfsRoot`: the Raspberry Pi firmware's throttling bits, the `rpi_volt`
//! alarm, thermal zones, a battery) changes under it. Each condition raises and clears its code
//! in status.json, `roost status` and the Prometheus text file; GUANO notes the files made under
//! undervoltage; the energy policy pauses detectors and spectrograms, then recording, and
//! resumes with hysteresis; a board without the interfaces stays quiet.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{ROOST, Roost, component, recorder_deployment};
use serde_json::Value;

/// Writes `rel` under `root` whole (temp file, rename: a reader never sees half a value).
fn put(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

const BITS: &str = "devices/platform/soc/soc:firmware/get_throttled";
const TEMP: &str = "class/thermal/thermal_zone0/temp";
const BATTERY: &str = "class/power_supply/BAT0/capacity";

/// A Pi's tree in good health: 45 °C, battery at 80 % and discharging.
fn healthy_tree(root: &Path) {
    put(root, BITS, "0x0");
    put(root, "class/hwmon/hwmon0/name", "rpi_volt");
    put(root, "class/hwmon/hwmon0/in0_lcrit_alarm", "0");
    put(root, "class/thermal/thermal_zone0/type", "cpu-thermal");
    put(root, TEMP, "45000");
    put(root, "class/power_supply/BAT0/type", "Battery");
    put(root, BATTERY, "80");
    put(root, "class/power_supply/BAT0/status", "Discharging");
}

fn recorder(s: &Value) -> &Value {
    &component(s, "recorder")["output"]
}

/// The codes among the warnings of component `name`'s output.
fn warning_codes(s: &Value, name: &str) -> Vec<String> {
    (component(s, name)["output"]["warnings"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|w| w["code"].as_str().map(str::to_string))
        .collect()
}

fn has(codes: &[String], code: &str) -> bool {
    codes.iter().any(|c| c == code)
}

fn roost_status(r: &Roost) -> String {
    let out = Command::new(ROOST)
        .args(["status", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A finished recording whose GUANO holds `needle`, if any.
fn recording_with(storage: &Path, needle: &str) -> Option<std::path::PathBuf> {
    let mut todo = vec![storage.join("recordings")];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            {
                return Some(path);
            }
        }
    }
    None
}

#[test]
fn each_condition_raises_and_clears_its_code_on_every_channel() {
    let mut r = Roost::new("");
    let (storage, sys, prom) = (r.path("storage"), r.path("sys"), r.path("node.prom"));
    healthy_tree(&sys);
    let extra = format!(
        "  power: {{sysfsRoot: {}}}\n  connect: {{deviceId: pi-1, prometheus: {{textfile: {}}}}}\n",
        sys.display(),
        prom.display()
    );
    std::fs::write(&r.file, recorder_deployment("power", &storage, &extra)).unwrap();
    let _feed = r.start_recording();
    let s = r.wait_for("the board's reading", Duration::from_secs(30), |s| {
        recorder(s)["power"]["reading"]["temperatureC"] == 45.0
    });
    assert!(
        warning_codes(&s, "recorder")
            .iter()
            .all(|c| !c.starts_with("DEP_E9"))
    );
    assert_eq!(recorder(&s)["power"]["reading"]["batteryPercent"], 80.0);

    // Undervoltage and throttling now (the firmware's 0x50005).
    put(&sys, BITS, "0x50005");
    let s = r.wait_for("DEP_E901 and DEP_E903", Duration::from_secs(30), |s| {
        let c = warning_codes(s, "recorder");
        has(&c, "DEP_E901") && has(&c, "DEP_E903")
    });
    assert_eq!(
        recorder(&s)["power"]["reading"]["now"]["undervoltage"],
        true
    );
    let text = roost_status(&r);
    assert!(
        text.contains("DEP_E901") && text.contains("NOW: undervoltage, throttled"),
        "{text}"
    );
    let file = (0..150)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(200));
            recording_with(&storage, "ROOST|Power:undervoltage, throttled")
        })
        .expect("a recording whose GUANO says it was made under undervoltage");
    assert!(file.extension().is_some_and(|e| e == "wav"));
    let scrape = (0..150).find_map(|_| {
        std::thread::sleep(Duration::from_millis(200));
        std::fs::read_to_string(&prom)
            .ok()
            .filter(|t| t.contains("roost_power_undervoltage{device=\"pi-1\"} 1"))
    });
    let scrape = scrape.expect("the Prometheus text file says undervoltage");
    assert!(
        scrape.contains("roost_power_soc_temperature_celsius"),
        "{scrape}"
    );

    // Gone now, but it happened since boot: DEP_E901 clears, DEP_E902 stays.
    put(&sys, BITS, "0x50000");
    r.wait_for("DEP_E902 alone", Duration::from_secs(30), |s| {
        let c = warning_codes(s, "recorder");
        !has(&c, "DEP_E901") && !has(&c, "DEP_E903") && has(&c, "DEP_E902")
    });
    // Too hot, and a battery low while discharging.
    put(&sys, TEMP, "85000");
    put(&sys, BATTERY, "15");
    r.wait_for("DEP_E904 and DEP_E905", Duration::from_secs(30), |s| {
        let c = warning_codes(s, "recorder");
        has(&c, "DEP_E904") && has(&c, "DEP_E905")
    });
    // All well again: every power code clears, and recording never stopped meanwhile.
    put(&sys, BITS, "0x0");
    put(&sys, TEMP, "50000");
    put(&sys, BATTERY, "90");
    let s = r.wait_for("no power warning", Duration::from_secs(30), |s| {
        warning_codes(s, "recorder")
            .iter()
            .all(|c| !c.starts_with("DEP_E9"))
    });
    assert_eq!(recorder(&s)["state"], "recording", "{s:#}");
    assert_eq!(s["status"], "Running", "{s:#}");

    // The tree vanishes (unmounted, a driver unbound) and comes back with undervoltage: the
    // sensors are found again at the next looks, not a minute later, and it is said.
    let gone = r.path("sys.gone");
    std::fs::rename(&sys, &gone).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    std::fs::rename(&gone, &sys).unwrap();
    put(&sys, BITS, "0x50005");
    r.wait_for(
        "DEP_E901 after the tree came back",
        Duration::from_secs(20),
        |s| has(&warning_codes(s, "recorder"), "DEP_E901"),
    );
}

/// `GET path` on the page; the status code (waiting up to 20 s for the page to listen).
fn http_status(port: u16, path: &str) -> u16 {
    for _ in 0..100 {
        let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let _ = write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        // The body may be a PNG: only the status line is read as text.
        let mut bytes = Vec::new();
        let _ = tcp.read_to_end(&mut bytes);
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned();
        return head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
    }
    0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_energy_policy_pauses_in_order_and_resumes_with_hysteresis() {
    let mut r = Roost::new("");
    let (storage, sys, port) = (r.path("storage"), r.path("sys"), free_port());
    healthy_tree(&sys);
    let extra = format!(
        "  power:\n    sysfsRoot: {}\n    saving: {{reduceBelowPercent: 40, stopBelowPercent: 20, hysteresisPercent: 5, checkEvery: 1s}}\n  detectors:\n    - {{name: birds, kind: bandEnergy, lowHz: 2000, highHz: 5000, thresholdDb: 12, minDuration: 100ms}}\n  page: {{listen: \"127.0.0.1:{port}\"}}\n",
        sys.display()
    );
    std::fs::write(&r.file, recorder_deployment("saving", &storage, &extra)).unwrap();
    let _feed = r.start_recording();
    r.wait_for("recording, analysed", Duration::from_secs(60), |s| {
        recorder(s)["filesWritten"].as_u64() >= Some(2)
            && component(s, "curator")["output"]["detectors"][0]["analysed"].as_u64() >= Some(1)
    });
    assert_eq!(http_status(port, "/spectrogram.png"), 200);

    // Below reduceBelowPercent: detectors and spectrograms pause, recording goes on.
    put(&sys, BATTERY, "30");
    let s = r.wait_for("detectors paused", Duration::from_secs(60), |s| {
        has(&warning_codes(s, "curator"), "DEP_E906")
            && has(&warning_codes(s, "recorder"), "DEP_E906")
    });
    let written = recorder(&s)["filesWritten"].as_u64().unwrap();
    r.wait_for("recording goes on", Duration::from_secs(30), |s| {
        recorder(s)["filesWritten"].as_u64() > Some(written + 2)
            && recorder(s)["state"] == "recording"
    });
    assert_eq!(http_status(port, "/spectrogram.png"), 503);

    // Below stopBelowPercent: the file being written is finished and kept, recording stops.
    put(&sys, BATTERY, "10");
    let s = r.wait_for("recording stopped", Duration::from_secs(30), |s| {
        recorder(s)["state"] == "powerSaving"
    });
    assert_ne!(
        s["status"], "Running",
        "never greener than the output: {s:#}"
    );
    let text = roost_status(&r);
    assert!(
        text.contains("NOT RECORDING") && text.contains("DEP_E906"),
        "{text}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let partial: Vec<_> = std::fs::read_dir(storage.join(".partial"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(partial.is_empty(), "no file left unfinished: {partial:?}");
    let stopped_at = recorder(&r.status().unwrap())["filesWritten"]
        .as_u64()
        .unwrap();

    // Above the threshold but inside the hysteresis: still stopped.
    put(&sys, BATTERY, "22");
    std::thread::sleep(Duration::from_secs(4));
    let s = r.status().unwrap();
    assert_eq!(recorder(&s)["state"], "powerSaving", "{s:#}");
    assert_eq!(recorder(&s)["filesWritten"].as_u64(), Some(stopped_at));

    // Past the hysteresis: recording resumes; the detectors stay paused until 45 %.
    put(&sys, BATTERY, "26");
    r.wait_for("recording again", Duration::from_secs(30), |s| {
        recorder(s)["state"] == "recording"
            && recorder(s)["filesWritten"].as_u64() > Some(stopped_at)
    });
    let s = r.status().unwrap();
    assert!(has(&warning_codes(&s, "curator"), "DEP_E906"), "{s:#}");
    put(&sys, BATTERY, "50");
    r.wait_for("detectors back", Duration::from_secs(90), |s| {
        !has(&warning_codes(s, "curator"), "DEP_E906")
            && !has(&warning_codes(s, "recorder"), "DEP_E906")
    });
    assert_eq!(http_status(port, "/spectrogram.png"), 200);
}

#[test]
fn a_board_without_the_interfaces_stays_quiet() {
    let mut r = Roost::new("");
    let (storage, sys) = (r.path("storage"), r.path("sys"));
    std::fs::create_dir_all(&sys).unwrap();
    let extra = format!("  power: {{sysfsRoot: {}}}\n", sys.display());
    std::fs::write(&r.file, recorder_deployment("zero", &storage, &extra)).unwrap();
    let _feed = r.start_recording();
    let s = r.wait_for("recording", Duration::from_secs(30), |s| {
        recorder(s)["filesWritten"].as_u64() >= Some(3)
    });
    assert!(recorder(&s).get("power").is_none(), "{s:#}");
    assert!(
        warning_codes(&s, "recorder")
            .iter()
            .all(|c| !c.starts_with("DEP_E9"))
    );
    assert_eq!(s["status"], "Running");
    assert!(recording_with(&storage, "ROOST|Power:").is_none());
}
