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
/// second for about two minutes stays Running.
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
    let until = Instant::now() + Duration::from_secs(115);
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
    assert!(files >= 3, "{files} files");
    assert_eq!(r.stop(), Some(0));
}
