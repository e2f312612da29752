//! Detectors' findings as messages: each model output in acoupi's model-output JSON (the
//! model's name, when it was created, the recording with its deployment, the detections with
//! their bounding box `[start_s, low_hz, end_s, high_hz]` and tags with confidence), and a
//! periodic summary per tag. Read from metadata.db, read-only; the outbox keeps the cursor.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, params};
use serde_json::{Value, json};

/// One model output ready to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Its rowid in `model_output` (the cursor).
    pub rowid: i64,
    /// The message body (without the envelope's ids).
    pub body: Value,
    /// Detections in it after the score filter.
    pub detections: usize,
}

fn open(storage: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        storage.join(crate::storage::DB_FILE),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// Model outputs after `after` (rowid), oldest first, at most `limit`; detections scoring under
/// their detector's entry in `min_scores` are left out. `None` when metadata.db has no such
/// table yet (no detector ever ran).
pub fn after(
    storage: &Path,
    after: i64,
    limit: usize,
    min_scores: &BTreeMap<String, f64>,
) -> Option<Vec<Output>> {
    let conn = open(storage).ok()?;
    let mut stmt = conn
        .prepare(
            "SELECT m.rowid, m.id, m.model_name, m.created_on, r.id, r.path, r.datetime, r.duration_s,
                    r.samplerate_hz, r.audio_channels, d.id, d.name, d.started_on, d.latitude, d.longitude
             FROM model_output m JOIN recording r ON r.id = m.recording_id
             LEFT JOIN deployment d ON d.id = r.deployment_id
             WHERE m.rowid > ?1 ORDER BY m.rowid LIMIT ?2",
        )
        .ok()?;
    let rows = stmt
        .query_map(params![after, limit as i64], |r| {
            let recording = json!({
                "id": r.get::<_, String>(4)?,
                "path": r.get::<_, Option<String>>(5)?,
                "datetime": r.get::<_, String>(6)?,
                "duration": r.get::<_, f64>(7)?,
                "samplerate": r.get::<_, i64>(8)?,
                "audio_channels": r.get::<_, i64>(9)?,
                "deployment": {
                    "id": r.get::<_, Option<String>>(10)?,
                    "name": r.get::<_, Option<String>>(11)?,
                    "started_on": r.get::<_, Option<String>>(12)?,
                    "latitude": r.get::<_, Option<f64>>(13)?,
                    "longitude": r.get::<_, Option<f64>>(14)?,
                },
            });
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                recording,
            ))
        })
        .ok()?;
    let mut out = Vec::new();
    for row in rows.flatten() {
        let (rowid, id, model, created, recording) = row;
        let min = min_scores.get(&model).copied().unwrap_or(0.0);
        let detections = detections_of(&conn, &id, min).unwrap_or_default();
        let tags = tags_of(&conn, "model_output_id", &id).unwrap_or_default();
        let count = detections.len();
        out.push(Output {
            rowid,
            body: json!({
                "id": id,
                "name_model": model,
                "created_on": created,
                "recording": recording,
                "tags": tags,
                "detections": detections,
            }),
            detections: count + tags_count(&tags),
        });
    }
    Some(out)
}

fn tags_count(tags: &Value) -> usize {
    tags.as_array().map_or(0, Vec::len)
}

fn detections_of(conn: &Connection, output: &str, min_score: f64) -> rusqlite::Result<Vec<Value>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, location, detection_score FROM detection
         WHERE model_output_id = ?1 AND detection_score >= ?2 ORDER BY rowid",
    )?;
    let rows = stmt.query_map(params![output, min_score], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, f64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for (id, location, score) in rows.flatten() {
        let location: Value = location
            .and_then(|l| serde_json::from_str(&l).ok())
            .unwrap_or(Value::Null);
        out.push(json!({
            "id": id,
            "location": location,
            "detection_score": score,
            "tags": tags_of(conn, "detection_id", &id)?,
        }));
    }
    Ok(out)
}

fn tags_of(conn: &Connection, column: &str, id: &str) -> rusqlite::Result<Value> {
    let sql = format!(
        "SELECT key, value, confidence_score FROM predicted_tag WHERE {column} = ?1 ORDER BY id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([id], |r| {
        Ok(json!({
            "tag": {"key": r.get::<_, String>(0)?, "value": r.get::<_, String>(1)?},
            "confidence_score": r.get::<_, f64>(2)?,
        }))
    })?;
    Ok(Value::Array(rows.flatten().collect()))
}

/// Per detector and tag, the detections created in `[from, to)`: count and mean, min and max
/// score. `None` when there were none (or no table).
pub fn summary(storage: &Path, from: Timestamp, to: Timestamp) -> Option<Value> {
    let conn = open(storage).ok()?;
    let mut stmt = conn
        .prepare(
            "SELECT m.model_name, t.key, t.value, count(*), avg(d.detection_score),
                    min(d.detection_score), max(d.detection_score)
             FROM model_output m JOIN detection d ON d.model_output_id = m.id
             JOIN predicted_tag t ON t.detection_id = d.id
             WHERE m.created_on >= ?1 AND m.created_on < ?2
             GROUP BY m.model_name, t.key, t.value ORDER BY m.model_name, t.key, t.value",
        )
        .ok()?;
    let db = crate::storage::db_datetime;
    let rows: Vec<Value> = stmt
        .query_map(params![db(from), db(to)], |r| {
            Ok(json!({
                "name_model": r.get::<_, String>(0)?,
                "tag": {"key": r.get::<_, String>(1)?, "value": r.get::<_, String>(2)?},
                "count": r.get::<_, i64>(3)?,
                "mean_score": r.get::<_, f64>(4)?,
                "min_score": r.get::<_, f64>(5)?,
                "max_score": r.get::<_, f64>(6)?,
            }))
        })
        .ok()?
        .flatten()
        .collect();
    (!rows.is_empty()).then(|| json!({"from": from, "to": to, "tags": rows}))
}
