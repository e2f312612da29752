//! The registrar: the recorder's only user of metadata.db, on a thread of its own. The writer
//! hands it each finished file's row and carries on; the registrar writes the rows, retries
//! while the database is locked, unwritable, deleted or replaced (reopening it, recreating it,
//! and registering the files found on disk), and carries out `deleteOldest`. It must never make
//! the writer wait: the writer only sends jobs and reads a snapshot of [`RegistrarView`]. The
//! start-up repair (and the rebuild of a lost database) goes one batch at a time, with the
//! writer's rows written between batches, and holds one batch whatever the archive's size.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::spec::Location;
use crate::storage::{self, Folders, NewRecording, Repair, RepairReport, Storage, StorageError};

/// Rows owed for longer than this are reported (DEP_E321).
pub const OWED_GRACE: Duration = Duration::from_secs(3);
/// Between attempts while rows are owed or the database cannot be opened.
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait between attempts to open the database for the start-up repair.
const MAX_REPAIR_RETRY: Duration = Duration::from_secs(30);
/// Deletions named in the view (the most recent ones).
pub const RECENT_DELETIONS: usize = 10;
/// Paths the view names per list of the repair (the latest); `repair.progress` counts them all.
pub const RECENT_REPAIRS: usize = 100;
/// A repair under way shows its progress in the report at most this often (and when it ends):
/// each change of the view rewrites the report.
const REPAIR_PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Rows that start last, read at opening to find where the archive ends.
const NEWEST_ROWS: usize = 64;

/// What the writer sees of the registrar: a snapshot, copied under a short lock.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegistrarView {
    /// Rows handed over and not written yet.
    pub rows_owed: u64,
    /// When the oldest owed row was handed over (monotonic, and on the wall clock for messages).
    pub owed_since: Option<Duration>,
    /// The same moment on the wall clock.
    pub owed_since_wall: Option<Timestamp>,
    /// Why the last attempt failed, while rows are owed.
    pub last_error: Option<String>,
    /// The catalogue code of that failure.
    pub last_error_code: Option<crate::errors::ErrorCode>,
    /// Recordings deleted by deleteOldest since the recorder started, and the latest of them.
    pub files_deleted: u64,
    /// The latest recordings it deleted, newest last (at most [`RECENT_DELETIONS`]).
    pub recently_deleted: VecDeque<PathBuf>,
    /// Set when deleteOldest cannot free enough: the space is held by other files.
    pub cannot_make_room: Option<String>,
    /// deleteOldest requests made, and the request `cannot_make_room` answers.
    pub room_requests: u64,
    /// The request number that `cannot_make_room` answers.
    pub room_answered: u64,
    /// What the repairs of the storage did (at start and after each reopening).
    pub repair: RepairReport,
    /// Unreadable databases moved aside.
    pub databases_set_aside: Vec<PathBuf>,
    /// End of the newest registered recording (for overlap checks after a restart).
    pub latest_end: Option<Timestamp>,
    /// Bumped on every change the report should show.
    pub version: u64,
}

/// Rows owed, since when, and why the last attempt failed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Owed {
    /// Rows handed over and not written yet.
    pub rows: u64,
    /// When the oldest of them was handed over (monotonic, [`super::timeline::Now::mono`]).
    pub since: Option<Duration>,
    /// The same moment on the wall clock.
    pub since_wall: Option<Timestamp>,
    /// Why the last attempt failed.
    pub why: Option<String>,
    /// Its catalogue code.
    pub code: Option<crate::errors::ErrorCode>,
}

enum Job {
    Register(NewRecording),
    MakeRoom {
        wanted_free: u64,
        seq: u64,
    },
    /// The storage failed: close metadata.db so that nothing holds the card (an operator's
    /// `umount -l; e2fsck; mount` gets a fresh file system only once every file is closed).
    Release,
}

/// Handle kept by the writer.
pub struct Registrar {
    tx: Option<Sender<Job>>,
    view: Arc<Mutex<RegistrarView>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Which deployment rows belong to.
#[derive(Clone, Debug)]
pub struct DeploymentInfo {
    /// The deployment's name (`deployment.name` in metadata.db).
    pub name: String,
    /// Where it records, for the deployment row.
    pub location: Option<Location>,
}

impl Registrar {
    /// Starts the thread; it opens the database, repairs the storage and waits for jobs.
    pub fn start(folders: Folders, deployment: DeploymentInfo) -> Self {
        let (tx, rx) = mpsc::channel();
        let view = Arc::new(Mutex::new(RegistrarView::default()));
        let worker = Worker {
            folders,
            deployment,
            view: view.clone(),
            db: None,
            deployment_id: uuid::Uuid::nil(),
            queue: VecDeque::new(),
            room: None,
            repair_pending: true,
            repair: None,
            repair_failed: false,
            progress_shown: None,
            released: false,
            replace_db: false,
            conversion: Default::default(),
        };
        let thread = std::thread::Builder::new()
            .name("roost-registrar".into())
            .spawn(move || worker.run(rx))
            .ok();
        Self {
            tx: Some(tx),
            view,
            thread,
        }
    }

    /// Hands over a finished file's row; never waits for the database.
    pub fn register(&self, rec: NewRecording) {
        {
            let mut v = lock(&self.view);
            v.rows_owed += 1;
            if v.owed_since.is_none() {
                let now = super::timeline::Now::read();
                (v.owed_since, v.owed_since_wall) = (Some(now.mono), Some(now.wall));
            }
        }
        self.send(Job::Register(rec));
    }

    /// Asks deleteOldest to bring free space up to `wanted_free` bytes; returns the request's
    /// number (see [`RegistrarView::room_answered`]).
    pub fn make_room(&self, wanted_free: u64) -> u64 {
        let seq = {
            let mut v = lock(&self.view);
            v.room_requests += 1;
            v.room_requests
        };
        self.send(Job::MakeRoom { wanted_free, seq });
        seq
    }

    /// The verdict "deleting cannot help", if it answers request `since` or a later one.
    pub fn cannot_make_room(&self, since: u64) -> Option<String> {
        let v = lock(&self.view);
        (v.room_answered >= since)
            .then(|| v.cannot_make_room.clone())
            .flatten()
    }

    /// Closes metadata.db until the next job (see `Job::Release`).
    pub fn release(&self) {
        self.send(Job::Release);
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }

    /// A copy of everything the registrar shows.
    pub fn view(&self) -> RegistrarView {
        lock(&self.view).clone()
    }

    /// The view, when it changed since `version`.
    pub fn changes(&self, version: u64) -> Option<RegistrarView> {
        let v = lock(&self.view);
        (v.version != version).then(|| v.clone())
    }

    /// Rows owed, since when, and why the last attempt failed: cheap enough for every chunk.
    pub fn owed(&self) -> Owed {
        let v = lock(&self.view);
        Owed {
            rows: v.rows_owed,
            since: v.owed_since,
            since_wall: v.owed_since_wall,
            why: (v.rows_owed > 0).then(|| v.last_error.clone()).flatten(),
            code: (v.rows_owed > 0).then_some(v.last_error_code).flatten(),
        }
    }

    /// End of the newest registered recording, if any.
    pub fn view_latest_end(&self) -> Option<Timestamp> {
        lock(&self.view).latest_end
    }

    /// Stops the thread after it has tried to write what is owed for up to `grace`. Rows still
    /// owed then are written by the next start's repair (their files are in recordings/).
    pub fn finish(mut self, grace: Duration) -> RegistrarView {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + grace;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        self.view()
    }
}

fn lock(view: &Mutex<RegistrarView>) -> std::sync::MutexGuard<'_, RegistrarView> {
    view.lock().unwrap_or_else(|e| e.into_inner())
}

struct Worker {
    folders: Folders,
    deployment: DeploymentInfo,
    view: Arc<Mutex<RegistrarView>>,
    db: Option<Storage>,
    deployment_id: uuid::Uuid,
    queue: VecDeque<NewRecording>,
    room: Option<(u64, u64)>,
    repair_pending: bool,
    /// The repair under way; a new one starts when a new connection is opened.
    repair: Option<Repair>,
    /// The last repair step failed: wait before the next instead of going straight on.
    repair_failed: bool,
    /// When the repair's progress was last shown in the view.
    progress_shown: Option<Instant>,
    /// Closed on the writer's request: stays closed until a job needs the database.
    released: bool,
    /// The database was found damaged in use: set it aside at the next opening.
    replace_db: bool,
    /// When a failed conversion of metadata.db's layout may be tried again.
    conversion: crate::storage::schema::Retry,
}

impl Worker {
    fn run(mut self, rx: Receiver<Job>) {
        let mut repair_retry = RETRY;
        loop {
            let wait = if self.released {
                None
            } else if self.repair_pending && self.db.is_some() && !self.repair_failed {
                // Between batches: only the jobs that arrived meanwhile, then the next batch.
                Some(Duration::ZERO)
            } else if !self.queue.is_empty() || self.room.is_some() {
                Some(RETRY)
            } else if self.repair_pending {
                Some(repair_retry)
            } else {
                None
            };
            let received = match wait {
                Some(d) => rx.recv_timeout(d),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(job) => self.take(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Stopping: the rows owed first, then the rest of the repair for as long
                    // as the recorder waits for this thread (what is left, the next start does).
                    self.turn();
                    while self.repair_pending && self.db.is_some() && !self.repair_failed {
                        self.repair();
                    }
                    return;
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.take(job);
            }
            self.turn();
            repair_retry = if self.repair_pending && (self.repair_failed || self.db.is_none()) {
                (repair_retry * 2).min(MAX_REPAIR_RETRY)
            } else {
                RETRY
            };
        }
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Register(rec) => {
                self.queue.push_back(rec);
                self.released = false;
            }
            Job::MakeRoom { wanted_free, seq } => {
                self.room = Some((wanted_free, seq));
                self.released = false;
            }
            Job::Release => {
                self.released = true;
                if self.db.take().is_some() {
                    tracing::info!("closed metadata.db while the storage fails");
                    self.repair_pending = true;
                }
            }
        }
    }

    /// One attempt at everything pending.
    fn turn(&mut self) {
        if self.released {
            return;
        }
        if self.db.as_ref().is_some_and(Storage::db_replaced) {
            tracing::warn!(
                code = crate::errors::METADATA_DB_ERROR.code,
                "metadata.db was deleted or replaced; reopening it and registering the files on disk"
            );
            if let Some(db) = self.db.take() {
                db.close_replaced();
            }
            self.repair_pending = true;
        }
        if self.db.is_none() {
            if !self.conversion.due(Instant::now()) {
                return;
            }
            let opened = self.open();
            let failed = opened
                .as_ref()
                .is_err_and(StorageError::is_failed_conversion);
            self.conversion.outcome(failed, Instant::now());
            if let Err(e) = opened {
                self.failed(&e);
                return;
            }
        }
        // Rows handed over first: repair then finds only true orphans (not this run's files).
        self.flush();
        if self.repair_pending && self.db.is_some() {
            self.repair();
        }
        if let Some((wanted, seq)) = self.room.take() {
            self.make_room(wanted, seq);
        }
    }

    fn open(&mut self) -> Result<(), StorageError> {
        let replace = std::mem::take(&mut self.replace_db);
        let mut db = Storage::open_or_replace(self.folders.root(), self.folders.spec(), replace)?;
        self.deployment_id = db.start_deployment(
            &self.deployment.name,
            self.deployment.location.as_ref(),
            Timestamp::now(),
        )?;
        let latest_end = latest_end(&db);
        // A new connection (perhaps to a new database) is checked from the start.
        self.repair = None;
        let mut v = lock(&self.view);
        if let Some(aside) = db.set_aside() {
            v.databases_set_aside.push(aside.to_path_buf());
            v.version += 1;
        }
        v.latest_end = latest_end.or(v.latest_end);
        drop(v);
        self.db = Some(db);
        Ok(())
    }

    /// One batch of the repair; the report shows what it did every [`REPAIR_PROGRESS_EVERY`]
    /// and at its end (a rebuild of a year takes a thousand batches).
    fn repair(&mut self) {
        let Some(db) = self.db.as_mut() else { return };
        let repair = self
            .repair
            .get_or_insert_with(|| Repair::new(Timestamp::now()));
        let batch = match db.repair_step(repair, &self.deployment_id) {
            Ok(batch) => batch,
            Err(e) => {
                self.repair_failed = true;
                self.failed(&e);
                return;
            }
        };
        self.repair_failed = false;
        let mut progress = repair.progress().clone();
        let done = repair.is_done();
        if done {
            progress.finished_at = Some(Timestamp::now());
            self.repair_pending = false;
            self.repair = None;
        }
        let latest = done.then(|| latest_end(db)).flatten();
        let show = done
            || self
                .progress_shown
                .is_none_or(|t| t.elapsed() >= REPAIR_PROGRESS_EVERY);
        let mut v = lock(&self.view);
        v.repair.absorb(batch, RECENT_REPAIRS);
        v.repair.progress = Some(progress);
        v.latest_end = v.latest_end.max(latest);
        if show {
            v.version += 1;
            drop(v);
            self.progress_shown = Some(Instant::now());
        }
    }

    fn flush(&mut self) {
        let Some(db) = self.db.as_mut() else { return };
        let mut written = 0;
        let mut failure = None;
        while let Some(rec) = self.queue.front() {
            match db.register(rec, &self.deployment_id) {
                Ok(_) => {
                    self.queue.pop_front();
                    written += 1;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if written > 0 {
            let mut v = lock(&self.view);
            v.rows_owed = v.rows_owed.saturating_sub(written);
            if v.rows_owed == 0 {
                v.owed_since = None;
                v.owed_since_wall = None;
                v.last_error = None;
                v.last_error_code = None;
            } else if self.queue.is_empty() {
                // The rest is still in the channel: it was handed over just now.
                let now = super::timeline::Now::read();
                (v.owed_since, v.owed_since_wall) = (Some(now.mono), Some(now.wall));
            }
        }
        if let Some(e) = failure {
            self.failed(&e);
        }
    }

    /// Records why an attempt failed; anything but a lock held by another program drops the
    /// connection, so that the next attempt reopens it (a file system back from read-only, a
    /// database recreated).
    fn failed(&mut self, e: &StorageError) {
        let text = crate::errors::chain(e);
        if !e.is_busy() {
            // A database that answers "corrupt" to a write is damaged in use: a new one, with
            // the files on disk registered again, beats retrying it for ever.
            if self.db.take().is_some() && e.is_not_a_database() {
                self.replace_db = true;
                self.repair_pending = true;
            }
        }
        let mut v = lock(&self.view);
        if v.last_error.as_deref() != Some(&text) {
            tracing::warn!(
                code = e.code().code,
                rows_owed = v.rows_owed,
                "{text}; retrying"
            );
            v.last_error = Some(text);
            v.last_error_code = Some(e.code());
            v.version += 1;
        }
    }

    fn make_room(&mut self, wanted_free: u64, seq: u64) {
        let Some(db) = self.db.as_mut() else {
            self.room = Some((wanted_free, seq));
            return;
        };
        match db.make_room(wanted_free) {
            Ok(outcome) => {
                let mut v = lock(&self.view);
                let verdict = (!outcome.enough && outcome.deleted.is_empty()).then(|| {
                    format!(
                        "the space is held by other files: deleting every registered recording would free {} bytes, and {} more are needed; nothing was deleted",
                        outcome.reclaimable,
                        wanted_free.saturating_sub(outcome.free)
                    )
                });
                if v.cannot_make_room != verdict || !outcome.deleted.is_empty() {
                    v.version += 1;
                }
                v.cannot_make_room = verdict;
                v.room_answered = seq;
                v.files_deleted += outcome.deleted.len() as u64;
                for path in outcome.deleted {
                    v.recently_deleted.push_back(path);
                    if v.recently_deleted.len() > RECENT_DELETIONS {
                        v.recently_deleted.pop_front();
                    }
                }
            }
            Err(e) => self.failed(&e),
        }
    }
}

fn latest_end(db: &Storage) -> Option<Timestamp> {
    let rows = db.newest_recordings(NEWEST_ROWS).ok()?;
    rows.iter()
        .filter_map(|r| {
            let start = storage::start_from_file_name(&r.path)?;
            // A row's numbers are untrusted: a duration that is no time ends nothing.
            storage::end_of(start, r.duration_s)
        })
        .max()
}
