//! Detectors' findings as the connector sends them, read here with every other metadata.db
//! query: each model output in acoupi's model-output JSON (the model's name, when it was created, the recording with its deployment, the detections with
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
    // An older roost's layout is read once converted (its time text compares otherwise).
    if !in_acoupis_layout(&conn) {
        return None;
    }
    conn.query_row(
        "SELECT coalesce((SELECT min(rowid) FROM model_output WHERE created_on >= ?1) - 1,
                         (SELECT max(rowid) FROM model_output), 0)",
        [crate::storage::db_datetime(since)],
        |r| r.get(0),
    )
    .ok()
}

/// Model outputs after `after` (rowid), oldest first, at most `limit`; detections scoring under
/// their detector's entry in `min_scores` are left out. A row that does not decode (another
/// program's, in another form) is an output with no body and no detection: the cursor passes
/// it. `None` when metadata.db has no such table yet (no detector ever ran), or is not in
/// acoupi's layout yet (an older roost's, converted by the recorder or the curator when they
/// start: read before, its rows would be passed over unsent).
pub fn after(
    storage: &Path,
    after: i64,
    limit: usize,
    min_scores: &BTreeMap<String, f64>,
) -> Option<Vec<Output>> {
    let conn = open(storage).ok()?;
    if !in_acoupis_layout(&conn) {
        return None;
    }
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
            Ok((r.get::<_, i64>(0)?, decode(r).ok()))
        })
        .ok()?;
    let mut out = Vec::new();
    for row in rows.flatten() {
        let (rowid, Some((id, model, created, recording))) = row else {
            out.push(Output {
                rowid: row.0,
                body: Value::Null,
                detections: 0,
            });
            continue;
        };
        let min = min_scores.get(&model).copied().unwrap_or(0.0);
        let (detections, total) = detections_of(&conn, &id, min).unwrap_or_default();
        let tags = clip_tags(&conn, &id).unwrap_or_default();
        let mut body = json!({
            "id": id.to_string(),
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
            detections: total,
        });
    }
    Some(out)
}

/// Whether metadata.db is in acoupi's layout: this roost's, or acoupi's own store's.
fn in_acoupis_layout(conn: &Connection) -> bool {
    use crate::storage::schema::{Layout, VERSION, layout};
    matches!(layout(conn), Ok(Layout::Roost(VERSION) | Layout::Acoupi))
}

/// One row of [`after`]'s query: the model output's id, model, creation and its recording.
fn decode(r: &rusqlite::Row<'_>) -> rusqlite::Result<(uuid::Uuid, String, String, Value)> {
    let id_text = |i: usize| -> rusqlite::Result<Option<String>> {
        Ok(r.get::<_, Option<uuid::Uuid>>(i)?.map(|u| u.to_string()))
    };
    let recording = json!({
        "id": id_text(4)?,
        "path": r.get::<_, Option<String>>(5)?,
        "created_on": aware(&r.get::<_, String>(6)?),
        "datetime": r.get::<_, String>(6)?,
        "duration": r.get::<_, f64>(7)?,
        "samplerate": r.get::<_, i64>(8)?,
        "audio_channels": r.get::<_, i64>(9)?,
        "deployment": {
            "id": id_text(10)?,
            "name": r.get::<_, Option<String>>(11)?,
            "started_on": r.get::<_, Option<String>>(12)?.as_deref().map(aware),
            "latitude": r.get::<_, Option<f64>>(13)?,
            "longitude": r.get::<_, Option<f64>>(14)?,
        },
    });
    Ok((
        r.get::<_, uuid::Uuid>(1)?,
        r.get::<_, String>(2)?,
        r.get::<_, String>(3)?,
        recording,
    ))
}

/// A time as acoupi's models take it (aware, RFC 3339 with `Z`) from metadata.db's text; text
/// that is no time stays as it was (acoupi then refuses the message rather than misdate it).
fn aware(text: &str) -> Value {
    crate::storage::parse_db_datetime(text)
        .map_or_else(|| Value::from(text), |t| Value::from(t.to_string()))
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

/// A detection's box from acoupi's four columns as acoupi's `BoundingBox` (`{"type":
/// "BoundingBox", "coordinates": [start_s, low_hz, end_s, high_hz]}`), rounded; `null` when it
/// has none or acoupi's model would refuse it (end not after start, high not above low: a
/// span of no length, see [`crate::storage::schema::box_values`]).
fn location_of(cols: [Option<f64>; 4]) -> Value {
    match crate::storage::schema::box_from_columns(cols) {
        Some(b) if b[2] > b[0] && b[3] > b[1] => {
            json!({"type": "BoundingBox", "coordinates": b.map(rounded)})
        }
        _ => Value::Null,
    }
}

/// Which detections of a model output a message lists: those scoring at least `?2`, and
/// every file-level tag (a `presence` detection without a box: sent whatever its score, as
/// the file's tags always were).
const LISTED_DETECTIONS: &str = "FROM detection WHERE model_output_id = ?1
    AND (detection_score >= ?2 OR (prediction_type = 'presence' AND start_time_s IS NULL))";

/// The [`LISTED`] highest-scoring detections of `output` (see [`LISTED_DETECTIONS`]), and how
/// many there are, each as acoupi's `Detection` (`id`, `prediction_type`, `location`,
/// `detection_score`, `tags`).
fn detections_of(
    conn: &Connection,
    output: &uuid::Uuid,
    min_score: f64,
) -> rusqlite::Result<(Vec<Value>, usize)> {
    let total: i64 = conn.query_row(
        &format!("SELECT count(*) {LISTED_DETECTIONS}"),
        params![output, min_score],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, prediction_type, start_time_s, low_freq_hz, end_time_s, high_freq_hz,
                detection_score {LISTED_DETECTIONS}
         ORDER BY detection_score DESC, rowid LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![output, min_score, LISTED as i64], |r| {
        let kind: String = r.get(1)?;
        let cols = [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?];
        Ok((r.get::<_, uuid::Uuid>(0)?, kind, cols, r.get::<_, f64>(6)?))
    })?;
    let mut out = Vec::new();
    for (id, kind, cols, score) in rows.flatten() {
        out.push(json!({
            "id": id.to_string(),
            "prediction_type": kind,
            "location": location_of(cols),
            "detection_score": rounded(score),
            "tags": tags_of(conn, "t.detection_id = ?1", &id)?,
        }));
    }
    Ok((out, usize::try_from(total).unwrap_or(0)))
}

/// The file-level tags of a model output (its `presence` detections without a box), roost's
/// `tags` of the message.
fn clip_tags(conn: &Connection, output: &uuid::Uuid) -> rusqlite::Result<Value> {
    tags_of(
        conn,
        "d.model_output_id = ?1 AND d.prediction_type = 'presence' AND d.start_time_s IS NULL",
        output,
    )
}

fn tags_of(conn: &Connection, filter: &str, id: &uuid::Uuid) -> rusqlite::Result<Value> {
    let sql = format!(
        "SELECT substr(t.key, 1, ?2), substr(t.value, 1, ?2), t.confidence_score
         FROM predicted_tag t JOIN detection d ON d.id = t.detection_id
         WHERE {filter} ORDER BY t.confidence_score DESC, t.id LIMIT ?3"
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
        let dep = uuid::Uuid::from_u128(1);
        conn.execute(
            "INSERT INTO deployment (id, name, started_on) VALUES (?1, 'test', ?2)",
            params![dep, db(newest)],
        )
        .unwrap();
        for n in 0..outputs {
            let at = newest - jiff::SignedDuration::from_mins(outputs - 1 - n);
            let (rec, out) = (
                uuid::Uuid::from_u128(1 << 64 | n as u128),
                uuid::Uuid::from_u128(2 << 64 | n as u128),
            );
            conn.execute(
                "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id) VALUES (?1, ?2, ?3, 60, 48000, 1, ?4)",
                params![rec, format!("{}/rec-{n}.wav", root.display()), db(at), dep],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO model_output (id, model_name, recording_id, created_on) VALUES (?1, 'bandEnergy', ?2, ?3)",
                params![out, rec, db(at)],
            )
            .unwrap();
            for d in 0..per_output {
                let id = uuid::Uuid::from_u128(3 << 96 | (n as u128) << 32 | d as u128);
                conn.execute(
                    "INSERT INTO detection (id, prediction_type, start_time_s, low_freq_hz, end_time_s, high_freq_hz, detection_score, model_output_id)
                     VALUES (?1, 'event', ?2, 2000.987654, ?3, 4000.5, ?4, ?5)",
                    params![id, d as f64 + 0.123456789, d as f64 + 0.423456789, (d % 97) as f64 / 97.0, out],
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

    /// A box in acoupi's four columns reaches the message as acoupi's `BoundingBox`, rounded;
    /// what acoupi's model refuses (a span of no length, a missing corner) is no box.
    #[test]
    fn a_stored_box_becomes_acoupis_bounding_box() {
        let s = Some;
        assert_eq!(
            location_of([s(1.23456), s(2000.5555), s(1.5), s(4000.0)]),
            json!({"type": "BoundingBox", "coordinates": [1.235, 2000.556, 1.5, 4000.0]})
        );
        for bad in [
            [s(0.5), s(1000.0), None, s(2000.0)],
            [s(0.5), s(2000.0), s(0.6), None],
            [None, None, None, None],
            [None, s(1.0), s(2.0), s(3.0)],
        ] {
            assert_eq!(location_of(bad), Value::Null, "{bad:?}");
        }
        // What roost writes for a click (end = start) and a pure tone (high = low).
        for point in [[0.5, 1000.0, 0.5, 3000.0], [0.5, 1000.0, 0.7, 1000.0]] {
            let cols = crate::storage::schema::box_values(point);
            assert_eq!(location_of(cols), Value::Null, "{point:?}");
            assert_eq!(crate::storage::schema::box_from_columns(cols), Some(point));
        }
    }

    /// An older roost's metadata.db is not read until it is converted (its rows would be
    /// passed over unsent); a row another program wrote in another form is passed by the
    /// cursor, sending nothing, instead of holding every output after it.
    #[test]
    fn an_older_layout_waits_and_an_odd_row_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        metadata(dir.path(), 3, 1, now);
        let conn = Connection::open(dir.path().join(crate::storage::DB_FILE)).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO model_output (id, model_name, recording_id, created_on)
                 SELECT 'text-id', 'other', id, '2026-01-01T00:00:00+00:00'
                 FROM recording ORDER BY rowid LIMIT 1;",
        )
        .unwrap();
        metadata_more(&conn, now);
        let out = after(dir.path(), 0, 10, &BTreeMap::new()).unwrap();
        let rowids: Vec<i64> = out.iter().map(|o| o.rowid).collect();
        assert_eq!(rowids.len(), 5, "{rowids:?}");
        assert_eq!(out[3].body, Value::Null, "the odd row, passed");
        assert_eq!(out[3].detections, 0);
        assert_eq!(out[4].body["name_model"], "bandEnergy", "the one after it");
        conn.execute("UPDATE roost_schema SET version = 6", [])
            .unwrap();
        assert_eq!(after(dir.path(), 0, 10, &BTreeMap::new()), None);
        assert_eq!(catch_up_from(dir.path(), now), None);
    }

    /// One more model output of the first recording, after the others.
    fn metadata_more(conn: &Connection, at: Timestamp) {
        conn.execute(
            "INSERT INTO model_output (id, model_name, recording_id, created_on)
             SELECT ?1, 'bandEnergy', id, ?2 FROM recording ORDER BY rowid LIMIT 1",
            params![uuid::Uuid::from_u128(99), crate::storage::db_datetime(at)],
        )
        .unwrap();
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
