//! Status never greener than the device, and never redder either: end to end on the real
//! binary, what status.json and `roost status` say while a recorder waits for its window, and
//! that files of the usual length raise no false alarm between them.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Roost, component, recorder_deployment};

/// A recorder installed outside its window says when the window opens (local time, from
/// what) in status.json and in `roost status`, instead of only "outside the windows".
#[test]
fn a_recorder_waiting_for_its_window_says_when_it_opens() {
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let now = jiff::Timestamp::now();
    let start = (now + jiff::SignedDuration::from_hours(3)).to_zoned(jiff::tz::TimeZone::UTC);
    let end = start.clone() + jiff::SignedDuration::from_mins(20);
    let yaml = recorder_deployment("dawn", &storage, "").replace(
        "    timezone: UTC\n",
        &format!(
            "    timezone: UTC\n    windows: [{{start: \"{}\", end: \"{}\"}}]\n",
            start.strftime("%H:%M"),
            end.strftime("%H:%M")
        ),
    );
    std::fs::write(&r.file, &yaml).unwrap();
    let _feed = r.start_recording();
    let s = r.wait_for(
        "waiting with the next window",
        Duration::from_secs(30),
        |s| component(s, "recorder")["output"]["nextWindowAt"].is_string(),
    );
    let out = &component(&s, "recorder")["output"];
    let at: jiff::Timestamp = out["nextWindowAt"].as_str().unwrap().parse().unwrap();
    let expected_start = start.timestamp().as_second() / 60 * 60;
    assert_eq!(at.as_second(), expected_start, "{out:#}");
    assert!(
        out["nextWindowFrom"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "windows {}-{} (UTC)",
                start.strftime("%H:%M"),
                end.strftime("%H:%M")
            )),
        "{out:#}"
    );
    assert_eq!(component(&s, "recorder")["status"], "Running");
    let text = Command::new(common::ROOST)
        .args(["status", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("Waiting: outside the recording windows; the next opens ")
            && first.contains(&start.strftime("%H:%M:00 UTC").to_string()),
        "{text}"
    );
    assert_eq!(r.stop(), Some(0));
}

/// Files longer than the grace the reconciler gives a late file (35 s files here, the usual
/// 60 s in the field) never show a false DEP_E313 between two files: status.json read twice a
/// second over two file boundaries stays Running.
#[test]
fn files_longer_than_the_grace_raise_no_false_alarm_between_them() {
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let yaml =
        recorder_deployment("long-files", &storage, "").replace("duration: 1s", "duration: 35s");
    std::fs::write(&r.file, &yaml).unwrap();
    let _feed = r.start_recording();
    r.wait_for("recording", Duration::from_secs(30), |s| {
        component(s, "recorder")["output"]["state"] == "recording"
    });
    // The false alarm came 30 s after a file ended until the next one did: 65-70 s here.
    let until = Instant::now() + Duration::from_secs(80);
    let mut reads = 0;
    let mut files = 0;
    while Instant::now() < until {
        let s = r.status().unwrap();
        let errors = s["errors"].as_array().cloned().unwrap_or_default();
        assert!(
            errors.is_empty() && s["status"] == "Running",
            "after {reads} reads: {s:#}"
        );
        files = component(&s, "recorder")["output"]["filesWritten"]
            .as_u64()
            .unwrap_or(0);
        reads += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(files >= 2, "{files} files");
    assert_eq!(r.stop(), Some(0));
}

/// A tmpfs mounted for a test (root only), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Self {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs at {}", at.display());
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn roost_status(r: &Roost) -> (String, Option<i32>) {
    let out = Command::new(common::ROOST)
        .args(["status", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

/// The card holding the state folder fills up while the recorder records elsewhere:
/// status.json can no longer be written, and within 45 s of the next file's due time
/// `roost status` says the status is out of date and why (roost's own word, kept in the RAM
/// run-time folder), exits 1, and says Recording again by itself once there is room.
#[test]
fn a_status_that_cannot_be_written_says_so() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping a_status_that_cannot_be_written_says_so: needs root to mount a tmpfs");
        return;
    }
    let mut r = Roost::new("");
    let card = r.path("state-card");
    std::fs::create_dir_all(&card).unwrap();
    let _unmount = Tmpfs::mount(&card, "2m");
    r.state = card.join("state");
    let runtime = tempfile::tempdir_in("/dev/shm").unwrap();
    let storage = r.path("storage");
    std::fs::write(&r.file, recorder_deployment("full-state", &storage, "")).unwrap();
    let _feed = r.start_recording_env(&[], &[("RUNTIME_DIRECTORY", runtime.path())]);
    r.wait_for("recording", Duration::from_secs(30), |s| {
        component(s, "recorder")["output"]["filesWritten"].as_u64() >= Some(2)
    });
    assert_eq!(roost_status(&r).1, Some(0));
    // Fill the card.
    let fill = card.join("fill");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fill).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
    }
    let filled = Instant::now();
    let (text, code) = loop {
        let (text, code) = roost_status(&r);
        if text.starts_with("STATUS OUT OF DATE") || filled.elapsed() > Duration::from_secs(90) {
            break (text, code);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "figure: card full -> status out of date in {:?}",
        filled.elapsed()
    );
    assert!(
        text.starts_with("STATUS OUT OF DATE: not rewritten since ")
            && text.contains("roost cannot write it: ")
            && text.contains("No space left on device"),
        "{text}"
    );
    assert!(text.contains("DEP_E403"), "{text}");
    assert_eq!(code, Some(1), "{text}");
    std::fs::remove_file(&fill).unwrap();
    let freed = Instant::now();
    loop {
        let (text, code) = roost_status(&r);
        if text.starts_with("Recording.") && code == Some(0) {
            break;
        }
        assert!(freed.elapsed() < Duration::from_secs(30), "{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(r.stop(), Some(0));
}

/// `deployment.yaml` a link to a file on a card: the card unmounted is reported (the file
/// cannot be read; the last valid settings stay in force), and the card mounted again with new
/// content is applied by itself within seconds (the mount table is followed), not only at
/// SIGHUP.
#[test]
fn a_desired_file_on_a_card_is_read_again_when_the_card_comes_back() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "skipping a_desired_file_on_a_card_is_read_again_when_the_card_comes_back: needs root to mount"
        );
        return;
    }
    let mut r = Roost::new("");
    let card = r.path("card");
    std::fs::create_dir_all(&card).unwrap();
    let card_mount = Tmpfs::mount(&card, "1m");
    let yaml = |tag: &str| {
        common::deployment(
            "on-card",
            "",
            &common::sleeper("sleeper", &common::unique(tag)),
        )
    };
    std::fs::write(card.join("deployment.yaml"), yaml("first")).unwrap();
    std::fs::remove_file(&r.file).unwrap();
    std::os::unix::fs::symlink(card.join("deployment.yaml"), &r.file).unwrap();
    r.start();
    r.wait_succeeded(1);
    drop(card_mount);
    let s = r.wait_for("the missing file reported", Duration::from_secs(10), |s| {
        s["specError"].is_object()
    });
    assert_eq!(
        s["observedGeneration"], 1,
        "the last valid settings stay: {s:#}"
    );
    // Edited elsewhere, the card comes back.
    let staging = r.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let moved_away = Tmpfs::mount(&staging, "1m");
    std::fs::write(staging.join("deployment.yaml"), yaml("second")).unwrap();
    let moved = Command::new("mount")
        .arg("--move")
        .arg(&staging)
        .arg(&card)
        .status()
        .unwrap();
    assert!(moved.success());
    let _card_again = Tmpfs(card.clone());
    drop(moved_away);
    let back = Instant::now();
    r.wait_for("the new content applied", Duration::from_secs(10), |s| {
        s["observedGeneration"] == 2 && s["specError"].is_null()
    });
    eprintln!(
        "figure: card mounted again -> new settings applied in {:?}",
        back.elapsed()
    );
    assert_eq!(r.stop(), Some(0));
}
