//! Keep decisions: `cargo bench --bench curate` registers 10,000 one-minute recordings (a
//! third with a detection) in a fresh metadata.db, then times the curator deciding keep or
//! delete for all of them (rules: a detection >= 0.8, dawn and dusk windows, one in every 10
//! minutes), database writes included (the files do not exist, so no unlink is timed), and the
//! read-only preview `roost plan` shows.

use std::time::Instant;

use roost::curate::CurateConfig;
use roost::curate::run::Curator;
use roost::detect::findings::{Detection, Findings, PredictedTag};
use roost::storage::{NewRecording, Storage};

const N: usize = 10_000;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let storage_path = dir.path().join("storage");
    let config: CurateConfig = serde_json::from_value(serde_json::json!({
        "deployment": "bench",
        "detectors": [{"name": "birds", "kind": "bandEnergy", "lowHz": 2000, "highHz": 8000}],
        "storage": {"path": storage_path, "minFreeSpace": "0", "onLowSpace": "stop",
                    "keep": [{"detection": {"minScore": 0.8}}, {"dawn": {"before": "30m", "after": "1h"}},
                             {"dusk": {"before": "1h"}}, {"every": "10m"}]},
        "recorder": {"timezone": "Europe/London", "duration": "60s"},
        "location": {"latitude": 51.76, "longitude": -1.26}
    }))
    .unwrap();
    let mut storage = Storage::open(&storage_path, &config.storage).unwrap();
    let start: jiff::Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
    let deployment = storage.start_deployment("bench", None, start).unwrap();
    let filled = Instant::now();
    let since: jiff::Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
    {
        let conn = storage.connection();
        conn.execute(
            "INSERT INTO roost_detector (name, since) VALUES ('birds', ?1)",
            [roost::storage::db_datetime(since)],
        )
        .unwrap();
    }
    let mut ids = Vec::new();
    for i in 0..N {
        let t = start + jiff::SignedDuration::from_secs(60 * i as i64);
        let path = storage
            .recordings_dir()
            .join(roost::storage::recording_file_name(t));
        let rec = NewRecording {
            path,
            datetime: t,
            duration_s: 60.0,
            samplerate_hz: 48_000,
            audio_channels: 1,
        };
        ids.push(storage.register(&rec, &deployment).unwrap());
    }
    drop(storage);
    let mut conn = rusqlite::Connection::open(storage_path.join("metadata.db")).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let findings = match i % 3 {
            0 => Findings {
                detections: vec![Detection {
                    location: [1.0, 2000.0, 2.0, 4000.0],
                    detection_score: 0.5 + (i % 7) as f64 / 14.0,
                    tags: vec![PredictedTag {
                        key: "event".into(),
                        value: "sound".into(),
                        confidence_score: 0.9,
                    }],
                }],
                tags: vec![],
            },
            _ => Findings::default(),
        };
        roost::curate::db::record_findings(&mut conn, id, "birds", &findings, start).unwrap();
    }
    eprintln!(
        "setup: {N} recordings in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let preview = roost::curate::preview(&config).unwrap();
    let preview_s = t.elapsed().as_secs_f64();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut curator = Curator::new(config, &state);
    let t = Instant::now();
    let decided = curator.decide_now().unwrap();
    let decide_s = t.elapsed().as_secs_f64();
    println!(
        "keep decisions: {decided} recordings decided and written in {:.0} ms ({} would be deleted; read-only preview {:.0} ms)",
        decide_s * 1000.0,
        preview.would_delete.len(),
        preview_s * 1000.0
    );
}
