//! Power cuts at random instants while the curator deletes most recordings right after their
//! analysis (RECIPES §7 "Power cut, atomically"): the card is an ext4 image on an XFS file
//! system, attached with direct I/O, so that `cp --reflink=always` takes an atomic clone of what
//! the card held at that instant, while roost, its recorder and its curator keep running. Each
//! clone is then mounted where the card was (ext4 replays its journal, as at the next boot),
//! checked, repaired by a real `roost record` start-up, and checked again.

mod common;
mod recorder_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Roost, component, recorder_deployment};
use recorder_common::{KillOnDrop, have_or_skip, root_or_skip, terminate};

const TEST: &str =
    "a_power_cut_at_any_instant_loses_no_row_finding_or_decision_of_a_deleted_recording";
const DETECTOR: &str = "birds";
const CUTS: usize = 4;

/// Runs a command that must succeed; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An image attached to a loop device and mounted; unmounted and detached on drop (also when
/// the test fails), once.
struct Attached {
    device: String,
    mount_point: PathBuf,
    released: bool,
}

impl Attached {
    fn mount(image: &Path, at: &Path, direct_io: bool) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let mut losetup = Command::new("losetup");
        losetup.args(["--find", "--show"]);
        if direct_io {
            losetup.arg("--direct-io=on");
        }
        let device = run(losetup.arg(image));
        let mut attached = Self {
            device,
            mount_point: at.to_path_buf(),
            released: false,
        };
        if direct_io {
            let name = attached.device.trim_start_matches("/dev/");
            let dio =
                std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap_or_default();
            assert_eq!(
                dio.trim(),
                "1",
                "{} is not in direct I/O mode",
                attached.device
            );
        }
        let mounted = Command::new("mount")
            .arg(&attached.device)
            .arg(at)
            .output()
            .unwrap();
        if !mounted.status.success() {
            attached.mount_point = PathBuf::new();
            panic!(
                "mount {} ({}) on {}: {}",
                attached.device,
                image.display(),
                at.display(),
                String::from_utf8_lossy(&mounted.stderr)
            );
        }
        attached
    }

    /// Unmounts (retrying while a process that just exited still holds it, lazily at last)
    /// and detaches the loop device.
    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        if !self.mount_point.as_os_str().is_empty() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let ok = Command::new("umount")
                    .arg(&self.mount_point)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("{TEST}: {} busy: lazy unmount", self.mount_point.display());
                    let _ = Command::new("umount")
                        .arg("-l")
                        .arg(&self.mount_point)
                        .status();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.release();
    }
}

/// Folders under /run/roost the roosts of this test made for their `run/` links (tmpfs),
/// removed at the end.
struct RunFolders(Vec<PathBuf>);

impl Drop for RunFolders {
    fn drop(&mut self) {
        for folder in &self.0 {
            let _ = std::fs::remove_dir_all(folder);
        }
    }
}

/// A small xorshift, seeded from the clock (or `ROOST_TEST_SEED` to replay a run).
struct Random(u64);

impl Random {
    fn new() -> Self {
        let seed = std::env::var("ROOST_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{TEST}: seed {seed} (ROOST_TEST_SEED={seed} replays the same instants)");
        Self(seed)
    }

    /// A duration drawn uniformly between `from` and `to` seconds, in milliseconds.
    fn between(&mut self, from: f64, to: f64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let unit = (self.0 % 1_000_000) as f64 / 1_000_000.0;
        Duration::from_millis(((from + (to - from) * unit) * 1000.0) as u64)
    }
}

/// What a recording whose file was deleted leaves behind: why, the keep decision, the analysis
/// and its findings. Equal on the clone to what the live database had committed before the cut.
#[derive(Clone, Debug, PartialEq)]
struct DeletedRow {
    datetime: String,
    deleted_by: Option<String>,
    deleted_on: Option<String>,
    /// A `roost_keep` row with `kept_by` NULL: the keep rules decided to delete it.
    decided_to_delete: bool,
    analysis: Option<String>,
    model_outputs: i64,
    detections: i64,
    tags: i64,
}

/// Every recording row whose path is NULL, by id.
fn deleted_rows(conn: &rusqlite::Connection) -> BTreeMap<String, DeletedRow> {
    conn.prepare(
        "SELECT lower(hex(r.id)), r.datetime, r.deleted_by, r.deleted_on,
             EXISTS (SELECT 1 FROM roost_keep k WHERE k.recording_id = r.id AND k.kept_by IS NULL),
             (SELECT a.outcome FROM roost_analysis a WHERE a.recording_id = r.id AND a.detector = ?1),
             (SELECT count(*) FROM model_output m WHERE m.recording_id = r.id AND m.model_name = ?1),
             (SELECT count(*) FROM detection d JOIN model_output m ON m.id = d.model_output_id
                  WHERE m.recording_id = r.id AND m.model_name = ?1),
             (SELECT count(*) FROM predicted_tag t JOIN detection d ON d.id = t.detection_id
                  JOIN model_output m ON m.id = d.model_output_id
                  WHERE m.recording_id = r.id AND m.model_name = ?1)
         FROM recording r WHERE r.path IS NULL",
    )
    .unwrap()
    .query_map([DETECTOR], |r| {
        Ok((
            r.get::<_, String>(0)?,
            DeletedRow {
                datetime: r.get(1)?,
                deleted_by: r.get(2)?,
                deleted_on: r.get(3)?,
                decided_to_delete: r.get(4)?,
                analysis: r.get(5)?,
                model_outputs: r.get(6)?,
                detections: r.get(7)?,
                tags: r.get(8)?,
            },
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// (datetime, duration_s, path) of every recording row, oldest first.
fn all_rows(conn: &rusqlite::Connection) -> Vec<(String, f64, Option<PathBuf>)> {
    conn.prepare("SELECT datetime, duration_s, path FROM recording ORDER BY datetime")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, Option<String>>(2)?.map(PathBuf::from),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn wavs(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            wavs(&path, out);
        } else if path.extension().is_some_and(|e| e == "wav") {
            out.insert(path);
        }
    }
}

fn files_in(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        n += if entry.path().is_dir() {
            files_in(&entry.path())
        } else {
            1
        };
    }
    n
}

fn open(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

fn integrity(conn: &rusqlite::Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// The file a row with this datetime had (its path is cleared once deleted).
fn file_of(recordings: &Path, datetime: &str) -> PathBuf {
    let start = roost::storage::parse_db_datetime(datetime)
        .unwrap_or_else(|| panic!("datetime {datetime:?}"));
    roost::storage::recording_path(recordings, start)
}

/// Holes in the recorded time: a recording between two rows that left no row at all (more
/// than half a 1 s file between the end of one and the start of the next).
fn gaps(rows: &[(String, f64, Option<PathBuf>)]) -> Vec<String> {
    let start = |d: &str| roost::storage::parse_db_datetime(d).unwrap();
    rows.windows(2)
        .filter_map(|w| {
            let end = start(&w[0].0) + Duration::from_secs_f64(w[0].1);
            let hole = start(&w[1].0).duration_since(end).as_secs_f64();
            (hole > 0.5).then(|| format!("{:.3} s after {} ends", hole, w[0].0))
        })
        .collect()
}

/// What the clones showed, over all cuts.
#[derive(Debug, Default)]
struct Tally {
    /// Rows deleted by the keep rules on the clones (before repair).
    keep_deleted: usize,
    /// Their detections.
    keep_deleted_detections: i64,
    /// Rows the live database had committed as deleted before a cut, found on its clone.
    committed_before_cut: usize,
    /// Files whose deletion was on the card while the file still was (finished by repair).
    deletions_interrupted: usize,
    /// Files on a clone without any row (a row committed without fsync, lost to the cut).
    rows_lost_files_kept: usize,
}

/// roost records 1 s files, the built-in detector analyses each and `keep: [{every: 1m}]`
/// deletes nearly all of them right after (no `spec.connect`: nothing else holds a finding).
/// At random instants the card is cloned atomically, roost running on. On every clone: a row
/// whose file is gone says why; every recording the live database had committed as deleted
/// before the cut is there with its reason, keep decision, analysis, model output, detections
/// and tags, exactly; and after the recorder's start-up repair, files and rows agree both ways
/// (a deletion decided but not finished is finished, and named in the report), no reason was
/// lost or relabelled, and no recording left a hole in the recorded time.
#[test]
fn a_power_cut_at_any_instant_loses_no_row_finding_or_decision_of_a_deleted_recording() {
    if !root_or_skip(TEST) {
        return;
    }
    for program in ["mkfs.xfs", "mkfs.ext4", "losetup", "mount", "umount", "cp"] {
        if !have_or_skip(program, TEST) {
            return;
        }
    }
    let started = Instant::now();
    let mut random = Random::new();

    // An XFS file system (reflinks) holding the card image; the card mounted with direct I/O,
    // so that the image file holds exactly what the card has been sent.
    let base = tempfile::tempdir().unwrap();
    let xfs_image = base.path().join("xfs.img");
    run(Command::new("truncate")
        .args(["-s", "512M"])
        .arg(&xfs_image));
    run(Command::new("mkfs.xfs").arg("-q").arg(&xfs_image));
    let xfs = Attached::mount(&xfs_image, &base.path().join("xfs"), false);
    let card_image = xfs.mount_point.join("card.img");
    run(Command::new("truncate")
        .args(["-s", "96M"])
        .arg(&card_image));
    run(Command::new("mkfs.ext4").arg("-q").arg(&card_image));
    let card_at = base.path().join("card");
    let mut card = Attached::mount(&card_image, &card_at, true);
    let storage = card_at.join("storage");
    let state = card_at.join("state");
    let mut run_folders = RunFolders(Vec::new());

    // roost records 1 s files of tone bursts; the curator analyses each and keeps one a minute.
    let mut r = Roost::new("");
    r.state = state.clone();
    let extra = format!(
        "  detectors:\n    - {{name: {DETECTOR}, kind: bandEnergy, lowHz: 2000, highHz: 5000, thresholdDb: 12, minDuration: 100ms}}\n"
    );
    let yaml = recorder_deployment("power-cut", &storage, &extra)
        .replace("storage: {path:", "storage: {keep: [{every: 1m}], path:");
    std::fs::write(&r.file, &yaml).unwrap();
    let feed = r.start_recording_with(&["--signal", "events"]);
    let db_path = storage.join("metadata.db");
    r.wait_for("metadata.db", Duration::from_secs(30), |_| db_path.exists());
    if let Ok(target) = std::fs::read_link(state.join("run")) {
        run_folders.0.push(target);
    }
    let live =
        rusqlite::Connection::open_with_flags(&db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    live.busy_timeout(Duration::from_secs(10)).unwrap();
    let deleted_by_keep = || -> i64 {
        live.query_row(
            "SELECT count(*) FROM recording WHERE deleted_by = 'keep'",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0)
    };
    r.wait_for(
        "the first recording deleted by the keep rules",
        Duration::from_secs(60),
        |_| deleted_by_keep() > 0,
    );

    // The cuts: what the live database had committed as deleted, then at once the clone.
    let mut cuts = Vec::new();
    for n in 0..CUTS {
        let wait = if n == 0 {
            random.between(1.0, 4.0)
        } else {
            random.between(3.0, 10.0)
        };
        std::thread::sleep(wait);
        let committed = deleted_rows(&live);
        let clone = xfs.mount_point.join(format!("cut{n}.img"));
        let at = Instant::now();
        run(Command::new("cp")
            .arg("--reflink=always")
            .arg(&card_image)
            .arg(&clone));
        eprintln!(
            "{TEST}: cut {n} after {:.1} s of waiting ({} ms to clone), {} recordings deleted before it",
            wait.as_secs_f64(),
            at.elapsed().as_millis(),
            committed.len()
        );
        cuts.push((clone, committed));
    }
    drop(live);
    let status = r.status().unwrap();
    let recorder = &component(&status, "recorder")["output"];
    assert_eq!(recorder["samplesDropped"], 0, "{status:#}");
    assert_eq!(
        component(&status, "curator")["status"],
        "Running",
        "{status:#}"
    );
    assert_eq!(r.stop(), Some(0));
    drop(feed);
    card.release();

    // Each clone where the card was, as the device finds it at the next boot.
    let no_audio = base.path().join("no-audio.conf");
    std::fs::write(&no_audio, "").unwrap();
    let recordings = storage.join("recordings");
    let mut tally = Tally::default();
    let mut unreported = Vec::new();
    for (n, (clone, committed)) in cuts.iter().enumerate() {
        let mut mounted = Attached::mount(clone, &card_at, false);
        let conn = open(&db_path);
        assert_eq!(integrity(&conn), "ok", "cut {n}");
        let before = deleted_rows(&conn);
        let rows = all_rows(&conn);

        // A row without a file says why; a row with a path has its file.
        let without_reason: Vec<&DeletedRow> =
            before.values().filter(|d| d.deleted_by.is_none()).collect();
        assert_eq!(
            without_reason.len(),
            0,
            "cut {n}: rows with no file and no reason: {without_reason:#?}"
        );
        let gone_without_reason: Vec<&PathBuf> = rows
            .iter()
            .filter_map(|(_, _, p)| p.as_ref())
            .filter(|p| !p.exists())
            .collect();
        assert_eq!(
            gone_without_reason.len(),
            0,
            "cut {n}: files removed while their rows still say they are there: {gone_without_reason:#?}"
        );

        // A recording deleted by the keep rules keeps its decision, analysis and findings.
        let keep_deleted: Vec<(&String, &DeletedRow)> = before
            .iter()
            .filter(|(_, d)| d.deleted_by.as_deref() == Some("keep"))
            .collect();
        let without_findings: Vec<&(&String, &DeletedRow)> = keep_deleted
            .iter()
            .filter(|(_, d)| {
                !d.decided_to_delete
                    || d.analysis.as_deref() != Some("done")
                    || d.model_outputs != 1
            })
            .collect();
        assert_eq!(
            without_findings.len(),
            0,
            "cut {n}: deleted by keep without its decision, analysis or model output: {without_findings:#?}"
        );
        tally.keep_deleted += keep_deleted.len();
        tally.keep_deleted_detections +=
            keep_deleted.iter().map(|(_, d)| d.detections).sum::<i64>();

        // Everything the live database had committed as deleted before the cut is on the card,
        // exactly: the deletion commit was on the card before the file went.
        let lost: Vec<String> = committed
            .iter()
            .filter(|(id, d)| before.get(*id) != Some(d))
            .map(|(id, d)| {
                format!(
                    "{id}: before the cut {d:?}, on the clone {:?}",
                    before.get(id)
                )
            })
            .collect();
        assert_eq!(
            lost.len(),
            0,
            "cut {n}: deleted recordings whose rows or findings the cut lost:\n{}",
            lost.join("\n")
        );
        tally.committed_before_cut += committed.len();

        // Files the card still held: a deletion decided but not finished, or a recording whose
        // row (committed without fsync) the cut lost.
        let mut files = BTreeSet::new();
        wavs(&recordings, &mut files);
        let present: BTreeSet<PathBuf> = rows.iter().filter_map(|(_, _, p)| p.clone()).collect();
        let interrupted: BTreeSet<PathBuf> = before
            .values()
            .filter(|d| d.deleted_by.as_deref().is_some_and(|by| by != "missing"))
            .map(|d| file_of(&recordings, &d.datetime))
            .filter(|f| files.contains(f))
            .collect();
        let orphans: Vec<&PathBuf> = files
            .iter()
            .filter(|f| !present.contains(*f) && !interrupted.contains(*f))
            .collect();
        tally.deletions_interrupted += interrupted.len();
        tally.rows_lost_files_kept += orphans.len();
        eprintln!(
            "{TEST}: cut {n}: {} rows, {} deleted by keep ({} detections), {} committed before the cut, {} deletions to finish, {} files without a row",
            rows.len(),
            keep_deleted.len(),
            keep_deleted.iter().map(|(_, d)| d.detections).sum::<i64>(),
            committed.len(),
            interrupted.len(),
            orphans.len()
        );
        drop(conn);

        // The next boot: the recorder's start-up repair on the clone's own state folder and
        // configuration, with no audio device (it repairs before it captures).
        let mut repair = KillOnDrop(
            Command::new(common::ROOST)
                .args(["record", "--config"])
                .arg(state.join("recorder-config.json"))
                .arg("--state-dir")
                .arg(&state)
                .env("ALSA_CONFIG_PATH", &no_audio)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(base.path().join(format!("repair{n}.log"))).unwrap())
                .spawn()
                .unwrap(),
        );
        let pid = repair.0.id();
        let conn = open(&db_path);
        let agree = |conn: &rusqlite::Connection| -> bool {
            let mut files = BTreeSet::new();
            wavs(&recordings, &mut files);
            let present: BTreeSet<PathBuf> = all_rows(conn)
                .into_iter()
                .filter_map(|(_, _, p)| p)
                .collect();
            files == present
                && files_in(&storage.join(".partial")) == 0
                && <roost::recorder::RecorderReport as roost::component::ReportFile>::read(&state)
                    .is_some_and(|r| r.pid == pid)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agree(&conn) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            terminate(&mut repair.0).success(),
            "cut {n}: roost record failed"
        );
        let log = std::fs::read_to_string(base.path().join(format!("repair{n}.log"))).unwrap();
        let report =
            <roost::recorder::RecorderReport as roost::component::ReportFile>::read(&state)
                .expect("the recorder's report");

        // After the repair, files and rows agree both ways; no reason was lost or relabelled.
        assert_eq!(integrity(&conn), "ok", "cut {n}");
        let rows = all_rows(&conn);
        let mut files = BTreeSet::new();
        wavs(&recordings, &mut files);
        let present: BTreeSet<PathBuf> = rows.iter().filter_map(|(_, _, p)| p.clone()).collect();
        let rows_without_file: Vec<&PathBuf> = present.difference(&files).collect();
        let files_without_row: Vec<&PathBuf> = files.difference(&present).collect();
        assert_eq!(
            (rows_without_file.len(), files_without_row.len()),
            (0, 0),
            "cut {n}: after the repair, rows without file {rows_without_file:#?}, files without row {files_without_row:#?}\nrepair log:\n{log}"
        );
        let after = deleted_rows(&conn);
        let relabelled: Vec<String> = before
            .iter()
            .filter(|(id, d)| after.get(*id) != Some(d))
            .map(|(id, d)| format!("{id}: {d:?} -> {:?}", after.get(id)))
            .collect();
        assert_eq!(relabelled.len(), 0, "cut {n}: {relabelled:#?}");
        let marked_missing = after
            .values()
            .filter(|d| d.deleted_by.as_deref() == Some("missing"))
            .count();
        assert_eq!(marked_missing, 0, "cut {n}: rows marked missing\n{log}");
        assert_eq!(
            files_in(&storage.join("quarantine")),
            0,
            "cut {n}: torn files quarantined\n{log}"
        );
        let holes = gaps(&rows);
        assert_eq!(
            holes.len(),
            0,
            "cut {n}: recordings that left no row: {holes:#?}"
        );
        for file in &interrupted {
            assert!(
                !file.exists(),
                "cut {n}: {} not deleted by the repair",
                file.display()
            );
        }
        // The repair says what it did (RepairReport: "reported, never silent").
        let finished: BTreeSet<PathBuf> =
            report.repair.deletions_finished.iter().cloned().collect();
        if finished != interrupted {
            unreported.push(format!(
                "cut {n}: the repair finished deleting {interrupted:?}; the recorder's report names {finished:?}"
            ));
        }
        let registered: BTreeSet<&PathBuf> = report.repair.registered.iter().collect();
        let orphans: BTreeSet<&PathBuf> = orphans.into_iter().collect();
        assert!(
            orphans.is_subset(&registered),
            "cut {n}: files without a row {orphans:#?} not registered: {:#?}",
            report.repair
        );
        drop(conn);
        drop(repair);
        mounted.release();
    }

    eprintln!(
        "{TEST}: {CUTS} cuts in {:.1} s: {tally:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        tally.keep_deleted > 0,
        "no deletion was exercised: {tally:?}"
    );
    assert!(
        tally.committed_before_cut > 0,
        "no deletion committed before a cut: {tally:?}"
    );
    assert!(
        tally.keep_deleted_detections > 0,
        "no detection of a deleted recording was exercised: {tally:?}"
    );
    assert_eq!(
        unreported.len(),
        0,
        "deletions finished by the repair are missing from the recorder's report (repair.deletionsFinished):\n{}",
        unreported.join("\n")
    );
}
