//! Table tests of the recorder's time rules: what end-to-end runs under libfaketime check, at
//! millisecond cost and on every architecture.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn now(wall: &str, mono_s: f64) -> Now {
    Now {
        wall: at(wall),
        mono: Duration::from_secs_f64(mono_s),
    }
}

const T0: &str = "2026-06-01T04:00:00Z";

/// A timeline anchored at `T0` (monotonic 0) with nothing queued.
fn anchored(rate: u32) -> Timeline {
    let start = now(T0, 0.0);
    let mut t = Timeline::new(rate, start);
    t.anchor(start, 0, 0);
    t
}

#[test]
fn frames_and_instants_round_trip_at_common_rates() {
    // Frame counts that do not divide into whole nanoseconds at 44.1 kHz, a day in, a year in.
    let indices = [
        0,
        1,
        2,
        3,
        441,
        44_099,
        44_100,
        44_101,
        3_810_240_001,
        1_390_000_000_007,
    ];
    for rate in [
        8_000, 22_050, 44_100, 48_000, 96_000, 192_000, 250_000, 384_000,
    ] {
        let t = anchored(rate);
        let wall = at(T0);
        for i in indices {
            assert_eq!(
                t.index_of(t.time_of(i, wall), wall),
                i,
                "rate {rate}, index {i}"
            );
            // One nanosecond later belongs to the next frame (no frame is in two files).
            let later = t.time_of(i, wall) + SignedDuration::from_nanos(1);
            assert_eq!(
                t.index_of(later, wall),
                i + 1,
                "rate {rate}, index {i} + 1 ns"
            );
        }
    }
}

#[test]
fn consecutive_files_are_contiguous_and_their_lengths_are_exact() {
    // Ten 1-minute files at 44.1 kHz: each ends where the next starts, 2,646,000 frames each.
    let t = anchored(44_100);
    let wall = at(T0);
    let mut start = 0;
    for minute in 1..=10i64 {
        let end = t.index_of(at(T0) + SignedDuration::from_mins(minute), wall);
        assert_eq!(end - start, 2_646_000, "file {minute}");
        assert_eq!(
            t.time_of(end, wall),
            at(T0) + SignedDuration::from_mins(minute)
        );
        start = end;
    }
}

#[test]
fn a_backlog_at_the_anchor_gets_its_true_earlier_times() {
    for (rate, queued, before_ms) in [
        (48_000, 48_000, 1000),
        (44_100, 22_050, 500),
        (16_000, 0, 0),
    ] {
        let mut t = Timeline::new(rate, now(T0, 5.0));
        t.anchor(now(T0, 5.0), queued, 0);
        assert_eq!(
            t.time_of(0, at(T0)),
            at(T0) - SignedDuration::from_millis(before_ms),
            "{rate} Hz, {queued} frames queued"
        );
    }
}

#[test]
fn an_unanchored_timeline_reads_the_wall_clock_it_is_given() {
    let t = Timeline::new(48_000, now(T0, 0.0));
    assert!(!t.is_anchored());
    let wall = at("2026-06-01T05:00:00Z");
    assert_eq!(t.time_of(0, wall), wall);
    assert_eq!(t.index_of(wall - SignedDuration::from_secs(1), wall), 0);
    assert_eq!(t.index_of(Timestamp::MAX, wall), u64::MAX);
}

/// Re-anchoring between files: (wall clock when frame `index` was captured minus its sample
/// time, seconds; samples captured ahead of the monotonic clock, seconds) -> drift followed.
#[test]
fn the_wall_clock_is_followed_when_it_steps_or_drifts_a_second_or_more() {
    let rate = 48_000;
    let cases: [(&str, f64, f64, Option<f64>); 11] = [
        ("in step", 0.0, 0.0, None),
        ("sound card 0.9 s slow", 0.9, 0.0, None),
        ("sound card 1.5 s slow", 1.5, 0.0, Some(-1.5)),
        ("sound card 1.5 s fast", -1.5, 0.0, Some(1.5)),
        ("NTP stepped forward an hour", 3600.0, 0.0, Some(-3600.0)),
        ("NTP stepped back an hour", -3600.0, 0.0, Some(3600.0)),
        (
            "a board without RTC set by NTP (+6 years)",
            189_302_400.0,
            0.0,
            Some(-189_302_400.0),
        ),
        // A burst keeps its time: the samples ran ahead of the wall clock by their lead.
        ("a burst of 5 s", -5.0, 5.0, None),
        (
            "a capture thread caught up 0.3 s after a stall",
            -0.3,
            0.3,
            None,
        ),
        // ... but a lead never hides a step: a starved capture thread that caught up 0.3 s
        // must not keep the recorder from following NTP for the rest of the stream.
        (
            "caught up 0.3 s, then NTP stepped forward an hour",
            3600.0,
            0.3,
            Some(-3600.0),
        ),
        (
            "caught up 0.3 s, then stepped back 4 s",
            -4.0,
            0.3,
            Some(4.0),
        ),
    ];
    for (what, wall_ahead_s, burst_s, want) in cases {
        let mut t = anchored(rate);
        let elapsed = 600.0;
        let index = (elapsed * f64::from(rate)) as u64;
        let captured = ((elapsed + burst_s) * f64::from(rate)) as u64;
        let wall = at(T0) + SignedDuration::from_secs_f64(elapsed + wall_ahead_s);
        t.note_captured(index, wall);
        let look = Now {
            wall,
            mono: Duration::from_secs_f64(elapsed),
        };
        let got = t.drift_to_follow(index, look, captured);
        assert_eq!(got.map(|ns| ns as f64 / 1e9), want, "{what}");
        if got.is_some() {
            t.re_anchor(index, look, captured);
            assert_eq!(
                t.time_of(index, wall),
                wall,
                "{what}: frame {index} re-anchored"
            );
            assert_eq!(
                t.drift_to_follow(index, look, captured),
                None,
                "{what}: followed"
            );
        }
    }
}

/// (seconds of samples captured, monotonic seconds since the anchor) -> pace.
#[test]
fn the_pace_tells_real_time_from_input_far_faster() {
    let cases = [
        ("first second", 1.0, 1.0, Pace::Unknown),
        ("a second of start-up backlog", 1.9, 0.5, Pace::Unknown),
        ("ten seconds in real time", 10.0, 10.0, Pace::RealTime),
        (
            "a day, sound card 100 ppm fast",
            86_408.64,
            86_400.0,
            Pace::RealTime,
        ),
        ("a minute of samples in a second", 60.0, 1.0, Pace::Fast),
        ("two seconds ahead after two", 4.1, 2.0, Pace::Fast),
        ("a day, 0.3 % fast", 86_659.2, 86_400.0, Pace::Fast),
        ("a stall (behind)", 5.0, 20.0, Pace::RealTime),
    ];
    for rate in [44_100, 48_000] {
        for (what, samples_s, mono_s, want) in cases {
            let t = anchored(rate);
            let captured = (samples_s * f64::from(rate)) as u64;
            assert_eq!(
                t.pace(now(T0, mono_s), captured),
                want,
                "{what} at {rate} Hz"
            );
        }
    }
}

#[test]
fn input_that_was_too_fast_resumes_only_once_it_keeps_real_time() {
    let rate = 48_000u32;
    let frames = |s: f64| (s * f64::from(rate)) as u64;
    let mut t = anchored(rate);
    // A file played 30x real time: still off.
    assert_eq!(t.recovery(now(T0, 2.0), frames(60.0)), Recovery::StillOff);
    t.restart_pace_window(now(T0, 2.0), frames(60.0));
    // Too early to tell after the new window began.
    assert_eq!(t.recovery(now(T0, 3.0), frames(61.0)), Recovery::Wait);
    // Real time in pace but 0.5 s ahead: not yet.
    assert_eq!(t.recovery(now(T0, 5.0), frames(63.5)), Recovery::StillOff);
    t.restart_pace_window(now(T0, 5.0), frames(63.5));
    // Two seconds in step: resume.
    assert_eq!(t.recovery(now(T0, 7.0), frames(65.5)), Recovery::Resume);
}

#[test]
fn a_stream_across_a_daylight_saving_change_has_no_jump() {
    // Europe/London springs forward at 01:00 UTC on 2026-03-29 and falls back at 01:00 UTC on
    // 2026-10-25: sample times are UTC instants, so frames go on at one per 1/rate.
    for start in ["2026-03-29T00:59:00Z", "2026-10-25T00:59:00Z"] {
        let mut t = Timeline::new(48_000, now(start, 0.0));
        t.anchor(now(start, 0.0), 0, 0);
        let two_minutes = t.time_of(48_000 * 120, at(start));
        assert_eq!(
            two_minutes.duration_since(at(start)),
            SignedDuration::from_mins(2),
            "{start}"
        );
    }
}

/// (earlier file's end minus this file's start, nanoseconds; sample rate) -> overlap counted.
#[test]
fn overlaps_are_counted_only_beyond_one_sample_of_rounding() {
    let start = at(T0);
    let cases: [(i64, u32, Option<f64>); 9] = [
        (0, 48_000, None),
        (-1_000_000_000, 48_000, None),
        // One sample at 48 kHz is 20,833 ns; a database end rounded to the microsecond adds 1 us.
        (20_833, 48_000, None),
        (21_833, 48_000, None),
        (22_676, 44_100, None),
        (41_667, 48_000, Some(41_667e-9)),
        (45_352, 44_100, Some(45_352e-9)),
        (1_500_000_000, 48_000, Some(1.5)),
        (3_600_000_000_000, 44_100, Some(3600.0)),
    ];
    for (ns, rate, want) in cases {
        let earlier_end = start + SignedDuration::from_nanos(ns);
        assert_eq!(
            overlap_s(earlier_end, start, rate),
            want,
            "{ns} ns at {rate} Hz"
        );
    }
}
