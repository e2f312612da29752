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
