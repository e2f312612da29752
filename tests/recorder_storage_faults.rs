//! End-to-end tests of the storage faults recorders meet in the field, made real: another
//! program holding metadata.db's write lock, the storage removed with `rm -rf`, metadata.db
//! deleted or replaced, a card not yet mounted, a card that goes read-only, a disk filled by
//! other files. Each test says what must hold: no sample lost, every file registered once the
//! fault is gone, and the report saying what is wrong while it lasts. Figures (time from the
//! fault's end to the next registered file) are printed, never asserted.

mod recorder_common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use recorder_common::{
    KillOnDrop, PacedFeeder, Rig, Tmpfs, frames, have_or_skip, root_or_skip, rows_in_order, signal,
    terminate,
};
use roost::recorder::{RecorderReport, RecorderState};
use serde_json::json;

const LONG: Duration = Duration::from_secs(40);
const RATE: u32 = 16_000;

/// Every frame the device delivered is in a registered file (nothing dropped or skipped).
fn assert_no_sample_lost(rig: &Rig, report: &RecorderReport) {
    assert_eq!(report.samples_dropped, 0, "{report:#?}");
    let recorded: u64 = rig.recordings().iter().map(|f| frames(f)).sum();
    assert_eq!(recorded, report.samples_captured, "{report:#?}");
}

/// Starts the feeder and the recorder on `rig` and waits for two registered files.
fn recording(rig: &Rig) -> (PacedFeeder, KillOnDrop) {
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let child = KillOnDrop(rig.spawn_recorder());
    rig.wait_report("two files", LONG, |r| {
        r.files_written >= 2 && r.rows_owed == 0
    });
    (feeder, child)
}

/// Seconds from `since` until a file completed after it is registered.
/// `rm -rf` as a user runs it again when the recorder recreated something while it walked the
/// tree (ENOTEMPTY): the fault is the storage vanishing, not the race inside rm.
fn rm_rf(path: &std::path::Path) {
    for _ in 0..50 {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    panic!("cannot remove {}", path.display());
}

fn wait_registered_after(rig: &Rig, since: Instant, what: &str) -> f64 {
    let written = rig.report().map_or(0, |r| r.files_written);
    rig.wait_report(what, LONG, |r| {
        r.files_written > written && r.rows_owed == 0 && r.error.is_none()
    });
    since.elapsed().as_secs_f64()
}

/// `sqlite3 DB` holding an exclusive lock until dropped (COMMIT, then exit).
struct Locker(std::process::Child);
impl Locker {
    fn lock(db: &Path) -> Self {
        let mut child = Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"PRAGMA busy_timeout=10000;\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n")
            .unwrap();
        stdin.flush().unwrap();
        let mut out = BufReader::new(child.stdout.as_mut().unwrap());
        let mut line = String::new();
        while line.trim() != "locked" {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "sqlite3 did not lock"
            );
        }
        Self(child)
    }
}
impl Drop for Locker {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.0.stdin.take() {
            let _ = stdin.write_all(b"COMMIT;\n.quit\n");
        }
        let _ = self.0.wait();
    }
}

#[test]
fn a_database_locked_by_another_program_costs_no_audio() {
    if !have_or_skip(
        "sqlite3",
        "a_database_locked_by_another_program_costs_no_audio",
    ) {
        return;
    }
    let rig = Rig::new(RATE, json!({}), json!({}));
    let (feeder, mut child) = recording(&rig);
    let locked_at = Instant::now();
    let locker = Locker::lock(&rig.storage.join("metadata.db"));
    let written = rig.report().unwrap().files_written;
    let owed = rig.wait_report("DEP_E321 while locked", LONG, |r| {
        r.error.as_ref().is_some_and(|e| e.code == "DEP_E321") && r.rows_owed >= 2
    });
    eprintln!(
        "figure: DEP_E321 shown {:.1} s after the lock was taken",
        locked_at.elapsed().as_secs_f64()
    );
    assert!(
        owed.error
            .unwrap()
            .message
            .contains("recordings are in recordings/")
    );
    // WAV files keep arriving while the database is locked: the writer never waits on it.
    rig.wait_report("files while locked", LONG, |r| {
        r.files_written >= written + 5
    });
    assert_eq!(rig.report().unwrap().samples_dropped, 0);
    let released = Instant::now();
    drop(locker);
    let after = wait_registered_after(&rig, released, "rows written after the lock");
    eprintln!("figure: lock released -> next file registered and error cleared in {after:.1} s");
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    let report = rig.report().unwrap();
    assert_eq!(report.error, None);
    assert_no_sample_lost(&rig, &report);
    rig.assert_consistent();
}

#[test]
fn a_storage_removed_while_recording_comes_back_by_itself() {
    let rig = Rig::new(RATE, json!({}), json!({}));
    let (feeder, mut child) = recording(&rig);
    let removed = Instant::now();
    rm_rf(&rig.storage);
    let after = wait_registered_after(&rig, removed, "recording after rm -rf");
    eprintln!("figure: rm -rf of the storage -> next file registered in {after:.1} s");
    // And again, with the database gone alone, then with the folder made by hand.
    rm_rf(&rig.storage);
    std::fs::create_dir_all(&rig.storage).unwrap();
    wait_registered_after(&rig, Instant::now(), "recording after rm -rf; mkdir -p");
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    let report = rig.report().unwrap();
    assert_eq!(report.error, None, "{report:#?}");
    rig.assert_consistent();
}

#[test]
fn a_database_deleted_or_replaced_is_noticed_and_every_file_registered() {
    let rig = Rig::new(RATE, json!({}), json!({}));
    let (feeder, mut child) = recording(&rig);
    let db = rig.storage.join("metadata.db");

    // 1. Deleted (with its -wal and -shm, as `rm metadata.db*` does).
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let t = Instant::now();
    wait_registered_after(&rig, t, "rows after the database was deleted");
    eprintln!(
        "figure: metadata.db deleted -> next file registered in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The report may count a file registered into the deleted database just before the
    // recorder noticed; the new one gets a row for every file on disk soon after.
    // (Files counted first: a file lands in recordings/ before its row is written.)
    let deadline = Instant::now() + LONG;
    let caught_up = || {
        let files = rig.recordings().len();
        (rows_in_order(&rig.storage).len(), files)
    };
    let (mut rows, mut files) = caught_up();
    while rows < files && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        (rows, files) = caught_up();
    }
    assert!(rows >= files && rows > 0, "{rows} rows for {files} files");

    // 2. Another file renamed over it: not a database; set aside, a fresh one made.
    let junk = rig.storage.join("junk");
    std::fs::write(&junk, vec![b'j'; 10_000]).unwrap();
    std::fs::rename(&junk, &db).unwrap();
    let t = Instant::now();
    let report = rig.wait_report("the junk set aside", LONG, |r| {
        r.repair.databases_set_aside.len() == 1 && r.rows_owed == 0 && r.error.is_none()
    });
    eprintln!(
        "figure: metadata.db replaced by junk -> set aside and registered in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let aside = &report.repair.databases_set_aside[0];
    assert_eq!(std::fs::read(aside).unwrap(), vec![b'j'; 10_000]);

    // 3. An older copy of itself restored over it (a backup put back).
    let copy = rig.storage.join("copy.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])
        .unwrap();
    drop(conn);
    rig.wait_report("two more files", LONG, |r| {
        r.files_written >= report.files_written + 2
    });
    std::fs::rename(&copy, &db).unwrap();
    wait_registered_after(&rig, Instant::now(), "rows after a restore");

    // 4. A folder where the database should be (a tool that extracted an archive there).
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::create_dir(&db).unwrap();
    let report = rig.wait_report("the folder set aside", LONG, |r| {
        r.repair.databases_set_aside.len() == 2 && r.rows_owed == 0 && r.error.is_none()
    });
    assert!(report.repair.databases_set_aside[1].is_dir());
    assert!(db.is_file());

    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    let report = rig.report().unwrap();
    assert_eq!(report.error, None, "{report:#?}");
    rig.assert_consistent();
    assert_no_sample_lost(&rig, &report);
}

#[test]
fn a_database_that_cannot_be_opened_at_start_never_stops_capture() {
    let rig = Rig::new(RATE, json!({}), json!({}));
    std::fs::write(
        rig.storage.join("metadata.db"),
        b"not a database, but a note",
    )
    .unwrap();
    // A recording left from before, without a row anywhere.
    let orphan = rig
        .storage
        .join("recordings/2026/01/01/20260101T000000.000000Z.wav");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&orphan, spec).unwrap();
    for i in 0..RATE {
        w.write_sample(i as i16).unwrap();
    }
    w.finalize().unwrap();
    // A preallocated partial file whose header never reached the disk (a crash in its first
    // second): empty, so removed, not quarantined.
    std::fs::create_dir_all(rig.storage.join(".partial")).unwrap();
    let empty = rig
        .storage
        .join(".partial/20260101T000100.000000Z.wav.part");
    std::fs::write(&empty, vec![0u8; 1 << 20]).unwrap();

    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    let report = rig.wait_report("recording with a fresh database", LONG, |r| {
        r.files_written >= 2 && r.rows_owed == 0 && r.error.is_none()
    });
    assert_eq!(report.repair.databases_set_aside.len(), 1, "{report:#?}");
    assert!(report.repair.registered.contains(&orphan), "{report:#?}");
    assert!(report.repair.quarantined.is_empty(), "{report:#?}");
    assert!(!empty.exists());
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    rig.assert_consistent();
}

/// metadata.db of an older roost (layout 6, a week of recordings) is converted to acoupi's
/// layout by the recorder while it records (no audio waits for it), every old row kept; one
/// of a newer roost is left as it is (DEP_E322) while capture goes on and the files are kept.
#[test]
fn an_older_roosts_database_is_converted_while_recording_and_a_newer_ones_left_alone() {
    use roost::storage::schema::{Layout, VERSION, layout};
    let rig = Rig::new(RATE, json!({}), json!({}));
    let shape = roost::archive::ArchiveShape {
        recordings: 10_000,
        ..Default::default()
    };
    roost::archive::build(&rig.storage, &shape, jiff::Timestamp::now()).unwrap();
    roost::archive::as_roost_v6(&rig.storage).unwrap();
    let db = rig.storage.join("metadata.db");
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    let report = rig.wait_report("recording, rows after the conversion", LONG, |r| {
        r.files_written >= 3 && r.rows_owed == 0 && r.error.is_none()
    });
    assert_eq!(report.samples_dropped, 0, "{report:#?}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(layout(&conn).unwrap(), Layout::Roost(VERSION));
    let old: i64 = conn
        .query_row("SELECT count(*) FROM recording WHERE deployment_id = (SELECT id FROM deployment WHERE name = 'archive')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(old, 10_000, "every old row");
    drop(conn);
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    rig.assert_consistent();

    // A newer roost's database: refused untouched, the recorder records on.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("UPDATE roost_schema SET version = 99", [])
        .unwrap();
    let rows_before: i64 = conn
        .query_row("SELECT count(*) FROM recording", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    let on_disk = rig.recordings().len();
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    let report = rig.wait_report(
        "a newer roost's database refused, files written",
        LONG,
        |r| r.files_written >= 2 && r.error.as_ref().is_some_and(|e| e.code == "DEP_E322"),
    );
    assert!(report.rows_owed >= 1, "{report:#?}");
    assert_eq!(report.samples_dropped, 0, "{report:#?}");
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (version, rows): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT version FROM roost_schema), (SELECT count(*) FROM recording)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, rows), (99, rows_before), "not rewritten");
    assert!(
        rig.recordings().len() >= on_disk + 2,
        "the new files are kept"
    );
}

/// Runs `sh -c script`, panicking with its output on failure.
fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `requireMount` as people lay out cards: the storage the card's mount point itself, or a
/// folder on the card (`/media/card/roost`): nothing is written (not even the folder) until a
/// disk is mounted there or above it, and the error says what it waits for.
#[test]
fn a_card_not_yet_mounted_is_not_written_until_it_is() {
    if !root_or_skip("a_card_not_yet_mounted_is_not_written_until_it_is") {
        return;
    }
    for folder_on_card in [false, true] {
        card_mounted_later(folder_on_card);
    }
}

fn card_mounted_later(folder_on_card: bool) {
    let mut rig = Rig::new(RATE, json!({}), json!({"requireMount": true}));
    let card_at = rig.storage.clone();
    if folder_on_card {
        rig.storage = card_at.join("roost");
        rig.write_config(json!({}), json!({"requireMount": true}));
    }
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    let report = rig.wait_report("not mounted", LONG, |r| {
        r.state == RecorderState::StorageError
            && r.error.as_ref().is_some_and(|e| e.code == "DEP_E301")
    });
    let message = report.error.unwrap().message;
    assert!(
        message.contains("not mounted")
            && message.contains(&format!(
                "waiting for a disk mounted at {} or at a folder above it",
                rig.storage.display()
            )),
        "{message}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let inside: Vec<_> = std::fs::read_dir(&card_at).unwrap().collect();
    assert!(
        inside.is_empty(),
        "nothing is written on the root file system: {inside:?}"
    );
    let mounted = Instant::now();
    let card = Tmpfs::mount(&card_at, "64m").expect("mount a tmpfs");
    let after = wait_registered_after(&rig, mounted, "recording once mounted");
    eprintln!("figure: card mounted -> first file registered in {after:.1} s");
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    rig.assert_consistent();
    // What could not be written while the card was missing is counted, not hidden: every
    // captured frame is in a file or in samplesDiscarded.
    let report = rig.report().unwrap();
    let recorded: u64 = rig.recordings().iter().map(|f| frames(f)).sum();
    assert!(report.samples_discarded > 0, "{report:#?}");
    assert_eq!(
        recorded + report.samples_discarded + report.samples_dropped,
        report.samples_captured,
        "{report:#?}"
    );
    drop(card);
}

/// An ext4 image on a loop device, mounted with errors=remount-ro.
struct Card {
    image: PathBuf,
    at: PathBuf,
}
impl Card {
    fn mount(image: &Path, at: &Path) -> Self {
        sh(&format!(
            "truncate -s 64M {0} && mkfs.ext4 -q -F {0} && mount -o loop,errors=remount-ro {0} {1}",
            image.display(),
            at.display()
        ));
        Self {
            image: image.to_path_buf(),
            at: at.to_path_buf(),
        }
    }
    fn fail(&self) {
        let dev = sh(&format!("findmnt -no SOURCE {}", self.at.display()));
        let name = Path::new(&dev)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1").unwrap();
    }
    /// The operator's cycle after an emergency read-only remount.
    fn repair_and_remount(&self) {
        sh(&format!("umount -l {}", self.at.display()));
        let _ = Command::new("e2fsck")
            .args(["-fy"])
            .arg(&self.image)
            .output();
        sh(&format!(
            "mount -o loop,errors=remount-ro {} {}",
            self.image.display(),
            self.at.display()
        ));
    }
}
impl Drop for Card {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

#[test]
fn a_card_that_went_read_only_and_came_back_gets_files_and_rows_again() {
    if !root_or_skip("a_card_that_went_read_only_and_came_back_gets_files_and_rows_again")
        || !have_or_skip(
            "mkfs.ext4",
            "a_card_that_went_read_only_and_came_back_gets_files_and_rows_again",
        )
    {
        return;
    }
    let rig = Rig::new(RATE, json!({}), json!({}));
    let card = Card::mount(&rig.dir.path().join("card.img"), &rig.storage);
    let (feeder, mut child) = recording(&rig);
    card.fail();
    let report = rig.wait_report("the read-only card reported", LONG, |r| {
        r.error
            .as_ref()
            .is_some_and(|e| e.code == "DEP_E301" || e.code == "DEP_E321")
    });
    assert_ne!(report.state, RecorderState::Recording, "{report:#?}");
    // The operator comes by later; by then roost holds nothing open on the card.
    std::thread::sleep(Duration::from_secs(1));
    let back = Instant::now();
    card.repair_and_remount();
    let after = wait_registered_after(&rig, back, "files and rows on the remounted card");
    eprintln!("figure: card remounted read-write -> next file registered in {after:.1} s");
    wait_registered_after(&rig, Instant::now(), "and the one after");
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    let partial: Vec<_> = std::fs::read_dir(rig.storage.join(".partial"))
        .unwrap()
        .collect();
    assert!(partial.is_empty(), "{partial:?}\n{}", rig.log());
    rig.assert_consistent();
    drop(card);
}

#[test]
fn delete_oldest_deletes_what_helps_names_it_and_nothing_when_it_cannot_help() {
    if !root_or_skip("delete_oldest_deletes_what_helps_names_it_and_nothing_when_it_cannot_help") {
        return;
    }
    let rig = Rig::new(RATE, json!({}), json!({}));
    let _card = Tmpfs::mount(&rig.storage, "64m").expect("mount a tmpfs");
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    rig.wait_report("eight files", LONG, |r| {
        r.files_written >= 8 && r.rows_owed == 0
    });
    assert!(terminate(&mut child.0).success());
    let old = rig.recordings();
    let file_bytes = 32 * 1024; // 1 s at 16 kHz, i16, in whole pages
    let free = roost::storage::free_bytes(&rig.storage).unwrap();

    // minFreeSpace two files above what is free: the oldest few go, by name, oldest first,
    // and recording goes on (metadata.db's log grows too, so a few more go as files arrive).
    let min = free + 2 * file_bytes;
    rig.write_config(
        json!({}),
        json!({"minFreeSpace": format!("{min}B"), "onLowSpace": "deleteOldest"}),
    );
    let mut child = KillOnDrop(rig.spawn_recorder());
    let report = rig.wait_report("deletions", LONG, |r| {
        r.files_deleted >= 3 && r.files_written >= 1 && r.state == RecorderState::Recording
    });
    assert_eq!(report.error, None, "deleting keeps recording: {report:#?}");
    let warning = report
        .warnings
        .iter()
        .find(|w| w.code == "DEP_E304")
        .expect("a warning names the deletions");
    assert!(
        warning.message.contains("deleteOldest deleted"),
        "{warning:?}"
    );
    assert_eq!(
        report.recently_deleted[..3],
        old[..3],
        "oldest first, by name"
    );
    assert!(old[..3].iter().all(|f| !f.exists()));
    assert!(terminate(&mut child.0).success());
    assert!(rig.log().contains("deleted the oldest recording"));
    rig.assert_consistent();

    // A foreign file fills the disk: deleting every recording would not free enough, so
    // nothing is deleted and DEP_E302 says so; removing the file lets recording resume.
    let kept = rig.recordings();
    let foreign = rig.storage.join("foreign.bin");
    let free_mib = roost::storage::free_bytes(&rig.storage).unwrap() >> 20;
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", &format!("count={}", free_mib - 2)])
        .arg(format!("of={}", foreign.display()))
        .stderr(Stdio::null())
        .status();
    rig.write_config(
        json!({}),
        json!({"minFreeSpace": "4MiB", "onLowSpace": "deleteOldest"}),
    );
    let mut child = KillOnDrop(rig.spawn_recorder());
    let low = rig.wait_report("low, nothing deleted", LONG, |r| {
        r.state == RecorderState::LowSpace && r.pid == child.0.id()
    });
    assert!(low.error.unwrap().message.contains("held by other files"));
    std::thread::sleep(Duration::from_secs(2));
    let still = rig.recordings();
    assert!(kept.iter().all(|f| still.contains(f)), "nothing deleted");
    assert_eq!(rig.report().unwrap().files_deleted, 0);
    let freed = Instant::now();
    std::fs::remove_file(&foreign).unwrap();
    let after = wait_registered_after(&rig, freed, "recording once the space is back");
    eprintln!("figure: foreign file removed -> next file registered in {after:.1} s");
    assert!(terminate(&mut child.0).success());
    drop(feeder);
    rig.assert_consistent();
}

#[test]
fn a_file_that_cannot_be_moved_into_recordings_is_reported_kept_and_moved_later() {
    let rig = Rig::new(RATE, json!({}), json!({}));
    let (feeder, mut child) = recording(&rig);
    // Today's folder cannot be made: a file stands where it should be (as a damaged folder, a
    // read-only parent or an immutable day folder would).
    let today = rig.recordings()[0].parent().unwrap().to_path_buf();
    let aside = today.with_extension("moved");
    std::fs::rename(&today, &aside).unwrap();
    std::fs::write(&today, b"in the way").unwrap();
    let blocked = rig.wait_report("DEP_E301 while files cannot be placed", LONG, |r| {
        r.error.as_ref().is_some_and(|e| e.code == "DEP_E301")
    });
    assert!(
        blocked
            .error
            .unwrap()
            .message
            .contains("cannot be moved into recordings/")
    );
    std::thread::sleep(Duration::from_secs(3));
    let kept = std::fs::read_dir(rig.storage.join(".partial"))
        .unwrap()
        .count();
    assert!(kept >= 2, "finished files are kept in .partial/: {kept}");
    // The way is clear again: every kept file is moved and registered, no one needed.
    let cleared = Instant::now();
    std::fs::remove_file(&today).unwrap();
    std::fs::rename(&aside, &today).unwrap();
    let after = wait_registered_after(&rig, cleared, "kept files moved");
    eprintln!("figure: folder usable again -> kept files moved and registered in {after:.1} s");
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    let report = rig.report().unwrap();
    assert_eq!(report.error, None, "{report:#?}");
    rig.assert_consistent();
    assert_no_sample_lost(&rig, &report);
    // Said once per fault, not once per file per second.
    let lines = rig
        .log()
        .matches("cannot move a finished recording")
        .count();
    assert!(lines <= 2, "{lines} log lines");
}

#[test]
fn a_storage_swapped_under_its_link_keeps_the_file_being_written() {
    let rig = Rig::new(RATE, json!({}), json!({}));
    let (a, b) = (rig.dir.path().join("A"), rig.dir.path().join("B"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let link = rig.dir.path().join("card");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    rig.write_config(json!({"duration": "2s"}), json!({"path": link}));
    let (feeder, mut child) = recording(&rig);
    let swap = rig.dir.path().join("card.new");
    std::os::unix::fs::symlink(&b, &swap).unwrap();
    std::fs::rename(&swap, &link).unwrap();
    let written = rig.report().unwrap().files_written;
    rig.wait_report("files in B", LONG, |r| {
        r.files_written >= written + 2 && r.rows_owed == 0 && r.error.is_none()
    });
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    // The file being written at the swap was finished and moved, not left behind in A.
    let left: Vec<_> = std::fs::read_dir(a.join(".partial")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let report = rig.report().unwrap();
    let in_b = rows_in_order(&b).len() as u64;
    let in_a = rows_in_order(&a).len() as u64;
    assert!(in_b >= 2, "B has its rows");
    assert_eq!(
        in_a + in_b,
        report.files_written,
        "every file has one row somewhere"
    );
}

/// A card that keeps only what reached it: an ext4 image on a loop device with direct I/O (so
/// nothing of the card waits in the host's page cache), whose backing file copied at an instant
/// is what the card holds if the power goes then.
struct DirectCard {
    image: PathBuf,
    loop_dev: String,
    at: PathBuf,
}
impl DirectCard {
    fn mount(image: &Path, at: &Path) -> Self {
        let loop_dev = sh(&format!(
            "truncate -s 64M {0} && mkfs.ext4 -q -F {0} && losetup --direct-io=on --find --show {0}",
            image.display()
        ));
        sh(&format!("mount {loop_dev} {}", at.display()));
        Self {
            image: image.to_path_buf(),
            loop_dev,
            at: at.to_path_buf(),
        }
    }
    /// The power goes: a copy of what the card holds now, mounted (its journal replayed) at `at`.
    fn cut_power(&self, at: &Path) -> Mounted {
        let copy = self.image.with_extension("after-cut.img");
        sh(&format!(
            "cp --sparse=always {} {} && mkdir -p {2} && mount -o loop {1} {2}",
            self.image.display(),
            copy.display(),
            at.display()
        ));
        Mounted(at.to_path_buf())
    }
}
impl Drop for DirectCard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_dev])
            .status();
    }
}
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Seconds of audio a power cut `kill_after` seconds into a file costs with `syncInterval`
/// `interval` seconds (files of 30 s, 16 kHz mono i16).
fn audio_lost_to_a_power_cut(interval: u64, kill_after: Duration) -> f64 {
    let rig = Rig::new(
        RATE,
        json!({"duration": "30s", "syncInterval": format!("{interval}s")}),
        json!({}),
    );
    let card = DirectCard::mount(&rig.dir.path().join("card.img"), &rig.storage);
    let feeder = PacedFeeder::start(&rig.fifo, RATE, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    let first = rig.wait_report("one file", Duration::from_secs(60), |r| {
        r.files_written >= 1
    });
    let file_start = first.last_file_at.unwrap();
    let since = jiff::Timestamp::now()
        .duration_since(file_start)
        .unsigned_abs();
    std::thread::sleep(kill_after.saturating_sub(since));
    signal(&child.0, nix::sys::signal::Signal::SIGKILL);
    let killed_at = jiff::Timestamp::now();
    let after = card.cut_power(&rig.dir.path().join("after-cut"));
    let _ = child.0.wait();
    drop(feeder);
    let part = std::fs::read_dir(after.0.join(".partial"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "part"))
        .expect("the file being written survives the cut by name");
    let bytes = std::fs::read(&part).unwrap();
    let frames = (bytes.len().saturating_sub(44) / 2) as u64;
    // Ordered data: the size never runs ahead of the audio (no zeros where audio was).
    let tail = &bytes[bytes.len().saturating_sub(2000)..];
    assert!(
        frames == 0 || tail.iter().any(|b| *b != 0),
        "the durable end is audio"
    );
    let recorded_for = killed_at.duration_since(file_start).as_secs_f64();
    recorded_for - frames as f64 / f64::from(RATE)
}

/// A real power cut (the card's contents at the instant of a kill -9, its journal replayed)
/// costs at most `syncInterval` of audio, plus the writer's 0.5 s batch and a second of slack
/// for a loaded machine, in both ways of flushing: `2s` (shorter than ext4's 5 s commit:
/// fdatasync) and `8s` (write-back every 3 s, the new size carried by ext4's own commit).
#[test]
fn a_real_power_cut_costs_at_most_the_sync_interval() {
    if !root_or_skip("a_real_power_cut_costs_at_most_the_sync_interval") {
        return;
    }
    let cases = [
        (2, Duration::from_millis(7300)),
        (8, Duration::from_millis(15500)),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(interval, at)| {
            std::thread::spawn(move || (interval, audio_lost_to_a_power_cut(interval, at)))
        })
        .collect();
    for run in runs {
        let (interval, lost) = run.join().unwrap();
        eprintln!("figure: a power cut with syncInterval {interval} s lost {lost:.2} s of audio");
        assert!(
            lost <= interval as f64 + 1.5,
            "syncInterval {interval} s: lost {lost:.2} s"
        );
    }
}
