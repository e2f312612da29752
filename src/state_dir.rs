//! The state folder: where roost keeps status.json, history.json, logs and the recorder's files.

use std::path::{Path, PathBuf};

/// `ROOST_STATE_DIR` (passed in by clap, made absolute by `cli`), else `/var/lib/roost` for
/// root, else `$XDG_STATE_HOME/roost` (`~/.local/state/roost`); the defaults are absolute too.
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
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|h| h.is_absolute())
                .map(|h| h.join(".local/state"))
        })
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("roost")
}

/// The state folder and the paths of what roost keeps in it.
pub struct StateDir {
    /// The state folder itself.
    pub root: PathBuf,
}

impl StateDir {
    /// The state folder at `root`; nothing is created.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
    /// `<root>/status.json`: the status document.
    pub fn status(&self) -> PathBuf {
        self.root.join("status.json")
    }
    /// The status document of the whole device: under `roost run --dir` a deployment's state
    /// folder is `<state>/deployments/<name>`, and the device's summary (every deployment) is
    /// `<state>/status.json`; otherwise [`StateDir::status`]. What the page and the connector
    /// show and send.
    pub fn device_status(&self) -> PathBuf {
        let device = (self.root.parent())
            .filter(|p| p.file_name().is_some_and(|n| n == "deployments"))
            .and_then(Path::parent)
            .map(|root| root.join("status.json"));
        device
            .filter(|p| p.exists())
            .unwrap_or_else(|| self.status())
    }
    /// `<root>/history.json`: restart counts, last exits and the accepted generation.
    pub fn history(&self) -> PathBuf {
        self.root.join("history.json")
    }
    /// A copy of the last desired state roost accepted, run when the file is bad at start.
    pub fn last_good(&self) -> PathBuf {
        self.root.join("last-good.yaml")
    }
    /// `<root>/roost.lock`: held by the roost that runs on this folder (see [`lock`](fn@lock)).
    pub fn lock(&self) -> PathBuf {
        self.root.join("roost.lock")
    }
    /// `<root>/logs`: the components' log files under the process runtime.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// `<root>/logs/<component>.log`: a component's current log file.
    pub fn log_of(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }
}

/// Why the state folder could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The folder or its lock file could not be created.
    #[error("cannot create state folder {path}")]
    Create {
        /// The state folder.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another roost process holds the folder's lock.
    #[error(
        "another roost is already running with state folder {path} (it holds {path}/roost.lock); stop it first or use another --state-dir"
    )]
    Held {
        /// The state folder.
        path: String,
    },
}

/// Takes the state folder for this process: two reconcilers on one folder would kill each
/// other's components. The lock lasts as long as the returned value.
pub fn lock(root: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, LockError> {
    let create = |source| LockError::Create {
        path: root.display().to_string(),
        source,
    };
    std::fs::create_dir_all(root).map_err(create)?;
    let file = std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true),
        nix::libc::O_NOFOLLOW,
    )
    .open(StateDir::new(root.to_path_buf()).lock())
    .map_err(create)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        LockError::Held {
            path: root.display().to_string(),
        }
    })
}
