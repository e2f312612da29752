//! The built-ins' reports of every deployment of the device, watched by one inotify instance
//! (one thread): 50 deployments must not hold 50 watchers, each with its thread. An event on a
//! report wakes the deployment whose run-time folder holds it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Where each deployment's reports are, and the one watch over them.
pub struct Outputs {
    watcher: Option<notify::RecommendedWatcher>,
    /// Raw events from the watcher's thread.
    pub events: mpsc::UnboundedReceiver<notify::Event>,
    /// Folder (links resolved) -> the deployment and the report names in it.
    routes: BTreeMap<PathBuf, (String, BTreeSet<OsString>)>,
    /// The channel that wakes each deployment's loop.
    wakes: BTreeMap<String, mpsc::Sender<()>>,
}

impl Outputs {
    /// One watcher for the device; without inotify (no instance left), reports are still
    /// looked at by each loop's safety look.
    pub fn new() -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let _ = tx.send(ev);
            }
        })
        .inspect_err(|e| tracing::warn!(error = %e, "cannot watch the built-ins' reports; their news waits for the 2-minute look"))
        .ok();
        Self {
            watcher,
            events,
            routes: BTreeMap::new(),
            wakes: BTreeMap::new(),
        }
    }

    /// Watches `files` (deployment `name`'s reports); returns the receiver that wakes its loop.
    pub fn add(&mut self, name: &str, files: &[PathBuf]) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel(1);
        self.wakes.insert(name.to_string(), tx);
        for path in files {
            let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            let (_, names) = (self.routes.entry(dir.clone()))
                .or_insert_with(|| (name.to_string(), BTreeSet::new()));
            names.insert(file.to_os_string());
            if let Some(w) = self.watcher.as_mut()
                && let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive)
            {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot watch a deployment's reports");
            }
        }
        rx
    }

    /// Forgets deployment `name`'s reports.
    pub fn remove(&mut self, name: &str) {
        self.wakes.remove(name);
        let dirs: Vec<PathBuf> = (self.routes.iter())
            .filter(|(_, (n, _))| n == name)
            .map(|(d, _)| d.clone())
            .collect();
        for dir in dirs {
            self.routes.remove(&dir);
            if let Some(w) = self.watcher.as_mut() {
                let _ = w.unwatch(&dir);
            }
        }
    }

    /// Wakes the deployment whose report `ev` concerns.
    pub fn route(&self, ev: &notify::Event) {
        if !crate::watch::may_change(&ev.kind) {
            return;
        }
        for p in &ev.paths {
            let (Some(dir), Some(file)) = (p.parent(), p.file_name()) else {
                continue;
            };
            if let Some((name, names)) = self.routes.get(Path::new(dir))
                && names.contains(file)
                && let Some(wake) = self.wakes.get(name)
            {
                let _ = wake.try_send(());
            }
        }
    }
}
