//! acoupi 0.8.0's own pydantic models (from PyPI, in the virtual environment `.ci/setup`
//! makes at `target/acoupi-venv`, or `ROOST_ACOUPI_PYTHON`) validate the messages roost builds
//! from metadata.db: every model output as acoupi's `ModelOutput` (aware times, the recording's
//! `created_on` equal to its row's start within 1 ms, each detection's `prediction_type`,
//! boxes, file-level tags as a `presence` detection) and heartbeats as acoupi's `Heartbeat`.

#[path = "support/acoupi.rs"]
mod acoupi;

use std::collections::BTreeMap;

use acoupi::{acoupi_python, validate};
use roost::archive::{ArchiveShape, build};
use serde_json::json;

#[test]
fn acoupis_models_take_roosts_model_outputs_and_heartbeats() {
    let Some(python) = acoupi_python() else {
        eprintln!(
            "skipping acoupis_models_take_roosts_model_outputs_and_heartbeats: acoupi 0.8.0 is not installed (bash .ci/setup makes target/acoupi-venv)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let shape = ArchiveShape {
        recordings: 30,
        detection_every: 3,
        ..ArchiveShape::default()
    };
    build(&storage, &shape, jiff::Timestamp::now()).unwrap();
    let db = rusqlite::Connection::open(storage.join("metadata.db")).unwrap();
    // A file-level tag on the first output (a detector's clip-level verdict: a presence
    // detection without a box), and a detection whose box acoupi would refuse (end before
    // start, as another program might write it) on the second.
    db.execute_batch(
        "INSERT INTO detection (id, prediction_type, detection_score, model_output_id)
             SELECT X'7c1e6a8e1c3d4e5f8a9b0c1d2e3f4a5b', 'presence', 0.7, id FROM model_output WHERE rowid = 1;
         INSERT INTO predicted_tag (key, value, confidence_score, detection_id)
             VALUES ('habitat', 'hedgerow', 0.7, X'7c1e6a8e1c3d4e5f8a9b0c1d2e3f4a5b');
         INSERT INTO detection (id, prediction_type, start_time_s, low_freq_hz, end_time_s,
                 high_freq_hz, detection_score, model_output_id)
             SELECT X'9b2f6a8e1c3d4e5f8a9b0c1d2e3f4a5b', 'event', 0.5, 2000, 0.2, 3000, 0.6, id
             FROM model_output WHERE rowid = 2;",
    )
    .unwrap();
    let outputs = roost::connect::detections::after(&storage, 0, 100, &BTreeMap::new()).unwrap();
    assert_eq!(outputs.len(), 30);
    let mut items = Vec::new();
    for o in &outputs {
        let b = &o.body;
        let (id, recording_id, start): (uuid::Uuid, uuid::Uuid, String) = db
            .query_row(
                "SELECT m.id, m.recording_id, r.datetime FROM model_output m
                 JOIN recording r ON r.id = m.recording_id WHERE m.rowid = ?1",
                [o.rowid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        let start = roost::storage::parse_db_datetime(&start).unwrap();
        let kinds = acoupi::kinds_in_db(&db, b);
        // The archive's detections (every third output: an event and a file-level tag), and
        // the two added above.
        let expected = match o.rowid {
            1 => 3,
            2 => 1,
            r if (r - 1) % 3 == 0 => 2,
            _ => 0,
        };
        assert_eq!(kinds.len(), expected, "output {}: {b:#}", o.rowid);
        items.push(json!({"kind": "model_output", "json": b, "expect": {
            "start": start.to_string().replace('Z', "+00:00"),
            "id": id.to_string(), "recording_id": recording_id.to_string(),
            "deployment": "archive", "kinds": kinds}}));
    }
    let facts = roost::connect::messages::Facts {
        files_last_hour: Some(60),
        free_bytes: Some(123_456_789),
        outbox: Default::default(),
    };
    let beat = roost::connect::messages::acoupi_heartbeat(
        None,
        &facts,
        "meadow-03",
        jiff::Timestamp::now(),
    );
    // Without a status: free space, files in the last hour, the outbox's depth and dropped.
    items.push(json!({"kind": "heartbeat", "json": beat, "expect": {
        "device_id": "meadow-03", "metrics": 4, "status": "unknown"}}));
    let verdicts = validate(&python, &items);
    assert_eq!(verdicts.len(), items.len(), "{verdicts:?}");
    for (item, verdict) in items.iter().zip(&verdicts) {
        assert_eq!(verdict, "ok", "{item:#}");
    }
}

/// acoupi's own store makes a metadata.db and stores a deployment, a recording of its own and
/// a model output (an event with a box, a presence) through its API.
const ACOUPI_MAKES: &str = r#"
import sys, datetime
from pathlib import Path
from acoupi import data
from acoupi.components.stores.sqlite import SqliteStore
utc = datetime.timezone.utc
store = SqliteStore(Path(sys.argv[1]))
dep = data.Deployment(name="acoupi-site", latitude=51.5, longitude=-0.12,
    started_on=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=utc))
store.store_deployment(dep)
rec = data.Recording(path=Path(sys.argv[2]), created_on=datetime.datetime(2026, 1, 2, 4, 0, 0, tzinfo=utc),
    duration=0.05, samplerate=8000, deployment=dep)
store.store_recording(rec)
tag = lambda v, c: data.PredictedTag(tag=data.Tag(key="species", value=v), confidence_score=c)
store.store_model_output(data.ModelOutput(name_model="BatDetect2", recording=rec,
    created_on=datetime.datetime(2026, 1, 2, 4, 0, 12, tzinfo=utc), detections=[
        data.EventDetection(location=data.BoundingBox(coordinates=(0.01, 1000.0, 0.02, 2000.0)),
            detection_score=0.9, tags=[tag("Pipistrellus pipistrellus", 0.8)]),
        data.PresenceDetection(detection_score=0.6, tags=[tag("Myotis daubentonii", 0.55)])]))
print(rec.id)
"#;

/// A metadata.db that acoupi's own store made (with acoupi's rows in it) is roost's storage:
/// roost adds its columns and tables, keeps acoupi's rows as they are, registers its own
/// recordings, analyses and decides them (never deleting acoupi's file, which is not roost's);
/// acoupi's store then reads both, and roost goes on writing after acoupi opened it again.
#[test]
fn a_database_acoupi_made_is_roosts_storage_and_acoupi_reads_both() {
    let Some(python) = acoupi_python() else {
        eprintln!(
            "skipping a_database_acoupi_made_is_roosts_storage_and_acoupi_reads_both: acoupi 0.8.0 is not installed (bash .ci/setup makes target/acoupi-venv)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let theirs = dir.path().join("acoupi/20260102_040000.wav");
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    std::fs::write(&theirs, roost::archive::wav_bytes(400)).unwrap();
    let db = storage.join("metadata.db");
    let made = std::process::Command::new(&python)
        .args(["-c", ACOUPI_MAKES])
        .arg(&db)
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let their_id: uuid::Uuid = String::from_utf8_lossy(&made.stdout)
        .trim()
        .parse()
        .unwrap();

    // Roost takes it as its storage: three recordings of its own, analysed and decided by
    // a curator whose rule keeps only what its detector finds.
    let config =
        roost::archive::curate_config(dir.path(), "[{detection: {minScore: 0.99}}]", "100GiB")
            .unwrap();
    let mut s = roost::storage::Storage::open(&storage, &config.storage).unwrap();
    // The deployment of `curate_config`'s file.
    let dep = s
        .start_deployment("archive", None, jiff::Timestamp::now())
        .unwrap();
    let now = jiff::Timestamp::now();
    for i in 0..3 {
        let t = now - jiff::SignedDuration::from_mins(3 - i);
        roost::archive::arrive(&mut s, &dep, t).unwrap();
    }
    // acoupi writes another recording of its own after roost's (after roost's detector was
    // first seen): it must neither be analysed nor hold roost's decisions.
    let theirs_later = dir.path().join("acoupi/20260102_050000.wav");
    std::fs::write(&theirs_later, roost::archive::wav_bytes(400)).unwrap();
    s.connection()
        .execute(
            "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
             SELECT X'5a5a5a5a5a5a4a5a8a5a5a5a5a5a5a5a', ?1, '2026-01-02T05:00:00+00:00', 0.05, 8000, 1, id
             FROM deployment WHERE name = 'acoupi-site'",
            [theirs_later.to_string_lossy()],
        )
        .unwrap();
    drop(s);
    let mut curator = roost::curate::run::Curator::new(config.clone(), &dir.path().join("state"));
    curator.round_now();
    curator.round_now();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (path, kept_by): (Option<String>, Option<String>) = conn
        .query_row(
            "SELECT r.path, k.kept_by FROM recording r LEFT JOIN roost_keep k ON k.recording_id = r.id WHERE r.id = ?1",
            [their_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(path.as_deref(), theirs.to_str(), "acoupi's row as it was");
    assert_eq!(kept_by.as_deref(), Some("notRoosts"));
    assert!(theirs.is_file(), "acoupi's file is not roost's to delete");
    let deleted: i64 = conn
        .query_row(
            "SELECT count(*) FROM recording WHERE deleted_by = 'keep'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(deleted, 3, "roost's own quiet files go by its rule");
    let outputs: i64 = conn
        .query_row(
            "SELECT count(*) FROM model_output WHERE model_name = 'band'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        outputs, 3,
        "roost's detector analysed its own recordings, not acoupi's"
    );
    let later: (Option<String>, Option<String>, i64) = conn
        .query_row(
            "SELECT r.path, k.kept_by, (SELECT count(*) FROM roost_analysis a WHERE a.recording_id = r.id)
             FROM recording r LEFT JOIN roost_keep k ON k.recording_id = r.id
             WHERE r.id = X'5a5a5a5a5a5a4a5a8a5a5a5a5a5a5a5a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        later,
        (
            Some(theirs_later.to_string_lossy().into()),
            Some("notRoosts".into()),
            0
        )
    );
    assert!(theirs_later.is_file());
    let bytes: i64 = conn
        .query_row("SELECT bytes FROM roost_tally", [], |r| r.get(0))
        .unwrap();
    assert_eq!(bytes, 0, "acoupi's files are not counted in roost's usage");

    // acoupi reads roost's rows and its own (roost's current deployment is the newest).
    acoupi::acoupi_store_agrees(&python, &storage, "archive");
    // After acoupi's store opened it again, roost registers rows as before.
    let mut s = roost::storage::Storage::open(&storage, &config.storage).unwrap();
    roost::archive::arrive(&mut s, &dep, jiff::Timestamp::now()).unwrap();
    assert_eq!(
        s.recordings().unwrap().len(),
        3,
        "acoupi's two and the new one"
    );
}
