//! Detectors' findings as messages: each model output in acoupi's model-output JSON (the
//! model's name, when it was created, the recording with its deployment, the detections with
//! their bounding box `[start_s, low_hz, end_s, high_hz]` and tags with confidence), and a
//! periodic summary per tag. Read from metadata.db, read-only; the outbox keeps the cursor.
//! A message is sized for a cellular link: at most [`LISTED`] detections, the highest scoring,
//! with `detections_total` saying how many there were (the heartbeat's summary counts them
//! all per tag), numbers rounded to what a listener can use, text cut, and the whole kept
//! under [`MAX_DETECTION_MESSAGE_BYTES`] whatever metadata.db holds.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, params};
use serde_json::{Value, json};

/// Most bytes of a detection message's payload, its envelope (`messageId`, `deviceId`)
/// included: a few TCP segments on a cellular link.
pub const MAX_DETECTION_MESSAGE_BYTES: usize = 4096;
/// Room kept for the envelope the connector adds.
const ENVELOPE_BYTES: usize = 256;
/// Detections listed per message, the highest scoring first.
pub const LISTED: usize = 10;
/// Longest text (tag keys and values) carried; a detector's text is untrusted input.
const MAX_TEXT_CHARS: usize = 100;

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

/// Where the cursor starts the first time: just before the oldest model output created at
/// `since` or later (the newest one when none is), read through the `created_on` index.
/// `None` when metadata.db has no such table yet (no detector ever ran).
pub fn catch_up_from(storage: &Path, since: Timestamp) -> Option<i64> {
    let conn = open(storage).ok()?;
    conn.query_row(
        "SELECT coalesce((SELECT min(rowid) FROM model_output WHERE created_on >= ?1) - 1,
                         (SELECT max(rowid) FROM model_output), 0)",
        [crate::storage::db_datetime(since)],
        |r| r.get(0),
    )
    .ok()
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
                "created_on": aware(&r.get::<_, String>(6)?),
                "datetime": r.get::<_, String>(6)?,
                "duration": r.get::<_, f64>(7)?,
                "samplerate": r.get::<_, i64>(8)?,
                "audio_channels": r.get::<_, i64>(9)?,
                "deployment": {
                    "id": r.get::<_, Option<String>>(10)?,
                    "name": r.get::<_, Option<String>>(11)?,
                    "started_on": r.get::<_, Option<String>>(12)?.as_deref().map(aware),
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
        let (detections, total) = detections_of(&conn, &id, min).unwrap_or_default();
        let tags = tags_of(&conn, "model_output_id", &id).unwrap_or_default();
        let findings = total + tags_count(&tags);
        let mut detections = detections;
        if tags_count(&tags) > 0 {
            detections.push(clip_detection(&tags));
        }
        let mut body = json!({
            "id": id,
            "name_model": model,
            "created_on": aware(&created),
            "recording": recording,
            "tags": tags,
            "detections": detections,
            "detections_total": total,
        });
        fit(&mut body);
        out.push(Output {
            rowid,
            body,
            detections: findings,
        });
    }
    Some(out)
}

/// A time as acoupi's models take it (aware, RFC 3339 with `Z`) from metadata.db's text; text
/// that is no time stays as it was (acoupi then refuses the message rather than misdate it).
fn aware(text: &str) -> Value {
    crate::storage::parse_db_datetime(text)
        .map_or_else(|| Value::from(text), |t| Value::from(t.to_string()))
}

/// The file-level tags as acoupi has a place for them: a `presence` detection without a box,
/// scored by its most confident tag.
fn clip_detection(tags: &Value) -> Value {
    let best = (tags.as_array().into_iter().flatten())
        .filter_map(|t| t["confidence_score"].as_f64())
        .fold(0.0f64, f64::max)
        .clamp(0.0, 1.0);
    json!({
        "id": crate::storage::new_uuid(),
        "prediction_type": "presence",
        "location": null,
        "detection_score": best,
        "tags": tags,
    })
}

/// Drops the lowest-scoring detections listed, then the clip's tags, until `body` fits.
fn fit(body: &mut Value) {
    let too_big = |b: &Value| b.to_string().len() + ENVELOPE_BYTES > MAX_DETECTION_MESSAGE_BYTES;
    for list in ["detections", "tags"] {
        while too_big(body) {
            match body[list].as_array_mut() {
                Some(items) if !items.is_empty() => drop(items.pop()),
                _ => break,
            }
        }
    }
}

/// `x` to three decimals (milliseconds, millihertz, a score's thousandths).
fn rounded(x: f64) -> Value {
    serde_json::Number::from_f64((x * 1000.0).round() / 1000.0).map_or(Value::Null, Value::Number)
}

/// A detection's stored location as acoupi's `BoundingBox` (`{"type": "BoundingBox",
/// "coordinates": [start_s, low_hz, end_s, high_hz]}`, as the curator writes it; a bare array
/// of the four is taken too), its numbers rounded; anything acoupi would refuse (not four
/// numbers, end not after start, high not above low) is no box (`null`).
fn location_of(text: Option<String>) -> Value {
    let rounded_all = |xs: &[Value]| -> Option<Value> {
        (xs.len() <= 4)
            .then(|| {
                xs.iter()
                    .map(|x| x.as_f64().map(rounded))
                    .collect::<Option<Vec<_>>>()
            })
            .flatten()
            .map(Value::Array)
    };
    let parsed: Option<Value> = text.and_then(|l| serde_json::from_str(&l).ok());
    match parsed {
        Some(Value::Array(xs)) if is_box(&xs) => rounded_all(&xs).map_or(
            Value::Null,
            |c| json!({"type": "BoundingBox", "coordinates": c}),
        ),
        Some(Value::Object(o)) => match o.get("coordinates") {
            Some(Value::Array(xs)) if is_box(xs) => rounded_all(xs).map_or(Value::Null, |c| {
                let kind = o
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("BoundingBox");
                json!({"type": kind.chars().take(32).collect::<String>(), "coordinates": c})
            }),
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

/// Whether `[start, low, end, high]` is a box acoupi's `BoundingBox` accepts (end after start,
/// high above low).
fn is_box(xs: &[Value]) -> bool {
    let n: Vec<f64> = xs.iter().filter_map(Value::as_f64).collect();
    n.len() == 4 && n[2] > n[0] && n[3] > n[1]
}

fn tags_count(tags: &Value) -> usize {
    tags.as_array().map_or(0, Vec::len)
}

/// The [`LISTED`] highest-scoring detections of `output` at or above `min_score`, and how
/// many there are.
fn detections_of(
    conn: &Connection,
    output: &str,
    min_score: f64,
) -> rusqlite::Result<(Vec<Value>, usize)> {
    let total: i64 = conn.query_row(
        "SELECT count(*) FROM detection WHERE model_output_id = ?1 AND detection_score >= ?2",
        params![output, min_score],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, location, detection_score FROM detection
         WHERE model_output_id = ?1 AND detection_score >= ?2
         ORDER BY detection_score DESC, rowid LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![output, min_score, LISTED as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, f64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for (id, location, score) in rows.flatten() {
        let location = location_of(location);
        // acoupi's kinds: a detection boxed in time and frequency is an `event`; one without a
        // usable box only says the sound is there (`presence`).
        let kind = if location.is_null() {
            "presence"
        } else {
            "event"
        };
        out.push(json!({
            "id": id,
            "prediction_type": kind,
            "location": location,
            "detection_score": rounded(score),
            "tags": tags_of(conn, "detection_id", &id)?,
        }));
    }
    Ok((out, usize::try_from(total).unwrap_or(0)))
}

fn tags_of(conn: &Connection, column: &str, id: &str) -> rusqlite::Result<Value> {
    let sql = format!(
        "SELECT substr(key, 1, ?2), substr(value, 1, ?2), confidence_score FROM predicted_tag
         WHERE {column} = ?1 ORDER BY confidence_score DESC, id LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![id, MAX_TEXT_CHARS as i64, LISTED as i64], |r| {
        Ok(json!({
            "tag": {"key": r.get::<_, String>(0)?, "value": r.get::<_, String>(1)?},
            "confidence_score": rounded(r.get::<_, f64>(2)?),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A metadata.db made by roost's storage, with `outputs` model outputs one a minute up to
    /// `newest`, each with `per_output` detections of two tags.
    pub(crate) fn metadata(root: &Path, outputs: i64, per_output: i64, newest: Timestamp) {
        drop(crate::storage::Storage::open(root, &Default::default()).unwrap());
        let conn = Connection::open(root.join(crate::storage::DB_FILE)).unwrap();
        let db = crate::storage::db_datetime;
        conn.execute_batch("BEGIN").unwrap();
        for n in 0..outputs {
            let at = newest - jiff::SignedDuration::from_mins(outputs - 1 - n);
            let (rec, out) = (format!("rec-{n}"), format!("out-{n}"));
            conn.execute(
                "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels) VALUES (?1, ?2, ?3, 60, 48000, 1)",
                params![rec, format!("{}/rec-{n}.wav", root.display()), db(at)],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO model_output (id, model_name, recording_id, created_on) VALUES (?1, 'bandEnergy', ?2, ?3)",
                params![out, rec, db(at)],
            )
            .unwrap();
            for d in 0..per_output {
                let id = format!("{out}-detection-{d:04}-0000-4000-8000-000000000000");
                conn.execute(
                    "INSERT INTO detection (id, location, detection_score, model_output_id) VALUES (?1, ?2, ?3, ?4)",
                    params![id, format!("[{}.123456789, 2000.987654, {}.423456789, 4000.5]", d, d), (d % 97) as f64 / 97.0, out],
                )
                .unwrap();
                for (key, value) in [
                    ("species", "Pipistrellus pipistrellus"),
                    ("call", "echolocation"),
                ] {
                    conn.execute(
                        "INSERT INTO predicted_tag (key, value, confidence_score, detection_id) VALUES (?1, ?2, 0.8765432, ?3)",
                        params![key, value, id],
                    )
                    .unwrap();
                }
            }
        }
        conn.execute_batch("COMMIT").unwrap();
    }

    /// Issue 22: detection messages averaged 12 KB on the link.
    #[test]
    fn a_recording_with_many_detections_makes_a_message_under_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        metadata(dir.path(), 1, 500, Timestamp::now());
        let out = after(dir.path(), 0, 10, &BTreeMap::new()).unwrap();
        let body = &out[0].body;
        let bytes = body.to_string().len() + ENVELOPE_BYTES;
        assert!(bytes <= MAX_DETECTION_MESSAGE_BYTES, "{bytes}: {body:#}");
        assert_eq!(body["detections_total"], 500);
        let listed = body["detections"].as_array().unwrap();
        assert!(
            !listed.is_empty() && listed.len() <= LISTED,
            "{}",
            listed.len()
        );
        // The highest scoring first, rounded.
        assert_eq!(listed[0]["detection_score"], 0.990);
        assert_eq!(listed[0]["location"]["coordinates"][0], 96.123);
        assert_eq!(listed[0]["prediction_type"], "event");
    }

    /// The curator stores acoupi's bounding-box object: it reaches the message in that shape,
    /// rounded; a shape too large or not numbers is left out.
    #[test]
    fn a_stored_bounding_box_keeps_its_shape() {
        let stored = r#"{"type": "BoundingBox", "coordinates": [1.23456, 2000.5555, 1.5, 4000.0]}"#;
        assert_eq!(
            location_of(Some(stored.into())),
            json!({"type": "BoundingBox", "coordinates": [1.235, 2000.556, 1.5, 4000.0]})
        );
        assert_eq!(
            location_of(Some("[0.5, 1000, 0.75, 2000]".into())),
            json!({"type": "BoundingBox", "coordinates": [0.5, 1000.0, 0.75, 2000.0]})
        );
        // What acoupi's BoundingBox refuses is no box: the detection is a presence.
        for bad in [
            "[0.5, 1000]",
            "[0.5, 2000, 0.4, 3000]",
            "[0.5, 2000, 0.6, 2000]",
            "[1, 2, 3, 4, 5]",
            r#"{"coordinates": ["a"]}"#,
            "{}",
            "7",
            "not json",
        ] {
            assert_eq!(location_of(Some(bad.into())), Value::Null, "{bad}");
        }
        assert_eq!(location_of(None), Value::Null);
    }

    /// Months of past outputs when spec.connect is added: the cursor starts a day back.
    #[test]
    fn the_first_cursor_starts_before_the_recent_outputs_only() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        metadata(dir.path(), 3 * 24 * 60, 0, now);
        let start = catch_up_from(dir.path(), now - jiff::SignedDuration::from_hours(24)).unwrap();
        let newer = after(dir.path(), start, 5_000, &BTreeMap::new()).unwrap();
        assert_eq!(
            newer.len(),
            24 * 60 + 1,
            "the one a day old to the microsecond is in"
        );
        let none = catch_up_from(dir.path(), now + jiff::SignedDuration::from_hours(1));
        assert_eq!(none, Some(3 * 24 * 60), "none recent: the newest");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(catch_up_from(empty.path(), now), None, "no metadata.db");
    }
}
