//! Where recordings land: a file is made in `.partial/`, completed there, then moved into
//! `recordings/` without replacing anything. A finished file that cannot be moved yet (its
//! folder cannot be made, the storage was swapped) is kept and retried; partial files a crash
//! left are completed or set aside. Every step returns what happened; the recorder decides what
//! its report says.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use super::wav::{self, Guano, WavFile, WavFormat, WavSample};
use crate::errors;
use crate::storage::{self, Folders, StorageError};

/// How long stranded files are left before the next try.
pub const STRANDED_RETRY: Duration = Duration::from_secs(1);

/// A finished recording on its way into recordings/ (kept in `.partial/` while it cannot be).
#[derive(Clone, Debug)]
pub struct Finished {
    /// The file in `.partial/`.
    pub temp: PathBuf,
    /// Its first frame's time.
    pub start: Timestamp,
    /// Frames it holds.
    pub frames: u64,
    /// Its format (a salvaged file keeps its own).
    pub sample_rate: u32,
    /// Channels.
    pub channels: u16,
}

/// What became of a finished file.
#[derive(Debug)]
pub enum Placed {
    /// In recordings/ at this path: its row is due.
    Moved(PathBuf),
    /// Kept in `.partial/` and retried every [`STRANDED_RETRY`]; `first` when no other file was
    /// waiting (worth a log line).
    Kept {
        /// The first file kept.
        first: bool,
        /// Why it cannot be moved.
        why: String,
    },
    /// Removed with its storage (`rm -rf`): nothing left to keep; its frames are lost.
    Gone {
        /// Frames it held.
        frames: u64,
        /// Why the move failed.
        why: String,
    },
}

/// What a partial file left by a crash became.
#[derive(Debug)]
pub enum Salvage {
    /// Completed; placed (or kept) as any finished file.
    Completed(Finished, Placed),
    /// Held no audio: removed.
    Empty(PathBuf),
    /// Its header cannot be read: moved aside for a person (or left, when even that failed).
    Quarantined {
        /// The partial file.
        from: PathBuf,
        /// Where it went.
        to: Result<PathBuf, String>,
        /// Why it could not be completed.
        why: String,
    },
    /// The storage cannot take it now: left for the next try.
    Later,
}

/// The storage's folders and the files waiting to be moved.
pub struct Sink {
    folders: Folders,
    stranded: Vec<Finished>,
    /// The first reason files are kept (stable: a message changing every second would rewrite
    /// the report, and status.json, every second).
    stranded_error: Option<String>,
    retry_at: Duration,
}

impl Sink {
    /// A sink writing into `folders`.
    pub fn new(folders: Folders) -> Self {
        Self {
            folders,
            stranded: Vec::new(),
            stranded_error: None,
            retry_at: Duration::ZERO,
        }
    }

    /// The storage's folders.
    pub fn folders(&self) -> &Folders {
        &self.folders
    }

    /// Files kept in `.partial/` and why, if any.
    pub fn stranded(&self) -> Option<(usize, &str)> {
        let why = self.stranded_error.as_deref()?;
        Some((self.stranded.len(), why))
    }

    /// Creates `.partial/<start>.wav.part`, never reusing an existing name.
    pub fn create<T: WavSample>(
        &self,
        start: Timestamp,
        format: WavFormat,
        frames: u64,
        sync: Duration,
    ) -> Result<(WavFile<T>, PathBuf), (std::io::Error, PathBuf)> {
        let name = storage::recording_file_name(start);
        // The real folder, not a path through a link that may be swapped before the file ends.
        let partial = self.folders.partial_dir();
        let partial = std::fs::canonicalize(&partial).unwrap_or(partial);
        let first = partial.join(format!("{name}.part"));
        let mut temp = first.clone();
        for n in 1..1000 {
            match WavFile::<T>::create(&temp, format, frames, sync) {
                Ok(wav) => return Ok((wav, temp)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    temp =
                        storage::numbered(&first.with_extension(""), n).with_extension("wav.part");
                }
                Err(e) => return Err((e, temp)),
            }
        }
        Err((
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            temp,
        ))
    }

    /// Moves a finished file into recordings/ (never over another), or keeps it for later.
    pub fn place(&mut self, file: Finished) -> Placed {
        match self.move_in(&file.temp, file.start) {
            Ok(target) => Placed::Moved(target),
            Err(e) if !file.temp.exists() => Placed::Gone {
                frames: file.frames,
                why: errors::chain(&e),
            },
            Err(e) => {
                let why = errors::chain(&e);
                let first = self.stranded.is_empty();
                self.stranded_error.get_or_insert(why.clone());
                self.stranded.push(file);
                Placed::Kept { first, why }
            }
        }
    }

    /// Tries the kept files again: at most every [`STRANDED_RETRY`] of monotonic time `mono`,
    /// or now when `mono` is `None`. Returns those now in recordings/ and those removed
    /// meanwhile.
    pub fn retry(&mut self, mono: Option<Duration>) -> (Vec<(Finished, PathBuf)>, Vec<Finished>) {
        if self.stranded.is_empty() || mono.is_some_and(|m| self.retry_at > m) {
            return (Vec::new(), Vec::new());
        }
        self.retry_at = mono.unwrap_or(self.retry_at) + STRANDED_RETRY;
        let (mut moved, mut gone) = (Vec::new(), Vec::new());
        for file in std::mem::take(&mut self.stranded) {
            match self.move_in(&file.temp, file.start) {
                Ok(target) => moved.push((file, target)),
                Err(_) if !file.temp.exists() => gone.push(file),
                Err(e) => {
                    self.stranded_error.get_or_insert_with(|| errors::chain(&e));
                    self.stranded.push(file);
                }
            }
        }
        if self.stranded.is_empty() {
            self.stranded_error = None;
        }
        (moved, gone)
    }

    /// Completes the partial files a crash or a storage fault left (file system only: their rows
    /// come from the registrar's repair or from the caller). `guano` gives a file's metadata
    /// from its start.
    pub fn salvage_partials(&mut self, guano: impl Fn(Timestamp) -> Guano) -> Vec<Salvage> {
        let entries: Vec<PathBuf> = std::fs::read_dir(self.folders.partial_dir())
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for temp in entries {
            let stranded = self.stranded.iter().any(|s| s.temp == temp);
            // One the storage cannot take now (read-only, I/O errors) is tried with the next file.
            if temp.extension().is_some_and(|e| e == "part") && !stranded {
                out.push(self.salvage_one(&temp, &guano));
            }
        }
        out
    }

    fn salvage_one(&mut self, temp: &Path, guano: &impl Fn(Timestamp) -> Guano) -> Salvage {
        let name = (temp.file_stem())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(start) = storage::start_from_file_name(Path::new(&name)) else {
            return self.quarantine(temp, "its name holds no start time".into());
        };
        match wav::salvage(temp, &guano(start), &name) {
            Ok(Some((frames, format))) => {
                let file = Finished {
                    temp: temp.to_path_buf(),
                    start,
                    frames,
                    sample_rate: format.sample_rate,
                    channels: format.channels,
                };
                let placed = self.place(file.clone());
                Salvage::Completed(file, placed)
            }
            Ok(None) => {
                let _ = std::fs::remove_file(temp);
                Salvage::Empty(temp.to_path_buf())
            }
            // An unreadable header: kept aside for a person. Anything else is the storage's
            // fault (read-only, I/O errors): left for a later attempt.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                self.quarantine(temp, e.to_string())
            }
            Err(e) => {
                tracing::debug!(path = %temp.display(), error = %e, "cannot complete a partial file now; trying again when the storage works");
                Salvage::Later
            }
        }
    }

    fn quarantine(&self, file: &Path, why: String) -> Salvage {
        Salvage::Quarantined {
            from: file.to_path_buf(),
            to: (self.folders.quarantine(file)).map_err(|e| errors::chain(&e)),
            why,
        }
    }

    fn move_in(&self, temp: &Path, start: Timestamp) -> Result<PathBuf, StorageError> {
        let target = storage::recording_path(&self.folders.recordings_dir(), start);
        storage::rename_no_replace(temp, &target).map_err(|source| StorageError::Unusable {
            path: target,
            action: "move a finished recording into recordings/",
            source,
        })
    }
}
