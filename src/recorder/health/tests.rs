//! The report's error and warnings, judged at given instants.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::recorder::report::tests::report;

fn t0() -> Timestamp {
    "2026-06-01T10:00:00Z".parse().unwrap()
}

fn owed(rows: u64, since_s: u64) -> Owed {
    Owed {
        rows,
        since: Some(Duration::from_secs(since_s)),
        since_wall: Some(t0()),
        why: Some("database is locked".into()),
        code: Some(errors::METADATA_DB_ERROR),
    }
}

fn codes(w: &[ReportError]) -> Vec<&str> {
    w.iter().map(|e| e.code.as_str()).collect()
}

#[test]
fn the_writers_own_error_comes_first_then_stranded_files_then_rows_owed() {
    let own = ReportError::new(errors::DISK_FULL, "full");
    let stranded = Stranded {
        files: 2,
        why: "read-only",
    };
    let late = owed(3, 0);
    let mono = Duration::from_secs(10);
    let code = |e: Option<ReportError>| e.map(|e| e.code);
    assert_eq!(
        code(effective_error(
            Some(&own),
            Some(stranded),
            Some(&late),
            mono
        )),
        Some(errors::DISK_FULL.code.to_string())
    );
    let e = effective_error(None, Some(stranded), Some(&late), mono).unwrap();
    assert_eq!(e.code, errors::STORAGE_UNUSABLE.code);
    assert!(
        e.message.starts_with("2 finished recordings"),
        "{}",
        e.message
    );
    let e = effective_error(None, None, Some(&late), mono).unwrap();
    assert_eq!(e.code, errors::METADATA_DB_ERROR.code);
    assert!(e.message.contains("3 recordings") && e.message.contains("(database is locked)"));
}

/// (rows owed, handed over at, monotonic now) -> shown as an error; and the count the report
/// shows after one second.
#[test]
fn rows_owed_become_an_error_only_after_the_grace() {
    let cases = [
        (0, 0, 60, false, 0),
        (1, 10, 10, false, 0),
        (1, 10, 11, false, 1),
        (4, 10, 12, false, 4),
        (4, 10, 13, true, 4),
        (4, 10, 600, true, 4),
    ];
    for (rows, since, mono, error, shown) in cases {
        let o = owed(rows, since);
        let mono = Duration::from_secs(mono);
        assert_eq!(
            effective_error(None, None, Some(&o), mono).is_some(),
            error,
            "{rows} owed since {since} s at {mono:?}"
        );
        assert_eq!(rows_shown(&o, mono, Duration::from_secs(1)), shown);
    }
    assert_eq!(effective_error(None, None, None, Duration::ZERO), None);
}

#[test]
fn a_layout_in_the_way_keeps_its_own_code_never_move_aside() {
    for (code, want) in [
        (errors::METADATA_DB_NEWER, errors::METADATA_DB_NEWER),
        (errors::METADATA_DB_MIGRATION, errors::METADATA_DB_MIGRATION),
        (errors::STORAGE_UNUSABLE, errors::METADATA_DB_ERROR),
    ] {
        let o = Owed {
            code: Some(code),
            ..owed(1, 0)
        };
        let e = effective_error(None, None, Some(&o), Duration::from_secs(60)).unwrap();
        assert_eq!(e.code, want.code);
    }
}

/// (state, next window in hours or never) -> DEP_E318.
#[test]
fn a_far_window_warns_only_while_waiting() {
    let cases = [
        (RecorderState::Waiting, Some(167), false),
        (RecorderState::Waiting, Some(169), true),
        (RecorderState::Waiting, None, true),
        (RecorderState::Recording, Some(500), false),
    ];
    for (state, hours, want) in cases {
        let r = RecorderReport {
            state,
            next_window_at: hours.map(|h| t0() + SignedDuration::from_hours(h)),
            next_window_from: Some("windows 05:00-06:00 (Europe/London)".into()),
            ..report(t0())
        };
        let got = codes(&warnings(&r, t0())).contains(&"DEP_E318");
        assert_eq!(got, want, "{state:?} {hours:?}");
    }
}

#[test]
fn each_condition_has_its_warning_and_a_clean_report_none() {
    assert!(warnings(&report(t0()), t0()).is_empty());
    let r = RecorderReport {
        clock_synchronized: Some(false),
        files_deleted: 2,
        recently_deleted: vec!["/s/recordings/a.wav".into()],
        samples_dropped: 5,
        time_overlaps: 1,
        ..report(t0())
    };
    assert_eq!(
        codes(&warnings(&r, t0())),
        ["DEP_E316", "DEP_E304", "DEP_E314", "DEP_E317"]
    );
    let discarded_only = RecorderReport {
        samples_discarded: 48_000,
        ..report(t0())
    };
    assert_eq!(codes(&warnings(&discarded_only, t0())), ["DEP_E314"]);
}
