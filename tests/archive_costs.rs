//! Costs that must not grow with the archive (issue 22), counted, never timed: the SQLite VM
//! steps (thousands) of the curator's rounds on archives of 2,000 and 20,000 recordings built
//! by `roost::archive` (the benchmark's builder, at a test's scale), and what the figures of
//! the report say against a count made the slow way.

use std::path::Path;

use roost::archive::{ArchiveShape, build, wav_bytes};
use roost::curate::config::CurateConfig;
use roost::curate::run::Curator;
use roost::storage::Storage;

fn config(dir: &Path) -> CurateConfig {
    roost::archive::curate_config(dir, "[{every: 10m}]", "100GiB").unwrap()
}

/// A curator on an archive of `n` recordings after its first round, and the storage.
fn archive(dir: &Path, n: u64) -> (Curator, Storage, uuid::Uuid) {
    archive_of(dir, n, true)
}

fn archive_of(dir: &Path, n: u64, decided: bool) -> (Curator, Storage, uuid::Uuid) {
    let shape = ArchiveShape {
        recordings: n,
        decided,
        ..ArchiveShape::default()
    };
    build(&dir.join("storage"), &shape, jiff::Timestamp::now()).unwrap();
    let config = config(dir);
    let mut curator = Curator::new(config.clone(), dir);
    curator.round_now();
    let mut storage = Storage::open(&config.storage_path(), &config.storage).unwrap();
    let deployment = storage
        .start_deployment("archive", None, jiff::Timestamp::now())
        .unwrap();
    (curator, storage, deployment)
}

/// One new recording, as the recorder registers it.
fn arrive(storage: &mut Storage, deployment: &uuid::Uuid) {
    roost::archive::arrive(storage, deployment, jiff::Timestamp::now()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
}

/// VM steps (thousands) of a round after one new file (the most of 5), and of a round with
/// nothing new.
fn work(n: u64) -> (u64, u64, Curator) {
    let dir = tempfile::tempdir().unwrap();
    let (mut curator, mut storage, deployment) = archive(dir.path(), n);
    let mut most = 0;
    for _ in 0..5 {
        arrive(&mut storage, &deployment);
        let before = curator.vm_steps();
        curator.round_now();
        most = most.max(curator.vm_steps() - before);
    }
    let before = curator.vm_steps();
    curator.round_now();
    let idle = curator.vm_steps() - before;
    (most, idle, curator)
}

/// What one of the archive's files occupies on this file system.
fn one_file_bytes() -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.wav");
    std::fs::write(&f, wav_bytes(400)).unwrap();
    roost::storage::disk_bytes(&f)
}

#[test]
fn the_curators_work_per_new_file_does_not_grow_with_the_archive() {
    let (small, small_idle, c_small) = work(2_000);
    let (large, large_idle, c_large) = work(20_000);
    eprintln!(
        "VM kilo-steps per new file: {small} at 2,000, {large} at 20,000; idle {small_idle} / {large_idle}"
    );
    // Ten times the archive: the same work within a few thousand steps (an index one level
    // deeper), never ten times as much (before issue 22: 5.9x).
    assert!(large <= small + small / 4 + 3, "{small} -> {large}");
    assert!(
        large_idle <= small_idle + small_idle / 4 + 3,
        "{small_idle} -> {large_idle}"
    );
    // The figures come from the tallies and agree with the archives: the five new files
    // were judged (kept by `every: 10m` or deleted, having no detection), the rest stayed.
    for (c, n) in [(&c_small, 2_000), (&c_large, 20_000)] {
        let s = &c.report().storage;
        assert_eq!(s.kept_this_run + s.deleted_this_run, 5);
        assert_eq!(s.recordings, n + s.kept_this_run);
        assert_eq!(s.bytes_used, s.recordings * one_file_bytes());
    }
}

/// VM steps (thousands) per recording of the first pass of keep rules new to an archive of
/// `n` recordings, and the recordings decided.
fn first_pass(n: u64) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (curator, _, _) = archive_of(dir.path(), n, false);
    let s = &curator.report().storage;
    (
        curator.vm_steps() as f64 / n as f64,
        s.kept_this_run + s.deleted_this_run,
    )
}

#[test]
fn keep_rules_new_to_an_archive_decide_it_in_one_linear_pass() {
    let (small, decided_small) = first_pass(2_000);
    let (large, decided_large) = first_pass(20_000);
    eprintln!("first pass: {small:.3} kilo-steps per recording at 2,000, {large:.3} at 20,000");
    // Every recording decided in the first round (none waits: all were analysed) ...
    assert_eq!((decided_small, decided_large), (2_000, 20_000));
    // ... at the same cost per recording (before issue 22 each batch skipped again every
    // recording decided before it: quadratic).
    assert!(large <= small * 1.25 + 0.05, "{small} -> {large}");
}

#[test]
fn figures_follow_deletions_made_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let (mut curator, storage, _) = archive(dir.path(), 500);
    let ids: Vec<uuid::Uuid> = storage
        .connection()
        .prepare("SELECT id FROM recording ORDER BY rowid LIMIT 30")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // The recorder's deleteOldest and the start-up repair mark rows in their own process.
    for id in &ids[..20] {
        storage
            .mark_deleted(id, "onLowSpace", jiff::Timestamp::now())
            .unwrap();
    }
    for id in &ids[20..] {
        storage
            .mark_deleted(id, "missing", jiff::Timestamp::now())
            .unwrap();
    }
    // Marking a row twice counts once.
    storage
        .mark_deleted(&ids[0], "missing", jiff::Timestamp::now())
        .unwrap();
    curator.round_now();
    let s = &curator.report().storage;
    assert_eq!(s.recordings, 470);
    assert_eq!(s.bytes_used, 470 * one_file_bytes());
    assert_eq!(s.deleted_by_rule.get("onLowSpace"), Some(&20));
    assert_eq!(s.deleted_by_rule.get("missing"), Some(&10));
    assert_eq!(s.clock_disagrees, 0);
}

/// metadata.db back at schema 4 (before the tallies), as an older roost left it.
fn back_to_schema_4(conn: &rusqlite::Connection) {
    conn.execute_batch(
        "DROP TRIGGER roost_tally_registered; DROP TRIGGER roost_tally_gone;
         DROP TRIGGER roost_tally_back; DROP TRIGGER roost_tally_removed;
         DROP TRIGGER roost_tally_stamped; DROP TRIGGER roost_tally_sized;
         DROP TRIGGER roost_count_deleted; DROP TRIGGER roost_outcome_new;
         DROP TRIGGER roost_outcome_changed;
         DROP TABLE roost_tally; DROP TABLE roost_deleted; DROP TABLE roost_outcomes;
         DROP INDEX roost_age_made; DROP INDEX roost_age_skew; DROP INDEX roost_age_unsized;
         ALTER TABLE roost_age DROP COLUMN bytes; ALTER TABLE roost_age DROP COLUMN skew_s;
         DROP TABLE roost_schema; DROP TABLE roost_unlink; PRAGMA user_version = 4;",
    )
    .unwrap();
}

/// A database in acoupi's layout whose roost tables are partly an older roost's (figures,
/// sizes, skews and the unlink list missing): opening completes it, counting what is there;
/// the curator sizes the recordings it stamped before, and from then on every writer's
/// change is followed, upserts included (a retried analysis given up, then a deletion marked
/// twice, a row removed).
#[test]
fn an_older_database_gets_its_tallies_and_every_writer_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let (curator, storage, _) = archive(dir.path(), 300);
    drop(curator);
    let conn = storage.connection();
    // Some history under the old schema: 10 files gone, one analysis given up.
    let ids: Vec<uuid::Uuid> = conn
        .prepare("SELECT id FROM recording ORDER BY rowid LIMIT 12")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    back_to_schema_4(conn);
    for id in &ids[..10] {
        storage
            .mark_deleted(id, "maxAge", jiff::Timestamp::now())
            .unwrap();
    }
    conn.execute(
        "UPDATE roost_analysis SET outcome = 'failed' WHERE recording_id = ?1",
        [&ids[10]],
    )
    .unwrap();
    drop(storage);
    let config = config(dir.path());
    let storage = Storage::open(&config.storage_path(), &config.storage).unwrap();
    let conn = storage.connection();
    let tally = |c: &rusqlite::Connection| roost::curate::db::tally(c).unwrap();
    assert_eq!(tally(conn), (290, 0), "counted; not sized yet");
    let mut curator = Curator::new(config.clone(), dir.path());
    curator.round_now();
    assert_eq!(
        tally(conn),
        (290, 290 * one_file_bytes()),
        "sized by the curator"
    );
    assert_eq!(roost::curate::db::outcomes(conn, "band").unwrap(), (299, 1));
    // Upserts: a retry, then given up, on a new row; the findings of another after a retry.
    let now = jiff::Timestamp::now();
    for outcome_give_up in [false, true] {
        roost::curate::db::record_failure(
            conn,
            &ids[11],
            "other",
            "DEP_E602",
            "x",
            outcome_give_up,
            now,
        )
        .unwrap();
    }
    assert_eq!(roost::curate::db::outcomes(conn, "other").unwrap(), (0, 1));
    // Marked twice (the second is no change), a row removed by another program.
    storage.mark_deleted(&ids[11], "keep", now).unwrap();
    storage.mark_deleted(&ids[11], "missing", now).unwrap();
    conn.execute("DELETE FROM roost_analysis WHERE recording_id = (SELECT id FROM recording WHERE rowid = 20)", []).unwrap();
    conn.execute(
        "DELETE FROM roost_keep WHERE recording_id = (SELECT id FROM recording WHERE rowid = 20)",
        [],
    )
    .unwrap();
    conn.execute(
        "DELETE FROM roost_age WHERE recording_id = (SELECT id FROM recording WHERE rowid = 20)",
        [],
    )
    .unwrap();
    conn.execute(
        "DELETE FROM model_output WHERE recording_id = (SELECT id FROM recording WHERE rowid = 20)",
        [],
    )
    .unwrap();
    assert_eq!(
        conn.execute("DELETE FROM recording WHERE rowid = 20", [])
            .unwrap(),
        1
    );
    let expected = 290 - 2;
    assert_eq!(tally(conn).0, expected);
    curator.round_now();
    let s = &curator.report().storage;
    assert_eq!(s.recordings, expected);
    assert_eq!(s.deleted_by_rule.get("maxAge"), Some(&10));
    assert_eq!(s.deleted_by_rule.get("keep"), Some(&1));
    assert_eq!(s.deleted_by_rule.get("missing"), None);
}

/// `maxUsage` over a storage whose oldest recordings are protected, more of them than a round
/// looks past: the younger recordings that may go still go, round after round.
#[test]
fn max_usage_past_many_protected_recordings_still_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let shape = ArchiveShape {
        recordings: 6_000,
        ..ArchiveShape::default()
    };
    build(&dir.path().join("storage"), &shape, jiff::Timestamp::now()).unwrap();
    {
        let conn =
            rusqlite::Connection::open(dir.path().join("storage").join("metadata.db")).unwrap();
        conn.execute("UPDATE recording SET protected = 1 WHERE rowid <= 5000", [])
            .unwrap();
    }
    let config = roost::archive::curate_config(dir.path(), "[{every: 10m}]", "1MiB").unwrap();
    let mut curator = Curator::new(config, dir.path());
    for _ in 0..3 {
        curator.round_now();
    }
    let conn = rusqlite::Connection::open(dir.path().join("storage").join("metadata.db")).unwrap();
    let (deleted, protected_gone): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(protected), 0) FROM recording WHERE deleted_by = 'maxUsage'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(protected_gone, 0, "no protected recording goes");
    assert_eq!(
        deleted, 1_000,
        "every recording that may go goes: usage is over the limit"
    );
}

/// The same with the oldest recordings protected by `<file>.keep` markers beside them (the
/// row says nothing): a round looks past at most 4,096 of them, the next goes on from there,
/// and the recordings that may go still go.
#[test]
fn max_usage_past_many_keep_markers_goes_on_where_the_last_round_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let shape = ArchiveShape {
        recordings: 6_000,
        ..ArchiveShape::default()
    };
    let files = build(&dir.path().join("storage"), &shape, jiff::Timestamp::now()).unwrap();
    for f in &files[..5_000] {
        std::fs::write(roost::storage::keep_marker(f), b"").unwrap();
    }
    let config = roost::archive::curate_config(dir.path(), "[{every: 10m}]", "1MiB").unwrap();
    let mut curator = Curator::new(config, dir.path());
    curator.round_now();
    let gone = || files.iter().filter(|f| !f.exists()).count();
    assert_eq!(
        gone(),
        0,
        "the first round looked past 4,096 protected files only"
    );
    curator.round_now();
    assert_eq!(gone(), 1_000, "the second went on from there");
    assert!(
        files[..5_000].iter().all(|f| f.exists()),
        "no protected file goes"
    );
    curator.round_now();
    assert_eq!(gone(), 1_000);
}
