//! acoupi 0.8.0's own code for the tests: its Python (the virtual environment `.ci/setup`
//! makes at `target/acoupi-venv`, or `ROOST_ACOUPI_PYTHON`) and a validator that runs roost's
//! messages through acoupi's pydantic models (`acoupi.data.ModelOutput`,
//! `acoupi.tasks.heartbeat.Heartbeat`).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// acoupi's Python, or `None` (the test says so and skips).
pub fn acoupi_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("ROOST_ACOUPI_PYTHON").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/acoupi-venv/bin/python")),
        Some(PathBuf::from("/opt/acoupi-venv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import acoupi.data, acoupi.tasks.heartbeat"])
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Validates each `{"kind", "json", "expect"}` line with acoupi's models; returns one line of
/// verdict per input (`ok` or the error).
const VALIDATE: &str = r#"
import json, sys, datetime
from acoupi.data import ModelOutput
from acoupi.tasks.heartbeat import Heartbeat
for line in sys.stdin:
    item = json.loads(line)
    try:
        if item["kind"] == "heartbeat":
            hb = Heartbeat.model_validate_json(json.dumps(item["json"]))
            assert hb.device_id == item["expect"]["device_id"], hb.device_id
            assert len(hb.metrics) == item["expect"]["metrics"], hb.metrics
            assert hb.status == item["expect"]["status"], hb.status
        else:
            mo = ModelOutput.model_validate_json(json.dumps(item["json"]))
            e = item["expect"]
            start = datetime.datetime.fromisoformat(e["start"])
            gap = abs((mo.recording.created_on - start).total_seconds())
            assert gap < 0.001, f"recording.created_on {mo.recording.created_on} vs {start}"
            assert mo.created_on.tzinfo is not None
            assert str(mo.id) == e["id"], (str(mo.id), e["id"])
            assert str(mo.recording.id) == e["recording_id"]
            assert mo.recording.deployment.name == e["deployment"]
            kinds = sorted(d.prediction_type.value for d in mo.detections)
            assert kinds == e["kinds"], kinds
            for d in mo.detections:
                if d.location is not None:
                    assert d.location.coordinates[2] > d.location.coordinates[0]
        print("ok", flush=True)
    except Exception as err:
        print("FAIL", repr(err).replace("\n", " "), flush=True)
"#;

pub fn validate(python: &Path, items: &[Value]) -> Vec<String> {
    let mut child = Command::new(python)
        .args(["-c", VALIDATE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for item in items {
        writeln!(stdin, "{item}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `prediction_type` metadata.db holds for each detection a model-output message lists
/// (by id), sorted: what the message must say of them.
pub fn kinds_in_db(conn: &rusqlite::Connection, body: &Value) -> Vec<String> {
    let mut kinds: Vec<String> = body["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let id: uuid::Uuid = d["id"].as_str().unwrap().parse().unwrap();
            conn.query_row(
                "SELECT prediction_type FROM detection WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        })
        .collect();
    kinds.sort();
    kinds
}

/// Asks acoupi 0.8.0's own store (`acoupi.components.stores.sqlite.SqliteStore`) and detection
/// summariser what a metadata.db holds: the current deployment, the recordings by path and by
/// id, every model output, detection and predicted tag, the tags of a time window and the
/// window's `StatisticsDetectionsSummariser` summary. Opening the store is what acoupi does
/// to a database: `CREATE ... IF NOT EXISTS` and `PRAGMA user_version = 1`.
const STORE: &str = r#"
import json, sys, uuid, datetime
from pathlib import Path
from acoupi.components.stores.sqlite import SqliteStore
from acoupi.components.summariser import StatisticsDetectionsSummariser
q = json.loads(sys.stdin.read())
store = SqliteStore(Path(q["db"]))
def rec(r, mos):
    return {"id": str(r.id), "path": str(r.path) if r.path else None,
            "created_on": r.created_on.isoformat(), "duration": r.duration,
            "samplerate": r.samplerate, "audio_channels": r.audio_channels,
            "deployment": str(r.deployment.id), "model_outputs": sorted(str(m.id) for m in mos)}
out = {}
d = store.get_current_deployment()
out["deployment"] = {"id": str(d.id), "name": d.name, "latitude": d.latitude, "longitude": d.longitude}
out["by_path"] = [rec(r, m) for r, m in store.get_recordings_by_path([Path(p) for p in q["paths"]])]
out["by_id"] = [rec(r, m) for r, m in store.get_recordings([uuid.UUID(i) for i in q["ids"]])]
out["model_outputs"] = [{"id": str(m.id), "name_model": m.name_model, "recording": str(m.recording.id),
    "created_on": m.created_on.isoformat(), "detections": sorted(str(x.id) for x in m.detections)}
    for m in store.get_model_outputs()]
out["detections"] = [{"id": str(x.id), "prediction_type": x.prediction_type.value,
    "location": list(x.location.coordinates) if x.location else None, "score": x.detection_score,
    "tags": [[t.tag.key, t.tag.value, t.confidence_score] for t in x.tags]}
    for x in store.get_detections()]
out["tags"] = len(store.get_predicted_tags())
after = datetime.datetime.fromisoformat(q["after"])
before = datetime.datetime.fromisoformat(q["before"])
out["window"] = sorted([t.tag.key, t.tag.value, t.confidence_score]
    for t in store.get_predicted_tags(after=after, before=before))
summary = StatisticsDetectionsSummariser(store, interval=before - after).build_summary(before)
out["summary"] = json.loads(summary.content)
print(json.dumps(out))
"#;

/// Runs [`STORE`] on `db`; `paths` and `ids` are asked for by path and by id, `after` and
/// `before` bound the time window (acoupi's text, as metadata.db holds it).
pub fn store_answers(
    python: &Path,
    db: &Path,
    paths: &[PathBuf],
    ids: &[uuid::Uuid],
    after: &str,
    before: &str,
) -> Value {
    let query = serde_json::json!({
        "db": db, "paths": paths, "ids": ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "after": after, "before": before,
    });
    let mut child = Command::new(python)
        .args(["-c", STORE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(query.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "acoupi's store failed on {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every WAV under `storage/recordings`.
pub fn files_on_disk(storage: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "wav") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&storage.join("recordings"), &mut out);
    out.sort();
    out
}

/// Checks acoupi's store's answers on `storage`'s metadata.db against roost's rows and the
/// files on disk (times within 1 ms); `deployment` is the running deployment's name. Returns
/// how many recordings acoupi found by path.
pub fn acoupi_store_agrees(python: &Path, storage: &Path, deployment: &str) -> usize {
    let db_path = storage.join("metadata.db");
    let conn = rusqlite::Connection::open(&db_path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    // A run goes on meanwhile: the files listed have their rows before acoupi is asked, and
    // counts are between those read before and after.
    let files = files_on_disk(storage);
    let t0 = std::time::Instant::now();
    while files.iter().any(|f| {
        conn.query_row(
            "SELECT count(*) FROM recording WHERE path = ?1",
            [f.to_string_lossy()],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0)
            == 0
    }) {
        assert!(t0.elapsed().as_secs() < 20, "files without a row");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let counted = |c: &dyn Fn(&str) -> i64| {
        [
            "SELECT count(*) FROM model_output",
            "SELECT count(*) FROM detection",
            "SELECT count(*) FROM predicted_tag",
        ]
        .map(c)
    };
    let before_counts = counted(&count);
    let ids: Vec<uuid::Uuid> = rows(&conn, "SELECT id FROM recording WHERE path IS NOT NULL");
    let created: Vec<String> = rows(
        &conn,
        "SELECT created_on FROM model_output ORDER BY created_on",
    );
    let (after, before) = match created.len() {
        0 => (
            "2000-01-01T00:00:00+00:00".to_string(),
            "2100-01-01T00:00:00+00:00".to_string(),
        ),
        n => (created[n / 2].clone(), created[n - 1].clone()),
    };
    let a = store_answers(python, &db_path, &files, &ids, &after, &before);
    let after_counts = counted(&count);
    let between = |i: usize, n: usize| before_counts[i] <= n as i64 && n as i64 <= after_counts[i];
    // The running deployment: roost's open row, the newest started.
    let open: uuid::Uuid = conn
        .query_row(
            "SELECT id FROM deployment WHERE ended_on IS NULL ORDER BY started_on DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(a["deployment"]["id"], open.to_string(), "{a:#}");
    assert_eq!(a["deployment"]["name"], deployment);
    // Every file on disk, found by its path, with its start, length and rate.
    let by_path = a["by_path"].as_array().unwrap();
    assert_eq!(by_path.len(), files.len(), "{a:#}");
    for r in by_path {
        let path = PathBuf::from(r["path"].as_str().unwrap());
        assert!(files.contains(&path), "{path:?}");
        let start = roost::storage::start_from_file_name(&path).unwrap();
        let said: jiff::Timestamp = r["created_on"].as_str().unwrap().parse().unwrap();
        assert!(
            said.duration_since(start).abs() < jiff::SignedDuration::from_millis(1),
            "{r:#}"
        );
        let wav = hound::WavReader::open(&path).unwrap();
        let spec = wav.spec();
        assert_eq!(r["samplerate"], spec.sample_rate, "{r:#}");
        assert_eq!(r["audio_channels"], spec.channels, "{r:#}");
        let seconds = f64::from(wav.duration()) / f64::from(spec.sample_rate);
        assert!(
            (r["duration"].as_f64().unwrap() - seconds).abs() < 0.001,
            "{r:#} {seconds}"
        );
        let id: uuid::Uuid = r["id"].as_str().unwrap().parse().unwrap();
        let outputs: Vec<uuid::Uuid> = rows_with(
            &conn,
            "SELECT id FROM model_output WHERE recording_id = ?1",
            id,
        );
        let mut outputs: Vec<String> = outputs.iter().map(ToString::to_string).collect();
        outputs.sort();
        assert_eq!(r["model_outputs"], serde_json::json!(outputs), "{r:#}");
    }
    assert_eq!(a["by_id"].as_array().unwrap().len(), ids.len(), "by id");
    // Every model output, detection and tag roost wrote.
    assert!(
        between(0, a["model_outputs"].as_array().unwrap().len()),
        "model outputs"
    );
    assert!(
        between(1, a["detections"].as_array().unwrap().len()),
        "detections"
    );
    assert!(between(2, a["tags"].as_u64().unwrap() as usize), "tags");
    for d in a["detections"].as_array().unwrap() {
        let id: uuid::Uuid = d["id"].as_str().unwrap().parse().unwrap();
        let (kind, tags): (String, i64) = conn
            .query_row(
                "SELECT prediction_type, (SELECT count(*) FROM predicted_tag t WHERE t.detection_id = d.id)
                 FROM detection d WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(d["prediction_type"], kind.as_str(), "{d:#}");
        assert_eq!(d["tags"].as_array().unwrap().len() as i64, tags, "{d:#}");
    }
    // The window, by the instants (not the text) of roost's rows.
    let (from, to) = (parse(&after), parse(&before));
    let mut window: Vec<(String, String, f64)> = Vec::new();
    let mut stmt = conn
        .prepare(
            "SELECT t.key, t.value, t.confidence_score, m.created_on FROM predicted_tag t
             JOIN detection d ON d.id = t.detection_id JOIN model_output m ON m.id = d.model_output_id",
        )
        .unwrap();
    for row in stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?))
        })
        .unwrap()
    {
        let (k, v, c, at) = row.unwrap();
        let at = parse(&at);
        if from <= at && at <= to {
            window.push((k, v, c));
        }
    }
    window.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let said: Vec<(String, String, f64)> = serde_json::from_value(a["window"].clone()).unwrap();
    // The same tags; scores to 1e-9 (JSON's text of a float is parsed to the nearest few ulps).
    let same = said.len() == window.len()
        && said
            .iter()
            .zip(&window)
            .all(|(a, b)| a.0 == b.0 && a.1 == b.1 && (a.2 - b.2).abs() < 1e-9);
    assert!(
        same,
        "tags in [{after}, {before}]: acoupi {said:?}, rows {window:?}"
    );
    for (_, value, _) in &window {
        let scores: Vec<f64> = window
            .iter()
            .filter(|w| &w.1 == value)
            .map(|w| w.2)
            .collect();
        assert_eq!(
            a["summary"][value]["count"],
            scores.len(),
            "{:#}",
            a["summary"]
        );
    }
    assert_eq!(
        a["summary"].as_object().unwrap().len(),
        window
            .iter()
            .map(|w| &w.1)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            + 1,
        "one entry per tag value, and the interval"
    );
    by_path.len()
}

fn parse(text: &str) -> jiff::Timestamp {
    roost::storage::parse_db_datetime(text).unwrap()
}

fn rows<T: rusqlite::types::FromSql>(conn: &rusqlite::Connection, sql: &str) -> Vec<T> {
    conn.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn rows_with<T: rusqlite::types::FromSql>(
    conn: &rusqlite::Connection,
    sql: &str,
    id: uuid::Uuid,
) -> Vec<T> {
    conn.prepare(sql)
        .unwrap()
        .query_map([id], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
