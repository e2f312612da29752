//! Storages: the folder of a deployment's recordings and its `metadata.db`. This module creates
//! them, migrates the schema, registers recordings, watches free space and applies `onLowSpace`,
//! and repairs what a crash left behind. It must never lose a recording silently: every file it
//! deletes is a registered recording chosen by `deleteOldest`, and every repair is reported.
//!
//! Layout of a storage folder:
//! ```text
//! metadata.db              SQLite, WAL; tables `deployment` and `recording` (acoupi's columns)
//! recordings/YYYY/MM/DD/   finished WAV files, named by their UTC start time
//! .partial/                files being written (moved into recordings/ when complete)
//! quarantine/              files found at start that could not be read or registered
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use crate::errors::{self, ErrorCode};
use crate::spec::Location;
use crate::spec::recorder::{OnLowSpace, StorageSpec};

pub const DB_FILE: &str = "metadata.db";
/// Oldest recordings deleted at most per space check under `onLowSpace: deleteOldest`.
pub const MAX_DELETIONS_PER_CHECK: usize = 50;
pub const RECORDINGS_DIR: &str = "recordings";
pub const PARTIAL_DIR: &str = ".partial";
pub const QUARANTINE_DIR: &str = "quarantine";

/// Space kept free beyond a file's own size so that metadata.db can still be written when the
/// disk is otherwise full.
pub const DB_RESERVE_BYTES: u64 = 512 * 1024;

/// Schema migrations; `PRAGMA user_version` holds how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: acoupi's tables and columns, so that queries written for acoupi's database work here.
    "CREATE TABLE deployment (
        id TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL,
        started_on TEXT NOT NULL,
        ended_on TEXT,
        latitude REAL,
        longitude REAL
    );
    CREATE TABLE recording (
        id TEXT PRIMARY KEY NOT NULL,
        path TEXT NOT NULL UNIQUE,
        datetime TEXT NOT NULL,
        duration_s REAL NOT NULL,
        samplerate_hz INTEGER NOT NULL,
        audio_channels INTEGER NOT NULL,
        deployment_id TEXT REFERENCES deployment(id)
    );
    CREATE INDEX recording_datetime ON recording(datetime);
    CREATE INDEX deployment_name ON deployment(name);",
];

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage {path}: cannot {action}")]
    Unusable {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata database {path}: cannot {action}")]
    Database {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

impl StorageError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unusable { source, .. } if is_disk_full(source) => errors::DISK_FULL,
            Self::Unusable { .. } => errors::STORAGE_UNUSABLE,
            Self::Database { source, .. } if is_sqlite_full(source) => errors::DISK_FULL,
            Self::Database { .. } => errors::METADATA_DB_ERROR,
        }
    }
}

/// True for "no space left on device" (and quota exceeded, which looks the same to us).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc_enospc) if libc_enospc == nix::libc::ENOSPC || libc_enospc == nix::libc::EDQUOT)
        || e.kind() == std::io::ErrorKind::StorageFull
}

fn is_sqlite_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// A finished recording to register.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRecording {
    pub path: PathBuf,
    pub datetime: Timestamp,
    pub duration_s: f64,
    pub samplerate_hz: u32,
    pub audio_channels: u16,
}

/// A registered recording.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordingRow {
    pub id: String,
    pub path: PathBuf,
    pub datetime: String,
    pub duration_s: f64,
    pub samplerate_hz: u32,
    pub audio_channels: u16,
    pub deployment_id: Option<String>,
}

/// What the start-up repair found and did. Reported, never silent.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairReport {
    /// Files in recordings/ without a row, now registered.
    pub registered: Vec<PathBuf>,
    /// Files that could not be read, moved to quarantine/.
    pub quarantined: Vec<PathBuf>,
    /// Rows whose file no longer exists, removed.
    pub rows_removed: Vec<PathBuf>,
    /// Partial files (from a crash) completed and registered.
    pub salvaged: Vec<PathBuf>,
}

impl RepairReport {
    pub fn is_empty(&self) -> bool {
        self.registered.is_empty()
            && self.quarantined.is_empty()
            && self.rows_removed.is_empty()
            && self.salvaged.is_empty()
    }
}

/// The outcome of a free-space check before a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceCheck {
    /// Enough space; `deleted` recordings were removed by deleteOldest to make it.
    Enough { deleted: usize },
    /// Below minFreeSpace and the policy forbids writing (stop, discardNew, or nothing left to delete).
    Low { free: u64, policy: OnLowSpace },
}

/// An open storage.
pub struct Storage {
    root: PathBuf,
    conn: Connection,
    spec: StorageSpec,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens the storage at `root`, creating its folders and database when missing, checking it
    /// is writable, and migrating the schema.
    pub fn open(root: &Path, spec: &StorageSpec) -> Result<Self, StorageError> {
        let unusable = |action, source| StorageError::Unusable {
            path: root.to_path_buf(),
            action,
            source,
        };
        for dir in [
            root.to_path_buf(),
            root.join(RECORDINGS_DIR),
            root.join(PARTIAL_DIR),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| unusable("create its folders", e))?;
        }
        // Permissions and read-only mounts show up here rather than in the middle of a file.
        let probe = root
            .join(PARTIAL_DIR)
            .join(format!(".probe-{}", std::process::id()));
        std::fs::write(&probe, b"roost").map_err(|e| unusable("write to it", e))?;
        let _ = std::fs::remove_file(&probe);
        let db_path = root.join(DB_FILE);
        let db_err = |action| {
            let path = db_path.clone();
            move |source| StorageError::Database {
                path,
                action,
                source,
            }
        };
        let conn = Connection::open(&db_path).map_err(db_err("open it"))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(db_err("set its busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err("switch it to WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err("set synchronous"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_err("enable foreign keys"))?;
        let mut storage = Self {
            root: root.to_path_buf(),
            conn,
            spec: spec.clone(),
        };
        storage.migrate()?;
        Ok(storage)
    }

    fn db_error(&self, action: &'static str) -> impl FnOnce(rusqlite::Error) -> StorageError + '_ {
        move |source| StorageError::Database {
            path: self.root.join(DB_FILE),
            action,
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), StorageError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.db_error("read its schema version"))?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(StorageError::Database {
                path: self.root.join(DB_FILE),
                action: "use it",
                source: rusqlite::Error::InvalidParameterName(format!(
                    "schema version {version} is newer than this roost knows ({}); upgrade roost",
                    MIGRATIONS.len()
                )),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let path = self.root.join(DB_FILE);
            let tx = self
                .conn
                .transaction()
                .map_err(|source| StorageError::Database {
                    path: path.clone(),
                    action: "migrate it",
                    source,
                })?;
            tx.execute_batch(sql)
                .and_then(|_| tx.pragma_update(None, "user_version", (i + 1) as i64))
                .and_then(|_| tx.commit())
                .map_err(|source| StorageError::Database {
                    path,
                    action: "migrate it",
                    source,
                })?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn recordings_dir(&self) -> PathBuf {
        self.root.join(RECORDINGS_DIR)
    }
    pub fn partial_dir(&self) -> PathBuf {
        self.root.join(PARTIAL_DIR)
    }
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join(QUARANTINE_DIR)
    }
    pub fn spec(&self) -> &StorageSpec {
        &self.spec
    }
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The row of deployment `name` to attach recordings to: the open row of that name if there
    /// is one (a restart or an edit of the file continues it), a new row otherwise. Open rows of
    /// other names are ended: only one deployment records into a storage at a time.
    pub fn start_deployment(
        &mut self,
        name: &str,
        location: Option<&Location>,
        now: Timestamp,
    ) -> Result<String, StorageError> {
        let path = self.root.join(DB_FILE);
        let err = |source| StorageError::Database {
            path: path.clone(),
            action: "start the deployment row",
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let stamp = db_datetime(now);
        tx.execute(
            "UPDATE deployment SET ended_on = ?1 WHERE ended_on IS NULL AND name <> ?2",
            params![stamp, name],
        )
        .map_err(err)?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT id FROM deployment WHERE name = ?1 AND ended_on IS NULL ORDER BY started_on DESC LIMIT 1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        let (lat, lon) = (
            location.map(|l| l.latitude.value()),
            location.map(|l| l.longitude.value()),
        );
        let id = match existing {
            Some(id) => {
                tx.execute(
                    "UPDATE deployment SET latitude = ?2, longitude = ?3 WHERE id = ?1",
                    params![id, lat, lon],
                )
                .map_err(err)?;
                id
            }
            None => {
                let id = new_uuid();
                tx.execute(
                    "INSERT INTO deployment (id, name, started_on, ended_on, latitude, longitude) VALUES (?1, ?2, ?3, NULL, ?4, ?5)",
                    params![id, name, stamp, lat, lon],
                )
                .map_err(err)?;
                id
            }
        };
        tx.commit().map_err(err)?;
        Ok(id)
    }

    /// Sets `ended_on` of the open row of deployment `name` (when the deployment is stopped).
    /// Returns whether a row was open.
    pub fn end_deployment(&mut self, name: &str, now: Timestamp) -> Result<bool, StorageError> {
        let n = self
            .conn
            .execute(
                "UPDATE deployment SET ended_on = ?1 WHERE name = ?2 AND ended_on IS NULL",
                params![db_datetime(now), name],
            )
            .map_err(self.db_error("end the deployment row"))?;
        Ok(n > 0)
    }

    /// Registers a finished recording in one transaction.
    pub fn register(
        &mut self,
        rec: &NewRecording,
        deployment_id: &str,
    ) -> Result<String, StorageError> {
        let id = new_uuid();
        let path = self.root.join(DB_FILE);
        let err = |source| StorageError::Database {
            path: path.clone(),
            action: "register a recording",
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                id,
                rec.path.to_string_lossy(),
                db_datetime(rec.datetime),
                rec.duration_s,
                rec.samplerate_hz,
                rec.audio_channels,
                deployment_id
            ],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(id)
    }

    /// Every registered recording, oldest first.
    pub fn recordings(&self) -> Result<Vec<RecordingRow>, StorageError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id
                 FROM recording ORDER BY datetime, path",
            )
            .map_err(self.db_error("list recordings"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(RecordingRow {
                    id: r.get(0)?,
                    path: PathBuf::from(r.get::<_, String>(1)?),
                    datetime: r.get(2)?,
                    duration_s: r.get(3)?,
                    samplerate_hz: r.get(4)?,
                    audio_channels: r.get(5)?,
                    deployment_id: r.get(6)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.db_error("list recordings"))?;
        Ok(rows)
    }

    /// Free bytes on the storage's file system for an unprivileged writer.
    pub fn free_bytes(&self) -> Result<u64, StorageError> {
        free_bytes(&self.root).map_err(|source| StorageError::Unusable {
            path: self.root.clone(),
            action: "read its free space",
            source,
        })
    }

    /// Checks that a file of `bytes_needed` leaves `minFreeSpace` free, applying `onLowSpace`
    /// when it does not.
    pub fn ensure_space(&mut self, bytes_needed: u64) -> Result<SpaceCheck, StorageError> {
        let wanted = self
            .spec
            .min_free_space
            .bytes()
            .saturating_add(bytes_needed);
        let mut free = self.free_bytes()?;
        if free >= wanted {
            return Ok(SpaceCheck::Enough { deleted: 0 });
        }
        if self.spec.on_low_space != OnLowSpace::DeleteOldest {
            return Ok(SpaceCheck::Low {
                free,
                policy: self.spec.on_low_space,
            });
        }
        let mut deleted = 0;
        // Deleting must actually help: stop when a deletion frees nothing here (files on
        // another file system, or the disk filled by something else), and delete a bounded
        // number per call so the writer thread never stalls long enough to drop samples.
        while free < wanted && deleted < MAX_DELETIONS_PER_CHECK {
            let oldest: Option<(String, String)> = self
                .conn
                .query_row(
                    "SELECT id, path FROM recording ORDER BY datetime, path LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(self.db_error("find the oldest recording"))?;
            let Some((id, path)) = oldest else { break };
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StorageError::Unusable {
                        path: PathBuf::from(path),
                        action: "delete the oldest recording",
                        source,
                    });
                }
            }
            self.conn
                .execute("DELETE FROM recording WHERE id = ?1", params![id])
                .map_err(self.db_error("remove the oldest recording's row"))?;
            tracing::info!(path = %path, "deleted the oldest recording to keep minFreeSpace (onLowSpace: deleteOldest)");
            deleted += 1;
            let before = free;
            free = self.free_bytes()?;
            if free <= before {
                tracing::warn!(
                    "deleting recordings does not free space on this disk; keeping the rest"
                );
                break;
            }
        }
        if free >= wanted {
            Ok(SpaceCheck::Enough { deleted })
        } else {
            Ok(SpaceCheck::Low {
                free,
                policy: OnLowSpace::DeleteOldest,
            })
        }
    }

    /// Makes files and rows agree: a file under recordings/ without a row is registered (its
    /// header gives the format, its name the start time) or, if unreadable, quarantined; a row
    /// whose file is gone is removed. Partial files are the recorder's to salvage before this.
    pub fn repair(&mut self, deployment_id: &str) -> Result<RepairReport, StorageError> {
        let mut report = RepairReport::default();
        let rows = self.recordings()?;
        let mut known = std::collections::HashSet::new();
        let recordings_dir = self.recordings_dir();
        for row in &rows {
            // Only a confirmed absence under this storage's own recordings/ removes a row: an
            // unreadable path (EACCES, EIO) or a row of a storage that was moved is left alone.
            let confirmed_missing =
                row.path.starts_with(&recordings_dir) && matches!(row.path.try_exists(), Ok(false));
            if !confirmed_missing {
                known.insert(row.path.clone());
            } else {
                self.conn
                    .execute("DELETE FROM recording WHERE id = ?1", params![row.id])
                    .map_err(self.db_error("remove a row without file"))?;
                tracing::warn!(path = %row.path.display(), "repair: removed the row of a recording whose file is missing");
                report.rows_removed.push(row.path.clone());
            }
        }
        let mut files = Vec::new();
        collect_wavs(&self.recordings_dir(), &mut files).map_err(|source| {
            StorageError::Unusable {
                path: self.recordings_dir(),
                action: "list its recordings",
                source,
            }
        })?;
        for file in files {
            if known.contains(&file) {
                continue;
            }
            match describe_wav(&file) {
                Some(rec) => {
                    self.register(&rec, deployment_id)?;
                    tracing::warn!(path = %file.display(), "repair: registered a recording that had no row");
                    report.registered.push(file);
                }
                None => {
                    let moved = self.quarantine(&file)?;
                    tracing::warn!(path = %file.display(), to = %moved.display(), "repair: quarantined an unreadable file");
                    report.quarantined.push(moved);
                }
            }
        }
        Ok(report)
    }

    /// Moves a file into quarantine/, keeping its name; returns the new path.
    pub fn quarantine(&self, file: &Path) -> Result<PathBuf, StorageError> {
        let dir = self.quarantine_dir();
        let unusable = |source| StorageError::Unusable {
            path: file.to_path_buf(),
            action: "quarantine a file",
            source,
        };
        std::fs::create_dir_all(&dir).map_err(unusable)?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut target = dir.join(&name);
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{n}-{name}"));
            n += 1;
        }
        std::fs::rename(file, &target).map_err(unusable)?;
        Ok(target)
    }

    /// `PRAGMA integrity_check`; "ok" when the database is sound.
    pub fn integrity_check(&self) -> Result<String, StorageError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(self.db_error("check its integrity"))
    }
}

/// Sets `ended_on` of deployment `name` in the storage at `root`, if that storage exists. For the
/// reconciler when a deployment is stopped or renamed.
pub fn end_deployment(
    root: &Path,
    spec: &StorageSpec,
    name: &str,
    now: Timestamp,
) -> Result<bool, StorageError> {
    if !root.join(DB_FILE).exists() {
        return Ok(false);
    }
    Storage::open(root, spec)?.end_deployment(name, now)
}

/// Free bytes available to unprivileged writers on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// The file name of a recording that starts at `start` (UTC, microseconds).
pub fn recording_file_name(start: Timestamp) -> String {
    format!("{}.wav", start.strftime("%Y%m%dT%H%M%S.%6fZ"))
}

/// `recordings/YYYY/MM/DD/<name>` for a recording that starts at `start` (UTC date).
pub fn recording_path(recordings_dir: &Path, start: Timestamp) -> PathBuf {
    recordings_dir
        .join(start.strftime("%Y").to_string())
        .join(start.strftime("%m").to_string())
        .join(start.strftime("%d").to_string())
        .join(recording_file_name(start))
}

/// The start time encoded in a recording's file name.
pub fn start_from_file_name(path: &Path) -> Option<Timestamp> {
    let stem = path.file_stem()?.to_str()?;
    let stem = stem.strip_suffix('Z')?;
    let dt = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%S.%f", stem).ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// acoupi's datetime text form (UTC): `YYYY-MM-DD HH:MM:SS.ffffff`.
pub fn db_datetime(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S.%6f").to_string()
}

fn describe_wav(path: &Path) -> Option<NewRecording> {
    let datetime = start_from_file_name(path)?;
    let reader = hound::WavReader::open(path).ok()?;
    let spec = reader.spec();
    let frames = reader.duration();
    Some(NewRecording {
        path: path.to_path_buf(),
        datetime,
        duration_s: f64::from(frames) / f64::from(spec.sample_rate),
        samplerate_hz: spec.sample_rate,
        audio_channels: spec.channels,
    })
}

fn collect_wavs(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_wavs(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// A random (version 4) UUID in its usual text form, as acoupi's ids are UUIDs.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    if let Err(e) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
    {
        // Unique enough without the kernel's generator: time and pid.
        tracing::warn!(error = %e, "cannot read /dev/urandom; deriving the id from the clock");
        let n = Timestamp::now().as_nanosecond() as u128 ^ (u128::from(std::process::id()) << 96);
        b = n.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::recorder::ByteSize;

    fn spec(min_free: u64, on_low: OnLowSpace) -> StorageSpec {
        StorageSpec {
            path: None,
            min_free_space: ByteSize(min_free),
            on_low_space: on_low,
            require_mount: false,
        }
    }

    fn write_wav(path: &Path, frames: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let s = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, s).unwrap();
        for i in 0..frames {
            w.write_sample(i as i16).unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn schema_is_created_once_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        let v: i64 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = s
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(s);
        let s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn a_deployment_row_continues_under_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        let t0: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let a = s.start_deployment("meadow", None, t0).unwrap();
        assert_eq!(s.start_deployment("meadow", None, t0).unwrap(), a);
        let b = s.start_deployment("forest", None, t0).unwrap();
        assert_ne!(a, b);
        let ended: Option<String> = s
            .conn
            .query_row("SELECT ended_on FROM deployment WHERE id = ?1", [&a], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(ended.as_deref(), Some("2026-06-01 00:00:00.000000"));
        assert!(s.end_deployment("forest", t0).unwrap());
        assert_ne!(s.start_deployment("forest", None, t0).unwrap(), b);
    }

    #[test]
    fn repair_registers_orphans_quarantines_junk_and_drops_dangling_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        let dep = s
            .start_deployment("meadow", None, Timestamp::now())
            .unwrap();
        let t: Timestamp = "2026-06-01T10:00:00Z".parse().unwrap();
        let orphan = recording_path(&s.recordings_dir(), t);
        write_wav(&orphan, 8000);
        let junk = s.recordings_dir().join("2026/06/01/notes.txt");
        std::fs::write(&junk, b"x").unwrap();
        let gone = s
            .recordings_dir()
            .join("2026/06/01/20260601T090000.000000Z.wav");
        s.register(
            &NewRecording {
                path: gone.clone(),
                datetime: t,
                duration_s: 1.0,
                samplerate_hz: 8000,
                audio_channels: 1,
            },
            &dep,
        )
        .unwrap();
        let report = s.repair(&dep).unwrap();
        assert_eq!(report.registered, vec![orphan.clone()]);
        assert_eq!(report.rows_removed, vec![gone]);
        assert_eq!(report.quarantined.len(), 1);
        let rows = s.recordings().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].path, orphan);
        assert_eq!(rows[0].datetime, "2026-06-01 10:00:00.000000");
        assert_eq!(rows[0].duration_s, 1.0);
        assert!(s.repair(&dep).unwrap().is_empty());
    }

    #[test]
    fn delete_oldest_frees_space_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let mut s = Storage::open(dir.path(), &spec(free * 2, OnLowSpace::DeleteOldest)).unwrap();
        let dep = s
            .start_deployment("meadow", None, Timestamp::now())
            .unwrap();
        for minute in 0..3 {
            let t: Timestamp = format!("2026-06-01T10:0{minute}:00Z").parse().unwrap();
            let path = recording_path(&s.recordings_dir(), t);
            write_wav(&path, 10);
            s.register(
                &NewRecording {
                    path,
                    datetime: t,
                    duration_s: 0.1,
                    samplerate_hz: 8000,
                    audio_channels: 1,
                },
                &dep,
            )
            .unwrap();
        }
        // More than the disk holds: the oldest go first, deletion stops once it no longer frees
        // space (or the rows run out), and it still says Low.
        assert!(matches!(s.ensure_space(0).unwrap(), SpaceCheck::Low { .. }));
        let left = s.recordings().unwrap();
        assert!(left.len() < 3, "at least the oldest was deleted");
        assert!(
            left.iter()
                .all(|r| !r.datetime.starts_with("2026-06-01T10:00")),
            "oldest first"
        );
        let mut stop = Storage::open(dir.path(), &spec(free * 2, OnLowSpace::Stop)).unwrap();
        assert!(matches!(
            stop.ensure_space(0).unwrap(),
            SpaceCheck::Low {
                policy: OnLowSpace::Stop,
                ..
            }
        ));
        let mut fine = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        assert_eq!(
            fine.ensure_space(1).unwrap(),
            SpaceCheck::Enough { deleted: 0 }
        );
    }

    #[test]
    fn file_names_carry_the_start_time() {
        let t: Timestamp = "2026-06-01T10:00:01.25Z".parse().unwrap();
        let p = recording_path(Path::new("/s/recordings"), t);
        assert_eq!(
            p,
            Path::new("/s/recordings/2026/06/01/20260601T100001.250000Z.wav")
        );
        assert_eq!(start_from_file_name(&p), Some(t));
        assert_eq!(new_uuid().len(), 36);
    }
}
