//! End-to-end tests of time: the recorder's wall clock moved with libfaketime (Debian package
//! `faketime`; the monotonic clock left alone, as with an NTP step), across both 2026 daylight
//! saving transitions of Europe/London and by steps back and forward while it runs; and input
//! that stops being real time and becomes real time again.

#[path = "support/faketime.rs"]
mod faketime;
mod recorder_common;
use faketime::faketime_lib;

use std::path::Path;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use recorder_common::{KillOnDrop, PacedFeeder, Rig, frames, terminate};
use roost::recorder::RecorderState;
use serde_json::json;

const LONG: Duration = Duration::from_secs(40);
const RATE: u32 = 16_000;

fn faketime_or_skip(test: &str) -> bool {
    let found = Path::new(&faketime_lib()).exists();
    if !found {
        eprintln!(
            "skipping {test}: libfaketime is not installed (bash .ci/setup installs faketime)"
        );
    }
    found
}

/// Environment that runs the recorder at a fixed start instant (`@...`) or at an offset read
/// from a file on every call; the monotonic clock stays real.
fn faked(setting: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("LD_PRELOAD", faketime_lib()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
    ];
    env.extend(setting.iter().cloned());
    env
}

fn spawn(rig: &Rig, env: &[(&'static str, String)]) -> KillOnDrop {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    KillOnDrop(rig.spawn_recorder_with(&env))
}

fn start_of(f: &Path) -> Timestamp {
    roost::storage::start_from_file_name(f).unwrap()
}

fn end_of(f: &Path) -> Timestamp {
    let secs = frames(f) as f64 / f64::from(RATE);
    start_of(f)
        .checked_add(SignedDuration::from_secs_f64(secs))
        .unwrap()
}

fn guano(f: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned()
}

#[test]
fn a_clock_stepped_back_and_forward_overwrites_nothing_and_flags_overlaps() {
    if !faketime_or_skip("a_clock_stepped_back_and_forward_overwrites_nothing_and_flags_overlaps") {
        return;
    }
    let rig = Rig::new(RATE, json!({}), json!({}));
    let offset = rig.dir.path().join("offset");
    set_offset(&offset, "+0s");
    let env = faked(&[
        ("FAKETIME_TIMESTAMP_FILE", offset.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
    ]);
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = spawn(&rig, &env);
    rig.wait_report("three files", LONG, |r| r.files_written >= 3);
    // Back by more than the files written so far: new names fall on old ones.
    set_offset(&offset, "-4s");
    let stepped = rig.wait_report("overlaps flagged", LONG, |r| {
        r.time_overlaps >= 1 && r.files_written >= 8
    });
    assert!(
        stepped.warnings.iter().any(|w| w.code == "DEP_E317"),
        "{stepped:#?}"
    );
    // Forward by an hour: files follow the new time, no gap in the audio.
    set_offset(&offset, "+1h");
    let written = stepped.files_written;
    rig.wait_report("files after the step forward", LONG, |r| {
        r.files_written >= written + 3
    });
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    let report = rig.report().unwrap();
    let files = rig.recordings();
    // Nothing overwritten: every file written is on disk, each with its row.
    assert_eq!(files.len() as u64, report.files_written, "{files:?}");
    rig.assert_consistent();
    // Nothing lost: every captured frame is in a file.
    let recorded: u64 = files.iter().map(|f| frames(f)).sum();
    assert_eq!(
        (recorded, report.samples_dropped),
        (report.samples_captured, 0)
    );
    // The overlapping files say so in their GUANO; the last ones are an hour ahead.
    assert!(
        files
            .iter()
            .any(|f| guano(f).contains("ROOST|Time Overlap:"))
    );
    let first = start_of(&files[0]);
    let last = files.iter().map(|f| start_of(f)).max().unwrap();
    assert!(
        last.duration_since(first) > SignedDuration::from_mins(59),
        "{files:?}"
    );
    assert!(guano(&files[0]).contains("ROOST|Clock Synchronized:"));
}

/// Recorder settings for a window in Europe/London.
fn london_window(start: &str, end: &str, duration: &str) -> serde_json::Value {
    json!({
        "duration": duration,
        "timezone": "Europe/London",
        "windows": [{"start": start, "end": end}],
    })
}

#[test]
fn spring_forward_a_window_in_the_skipped_hour_opens_when_the_clocks_jump() {
    if !faketime_or_skip("spring_forward_a_window_in_the_skipped_hour_opens_when_the_clocks_jump") {
        return;
    }
    // 2026-03-29 01:00 UTC: 01:00 GMT becomes 02:00 BST; 01:30 local does not exist. The window
    // 01:30-02:30 opens at 01:00 UTC (not a day-long window, as before).
    let rig = Rig::new(RATE, london_window("01:30", "02:30", "2s"), json!({}));
    let env = faked(&[("FAKETIME", "@2026-03-29 00:59:56".to_string())]);
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = spawn(&rig, &env);
    let opening: Timestamp = "2026-03-29T01:00:00Z".parse().unwrap();
    let waiting = rig.wait_report("waiting for the window", LONG, |r| {
        r.state == RecorderState::Waiting
    });
    assert_eq!(
        waiting.expected_file_by,
        Some(opening.checked_add(SignedDuration::from_secs(2)).unwrap())
    );
    rig.wait_report("files in the window", LONG, |r| r.files_written >= 2);
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    let files = rig.recordings();
    let first = start_of(&files[0]);
    assert!(
        first.duration_since(opening).abs() < SignedDuration::from_millis(1),
        "first file at {first}"
    );
    rig.assert_consistent();
}

#[test]
fn fall_back_a_window_ends_at_its_local_end_after_the_repeated_hour() {
    if !faketime_or_skip("fall_back_a_window_ends_at_its_local_end_after_the_repeated_hour") {
        return;
    }
    // 2026-10-25 01:00 UTC: 02:00 BST becomes 01:00 GMT. The window 01:30-02:30 runs from the
    // first 01:30 (00:30 UTC) to 02:30 GMT (02:30 UTC); at 02:29:56 UTC it is still open.
    let rig = Rig::new(RATE, london_window("01:30", "02:30", "10s"), json!({}));
    let env = faked(&[("FAKETIME", "@2026-10-25 02:29:56".to_string())]);
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = spawn(&rig, &env);
    let closing: Timestamp = "2026-10-25T02:30:00Z".parse().unwrap();
    rig.wait_report("the cut file, then waiting", LONG, |r| {
        r.files_written >= 1 && r.state == RecorderState::Waiting
    });
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    let files = rig.recordings();
    assert_eq!(files.len(), 1, "{files:?}");
    let end = end_of(&files[0]);
    assert!(
        end.duration_since(closing).abs() < SignedDuration::from_millis(1),
        "the file ends at {end}"
    );
    assert!(start_of(&files[0]) < closing);
    rig.assert_consistent();
}

#[test]
fn a_clock_stepped_into_an_open_window_starts_recording_at_once() {
    if !faketime_or_skip("a_clock_stepped_into_an_open_window_starts_recording_at_once") {
        return;
    }
    // A window that opens in an hour (UTC), and a clock that jumps an hour ahead.
    let now = Timestamp::now();
    let at = |mins: i64| {
        now.checked_add(SignedDuration::from_mins(mins))
            .unwrap()
            .strftime("%H:%M")
            .to_string()
    };
    let rig = Rig::new(
        RATE,
        json!({"duration": "2s", "windows": [{"start": at(55), "end": at(70)}]}),
        json!({}),
    );
    let offset = rig.dir.path().join("offset");
    set_offset(&offset, "+0s");
    let env = faked(&[
        ("FAKETIME_TIMESTAMP_FILE", offset.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
    ]);
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = spawn(&rig, &env);
    rig.wait_report("waiting", LONG, |r| r.state == RecorderState::Waiting);
    set_offset(&offset, "+1h");
    let stepped = Instant::now();
    let report = rig.wait_report("recording after the step", LONG, |r| {
        r.files_written >= 1 && r.error.is_none()
    });
    eprintln!(
        "figure: wall clock stepped into a window -> first file in {:.1} s",
        stepped.elapsed().as_secs_f64()
    );
    assert_eq!(report.error, None);
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    rig.assert_consistent();
}

#[test]
fn a_source_that_ends_is_refused_and_recording_resumes_when_it_is_real_time_again() {
    let rig = Rig::new(RATE, json!({}), json!({}));
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    rig.wait_report("two files", LONG, |r| r.files_written >= 2);
    // The writer goes away: reads hit end of file, and the file plugin returns samples far
    // faster than real time.
    drop(feeder);
    let fast = rig.wait_report("input refused", LONG, |r| {
        r.state == RecorderState::InputNotRealTime
    });
    assert_eq!(fast.error.as_ref().unwrap().code, "DEP_E315");
    let back = Instant::now();
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let written = fast.files_written;
    rig.wait_report("recording again", LONG, |r| {
        r.files_written >= written + 2 && r.error.is_none()
    });
    eprintln!(
        "figure: real-time input again -> recording in {:.1} s",
        back.elapsed().as_secs_f64()
    );
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    rig.assert_consistent();
    // No file claims a time ahead of when it was complete.
    for f in rig.recordings() {
        let modified: Timestamp = std::fs::metadata(&f)
            .unwrap()
            .modified()
            .unwrap()
            .try_into()
            .unwrap();
        assert!(
            end_of(&f) <= modified.checked_add(SignedDuration::from_secs(2)).unwrap(),
            "{}",
            f.display()
        );
    }
}

/// Twenty fresh starts on one storage, two files each: no "wall clock stepped back" warning
/// (DEP_E317) from two instants derived from sample counts and rounded separately (it was
/// raised on about a third of fresh starts); a start's first file is compared with the last
/// file of the run before it.
#[test]
fn fresh_starts_raise_no_false_time_overlap() {
    let rig = Rig::new(RATE, json!({}), json!({}));
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut written = 0;
    for start in 0..20 {
        let mut child = KillOnDrop(rig.spawn_recorder());
        let report = rig.wait_report("two files", LONG, |r| {
            r.files_written >= 2 && r.pid == child.0.id()
        });
        assert!(terminate(&mut child.0).success(), "{}", rig.log());
        assert_eq!(report.time_overlaps, 0, "start {start}: {report:#?}");
        assert!(
            !report.warnings.iter().any(|w| w.code == "DEP_E317"),
            "start {start}: {report:#?}"
        );
        written += report.files_written;
    }
    drop(feeder);
    assert!(written >= 40);
    rig.assert_consistent();
}

/// Writes libfaketime's offset file whole (temp file, rename), as an NTP step is one instant: a
/// process reading it at every clock call must never see it empty or half written.
fn set_offset(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
