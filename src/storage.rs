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
use crate::spec::recorder::StorageSpec;

pub mod curation;
pub mod detections;
pub mod findings;
pub mod read;
pub mod schema;

/// File name of the metadata database in a storage folder.
pub const DB_FILE: &str = "metadata.db";
/// Folder of a storage that holds finished recordings, in `YYYY/MM/DD/` subfolders.
pub const RECORDINGS_DIR: &str = "recordings";
/// Folder of a storage that holds files being written; they move to recordings/ when complete.
pub const PARTIAL_DIR: &str = ".partial";
/// Folder of a storage where files found at start that could not be read or registered are put.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Space kept free beyond a file's own size so that metadata.db can still be written when the
/// disk is otherwise full.
pub const DB_RESERVE_BYTES: u64 = 512 * 1024;

/// Why a storage or its metadata.db cannot be used; each variant names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operation on the storage folder or a file in it failed.
    #[error("storage {path}: cannot {action}")]
    Unusable {
        /// The storage folder, or the file the operation was about.
        path: PathBuf,
        /// What roost tried, completing "cannot ..." (e.g. "create its folders").
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// metadata.db's layout is a newer roost's, or could not be brought to this one's (see
    /// [`schema::migrate`]); the file is left as it was.
    #[error("metadata database {path}")]
    Layout {
        /// metadata.db.
        path: PathBuf,
        /// What stands in the way.
        #[source]
        source: schema::MigrateError,
    },
    /// `requireMount: true` and the storage folder does not lie on a mounted file system
    /// other than the root's.
    #[error(
        "storage {path} is not mounted (requireMount: true): waiting for {wait_for}; nothing is written until then"
    )]
    NotMounted {
        /// The storage folder.
        path: PathBuf,
        /// The mount it waits for.
        wait_for: MountWait,
    },
    /// metadata.db could not be opened, migrated, read or written.
    #[error("metadata database {path}: cannot {action}")]
    Database {
        /// Path of metadata.db.
        path: PathBuf,
        /// What roost tried, completing "cannot ..." (e.g. "register a recording").
        action: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

impl StorageError {
    /// The catalogue code this failure is reported with: [`errors::DISK_FULL`] when the disk or the
    /// quota is full, [`errors::STORAGE_UNUSABLE`] for the folder, [`errors::METADATA_DB_ERROR`]
    /// for the database.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unusable { source, .. } if is_disk_full(source) => errors::DISK_FULL,
            Self::Unusable { .. } | Self::NotMounted { .. } => errors::STORAGE_UNUSABLE,
            Self::Database { source, .. } if is_sqlite_full(source) => errors::DISK_FULL,
            Self::Database { .. } => errors::METADATA_DB_ERROR,
            Self::Layout {
                source: schema::MigrateError::Newer { .. },
                ..
            } => errors::METADATA_DB_NEWER,
            Self::Layout { .. } if self.is_busy() => errors::METADATA_DB_ERROR,
            Self::Layout { .. } => errors::METADATA_DB_MIGRATION,
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

impl StorageError {
    /// SQLite's code for a database error, a failed step of the layout's included.
    fn sqlite_code(&self) -> Option<rusqlite::ErrorCode> {
        match self {
            Self::Database {
                source: rusqlite::Error::SqliteFailure(f, _),
                ..
            }
            | Self::Layout {
                source:
                    schema::MigrateError::Failed {
                        source: rusqlite::Error::SqliteFailure(f, _),
                        ..
                    },
                ..
            } => Some(f.code),
            _ => None,
        }
    }

    /// A conversion of an older roost's metadata.db failed for another reason than a lock
    /// (see [`schema::Retry`]): trying again at once would cost another pass over the archive
    /// and fail the same way. Making the tables of a new database is not one.
    pub fn is_failed_conversion(&self) -> bool {
        matches!(
            self,
            Self::Layout {
                source: schema::MigrateError::Failed { costly: true, .. },
                ..
            }
        ) && !self.is_busy()
    }

    /// Another connection holds the lock (another process converting the layout, too):
    /// waiting helps, reopening does not.
    pub fn is_busy(&self) -> bool {
        matches!(
            self.sqlite_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }

    /// The file is not an SQLite database, or a damaged one (found by a write, or by the
    /// conversion reading every row): set it aside and start afresh.
    pub fn is_not_a_database(&self) -> bool {
        matches!(
            self.sqlite_code(),
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        )
    }
}

/// A finished recording to register.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRecording {
    /// Where the WAV file lies, under recordings/.
    pub path: PathBuf,
    /// When the recording's first sample was captured.
    pub datetime: Timestamp,
    /// Length of the recording in seconds.
    pub duration_s: f64,
    /// Samples per second per channel.
    pub samplerate_hz: u32,
    /// Number of channels.
    pub audio_channels: u16,
}

/// A registered recording.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordingRow {
    /// The row's UUID (`recording.id`, 16 bytes in metadata.db).
    pub id: uuid::Uuid,
    /// Where the WAV file lies, as registered.
    pub path: PathBuf,
    /// Start of the recording as stored: acoupi's text, see [`db_datetime`].
    pub datetime: String,
    /// Length of the recording in seconds.
    pub duration_s: f64,
    /// Samples per second per channel.
    pub samplerate_hz: u32,
    /// Number of channels.
    pub audio_channels: u16,
    /// The `deployment` row the recording belongs to.
    pub deployment_id: Option<uuid::Uuid>,
}

/// What the start-up repair found and did. Reported, never silent. A [`Storage::repair_step`]
/// returns the paths of one batch; the recorder keeps the latest few of each list and counts
/// them all in `progress` (a rebuilt archive of a year would otherwise list half a million).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairReport {
    /// Files in recordings/ without a row, now registered.
    pub registered: Vec<PathBuf>,
    /// Files that could not be read, moved to quarantine/.
    pub quarantined: Vec<PathBuf>,
    /// Rows whose file no longer exists, marked deleted (`deleted_by` missing).
    pub rows_removed: Vec<PathBuf>,
    /// Partial files (from a crash) completed and registered.
    pub salvaged: Vec<PathBuf>,
    /// Files whose rows say they were deleted (a power cut between the decision and the
    /// removal), removed now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletions_finished: Vec<PathBuf>,
    /// Unreadable metadata.db files moved aside (`metadata.db.bad-<time>`) and replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases_set_aside: Vec<PathBuf>,
    /// How far the repair has got, and what it did in numbers (absent in older reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RepairProgress>,
}

/// Where a repair is: checking rows, then walking files, then done.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum RepairPhase {
    /// Checking that each row's file is there, in rowid order.
    #[default]
    Rows,
    /// Walking recordings/ for files without a row.
    Files,
    /// Files and rows agree.
    Done,
}

/// A repair's progress and totals; the lists of [`RepairReport`] name only some of them.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", default)]
pub struct RepairProgress {
    /// What it is doing now.
    pub phase: RepairPhase,
    /// Rows whose file has been looked for.
    pub rows_checked: u64,
    /// Files under recordings/ looked up in metadata.db.
    pub files_checked: u64,
    /// Files registered (they had no row).
    pub registered: u64,
    /// Rows marked deleted because their file is missing.
    pub rows_removed: u64,
    /// Files moved to quarantine/.
    pub quarantined: u64,
    /// Deletions finished (rows said deleted, files were still there).
    pub deletions_finished: u64,
    /// When this repair started (the recorder's wall clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub started_at: Option<Timestamp>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub finished_at: Option<Timestamp>,
}

impl RepairReport {
    /// True when the repair found nothing to do.
    pub fn is_empty(&self) -> bool {
        self.registered.is_empty()
            && self.quarantined.is_empty()
            && self.rows_removed.is_empty()
            && self.salvaged.is_empty()
            && self.databases_set_aside.is_empty()
            && self.deletions_finished.is_empty()
    }

    /// Adds a batch's paths to these lists, keeping the latest `keep_latest` of each.
    pub fn absorb(&mut self, batch: RepairReport, keep_latest: usize) {
        let lists = [
            (&mut self.registered, batch.registered),
            (&mut self.quarantined, batch.quarantined),
            (&mut self.rows_removed, batch.rows_removed),
            (&mut self.salvaged, batch.salvaged),
            (&mut self.deletions_finished, batch.deletions_finished),
            (&mut self.databases_set_aside, batch.databases_set_aside),
        ];
        for (list, more) in lists {
            list.extend(more);
            let extra = list.len().saturating_sub(keep_latest);
            list.drain(..extra);
        }
    }
}

/// Rows or files one repair step handles at most: what a repair holds in memory at once, and
/// about the longest (a fraction of a second) it keeps the rows of new recordings waiting.
pub const REPAIR_BATCH: usize = 500;

/// Folders nested deeper than this under recordings/ are not walked (`YYYY/MM/DD` is 3).
const MAX_WALK_DEPTH: usize = 16;

/// A repair under way, taken one batch at a time by [`Storage::repair_step`]. It holds one
/// batch and one open folder per level of recordings/, whatever the size of the archive, and
/// remembers where it is, so that a batch that fails (a lock held by the curator) is retried
/// alone.
#[derive(Debug)]
pub struct Repair {
    batch: usize,
    /// Deletions decided after this are in progress (the curator's): not finished here.
    started: Timestamp,
    cursor: Cursor,
    /// Files taken from the walk whose batch has not been committed yet.
    pending: Vec<PathBuf>,
    progress: RepairProgress,
}

#[derive(Debug)]
enum Cursor {
    /// Rows after this rowid are still to be checked.
    Rows {
        after_rowid: i64,
    },
    Files(WavWalk),
    Done,
}

/// What a file under recordings/ is to the repair.
enum FileVerdict {
    Registered,
    /// No row: register it.
    Unregistered(NewRecording),
    /// Its row says a deletion decided before the repair started: remove it.
    DeletionInterrupted,
    /// Its row says a deletion decided since: the curator is removing it.
    DeletionInProgress,
    /// Not a WAV roost can describe: quarantine it, saying why.
    Unreadable(String),
    /// Gone since the walk found it.
    Gone,
}

impl Repair {
    /// A repair starting now (`started`, the wall clock), [`REPAIR_BATCH`] at a time.
    pub fn new(started: Timestamp) -> Self {
        Self::with_batch(started, REPAIR_BATCH)
    }

    /// A repair taking `batch` rows or files per step (at least one).
    pub fn with_batch(started: Timestamp, batch: usize) -> Self {
        Self {
            batch: batch.max(1),
            started,
            cursor: Cursor::Rows { after_rowid: 0 },
            pending: Vec::new(),
            progress: RepairProgress {
                started_at: Some(started),
                ..RepairProgress::default()
            },
        }
    }

    /// How far it has got and what it did, in numbers.
    pub fn progress(&self) -> &RepairProgress {
        &self.progress
    }

    /// True when files and rows agree.
    pub fn is_done(&self) -> bool {
        matches!(self.cursor, Cursor::Done)
    }
}

/// What one `deleteOldest` request did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomOutcome {
    /// Recordings deleted (file and row), oldest first.
    pub deleted: Vec<PathBuf>,
    /// Free bytes after the deletions.
    pub free: u64,
    /// Whether the free space asked for is there now.
    pub enough: bool,
    /// Bytes that deleting the oldest recordings could free (when not `enough` and nothing was
    /// deleted: all registered recordings together would not have been enough).
    pub reclaimable: u64,
}

/// The folders of a storage, without its database: what the recorder's writer uses, so that
/// writing audio never touches metadata.db.
#[derive(Clone, Debug)]
pub struct Folders {
    root: PathBuf,
    spec: StorageSpec,
}

impl Folders {
    /// The folders of the storage at `root` with settings `spec`; touches nothing on disk (see
    /// [`Folders::prepare`]).
    pub fn new(root: &Path, spec: &StorageSpec) -> Self {
        Self {
            root: root.to_path_buf(),
            spec: spec.clone(),
        }
    }

    /// Makes sure the storage can take files now: mounted when `requireMount` says so, folders
    /// present (created again after an `rm -rf`). Cheap enough to call before every file.
    pub fn prepare(&self) -> Result<(), StorageError> {
        self.check_mounted()?;
        for dir in [self.root.clone(), self.recordings_dir(), self.partial_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| StorageError::Unusable {
                path: self.root.clone(),
                action: "create its folders",
                source,
            })?;
        }
        Ok(())
    }

    /// With `requireMount`, that the storage lies on a mounted disk (see [`mount_needed`]);
    /// changes nothing.
    pub fn check_mounted(&self) -> Result<(), StorageError> {
        if !self.spec.require_mount {
            return Ok(());
        }
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let path = resolve_existing(&self.root);
        mount_needed(&path, &read("/proc/self/mountinfo"), &read("/etc/fstab"))
            .map(drop)
            .map_err(|wait_for| StorageError::NotMounted {
                path: self.root.clone(),
                wait_for,
            })
    }

    /// The storage folder, which holds metadata.db and recordings/.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The storage's settings from the desired state.
    pub fn spec(&self) -> &StorageSpec {
        &self.spec
    }
    /// `<root>/recordings`: finished recordings.
    pub fn recordings_dir(&self) -> PathBuf {
        self.root.join(RECORDINGS_DIR)
    }
    /// `<root>/.partial`: files being written.
    pub fn partial_dir(&self) -> PathBuf {
        self.root.join(PARTIAL_DIR)
    }
    /// `<root>/quarantine`: files set aside at start because they could not be read or registered.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join(QUARANTINE_DIR)
    }

    /// Free bytes on the storage's file system for an unprivileged writer.
    pub fn free_bytes(&self) -> Result<u64, StorageError> {
        free_bytes(&self.root).map_err(|source| StorageError::Unusable {
            path: self.root.clone(),
            action: "read its free space",
            source,
        })
    }

    /// Moves a file into quarantine/, keeping its name (never replacing); returns the new path.
    pub fn quarantine(&self, file: &Path) -> Result<PathBuf, StorageError> {
        let unusable = |source| StorageError::Unusable {
            path: file.to_path_buf(),
            action: "quarantine a file",
            source,
        };
        std::fs::create_dir_all(self.quarantine_dir()).map_err(unusable)?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        rename_no_replace(file, &self.quarantine_dir().join(name)).map_err(unusable)
    }
}

/// `path` with its longest existing ancestor resolved (links followed) and the rest kept as
/// written: where it is, or would be once made.
pub fn resolve_existing(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// The mount a storage with `requireMount` waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountWait {
    /// The mount point /etc/fstab names at or above the storage folder.
    Fstab(PathBuf),
    /// No fstab entry: a disk mounted at this folder or at any folder above it other than `/`.
    AtOrAbove(PathBuf),
}

impl std::fmt::Display for MountWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fstab(p) => write!(f, "{} (its /etc/fstab entry) to be mounted", p.display()),
            Self::AtOrAbove(p) => write!(
                f,
                "a disk mounted at {} or at a folder above it other than /",
                p.display()
            ),
        }
    }
}

/// The mount `path` (absolute, resolved) needs, as systemd's `RequiresMountsFor=` means it:
/// `Ok(mount point)` when it lies on a mounted file system other than the root's, `Err(the
/// mount point it waits for)` otherwise. A mount point in `fstab` at or above `path` is the one
/// required (so a `/media` that is itself a file system does not stand in for the card below
/// it); without one, any mount at or above `path` other than `/`. `mountinfo` and `fstab` are
/// the texts of `/proc/self/mountinfo` and `/etc/fstab`.
///
/// # Errors
/// The mount it waits for.
pub fn mount_needed(path: &Path, mountinfo: &str, fstab: &str) -> Result<PathBuf, MountWait> {
    // The system's own mounts (RAM and kernel file systems) never stand for a disk: a card
    // absent under /run/media/<user>/ must not count as mounted because /run is a tmpfs.
    const SYSTEM: &[&str] = &[
        "/",
        "/run",
        "/dev",
        "/dev/shm",
        "/proc",
        "/sys",
        "/tmp",
        "/var/tmp",
        "/var/run",
        "/var/lock",
        "/run/user",
    ];
    let above = |m: &Path| !SYSTEM.iter().any(|s| m == Path::new(s)) && path.starts_with(m);
    let mounted: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .collect();
    let from_fstab = fstab
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| above(m))
        .max_by_key(|m| m.as_os_str().len());
    match from_fstab {
        Some(wanted) if mounted.contains(&wanted) => Ok(wanted),
        Some(wanted) => Err(MountWait::Fstab(wanted)),
        None => mounted
            .into_iter()
            .filter(|m| above(m))
            .max_by_key(|m| m.as_os_str().len())
            .ok_or_else(|| MountWait::AtOrAbove(path.to_path_buf())),
    }
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Renames `from` to `to` without ever replacing a file already there: on a clash the name gets
/// a `-1`, `-2` ... before its extension. Returns the name used; the rename is made durable.
pub fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<PathBuf> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    for n in 0..1000u32 {
        let target = if n == 0 {
            to.to_path_buf()
        } else {
            numbered(to, n)
        };
        let renamed = match renameat2(
            AT_FDCWD,
            from,
            AT_FDCWD,
            &target,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            // A file system without RENAME_NOREPLACE: link fails on an existing name too.
            Err(nix::errno::Errno::EINVAL) => std::fs::hard_link(from, &target)
                .and_then(|_| std::fs::remove_file(from))
                .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))),
            // Another file system (a storage swapped under a link): copy, then remove.
            Err(nix::errno::Errno::EXDEV) => copy_no_replace(from, &target)
                .and_then(|_| std::fs::remove_file(from))
                .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))),
            other => other,
        };
        match renamed {
            Ok(()) => {
                std::fs::File::open(dir)?.sync_all()?;
                return Ok(target);
            }
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::from_raw_os_error(nix::libc::EEXIST))
}

/// Copies `from` to a new file `to` (never replacing one), fsynced.
pub(crate) fn copy_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut src = std::fs::File::open(from)?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let copied = std::io::copy(&mut src, &mut dst).and_then(|_| dst.sync_all());
    if copied.is_err() {
        let _ = std::fs::remove_file(to);
    }
    copied
}

/// `name.wav` -> `name-N.wav`.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    match path.extension() {
        Some(ext) => path.with_file_name(format!("{stem}-{n}.{}", ext.to_string_lossy())),
        None => path.with_file_name(format!("{stem}-{n}")),
    }
}

/// An open storage: its folders and its metadata.db.
pub struct Storage {
    folders: Folders,
    conn: Connection,
    /// Device and inode of metadata.db when it was opened, to notice it deleted or replaced.
    db_identity: Option<(u64, u64)>,
    /// And of its write-ahead log: after a replacement the old log must not be applied to the
    /// new file.
    wal_identity: Option<(u64, u64)>,
    /// Where an unreadable metadata.db found at open was moved.
    set_aside: Option<PathBuf>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("root", &self.folders.root)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens the storage at `root`, creating its folders and database when missing, checking it
    /// is writable, and migrating the schema. A metadata.db that is not a database (damaged, or
    /// another file renamed over it) is moved aside as `metadata.db.bad-<UTC time>` with its
    /// -wal and -shm files, and a fresh one is created: see [`Storage::set_aside`].
    pub fn open(root: &Path, spec: &StorageSpec) -> Result<Self, StorageError> {
        Self::open_or_replace(root, spec, false)
    }

    /// Like [`Storage::open`]; with `replace`, the existing metadata.db is set aside first
    /// whatever it holds (it was found damaged in use: SQLITE_CORRUPT on a write).
    pub fn open_or_replace(
        root: &Path,
        spec: &StorageSpec,
        replace: bool,
    ) -> Result<Self, StorageError> {
        let folders = Folders::new(root, spec);
        folders.prepare()?;
        // Permissions and read-only mounts show up here rather than in the middle of a file.
        let probe = folders
            .partial_dir()
            .join(format!(".probe-{}", std::process::id()));
        std::fs::write(&probe, b"roost").map_err(|source| StorageError::Unusable {
            path: root.to_path_buf(),
            action: "write to it",
            source,
        })?;
        let _ = std::fs::remove_file(&probe);
        // A folder or another non-file where the database should be cannot be opened at all.
        let not_a_file = std::fs::symlink_metadata(root.join(DB_FILE)).is_ok_and(|m| !m.is_file());
        let opened = if replace || not_a_file {
            Err(StorageError::Database {
                path: root.join(DB_FILE),
                action: "use it",
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some("damaged or not a file".into()),
                ),
            })
        } else {
            Self::open_db(root, spec)
        };
        match opened {
            Err(e) if e.is_not_a_database() => {
                let aside = set_aside_db(root).map_err(|source| StorageError::Unusable {
                    path: root.join(DB_FILE),
                    action: "move an unreadable metadata.db aside",
                    source,
                })?;
                tracing::error!(code = errors::METADATA_DB_ERROR.code, error = %crate::errors::chain(&e), aside = %aside.display(),
                    "metadata.db is not a readable database; moved it aside and created a new one");
                let mut storage = Self::open_db(root, spec)?;
                storage.set_aside = Some(aside);
                Ok(storage)
            }
            other => other,
        }
    }

    fn open_db(root: &Path, spec: &StorageSpec) -> Result<Self, StorageError> {
        let db_path = root.join(DB_FILE);
        let db_err = |action| {
            let path = db_path.clone();
            move |source| StorageError::Database {
                path,
                action,
                source,
            }
        };
        // The identity is taken from a handle opened before SQLite's, not from the path after
        // the migration: a file renamed over or deleted in between (a restore, `rm`) must be
        // noticed at the next turn instead of being taken for the file SQLite writes to.
        let pinned = pin_file(&db_path);
        let conn = Connection::open(&db_path).map_err(db_err("open it"))?;
        conn.busy_timeout(Duration::from_millis(500))
            .map_err(db_err("set its busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err("switch it to WAL"))?;
        // NORMAL under WAL: no fsync per row (only at checkpoints), the database stays whole
        // after a power cut, and a row lost to one is rebuilt from its file by the repair at
        // the next start (the WAV in recordings/ is the truth; see `repair`).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err("set synchronous"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_err("enable foreign keys"))?;
        let mut storage = Self {
            folders: Folders::new(root, spec),
            conn,
            db_identity: None,
            wal_identity: None,
            set_aside: None,
        };
        storage.migrate()?;
        storage.db_identity = (pinned.and_then(|f| f.metadata().ok()))
            .map(|m| identity_of(&m))
            .or_else(|| file_identity(&db_path));
        // After the first statements: SQLite creates the log lazily.
        storage.wal_identity = file_identity(&wal_path(root));
        Ok(storage)
    }

    /// Closes a connection whose metadata.db was deleted or replaced. SQLite leaves the old
    /// file's -wal and -shm behind in that case, and would replay that log over whatever file
    /// now has the name: the log (if still this connection's) is moved aside as
    /// `metadata.db.replaced-<UTC time>-wal`, and the -shm index removed.
    pub fn close_replaced(self) {
        let root = self.folders.root.clone();
        let wal_identity = self.wal_identity;
        drop(self);
        let wal = wal_path(&root);
        if wal_identity.is_some() && file_identity(&wal) == wal_identity {
            let stamp = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
            let aside = root.join(format!("{DB_FILE}.replaced-{stamp}-wal"));
            match rename_no_replace(&wal, &aside) {
                Ok(to) => {
                    tracing::warn!(to = %to.display(), "kept the log of the replaced metadata.db aside")
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot move the log of the replaced metadata.db aside")
                }
            }
            let _ = std::fs::remove_file(root.join(format!("{DB_FILE}-shm")));
        }
    }

    /// Where an unreadable metadata.db found by [`Storage::open`] was moved, if one was.
    pub fn set_aside(&self) -> Option<&Path> {
        self.set_aside.as_deref()
    }

    /// True when metadata.db is no longer the file this connection opened (deleted, or another
    /// file renamed over it): rows written now would vanish with the unlinked file.
    pub fn db_replaced(&self) -> bool {
        file_identity(&self.folders.root.join(DB_FILE)) != self.db_identity
    }

    fn db_error(&self, action: &'static str) -> impl FnOnce(rusqlite::Error) -> StorageError + '_ {
        move |source| StorageError::Database {
            path: self.folders.root.join(DB_FILE),
            action,
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), StorageError> {
        schema::migrate(&mut self.conn).map_err(|source| StorageError::Layout {
            path: self.folders.root.join(DB_FILE),
            source,
        })
    }

    /// The storage folder, which holds metadata.db and recordings/.
    pub fn root(&self) -> &Path {
        &self.folders.root
    }
    /// `<root>/recordings`: finished recordings.
    pub fn recordings_dir(&self) -> PathBuf {
        self.folders().recordings_dir()
    }
    /// `<root>/.partial`: files being written.
    pub fn partial_dir(&self) -> PathBuf {
        self.folders().partial_dir()
    }
    /// The storage's settings from the desired state.
    pub fn spec(&self) -> &StorageSpec {
        &self.folders.spec
    }
    /// The open connection to metadata.db (WAL journal, synchronous NORMAL, foreign keys on).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The open connection, to write in transactions of one's own (the archive builder).
    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The row of deployment `name` to attach recordings to: the open row of that name if there
    /// is one (a restart or an edit of the file continues it), a new row otherwise. Open rows of
    /// other names are ended: only one deployment records into a storage at a time.
    pub fn start_deployment(
        &mut self,
        name: &str,
        location: Option<&Location>,
        now: Timestamp,
    ) -> Result<uuid::Uuid, StorageError> {
        let path = self.folders.root.join(DB_FILE);
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
        let existing: Option<uuid::Uuid> = tx
            .query_row(
                "SELECT id FROM deployment WHERE name = ?1 AND ended_on IS NULL
                   AND typeof(id) = 'blob' AND length(id) = 16
                 ORDER BY started_on DESC LIMIT 1",
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
                // acoupi's `started_on` is UNIQUE: a deployment started in the same microsecond
                // as another (a stepped clock) starts a microsecond later.
                let started_on =
                    schema::free_time(&tx, "deployment", "started_on", &stamp).map_err(err)?;
                tx.execute(
                    "INSERT INTO deployment (id, name, started_on, ended_on, latitude, longitude) VALUES (?1, ?2, ?3, NULL, ?4, ?5)",
                    params![id, name, started_on, lat, lon],
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

    /// Registers a finished recording in one transaction. Registering a path twice (a retry, or
    /// repair after a row that was written late) keeps the first row.
    pub fn register(
        &mut self,
        rec: &NewRecording,
        deployment_id: &uuid::Uuid,
    ) -> Result<uuid::Uuid, StorageError> {
        let id = new_uuid();
        insert_recording(&self.conn, &id, rec, deployment_id)
            .map_err(self.db_error("register a recording"))?;
        Ok(id)
    }

    /// Registers several recordings in one transaction (one commit per file made rebuilding a
    /// year's archive take minutes). Says for each whether its row is new: a path registered
    /// meanwhile (by the recorder's own writer) keeps its row and is not counted.
    pub fn register_batch(
        &mut self,
        recs: &[&NewRecording],
        deployment_id: &uuid::Uuid,
    ) -> Result<Vec<bool>, StorageError> {
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        let db_path = self.folders.root.join(DB_FILE);
        let err = |source| StorageError::Database {
            path: db_path.clone(),
            action: "register recordings",
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut inserted = Vec::with_capacity(recs.len());
        for rec in recs {
            let id = new_uuid();
            inserted.push(insert_recording(&tx, &id, rec, deployment_id).map_err(err)? == 1);
        }
        tx.commit().map_err(err)?;
        Ok(inserted)
    }

    /// Every registered recording, oldest first. Reads the whole table: for tests and small
    /// storages; the recorder's start-up uses [`Storage::repair_step`] and
    /// [`Storage::newest_recordings`].
    pub fn recordings(&self) -> Result<Vec<RecordingRow>, StorageError> {
        self.recording_rows(
            "SELECT id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id
             FROM recording WHERE path IS NOT NULL ORDER BY datetime, path LIMIT ?1",
            i64::MAX,
        )
    }

    /// The `limit` registered recordings that start last, newest first (through the index on
    /// `datetime`: the cost does not grow with the archive).
    pub fn newest_recordings(&self, limit: usize) -> Result<Vec<RecordingRow>, StorageError> {
        self.recording_rows(
            "SELECT id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id
             FROM recording WHERE path IS NOT NULL ORDER BY datetime DESC LIMIT ?1",
            i64::try_from(limit).unwrap_or(i64::MAX),
        )
    }

    fn recording_rows(&self, sql: &str, limit: i64) -> Result<Vec<RecordingRow>, StorageError> {
        let mut stmt = self
            .conn
            .prepare(sql)
            .map_err(self.db_error("list recordings"))?;
        let rows = stmt
            .query_map([limit], |r| {
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
            .and_then(skip_foreign_rows)
            .map_err(self.db_error("list recordings"))?;
        Ok(rows)
    }

    /// Free bytes on the storage's file system for an unprivileged writer.
    pub fn free_bytes(&self) -> Result<u64, StorageError> {
        self.folders().free_bytes()
    }

    /// The storage's folders, without the database.
    pub fn folders(&self) -> &Folders {
        &self.folders
    }

    /// `onLowSpace: deleteOldest`: deletes the oldest registered recordings under recordings/
    /// (file, then row) until `wanted_free` bytes are free, but only when deleting them can get
    /// there: when the space is held by other files, nothing is deleted. Each deletion is logged.
    pub fn make_room(&mut self, wanted_free: u64) -> Result<RoomOutcome, StorageError> {
        let free = self.free_bytes()?;
        let mut outcome = RoomOutcome {
            deleted: Vec::new(),
            free,
            enough: free >= wanted_free,
            reclaimable: 0,
        };
        if outcome.enough {
            return Ok(outcome);
        }
        let victims = self.oldest_until(wanted_free - free)?;
        outcome.reclaimable = victims.iter().map(|(_, _, size)| size).sum();
        if free + outcome.reclaimable < wanted_free {
            return Ok(outcome);
        }
        // The rows first, durable on the card, then the files: a power cut in between leaves
        // rows that say why and files that repair deletes at the next start.
        let ids: Vec<&uuid::Uuid> = victims.iter().map(|(id, _, _)| id).collect();
        self.mark_deleted_durably(&ids, "onLowSpace", Timestamp::now())
            .map_err(self.db_error("mark the oldest recordings deleted"))?;
        for (_, path, size) in victims {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Its row says deleted already: the start-up repair finishes it. The others
                    // still go (returning here would leave their rows marked and files kept,
                    // and the next call would choose more victims than needed).
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete the oldest recording; the start-up repair deletes it");
                    continue;
                }
            }
            tracing::warn!(code = errors::RECORDINGS_DELETED.code, path = %path.display(), bytes = size,
                "deleted the oldest recording to keep minFreeSpace (onLowSpace: deleteOldest)");
            outcome.free += size;
            outcome.deleted.push(path);
        }
        outcome.enough = outcome.free >= wanted_free;
        Ok(outcome)
    }

    /// Registered recordings under recordings/, oldest first, with the bytes each occupies,
    /// until they add up to `bytes` (all of them when they never do).
    fn oldest_until(&self, bytes: u64) -> Result<Vec<(uuid::Uuid, PathBuf, u64)>, StorageError> {
        let recordings_dir = self.recordings_dir();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, path FROM recording WHERE path IS NOT NULL AND protected = 0
                 ORDER BY rowid",
            )
            .map_err(self.db_error("find the oldest recordings"))?;
        let mut rows = stmt
            .query([])
            .map_err(self.db_error("find the oldest recordings"))?;
        let mut out = Vec::new();
        let mut total = 0;
        while let Some(row) = rows
            .next()
            .map_err(self.db_error("find the oldest recordings"))?
        {
            // A row another program wrote in another form (an id that is not a UUID's 16
            // bytes) is passed over: it must not stop the space that the others can free.
            let (Ok(id), Ok(path)) = (row.get::<_, uuid::Uuid>(0), row.get::<_, String>(1)) else {
                continue;
            };
            let path = PathBuf::from(path);
            // Only roost's files of this storage free space here (not another program's in a
            // shared metadata.db); a protected one never goes, and a file already gone
            // (removed by hand) frees nothing: repair marks it missing.
            if !path.starts_with(&recordings_dir)
                || start_from_file_name(&path).is_none()
                || keep_marker(&path).exists()
                || matches!(path.try_exists(), Ok(false))
            {
                continue;
            }
            let size = disk_bytes(&path);
            total += size;
            out.push((id, path, size));
            if total >= bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Makes files and rows agree in one go (see [`Storage::repair_step`], which the recorder
    /// uses so that rows of new recordings never wait for a whole repair). The lists of the
    /// report name every path handled: for tests and small storages.
    pub fn repair(&mut self, deployment_id: &uuid::Uuid) -> Result<RepairReport, StorageError> {
        let mut repair = Repair::new(Timestamp::now());
        let mut report = RepairReport::default();
        while !repair.is_done() {
            let batch = self.repair_step(&mut repair, deployment_id)?;
            report.absorb(batch, usize::MAX);
        }
        report.progress = Some(repair.progress);
        Ok(report)
    }

    /// One batch of a repair: a row whose file is confirmed gone is marked deleted ("missing"),
    /// then a file under recordings/ without a row is registered (its header gives the format,
    /// its name the start time) or, if unreadable, quarantined. Returns what this batch did. On
    /// an error (a lock held by the curator) nothing of the batch is lost: the next call
    /// retries it, not the whole repair. Partial files are the recorder's to salvage first.
    pub fn repair_step(
        &mut self,
        repair: &mut Repair,
        deployment_id: &uuid::Uuid,
    ) -> Result<RepairReport, StorageError> {
        let mut report = RepairReport::default();
        match &mut repair.cursor {
            Cursor::Rows { after_rowid } => {
                let rows = self.row_batch(*after_rowid, repair.batch)?;
                let gone = self.files_gone(&rows);
                report.rows_removed = self.mark_missing(&gone, Timestamp::now())?;
                repair.progress.rows_checked += rows.len() as u64;
                repair.progress.rows_removed += report.rows_removed.len() as u64;
                match rows.last() {
                    Some((last, _)) if rows.len() == repair.batch => *after_rowid = *last,
                    _ => {
                        repair.cursor = Cursor::Files(WavWalk::new(&self.recordings_dir()));
                        repair.progress.phase = RepairPhase::Files;
                    }
                }
            }
            Cursor::Files(walk) => {
                let room = repair.batch.saturating_sub(repair.pending.len());
                repair.pending.extend(walk.by_ref().take(room));
                let walked_all = repair.pending.len() < repair.batch;
                report = self.repair_files(&repair.pending, repair.started, deployment_id)?;
                let p = &mut repair.progress;
                p.files_checked += repair.pending.len() as u64;
                p.registered += report.registered.len() as u64;
                p.quarantined += report.quarantined.len() as u64;
                p.deletions_finished += report.deletions_finished.len() as u64;
                repair.pending.clear();
                if walked_all {
                    repair.cursor = Cursor::Done;
                    repair.progress.phase = RepairPhase::Done;
                }
            }
            Cursor::Done => {}
        }
        Ok(report)
    }

    /// Up to `limit` rows with a path after `after_rowid`, in rowid order. A path in a form
    /// roost does not write (a blob) is `None`: checked past, never judged.
    fn row_batch(
        &self,
        after_rowid: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Option<PathBuf>)>, StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT rowid, path FROM recording WHERE rowid > ?1 AND path IS NOT NULL
                 ORDER BY rowid LIMIT ?2",
            )
            .map_err(self.db_error("list recordings to repair"))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        stmt.query_map(params![after_rowid, limit], |r| {
            Ok((r.get(0)?, r.get::<_, String>(1).ok().map(PathBuf::from)))
        })
        .and_then(|rows| rows.collect())
        .map_err(self.db_error("list recordings to repair"))
    }

    /// The rows whose file is confirmed absent under this storage's own recordings/: an
    /// unreadable path (EACCES, EIO) or a row of a storage that was moved is left alone.
    fn files_gone(&self, rows: &[(i64, Option<PathBuf>)]) -> Vec<(i64, PathBuf)> {
        let recordings_dir = self.recordings_dir();
        rows.iter()
            .filter_map(|(rowid, path)| Some((*rowid, path.clone()?)))
            .filter(|(_, path)| {
                path.starts_with(&recordings_dir) && matches!(path.try_exists(), Ok(false))
            })
            .collect()
    }

    /// Marks rows missing in one short transaction and returns the paths of those it changed.
    /// A row the curator marked deleted in the meantime (it marks, commits, then removes the
    /// file) no longer has its path: it is neither changed nor reported missing.
    fn mark_missing(
        &mut self,
        rows: &[(i64, PathBuf)],
        now: Timestamp,
    ) -> Result<Vec<PathBuf>, StorageError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let db_path = self.root().join(DB_FILE);
        let err = |source| StorageError::Database {
            path: db_path.clone(),
            action: "mark rows without file",
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut marked = Vec::new();
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE recording SET path = NULL, deleted_on = ?3, deleted_by = 'missing'
                     WHERE rowid = ?1 AND path = ?2",
                )
                .map_err(err)?;
            let stamp = db_datetime(now);
            for (rowid, path) in rows {
                if update
                    .execute(params![rowid, path.to_string_lossy(), stamp])
                    .map_err(err)?
                    == 1
                {
                    marked.push(path.clone());
                }
            }
        }
        tx.commit().map_err(err)?;
        for path in &marked {
            tracing::warn!(path = %path.display(), "repair: marked the row of a recording whose file is missing (path cleared, deleted_by missing)");
        }
        Ok(marked)
    }

    /// One batch of files from the walk: judged first (reads only), the new rows registered in
    /// one transaction, and only after that commit files deleted or quarantined, so that a
    /// batch retried after a lock does nothing twice.
    fn repair_files(
        &mut self,
        files: &[PathBuf],
        started: Timestamp,
        deployment_id: &uuid::Uuid,
    ) -> Result<RepairReport, StorageError> {
        let verdicts = files
            .iter()
            .map(|f| self.judge_file(f, started))
            .collect::<Result<Vec<_>, _>>()?;
        let new: Vec<&NewRecording> = verdicts
            .iter()
            .filter_map(|v| match v {
                FileVerdict::Unregistered(rec) => Some(rec),
                _ => None,
            })
            .collect();
        let inserted = self.register_batch(&new, deployment_id)?;
        let mut report = RepairReport {
            registered: new
                .iter()
                .zip(inserted)
                .filter(|(_, inserted)| *inserted)
                .map(|(rec, _)| rec.path.clone())
                .collect(),
            ..RepairReport::default()
        };
        if let (Some(first), Some(last)) = (report.registered.first(), report.registered.last()) {
            tracing::warn!(count = report.registered.len(), first = %first.display(), last = %last.display(),
                "repair: registered recordings that had no row");
        }
        for (file, verdict) in files.iter().zip(verdicts) {
            match verdict {
                FileVerdict::DeletionInterrupted => self.finish_deletion(file, &mut report),
                FileVerdict::Unreadable(why) => self.quarantine_unreadable(file, &why, &mut report),
                FileVerdict::Registered
                | FileVerdict::DeletionInProgress
                | FileVerdict::Gone
                | FileVerdict::Unregistered(_) => {}
            }
        }
        Ok(report)
    }

    /// What a file found under recordings/ is to the repair.
    fn judge_file(&self, file: &Path, started: Timestamp) -> Result<FileVerdict, StorageError> {
        if self.has_row(file)? {
            return Ok(FileVerdict::Registered);
        }
        match self.deletion_interrupted(file, started)? {
            Some(true) => return Ok(FileVerdict::DeletionInterrupted),
            Some(false) => return Ok(FileVerdict::DeletionInProgress),
            None => {}
        }
        Ok(match describe_wav(file) {
            Ok(rec) => FileVerdict::Unregistered(rec),
            // Removed since the walk listed it (by the curator or by hand): nothing to do.
            Err(_) if matches!(file.try_exists(), Ok(false)) => FileVerdict::Gone,
            Err(why) => FileVerdict::Unreadable(why),
        })
    }

    /// Whether a row has this path (`recording.path` is UNIQUE, so this is an index lookup).
    fn has_row(&self, file: &Path) -> Result<bool, StorageError> {
        self.conn
            .prepare_cached("SELECT 1 FROM recording WHERE path = ?1")
            .and_then(|mut stmt| stmt.exists([file.to_string_lossy()]))
            .map_err(self.db_error("look up a recording by its path"))
    }

    fn finish_deletion(&self, file: &Path, report: &mut RepairReport) {
        // Its row says it was deleted (a rule decided, then the power went before the file
        // was removed): the decision stands.
        match std::fs::remove_file(file) {
            Ok(()) => {
                tracing::warn!(path = %file.display(), "repair: finished deleting a recording whose row says it was deleted");
                report.deletions_finished.push(file.to_path_buf());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %file.display(), error = %e, "repair: cannot finish deleting a recording");
                report.deletions_finished.push(file.to_path_buf());
            }
        }
    }

    fn quarantine_unreadable(&self, file: &Path, why: &str, report: &mut RepairReport) {
        match self.quarantine(file) {
            Ok(moved) => {
                tracing::warn!(path = %file.display(), to = %moved.display(), why, "repair: quarantined a file that cannot be read or described");
                report.quarantined.push(moved);
            }
            Err(e) => tracing::error!("repair: {}; left where it is", crate::errors::chain(&e)),
        }
    }

    /// For `file` (no row has its path): `Some(true)` when it is a recording whose row says a
    /// rule or cause deleted it before the repair `started` (a row of the same start time, path
    /// cleared, `deleted_by` other than `missing`, and no other row of that start with a file),
    /// `Some(false)` when that deletion was decided since (the curator is removing the file
    /// now: its to finish), `None` when no such row exists.
    fn deletion_interrupted(
        &self,
        file: &Path,
        started: Timestamp,
    ) -> Result<Option<bool>, StorageError> {
        // A `-N` file shares its start with another: never matched by start alone.
        let plain = file
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| s.ends_with('Z'));
        let Some(start) = start_from_file_name(file).filter(|_| plain) else {
            return Ok(None);
        };
        let deleted_on = self.deletions_at(start)?;
        let Some(deleted) = deleted_on.iter().filter_map(|t| parse_db_datetime(t)).max() else {
            return Ok(None);
        };
        // The deletion of that row must not be older than the file: a new recording that
        // claims the same start (a clock set back) is not the one that was deleted.
        let written = std::fs::metadata(file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| Timestamp::try_from(t).ok());
        if written.is_some_and(|w| w > deleted + jiff::SignedDuration::from_secs(1)) {
            return Ok(None);
        }
        Ok(Some(deleted < started))
    }

    /// `deleted_on` of the rows of recordings that started at `start` and were deleted by a
    /// rule or cause, when no row of that start still has a file. "At `start`": within a
    /// millisecond after it, as a row in the same microsecond as another is stored a
    /// microsecond later (acoupi's UNIQUE `datetime`).
    fn deletions_at(&self, start: Timestamp) -> Result<Vec<String>, StorageError> {
        let until = start
            .checked_add(jiff::SignedDuration::from_millis(1))
            .unwrap_or(start);
        self.conn
            .prepare_cached(
                "SELECT deleted_on FROM recording WHERE datetime >= ?1 AND datetime < ?2
                     AND path IS NULL AND deleted_by IS NOT NULL AND deleted_by != 'missing'
                     AND deleted_on IS NOT NULL
                     AND NOT EXISTS (SELECT 1 FROM recording WHERE datetime >= ?1
                         AND datetime < ?2 AND path IS NOT NULL)",
            )
            .and_then(|mut stmt| {
                stmt.query_map([db_datetime(start), db_datetime(until)], |r| {
                    r.get::<_, String>(0)
                })?
                .filter(|r| !matches!(r, Err(rusqlite::Error::InvalidColumnType(..))))
                .collect()
            })
            .map_err(self.db_error("look up a deleted recording"))
    }

    /// Records that a recording's file is gone: `path` NULL (acoupi's "not stored locally"),
    /// `deleted_on` `now`, `deleted_by` the rule or cause (`onLowSpace`, `missing`, a keep
    /// rule, `maxAge`, `maxUsage`). Its detections stay. The first to mark a row wins: a
    /// later "missing" never relabels a deliberate deletion.
    pub fn mark_deleted(&self, id: &uuid::Uuid, by: &str, now: Timestamp) -> rusqlite::Result<()> {
        mark_deleted(&self.conn, id, by, now)
    }

    /// Marks several recordings deleted (as [`Self::mark_deleted`]) in one transaction that is
    /// on the card when this returns (synchronous FULL for its commit): only then may their
    /// files go.
    pub fn mark_deleted_durably(
        &mut self,
        ids: &[&uuid::Uuid],
        by: &str,
        now: Timestamp,
    ) -> rusqlite::Result<()> {
        durably(&mut self.conn, |tx| {
            ids.iter().try_for_each(|id| mark_deleted(tx, id, by, now))
        })
    }

    /// Moves a file into quarantine/, keeping its name (never replacing); returns the new path.
    pub fn quarantine(&self, file: &Path) -> Result<PathBuf, StorageError> {
        self.folders().quarantine(file)
    }

    /// `PRAGMA integrity_check`; "ok" when the database is sound.
    pub fn integrity_check(&self) -> Result<String, StorageError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(self.db_error("check its integrity"))
    }
}

/// The rows that decode, the others (a value of another type than roost writes: a text id or
/// one that is no UUID's 16 bytes, text in a number column) passed over with one warning: one foreign row never
/// stops what roost does with all the others. An error of the database itself is returned.
pub fn skip_foreign_rows<T>(
    rows: impl Iterator<Item = rusqlite::Result<T>>,
) -> rusqlite::Result<Vec<T>> {
    let mut out = Vec::new();
    let mut skipped = 0;
    for row in rows {
        match row {
            Ok(r) => out.push(r),
            Err(
                rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::IntegralValueOutOfRange(..),
            ) => skipped += 1,
            Err(e) => return Err(e),
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "rows of metadata.db in a form roost does not write were passed over"
        );
    }
    Ok(out)
}

/// The file of a recording is gone or going: `path` NULL (acoupi's "not stored locally"),
/// `deleted_on` `now`, `deleted_by` the rule or cause. The first to mark a row wins.
pub fn mark_deleted(
    conn: &Connection,
    id: &uuid::Uuid,
    by: &str,
    now: Timestamp,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE recording SET path = NULL, deleted_on = ?2, deleted_by = ?3
         WHERE id = ?1 AND path IS NOT NULL",
        params![id, db_datetime(now), by],
    )
    .map(drop)
}

const INSERT_RECORDING: &str = "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(path) DO NOTHING";

/// Inserts a recording's row ([`INSERT_RECORDING`]); returns 1, or 0 when its path has a row
/// already. acoupi's `datetime` is UNIQUE: a recording that starts in the same microsecond as
/// another (the clock stepped back) is stored a microsecond later; its file name and GUANO
/// keep the time it was made.
fn insert_recording(
    conn: &Connection,
    id: &uuid::Uuid,
    rec: &NewRecording,
    deployment_id: &uuid::Uuid,
) -> rusqlite::Result<usize> {
    let datetime = schema::free_time(conn, "recording", "datetime", &db_datetime(rec.datetime))?;
    conn.prepare_cached(INSERT_RECORDING)?.execute(params![
        id,
        rec.path.to_string_lossy(),
        datetime,
        rec.duration_s,
        rec.samplerate_hz,
        rec.audio_channels,
        deployment_id,
    ])
}

/// Runs `work` in one IMMEDIATE transaction whose commit is fsynced (synchronous FULL for that
/// commit, NORMAL again after): what it wrote survives a power cut once this returns. Files
/// are deleted only after such a commit says why.
pub fn durably<T>(
    conn: &mut Connection,
    work: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.pragma_update(None, "synchronous", "FULL")?;
    let result = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .and_then(|tx| {
            let out = work(&tx)?;
            tx.commit().map(|()| out)
        });
    let _ = conn.pragma_update(None, "synchronous", "NORMAL");
    result
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

fn wal_path(root: &Path) -> PathBuf {
    root.join(format!("{DB_FILE}-wal"))
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| identity_of(&m))
}

fn identity_of(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// A handle on metadata.db held while SQLite opens it, so that its identity is the file's
/// at that moment. `O_PATH`: closing it never drops the POSIX locks SQLite holds on the file
/// through other descriptors of this process (closing an ordinary descriptor would, and a
/// connection in WAL mode would then take itself for the last one). A missing file is created
/// first (exclusively: a new file has no locks to lose), as SQLite would create it.
fn pin_file(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let pin = || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_PATH)
            .open(path)
    };
    match pin() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path);
            pin().ok()
        }
        other => other.ok(),
    }
}

/// Moves metadata.db (and its -wal and -shm files) to `metadata.db.bad-<UTC time>[-wal|-shm]`.
fn set_aside_db(root: &Path) -> std::io::Result<PathBuf> {
    let stamp = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let aside = rename_no_replace(
        &root.join(DB_FILE),
        &root.join(format!("{DB_FILE}.bad-{stamp}")),
    )?;
    for suffix in ["-wal", "-shm"] {
        let from = root.join(format!("{DB_FILE}{suffix}"));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            let _ = rename_no_replace(&from, &to);
        }
    }
    Ok(aside)
}

/// Free bytes available to unprivileged writers on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    fs_bytes(path, |st| st.blocks_available())
}

/// Size in bytes of the file system holding `path`.
pub fn fs_size(path: &Path) -> std::io::Result<u64> {
    fs_bytes(path, |st| st.blocks())
}

fn fs_bytes(
    path: &Path,
    blocks: impl Fn(&nix::sys::statvfs::Statvfs) -> nix::libc::fsblkcnt_t,
) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    // The field types differ between targets (32-bit on armhf).
    #[allow(clippy::unnecessary_cast)]
    Ok(blocks(&st) as u64 * st.fragment_size() as u64)
}

/// Bytes a file takes on its disk (allocated blocks; 0 when it cannot be read): what deleting it
/// frees.
pub fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
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
    // `...Z-2.wav`: a second file that claimed the same start (a wall clock stepped back).
    let stem = match stem.rsplit_once("Z-") {
        Some((time, n)) if n.bytes().all(|b| b.is_ascii_digit()) => time,
        _ => stem.strip_suffix('Z')?,
    };
    let dt = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%S.%f", stem).ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// acoupi 0.8.0's datetime text (Python's `isoformat()` of a UTC time), which acoupi's
/// store compares as text: `YYYY-MM-DDTHH:MM:SS+00:00`, or `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`
/// when the microsecond is not 0 (nanoseconds are cut, as Python keeps microseconds). Both
/// sort in time order ('+' sorts before '.').
pub fn db_datetime(t: Timestamp) -> String {
    // The civil time's fraction: a timestamp's is negative before 1970.
    let civil = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let micros = civil.subsec_nanosecond() / 1000;
    if micros == 0 {
        civil.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        format!("{}.{micros:06}+00:00", civil.strftime("%Y-%m-%dT%H:%M:%S"))
    }
}

/// The marker that protects a recording from every deletion: `<file>.keep` beside it.
pub fn keep_marker(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".keep");
    PathBuf::from(name)
}

/// The instant of a time column written by [`db_datetime`]; also any RFC 3339 time with an
/// offset or `Z` (acoupi keeps the offset it was given), and a time without one, taken as
/// UTC (older roosts wrote `YYYY-MM-DD HH:MM:SS.ffffff`); `None` when it is no time.
pub fn parse_db_datetime(text: &str) -> Option<Timestamp> {
    if let Ok(t) = text.trim().parse::<Timestamp>() {
        return Some(t);
    }
    let civil: jiff::civil::DateTime = text.trim().parse().ok()?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// Highest sample rate a recording may claim (Hz): twice the recorder's own limit.
pub const MAX_SAMPLE_RATE: u32 = 1_536_000;
/// Most channels a recording may claim.
pub const MAX_CHANNELS: u16 = 64;
/// Longest recording a row may describe (s): a day.
pub const MAX_DURATION_S: f64 = 86_400.0;

/// Why a recording's numbers cannot describe it: `None` when they can. Every number read from
/// a WAV header or a row goes through here before any arithmetic.
pub fn implausible(duration_s: f64, samplerate_hz: u32, channels: u16) -> Option<String> {
    if !(1..=MAX_SAMPLE_RATE).contains(&samplerate_hz) {
        return Some(format!(
            "sample rate {samplerate_hz} Hz is outside 1 to {MAX_SAMPLE_RATE}"
        ));
    }
    if !(1..=MAX_CHANNELS).contains(&channels) {
        return Some(format!(
            "{channels} channels is outside 1 to {MAX_CHANNELS}"
        ));
    }
    if !duration_s.is_finite() || !(0.0..=MAX_DURATION_S).contains(&duration_s) {
        return Some(format!(
            "duration {duration_s} s is outside 0 to {MAX_DURATION_S}"
        ));
    }
    None
}

/// The row a WAV under recordings/ describes, its numbers checked: the header's rate, channels
/// and bits within range, and its data no larger than the file. The error says why not.
fn describe_wav(path: &Path) -> Result<NewRecording, String> {
    let datetime = start_from_file_name(path).ok_or("its name is not a start time")?;
    let reader = hound::WavReader::open(path).map_err(|e| e.to_string())?;
    let spec = reader.spec();
    if !(8..=32).contains(&spec.bits_per_sample) {
        return Err(format!("{} bits per sample", spec.bits_per_sample));
    }
    let frames = u64::from(reader.duration());
    let frame_bytes = u64::from(spec.channels) * u64::from(spec.bits_per_sample.div_ceil(8));
    let file_bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    if frames.saturating_mul(frame_bytes) > file_bytes {
        return Err(format!(
            "its header claims {frames} frames, more than its {file_bytes} bytes hold"
        ));
    }
    let duration_s = frames as f64 / f64::from(spec.sample_rate.max(1));
    if let Some(why) = implausible(duration_s, spec.sample_rate, spec.channels) {
        return Err(why);
    }
    Ok(NewRecording {
        path: path.to_path_buf(),
        datetime,
        duration_s,
        samplerate_hz: spec.sample_rate,
        audio_channels: spec.channels,
    })
}

/// `start + duration_s`, `None` when the sum is not a time (a duration that is not a finite
/// number of seconds, or out of range).
pub fn end_of(start: Timestamp, duration_s: f64) -> Option<Timestamp> {
    let d = jiff::SignedDuration::try_from_secs_f64(duration_s).ok()?;
    start.checked_add(d).ok()
}

/// The `*.wav` files under a folder, one at a time (hidden names such as macOS's `._x.wav`
/// skipped): it holds one open folder per level, never a list of every path. Folders that
/// cannot be read are logged and skipped.
#[derive(Debug)]
struct WavWalk {
    open: Vec<std::fs::ReadDir>,
}

impl WavWalk {
    fn new(dir: &Path) -> Self {
        let mut walk = Self { open: Vec::new() };
        walk.enter(dir);
        walk
    }

    fn enter(&mut self, dir: &Path) {
        if self.open.len() >= MAX_WALK_DEPTH {
            tracing::warn!(path = %dir.display(), "repair: folders nested too deep under recordings/; skipped");
            return;
        }
        match std::fs::read_dir(dir) {
            Ok(entries) => self.open.push(entries),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = %dir.display(), error = %e, "repair: cannot list a folder of recordings; skipped")
            }
        }
    }
}

impl Iterator for WavWalk {
    type Item = PathBuf;

    fn next(&mut self) -> Option<PathBuf> {
        loop {
            // An error ends that folder's listing (std marks its stream ended): never a loop.
            let Some(entry) = self.open.last_mut()?.next() else {
                self.open.pop();
                continue;
            };
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => self.enter(&entry.path()),
                Ok(t) if t.is_file() && name.to_ascii_lowercase().ends_with(".wav") => {
                    return Some(entry.path());
                }
                _ => {}
            }
        }
    }
}

/// A random (version 4) UUID, as acoupi's ids are. Stored as its 16 bytes (acoupi's BLOB
/// ids), sent in messages in its usual text form.
pub fn new_uuid() -> uuid::Uuid {
    let mut b = [0u8; 16];
    if let Err(e) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
    {
        // Unique enough without the kernel's generator: time and pid.
        tracing::warn!(error = %e, "cannot read /dev/urandom; deriving the id from the clock");
        let n = Timestamp::now().as_nanosecond() as u128 ^ (u128::from(std::process::id()) << 96);
        b = n.to_le_bytes();
    }
    uuid::Builder::from_random_bytes(b).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::recorder::{ByteSize, OnLowSpace};

    fn spec(min_free: u64, on_low: OnLowSpace) -> StorageSpec {
        StorageSpec {
            path: None,
            min_free_space: ByteSize(min_free),
            on_low_space: on_low,
            ..StorageSpec::default()
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

    /// A model output's detections and their tags are read through acoupi's indexes: no
    /// lookup reads the whole table (a cost that grew with every recording ever analysed).
    #[test]
    fn tags_are_found_by_their_model_output_through_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        let plan: Vec<String> = s
            .conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT t.key FROM predicted_tag t
                 JOIN detection d ON d.id = t.detection_id WHERE d.model_output_id = ?1",
            )
            .unwrap()
            .query_map([uuid::Uuid::nil()], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert!(plan.iter().all(|step| step.contains("USING")), "{plan:?}");
    }

    #[test]
    fn schema_is_created_once_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        let v: i64 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1, "acoupi's schema version");
        let mode: String = s
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(s);
        let s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    /// Another program sets `PRAGMA user_version` (acoupi's store sets 1 on every open): roost
    /// replays no migration and keeps registering rows, whatever the value.
    #[test]
    fn another_programs_user_version_never_replays_a_migration() {
        for foreign in [0, 1, 3, 4, 99] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
            let dep = s.start_deployment("d", None, Timestamp::now()).unwrap();
            register_wavs(&mut s, &dep, 2, 800);
            s.conn.pragma_update(None, "user_version", foreign).unwrap();
            drop(s);
            let mut s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop))
                .unwrap_or_else(|e| panic!("user_version {foreign}: {}", crate::errors::chain(&e)));
            let t: Timestamp = "2026-06-01T11:00:00Z".parse().unwrap();
            let path = recording_path(&s.recordings_dir(), t);
            write_wav(&path, 800);
            let rec = NewRecording {
                path,
                datetime: t,
                duration_s: 0.1,
                samplerate_hz: 8000,
                audio_channels: 1,
            };
            s.register(&rec, &dep).unwrap();
            assert_eq!(s.recordings().unwrap().len(), 3, "user_version {foreign}");
            assert_eq!(
                schema::layout(&s.conn).unwrap(),
                schema::Layout::Roost(schema::VERSION)
            );
        }
    }

    /// A database of a roost before `roost_schema` is judged by its tables (its user_version
    /// may have been changed by another program); one of a future roost is refused, untouched.
    #[test]
    fn the_schema_is_judged_by_roosts_own_marker_or_its_tables() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        s.conn
            .execute_batch("DROP TABLE roost_schema; PRAGMA user_version = 1;")
            .unwrap();
        assert_eq!(
            schema::layout(&s.conn).unwrap(),
            schema::Layout::Roost(schema::VERSION)
        );
        drop(s);
        let s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        let marked: i64 = s
            .conn
            .query_row("SELECT version FROM roost_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(marked, schema::VERSION as i64);
        s.conn
            .execute("UPDATE roost_schema SET version = 99", [])
            .unwrap();
        drop(s);
        let e = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap_err();
        assert_eq!(e.code().code, "DEP_E322");
        assert!(
            crate::errors::chain(&e)
                .contains("its layout is version 99, newer than this roost knows (7)"),
            "{}",
            crate::errors::chain(&e)
        );
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let still: i64 = conn
            .query_row("SELECT version FROM roost_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(still, 99, "a future roost's database is not rewritten");
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
        assert_eq!(ended.as_deref(), Some("2026-06-01T00:00:00+00:00"));
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
        let junk = s
            .recordings_dir()
            .join("2026/06/01/20260601T080000.000000Z.wav");
        std::fs::write(&junk, b"x").unwrap();
        // Other files are not roost's to judge: left alone.
        let notes = s.recordings_dir().join("2026/06/01/notes.txt");
        std::fs::write(&notes, b"x").unwrap();
        let sidecar = s
            .recordings_dir()
            .join("2026/06/01/._20260601T100000.000000Z.wav");
        std::fs::write(&sidecar, b"x").unwrap();
        let gone = s
            .recordings_dir()
            .join("2026/06/01/20260601T090000.000000Z.wav");
        s.register(
            &NewRecording {
                path: gone.clone(),
                datetime: t - jiff::SignedDuration::from_hours(1),
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
        assert_eq!(rows[0].datetime, "2026-06-01T10:00:00+00:00");
        assert_eq!(rows[0].duration_s, 1.0);
        assert!(s.repair(&dep).unwrap().is_empty());
        assert!(notes.exists() && sidecar.exists());
    }

    /// A storage with `n` registered files, one a minute from 10:00.
    fn storage_with(n: u32) -> (tempfile::TempDir, Storage, uuid::Uuid, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        let dep = s.start_deployment("m", None, Timestamp::now()).unwrap();
        let files = register_wavs(&mut s, &dep, n, 10);
        (dir, s, dep, files)
    }

    fn second_connection(s: &Storage) -> Connection {
        let conn = Connection::open(s.root().join(DB_FILE)).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    fn id_of(s: &Storage, path: &Path) -> uuid::Uuid {
        s.connection()
            .query_row(
                "SELECT id FROM recording WHERE path = ?1",
                [path.to_string_lossy()],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Memory bounded by the batch, not the archive: each step handles at most one batch of
    /// rows or files, holds at most one open folder per level, and the totals still add up.
    #[test]
    fn a_repair_holds_one_batch_at_a_time() {
        let (_dir, mut s, dep, files) = storage_with(23);
        for f in &files[..5] {
            std::fs::remove_file(f).unwrap();
        }
        let t: Timestamp = "2026-06-02T10:00:00Z".parse().unwrap();
        for minute in 0..7 {
            let at = t + jiff::SignedDuration::from_mins(minute);
            write_wav(&recording_path(&s.recordings_dir(), at), 10);
        }
        let mut repair = Repair::with_batch(Timestamp::now(), 4);
        let mut steps = 0;
        while !repair.is_done() {
            let before = repair.progress().clone();
            let batch = s.repair_step(&mut repair, &dep).unwrap();
            let after = repair.progress();
            let handled = (after.rows_checked - before.rows_checked)
                + (after.files_checked - before.files_checked);
            assert!(handled <= 4, "step {steps} handled {handled}");
            let listed = batch.registered.len() + batch.rows_removed.len();
            assert!(listed <= 4, "step {steps} listed {listed}");
            assert!(repair.pending.is_empty());
            if let Cursor::Files(walk) = &repair.cursor {
                assert!(walk.open.len() <= 4, "recordings/YYYY/MM/DD");
            }
            steps += 1;
            assert!(steps < 100);
        }
        let p = repair.progress();
        assert_eq!((p.rows_checked, p.rows_removed), (23, 5));
        assert_eq!((p.files_checked, p.registered), (25, 7));
        assert_eq!(p.phase, RepairPhase::Done);
        assert_eq!(s.recordings().unwrap().len(), 25);
    }

    /// The curator marks a row deleted (committed), then removes the file. A repair that read
    /// the row before must not call it missing, nor relabel the curator's reason.
    #[test]
    fn a_row_the_curator_deletes_during_the_repair_is_not_reported_missing() {
        let (_dir, mut s, dep, files) = storage_with(3);
        let rows = s.row_batch(0, REPAIR_BATCH).unwrap();
        let curator = second_connection(&s);
        mark_deleted(&curator, &id_of(&s, &files[1]), "keep", Timestamp::now()).unwrap();
        std::fs::remove_file(&files[1]).unwrap();
        let gone = s.files_gone(&rows);
        assert_eq!(gone.len(), 1, "the repair saw the file gone");
        assert!(s.mark_missing(&gone, Timestamp::now()).unwrap().is_empty());
        // Deleted before the repair read the rows: not even looked at.
        mark_deleted(&curator, &id_of(&s, &files[2]), "maxAge", Timestamp::now()).unwrap();
        std::fs::remove_file(&files[2]).unwrap();
        let report = s.repair(&dep).unwrap();
        assert!(report.is_empty(), "{report:?}");
        let reasons: Vec<Option<String>> = s
            .connection()
            .prepare("SELECT deleted_by FROM recording ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(reasons, [None, Some("keep".into()), Some("maxAge".into())]);
    }

    /// A file whose row the curator marked deleted after the repair started is the curator's
    /// to remove: not registered, not removed, not reported. One whose deletion was decided
    /// before (a power cut in between; `deleted_on` in the old RFC 3339 form) is finished.
    #[test]
    fn a_deletion_in_progress_is_left_to_the_curator_and_an_interrupted_one_finished() {
        let (_dir, mut s, dep, files) = storage_with(2);
        let started = Timestamp::now();
        let curator = second_connection(&s);
        let later = started + jiff::SignedDuration::from_secs(5);
        mark_deleted(&curator, &id_of(&s, &files[0]), "keep", later).unwrap();
        let old = started - jiff::SignedDuration::from_secs(5);
        curator
            .execute(
                "UPDATE recording SET path = NULL, deleted_by = 'onLowSpace', deleted_on = ?2 WHERE path = ?1",
                params![files[1].to_string_lossy(), old.to_string()],
            )
            .unwrap();
        // The files were written before both decisions.
        for f in &files {
            let t = std::time::SystemTime::from(old - jiff::SignedDuration::from_secs(60));
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let mut repair = Repair::new(started);
        let mut report = RepairReport::default();
        while !repair.is_done() {
            report.absorb(s.repair_step(&mut repair, &dep).unwrap(), usize::MAX);
        }
        assert!(files[0].exists(), "the curator's to remove");
        assert!(!files[1].exists());
        assert_eq!(report.deletions_finished, vec![files[1].clone()]);
        assert!(report.registered.is_empty() && report.rows_removed.is_empty());
    }

    /// A lock held by another program fails one batch, which is retried alone: nothing is
    /// redone and every row is counted once.
    #[test]
    fn a_locked_batch_is_retried_alone() {
        let (_dir, mut s, dep, files) = storage_with(10);
        for f in &files {
            std::fs::remove_file(f).unwrap();
        }
        let mut repair = Repair::with_batch(Timestamp::now(), 4);
        s.repair_step(&mut repair, &dep).unwrap();
        let curator = second_connection(&s);
        curator.execute_batch("BEGIN IMMEDIATE").unwrap();
        let err = s.repair_step(&mut repair, &dep).unwrap_err();
        assert!(err.is_busy(), "{err}");
        assert_eq!(repair.progress().rows_checked, 4);
        curator.execute_batch("COMMIT").unwrap();
        let mut removed = 4;
        while !repair.is_done() {
            removed += s.repair_step(&mut repair, &dep).unwrap().rows_removed.len();
        }
        assert_eq!(removed, 10);
        assert_eq!(repair.progress().rows_checked, 10);
        assert_eq!(repair.progress().rows_removed, 10);
    }

    #[test]
    fn deleted_on_is_written_like_every_other_time_and_both_forms_are_read() {
        let (_dir, s, _dep, files) = storage_with(1);
        let t: Timestamp = "2026-06-01T10:00:00.25Z".parse().unwrap();
        s.mark_deleted(&id_of(&s, &files[0]), "keep", t).unwrap();
        let text: String = s
            .connection()
            .query_row("SELECT deleted_on FROM recording", [], |r| r.get(0))
            .unwrap();
        assert_eq!(text, "2026-06-01T10:00:00.250000+00:00");
        assert_eq!(parse_db_datetime(&text), Some(t));
        assert_eq!(
            parse_db_datetime("2026-06-01 10:00:00.250000"),
            Some(t),
            "older roosts"
        );
        assert_eq!(parse_db_datetime(&t.to_string()), Some(t));
        assert_eq!(
            parse_db_datetime("2026-06-01T10:00:00.25+02:00"),
            Some(t - jiff::SignedDuration::from_hours(2))
        );
        assert_eq!(parse_db_datetime("yesterday"), None);
        // Before 1970 and at the ends of time: acoupi's form, and read back.
        for text in [
            "1969-12-31T23:59:59.500000+00:00",
            "1960-01-01T00:00:00+00:00",
            "2999-12-31T23:59:59.999999+00:00",
        ] {
            let t = parse_db_datetime(text).unwrap();
            assert_eq!(db_datetime(t), text);
        }
    }

    fn register_wavs(s: &mut Storage, dep: &uuid::Uuid, minutes: u32, frames: u32) -> Vec<PathBuf> {
        (0..minutes)
            .map(|minute| {
                let t: Timestamp = format!("2026-06-01T10:{minute:02}:00Z").parse().unwrap();
                let path = recording_path(&s.recordings_dir(), t);
                write_wav(&path, frames);
                let rec = NewRecording {
                    path: path.clone(),
                    datetime: t,
                    duration_s: 0.1,
                    samplerate_hz: 8000,
                    audio_channels: 1,
                };
                s.register(&rec, dep).unwrap();
                // Registering twice keeps one row (retries are harmless).
                s.register(&rec, dep).unwrap();
                path
            })
            .collect()
    }

    #[test]
    fn delete_oldest_deletes_only_what_brings_free_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(dir.path(), &spec(0, OnLowSpace::DeleteOldest)).unwrap();
        let dep = s.start_deployment("m", None, Timestamp::now()).unwrap();
        let files = register_wavs(&mut s, &dep, 6, 40_000);
        assert_eq!(s.recordings().unwrap().len(), 6);
        let free = s.free_bytes().unwrap();
        let size = std::fs::metadata(&files[0]).unwrap().len();
        // Two files' worth more than is free: exactly the two oldest go (blocks may round up).
        let out = s.make_room(free + size + size / 2).unwrap();
        assert!(out.enough, "{out:?}");
        assert_eq!(out.deleted, files[..2].to_vec());
        assert!(!files[0].exists() && !files[1].exists() && files[2].exists());
        assert_eq!(s.recordings().unwrap().len(), 4);
        // Space held by other files: more than every recording together; nothing is deleted.
        let out = s.make_room(free + (1 << 40)).unwrap();
        assert!(!out.enough && out.deleted.is_empty(), "{out:?}");
        assert!(out.reclaimable >= 4 * size, "{out:?}");
        assert_eq!(s.recordings().unwrap().len(), 4);
        // Enough already: nothing to do.
        assert_eq!(s.make_room(0).unwrap().deleted.len(), 0);
    }

    /// Rows roost did not write, or whose file went by hand, never stop deleteOldest: a row
    /// whose id is no UUID's 16 bytes (text, as another program may write), the oldest, is
    /// passed over; a file
    /// removed by hand frees nothing and is not counted as deleted by onLowSpace; the
    /// recordings after them are deleted as asked, and listed.
    #[test]
    fn foreign_rows_and_vanished_files_never_stop_delete_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(dir.path(), &spec(0, OnLowSpace::DeleteOldest)).unwrap();
        let dep = s.start_deployment("m", None, Timestamp::now()).unwrap();
        let files = register_wavs(&mut s, &dep, 5, 40_000);
        s.connection()
            .execute(
                "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
                 VALUES ('row-of-another-program', ?1, '2026-01-01T00:00:00+00:00', 1.0, 8000, 1, ?2)",
                params![dir.path().join("recordings/acoupi-row.wav").to_string_lossy(), dep],
            )
            .unwrap();
        std::fs::remove_file(&files[0]).unwrap();
        assert_eq!(
            s.recordings().unwrap().len(),
            5,
            "the text-id row is passed over"
        );
        let free = s.free_bytes().unwrap();
        let size = std::fs::metadata(&files[1]).unwrap().len();
        let out = s.make_room(free + size + size / 2).unwrap();
        assert!(out.enough, "{out:?}");
        assert_eq!(out.deleted, files[1..3].to_vec());
        let by: Option<String> = s
            .connection()
            .query_row(
                "SELECT deleted_by FROM recording WHERE path IS NULL AND datetime = '2026-06-01T10:00:00+00:00'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        assert_eq!(by, None, "a file removed by hand is not onLowSpace's");
    }

    #[test]
    fn renames_never_replace_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("r/20260601T100000.000000Z.wav");
        for (i, body) in ["first", "second", "third"].iter().enumerate() {
            let temp = dir.path().join(format!("t{i}"));
            std::fs::write(&temp, body).unwrap();
            let placed = rename_no_replace(&temp, &target).unwrap();
            let expected = if i == 0 {
                target.clone()
            } else {
                numbered(&target, i as u32)
            };
            assert_eq!(placed, expected);
            assert_eq!(std::fs::read_to_string(&placed).unwrap(), *body);
            let start: Timestamp = "2026-06-01T10:00:00Z".parse().unwrap();
            assert_eq!(start_from_file_name(&placed), Some(start));
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "first");
    }

    /// Opening keeps this process's locks on metadata.db: another program's connection that
    /// closes (here the sqlite3 shell) must not take itself for the last one and remove the
    /// -wal file this connection still writes into (found: a descriptor closed after SQLite's
    /// open dropped every POSIX lock the process held on the file).
    #[test]
    fn another_programs_close_never_takes_this_connections_log() {
        if std::process::Command::new("sqlite3")
            .arg("-version")
            .output()
            .is_err()
        {
            eprintln!("skipping: no sqlite3 shell (apt-get install sqlite3)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        let dep = s.start_deployment("m", None, Timestamp::now()).unwrap();
        register_wavs(&mut s, &dep, 2, 10);
        let db = dir.path().join(DB_FILE);
        let out = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg("SELECT count(*) FROM recording;")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
        assert!(
            dir.path().join("metadata.db-wal").exists(),
            "the log is still there"
        );
        register_wavs(&mut s, &dep, 3, 10);
        let fresh = Connection::open(&db).unwrap();
        let n: i64 = fresh
            .query_row("SELECT count(*) FROM recording", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            n, 3,
            "rows written after the other program closed are in the file"
        );
    }

    /// Whatever happens to metadata.db while it is being opened (another file renamed over
    /// it, deleted, a folder put there), a connection that does not write to the file under
    /// the name says so: found by a restore landing between SQLite's open and the identity.
    #[test]
    fn a_database_replaced_while_it_is_opened_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE);
        let spec = spec(0, OnLowSpace::Stop);
        let mut missed = Vec::new();
        for round in 0..60u64 {
            for f in ["metadata.db", "metadata.db-wal", "metadata.db-shm"] {
                let _ = std::fs::remove_file(dir.path().join(f));
                let _ = std::fs::remove_dir(dir.path().join(f));
            }
            drop(Storage::open(dir.path(), &spec).unwrap());
            let copy = dir.path().join("copy.db");
            std::fs::copy(&db, &copy).unwrap();
            let db2 = db.clone();
            let meddler = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(round * 97 % 3000));
                match round % 3 {
                    0 => std::fs::rename(&copy, &db2).unwrap(),
                    1 => std::fs::remove_file(&db2).unwrap(),
                    _ => {
                        std::fs::remove_file(&db2).unwrap();
                        std::fs::create_dir(&db2).unwrap();
                    }
                }
            });
            let opened = Storage::open(dir.path(), &spec);
            meddler.join().unwrap();
            let Ok(s) = opened else { continue };
            s.conn
                .execute_batch(
                    "CREATE TABLE IF NOT EXISTS marker(x); INSERT INTO marker VALUES (1);",
                )
                .unwrap();
            let named_has_it = Connection::open(&db).ok().is_some_and(|c| {
                c.query_row("SELECT count(*) FROM marker", [], |r| r.get::<_, i64>(0))
                    .is_ok_and(|n| n == 1)
            });
            if !named_has_it && !s.db_replaced() {
                missed.push(round);
            }
            s.close_replaced();
        }
        assert_eq!(
            missed,
            Vec::<u64>::new(),
            "rounds where rows went to an unlinked file unnoticed"
        );
    }

    #[test]
    fn an_unreadable_database_is_set_aside_and_a_replaced_one_noticed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![b'x'; 8192]).unwrap();
        let s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        let aside = s.set_aside().unwrap().to_path_buf();
        assert!(
            aside
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("metadata.db.bad-")
        );
        assert_eq!(std::fs::read(&aside).unwrap(), vec![b'x'; 8192]);
        assert_eq!(s.integrity_check().unwrap(), "ok");
        assert!(!s.db_replaced());
        std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
        assert!(s.db_replaced());
        // Junk renamed over a database in use: the old log must not turn it back into the old
        // database (SQLite leaves the log of an unlinked file behind and would replay it).
        let mut s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        let dep = s.start_deployment("m", None, Timestamp::now()).unwrap();
        register_wavs(&mut s, &dep, 2, 10);
        std::fs::write(dir.path().join("junk"), vec![b'j'; 10_000]).unwrap();
        std::fs::rename(dir.path().join("junk"), dir.path().join(DB_FILE)).unwrap();
        assert!(s.db_replaced());
        s.close_replaced();
        let s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        assert!(
            s.set_aside().is_some(),
            "the junk is set aside, not read through the old log"
        );
        assert!(s.recordings().unwrap().is_empty());
        drop(s);
        // A database found damaged in use is replaced on request; a folder in its place too.
        let s = Storage::open_or_replace(dir.path(), &spec(0, OnLowSpace::Stop), true).unwrap();
        assert!(s.set_aside().is_some());
        drop(s);
        for f in ["metadata.db", "metadata.db-wal", "metadata.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        std::fs::create_dir(dir.path().join(DB_FILE)).unwrap();
        let s = Storage::open(dir.path(), &spec(0, OnLowSpace::Stop)).unwrap();
        assert!(s.set_aside().is_some_and(|p| p.is_dir()));
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    /// `requireMount` as `RequiresMountsFor=`: a folder on a mounted card counts, the card's
    /// own mount point counts, the root file system never; an fstab entry names the mount
    /// waited for, and a file system mounted above it (`/media` on tmpfs) does not stand in.
    #[test]
    fn require_mount_is_a_mounted_file_system_at_or_above_the_folder() {
        let info = |mounts: &[&str]| {
            mounts
                .iter()
                .enumerate()
                .map(|(i, m)| format!("{i} 1 8:1 / {m} rw,relatime shared:1 - ext4 /dev/x rw\n"))
                .collect::<String>()
        };
        let p = |s: &str| PathBuf::from(s);
        let root_only = info(&["/", "/proc"]);
        let card = info(&["/", "/proc", "/media/card"]);
        let path = p("/media/card/roost");
        assert_eq!(
            mount_needed(&path, &root_only, ""),
            Err(MountWait::AtOrAbove(path.clone()))
        );
        assert_eq!(mount_needed(&path, &card, ""), Ok(p("/media/card")));
        assert_eq!(
            mount_needed(&p("/media/card"), &card, ""),
            Ok(p("/media/card"))
        );
        assert_eq!(
            mount_needed(&p("/media/cardigan"), &card, ""),
            Err(MountWait::AtOrAbove(p("/media/cardigan")))
        );
        let fstab =
            "# <fs> <dir>\nUUID=1 / ext4 defaults 0 1\nLABEL=CARD /media/card vfat nofail 0 0\n";
        assert_eq!(
            mount_needed(&path, &root_only, fstab),
            Err(MountWait::Fstab(p("/media/card")))
        );
        let media = info(&["/", "/media"]);
        assert_eq!(
            mount_needed(&path, &media, fstab),
            Err(MountWait::Fstab(p("/media/card")))
        );
        assert_eq!(mount_needed(&path, &media, ""), Ok(p("/media")));
        assert_eq!(mount_needed(&path, &card, fstab), Ok(p("/media/card")));
        let run = info(&["/", "/run", "/run/user"]);
        let udisks = p("/run/media/pi/CARD/roost");
        assert_eq!(
            mount_needed(&udisks, &run, ""),
            Err(MountWait::AtOrAbove(udisks.clone())),
            "/run (tmpfs) is not the card"
        );
        let spaced = info(&["/", "/mnt/my\\040card"]);
        assert_eq!(
            mount_needed(&p("/mnt/my card/r"), &spaced, ""),
            Ok(p("/mnt/my card"))
        );
    }

    #[test]
    fn a_storage_that_must_be_mounted_is_not_created_until_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("card");
        let mut must = spec(0, OnLowSpace::Stop);
        must.require_mount = true;
        let err = Folders::new(&root, &must).prepare().unwrap_err();
        assert!(matches!(err, StorageError::NotMounted { .. }), "{err}");
        assert_eq!(err.code().code, "DEP_E301");
        assert!(!root.exists(), "nothing is created on the root file system");
        std::fs::create_dir(&root).unwrap();
        assert!(Folders::new(&root, &must).prepare().is_err());
        assert_eq!(unescape_mountinfo("/mnt/my\\040card"), "/mnt/my card");
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
        assert_eq!(new_uuid().get_version_num(), 4);
        assert_eq!(new_uuid().to_string().len(), 36);
    }
}
