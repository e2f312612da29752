//! An older roost's metadata.db (layout 6) converted to acoupi 0.8.0's layout by a real
//! `roost curate` process killed with SIGKILL at moments spread over the conversion: after
//! each kill the file is either exactly as it was or fully converted, never in between, and
//! the run that finishes leaves every row of the original archive (same ids, rowids, times,
//! deletions, decisions, analyses).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roost::archive::{ArchiveShape, as_roost_v6, build, curate_config};
use roost::storage::schema::{Layout, layout};

/// The rows that matter of acoupi's tables and roost's bookkeeping, as text; the detections
/// of file-level tags by their model output (their ids are made by the conversion).
fn dump(db: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let v7 = layout(&conn).unwrap() == Layout::Roost(roost::storage::schema::VERSION);
    let id = |c: &str| {
        if v7 {
            format!("lower(hex({c}))")
        } else {
            format!("replace({c}, '-', '')")
        }
    };
    let time = |c: &str| {
        if v7 {
            c.to_string()
        } else {
            // An older roost's `YYYY-MM-DD HH:MM:SS.ffffff`, compared in acoupi's text.
            format!("replace(replace({c}, ' ', 'T'), '.000000', '') || '+00:00'")
        }
    };
    let queries = [
        format!(
            "SELECT rowid, {}, path, {}, duration_s, deleted_by FROM recording ORDER BY rowid",
            id("id"),
            time("datetime")
        ),
        format!(
            "SELECT rowid, {}, model_name, {} FROM model_output ORDER BY rowid",
            id("id"),
            id("recording_id")
        ),
        format!(
            "SELECT {}, recording_id IS NOT NULL, outcome FROM roost_analysis ORDER BY rowid",
            id("recording_id")
        ),
        format!(
            "SELECT {}, kept_by FROM roost_keep ORDER BY rowid",
            id("recording_id")
        ),
        "SELECT recordings, bytes FROM roost_tally".to_string(),
        "SELECT count(*) FROM predicted_tag".to_string(),
    ];
    let mut out = Vec::new();
    for sql in queries {
        out.extend(roost::archive::rows_as_text(&conn, &sql).unwrap());
    }
    out
}

fn layout_of(db: &Path) -> Layout {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    layout(&conn).unwrap()
}

#[test]
fn a_conversion_killed_at_any_moment_leaves_the_old_file_or_the_whole_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let shape = ArchiveShape {
        recordings: 8000,
        ..ArchiveShape::default()
    };
    build(&storage, &shape, jiff::Timestamp::now()).unwrap();
    let db = storage.join("metadata.db");
    let original = dump(&db);
    as_roost_v6(&storage).unwrap();
    let old = dump(&db);
    assert_eq!(old, original, "layout 6 holds the same rows");
    let config = curate_config(dir.path(), "[{every: 10m}]", "100GiB").unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    roost::component::ConfigFile::write(&config, &state).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_roost"))
            .args(["curate", "--config"])
            .arg(<roost::curate::CurateConfig as roost::component::ConfigFile>::path(&state))
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Kill instants from 2 ms to 3 s (the conversion of 8,000 recordings takes about one
    // second in a debug build), each with a jitter of its own.
    let mut seed = jiff::Timestamp::now().subsec_nanosecond() as u64 | 1;
    let mut kills = Vec::new();
    for base_ms in [
        2u64, 10, 25, 50, 100, 150, 200, 300, 400, 500, 650, 800, 1000, 1500,
    ] {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = Duration::from_millis(base_ms + (seed >> 33) % (base_ms + 1));
        let mut child = run();
        std::thread::sleep(at);
        child.kill().unwrap();
        child.wait().unwrap();
        let now = layout_of(&db);
        kills.push(format!("{at:?}: {now:?}"));
        match now {
            Layout::Roost(6) => assert_eq!(dump(&db), old, "killed at {at:?}: untouched"),
            Layout::Roost(7) => {
                assert_eq!(dump(&db), original, "killed at {at:?}: whole");
                break;
            }
            other => panic!("killed at {at:?}: {other:?}"),
        }
    }
    eprintln!("kills: {kills:?}");
    // Until done: a run left alone converts it.
    let mut child = run();
    let t = Instant::now();
    while layout_of(&db) != Layout::Roost(7) {
        assert!(t.elapsed() < Duration::from_secs(120), "not converted");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(dump(&db), original);
}
