//! Keeping recordings under wrong clocks and hostile input, end to end on the real binary:
//! `roost run` (process runtime, which passes its environment on to the recorder and the
//! curator it starts) under libfaketime (Debian `faketime`) with an offset file the test
//! rewrites, as NTP or a person would step the clock (the monotonic clocks, CLOCK_BOOTTIME
//! included, left real); a detection rule on a storage no detector has seen; and WAV headers
//! and metadata.db rows that lie about their numbers.

mod common;
#[path = "support/faketime.rs"]
mod faketime;
use faketime::faketime_lib;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Roost, component, recorder_deployment};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn faketime_or_skip(test: &str) -> bool {
    let found = Path::new(&faketime_lib()).exists();
    if !found {
        eprintln!(
            "skipping {test}: libfaketime is not installed (bash .ci/setup installs faketime)"
        );
    }
    found
}

/// The wall clock of roost and of every process it starts: libfaketime reads the offset from
/// this file on every call (`FAKETIME_NO_CACHE`), so one rewrite moves all of them at once.
struct FakeClock {
    offset: PathBuf,
}

impl FakeClock {
    fn new(r: &Roost, offset: &str) -> Self {
        let clock = Self {
            offset: r.path("faketime-offset"),
        };
        clock.set(offset);
        clock
    }

    /// Replaces the offset whole (a reader never sees a half-written one).
    fn set(&self, offset: &str) {
        let tmp = self.offset.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset}\n")).unwrap();
        std::fs::rename(&tmp, &self.offset).unwrap();
    }

    /// Environment for `roost run`.
    fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("LD_PRELOAD", faketime_lib().into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
            ("FAKETIME_TIMESTAMP_FILE", self.offset.clone()),
            ("FAKETIME_NO_CACHE", "1".into()),
        ]
    }
}

/// The libfaketime offset ("-849859968s") that puts the clock at `target` now.
fn offset_to(target: Timestamp) -> String {
    let secs = target.as_second() - Timestamp::now().as_second();
    format!("{secs:+}s")
}

fn start_faked(r: &mut Roost, clock: &FakeClock, feed_args: &[&str]) -> common::Feed {
    let env = clock.env();
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    r.start_recording_env(feed_args, &env)
}

fn db(storage: &Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(storage.join("metadata.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db
}

/// One number from metadata.db; 0 while the table is not there yet.
fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

/// A report in `<state>/run/` (`curator-report.json`, `recorder-report.json`).
fn run_report(r: &Roost, name: &str) -> Option<Value> {
    let bytes = roost::fsutil::read_run_file(&r.state, name)?;
    serde_json::from_slice(&bytes).ok()
}

fn curator_report(r: &Roost) -> Value {
    run_report(r, "curator-report.json").unwrap_or(Value::Null)
}

/// Waits for `pred` on anything (metadata.db, reports); on timeout the harness shows
/// status.json and roost's log.
fn wait_until(r: &Roost, what: &str, timeout: Duration, pred: impl Fn() -> bool) {
    r.wait_for(what, timeout, |_| pred());
}

/// (datetime, path, deleted_by) of every recording row, in insertion order.
type Row = (String, Option<String>, Option<String>);

fn rows(conn: &rusqlite::Connection) -> Vec<Row> {
    conn.prepare("SELECT datetime, path, deleted_by FROM recording ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The `*.wav` files under `dir`.
fn wavs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(wavs(&p));
        } else if p.extension().is_some_and(|x| x == "wav") {
            out.push(p);
        }
    }
    out
}

/// Every row has its file and no deletion, and every file under recordings/ has its row.
fn nothing_deleted(conn: &rusqlite::Connection, storage: &Path) -> usize {
    let all = rows(conn);
    for (datetime, path, by) in &all {
        assert_eq!(by, &None, "{datetime} was deleted: {all:#?}");
        let path = path
            .as_deref()
            .unwrap_or_else(|| panic!("{datetime} has no path"));
        assert!(Path::new(path).is_file(), "{path} is gone");
    }
    let on_disk = wavs(&storage.join("recordings"));
    assert_eq!(on_disk.len(), all.len(), "{on_disk:#?}");
    all.len()
}

/// Whether the process `pid` runs with `LD_PRELOAD` of libfaketime: roost's process runtime
/// hands its own environment to what it starts.
fn runs_faked(pid: u64) -> bool {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let wanted = format!("LD_PRELOAD={}", faketime_lib());
    env.split(|b| *b == 0).any(|v| v == wanted.as_bytes())
}

/// The recorder and the curator ran under the faked clock, and neither died (restartCount 0).
fn components_faked_and_alive(r: &Roost) -> Value {
    let s = r.status().unwrap();
    for name in ["recorder", "curator"] {
        let c = component(&s, name);
        assert_eq!(c["restartCount"], 0, "{name} restarted: {s:#}");
        let pid = common::pid_of(&s, name);
        assert!(
            runs_faked(pid),
            "{name} (pid {pid}) does not run under libfaketime: roost did not pass its environment on"
        );
    }
    s
}

/// A device without a real-time clock boots at `boot` (libfaketime, every process of roost),
/// records 8 one-second files, then NTP sets the clock right while it records on. With
/// `maxAge: 1h` and decades between the two eras of wall time, nothing may be deleted by age:
/// the 2000-era (or 1970-era) recordings are seconds old on the device clock.
fn booted_in_the_past_then_set_by_ntp(test: &str, boot: Timestamp) {
    if !faketime_or_skip(test) {
        return;
    }
    let started = Instant::now();
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let yaml = recorder_deployment("ntp-set", &storage, "")
        .replace("storage: {path:", "storage: {maxAge: 1h, path:");
    std::fs::write(&r.file, &yaml).unwrap();
    let clock = FakeClock::new(&r, &offset_to(boot));
    let _feed = start_faked(&mut r, &clock, &[]);
    wait_until(&r, "metadata.db", LONG, || {
        storage.join("metadata.db").exists()
    });
    let conn = db(&storage);
    // Rows of the wrong era: before the boot's next day (text order is time order).
    let era_end = roost::storage::db_datetime(boot + SignedDuration::from_hours(24));
    let old = format!("SELECT count(*) FROM recording WHERE datetime < '{era_end}'");
    let old_seen = format!(
        "SELECT count(*) FROM recording r JOIN roost_age g ON g.recording_id = r.id WHERE r.datetime < '{era_end}'"
    );
    // 8 files made and seen by the curator under the wrong clock.
    wait_until(&r, "8 files of the wrong era seen", LONG, || {
        count(&conn, &old_seen) >= 8
    });
    clock.set("+0s");
    let stepped = Instant::now();
    let new_seen = format!(
        "SELECT count(*) FROM recording r JOIN roost_age g ON g.recording_id = r.id WHERE r.datetime >= '{era_end}'"
    );
    wait_until(&r, "10 files after NTP set the clock", LONG, || {
        count(&conn, &new_seen) >= 10
    });
    let n_old = count(&conn, &old) as u64;
    let n_new = count(&conn, "SELECT count(*) FROM recording") as u64 - n_old;
    // The curator judged them all after the step (its report counts every present one).
    wait_until(&r, "a curator round over every file", LONG, || {
        let s = &curator_report(&r)["storage"];
        s["recordings"].as_u64() >= Some(n_old + n_new) && s["clockDisagrees"] == n_old
    });
    let status = r.wait_for("status.json with the curator's count", LONG, |s| {
        component(s, "curator")["output"]["storage"]["clockDisagrees"] == n_old
    });
    eprintln!(
        "figure: {test}: {n_old} files of {}, {n_new} after the step in {:.1} s",
        &boot.to_string()[..4],
        stepped.elapsed().as_secs_f64()
    );

    // Expected: every wrong-era file (and only those) disagrees with its real age; a note
    // says maxAge goes by the device clock; nothing was deleted, by age or otherwise.
    let report = curator_report(&r);
    let storage_report = &report["storage"];
    assert!(n_old >= 8 && n_new >= 10, "{n_old} {n_new}");
    assert_eq!(storage_report["clockDisagrees"], n_old, "{report:#}");
    let note = storage_report["ageNote"].as_str().unwrap_or_default();
    assert!(!note.is_empty(), "no ageNote: {report:#}");
    assert_eq!(storage_report["deletedByRule"], serde_json::json!({}));
    assert_eq!(report["error"], Value::Null, "{report:#}");
    let recorder = run_report(&r, "recorder-report.json").unwrap();
    // A step forward overlaps nothing.
    assert_eq!(recorder["timeOverlaps"], 0, "{recorder:#}");
    assert_eq!(recorder["samplesDropped"], 0, "{recorder:#}");
    components_faked_and_alive(&r);
    assert_eq!(component(&status, "curator")["status"], "Running");
    assert_eq!(r.stop(), Some(0));
    // The file cut by the stop was saved too; none of the wrong era came after the step.
    let total = nothing_deleted(&conn, &storage);
    assert!(total as u64 >= n_old + n_new, "{total}");
    assert_eq!(count(&conn, &old) as u64, n_old);
    let by_age = count(
        &conn,
        "SELECT count(*) FROM recording WHERE deleted_by = 'maxAge'",
    );
    assert_eq!(by_age, 0);
    eprintln!("figure: {test}: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_device_booted_in_2000_then_set_by_ntp_deletes_nothing_by_age() {
    booted_in_the_past_then_set_by_ntp(
        "a_device_booted_in_2000_then_set_by_ntp_deletes_nothing_by_age",
        "2000-01-01T00:00:00Z".parse().unwrap(),
    );
}

#[test]
fn a_device_booted_at_the_epoch_then_set_by_ntp_deletes_nothing_by_age() {
    booted_in_the_past_then_set_by_ntp(
        "a_device_booted_at_the_epoch_then_set_by_ntp_deletes_nothing_by_age",
        Timestamp::UNIX_EPOCH,
    );
}

/// The clock is stepped 25 h ahead for a few seconds and back, with `maxAge: 1d`: while it is
/// ahead, the files made before look 25 h old by the wall clock; after, the files made while
/// it was ahead lie 25 h in the future. Nothing is deleted by age, every file stays, and the
/// recorder counts the step back once (DEP_E317), not once per file until the clock catches
/// up with the files made while it was ahead.
#[test]
fn a_clock_stepped_ahead_a_day_and_back_deletes_nothing_and_warns_once() {
    let test = "a_clock_stepped_ahead_a_day_and_back_deletes_nothing_and_warns_once";
    if !faketime_or_skip(test) {
        return;
    }
    let started = Instant::now();
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let yaml = recorder_deployment("stepped", &storage, "")
        .replace("storage: {path:", "storage: {maxAge: 1d, path:");
    std::fs::write(&r.file, &yaml).unwrap();
    let clock = FakeClock::new(&r, "+0s");
    let _feed = start_faked(&mut r, &clock, &[]);
    wait_until(&r, "metadata.db", LONG, || {
        storage.join("metadata.db").exists()
    });
    let conn = db(&storage);
    let seen = "SELECT count(*) FROM recording r JOIN roost_age g ON g.recording_id = r.id";
    wait_until(&r, "3 files seen", LONG, || count(&conn, seen) >= 3);
    let before = count(&conn, "SELECT count(*) FROM recording");

    clock.set("+25h");
    let ahead_from = roost::storage::db_datetime(Timestamp::now() + SignedDuration::from_hours(12));
    let ahead_seen = format!("{seen} WHERE r.datetime >= '{ahead_from}'");
    let real_ahead = Timestamp::now() + SignedDuration::from_hours(24);
    // Files made while ahead, seen by the curator, and a round of it under the ahead clock.
    wait_until(&r, "3 files made while the clock was ahead", LONG, || {
        let report = curator_report(&r);
        let at: Option<Timestamp> = report["updatedAt"].as_str().and_then(|t| t.parse().ok());
        count(&conn, &ahead_seen) >= 3 && at.is_some_and(|t| t > real_ahead)
    });
    // While ahead, the files made before look 25 h old, and are kept.
    let while_ahead = curator_report(&r);
    assert!(
        while_ahead["storage"]["clockDisagrees"].as_u64() >= Some(before as u64),
        "{while_ahead:#}"
    );
    assert!(while_ahead["storage"]["ageNote"].is_string());
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM recording WHERE deleted_by IS NOT NULL"
        ),
        0,
        "deleted while the clock was ahead: {:#?}",
        rows(&conn)
    );

    clock.set("+0s");
    let last_ahead = count(
        &conn,
        &format!("SELECT max(rowid) FROM recording WHERE datetime >= '{ahead_from}'"),
    );
    let back_seen = format!("{seen} WHERE r.rowid > {last_ahead} AND r.datetime < '{ahead_from}'");
    wait_until(&r, "5 files after the step back", LONG, || {
        count(&conn, &back_seen) >= 5
    });
    let n_ahead = count(
        &conn,
        &format!("SELECT count(*) FROM recording WHERE datetime >= '{ahead_from}'"),
    ) as u64;
    let total = count(&conn, "SELECT count(*) FROM recording") as u64;
    wait_until(&r, "a curator round over every file", LONG, || {
        let s = &curator_report(&r)["storage"];
        s["recordings"].as_u64() >= Some(total) && s["clockDisagrees"] == n_ahead
    });

    // Expected: the files made while ahead (and only those) disagree; nothing deleted; one
    // overlap, the file after the step back.
    let report = curator_report(&r);
    assert_eq!(report["storage"]["clockDisagrees"], n_ahead, "{report:#}");
    assert!(report["storage"]["ageNote"].is_string(), "{report:#}");
    assert_eq!(
        report["storage"]["deletedByRule"],
        serde_json::json!({}),
        "{report:#}"
    );
    let recorder = run_report(&r, "recorder-report.json").unwrap();
    assert_eq!(recorder["timeOverlaps"], 1, "{recorder:#}");
    let overlap_warnings: Vec<&Value> = recorder["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["code"] == "DEP_E317")
        .collect();
    assert_eq!(overlap_warnings.len(), 1, "{recorder:#}");
    assert_eq!(recorder["samplesDropped"], 0, "{recorder:#}");
    components_faked_and_alive(&r);
    assert_eq!(r.stop(), Some(0));
    let total = nothing_deleted(&conn, &storage);
    assert!(total >= before as usize + 3 + 5);
    eprintln!(
        "figure: {test}: {n_ahead} files ahead, {total} in all, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A storage that no detector has seen: the recorder makes its first files before any curator
/// runs (the deployment has no detector yet), then a detector and a detection keep rule are
/// added. The detector starts just before the first recording of the running deployment, so
/// those first files are analysed too, and every file the rule deletes was analysed before it
/// went (`minDuration: 200ms` so that in every two 1 s files of the 2 s events signal at least
/// one holds no qualifying burst and is deleted).
#[test]
fn a_fresh_storage_with_a_detection_rule_analyses_every_recording_before_any_is_deleted() {
    let started = Instant::now();
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let plain = recorder_deployment("fresh", &storage, "");
    std::fs::write(&r.file, &plain).unwrap();
    let _feed = r.start_recording_with(&["--signal", "events"]);
    wait_until(&r, "metadata.db", LONG, || {
        storage.join("metadata.db").exists()
    });
    let conn = db(&storage);
    wait_until(&r, "3 files before any curator", LONG, || {
        count(&conn, "SELECT count(*) FROM recording") >= 3
    });
    let s = r.status().unwrap();
    assert!(
        !s["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "curator"),
        "{s:#}"
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM roost_detector"),
        0,
        "no detector seen yet"
    );
    let first_rowid = count(&conn, "SELECT min(rowid) FROM recording");
    let detecting = recorder_deployment(
        "fresh",
        &storage,
        "  detectors:\n    - {name: birds, kind: bandEnergy, lowHz: 2000, highHz: 5000, minDuration: 200ms}\n",
    )
    .replace(
        "storage: {path:",
        "storage: {keep: [{detection: {minScore: 0.5}}], path:",
    );
    let before_curator = count(&conn, "SELECT count(*) FROM recording");
    r.replace_atomically(&detecting);
    wait_until(&r, "10 files decided", LONG, || {
        count(&conn, "SELECT count(*) FROM roost_keep") >= 10
    });
    let s = r.status().unwrap();
    assert_eq!(component(&s, "curator")["restartCount"], 0, "{s:#}");
    assert_eq!(r.stop(), Some(0));

    // Expected: the detector starts just before the first recording of the storage.
    let since = count(
        &conn,
        "SELECT since_rowid FROM roost_detector WHERE name = 'birds'",
    );
    assert_eq!(since, first_rowid - 1);
    // The first recordings, made before any curator ran, were analysed.
    type Decided = (i64, String, Option<String>, Option<String>, Option<String>);
    let decided: Vec<Decided> = conn
        .prepare(
            "SELECT r.rowid, r.datetime, k.kept_by, r.deleted_by,
                 (SELECT a.outcome FROM roost_analysis a WHERE a.recording_id = r.id AND a.detector = 'birds')
             FROM recording r JOIN roost_keep k ON k.recording_id = r.id ORDER BY r.rowid",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(decided.len() >= 10, "{decided:#?}");
    assert_eq!(decided[0].0, first_rowid, "the first recording was decided");
    for (rowid, datetime, _, _, outcome) in decided.iter().take(before_curator as usize) {
        assert_eq!(
            outcome.as_deref(),
            Some("done"),
            "{rowid} {datetime}, made before the curator ran, not analysed: {decided:#?}"
        );
    }
    // Everything decided was analysed (none kept as notAnalysed, none failed); what the rule
    // deleted, it deleted after its analysis finished.
    for (rowid, datetime, kept_by, deleted_by, outcome) in &decided {
        assert_eq!(outcome.as_deref(), Some("done"), "{rowid} {datetime}");
        match kept_by {
            Some(by) => {
                assert_eq!(by, "keep[0]:detection", "{rowid} {datetime}");
                assert_eq!(deleted_by, &None);
            }
            None => assert_eq!(deleted_by.as_deref(), Some("keep"), "{rowid} {datetime}"),
        }
    }
    let analysed_then_deleted: Vec<(String, String)> = conn
        .prepare(
            "SELECT a.finished_on, r.deleted_on FROM recording r JOIN roost_analysis a
             ON a.recording_id = r.id AND a.detector = 'birds' WHERE r.deleted_by = 'keep'",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let deleted = decided.iter().filter(|d| d.2.is_none()).count();
    assert_eq!(analysed_then_deleted.len(), deleted);
    assert!(
        deleted >= 3,
        "in every two files one has no burst: {decided:#?}"
    );
    for (finished, gone) in &analysed_then_deleted {
        let finished = roost::storage::parse_db_datetime(finished).unwrap();
        let gone = roost::storage::parse_db_datetime(gone).unwrap();
        assert!(finished <= gone, "analysed {finished}, deleted {gone}");
    }
    // Rows and files agree.
    for (datetime, path, by) in rows(&conn) {
        match path {
            Some(p) => assert!(Path::new(&p).is_file() && by.is_none(), "{datetime}"),
            None => assert_eq!(by.as_deref(), Some("keep"), "{datetime}"),
        }
    }
    eprintln!(
        "figure: {} decided ({deleted} deleted), {before_curator} made before the curator, {:.1} s",
        decided.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A canonical 44-byte PCM header claiming `channels`, `rate` and `bits`, with `data_size` in
/// its data chunk, followed by `data`.
fn wav_bytes(channels: u16, rate: u32, bits: u16, data_size: u32, data: &[u8]) -> Vec<u8> {
    let block_align = u32::from(channels) * u32::from(bits) / 8;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&rate.wrapping_mul(block_align).to_le_bytes());
    out.extend_from_slice(&(block_align as u16).to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_size.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// WAVs with roost's names whose headers lie (0 Hz, 0 channels, more data than the file
/// holds, 64 bits per sample, 1 GHz) and a row whose numbers cannot describe a recording
/// (duration Inf, 0 Hz) are put on a storage while roost is stopped. At the next start the
/// files are quarantined instead of registered, the row is set aside (its analysis failed with
/// DEP_E616, kept as `undescribable`), and the curator goes on analysing and deciding new
/// recordings; no process dies.
#[test]
fn hostile_wav_headers_never_stop_the_curator() {
    let started = Instant::now();
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let detector =
        "  detectors:\n    - {name: birds, kind: bandEnergy, lowHz: 2000, highHz: 5000}\n";
    let yaml = recorder_deployment("hostile", &storage, detector).replace(
        "storage: {path:",
        "storage: {keep: [{every: 1m}], maxAge: 1h, path:",
    );
    std::fs::write(&r.file, &yaml).unwrap();
    let feed = r.start_recording();
    wait_until(&r, "metadata.db", LONG, || {
        storage.join("metadata.db").exists()
    });
    let conn = db(&storage);
    wait_until(&r, "3 files decided", LONG, || {
        count(&conn, "SELECT count(*) FROM roost_keep") >= 3
    });
    assert_eq!(r.stop(), Some(0));
    drop(feed);

    let (first_path, deployment_id): (String, uuid::Uuid) = conn
        .query_row(
            "SELECT path, deployment_id FROM recording WHERE path IS NOT NULL ORDER BY datetime LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let first = roost::storage::start_from_file_name(Path::new(&first_path)).unwrap();
    let recordings = storage.join("recordings");
    let noise: Vec<u8> = (0..1000u32).map(|i| (i * 37 % 251) as u8).collect();
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("0 Hz", wav_bytes(1, 0, 16, 1000, &noise)),
        ("0 channels", wav_bytes(0, 16_000, 16, 1000, &noise)),
        (
            "0x7fffffff bytes of data in a 100-byte file",
            wav_bytes(1, 16_000, 16, 0x7fff_ffff, &noise[..56]),
        ),
        ("64 bits per sample", wav_bytes(1, 16_000, 64, 1000, &noise)),
        ("1e9 Hz", wav_bytes(1, 1_000_000_000, 16, 1000, &noise)),
    ];
    let minute_before = first - SignedDuration::from_mins(1);
    let mut planted = Vec::new();
    for (i, (why, bytes)) in hostile.iter().enumerate() {
        let t = minute_before + SignedDuration::from_millis(i as i64);
        let path = roost::storage::recording_path(&recordings, t);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        planted.push((*why, path));
    }
    assert_eq!(hostile[2].1.len(), 100);
    // A real, small, valid WAV whose row says duration Inf and 0 Hz.
    let described_at = first - SignedDuration::from_mins(2);
    let undescribable = roost::storage::recording_path(&recordings, described_at);
    std::fs::create_dir_all(undescribable.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&undescribable, spec).unwrap();
    for n in 0..8000i32 {
        w.write_sample((n % 64 - 32) as i16).unwrap();
    }
    w.finalize().unwrap();
    let undescribable_id = roost::storage::new_uuid();
    conn.execute(
        "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
         VALUES (?1, ?2, ?3, 1e999, 0, 1, ?4)",
        rusqlite::params![
            undescribable_id,
            undescribable.to_str().unwrap(),
            roost::storage::db_datetime(described_at),
            deployment_id
        ],
    )
    .unwrap();
    let stored: f64 = conn
        .query_row(
            "SELECT duration_s FROM recording WHERE id = ?1",
            [&undescribable_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, f64::INFINITY);
    let last_before = count(&conn, "SELECT max(rowid) FROM recording");

    let _feed = r.start_recording();
    let new_decided = format!(
        "SELECT count(*) FROM roost_keep k JOIN recording r ON r.id = k.recording_id
         WHERE r.rowid > {last_before} AND hex(r.id) != '{}'",
        undescribable_id.simple().to_string().to_uppercase()
    );
    wait_until(
        &r,
        "3 new files decided and the undescribable row set aside",
        LONG,
        || {
            count(&conn, &new_decided) >= 3
                && conn
                    .query_row(
                        "SELECT count(*) FROM roost_keep WHERE recording_id = ?1",
                        [&undescribable_id],
                        |r| r.get::<_, i64>(0),
                    )
                    .unwrap_or(0)
                    == 1
        },
    );
    let s = r.wait_for("curator Running with a report", LONG, |s| {
        component(s, "curator")["status"] == "Running"
            && component(s, "curator")["output"]["storage"]["keptThisRun"].as_u64() >= Some(1)
    });
    let curator_pid = common::pid_of(&s, "curator");
    // Another round or two, and the same curator still there.
    let decided_now = count(&conn, &new_decided);
    wait_until(&r, "2 more files decided", LONG, || {
        count(&conn, &new_decided) >= decided_now + 2
    });
    let s = r.status().unwrap();
    let logs = [
        std::fs::read_to_string(r.path("roost.log")).unwrap_or_default(),
        std::fs::read_to_string(r.state.join("logs/recorder.log")).unwrap_or_default(),
        std::fs::read_to_string(r.state.join("logs/curator.log")).unwrap_or_default(),
    ]
    .join("\n");
    assert_eq!(r.stop(), Some(0));

    // Expected: every hostile file in quarantine/ under its own name, none registered.
    for (why, path) in &planted {
        let name = path.file_name().unwrap();
        assert!(
            !path.exists(),
            "{why}: {} left in recordings/",
            path.display()
        );
        assert!(
            storage.join("quarantine").join(name).is_file(),
            "{why}: {} not in quarantine/",
            path.display()
        );
        let registered = conn
            .query_row(
                "SELECT count(*) FROM recording WHERE path = ?1",
                [path.to_str().unwrap()],
                |r| r.get::<_, i64>(0),
            )
            .unwrap();
        assert_eq!(registered, 0, "{why}: registered");
    }
    // The undescribable row: set aside, kept, its file untouched.
    let (kept_by, path, deleted_by): (Option<String>, Option<String>, Option<String>) = conn
        .query_row(
            "SELECT k.kept_by, r.path, r.deleted_by FROM recording r JOIN roost_keep k ON k.recording_id = r.id WHERE r.id = ?1",
            [&undescribable_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(kept_by.as_deref(), Some("undescribable"));
    assert_eq!(deleted_by, None);
    assert_eq!(path.as_deref(), undescribable.to_str());
    assert!(undescribable.is_file());
    let analyses: Vec<(uuid::Uuid, String, Option<String>)> = conn
        .prepare(
            "SELECT recording_id, outcome, error_code FROM roost_analysis WHERE outcome != 'done'",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        analyses,
        vec![(
            undescribable_id,
            "failed".to_string(),
            Some("DEP_E616".to_string())
        )],
        "only the undescribable row failed its analysis"
    );
    // The curator went on: new recordings decided, no process died or restarted.
    assert!(count(&conn, &new_decided) >= 5);
    for name in ["recorder", "curator"] {
        assert_eq!(component(&s, name)["restartCount"], 0, "{name}: {s:#}");
    }
    assert_eq!(component(&s, "curator")["status"], "Running", "{s:#}");
    assert_eq!(common::pid_of(&s, "curator"), curator_pid, "{s:#}");
    assert_eq!(
        component(&s, "curator")["output"]["error"],
        Value::Null,
        "{s:#}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    eprintln!(
        "figure: hostile_wav_headers_never_stop_the_curator: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
