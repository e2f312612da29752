//! The curator's reads and writes in metadata.db (its queries live here, with the schema and
//! every other query, so that one room knows the tables). A detector's findings, and the mark that it
//! finished a recording (`roost_analysis`), are one transaction: a recording is analysed
//! exactly once per detector across kill -9 (nothing committed: analysed again; committed: never
//! again). Rows of recordings are never removed: a deleted file clears `path`.

use std::path::PathBuf;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::findings::{Findings, PredictedTag};
use crate::storage::{db_datetime, new_uuid, parse_db_datetime};
use uuid::Uuid;

/// The curator's connection to metadata.db of the storage at `root` (made and laid out by
/// [`crate::storage::Storage::open`] first): waits up to 5 s on a writer's lock; WAL (set by
/// the storage) with `synchronous = NORMAL` for findings: a power cut may lose the last ones,
/// which are done again while their file is there. Every commit after which a file is deleted
/// is FULL ([`crate::storage::durably`]), which puts what came before on the card too.
///
/// # Errors
/// SQLite's, when the file cannot be opened.
pub fn open(root: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(root.join(crate::storage::DB_FILE))?;
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    let _ = conn.pragma_update(None, "synchronous", "NORMAL");
    Ok(conn)
}

/// What one detection of a recording is, for the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// The detector (`model_name`).
    pub detector: String,
    /// Its score, 0..1.
    pub score: f64,
    /// Its tag values.
    pub tags: Vec<String>,
}

/// The device clock at one reading (the `roost_clock` row).
#[derive(Clone, Debug, PartialEq)]
pub struct Anchor {
    /// The boot of the reading.
    pub boot_id: String,
    /// `CLOCK_BOOTTIME` at the reading, s.
    pub boottime_s: f64,
    /// Device seconds at the reading.
    pub device_s: f64,
    /// The wall clock at the reading.
    pub wall: Timestamp,
    /// Whether it was synchronised then.
    pub wall_synced: bool,
}

/// A registered recording whose file is still there.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    /// Row id (a UUID, 16 bytes in metadata.db).
    pub id: Uuid,
    /// SQLite's rowid: insertion order, which no clock step reorders.
    pub rowid: i64,
    /// Its file.
    pub path: PathBuf,
    /// When it started (wall clock; the Unix epoch when the row's text is no time).
    pub start: Timestamp,
    /// Length, s, as the row says (untrusted: see [`Recording::implausible`]).
    pub duration_s: f64,
    /// Sample rate, Hz, as the row says.
    pub samplerate_hz: u32,
    /// Channels, as the row says.
    pub audio_channels: u16,
    /// Whether its row says protected.
    pub protected: bool,
    /// When it was made on the device clock (`roost_age`), once the curator has seen it.
    pub made_device_s: Option<f64>,
}

impl Recording {
    /// Why the row's numbers cannot describe a recording (a sample rate of 0, a duration that
    /// is no number): `None` when they can. Such a recording is set aside, never computed with.
    pub fn implausible(&self) -> Option<String> {
        crate::storage::implausible(self.duration_s, self.samplerate_hz, self.audio_channels)
    }
}

/// SQL: the recording `r`'s file is one roost named (`.../YYYYMMDDTHHMMSS.ffffffZ.wav`, or
/// `...Z-2.wav`), as [`crate::curate::judge::roosts_file`] says in Rust. Another program's recordings
/// in a shared metadata.db (acoupi's) are never analysed, stamped or counted.
pub const ROOSTS_FILE: &str = "r.path GLOB '*[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]T[0-9][0-9][0-9][0-9][0-9][0-9].[0-9]*Z*.wav'";

/// Whether roost named the recording's file (`YYYYMMDDTHHMMSS.ffffffZ.wav`): rows another
/// program wrote into a shared metadata.db (acoupi names its files otherwise) are not roost's
/// to analyse, count or delete. By name, not by folder: the storage may be reached through
/// another path. The same test in SQL: [`ROOSTS_FILE`].
pub fn roosts_file(rec: &Recording) -> bool {
    crate::storage::start_from_file_name(&rec.path).is_some()
}

const RECORDING_COLUMNS: &str = "r.id, r.rowid, r.path, r.datetime, r.duration_s, r.samplerate_hz, r.audio_channels, r.protected,
     (SELECT g.made_device_s FROM roost_age g WHERE g.recording_id = r.id)";

fn recording(row: &rusqlite::Row<'_>) -> rusqlite::Result<Recording> {
    let datetime: String = match row.get_ref(3)? {
        rusqlite::types::ValueRef::Text(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    // Numbers of any SQLite type are read leniently: a row another program wrote with text
    // or out-of-range values is described as implausible, never an error for all others.
    let number = |i: usize| -> rusqlite::Result<f64> {
        Ok(match row.get_ref(i)? {
            rusqlite::types::ValueRef::Integer(n) => n as f64,
            rusqlite::types::ValueRef::Real(x) => x,
            _ => f64::NAN,
        })
    };
    let whole = |x: f64, max: f64| {
        if x.is_finite() && (0.0..=max).contains(&x) {
            x
        } else {
            0.0
        }
    };
    Ok(Recording {
        id: row.get(0)?,
        rowid: row.get(1)?,
        path: match row.get_ref(2)? {
            rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
                PathBuf::from(String::from_utf8_lossy(b).into_owned())
            }
            _ => PathBuf::new(),
        },
        start: parse_db_datetime(&datetime).unwrap_or(Timestamp::UNIX_EPOCH),
        duration_s: number(4)?,
        samplerate_hz: whole(number(5)?, f64::from(u32::MAX)) as u32,
        audio_channels: whole(number(6)?, f64::from(u16::MAX)) as u16,
        protected: number(7)? != 0.0,
        made_device_s: Some(number(8)?).filter(|m| m.is_finite()),
    })
}

/// The rowid after which a detector first seen now looks at recordings: just before the first
/// recording of the running deployment `name` that the curator has not seen yet (no
/// `roost_age` stamp); `None` when it has seen them all (then: only what comes).
/// `stamped_until`: every recording up to it has its stamp (see [`stamped_until`]), so only
/// the rows after it are read.
pub fn first_unseen_rowid_of(
    conn: &Connection,
    deployment: &str,
    stamped_until: i64,
) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT min(r.rowid) - 1 FROM recording r JOIN deployment d ON d.id = r.deployment_id
         WHERE r.rowid > ?2 AND d.name = ?1 AND d.ended_on IS NULL
           AND NOT EXISTS (SELECT 1 FROM roost_age g WHERE g.recording_id = r.id)",
        params![deployment, stamped_until],
        |r| r.get(0),
    )
}

/// Records when each detector was first seen and returns the rowid after which it analyses
/// recordings: `from` when given (a storage new to the curator), else the newest row now: a
/// detector added to a deployment analyses the recordings made after it was added, not the
/// whole history. Insertion order, not time: no clock step hides a recording from it.
pub fn detector_since(
    conn: &Connection,
    name: &str,
    from: Option<i64>,
    now: Timestamp,
) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO roost_detector (name, since, since_rowid)
         VALUES (?1, ?2, coalesce(?3, (SELECT max(rowid) FROM recording), 0))
         ON CONFLICT(name) DO NOTHING",
        params![name, db_datetime(now), from],
    )?;
    // CAST: a value another program wrote as text or real still counts as a row number.
    conn.query_row(
        "SELECT coalesce(CAST(since_rowid AS INTEGER), 0) FROM roost_detector WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
}

/// Every detector seen on this storage with its `since_rowid` (for `roost plan`).
pub fn detectors_seen(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    conn.prepare("SELECT name, coalesce(CAST(since_rowid AS INTEGER), 0) FROM roost_detector")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// The oldest `limit` recordings (insertion order) after rowid `after` that `detector` has not
/// finished.
pub fn pending(
    conn: &Connection,
    detector: &str,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Recording>> {
    let sql = format!(
        "SELECT {RECORDING_COLUMNS} FROM recording r
         WHERE r.rowid > ?2 AND r.path IS NOT NULL AND typeof(r.id) = 'blob' AND length(r.id) = 16
           AND {ROOSTS_FILE} AND NOT EXISTS (
             SELECT 1 FROM roost_analysis a WHERE a.recording_id = r.id AND a.detector = ?1
             AND a.outcome IN ('done', 'failed'))
         ORDER BY r.rowid LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![detector, after, limit as i64], recording)?;
    crate::storage::skip_foreign_rows(rows)
}

/// How many recordings after rowid `since` wait for `detector`, and the start of the oldest.
pub fn backlog(
    conn: &Connection,
    detector: &str,
    since: i64,
) -> rusqlite::Result<(u64, Option<Timestamp>)> {
    conn.query_row(
        &format!(
            "SELECT count(*), min(r.datetime) FROM recording r
             WHERE r.rowid > ?2 AND r.path IS NOT NULL AND typeof(r.id) = 'blob'
               AND length(r.id) = 16 AND {ROOSTS_FILE} AND NOT EXISTS (
                 SELECT 1 FROM roost_analysis a WHERE a.recording_id = r.id AND a.detector = ?1
                 AND a.outcome IN ('done', 'failed'))"
        ),
        params![detector, since],
        |r| {
            let oldest: Option<String> = r.get(1)?;
            Ok((
                r.get::<_, i64>(0)? as u64,
                oldest.as_deref().and_then(parse_db_datetime),
            ))
        },
    )
}

/// Attempts made so far on `recording` by `detector`.
pub fn attempts(conn: &Connection, recording: &Uuid, detector: &str) -> rusqlite::Result<u32> {
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
/// Each located detection is an `event` with its box in acoupi's four columns
/// ([`crate::storage::schema::box_values`]); each file-level tag, for which acoupi's model has
/// no place of its own, is a `presence` detection without a box, scored by the tag's
/// confidence (acoupi's way to say "this is in the recording").
pub fn record_findings(
    conn: &mut Connection,
    recording: &Uuid,
    detector: &str,
    findings: &Findings,
    now: Timestamp,
) -> rusqlite::Result<Uuid> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let output_id = new_uuid();
    tx.execute(
        "INSERT INTO model_output (id, model_name, recording_id, created_on) VALUES (?1, ?2, ?3, ?4)",
        params![output_id, detector, recording, db_datetime(now)],
    )?;
    for d in &findings.detections {
        let b = crate::storage::schema::box_values(d.location);
        insert_detection(&tx, &output_id, "event", b, d.detection_score, &d.tags)?;
    }
    for t in &findings.tags {
        let score = t.confidence_score.clamp(0.0, 1.0);
        insert_detection(
            &tx,
            &output_id,
            "presence",
            [None; 4],
            score,
            std::slice::from_ref(t),
        )?;
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

/// One `detection` row (box in acoupi's column order: start, low, end, high) and its tags.
fn insert_detection(
    tx: &rusqlite::Transaction<'_>,
    output: &Uuid,
    prediction_type: &str,
    [start, low, end, high]: [Option<f64>; 4],
    score: f64,
    tags: &[PredictedTag],
) -> rusqlite::Result<()> {
    let id = new_uuid();
    tx.prepare_cached(
        "INSERT INTO detection (id, prediction_type, start_time_s, low_freq_hz, end_time_s,
             high_freq_hz, detection_score, model_output_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        id,
        prediction_type,
        start,
        low,
        end,
        high,
        score,
        output
    ])?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO predicted_tag (key, value, confidence_score, detection_id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for t in tags {
        stmt.execute(params![t.key, t.value, t.confidence_score, id])?;
    }
    Ok(())
}

/// Counts a failed attempt of `detector` on `recording`; `give_up` marks it failed for good, so
/// the queue goes on without it.
pub fn record_failure(
    conn: &Connection,
    recording: &Uuid,
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

/// Recordings not yet decided on after rowid `after`, oldest (insertion order) first, up to the
/// first that a detector of `detectors` (name, since rowid) has not finished: a recording still
/// waiting holds the ones after it. `after` is the curator's cursor: every recording up to it
/// is decided, so no look re-reads what was decided before.
pub fn undecided(
    conn: &Connection,
    after: i64,
    detectors: &[(String, i64)],
    limit: usize,
) -> rusqlite::Result<Vec<Recording>> {
    let sql = format!(
        "SELECT {RECORDING_COLUMNS} FROM recording r
         WHERE r.rowid > ?1 AND r.path IS NOT NULL AND typeof(r.id) = 'blob' AND length(r.id) = 16
           AND NOT EXISTS (SELECT 1 FROM roost_keep k WHERE k.recording_id = r.id)
         ORDER BY r.rowid LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows: Vec<Recording> = crate::storage::skip_foreign_rows(
        stmt.query_map(params![after, limit as i64], recording)?,
    )?;
    let mut out = Vec::new();
    for r in rows {
        // Another program's recording is never analysed: it waits for no detector.
        if !roosts_file(&r) || analysed_by_all(conn, &r, detectors)? {
            out.push(r);
        } else {
            break;
        }
    }
    Ok(out)
}

/// The rowid up to which every recording is decided: the newest decided one, found from the
/// end (decisions are made in rowid order; only what came since is read).
pub fn decided_until(conn: &Connection) -> rusqlite::Result<i64> {
    // Nothing decided yet (keep rules new to a storage): no walk through every row.
    conn.query_row(
        "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM roost_keep) THEN 0 ELSE coalesce((
             SELECT r.rowid FROM recording r
             WHERE EXISTS (SELECT 1 FROM roost_keep k WHERE k.recording_id = r.id)
             ORDER BY r.rowid DESC LIMIT 1), 0) END",
        [],
        |r| r.get(0),
    )
}

/// How many recordings after rowid `after` whose file is there are not decided yet (counted
/// in SQL, for `roost plan`'s "more wait").
pub fn undecided_after(conn: &Connection, after: i64) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM recording r
         WHERE r.rowid > ?1 AND r.path IS NOT NULL AND typeof(r.id) = 'blob' AND length(r.id) = 16
           AND NOT EXISTS (SELECT 1 FROM roost_keep k WHERE k.recording_id = r.id)",
        [after],
        |r| Ok(r.get::<_, i64>(0)?.max(0) as u64),
    )
}

/// Whether every detector that looks at `r` (those whose `since` rowid lies before it) has
/// finished it (done or failed).
pub fn analysed_by_all(
    conn: &Connection,
    r: &Recording,
    detectors: &[(String, i64)],
) -> rusqlite::Result<bool> {
    for (name, since) in detectors {
        if r.rowid <= *since {
            continue;
        }
        if !finished(conn, &r.id, name, &["done", "failed"])? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The detectors of `detectors` that finished `recording` with their findings (`done`).
pub fn analysed_by(
    conn: &Connection,
    recording: &Uuid,
    detectors: &[String],
) -> rusqlite::Result<Vec<String>> {
    let mut out = Vec::new();
    for name in detectors {
        if finished(conn, recording, name, &["done"])? {
            out.push(name.clone());
        }
    }
    Ok(out)
}

fn finished(
    conn: &Connection,
    recording: &Uuid,
    detector: &str,
    outcomes: &[&str],
) -> rusqlite::Result<bool> {
    let outcome: Option<String> = conn
        .prepare_cached(
            "SELECT outcome FROM roost_analysis WHERE recording_id = ?1 AND detector = ?2",
        )?
        .query_row(params![recording, detector], |row| row.get(0))
        .optional()?;
    Ok(outcome.is_some_and(|o| outcomes.contains(&o.as_str())))
}

/// When the recording before `r` ended (by start time; any row, a deleted one too: its rows
/// stay); `None` when `r` is the first.
pub fn previous_end(conn: &Connection, r: &Recording) -> rusqlite::Result<Option<Timestamp>> {
    // The neighbour may be any row, a deleted one or one another program wrote: its values
    // are read as they come, and what is not a time or a number ends nothing.
    let row: Option<(Option<String>, Option<f64>)> = conn
        .prepare_cached(
            "SELECT datetime, duration_s FROM recording WHERE datetime < ?1
             ORDER BY datetime DESC LIMIT 1",
        )?
        .query_row([crate::storage::db_datetime(r.start)], |row| {
            let text = row.get::<_, String>(0).ok();
            let number = match row.get_ref(1)? {
                rusqlite::types::ValueRef::Real(x) => Some(x),
                rusqlite::types::ValueRef::Integer(n) => Some(n as f64),
                _ => None,
            };
            Ok((text, number))
        })
        .optional()?;
    Ok(row.and_then(|(start, duration_s)| {
        crate::storage::end_of(crate::storage::parse_db_datetime(&start?)?, duration_s?)
    }))
}

/// The rowid of a recording's newest `model_output`; `None` when it has none.
pub fn last_model_output(conn: &Connection, recording: &Uuid) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT max(rowid) FROM model_output WHERE recording_id = ?1")?
        .query_row([recording], |r| r.get(0))
}

/// Every detection of a recording, with its tag values.
pub fn found_in(conn: &Connection, recording: &Uuid) -> rusqlite::Result<Vec<Found>> {
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
    crate::storage::skip_foreign_rows(rows)
}

/// The keep decision made on a recording (`Some(kept_by)`; a deleted one has a NULL
/// `kept_by`, and no file), `None` when none was made.
pub fn decision(conn: &Connection, recording: &Uuid) -> rusqlite::Result<Option<Option<String>>> {
    conn.prepare_cached("SELECT kept_by FROM roost_keep WHERE recording_id = ?1")?
        .query_row([recording], |r| r.get(0))
        .optional()
}

/// Records the keep decision on a recording (`kept_by` `None`: deleted by the rules).
pub fn decided(
    conn: &Connection,
    recording: &Uuid,
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
pub use crate::storage::mark_deleted;

/// Notes, in the transaction that marks their rows deleted, the files to remove after its
/// commit (`roost_unlink`).
pub fn unlink_later(tx: &Connection, paths: &[&std::path::Path]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached("INSERT OR IGNORE INTO roost_unlink (path) VALUES (?1)")?;
    for p in paths {
        stmt.execute([p.to_string_lossy()])?;
    }
    Ok(())
}

/// The files whose deletion was decided and not yet confirmed done (at most `limit`).
pub fn unlinks_owed(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<std::path::PathBuf>> {
    conn.prepare_cached("SELECT path FROM roost_unlink LIMIT ?1")?
        .query_map([limit as i64], |r| {
            r.get::<_, String>(0).map(std::path::PathBuf::from)
        })?
        .collect()
}

/// Forgets files that are gone now.
pub fn unlinked(conn: &mut Connection, paths: &[std::path::PathBuf]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached("DELETE FROM roost_unlink WHERE path = ?1")?;
        for p in paths {
            stmt.execute([p.to_string_lossy()])?;
        }
    }
    tx.commit()
}

/// Stamps, on the device clock, when each recording after rowid `after` that has none yet was
/// made (see [`crate::curate::age::made_at`]), with the bytes its file occupies and its skew (wall
/// start minus made); at most `limit` rows. Returns the newest rowid looked at and how many
/// rows were read.
pub fn stamp_made(
    conn: &Connection,
    after: i64,
    made_at: impl Fn(Timestamp, f64) -> f64,
    limit: usize,
) -> rusqlite::Result<(i64, usize)> {
    let sql = format!(
        "SELECT {RECORDING_COLUMNS} FROM recording r WHERE r.rowid > ?1 AND typeof(r.id) = 'blob'
           AND length(r.id) = 16 AND (r.path IS NULL OR {ROOSTS_FILE})
         ORDER BY r.rowid LIMIT ?2"
    );
    // Rows of another program (an id that is no UUID's 16 bytes, a file roost did not name)
    // are not read at all: a batch of them alone would read as the end of the table and the
    // cursor would never pass them.
    let rows: Vec<Recording> = crate::storage::skip_foreign_rows(
        conn.prepare_cached(&sql)?
            .query_map(params![after, limit as i64], recording)?,
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO roost_age (recording_id, made_device_s, bytes, skew_s) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(recording_id) DO NOTHING",
    )?;
    let mut newest = after;
    for r in &rows {
        newest = newest.max(r.rowid);
        if r.made_device_s.is_none() {
            let made = made_at(r.start, r.duration_s);
            let bytes = crate::storage::disk_bytes(&r.path) as i64;
            insert.execute(params![r.id, made, bytes, skew(r.start, made)])?;
        }
    }
    Ok((newest, rows.len()))
}

/// A recording's wall-clock start (Unix seconds) minus when it was made on the device clock.
/// Every recording stamped while the clock ran true has about today's skew
/// ([`clock_skew`]); one that differs by more than [`crate::curate::age::DISAGREE_AFTER_S`] was made
/// before a clock step (or seen late).
pub fn skew(start: Timestamp, made_device_s: f64) -> f64 {
    start.as_millisecond() as f64 / 1000.0 - made_device_s
}

/// Today's skew: the wall clock (Unix seconds) minus the device clock.
pub fn clock_skew(wall_now: Timestamp, device_now: f64) -> f64 {
    wall_now.as_millisecond() as f64 / 1000.0 - device_now
}

/// The rowid up to which every recording has its `roost_age` stamp: the newest stamped one,
/// found from the end (only what came since the curator last looked is read).
pub fn stamped_until(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce((SELECT r.rowid FROM recording r
             WHERE EXISTS (SELECT 1 FROM roost_age g WHERE g.recording_id = r.id)
             ORDER BY r.rowid DESC LIMIT 1), 0)",
        [],
        |r| r.get(0),
    )
}

/// Gives up to `limit` recordings stamped before their size was kept (a database of an older
/// roost) their `bytes`; returns how many. The partial index holds only those rows.
pub fn size_unsized(conn: &Connection, limit: usize) -> rusqlite::Result<usize> {
    let rows: Vec<(rusqlite::types::Value, Option<String>)> = conn
        .prepare_cached(
            "SELECT g.recording_id, r.path FROM roost_age g
             LEFT JOIN recording r ON r.id = g.recording_id
             WHERE g.bytes IS NULL LIMIT ?1",
        )?
        .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1).ok().flatten())))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update =
        conn.prepare_cached("UPDATE roost_age SET bytes = ?2 WHERE recording_id = ?1")?;
    for (id, path) in &rows {
        let bytes = path
            .as_deref()
            .map_or(0, |p| crate::storage::disk_bytes(std::path::Path::new(p)));
        update.execute(params![id, bytes as i64])?;
    }
    Ok(rows.len())
}

/// The device clock as last stored (`roost_clock`), if ever.
pub fn load_clock(conn: &Connection) -> rusqlite::Result<Option<Anchor>> {
    conn.query_row(
        "SELECT boot_id, boottime_s, device_s, wall, wall_synced FROM roost_clock WHERE id = 1",
        [],
        |r| {
            let wall: String = r.get(3)?;
            Ok(Anchor {
                boot_id: r.get(0)?,
                boottime_s: r.get(1)?,
                device_s: r.get(2)?,
                wall: parse_db_datetime(&wall).unwrap_or(Timestamp::UNIX_EPOCH),
                wall_synced: r.get::<_, i64>(4)? != 0,
            })
        },
    )
    .optional()
}

/// Stores the device clock.
pub fn store_clock(conn: &Connection, a: &Anchor) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO roost_clock (id, boot_id, boottime_s, device_s, wall, wall_synced)
         VALUES (1, ?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(id) DO UPDATE SET boot_id = ?1, boottime_s = ?2, device_s = ?3, wall = ?4,
             wall_synced = ?5",
        params![
            a.boot_id,
            a.boottime_s,
            a.device_s,
            db_datetime(a.wall),
            a.wall_synced
        ],
    )
    .map(drop)
}

/// The SQL of the recordings whose file is there, oldest first by when they were made on the
/// device clock (the `roost_age_made` index: a look stops as soon as it has what it needs),
/// with the bytes each occupies as column 9, from those made at or after `?1` on. Recordings
/// not stamped yet (seen this round for
/// the first time) are the newest and come last, outside it. Recordings whose row says
/// protected never go and are left out here: thousands of them must not use up what a round
/// may look past ([`Recording::protected`] reads any other value as protected too).
pub fn oldest_made_sql() -> String {
    format!(
        "SELECT {RECORDING_COLUMNS}, g.bytes FROM roost_age g JOIN recording r ON r.id = g.recording_id
         WHERE r.path IS NOT NULL AND typeof(r.id) = 'blob' AND length(r.id) = 16 AND r.protected = 0
           AND g.made_device_s >= ?1
         ORDER BY g.made_device_s"
    )
}

/// A row of [`oldest_made_sql`]: the recording and the bytes its file occupies.
pub fn recording_with_bytes(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Recording, u64)> {
    let bytes = match row.get_ref(9)? {
        rusqlite::types::ValueRef::Integer(n) => n.max(0) as u64,
        _ => 0,
    };
    Ok((recording(row)?, bytes))
}

/// Recordings whose file is there and the bytes they occupy (`roost_tally`, kept by
/// triggers): one row read, whatever the size of the archive.
pub fn tally(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    conn.query_row(
        "SELECT recordings, bytes FROM roost_tally WHERE id = 1",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        },
    )
}

/// Bytes of the recordings made on the device clock at or after `since_device_s` whose file
/// is there (one day's worth of rows through the `roost_age_made` index).
pub fn bytes_made_since(conn: &Connection, since_device_s: f64) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT coalesce(sum(g.bytes), 0) FROM roost_age g JOIN recording r ON r.id = g.recording_id
         WHERE g.made_device_s >= ?1 AND r.path IS NOT NULL",
    )?
    .query_row([since_device_s], |r| Ok(r.get::<_, i64>(0)?.max(0) as u64))
}

/// Recordings whose file is there and whose skew (see [`skew`]) differs from `skew_now` by
/// more than `tolerance_s`: two index ranges, only the disagreeing rows read.
pub fn skew_disagrees(conn: &Connection, skew_now: f64, tolerance_s: f64) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT (SELECT count(*) FROM roost_age WHERE skew_s < ?1)
              + (SELECT count(*) FROM roost_age WHERE skew_s > ?2)",
    )?
    .query_row(
        params![skew_now - tolerance_s, skew_now + tolerance_s],
        |r| Ok(r.get::<_, i64>(0)?.max(0) as u64),
    )
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
    crate::storage::skip_foreign_rows(rows)
}

/// Files deleted by each rule or cause (`deleted_by`), all time (`roost_deleted`, kept by a
/// trigger).
pub fn deleted_by_rule(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT deleted_by, recordings FROM roost_deleted WHERE recordings > 0 ORDER BY deleted_by",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
    crate::storage::skip_foreign_rows(rows)
}

/// (done, failed) recordings of `detector` (`roost_outcomes`, kept by triggers: two rows
/// read, whatever the archive holds).
pub fn outcomes(conn: &Connection, detector: &str) -> rusqlite::Result<(u64, u64)> {
    conn.query_row(
        "SELECT coalesce(sum(CASE outcome WHEN 'done' THEN recordings END), 0),
                coalesce(sum(CASE outcome WHEN 'failed' THEN recordings END), 0)
         FROM roost_outcomes WHERE detector = ?1",
        [detector],
        |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        },
    )
}

/// Whether a detector gave up on `recording` (its findings are unknown).
pub fn failed_any(conn: &Connection, recording: &Uuid) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM roost_analysis WHERE recording_id = ?1 AND outcome = 'failed')",
        [recording],
        |r| r.get(0),
    )
}
