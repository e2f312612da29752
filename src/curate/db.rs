//! The curator's reads and writes in metadata.db. A detector's findings, and the mark that it
//! finished a recording (`roost_analysis`), are one transaction: a recording is analysed
//! exactly once per detector across kill -9 (nothing committed: analysed again; committed: never
//! again). Rows of recordings are never removed: a deleted file clears `path`.

use std::path::PathBuf;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::keep::Found;
use crate::detect::findings::{Findings, PredictedTag};
use crate::storage::{db_datetime, new_uuid, parse_db_datetime};

/// A registered recording whose file is still there.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    /// Row id.
    pub id: String,
    /// Its file.
    pub path: PathBuf,
    /// When it started.
    pub start: Timestamp,
    /// Length, s.
    pub duration_s: f64,
    /// Sample rate, Hz.
    pub samplerate_hz: u32,
    /// Whether its row says protected.
    pub protected: bool,
}

const RECORDING_COLUMNS: &str =
    "r.id, r.path, r.datetime, r.duration_s, r.samplerate_hz, r.protected";

fn recording(row: &rusqlite::Row<'_>) -> rusqlite::Result<Recording> {
    let datetime: String = row.get(2)?;
    Ok(Recording {
        id: row.get(0)?,
        path: PathBuf::from(row.get::<_, String>(1)?),
        start: parse_db_datetime(&datetime).unwrap_or(Timestamp::UNIX_EPOCH),
        duration_s: row.get(3)?,
        samplerate_hz: row.get(4)?,
        protected: row.get::<_, i64>(5)? != 0,
    })
}

/// Records when each detector was first seen, and returns since when it looks at recordings:
/// a detector added to a deployment analyses the recordings that start after it was added, not
/// the whole history.
pub fn detector_since(
    conn: &Connection,
    name: &str,
    now: Timestamp,
) -> rusqlite::Result<Timestamp> {
    conn.execute(
        "INSERT INTO roost_detector (name, since) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
        params![name, db_datetime(now)],
    )?;
    let since: String = conn.query_row(
        "SELECT since FROM roost_detector WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?;
    Ok(parse_db_datetime(&since).unwrap_or(now))
}

/// The oldest `limit` recordings `detector` has not finished, starting at or after `since`.
pub fn pending(
    conn: &Connection,
    detector: &str,
    since: Timestamp,
    limit: usize,
) -> rusqlite::Result<Vec<Recording>> {
    let sql = format!(
        "SELECT {RECORDING_COLUMNS} FROM recording r
         WHERE r.path IS NOT NULL AND r.datetime >= ?2 AND NOT EXISTS (
             SELECT 1 FROM roost_analysis a WHERE a.recording_id = r.id AND a.detector = ?1
             AND a.outcome IN ('done', 'failed'))
         ORDER BY r.datetime LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![detector, db_datetime(since), limit as i64],
        recording,
    )?;
    rows.collect()
}

/// How many recordings wait for `detector`.
pub fn backlog(conn: &Connection, detector: &str, since: Timestamp) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM recording r
         WHERE r.path IS NOT NULL AND r.datetime >= ?2 AND NOT EXISTS (
             SELECT 1 FROM roost_analysis a WHERE a.recording_id = r.id AND a.detector = ?1
             AND a.outcome IN ('done', 'failed'))",
        params![detector, db_datetime(since)],
        |r| r.get::<_, i64>(0).map(|n| n as u64),
    )
}

/// Attempts made so far on `recording` by `detector`.
pub fn attempts(conn: &Connection, recording: &str, detector: &str) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT attempts FROM roost_analysis WHERE recording_id = ?1 AND detector = ?2",
        params![recording, detector],
        |r| r.get(0),
    )
    .optional()
    .map(|a| a.unwrap_or(0))
}

/// Writes what `detector` found in `recording` (acoupi's model_output, detection and
/// predicted_tag rows) and marks it done, in one transaction. Returns the model output's id.
pub fn record_findings(
    conn: &mut Connection,
    recording: &str,
    detector: &str,
    findings: &Findings,
    now: Timestamp,
) -> rusqlite::Result<String> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let output_id = new_uuid();
    tx.execute(
        "INSERT INTO model_output (id, model_name, recording_id, created_on) VALUES (?1, ?2, ?3, ?4)",
        params![output_id, detector, recording, db_datetime(now)],
    )?;
    insert_tags(&tx, &findings.tags, None, Some(&output_id))?;
    for d in &findings.detections {
        let detection_id = new_uuid();
        let location = serde_json::json!({"type": "BoundingBox", "coordinates": d.location});
        tx.execute(
            "INSERT INTO detection (id, location, detection_score, model_output_id) VALUES (?1, ?2, ?3, ?4)",
            params![detection_id, location.to_string(), d.detection_score, output_id],
        )?;
        insert_tags(&tx, &d.tags, Some(&detection_id), None)?;
    }
    tx.execute(
        "INSERT INTO roost_analysis (recording_id, detector, outcome, attempts, finished_on)
         VALUES (?1, ?2, 'done', 1, ?3)
         ON CONFLICT(recording_id, detector) DO UPDATE SET outcome = 'done',
             attempts = attempts + 1, finished_on = ?3, error_code = NULL, error = NULL",
        params![recording, detector, db_datetime(now)],
    )?;
    tx.commit()?;
    Ok(output_id)
}

fn insert_tags(
    tx: &rusqlite::Transaction<'_>,
    tags: &[PredictedTag],
    detection: Option<&str>,
    output: Option<&str>,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO predicted_tag (key, value, confidence_score, detection_id, model_output_id)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for t in tags {
        stmt.execute(params![
            t.key,
            t.value,
            t.confidence_score,
            detection,
            output
        ])?;
    }
    Ok(())
}

/// Counts a failed attempt of `detector` on `recording`; `give_up` marks it failed for good, so
/// the queue goes on without it.
pub fn record_failure(
    conn: &Connection,
    recording: &str,
    detector: &str,
    code: &str,
    error: &str,
    give_up: bool,
    now: Timestamp,
) -> rusqlite::Result<()> {
    let outcome = if give_up { "failed" } else { "retry" };
    conn.execute(
        "INSERT INTO roost_analysis (recording_id, detector, outcome, attempts, error_code, error, finished_on)
         VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6)
         ON CONFLICT(recording_id, detector) DO UPDATE SET outcome = ?3, attempts = attempts + 1,
             error_code = ?4, error = ?5, finished_on = ?6",
        params![recording, detector, outcome, code, error, db_datetime(now)],
    )
    .map(drop)
}

/// Recordings not yet decided on whose every detector (of `detectors`) is done or failed,
/// oldest first.
pub fn undecided(
    conn: &Connection,
    detectors: &[(String, Timestamp)],
    limit: usize,
) -> rusqlite::Result<Vec<Recording>> {
    let sql = format!(
        "SELECT {RECORDING_COLUMNS} FROM recording r
         WHERE r.path IS NOT NULL AND NOT EXISTS (SELECT 1 FROM roost_keep k WHERE k.recording_id = r.id)
         ORDER BY r.datetime LIMIT ?1"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows: Vec<Recording> = stmt
        .query_map(params![limit as i64], recording)?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for r in rows {
        if analysed_by_all(conn, &r, detectors)? {
            out.push(r);
        } else {
            // Oldest first: a recording still waiting holds the ones after it too.
            break;
        }
    }
    Ok(out)
}

/// Whether every detector that looks at `r` has finished it.
pub fn analysed_by_all(
    conn: &Connection,
    r: &Recording,
    detectors: &[(String, Timestamp)],
) -> rusqlite::Result<bool> {
    for (name, since) in detectors {
        if r.start < *since {
            continue;
        }
        let done: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM roost_analysis WHERE recording_id = ?1 AND detector = ?2
             AND outcome IN ('done', 'failed'))",
            params![r.id, name],
            |row| row.get(0),
        )?;
        if !done {
            return Ok(false);
        }
    }
    Ok(true)
}

/// When the recording before `r` ended (by start time; any row, a deleted one too: its rows
/// stay); `None` when `r` is the first.
pub fn previous_end(conn: &Connection, r: &Recording) -> rusqlite::Result<Option<Timestamp>> {
    let row: Option<(String, f64)> = conn
        .prepare_cached(
            "SELECT datetime, duration_s FROM recording WHERE datetime < ?1
             ORDER BY datetime DESC LIMIT 1",
        )?
        .query_row([crate::storage::db_datetime(r.start)], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    Ok(row.and_then(|(start, duration_s)| {
        let start = crate::storage::parse_db_datetime(&start)?;
        start
            .checked_add(jiff::SignedDuration::from_secs_f64(duration_s.max(0.0)))
            .ok()
    }))
}

/// The rowid of a recording's newest `model_output`; `None` when it has none.
pub fn last_model_output(conn: &Connection, recording: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT max(rowid) FROM model_output WHERE recording_id = ?1")?
        .query_row([recording], |r| r.get(0))
}

/// Every detection of a recording, with its tag values.
pub fn found_in(conn: &Connection, recording: &str) -> rusqlite::Result<Vec<Found>> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.model_name, d.detection_score, group_concat(t.value, char(31))
         FROM model_output m JOIN detection d ON d.model_output_id = m.id
         LEFT JOIN predicted_tag t ON t.detection_id = d.id
         WHERE m.recording_id = ?1 GROUP BY d.id",
    )?;
    let rows = stmt.query_map([recording], |r| {
        let tags: Option<String> = r.get(2)?;
        Ok(Found {
            detector: r.get(0)?,
            score: r.get(1)?,
            tags: tags
                .map(|t| t.split('\u{1f}').map(str::to_string).collect())
                .unwrap_or_default(),
        })
    })?;
    rows.collect()
}

/// Records the keep decision on a recording (`kept_by` `None`: deleted by the rules).
pub fn decided(
    conn: &Connection,
    recording: &str,
    kept_by: Option<&str>,
    now: Timestamp,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO roost_keep (recording_id, kept_by, decided_on) VALUES (?1, ?2, ?3)
         ON CONFLICT(recording_id) DO NOTHING",
        params![recording, kept_by, db_datetime(now)],
    )
    .map(drop)
}

/// The file of a recording is gone: `path` NULL, when and why (see `Storage::mark_deleted`).
pub fn mark_deleted(
    conn: &Connection,
    recording: &str,
    by: &str,
    now: Timestamp,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE recording SET path = NULL, deleted_on = ?2, deleted_by = ?3
         WHERE id = ?1 AND path IS NOT NULL",
        params![recording, now.to_string(), by],
    )
    .map(drop)
}

/// Every recording whose file is there, oldest first.
pub fn present(conn: &Connection) -> rusqlite::Result<Vec<Recording>> {
    let sql = format!(
        "SELECT {RECORDING_COLUMNS} FROM recording r WHERE r.path IS NOT NULL ORDER BY r.datetime"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], recording)?;
    rows.collect()
}

/// Detections and model outputs created since `since`, per detector: (detector, outputs,
/// detections).
pub fn detections_since(
    conn: &Connection,
    since: Timestamp,
) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.model_name, count(d.id) FROM model_output m LEFT JOIN detection d ON d.model_output_id = m.id
         WHERE m.created_on >= ?1 GROUP BY m.model_name",
    )?;
    let rows = stmt.query_map([db_datetime(since)], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// Files deleted by each rule or cause (`deleted_by`), all time.
pub fn deleted_by_rule(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT deleted_by, count(*) FROM recording WHERE deleted_by IS NOT NULL GROUP BY deleted_by ORDER BY deleted_by",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect()
}

/// (done, failed) recordings of `detector`.
pub fn outcomes(conn: &Connection, detector: &str) -> rusqlite::Result<(u64, u64)> {
    conn.query_row(
        "SELECT coalesce(sum(outcome = 'done'), 0), coalesce(sum(outcome = 'failed'), 0)
         FROM roost_analysis WHERE detector = ?1",
        [detector],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
}

/// Whether a detector gave up on `recording` (its findings are unknown).
pub fn failed_any(conn: &Connection, recording: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM roost_analysis WHERE recording_id = ?1 AND outcome = 'failed')",
        [recording],
        |r| r.get(0),
    )
}
