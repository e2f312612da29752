//! Read-only looks at metadata.db for tools that show the storage (`roost status`, the page,
//! the connector's heartbeat, `roost check`'s preview): opened read-only, never waiting on a
//! writer's lock, never creating the file. Each function returns `None` (or nothing) when the
//! database is not there or cannot be read now.

use std::path::Path;

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags};

use super::{DB_FILE, db_datetime};

/// metadata.db of the storage at `storage`, read-only.
///
/// # Errors
/// The file is not there or cannot be opened.
pub fn open(storage: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        storage.join(DB_FILE),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// Recordings registered with a start at or after `since` (files deleted since included).
pub fn recordings_since(storage: &Path, since: Timestamp) -> Option<u64> {
    open(storage)
        .ok()?
        .query_row(
            "SELECT count(*) FROM recording WHERE datetime >= ?1",
            [db_datetime(since)],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .map(|n| n as u64)
}

/// Bytes of audio kept since `since` at 2 bytes a sample (an estimate: i16, the default), and
/// the first of those recordings' start.
pub fn audio_since(storage: &Path, since: Timestamp) -> Option<(f64, Option<Timestamp>)> {
    let (bytes, first) = open(storage)
        .ok()?
        .query_row(
            "SELECT coalesce(sum(duration_s * samplerate_hz * audio_channels * 2), 0), min(datetime)
             FROM recording WHERE datetime >= ?1 AND path IS NOT NULL",
            [db_datetime(since)],
            |r| Ok((r.get::<_, f64>(0)?, r.get::<_, Option<String>>(1)?)),
        )
        .ok()?;
    Some((bytes, first.as_deref().and_then(super::parse_db_datetime)))
}

/// Whether a recording's row has one of `paths` (roost stores the absolute path; a path
/// relative to the storage is accepted too).
pub fn has_path(storage: &Path, paths: [&str; 2]) -> bool {
    let Ok(conn) = open(storage) else {
        return false;
    };
    conn.query_row(
        "SELECT 1 FROM recording WHERE path IN (?1, ?2) LIMIT 1",
        paths,
        |_| Ok(()),
    )
    .is_ok()
}

/// The newest `limit` recordings whose file is there: (path, metadata.db's `datetime` text).
pub fn newest(storage: &Path, limit: usize) -> Vec<(String, String)> {
    let Ok(conn) = open(storage) else {
        return Vec::new();
    };
    let Ok(mut query) = conn.prepare(
        "SELECT path, datetime FROM recording WHERE path IS NOT NULL ORDER BY datetime DESC LIMIT ?1",
    ) else {
        return Vec::new();
    };
    let rows = query.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)));
    rows.map(|rows| rows.flatten().collect())
        .unwrap_or_default()
}

/// The newest recording's rowid (0 without any).
///
/// # Errors
/// SQLite's.
pub fn newest_rowid(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(max(rowid), 0) FROM recording", [], |r| {
        r.get(0)
    })
}

/// Recordings whose file is there, counted (without the tallies' help).
///
/// # Errors
/// SQLite's.
pub fn count_present(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM recording WHERE path IS NOT NULL",
        [],
        |r| r.get::<_, i64>(0).map(|n| n as u64),
    )
}
