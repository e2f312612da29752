//! The start-up repair on an archive of a few thousand recordings (real files, real SQLite): a
//! metadata.db rebuilt from the files equals the lost one for every file, and the recorder's
//! registrar rebuilds it batch by batch, counting every file in its report and naming only the
//! latest few. Timings are never asserted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use roost::recorder::registrar::{DeploymentInfo, RECENT_REPAIRS, Registrar};
use roost::spec::recorder::{ByteSize, OnLowSpace, StorageSpec};
use roost::storage::{self, DB_FILE, Folders, NewRecording, RepairPhase, Storage};

fn spec() -> StorageSpec {
    StorageSpec {
        min_free_space: ByteSize(0),
        on_low_space: OnLowSpace::Stop,
        ..StorageSpec::default()
    }
}

/// `n` recordings of 0.05 s, one a minute (so over several day folders); every seventh in
/// stereo at 16 kHz, the others mono at 8 kHz.
fn write_archive(recordings: &Path, n: u32) -> Vec<NewRecording> {
    let first: Timestamp = "2026-03-01T22:00:00Z".parse().unwrap();
    (0..n)
        .map(|i| {
            let start = first + SignedDuration::from_mins(i64::from(i));
            let (rate, channels) = if i % 7 == 0 { (16_000, 2) } else { (8000, 1) };
            let path = storage::recording_path(recordings, start);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let wav = hound::WavSpec {
                channels,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::create(&path, wav).unwrap();
            let frames = rate / 20;
            for s in 0..frames * u32::from(channels) {
                w.write_sample((s % 100) as i16).unwrap();
            }
            w.finalize().unwrap();
            NewRecording {
                path,
                datetime: start,
                duration_s: f64::from(frames) / f64::from(rate),
                samplerate_hz: rate,
                audio_channels: channels,
            }
        })
        .collect()
}

type Columns = (String, f64, u32, u16);

fn rows_by_path(s: &Storage) -> BTreeMap<PathBuf, Columns> {
    s.recordings()
        .unwrap()
        .into_iter()
        .map(|r| {
            let columns = (r.datetime, r.duration_s, r.samplerate_hz, r.audio_channels);
            (r.path, columns)
        })
        .collect()
}

fn lose_database(root: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(root.join(format!("{DB_FILE}{suffix}")));
    }
}

#[test]
fn a_rebuilt_database_equals_the_original_for_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Storage::open(dir.path(), &spec()).unwrap();
    let dep = s
        .start_deployment("meadow", None, Timestamp::now())
        .unwrap();
    let recs = write_archive(&s.recordings_dir(), 3000);
    for rec in &recs {
        s.register(rec, &dep).unwrap();
    }
    let original = rows_by_path(&s);
    assert_eq!(original.len(), 3000);
    drop(s);

    lose_database(dir.path());
    let mut s = Storage::open(dir.path(), &spec()).unwrap();
    let dep = s
        .start_deployment("meadow", None, Timestamp::now())
        .unwrap();
    let t = Instant::now();
    let report = s.repair(&dep).unwrap();
    eprintln!(
        "figure: 3000 files rebuilt in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let progress = report.progress.unwrap();
    assert_eq!((progress.registered, progress.files_checked), (3000, 3000));
    assert!(report.quarantined.is_empty() && report.rows_removed.is_empty());
    assert_eq!(rows_by_path(&s), original);
    assert!(
        s.repair(&dep).unwrap().is_empty(),
        "a second repair has nothing to do"
    );
}

#[test]
fn the_registrar_rebuilds_a_lost_database_and_counts_what_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let folders = Folders::new(dir.path(), &spec());
    folders.prepare().unwrap();
    let recs = write_archive(&folders.recordings_dir(), 1200);
    let deployment = DeploymentInfo {
        name: "meadow".into(),
        location: None,
    };
    let registrar = Registrar::start(folders.clone(), deployment);
    // A file of this run handed over while the rebuild goes on: registered once.
    let last = recs.last().unwrap();
    let new = NewRecording {
        path: storage::recording_path(
            &folders.recordings_dir(),
            last.datetime + SignedDuration::from_mins(1),
        ),
        ..last.clone()
    };
    std::fs::copy(&last.path, &new.path).unwrap();
    registrar.register(new.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = |r: &Registrar| {
        let v = r.view();
        v.rows_owed == 0
            && v.repair
                .progress
                .as_ref()
                .is_some_and(|p| p.phase == RepairPhase::Done)
    };
    while !done(&registrar) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let view = registrar.finish(Duration::from_secs(5));
    let progress = view.repair.progress.clone().expect("progress reported");
    assert_eq!(progress.phase, RepairPhase::Done, "{progress:?}");
    assert_eq!(progress.files_checked, 1201);
    assert!((1200..=1201).contains(&progress.registered), "{progress:?}");
    assert!(progress.finished_at >= progress.started_at);
    assert_eq!(view.repair.registered.len(), RECENT_REPAIRS);
    let s = Storage::open(dir.path(), &spec()).unwrap();
    let rows = rows_by_path(&s);
    assert_eq!(rows.len(), 1201);
    assert!(rows.contains_key(&new.path));
}
