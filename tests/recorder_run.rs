//! The recorder under the reconciler, end to end: `roost run` starts `roost record` as component
//! `recorder` (real alsa-lib and cpal via the file plugin fed at real-time pace, real SQLite),
//! status.json shows what it produced, and a recorder that stops producing is an Error, never
//! Running.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn the_last_status_carries_the_recorders_last_word() {
    let mut r = Roost::new("");
    let storage = r.path("storages");
    std::fs::write(&r.file, recorder_deployment("rec-e2e", &storage, "")).unwrap();
    let feed = r.start_recording();
    r.wait_for("recordings", Duration::from_secs(30), |s| {
        component(s, "recorder")["output"]["filesWritten"].as_u64() >= Some(2)
    });
    assert_eq!(r.stop(), Some(0));
    drop(feed);
    let s = r.status().unwrap();
    let report =
        <roost::recorder::RecorderReport as roost::component::ReportFile>::read(&r.state).unwrap();
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
    std::fs::write(&r.file, recorder_deployment("rec-e2e", &storage, "")).unwrap();
    let feed = r.start_recording();
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
    let stopped = recorder_deployment("rec-e2e", &storage, "")
        .replace("spec:\n", "spec:\n  state: stopped\n");
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
        .prepare("SELECT path FROM recording WHERE path IS NOT NULL")
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

/// `roost status` for people: its exit code and first line.
fn human_status(r: &Roost) -> (Option<i32>, String) {
    let out = Command::new(ROOST)
        .args(["status", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The first line of `roost status` answers "is it recording?" in each state a visit meets, on
/// the real recorder: recording, a silent microphone, a full disk, roost killed, and stopped.
#[test]
fn roost_status_says_whether_it_records_in_each_state() {
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let yaml = recorder_deployment("status-words", &storage, "");
    std::fs::write(&r.file, &yaml).unwrap();
    let feed = r.start_recording();
    r.wait_for("recordings", Duration::from_secs(30), |s| {
        component(s, "recorder")["output"]["filesWritten"].as_u64() >= Some(2)
    });
    let (code, text) = human_status(&r);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("Recording. Last file finished"), "{text}");
    for needle in [
        "files today",
        "free space",
        "days until full after an hour of recording",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }

    // A silent microphone: the process lives, no file comes.
    let stop = |sig: &str| {
        Command::new("kill")
            .args([sig, &feed.0.id().to_string()])
            .status()
            .unwrap()
    };
    stop("-STOP");
    r.wait_for("silence seen", Duration::from_secs(90), |s| {
        component(s, "recorder")["status"] == "Error"
    });
    let (code, text) = human_status(&r);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.starts_with("NOT RECORDING: ") && text.contains("(DEP_E3"),
        "{text}"
    );
    stop("-CONT");
    r.wait_for("recording again", Duration::from_secs(60), |s| {
        component(s, "recorder")["status"] == "Running"
    });

    // A disk with less free space than minFreeSpace asks for.
    r.replace_atomically(&yaml.replace("minFreeSpace: 0", "minFreeSpace: 1000TB"));
    r.wait_for("low disk seen", Duration::from_secs(60), |s| {
        s["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["code"] == "DEP_E302"))
    });
    let (code, text) = human_status(&r);
    assert_eq!(code, Some(1), "{text}");
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("NOT RECORDING: ") && first.contains("DEP_E302"),
        "{text}"
    );
    assert!(text.contains("free space"), "{text}");

    // roost itself killed: what it last knew, said as such.
    let pid = r.pid();
    r.kill9();
    let (code, text) = human_status(&r);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.starts_with("NOT RUNNING: roost stopped unexpectedly"),
        "{text} (pid {pid})"
    );

    // Started again and stopped cleanly (its recorder is adopted and stopped with it).
    r.start_with(
        &r.file.clone(),
        &[("ALSA_CONFIG_PATH", r.path("asound.conf").to_str().unwrap())],
    );
    r.wait_for("adopted", Duration::from_secs(30), |s| {
        s["reconciler"]["pid"].as_u64() != Some(u64::from(pid))
    });
    assert_eq!(r.stop(), Some(0));
    let (code, text) = human_status(&r);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.starts_with("Stopped"), "{text}");
    drop(feed);
}

/// Mounts a tmpfs at `at` for the test and unmounts it on drop (needs root).
struct Ram(std::path::PathBuf);
impl Ram {
    fn mount(at: &std::path::Path) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(at.to_path_buf()))
    }
}
impl Drop for Ram {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn files_written(s: &serde_json::Value) -> u64 {
    component(s, "recorder")["output"]["filesWritten"]
        .as_u64()
        .unwrap_or(0)
}

/// The components' reports, rewritten on every recording, live on a RAM file system
/// (`$RUNTIME_DIRECTORY`, as systemd's `RuntimeDirectory=` gives it) behind `<state>/run`, so
/// they never wear the card; the folder vanishing while roost records (an `rm -rf`, a reboot
/// emptying /run) costs nothing: the next report makes it again and status keeps counting.
#[test]
fn reports_live_on_a_ram_run_folder_made_again_when_it_vanishes() {
    let mut r = Roost::new("");
    let Some(ram) = Ram::mount(&r.path("ram")) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let storage = r.path("storage");
    std::fs::write(&r.file, recorder_deployment("run-folder", &storage, "")).unwrap();
    let ram_dir = ram.0.clone();
    let env = [("RUNTIME_DIRECTORY", ram_dir.as_path())];
    let feed = r.start_recording_env(&[], &env);
    let s = r.wait_for("two files", Duration::from_secs(60), |s| {
        files_written(s) >= 2
    });
    let link = r.state.join("run");
    let target = std::fs::read_link(&link).expect("<state>/run is a link");
    assert!(target.starts_with(&ram_dir), "{}", target.display());
    assert!(target.join("recorder-report.json").is_file());
    assert!(!r.state.join("recorder-report.json").exists());

    // Removed while recording: the next file's report makes it again.
    // Moved away first, as `rm -rf` racing the recorder's next report could fail half-way.
    let away = ram_dir.join("removed");
    std::fs::rename(&target, &away).unwrap();
    std::fs::remove_dir_all(&away).unwrap();
    let before = files_written(&s);
    r.wait_for("two more files", Duration::from_secs(60), |s| {
        files_written(s) >= before + 2
    });
    assert!(target.join("recorder-report.json").is_file());

    // A reboot: roost stopped, /run emptied, roost started again on the same state folder.
    assert_eq!(r.stop(), Some(0));
    drop(feed);
    drop(ram);
    let ram = Ram::mount(&r.path("ram")).unwrap();
    let _feed = r.start_recording_env(&[], &env);
    r.wait_for("recording after the reboot", Duration::from_secs(60), |s| {
        component(s, "recorder")["status"] == "Running" && files_written(s) >= 1
    });
    assert!(target.join("recorder-report.json").is_file());
    assert_eq!(r.stop(), Some(0));
    drop(ram);
}

/// The run-time folder as a plain folder (no tmpfs, as on this machine), moved away and removed
/// while roost records: the reports come back, and status.json keeps following the recorder
/// (before: its watch followed the removed folder and status froze on a stale error).
#[test]
fn status_keeps_following_the_recorder_after_its_run_folder_is_removed() {
    let mut r = Roost::new("");
    let storage = r.path("storage");
    std::fs::write(&r.file, recorder_deployment("run-removed", &storage, "")).unwrap();
    let _feed = r.start_recording();
    let mut s = r.wait_for("two files", Duration::from_secs(60), |s| {
        files_written(s) >= 2
    });
    let run = r.state.join("run");
    for round in 0..2 {
        let before = files_written(&s);
        let away = r.path(&format!("gone-{round}"));
        std::fs::rename(std::fs::canonicalize(&run).unwrap(), &away).unwrap();
        std::fs::remove_dir_all(&away).unwrap();
        s = r.wait_for(
            "status following the recorder again",
            Duration::from_secs(30),
            |s| files_written(s) >= before + 4 && s["status"] == "Running",
        );
    }
    assert_eq!(r.stop(), Some(0));
}
