//! Watching the desired-state file. Every writer is covered by watching folders, not the file:
//! the file's own folder, and the folder of every symlink on the way to its content (a
//! ConfigMap-style `..data` link, a git-sync worktree link). Events are debounced into one
//! "look again" trigger; content is compared by the reconciler, so a spurious trigger costs a
//! read and nothing else. No polling: inotify through `notify`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after an event that completes a write (close, rename, create, delete).
pub const SETTLE_AFTER_COMPLETE: Duration = Duration::from_millis(3);
/// Quiet time after a bare in-place modification, waiting for the writer to close the file
/// (`cp` truncates and writes in chunks; reading in between could see half a file).
pub const SETTLE_AFTER_PARTIAL_WRITE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: String,
        #[source]
        source: notify::Error,
    },
}

/// The folders to watch and the names inside them that matter for `file`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSet {
    pub dirs: BTreeSet<PathBuf>,
    pub names: BTreeSet<OsString>,
}

/// Follows `file` and every symlink on its way, collecting the folders that hold a link or the
/// file itself. A missing folder is replaced by its nearest existing ancestor, so the watch
/// still sees it being created.
pub fn watch_set(file: &Path) -> WatchSet {
    let mut set = WatchSet::default();
    let mut todo = vec![absolute(file)];
    let mut hops = 0;
    while let Some(path) = todo.pop() {
        hops += 1;
        if hops > 40 {
            break;
        }
        if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
            let watched = existing_ancestor(parent);
            // Every missing folder on the way matters too: its creation must wake the watch.
            for missing in path.ancestors().skip(1).take_while(|a| *a != watched) {
                if let Some(n) = missing.file_name() {
                    set.names.insert(n.to_os_string());
                }
            }
            set.dirs.insert(watched);
            set.names.insert(name.to_os_string());
        }
        let mut prefix = PathBuf::new();
        let mut components = path.components();
        for comp in components.by_ref() {
            prefix.push(comp);
            if !matches!(comp, Component::Normal(_)) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&prefix) else {
                break;
            };
            if meta.file_type().is_symlink() {
                if let (Some(parent), Some(name)) = (prefix.parent(), prefix.file_name()) {
                    set.dirs.insert(parent.to_path_buf());
                    set.names.insert(name.to_os_string());
                }
                if let Ok(target) = std::fs::read_link(&prefix) {
                    let base = prefix.parent().map(Path::to_path_buf).unwrap_or_default();
                    let resolved = if target.is_absolute() {
                        target
                    } else {
                        base.join(target)
                    };
                    todo.push(resolved.join(components.as_path()));
                }
                break;
            }
        }
    }
    set
}

/// `p` made absolute against the current folder, without resolving links (they are followed
/// at every load, since a swap may move them).
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

fn existing_ancestor(dir: &Path) -> PathBuf {
    let mut d = dir.to_path_buf();
    while !d.is_dir() {
        if !d.pop() {
            return PathBuf::from("/");
        }
    }
    d
}

/// Delivers a unit `()` on `triggers` whenever the desired-state file may have changed.
pub struct FileWatcher {
    file: PathBuf,
    watcher: notify::RecommendedWatcher,
    current: WatchSet,
    raw: mpsc::UnboundedReceiver<notify::Event>,
}

impl FileWatcher {
    pub fn new(file: &Path) -> Result<Self, WatchError> {
        let (tx, raw) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let _ = tx.send(ev);
            }
        })
        .map_err(|source| WatchError::Watch {
            path: file.display().to_string(),
            source,
        })?;
        let mut w = Self {
            file: file.to_path_buf(),
            watcher,
            current: WatchSet::default(),
            raw,
        };
        w.refresh()?;
        Ok(w)
    }

    /// Re-follows the links (a swap may have moved the content) and adjusts the watches.
    fn refresh(&mut self) -> Result<(), WatchError> {
        let wanted = watch_set(&self.file);
        for gone in self.current.dirs.difference(&wanted.dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in wanted.dirs.difference(&self.current.dirs) {
            self.watcher
                .watch(new, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Watch {
                    path: new.display().to_string(),
                    source,
                })?;
        }
        self.current = wanted;
        Ok(())
    }

    fn relevant(&self, ev: &notify::Event) -> bool {
        if matches!(
            ev.kind,
            EventKind::Access(AccessKind::Open(_)) | EventKind::Access(AccessKind::Read)
        ) {
            return false;
        }
        ev.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                self.current.names.contains(n) || n.to_string_lossy().starts_with("..")
            }) || self.current.dirs.contains(p)
        }) || ev.need_rescan()
    }

    /// Waits for the next change worth a look: a relevant event followed by a quiet period.
    pub async fn changed(&mut self) {
        loop {
            let Some(first) = self.raw.recv().await else {
                return std::future::pending().await;
            };
            if !self.relevant(&first) {
                continue;
            }
            // One deadline per burst, moved only by relevant events: a busy folder cannot
            // starve the trigger.
            let mut deadline = tokio::time::Instant::now() + settle_time(&first.kind);
            loop {
                match tokio::time::timeout_at(deadline, self.raw.recv()).await {
                    Ok(Some(ev)) if self.relevant(&ev) => {
                        deadline = tokio::time::Instant::now() + settle_time(&ev.kind);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            if let Err(e) = self.refresh() {
                tracing::warn!(error = %e, "cannot update file watches");
            }
            return;
        }
    }
}

fn settle_time(kind: &EventKind) -> Duration {
    match kind {
        EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any) => {
            SETTLE_AFTER_PARTIAL_WRITE
        }
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => SETTLE_AFTER_COMPLETE,
        _ => SETTLE_AFTER_COMPLETE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn follows_configmap_and_gitsync_links() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // ConfigMap: deployment.yaml -> ..data/deployment.yaml, ..data -> ..2026_v1
        std::fs::create_dir(r.join("..2026_v1")).unwrap();
        std::fs::write(r.join("..2026_v1/deployment.yaml"), "x").unwrap();
        symlink("..2026_v1", r.join("..data")).unwrap();
        symlink("..data/deployment.yaml", r.join("deployment.yaml")).unwrap();
        let set = watch_set(&r.join("deployment.yaml"));
        assert!(set.dirs.contains(r));
        assert!(set.names.contains(&OsString::from("..data")));
        assert!(set.dirs.contains(&r.join("..2026_v1")));
        // git-sync: current -> rev-abc, file under it
        std::fs::create_dir(r.join("rev-abc")).unwrap();
        std::fs::write(r.join("rev-abc/d.yaml"), "x").unwrap();
        symlink(r.join("rev-abc"), r.join("current")).unwrap();
        let set = watch_set(&r.join("current/d.yaml"));
        assert!(set.dirs.contains(r), "{set:?}");
        assert!(set.names.contains(&OsString::from("current")));
        assert!(set.dirs.contains(&r.join("rev-abc")));
    }

    #[test]
    fn missing_folder_watches_the_nearest_existing_one() {
        let root = tempfile::tempdir().unwrap();
        let set = watch_set(&root.path().join("not/yet/d.yaml"));
        assert!(set.dirs.contains(root.path()));
        assert!(set.names.contains(&OsString::from("not")), "{set:?}");
        assert!(set.names.contains(&OsString::from("yet")));
    }
}
