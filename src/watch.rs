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
/// Longest wait for a writer that modified the file in place to close it (IN_CLOSE_WRITE):
/// `cp`, `cat > file`, scp over a slow link, a script writing in pieces. When it passes and the
/// file is still open for writing by some process, roost waits that long again.
pub const MAX_WAIT_FOR_WRITER: Duration = Duration::from_secs(60);

/// Why the desired-state file cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A watch could not be set up (no inotify instance or watch left, no permission).
    #[error("cannot watch {path}")]
    Watch {
        /// The folder that could not be watched, or the file when no watcher could be created.
        path: String,
        /// notify's error.
        #[source]
        source: notify::Error,
    },
}

/// The folders to watch and the names inside them that matter for `file`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSet {
    /// Folders to watch, each without its subfolders.
    pub dirs: BTreeSet<PathBuf>,
    /// Names inside those folders whose events matter (the file, the links, missing folders).
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
    /// (device, inode) of each watched folder when its watch was set.
    identities: std::collections::HashMap<PathBuf, (u64, u64)>,
    raw: mpsc::UnboundedReceiver<notify::Event>,
    mounts: MountWatch,
    /// Watching a folder (`roost run --dir`) rather than one file.
    folder: Option<FolderWatch>,
}

/// What matters in a watched folder: its files (all, or those named), wherever links lead.
#[derive(Debug)]
struct FolderWatch {
    /// The folder, links resolved (events name files by the folder inotify watches).
    target: Option<PathBuf>,
    /// Which names matter; `None`: every name.
    accept: Option<fn(&str) -> bool>,
}

/// Mount table changes, as events: `/proc/self/mountinfo` turns "priority readable" when a file
/// system is mounted or unmounted. A desired file on a card is read again when the card goes
/// (and the refusal says so) and when it comes back, where inotify sees neither; no polling.
struct MountWatch {
    fd: Option<tokio::io::unix::AsyncFd<std::fs::File>>,
}

impl MountWatch {
    /// Follows the mount table when a tokio runtime runs here; otherwise (or when it cannot be
    /// opened) never fires.
    fn new() -> Self {
        let fd = tokio::runtime::Handle::try_current().ok().and_then(|_| {
            let file = std::fs::File::open("/proc/self/mountinfo").ok()?;
            // Deprecated as unsound for descriptors that can change under it (tokio #8587); a
            // File moved into it cannot.
            #[allow(deprecated)]
            let fd = tokio::io::unix::AsyncFd::with_interest(file, tokio::io::Interest::PRIORITY);
            fd.inspect_err(|e| tracing::warn!(error = %e, "cannot follow mounts; a desired file on a card is read again only on file events and SIGHUP"))
                .ok()
        });
        Self { fd }
    }

    /// Waits for the next change of the mount table.
    async fn changed(&self) {
        let Some(fd) = &self.fd else {
            return std::future::pending().await;
        };
        match fd.ready(tokio::io::Interest::PRIORITY).await {
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => std::future::pending().await,
        }
    }
}

/// (device, inode) of a folder, links followed; `None` when it cannot be read.
fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl FileWatcher {
    /// Starts watching `file` and the folders on its way to its content; errors:
    /// [`WatchError::Watch`] when a watch cannot be set up.
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
            identities: Default::default(),
            raw,
            mounts: MountWatch::new(),
            folder: None,
        };
        w.refresh()?;
        Ok(w)
    }

    /// Starts watching the files of the folder `dir` (and the links on its way), as
    /// [`FileWatcher::new`] watches one file: every file, or those whose name `accept` takes
    /// (an editor's swap file open for an hour must not hold the burst open).
    pub fn folder(dir: &Path, accept: Option<fn(&str) -> bool>) -> Result<Self, WatchError> {
        let mut w = Self::new(&dir.join(".roost-folder"))?;
        w.folder = Some(FolderWatch {
            target: std::fs::canonicalize(dir).ok(),
            accept,
        });
        Ok(w)
    }

    /// Re-follows the links (a swap may have moved the content) and adjusts the watches. A
    /// folder at the same path that is another folder now (removed and made again: a
    /// run-time folder after `rm -rf`) is watched again: a watch follows the old one.
    fn refresh(&mut self) -> Result<(), WatchError> {
        let wanted = watch_set(&self.file);
        let replaced: Vec<PathBuf> = (wanted.dirs.intersection(&self.current.dirs))
            .filter(|d| self.identities.get(*d) != dir_identity(d).as_ref())
            .cloned()
            .collect();
        for gone in self.current.dirs.difference(&wanted.dirs).chain(&replaced) {
            let _ = self.watcher.unwatch(gone);
        }
        let new = wanted.dirs.difference(&self.current.dirs).chain(&replaced);
        for dir in new {
            self.watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Watch {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        if let Some(f) = self.folder.as_mut()
            && let Some(dir) = self.file.parent()
        {
            // A link on the way may lead elsewhere now (a swap of `..data`).
            f.target = std::fs::canonicalize(dir).ok();
        }
        self.identities = (wanted.dirs.iter())
            .filter_map(|d| Some((d.clone(), dir_identity(d)?)))
            .collect();
        self.current = wanted;
        Ok(())
    }

    fn relevant(&self, ev: &notify::Event) -> bool {
        if !may_change(&ev.kind) {
            return false;
        }
        let in_folder = |p: &Path| {
            let Some(f) = &self.folder else { return false };
            let here = p.parent() == self.file.parent() || p.parent() == f.target.as_deref();
            let named = (f.accept)
                .is_none_or(|accept| p.file_name().is_some_and(|n| accept(&n.to_string_lossy())));
            here && named
        };
        ev.paths.iter().any(|p| {
            in_folder(p)
                || p.file_name().is_some_and(|n| {
                    self.current.names.contains(n) || n.to_string_lossy().starts_with("..")
                })
                || self.current.dirs.contains(p)
        }) || ev.need_rescan()
    }

    /// Waits for the next change worth a look: a relevant event followed by a quiet period.
    /// After an in-place modification the quiet period lasts until the writer closes the file
    /// (IN_CLOSE_WRITE), however long it pauses: half a file is never read.
    pub async fn changed(&mut self) {
        loop {
            let first = tokio::select! {
                ev = self.raw.recv() => ev,
                () = self.mounts.changed() => {
                    // A card mounted or unmounted on the way to the file: look again (its
                    // folders are other folders now, watched anew by refresh).
                    tracing::info!(file = %self.file.display(), "the mount table changed; reading the desired file again");
                    if let Err(e) = self.refresh() {
                        tracing::warn!(error = %crate::errors::chain(&e), "cannot update file watches");
                    }
                    return;
                }
            };
            let Some(first) = first else {
                return std::future::pending().await;
            };
            if !self.relevant(&first) {
                continue;
            }
            let mut burst = Burst::default();
            burst.add(&first);
            // One deadline per burst, moved only by relevant events: a busy folder cannot
            // starve the trigger.
            loop {
                match tokio::time::timeout_at(burst.deadline(), self.raw.recv()).await {
                    Ok(Some(ev)) if self.relevant(&ev) => burst.add(&ev),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    // A writer silent for long, or another writer still holding the file after
                    // the first one closed it: wait for them too.
                    Err(_)
                        if burst.wrote_in_place
                            && open_for_writing(burst.path.as_deref().unwrap_or(&self.file)) =>
                    {
                        if burst.writing {
                            tracing::warn!(file = %self.file.display(), "still open for writing; waiting for the writer to finish before reading it");
                        }
                        burst.writing = true;
                        burst.writing_since = tokio::time::Instant::now();
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = self.refresh() {
                tracing::warn!(error = %crate::errors::chain(&e), "cannot update file watches");
            }
            return;
        }
    }
}

/// One burst of events: settled 3 ms after the last event that completes a write, or, while a
/// writer modifies the file in place, when it closes it.
#[derive(Debug)]
struct Burst {
    last: tokio::time::Instant,
    /// Some event of the burst modified the file in place.
    wrote_in_place: bool,
    writing: bool,
    writing_since: tokio::time::Instant,
    /// The file modified in place (a folder's watch sees several).
    path: Option<PathBuf>,
}

impl Default for Burst {
    fn default() -> Self {
        let now = tokio::time::Instant::now();
        Self {
            last: now,
            wrote_in_place: false,
            writing: false,
            writing_since: now,
            path: None,
        }
    }
}

impl Burst {
    fn add(&mut self, ev: &notify::Event) {
        let now = tokio::time::Instant::now();
        self.last = now;
        match &ev.kind {
            EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any)
                if !self.writing =>
            {
                self.writing = true;
                self.wrote_in_place = true;
                self.writing_since = now;
                self.path = ev.paths.first().cloned();
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => self.writing = false,
            _ => {}
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        if self.writing {
            self.writing_since + MAX_WAIT_FOR_WRITER
        } else {
            self.last + SETTLE_AFTER_COMPLETE
        }
    }
}

/// Whether some process holds `file` open for writing (`/proc/*/fd` and `fdinfo` flags). Only
/// asked when a writer has been silent for [`MAX_WAIT_FOR_WRITER`].
pub fn open_for_writing(file: &Path) -> bool {
    let Ok(target) = std::fs::canonicalize(file) else {
        return false;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|p| {
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                return false;
            };
            fds.filter_map(|fd| fd.ok()).any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l == target)
                    && writable_fd(&p.path().join("fdinfo").join(fd.file_name()))
            })
        })
}

fn writable_fd(fdinfo: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(fdinfo) else {
        return false;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| flags & 0o3 != 0)
}

/// Whether an event may mean a file's content or name changed: everything but a reader's open,
/// read and close. Another program reading a watched report (roost reads every component's, the
/// page and the connector read status.json) is no news, and taking it for news makes a loop of
/// wake-ups and rewrites between components.
pub fn may_change(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_)
                | AccessKind::Read
                | AccessKind::Close(AccessMode::Read)
                | AccessKind::Close(AccessMode::Execute)
        )
    )
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
    fn a_reader_is_no_news_a_writer_is() {
        use notify::event::{CreateKind, DataChange, RenameMode};
        for read in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!may_change(&read), "{read:?}");
        }
        for change in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Remove(notify::event::RemoveKind::File),
        ] {
            assert!(may_change(&change), "{change:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_in_place_write_settles_only_when_its_writer_closes() {
        use notify::event::DataChange;
        let start = tokio::time::Instant::now();
        let mut b = Burst::default();
        b.add(&notify::Event::new(EventKind::Create(
            notify::event::CreateKind::File,
        )));
        assert_eq!(b.deadline(), start + SETTLE_AFTER_COMPLETE);
        b.add(&notify::Event::new(EventKind::Modify(ModifyKind::Data(
            DataChange::Any,
        ))));
        assert_eq!(b.deadline(), start + MAX_WAIT_FOR_WRITER);
        tokio::time::advance(Duration::from_secs(5)).await;
        // More writes keep the writer's deadline; they do not push it out.
        b.add(&notify::Event::new(EventKind::Modify(ModifyKind::Data(
            DataChange::Any,
        ))));
        assert_eq!(b.deadline(), start + MAX_WAIT_FOR_WRITER);
        b.add(&notify::Event::new(EventKind::Access(AccessKind::Close(
            AccessMode::Write,
        ))));
        assert_eq!(
            b.deadline(),
            start + Duration::from_secs(5) + SETTLE_AFTER_COMPLETE
        );
    }

    #[test]
    fn a_file_held_open_for_writing_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.yaml");
        std::fs::write(&p, "x").unwrap();
        assert!(!open_for_writing(&p));
        let reader = std::fs::File::open(&p).unwrap();
        assert!(!open_for_writing(&p));
        let writer = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        assert!(open_for_writing(&p));
        drop((reader, writer));
        assert!(!open_for_writing(&p));
    }

    #[test]
    fn missing_folder_watches_the_nearest_existing_one() {
        let root = tempfile::tempdir().unwrap();
        let set = watch_set(&root.path().join("not/yet/d.yaml"));
        assert!(set.dirs.contains(root.path()));
        assert!(set.names.contains(&OsString::from("not")), "{set:?}");
        assert!(set.names.contains(&OsString::from("yet")));
    }

    /// The debounce on tokio's paused clock, events fed by hand: a burst of writes is one
    /// trigger 3 ms after its last event; events about other files never trigger; a writer
    /// that pauses 20 s between writes is waited for until it closes the file.
    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_trigger_after_it_settles() {
        use notify::event::{CreateKind, DataChange};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.yaml");
        std::fs::write(&file, "x").unwrap();
        let mut w = FileWatcher::new(&file).unwrap();
        let (tx, raw) = mpsc::unbounded_channel();
        w.raw = raw;
        let event =
            |kind: EventKind, path: &Path| notify::Event::new(kind).add_path(path.to_path_buf());
        let start = tokio::time::Instant::now();
        let feeder = {
            let (file, other) = (file.clone(), dir.path().join("other.txt"));
            tokio::spawn(async move {
                let ms = |n| tokio::time::sleep(Duration::from_millis(n));
                tx.send(event(EventKind::Create(CreateKind::File), &other))
                    .unwrap();
                ms(10).await;
                tx.send(event(EventKind::Create(CreateKind::File), &file))
                    .unwrap();
                ms(2).await;
                tx.send(event(
                    EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::To)),
                    &file,
                ))
                .unwrap();
                ms(100).await;
                // An in-place writer: opens, writes, pauses 20 s, writes, closes.
                tx.send(event(
                    EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                    &file,
                ))
                .unwrap();
                ms(20_000).await;
                tx.send(event(
                    EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                    &file,
                ))
                .unwrap();
                ms(5).await;
                tx.send(event(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    &file,
                ))
                .unwrap();
                tx
            })
        };
        w.changed().await;
        assert_eq!(start.elapsed(), Duration::from_millis(15));
        w.changed().await;
        assert_eq!(start.elapsed(), Duration::from_millis(112 + 20_005 + 3));
        drop(feeder.await.unwrap());
    }
}
