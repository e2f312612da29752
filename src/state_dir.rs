//! The state folder: where roost keeps status.json, history.json, logs and the recorder's files.

use std::path::{Path, PathBuf};

/// `ROOST_STATE_DIR` (passed in by clap), else `/var/lib/roost` for root, else
/// `$XDG_STATE_HOME/roost` (`~/.local/state/roost`).
pub fn resolve(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/roost");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("roost")
}

pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
    pub fn status(&self) -> PathBuf {
        self.root.join("status.json")
    }
    pub fn history(&self) -> PathBuf {
        self.root.join("history.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log_of(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }
    pub fn recorder_config(&self) -> PathBuf {
        self.root.join("recorder-config.json")
    }
    pub fn recorder_report(&self) -> PathBuf {
        self.root.join("recorder-report.json")
    }
}
