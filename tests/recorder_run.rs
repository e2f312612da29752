//! The recorder under the reconciler, end to end: `roost run` starts `roost record` as component
//! `recorder` (real alsa-lib and cpal via the file plugin fed at real-time pace, real SQLite),
//! status.json shows what it produced, and a recorder that stops producing is an Error, never
//! Running.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Feed(std::process::Child);

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn recorder_yaml(storage: &std::path::Path) -> String {
    format!(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: rec-e2e\nspec:\n  location: {{latitude: 51.76, longitude: -1.26}}\n  backoff: {{initial: 0s, max: 1s, resetAfter: 10m}}\n  storage: {{path: {}, minFreeSpace: 0, onLowSpace: stop}}\n  recorder:\n    device: default\n    sampleRate: 16000\n    channels: 1\n    sampleFormat: i16\n    duration: 1s\n    timezone: UTC\n  components: []\n",
        storage.display()
    )
}

/// Starts the feeder (it writes the ALSA configuration) and `roost run` on `r`.
fn start_recording(r: &mut Roost) -> Feed {
    let fifo = r.path("mic.fifo");
    let conf = r.path("asound.conf");
    let feed = Feed(
        Command::new(ROOST)
            .args(["feed", "--sample-rate", "16000", "--fifo"])
            .arg(&fifo)
            .arg("--alsa-config")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while !conf.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let child = Command::new(ROOST)
        .args(["run", "--runtime", "process", "--file"])
        .arg(&r.file)
        .arg("--state-dir")
        .arg(&r.state)
        .env("ALSA_CONFIG_PATH", &conf)
        .stderr(std::fs::File::create(r.path("roost.log")).unwrap())
        .spawn()
        .unwrap();
    r.child = Some(child);
    feed
}

#[test]
fn the_last_status_carries_the_recorders_last_word() {
    let mut r = Roost::new("");
    let storage = r.path("storages");
    std::fs::write(&r.file, recorder_yaml(&storage)).unwrap();
    let feed = start_recording(&mut r);
    r.wait_for("recordings", Duration::from_secs(30), |s| {
        component(s, "recorder")["output"]["filesWritten"].as_u64() >= Some(2)
    });
    assert_eq!(r.stop(), Some(0));
    drop(feed);
    let s = r.status().unwrap();
    let report = roost::recorder::read_report(&r.state).unwrap();
    let out = &component(&s, "recorder")["output"];
    assert_eq!(s["status"], "Stopped");
    assert_eq!(out["state"], "stopped", "{s:#}");
    assert_eq!(out["filesWritten"].as_u64(), Some(report.files_written));
    assert_eq!(
        out["lastFile"].as_str().map(std::path::PathBuf::from),
        report.last_file
    );
    // The human report of a stopped roost does not show a pid as if it ran.
    let human = Command::new(ROOST)
        .args(["status", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert_eq!(human.status.code(), Some(3), "{text}");
    assert!(
        text.contains("stopped at") && !text.contains(" pid "),
        "{text}"
    );
}

#[test]
fn roost_run_records_and_reports_a_stalled_recorder_as_an_error() {
    let mut r = Roost::new("");
    let storage = r.path("storages");
    std::fs::write(&r.file, recorder_yaml(&storage)).unwrap();
    let feed = start_recording(&mut r);
    let s = r.wait_for("recordings", Duration::from_secs(30), |s| {
        let c = component(s, "recorder");
        c["status"] == "Running" && c["output"]["filesWritten"].as_u64() >= Some(2)
    });
    assert_eq!(s["phase"], "Succeeded");
    let rec = component(&s, "recorder");
    assert_eq!(rec["output"]["samplesDropped"], 0);
    let last = rec["output"]["lastFile"].as_str().unwrap();
    assert!(
        last.starts_with(storage.join("recordings").to_str().unwrap()) && last.ends_with(".wav"),
        "{last}"
    );
    assert!(std::path::Path::new(last).exists());
    assert!(storage.join("metadata.db").exists());

    // The microphone stops delivering: the process lives on, but status must not say Running.
    Command::new("kill")
        .args(["-STOP", &feed.0.id().to_string()])
        .status()
        .unwrap();
    let s = r.wait_for("stall reported", Duration::from_secs(90), |s| {
        component(s, "recorder")["status"] == "Error"
    });
    let err = s["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["component"] == "recorder")
        .unwrap();
    assert!(err["code"].as_str().unwrap().starts_with("DEP_E3"), "{err}");
    assert_eq!(s["status"], "Error");
    // Provisioning succeeded; a later error keeps the phase and sets the status.
    assert_eq!(s["phase"], "Succeeded");

    // It comes back by itself.
    Command::new("kill")
        .args(["-CONT", &feed.0.id().to_string()])
        .status()
        .unwrap();
    let before = component(&s, "recorder")["output"]["filesWritten"]
        .as_u64()
        .unwrap_or(0);
    r.wait_for("recovery", Duration::from_secs(60), |s| {
        let c = component(s, "recorder");
        c["status"] == "Running" && c["output"]["filesWritten"].as_u64() > Some(before)
    });
    // Editing the file under the same name continues the deployment row; stopping ends it.
    let stopped = recorder_yaml(&storage).replace("spec:\n", "spec:\n  state: stopped\n");
    r.replace_atomically(&stopped);
    r.wait_for("stopped", Duration::from_secs(60), |s| {
        s["phase"] == "Stopped"
    });
    let db = rusqlite::Connection::open(storage.join("metadata.db")).unwrap();
    let rows: Vec<(String, Option<String>)> = db
        .prepare("SELECT name, ended_on FROM deployment")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "rec-e2e");
    assert!(
        rows[0].1.is_some(),
        "ended_on set when the deployment stops: {rows:?}"
    );
    let paths: Vec<String> = db
        .prepare("SELECT path FROM recording")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(paths.len() >= 3);
    for p in &paths {
        let full = if p.starts_with('/') {
            std::path::PathBuf::from(p)
        } else {
            storage.join(p)
        };
        assert!(full.exists(), "row without file: {p}");
    }
    assert_eq!(r.stop(), Some(0));
    drop(feed);
}
