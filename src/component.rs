//! The skeleton every component process shares (`roost record`, `roost curate`,
//! `roost connect`): the configuration roost writes for it ([`ConfigFile`]), the report it
//! writes back ([`ReportFile`]), and stopping on SIGTERM or SIGINT ([`stop_on_signals`]).
//!
//! A new component process gets a configuration type and a report type implementing these two
//! traits, a [`crate::builtin::Process`] description (how roost starts it and reads its
//! health), and a subcommand in `main.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A component's configuration, written by roost into the state folder before it starts the
/// component and read by the component at its start.
pub trait ConfigFile: Serialize + DeserializeOwned {
    /// Its file name in the state folder (`recorder-config.json`).
    const FILE: &'static str;

    /// `<state_dir>/<FILE>`.
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(Self::FILE)
    }

    /// Reads the configuration at `path` (the component's `--config`).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file: unreadable, or not JSON of this shape.
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ConfigError::Invalid {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The configuration roost last wrote into `state_dir`, if it can be read (for tools that
    /// show the component: `roost status`, the field page).
    fn read(state_dir: &Path) -> Option<Self> {
        Self::load(&Self::path(state_dir)).ok()
    }

    /// Writes it whole (temp file, fsync, rename) to `<state_dir>/<FILE>`; returns the path.
    fn write(&self, state_dir: &Path) -> std::io::Result<PathBuf> {
        let path = Self::path(state_dir);
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&path, &bytes)?;
        Ok(path)
    }
}

/// Why a component's configuration cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration {path}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape.
    #[error("the configuration {path} is invalid")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A component's report in the state folder's run-time folder: what it produced and its
/// trouble, read by roost (health, status.json) and by tools. A derived file: replaced whole,
/// never fsynced (a power cut may lose the newest version, never tear it).
pub trait ReportFile: Serialize + DeserializeOwned + Clone {
    /// Its file name in `<state>/run/` (`recorder-report.json`).
    const FILE: &'static str;
    /// Whether credentials are masked before writing (reports quoting programs' output or
    /// URLs).
    const REDACT: bool;

    /// `<state_dir>/run/<FILE>` (see [`crate::fsutil::RUN_DIR`]).
    fn path(state_dir: &Path) -> PathBuf {
        crate::fsutil::run_dir(state_dir).join(Self::FILE)
    }

    /// The report in `state_dir`; `None` when there is none or it cannot be parsed.
    fn read(state_dir: &Path) -> Option<Self> {
        serde_json::from_slice(&crate::fsutil::read_run_file(state_dir, Self::FILE)?).ok()
    }

    /// Replaces the report whole.
    fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let bytes = if Self::REDACT {
            serde_json::to_vec_pretty(&crate::redact::typed(self))
        } else {
            serde_json::to_vec_pretty(self)
        };
        let bytes = bytes.map_err(std::io::Error::other)?;
        crate::fsutil::replace_run_file(state_dir, Self::FILE, &bytes)
    }
}

/// Takes SIGTERM and SIGINT over: they are blocked in this thread (and so in every thread
/// started after it: audio callbacks, a runtime's workers, detector waits) and taken by a
/// thread of their own, which runs `on_stop` once. With `exit_after`, the process exits (1)
/// that long after the signal if it has not ended by then: opening a device or a read can
/// block, and a stop must not be outlived by much. Call it from the main thread before other
/// threads exist.
///
/// # Errors
/// The signal mask cannot be changed or the thread cannot be started.
pub fn stop_on_signals(
    on_stop: impl FnOnce() + Send + 'static,
    exit_after: Option<Duration>,
) -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("roost-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                tracing::info!(signal = ?sig, "stopping");
            }
            on_stop();
            let Some(after) = exit_after else { return };
            std::thread::sleep(after);
            tracing::error!(
                "the component did not stop within {} s; exiting",
                after.as_secs()
            );
            std::process::exit(1);
        })
        .map(drop)
}
