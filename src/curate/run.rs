//! The curator's loop: wakes when the recorder reports (a new file) or once a minute, analyses
//! what waits, decides keep or delete, applies retention, and rewrites its report when it
//! changed. Detectors run one recording at a time in this process, never in the recorder's.

use crate::component::{ConfigFile, ReportFile};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rusqlite::Connection;

use super::config::CurateConfig;
use super::db::{self, Recording};
use super::judge;
use super::keep::{self, Rules};
use super::report::{CuratorReport, DetectorFigures, Problem};
use crate::detect::band_energy::BandEnergy;
use crate::detect::command::CommandDetector;
use crate::detect::findings::{Detection, Findings, PredictedTag};
use crate::errors::{self, ErrorCode};
use crate::spec::curate::{DetectorKind, DetectorSpec, Usage, defaults};

/// Longest sleep between rounds with nothing new (retention by age, health).
pub const IDLE_LOOK: Duration = Duration::from_secs(60);
/// A detector with a backlog that finished nothing for this long is stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(15 * 60);
/// Recordings read from metadata.db at a time.
const BATCH: usize = 32;
/// Next look after metadata.db failed.
const DB_RETRY: Duration = Duration::from_secs(5);
/// Least time between two reports written in the middle of a round (a backlog's progress).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Recordings stamped (or sized) per statement when many come at once.
const STAMP_BATCH: usize = 500;
/// Recordings decided per transaction: the write lock is held for one short commit.
const DECIDE_BATCH: usize = 256;
/// Recordings that retention may look past in one round (protected, unanalysed, owed to the
/// outbox) before it stops looking: a round's cost stays bounded whatever the archive holds.
const RETENTION_LOOK_PAST: usize = 4096;
/// Free space moves with every write (status.json, the outbox, the WAL): the report's figure
/// follows only steps of this size, so that no write is a reason to rewrite the report.
const FREE_SPACE_STEP: u64 = 16 * 1024 * 1024;
/// Longest a round analyses before it decides, applies retention and reports (a detector
/// slower than the recorder, or one hanging to its timeout on every file, never freezes the
/// rest); the next round follows at once while recordings wait.
pub const ANALYSIS_BUDGET: Duration = Duration::from_secs(20);
/// A detector failing on this many recordings in a row is a problem of the curator in status.
pub const FAILING_AFTER: u32 = 3;
/// First wait before a failed run is retried (doubling per attempt up to [`RETRY_MAX`]):
/// retries happen in later rounds, never milliseconds apart.
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
/// Longest wait before a retry.
pub const RETRY_MAX: Duration = Duration::from_secs(15 * 60);

/// Why the curator cannot run at all (faults while running are reported, not returned).
#[derive(Debug, thiserror::Error)]
pub enum CurateError {
    /// The configuration cannot be taken.
    #[error("the curator cannot start")]
    Config(#[from] crate::component::ConfigError),
    /// SIGTERM/SIGINT cannot be taken over, or the state folder cannot be watched.
    #[error("cannot set up the curator")]
    Setup(#[source] std::io::Error),
}

enum Wake {
    Look,
    Stop,
}

/// Runs the curator until SIGTERM or SIGINT.
///
/// # Errors
/// [`CurateError`] when it cannot start; every later fault is in its report.
pub fn run(config_path: &Path, state_dir: &Path) -> Result<(), CurateError> {
    let config = CurateConfig::load(config_path)?;
    let (tx, rx) = mpsc::channel();
    let mut curator = Curator::new(config, state_dir);
    let (flag, stop_tx) = (curator.stop_flag.clone(), tx.clone());
    let on_stop = move || {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = stop_tx.send(Wake::Stop);
    };
    crate::component::stop_on_signals(on_stop, None).map_err(CurateError::Setup)?;
    become_subreaper();
    let mut watch = RecorderWatch::new(state_dir, tx)?;
    loop {
        // The run-time folder may have been made again (removed, a reboot's /run): watch that.
        watch.follow();
        curator.round(&rx);
        if curator.stopping {
            break;
        }
        match rx.recv_timeout(curator.next_look()) {
            Ok(Wake::Stop) => break,
            Ok(Wake::Look) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Several reports in a row are one look.
        while let Ok(w) = rx.try_recv() {
            if matches!(w, Wake::Stop) {
                curator.stopping = true;
            }
        }
        if curator.stopping {
            break;
        }
    }
    curator.report.stopped = true;
    curator.publish(true);
    Ok(())
}

/// Wakes the loop when `recorder-report.json` is replaced (the recorder finished a file), in
/// the run-time folder that `<state>/run` leads to now.
struct RecorderWatch {
    state_dir: PathBuf,
    tx: mpsc::Sender<Wake>,
    watched: Option<PathBuf>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl RecorderWatch {
    fn new(state_dir: &Path, tx: mpsc::Sender<Wake>) -> Result<Self, CurateError> {
        crate::fsutil::prepare_run_dir(state_dir).map_err(CurateError::Setup)?;
        let mut watch = Self {
            state_dir: state_dir.to_path_buf(),
            tx,
            watched: None,
            _watcher: None,
        };
        watch.follow();
        Ok(watch)
    }

    /// Watches the folder `<state>/run` leads to, when that is not the one watched already; a
    /// folder that cannot be watched leaves the once-a-minute look.
    fn follow(&mut self) {
        let now = std::fs::canonicalize(crate::fsutil::run_dir(&self.state_dir)).ok();
        if now.is_some() && now == self.watched {
            return;
        }
        self._watcher = now.as_deref().and_then(|dir| self.watcher(dir));
        self.watched = now.filter(|_| self._watcher.is_some());
    }

    fn watcher(&self, dir: &Path) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let name = Some(std::ffi::OsString::from(crate::recorder::REPORT_FILE));
        let tx = self.tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                // The recorder's report read by roost or the page is no new file.
                if crate::watch::may_change(&event.kind)
                    && event
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
                {
                    let _ = tx.send(Wake::Look);
                }
            });
        let watching = watcher.as_mut().map_err(|e| e.to_string()).and_then(|w| {
            w.watch(dir, notify::RecursiveMode::NonRecursive)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = watching {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the recorder's report; looking once a minute");
            return None;
        }
        watcher.ok()
    }
}

/// A failure of one detector on one recording.
struct Failure {
    code: &'static ErrorCode,
    message: String,
    retryable: bool,
}

#[derive(Clone)]
enum Analyser {
    Band(BandEnergy),
    Command(CommandDetector),
}

impl Analyser {
    fn of(spec: &DetectorSpec) -> Self {
        match spec.kind {
            DetectorKind::BandEnergy => Self::Band(BandEnergy {
                low_hz: spec.low_hz.unwrap_or(0.0),
                high_hz: spec.high_hz.unwrap_or(f64::MAX),
                threshold_db: spec.threshold_db.unwrap_or(defaults::THRESHOLD_DB),
                min_duration: spec
                    .min_duration
                    .map(|d| d.as_std())
                    .unwrap_or(Duration::from_millis(defaults::MIN_DURATION_MS)),
            }),
            DetectorKind::Command => Self::Command(CommandDetector {
                command: spec.command.clone().unwrap_or_default(),
                timeout: spec
                    .timeout
                    .map(|d| d.as_std())
                    .unwrap_or(Duration::from_secs(defaults::TIMEOUT_S)),
            }),
        }
    }

    fn analyse(&self, rec: &Recording) -> Result<Findings, Failure> {
        if let Some(why) = rec.implausible() {
            return Err(Failure {
                code: &errors::RECORDING_UNDESCRIBABLE,
                message: format!("{}: {why}", rec.path.display()),
                retryable: false,
            });
        }
        match self {
            Self::Band(band) => band
                .analyse_file(&rec.path)
                .map(|events| band_findings(&events))
                .map_err(|e| Failure {
                    code: &errors::DETECTOR_FAILED_ON_RECORDING,
                    message: errors::chain(&e),
                    retryable: false,
                }),
            Self::Command(cmd) => cmd
                .run(&rec.path, rec.duration_s, rec.samplerate_hz)
                .map_err(|e| Failure {
                    code: e.code(),
                    message: errors::chain(&e),
                    retryable: e.retryable(),
                }),
        }
    }
}

/// The built-in detector's events as acoupi-style detections tagged `event: sound`.
pub fn band_findings(events: &[crate::detect::band_energy::Event]) -> Findings {
    Findings {
        detections: events
            .iter()
            .map(|e| Detection {
                location: [e.start_s, e.low_hz, e.end_s, e.high_hz],
                detection_score: e.score,
                tags: vec![PredictedTag {
                    key: "event".into(),
                    value: "sound".into(),
                    confidence_score: e.score,
                }],
            })
            .collect(),
        tags: Vec::new(),
    }
}

struct Active {
    spec: DetectorSpec,
    analyser: Analyser,
    /// The rowid after which it analyses recordings (`roost_detector.since_rowid`).
    since: Option<i64>,
    /// Recordings it failed on in a row (reset by a success).
    failing: u32,
    /// Every recording up to this rowid is finished (done or given up): the next look for
    /// work starts after it, never at `since` (which would re-read all it ever analysed).
    low_water: i64,
    /// Recordings it finished (done, given up), counted once at open and then as they go;
    /// the report takes them at the end of each look (with the other figures).
    outcomes: (u64, u64),
}

/// A failed run waits before its retry: not before `at`.
struct Retry {
    at: std::time::Instant,
}

/// The curator's state between rounds.
pub struct Curator {
    config: CurateConfig,
    /// The board's power, when the deployment has an energy policy: its sensors and state.
    power: Option<(crate::power::Sensors, crate::power::Saving)>,
    state_dir: PathBuf,
    conn: Option<Connection>,
    /// (device, inode) of the metadata.db `conn` has open.
    db_identity: Option<(u64, u64)>,
    /// When a failed conversion of metadata.db's layout may be tried again, and its problem.
    conversion: crate::storage::schema::Retry,
    conversion_failed: Option<Problem>,
    detectors: Vec<Active>,
    rules: Rules,
    report: CuratorReport,
    written: Option<CuratorReport>,
    /// (recording, detector) that failed and wait for their retry (a later round, after a
    /// back-off), so one bad recording never holds the queue nor is retried at once.
    retries: std::collections::HashMap<(uuid::Uuid, String), Retry>,
    /// The device clock as last stored in metadata.db, and as read this round.
    clock_stored: Option<super::age::Anchor>,
    device_now: f64,
    /// Recordings up to this rowid have their `roost_age` stamp.
    stamped_until: i64,
    /// The wall clock minus the device clock now (see [`db::skew`]).
    wall_skew: f64,
    /// Whether the last round failed on metadata.db (looked at again after [`DB_RETRY`]).
    db_failed: bool,
    /// Where the next retention walk starts (device-clock seconds) when the last one stopped
    /// after looking past [`RETENTION_LOOK_PAST`] recordings it could not delete.
    retention_from: Option<f64>,
    /// Every recording up to this rowid is decided (`None`: not known yet, found from the
    /// end of the table at the first decision after opening).
    decided_until: Option<i64>,
    /// Thousands of SQLite VM steps run on the curator's connections (a measure of rows read,
    /// for the benchmarks and tests of costs against the archive's size).
    vm_steps: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Whether the last round left recordings waiting for analysis (look again at once).
    more_waiting: bool,
    /// How long a round may analyse ([`ANALYSIS_BUDGET`]).
    analysis_budget: Duration,
    /// A detector whose bookkeeping cannot be read (it would be skipped silently otherwise).
    detector_problem: Option<Problem>,
    /// How often decisions, retention and the report go on while one detector run lasts
    /// ([`crate::recorder::HEARTBEAT`]).
    look_every: Duration,
    stopping: bool,
    /// Set by SIGTERM/SIGINT: a detector run that fails now was most likely ended by the same
    /// stop (roost stopping stops what the curator started), and is not counted.
    stop_flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Curator {
    /// A curator for `config` with its report in `state_dir`.
    pub fn new(config: CurateConfig, state_dir: &Path) -> Self {
        let rules = Rules::new(
            &config.storage.keep,
            &config.recorder,
            config.location.as_ref(),
        );
        let detectors = config
            .detectors
            .iter()
            .map(|spec| Active {
                spec: spec.clone(),
                analyser: Analyser::of(spec),
                since: None,
                failing: 0,
                low_water: 0,
                outcomes: (0, 0),
            })
            .collect();
        let report = CuratorReport {
            pid: std::process::id(),
            detectors: config
                .detectors
                .iter()
                .map(|d| DetectorFigures {
                    name: d.name.to_string(),
                    ..DetectorFigures::default()
                })
                .collect(),
            ..CuratorReport::default()
        };
        let power = (config.power.as_ref())
            .filter(|p| p.saving.is_some())
            .map(|p| {
                (
                    crate::power::Sensors::find(p.sysfs_root.as_path()),
                    Default::default(),
                )
            });
        Self {
            config,
            power,
            state_dir: state_dir.to_path_buf(),
            conn: None,
            db_identity: None,
            conversion: Default::default(),
            conversion_failed: None,
            detectors,
            rules,
            report,
            written: None,
            retries: std::collections::HashMap::new(),
            clock_stored: None,
            device_now: 0.0,
            stamped_until: 0,
            wall_skew: 0.0,
            decided_until: None,
            retention_from: None,
            db_failed: false,
            vm_steps: Default::default(),
            more_waiting: false,
            analysis_budget: ANALYSIS_BUDGET,
            detector_problem: None,
            look_every: crate::recorder::HEARTBEAT,
            stopping: false,
            stop_flag: Default::default(),
        }
    }

    /// Opens metadata.db, again when the file at its path is another one now (a storage
    /// mounted again, a database replaced). Never makes one: under a storage that is not
    /// mounted that would hide an empty database beneath the mount point; the recorder makes it.
    fn open(&mut self) -> Result<(), Problem> {
        let root = self.config.storage_path();
        let db_path = root.join(crate::storage::DB_FILE);
        let identity = file_identity(&db_path);
        if self.conn.is_some() && identity.is_some() && identity == self.db_identity {
            return Ok(());
        }
        self.conn = None;
        if identity.is_none() {
            return Err(Problem {
                code: errors::STORAGE_UNUSABLE.code.to_string(),
                message: format!(
                    "{} is not there (the recorder makes it; a storage that is not mounted looks like this too)",
                    db_path.display()
                ),
            });
        }
        if let Some(problem) = self.conversion_failed.as_ref()
            && !self.conversion.due(std::time::Instant::now())
        {
            return Err(problem.clone());
        }
        let opened = crate::storage::Storage::open(&root, &self.config.storage);
        let failed = opened
            .as_ref()
            .is_err_and(crate::storage::StorageError::is_failed_conversion);
        self.conversion.outcome(failed, std::time::Instant::now());
        let storage = opened.map_err(|e| Problem {
            code: e.code().code.to_string(),
            message: errors::chain(&e),
        });
        self.conversion_failed = storage.as_ref().err().filter(|_| failed).cloned();
        drop(storage?);
        let mut conn = db::open(&root).map_err(|e| Problem {
            code: errors::STORAGE_UNUSABLE.code.to_string(),
            message: format!("metadata.db in {}: {}", root.display(), e),
        })?;
        let steps = self.vm_steps.clone();
        let _ = conn.progress_handler(
            1000,
            Some(move || {
                steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }),
        );
        self.stamped_until = db::stamped_until(&conn).unwrap_or(0);
        self.learn_detectors(&conn);
        self.count_outcomes(&conn);
        self.clock_stored = db::load_clock(&conn).ok().flatten();
        self.decided_until = None;
        self.conn = Some(conn);
        self.db_identity = identity;
        Ok(())
    }

    /// Each detector's `since` rowid. A detector seen for the first time starts at the first
    /// recording of the running deployment that the curator has not seen yet (no `roost_age`
    /// stamp): the first files of a new storage, and those made while the curator was down or
    /// restarting for the new settings, are analysed too; months of history are not.
    fn learn_detectors(&mut self, conn: &Connection) {
        let from = db::first_unseen_rowid_of(conn, &self.config.deployment, self.stamped_until)
            .ok()
            .flatten();
        let now = Timestamp::now();
        self.detector_problem = None;
        for d in &mut self.detectors {
            let since = db::detector_since(conn, d.spec.name.as_str(), from, now);
            if let Err(e) = &since {
                self.detector_problem = Some(Problem {
                    code: errors::METADATA_DB_ERROR.code.to_string(),
                    message: format!(
                        "metadata.db: the bookkeeping of detector {} cannot be read ({e}); it analyses nothing until it can",
                        d.spec.name
                    ),
                });
            }
            d.since = since.ok();
            d.low_water = d.since.unwrap_or(0);
        }
    }

    /// Each detector's finished and given-up recordings, counted once when metadata.db is
    /// opened; from then on the curator counts what it does.
    fn count_outcomes(&mut self, conn: &Connection) {
        for d in &mut self.detectors {
            if let Ok(outcomes) = db::outcomes(conn, d.spec.name.as_str()) {
                d.outcomes = outcomes;
            }
        }
    }

    /// Reads the device clock, stores it when it moved far enough (or a new boot), and stamps
    /// the recordings not seen before with when they were made on it.
    fn follow_clock(&mut self) -> rusqlite::Result<()> {
        let reading = super::age::Reading::now();
        let anchor = super::age::advance(self.clock_stored.as_ref(), &reading);
        let conn = self.conn.as_ref().expect("opened");
        let store = self.clock_stored.as_ref().is_none_or(|s| {
            s.boot_id != anchor.boot_id
                || anchor.device_s - s.device_s >= super::age::PERSIST_EVERY_S
        });
        if store {
            db::store_clock(conn, &anchor)?;
            self.clock_stored = Some(anchor.clone());
        }
        self.device_now = anchor.device_s;
        self.wall_skew = db::clock_skew(reading.wall, anchor.device_s);
        // In batches: a storage new to the curator (or a rebuilt database) is stamped without
        // holding all its rows in memory.
        loop {
            let (device_now, wall_now) = (anchor.device_s, reading.wall);
            let made_at =
                |start, duration_s| super::age::made_at(device_now, wall_now, start, duration_s);
            let (newest, read) = db::stamp_made(conn, self.stamped_until, made_at, STAMP_BATCH)?;
            self.stamped_until = newest;
            if read < STAMP_BATCH {
                break;
            }
        }
        // Recordings stamped by an older roost get their size a batch at a time.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while db::size_unsized(conn, STAMP_BATCH)? == STAMP_BATCH
            && std::time::Instant::now() < deadline
        {}
        Ok(())
    }

    /// Thousands of SQLite VM steps the curator has run so far (see [`Curator`]'s field).
    pub fn vm_steps(&self) -> u64 {
        self.vm_steps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long to wait for news before the next round: at once while recordings wait for
    /// a detector, else until the earliest retry or the idle look.
    fn next_look(&self) -> Duration {
        if self.more_waiting {
            return Duration::ZERO;
        }
        // metadata.db failed (locked by another program, replaced): looked at again soon, not
        // at the idle minute, so that a fault gone is a problem gone.
        let idle = if self.db_failed { DB_RETRY } else { IDLE_LOOK };
        let now = std::time::Instant::now();
        self.retries
            .values()
            .map(|r| r.at.saturating_duration_since(now))
            .min()
            .map_or(idle, |d| d.min(idle))
    }

    /// Opens metadata.db and decides keep or delete for every recording waiting for it, as a
    /// round does (for benches and tools); returns how many were decided.
    ///
    /// # Errors
    /// metadata.db cannot be opened, read or written.
    pub fn decide_now(&mut self) -> Result<u64, String> {
        self.open()
            .map_err(|p| format!("{}: {}", p.code, p.message))?;
        let before = self.report.storage.kept_this_run + self.report.storage.deleted_this_run;
        self.decide_all().map_err(|e| e.to_string())?;
        Ok(self.report.storage.kept_this_run + self.report.storage.deleted_this_run - before)
    }

    /// One whole round now (analyse, decide, retain, report), without signals: for tests and
    /// tools.
    pub fn round_now(&mut self) {
        let (_tx, rx) = mpsc::channel();
        self.round(&rx);
    }

    /// The report as it stands.
    pub fn report(&self) -> &CuratorReport {
        &self.report
    }

    /// One round: analyse, decide, retain, report. Stops early on SIGTERM.
    fn round(&mut self, rx: &mpsc::Receiver<Wake>) {
        // What the last round left waiting is looked at again by this one; a round that stops
        // early (no storage) must not leave the loop looking again at once, for ever.
        self.more_waiting = false;
        let now = std::time::Instant::now();
        self.retries.retain(|_, r| r.at > now);
        if let Err(problem) = self.open() {
            self.report.error = Some(problem);
            self.publish(false);
            return;
        }
        // The error of the last round stays in the report until this one has judged: a
        // report written mid-round never shows a problem as gone for a few seconds.
        if self.detectors.iter().any(|d| d.since.is_none())
            && let Some(conn) = self.conn.take()
        {
            // Retried every round: until each detector's bookkeeping is read, nothing is
            // decided or deleted (one a detector never saw could go otherwise).
            self.learn_detectors(&conn);
            self.conn = Some(conn);
        }
        let paused = self.paused_for_power();
        let result = self
            .finish_owed_unlinks()
            .and_then(|()| self.follow_clock())
            .and_then(|()| if paused { Ok(()) } else { self.analyse_all(rx) })
            .and_then(|()| self.decide_all())
            .and_then(|()| self.retain());
        self.db_failed = result.is_err();
        let db_problem = result.err().map(|e| {
            // A lost database (deleted, replaced, locked too long): open it again next round.
            self.conn = None;
            Problem {
                code: errors::METADATA_DB_ERROR.code.to_string(),
                message: format!("metadata.db: {e}"),
            }
        });
        self.refresh_figures();
        // Paused detectors fall behind by design: not a detector's fault while it lasts.
        let health = if paused {
            None
        } else {
            self.health(Timestamp::now())
        };
        self.report.error = db_problem
            .or_else(|| self.detector_problem.clone())
            .or(health);
        self.publish(false);
    }

    /// Whether the energy policy pauses the detectors now (looked at once a round: the
    /// curator wakes on each new recording and once a minute); its DEP_E906 warning set or
    /// cleared.
    fn paused_for_power(&mut self) -> bool {
        let (Some((sensors, saving)), Some(spec)) =
            (self.power.as_mut(), self.config.power.as_ref())
        else {
            return false;
        };
        // Sensors that were missing (a fuel gauge bound late) are looked for again each round.
        if sensors.incomplete() || sensors.lost() {
            *sensors = crate::power::Sensors::find(spec.sysfs_root.as_path());
        }
        let reading = sensors.read();
        let mono = crate::power::mono_now();
        *saving = saving.next(&reading, spec, mono);
        let paused = saving.level >= crate::spec::power::SavingLevel::Reduce;
        let code = errors::POWER_SAVING.code;
        self.report.warnings.retain(|w| w.code != code);
        if paused && let Some(p) = saving.problem(&reading) {
            self.report.warnings.push(p);
        }
        paused
    }

    /// Analyses what waits, detector by detector, oldest first, for at most
    /// [`ANALYSIS_BUDGET`]; recordings whose retry is not due are passed over.
    fn analyse_all(&mut self, rx: &mpsc::Receiver<Wake>) -> rusqlite::Result<()> {
        let deadline = std::time::Instant::now() + self.analysis_budget;
        let mut analysed = 0usize;
        for i in 0..self.detectors.len() {
            let Some(since) = self.detectors[i].since else {
                continue;
            };
            let name = self.detectors[i].spec.name.to_string();
            let mut after = since.max(self.detectors[i].low_water);
            let mut first = true;
            loop {
                let conn = self.conn.as_ref().expect("opened");
                // The newest row read before what waits: a recording registered between the
                // two reads has a later rowid, and the mark never passes it unseen.
                let newest = if first { newest_rowid(conn)? } else { 0 };
                let batch = db::pending(conn, &name, after, BATCH)?;
                if first {
                    // Everything before the first recording still waiting is finished.
                    self.detectors[i].low_water = match batch.first() {
                        Some(r) => r.rowid - 1,
                        None => newest.max(after),
                    };
                    first = false;
                }
                let Some(last) = batch.last() else { break };
                after = last.rowid;
                for rec in batch {
                    if self.retries.contains_key(&(rec.id, name.clone())) {
                        continue;
                    }
                    if let Ok(Wake::Stop) = rx.try_recv() {
                        self.stopping = true;
                    }
                    if self.stopping {
                        return Ok(());
                    }
                    if std::time::Instant::now() >= deadline {
                        self.more_waiting = true;
                        return Ok(());
                    }
                    self.analyse_one(i, &rec)?;
                    analysed += 1;
                    // Progress is shown while a backlog is worked through; one new file is
                    // shown by the round's end.
                    if analysed > 1 {
                        self.publish_progress();
                    }
                }
            }
        }
        Ok(())
    }

    fn analyse_one(&mut self, i: usize, rec: &Recording) -> rusqlite::Result<()> {
        let name = self.detectors[i].spec.name.to_string();
        let now = Timestamp::now;
        if !rec.path.exists() {
            // Deleted by hand (or by another program) before analysis: recorded, never retried.
            let conn = self.conn.as_ref().expect("opened");
            db::mark_deleted(conn, &rec.id, "missing", now())?;
            let message = format!(
                "{} was deleted before {name} analysed it",
                rec.path.display()
            );
            db::record_failure(
                conn,
                &rec.id,
                &name,
                errors::RECORDING_GONE.code,
                &message,
                true,
                now(),
            )?;
            self.detectors[i].outcomes.1 += 1;
            self.note_failure(i, rec, &errors::RECORDING_GONE, message);
            return Ok(());
        }
        let outcome = self.analyse_watching(i, rec);
        reap_leftovers();
        match outcome {
            Ok(findings) => {
                let conn = self.conn.as_mut().expect("opened");
                db::record_findings(conn, &rec.id, &name, &findings, now())?;
                let d = &mut self.detectors[i];
                d.failing = 0;
                let f = &mut self.report.detectors[i];
                f.last_analysed = Some(rec.path.clone());
                f.last_analysed_at = Some(now());
                f.failing = 0;
                d.outcomes.0 += 1;
                f.backlog = f.backlog.saturating_sub(1);
            }
            Err(_) if self.stop_flag.load(std::sync::atomic::Ordering::SeqCst) => {
                tracing::info!(recording = %rec.path.display(), detector = %name, "stopping: the run that ended with the stop is not counted; analysed again at the next start");
                self.stopping = true;
            }
            Err(failure) => self.failed(i, rec, failure)?,
        }
        self.gone_after_run(rec)
    }

    /// Runs detector `i` on `rec` in a thread of its own. Meanwhile, every [`HEARTBEAT`], it
    /// decides what can be decided, applies retention and rewrites the report (saying what
    /// runs since when): a detector that runs long never freezes keep decisions or retention,
    /// nor hides the curator from status. A stop is passed on to the detector at once.
    ///
    /// [`HEARTBEAT`]: crate::recorder::HEARTBEAT
    fn analyse_watching(&mut self, i: usize, rec: &Recording) -> Result<Findings, Failure> {
        let analyser = self.detectors[i].analyser.clone();
        let job = rec.clone();
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("detector".into())
            .spawn(move || {
                let _ = tx.send(analyser.analyse(&job));
            });
        if spawned.is_err() {
            return self.detectors[i].analyser.analyse(rec);
        }
        let started = Timestamp::now();
        let mut last_look = std::time::Instant::now();
        let mut stop_passed = false;
        loop {
            match rx.recv_timeout(self.look_every.min(Duration::from_secs(1))) {
                Ok(outcome) => {
                    self.report.analysing = None;
                    return outcome;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.report.analysing = None;
                    return Err(Failure {
                        code: &errors::DETECTOR_NOT_RUN,
                        message: "the detector's thread ended without an answer".into(),
                        retryable: true,
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.stop_flag.load(std::sync::atomic::Ordering::SeqCst) && !stop_passed {
                // Roost stops us: the detector (in a process group of its own) stops too.
                signal_children(nix::sys::signal::Signal::SIGTERM);
                stop_passed = true;
            }
            if last_look.elapsed() >= self.look_every && !stop_passed {
                last_look = std::time::Instant::now();
                self.report.analysing = Some(format!(
                    "{} on {} since {started}",
                    self.detectors[i].spec.name,
                    rec.path.display()
                ));
                self.look_while_analysing();
            }
        }
    }

    /// What a round does after analysing, while a detector still runs: decisions, retention,
    /// figures, health, the report.
    fn look_while_analysing(&mut self) {
        let result = self.decide_all().and_then(|()| self.retain());
        if let Err(e) = result {
            tracing::warn!(error = %e, "metadata.db while a detector runs; trying again after it");
        }
        self.refresh_figures();
        let now = Timestamp::now();
        self.report.error = (self.report.error.clone())
            .filter(|p| {
                p.code != errors::DETECTOR_BEHIND.code && p.code != errors::DETECTOR_STALLED.code
            })
            .or_else(|| self.health(now));
        self.publish(true);
    }

    /// Counts a failed run: given up (marked failed, the queue goes on) or retried in a later
    /// round after a back-off.
    fn failed(&mut self, i: usize, rec: &Recording, failure: Failure) -> rusqlite::Result<()> {
        let name = self.detectors[i].spec.name.to_string();
        let conn = self.conn.as_ref().expect("opened");
        let attempts = db::attempts(conn, &rec.id, &name)? + 1;
        let give_up = !failure.retryable || attempts > self.detectors[i].spec.retries();
        db::record_failure(
            conn,
            &rec.id,
            &name,
            failure.code.code,
            &failure.message,
            give_up,
            Timestamp::now(),
        )?;
        tracing::warn!(code = failure.code.code, recording = %rec.path.display(), detector = %name, attempts, give_up, "{}", failure.message);
        if !give_up {
            let wait = RETRY_FIRST
                .saturating_mul(1 << (attempts - 1).min(10))
                .min(RETRY_MAX);
            let at = std::time::Instant::now() + wait;
            self.retries.insert((rec.id, name), Retry { at });
        }
        self.detectors[i].failing += 1;
        self.report.detectors[i].failing = self.detectors[i].failing;
        self.detectors[i].outcomes.1 += u64::from(give_up);
        self.note_failure(i, rec, failure.code, failure.message);
        Ok(())
    }

    /// A detector that deleted (or moved) the recording it was given: its row says so now,
    /// not at the next start.
    fn gone_after_run(&mut self, rec: &Recording) -> rusqlite::Result<()> {
        if matches!(rec.path.try_exists(), Ok(false)) {
            let conn = self.conn.as_ref().expect("opened");
            db::mark_deleted(conn, &rec.id, "missing", Timestamp::now())?;
            tracing::warn!(path = %rec.path.display(), "a recording disappeared while a detector analysed it (did the detector delete it?); its row says deleted_by missing");
        }
        Ok(())
    }

    fn note_failure(&mut self, i: usize, rec: &Recording, code: &ErrorCode, message: String) {
        let f = &mut self.report.detectors[i];
        f.last_failure = Some(Problem {
            code: code.code.to_string(),
            message,
        });
        f.last_failure_file = Some(rec.path.clone());
    }

    /// Whether some detector's bookkeeping could not be read: then nothing is decided or
    /// deleted (it is reported, and read again every round).
    fn detector_unknown(&self) -> bool {
        self.detectors.iter().any(|d| d.since.is_none())
    }

    fn since_list(&self) -> Vec<(String, i64)> {
        self.detectors
            .iter()
            .filter_map(|d| Some((d.spec.name.to_string(), d.since?)))
            .collect()
    }

    /// Keep or delete each recording every detector has finished ([`judge::judge`], the
    /// judgement `roost plan` shows), from the cursor on: what was decided is never read again.
    /// A batch is judged with reads only, then its decisions are written in one short FULL
    /// commit (the write lock is never held while judging) before any of its files is deleted.
    fn decide_all(&mut self) -> rusqlite::Result<()> {
        if self.rules.is_empty() || self.stopping || self.detector_unknown() {
            return Ok(());
        }
        let since = self.since_list();
        let conn = self.conn.as_mut().expect("opened");
        let mut after = match self.decided_until {
            Some(after) => after,
            None => db::decided_until(conn)?,
        };
        loop {
            let batch = db::undecided(conn, after, &since, DECIDE_BATCH)?;
            let mut verdicts = Vec::with_capacity(batch.len());
            for rec in batch {
                let kept_by = match judge::judge(conn, &rec, &self.rules, &since)? {
                    judge::Verdict::Waiting => break,
                    judge::Verdict::Keep(by) => Some(by),
                    judge::Verdict::Delete => None,
                };
                verdicts.push((rec, kept_by));
            }
            // A recording still waiting holds the ones after it: the cursor stops before it.
            let Some((last, _)) = verdicts.last() else {
                break;
            };
            after = last.rowid;
            let doomed = write_decisions(conn, &verdicts)?;
            let kept = (verdicts.len() - doomed.len()) as u64;
            self.report.storage.kept_this_run += kept;
            self.report.storage.deleted_this_run += doomed.len() as u64;
            let gone = finish_unlinks(conn)?;
            if gone > 0 {
                let first = doomed.first().map(|p| p.display().to_string());
                tracing::info!(
                    deleted = gone,
                    kept,
                    first,
                    "keep rules: deleted the recordings no rule keeps"
                );
            }
        }
        self.decided_until = Some(after);
        Ok(())
    }

    /// `maxAge` and `maxUsage`: the oldest deletable recordings go first. Ages are real ages
    /// on the device clock ([`super::age`]), never wall-clock differences. Reads the
    /// recordings oldest first and stops as soon as nothing more can go: a round costs what
    /// it deletes (and what it looks past), not the archive.
    fn retain(&mut self) -> rusqlite::Result<()> {
        let storage = self.config.storage.clone();
        if (storage.max_age.is_none() && storage.max_usage.is_none())
            || self.stopping
            || self.detector_unknown()
        {
            return Ok(());
        }
        // A share of a file system whose size cannot be read is no limit (never 0 bytes,
        // which would delete every deletable recording).
        let limit = storage.max_usage.and_then(|u| match u {
            Usage::Bytes(b) => Some(b.bytes()),
            Usage::Percent(p) => crate::storage::fs_size(&self.config.storage_path())
                .ok()
                .map(|size| (size as f64 * p / 100.0) as u64),
        });
        let max_age = storage.max_age.map(|a| a.as_std());
        let (going, held) = self.retention_walk(max_age, limit)?;
        self.report.storage.held_for_retention = held;
        if going.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        // The rows first, on the card, then the files (see decide_all).
        let conn = self.conn.as_mut().expect("opened");
        crate::storage::durably(conn, |tx| {
            going
                .iter()
                .try_for_each(|(id, _, rule)| db::mark_deleted(tx, id, rule, now))?;
            db::unlink_later(
                tx,
                &going
                    .iter()
                    .map(|(_, p, _)| p.as_path())
                    .collect::<Vec<_>>(),
            )
        })?;
        let gone = finish_unlinks(conn)?;
        tracing::info!(deleted = gone, first = %going[0].1.display(), rule = going[0].2, "retention: deleted the oldest recordings");
        Ok(())
    }

    /// Carries out deletions decided before a crash (see [`finish_unlinks`]).
    fn finish_owed_unlinks(&mut self) -> rusqlite::Result<()> {
        let conn = self.conn.as_mut().expect("opened");
        let gone = finish_unlinks(conn)?;
        if gone > 0 {
            tracing::warn!(
                deleted = gone,
                "finished deleting recordings whose deletion was decided before the curator stopped"
            );
        }
        Ok(())
    }

    /// The recordings retention deletes now (id, file, rule), and how many more would go but
    /// for analysis or the outbox (held). Walks the recordings oldest first (device clock)
    /// with two tallies, the real one and one as if nothing held recordings back, and stops
    /// when neither can delete more, or after [`RETENTION_LOOK_PAST`] recordings it could not
    /// delete.
    fn retention_walk(
        &mut self,
        max_age: Option<Duration>,
        limit: Option<u64>,
    ) -> rusqlite::Result<(Vec<Going>, u64)> {
        let since = self.since_list();
        // An outbox not made yet, or that cannot be read now, owes every model output: holding
        // a file a round longer costs nothing, deleting it before its message left is final.
        let owed = (self.config.sends_messages)
            .then(|| crate::connect::owed_messages(&self.state_dir).unwrap_or_default());
        let conn = self.conn.as_ref().expect("opened");
        let used = db::tally(conn)?.1;
        let mut real = keep::Retention::new(used, max_age, limit);
        let mut unheld = keep::Retention::new(used, max_age, limit);
        let (mut going, mut held, mut looked_past) = (Vec::new(), 0u64, 0usize);
        let mut stmt = conn.prepare_cached(&db::oldest_made_sql())?;
        let mut rows = stmt.query([self.retention_from.unwrap_or(f64::MIN)])?;
        let mut stopped_at = None;
        while let Some(row) = rows.next()? {
            let Ok((rec, bytes)) = db::recording_with_bytes(row) else {
                continue;
            };
            let age_s = (self.device_now - rec.made_device_s.unwrap_or(self.device_now)).max(0.0);
            if real.done(age_s) && unheld.done(age_s) {
                break;
            }
            let free = !judge::protected(&rec) && rec.implausible().is_none();
            let deletable = free
                && db::analysed_by_all(conn, &rec, &since)?
                && !owed_to_outbox(conn, &rec, owed.as_ref())?;
            let would = unheld.take(age_s, bytes, free);
            match real.take(age_s, bytes, deletable) {
                Some(rule) => going.push((rec.id, rec.path, rule)),
                None if would.is_some() => held += 1,
                None => {}
            }
            looked_past += usize::from(!deletable);
            if looked_past >= RETENTION_LOOK_PAST {
                stopped_at = rec.made_device_s;
                break;
            }
        }
        drop(rows);
        // Stopped by the bound: the next round goes on from here (what it looked past is
        // looked at again once a walk gets to its end), so retention always gets through.
        self.retention_from = stopped_at;
        Ok((going, held))
    }

    /// Says in the report how many recordings' wall-clock times disagree with how long they
    /// have existed, and what maxAge does about them.
    fn note_clock(&mut self, disagree: u64) {
        let s = &mut self.report.storage;
        s.clock_disagrees = disagree;
        s.age_note = (disagree > 0 && self.config.storage.max_age.is_some()).then(|| {
            format!(
                "{disagree} recordings have wall-clock times that disagree with how long they have existed on this device (the clock was set or stepped since they were made, or the curator first saw them late); maxAge counts their real age on the device clock, never their wall-clock time"
            )
        });
    }

    /// The report's figures, each from an index or a tally (never a walk of the archive):
    /// backlogs after each detector's low-water mark, the last hour's detections, the
    /// recordings and bytes (`roost_tally`), the last day's bytes, free space in
    /// [`FREE_SPACE_STEP`]s, deletions per rule (`roost_deleted`), clock disagreements.
    fn refresh_figures(&mut self) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        let now = Timestamp::now();
        let hour_ago = now - SignedDuration::from_hours(1);
        let recent = db::detections_since(conn, hour_ago).unwrap_or_default();
        for (d, f) in self.detectors.iter().zip(self.report.detectors.iter_mut()) {
            let name = d.spec.name.as_str();
            if let Some(since) = d.since
                && let Ok((backlog, oldest)) = db::backlog(conn, name, since.max(d.low_water))
            {
                (f.backlog, f.backlog_oldest) = (backlog, oldest);
            }
            (f.analysed, f.failed) = d.outcomes;
            f.detections_last_hour = recent
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, c)| *c);
        }
        let s = &mut self.report.storage;
        if let Ok((recordings, bytes)) = db::tally(conn) {
            (s.recordings, s.bytes_used) = (recordings, bytes);
        }
        let last_day = db::bytes_made_since(conn, self.device_now - 86_400.0).unwrap_or(0);
        let free = crate::storage::Folders::new(&self.config.storage_path(), &self.config.storage)
            .free_bytes()
            .ok();
        s.free_bytes = match (s.free_bytes, free) {
            (Some(old), Some(new)) if old.abs_diff(new) < FREE_SPACE_STEP => Some(old),
            _ => free,
        };
        s.days_until_full = s
            .free_bytes
            .filter(|_| last_day > 0)
            .map(|free| (free as f64 / last_day as f64 * 10.0).round() / 10.0);
        s.deleted_by_rule = db::deleted_by_rule(conn)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let disagree =
            db::skew_disagrees(conn, self.wall_skew, super::age::DISAGREE_AFTER_S).unwrap_or(0);
        self.note_clock(disagree);
    }

    /// A detector failing on every recording, far behind, or one that finished nothing for
    /// long while recordings wait.
    fn health(&self, now: Timestamp) -> Option<Problem> {
        for f in &self.report.detectors {
            if f.failing >= FAILING_AFTER
                && let Some(last) = &f.last_failure
            {
                return Some(Problem {
                    code: last.code.clone(),
                    message: format!(
                        "{} failed on its last {} recordings in a row; the newest: {}",
                        f.name, f.failing, last.message
                    ),
                });
            }
        }
        for (d, f) in self.detectors.iter().zip(&self.report.detectors) {
            if f.backlog > u64::from(d.spec.max_backlog()) {
                return Some(Problem {
                    code: errors::DETECTOR_BEHIND.code.to_string(),
                    message: format!(
                        "{} has {} recordings waiting (maxBacklog {})",
                        f.name,
                        f.backlog,
                        d.spec.max_backlog()
                    ),
                });
            }
            let idle = f
                .last_analysed_at
                .map(|t| now.duration_since(t).unsigned_abs() > STALLED_AFTER);
            if f.backlog > 0 && idle == Some(true) {
                return Some(Problem {
                    code: errors::DETECTOR_STALLED.code.to_string(),
                    message: format!(
                        "{} finished no recording for {} min while {} wait",
                        f.name,
                        STALLED_AFTER.as_secs() / 60,
                        f.backlog
                    ),
                });
            }
        }
        None
    }

    /// Writes the report when a field changed (the time alone is not a change), or `force`.
    fn publish(&mut self, force: bool) {
        let mut same = self.written.clone();
        if let Some(w) = same.as_mut() {
            w.updated_at = self.report.updated_at;
        }
        if !force && same.as_ref() == Some(&self.report) && !self.heartbeat_due() {
            return;
        }
        self.report.updated_at = Some(Timestamp::now());
        if let Err(e) = self.report.write(&self.state_dir) {
            tracing::warn!(error = %e, "cannot write curator-report.json");
        }
        self.written = Some(self.report.clone());
    }

    /// Mid-round, while a backlog is worked through: the report at most every
    /// [`PROGRESS_EVERY`], so that each analysed file is not a rewrite of the report and of
    /// status.json of its own (the round's end writes what it changed).
    fn publish_progress(&mut self) {
        let due = self
            .report
            .updated_at
            .is_none_or(|t| Timestamp::now().duration_since(t).unsigned_abs() >= PROGRESS_EVERY);
        if due {
            self.publish(false);
        }
    }

    fn heartbeat_due(&self) -> bool {
        self.report.updated_at.is_none_or(|t| {
            Timestamp::now().duration_since(t).unsigned_abs() >= crate::recorder::HEARTBEAT
        })
    }
}

/// A recording retention deletes: its id, its file, the rule.
type Going = (uuid::Uuid, PathBuf, &'static str);

use crate::storage::read::newest_rowid;

/// Writes a judged batch: each decision, and for each recording no rule keeps its row
/// marked deleted, in one FULL commit. Returns the files to delete now.
fn write_decisions(
    conn: &mut Connection,
    verdicts: &[(Recording, Option<String>)],
) -> rusqlite::Result<Vec<PathBuf>> {
    if verdicts.is_empty() {
        return Ok(Vec::new());
    }
    crate::storage::durably(conn, |tx| {
        let now = Timestamp::now();
        let mut doomed = Vec::new();
        for (rec, kept_by) in verdicts {
            if kept_by.is_none() {
                db::mark_deleted(tx, &rec.id, "keep", now)?;
                doomed.push(rec.path.clone());
            }
            db::decided(tx, &rec.id, kept_by.as_deref(), now)?;
        }
        db::unlink_later(tx, &doomed.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
        Ok(doomed)
    })
}

/// Removes the files whose deletion is on the card (`roost_unlink`) and forgets those gone;
/// returns how many. After a crash between a decision's commit and its unlinks, at the next
/// open, the decision is carried out; in steady state it follows each batch.
fn finish_unlinks(conn: &mut Connection) -> rusqlite::Result<usize> {
    let mut finished = 0;
    loop {
        let owed = db::unlinks_owed(conn, 256)?;
        let gone: Vec<PathBuf> = owed.iter().filter(|p| delete_file(p)).cloned().collect();
        db::unlinked(conn, &gone)?;
        finished += gone.len();
        // A file that cannot be removed now stays owed and is tried again at the next look.
        if owed.len() < 256 || gone.len() < owed.len() {
            return Ok(finished);
        }
    }
}

/// (device, inode) of a file; `None` when it is not there or cannot be read.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

pub use super::judge::protected;

/// Whether a message about `rec` may still have to leave through the outbox: one waits there,
/// or a model output of it is newer than what the connector has queued. `owed` is `None` when
/// the deployment sends no messages.
fn owed_to_outbox(
    conn: &Connection,
    rec: &Recording,
    owed: Option<&crate::connect::OwedMessages>,
) -> rusqlite::Result<bool> {
    let Some(owed) = owed else { return Ok(false) };
    if owed.recordings.contains(&rec.id.to_string()) {
        return Ok(true);
    }
    Ok(db::last_model_output(conn, &rec.id)?.is_some_and(|rowid| rowid > owed.queued_until))
}

/// Kills what detector runs left behind: the curator is the subreaper of its descendants
/// ([`become_subreaper`]), so a process a detector started and left (in its group or outside
/// it, whatever its environment) is the curator's child once the detector has exited, and
/// the curator runs nothing else. Reaped, then looked for again (their own children come to
/// us in turn), a few times.
fn reap_leftovers() {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    // Only in `roost curate`, where every child is a detector's: a process that runs a curator
    // among other work (a test) must not lose its other children.
    if !SUBREAPER.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    for _ in 0..5 {
        let left = crate::procscan::children_of(std::process::id());
        if left.is_empty() {
            return;
        }
        for pid in &left {
            tracing::warn!(pid, "a detector left a process behind; killed");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// Sends `signal` to every child of the curator's process group (the detector running now).
fn signal_children(signal: nix::sys::signal::Signal) {
    if !SUBREAPER.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    // Each detector leads a process group of its own: the group gets it, so what the
    // detector started stops with it.
    for pid in crate::procscan::children_of(std::process::id()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

/// Makes the curator the reaper of orphans among its descendants (`PR_SET_CHILD_SUBREAPER`),
/// so that nothing a detector starts can outlive its run unseen.
fn become_subreaper() {
    match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => SUBREAPER.store(true, std::sync::atomic::Ordering::SeqCst),
        Err(e) => {
            tracing::warn!(error = %e, "cannot become the subreaper of detector processes; a process that left a detector's group and environment may outlive its run")
        }
    }
}

/// Set in `roost curate` once it reaps its descendants: its children are all detectors'.
static SUBREAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Deletes a recording's file; true when it is gone (already gone counts).
fn delete_file(path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a recording; trying again later");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{NewRecording, Storage};

    /// An archive of `n` decided recordings and a curator after its first round.
    fn archived(dir: &Path, n: u64) -> Curator {
        let shape = crate::archive::ArchiveShape {
            recordings: n,
            ..Default::default()
        };
        crate::archive::build(&dir.join("storage"), &shape, Timestamp::now()).unwrap();
        let config = crate::archive::curate_config(dir, "[{every: 10m}]", "100GiB").unwrap();
        let mut curator = Curator::new(config, dir);
        curator.round_now();
        curator
    }

    /// Killed between the FULL commit of its decisions and the unlinks: the rows say deleted
    /// (path NULL) and `roost_unlink` names the files; the next curator removes them, and a
    /// file that is already gone, or never was, is forgotten too.
    #[test]
    fn deletions_decided_before_a_crash_are_carried_out_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let curator = archived(dir.path(), 40);
        drop(curator);
        let db = dir.path().join("storage").join(crate::storage::DB_FILE);
        let conn = Connection::open(&db).unwrap();
        let doomed: Vec<(uuid::Uuid, String)> = conn
            .prepare("SELECT id, path FROM recording ORDER BY rowid LIMIT 5")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // What write_decisions commits, without the unlinks that follow it.
        for (id, path) in &doomed {
            db::mark_deleted(&conn, id, "keep", Timestamp::now()).unwrap();
            conn.execute("INSERT INTO roost_unlink (path) VALUES (?1)", [path])
                .unwrap();
        }
        std::fs::remove_file(&doomed[4].1).unwrap();
        conn.execute(
            "INSERT INTO roost_unlink (path) VALUES ('/nowhere/x.wav')",
            [],
        )
        .unwrap();
        let config = crate::archive::curate_config(dir.path(), "[{every: 10m}]", "100GiB").unwrap();
        let mut curator = Curator::new(config, dir.path());
        curator.round_now();
        assert!(doomed.iter().all(|(_, p)| !Path::new(p).exists()));
        let owed: i64 = conn
            .query_row("SELECT count(*) FROM roost_unlink", [], |r| r.get(0))
            .unwrap();
        assert_eq!(owed, 0);
        assert_eq!(curator.report().storage.recordings, 35);
        assert_eq!(curator.report().error, None);
    }

    /// Another program holds metadata.db's write lock: the round fails with DEP_E321 and the
    /// next look comes within seconds, not at the idle minute; once the lock is gone the
    /// problem is gone and what came meanwhile is decided.
    #[test]
    fn a_locked_database_is_looked_at_again_soon_and_the_problem_goes_with_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mut curator = archived(dir.path(), 30);
        let db = dir.path().join("storage").join(crate::storage::DB_FILE);
        let mut storage =
            Storage::open(&dir.path().join("storage"), &curator.config.storage).unwrap();
        let dep = storage
            .start_deployment("archive", None, Timestamp::now())
            .unwrap();
        let start = Timestamp::now();
        let path = crate::storage::recording_path(&storage.recordings_dir(), start);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, crate::archive::wav_bytes(400)).unwrap();
        let rec = NewRecording {
            path,
            datetime: start,
            duration_s: 0.05,
            samplerate_hz: crate::archive::SAMPLERATE_HZ,
            audio_channels: 1,
        };
        storage.register(&rec, &dep).unwrap();
        let locker = Connection::open(&db).unwrap();
        locker.execute_batch("BEGIN IMMEDIATE").unwrap();
        curator.round_now();
        let error = curator
            .report()
            .error
            .clone()
            .expect("a problem while locked");
        assert_eq!(error.code, "DEP_E321", "{error:?}");
        assert!(curator.next_look() <= DB_RETRY, "{:?}", curator.next_look());
        locker.execute_batch("COMMIT").unwrap();
        curator.round_now();
        assert_eq!(curator.report().error, None);
        assert_eq!(curator.next_look(), IDLE_LOOK);
        let s = &curator.report().storage;
        assert_eq!(
            s.kept_this_run + s.deleted_this_run,
            1,
            "the new recording decided"
        );
    }

    fn tone(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for n in 0..32_000u32 {
            let on = (8_000..12_000).contains(&n);
            let s = if on {
                (std::f64::consts::TAU * 3000.0 * f64::from(n) / 16_000.0).sin() * 8000.0
            } else {
                f64::from(n % 7) * 10.0 - 30.0
            };
            w.write_sample(s as i16).unwrap();
        }
        w.finalize().unwrap();
    }

    /// No metadata.db (a storage not mounted, or the recorder not started yet): an error with
    /// DEP_E301, and no database made beneath the mount point; once it is there, it is used,
    /// and a database replaced at its path is opened again.
    #[test]
    fn the_curator_never_makes_metadata_db_and_follows_a_replaced_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage_path = dir.path().join("storage");
        std::fs::create_dir_all(&storage_path).unwrap();
        let config: CurateConfig = serde_json::from_value(serde_json::json!({
            "deployment": "unit",
            "storage": {"path": storage_path, "minFreeSpace": "0", "onLowSpace": "stop",
                        "keep": [{"always": true}]},
            "recorder": {"timezone": "UTC", "duration": "2s"},
        }))
        .unwrap();
        let state = dir.path().join("state");
        let mut curator = Curator::new(config.clone(), &state);
        curator.round_now();
        let error = curator.report().error.clone().expect("an error");
        assert_eq!(error.code, errors::STORAGE_UNUSABLE.code);
        assert!(!storage_path.join("metadata.db").exists(), "made nothing");
        drop(Storage::open(&storage_path, &config.storage).unwrap());
        curator.round_now();
        assert_eq!(curator.report().error, None);
        let first = curator.db_identity;
        // Another database at the same path (a storage mounted again).
        std::fs::rename(storage_path.join("metadata.db"), dir.path().join("old.db")).unwrap();
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(storage_path.join(format!("metadata.db{suffix}")));
        }
        drop(Storage::open(&storage_path, &config.storage).unwrap());
        curator.round_now();
        assert_eq!(curator.report().error, None);
        assert_ne!(curator.db_identity, first, "opened the new one");
    }

    /// A storage with `n` recordings of 2 s (tone files) made before the curator first opened
    /// it, in deployment "unit"; returns the config for `detectors`/`keep`, the paths and the
    /// storage folder.
    fn storage_with(
        dir: &Path,
        n: i64,
        detectors: serde_json::Value,
        keep: serde_json::Value,
    ) -> (CurateConfig, Vec<PathBuf>, PathBuf) {
        let storage_path = dir.join("storage");
        let config: CurateConfig = serde_json::from_value(serde_json::json!({
            "deployment": "unit",
            "detectors": detectors,
            "storage": {"path": storage_path, "minFreeSpace": "0", "onLowSpace": "stop",
                        "keep": keep},
            "recorder": {"timezone": "UTC", "duration": "2s"},
        }))
        .unwrap();
        let mut storage = Storage::open(&storage_path, &config.storage).unwrap();
        let t0 = Timestamp::now() - SignedDuration::from_mins(5);
        let dep = storage.start_deployment("unit", None, t0).unwrap();
        let paths = (0..n)
            .map(|i| tone_recording(&mut storage, &dep, t0 + SignedDuration::from_secs(2 * i)))
            .collect();
        (config, paths, storage_path)
    }

    /// A 2 s tone file starting at `t`, registered in deployment `dep`; its path.
    fn tone_recording(storage: &mut Storage, dep: &uuid::Uuid, t: Timestamp) -> PathBuf {
        let path = storage
            .recordings_dir()
            .join(crate::storage::recording_file_name(t));
        tone(&path);
        let rec = NewRecording {
            path: path.clone(),
            datetime: t,
            duration_s: 2.0,
            samplerate_hz: 16_000,
            audio_channels: 1,
        };
        storage.register(&rec, dep).unwrap();
        path
    }

    fn query<T: rusqlite::types::FromSql>(storage: &Path, sql: &str) -> Vec<T> {
        let conn = Connection::open(storage.join("metadata.db")).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// On a storage new to the curator, the recordings made before it first opened
    /// metadata.db are analysed too, and a detection rule decides only what was analysed.
    /// A row whose numbers describe no recording (a duration of Inf, 0 Hz) is set aside with
    /// DEP_E616 and kept, and the others are decided: no panic, no stop.
    #[test]
    fn a_new_storage_is_analysed_from_its_first_recording_and_a_bad_row_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (config, paths, storage) = storage_with(
            dir.path(),
            4,
            serde_json::json!([{"name": "birds", "kind": "bandEnergy", "lowHz": 2000, "highHz": 5000}]),
            serde_json::json!([{"detection": {"minScore": 0.99}}]),
        );
        let conn = Connection::open(storage.join("metadata.db")).unwrap();
        // Files roost named, with rows whose numbers describe no recording.
        let bad = |n: u128| paths[0].with_file_name(format!("20260101T00000{n}.000000Z.wav"));
        for (n, duration, rate) in [(1, "1e999", 16_000), (2, "2.0", 0)] {
            conn.execute(
                &format!("INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
                 SELECT ?1, ?2, '2026-01-01T00:00:0{n}+00:00', {duration}, {rate}, 1, deployment_id FROM recording LIMIT 1"),
                rusqlite::params![uuid::Uuid::from_u128(0xbad0 + n), bad(n).to_string_lossy()],
            )
            .unwrap();
            tone(&bad(n));
        }
        drop(conn);
        let state = dir.path().join("state");
        let mut curator = Curator::new(config, &state);
        curator.round_now();
        curator.round_now();
        let analysed: Vec<uuid::Uuid> = query(
            &storage,
            "SELECT r.id FROM recording r JOIN roost_analysis a ON a.recording_id = r.id WHERE a.outcome = 'done'",
        );
        assert_eq!(
            analysed.len(),
            4,
            "every real recording, the first ones too"
        );
        let set_aside: Vec<String> = query(
            &storage,
            "SELECT substr(hex(recording_id), 29) || ':' || error_code FROM roost_analysis WHERE outcome = 'failed' ORDER BY recording_id",
        );
        assert_eq!(set_aside, vec!["BAD1:DEP_E616", "BAD2:DEP_E616"]);
        let kept: Vec<String> = query(
            &storage,
            "SELECT substr(hex(recording_id), 29) || ':' || coalesce(kept_by, 'deleted') FROM roost_keep WHERE hex(recording_id) LIKE '%BAD_' ORDER BY recording_id",
        );
        assert_eq!(kept, vec!["BAD1:undescribable", "BAD2:undescribable"]);
        // The tone is under minScore 0.99: analysed, judged, deleted; the bad rows' files stay.
        let deleted: Vec<String> = query(
            &storage,
            "SELECT deleted_by FROM recording WHERE deleted_by IS NOT NULL",
        );
        assert_eq!(deleted, vec!["keep"; 4]);
        assert!(paths.iter().all(|p| !p.exists()));
        assert!(bad(1).exists() && bad(2).exists());
    }

    /// A detector failing on every recording is a problem of the curator (its code, its
    /// stderr) after three in a row; a failed run is retried in a later round after a back-off,
    /// not at once; a detector that deletes the recording it was given leaves the row saying
    /// so at once.
    #[test]
    fn a_failing_detector_is_a_problem_and_its_retries_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (config, paths, storage) = storage_with(
            dir.path(),
            4,
            serde_json::json!([{"name": "broken", "kind": "command", "retries": 1,
                "command": ["sh", "-c", "echo 'model file /opt/m.tflite missing' >&2; exit 3", "sh"]}]),
            serde_json::json!([{"always": true}]),
        );
        let state = dir.path().join("state");
        let mut curator = Curator::new(config, &state);
        curator.round_now();
        let error = curator.report().error.clone().expect("a problem");
        assert_eq!(error.code, "DEP_E602", "{error:?}");
        assert!(
            error
                .message
                .contains("failed on its last 4 recordings in a row")
                && error.message.contains("model file /opt/m.tflite missing"),
            "{}",
            error.message
        );
        assert_eq!(curator.report().detectors[0].failing, 4);
        // Retried in a later round, not in the next one at once.
        assert!(
            curator.next_look() > Duration::from_secs(20),
            "{:?}",
            curator.next_look()
        );
        curator.round_now();
        let attempts: Vec<i64> = query(&storage, "SELECT attempts FROM roost_analysis");
        assert_eq!(attempts, vec![1; 4], "no retry before its back-off");
        for retry in curator.retries.values_mut() {
            retry.at = std::time::Instant::now();
        }
        curator.round_now();
        let outcomes: Vec<String> =
            query(&storage, "SELECT outcome || attempts FROM roost_analysis");
        assert_eq!(outcomes, vec!["failed2"; 4], "retried once, then given up");
        assert_eq!(paths.len(), 4);
    }

    /// `roost plan` judges as the curator does: recordings the curator kept for good (a
    /// detector gave up on them) or that still wait for a detector are never listed as going;
    /// what the rules would delete now is, and the curator then deletes exactly that.
    #[test]
    fn plan_lists_only_what_the_curator_would_delete() {
        let dir = tempfile::tempdir().unwrap();
        let (mut config, paths, _storage) = storage_with(
            dir.path(),
            3,
            serde_json::json!([{"name": "broken", "kind": "command", "retries": 0,
                "command": ["sh", "-c", "exit 3", "sh"]}]),
            serde_json::json!([{"detection": {"minScore": 0.5}}]),
        );
        let state = dir.path().join("state");
        assert_eq!(
            crate::curate::preview(&config).unwrap().would_delete,
            Vec::<PathBuf>::new(),
            "nothing judged yet: the detector has not seen them"
        );
        let mut curator = Curator::new(config.clone(), &state);
        curator.round_now();
        let after = crate::curate::preview(&config).unwrap();
        assert_eq!(
            (after.kept, after.waiting, after.would_delete.len()),
            (3, 0, 0)
        );
        assert!(paths.iter().all(|p| p.exists()), "analysisFailed: all kept");
        // The detector fixed: new recordings are judged and go; plan says so first.
        config.detectors[0].command = Some(
            ["sh", "-c", "echo '{\"detections\": []}'", "sh"]
                .map(String::from)
                .to_vec(),
        );
        let mut storage = Storage::open(&config.storage_path(), &config.storage).unwrap();
        let dep = storage
            .start_deployment("unit", None, Timestamp::now())
            .unwrap();
        let path = tone_recording(
            &mut storage,
            &dep,
            Timestamp::now() - SignedDuration::from_mins(1),
        );
        drop(storage);
        let waiting = crate::curate::preview(&config).unwrap();
        assert_eq!((waiting.kept, waiting.waiting), (3, 1));
        let mut fixed = Curator::new(config.clone(), &state);
        fixed.round_now();
        assert!(!path.exists(), "no detection: deleted by the rule");
        assert!(paths.iter().all(|p| p.exists()));
    }

    /// Rows another program wrote in forms roost does not (a text id, a blob datetime, text
    /// in a number column, a text `roost_age` or `since_rowid`) never stop the decisions and
    /// analyses of the others, and never disable a detector.
    #[test]
    fn foreign_rows_never_stop_the_curator() {
        let dir = tempfile::tempdir().unwrap();
        let (config, paths, storage) = storage_with(
            dir.path(),
            3,
            serde_json::json!([{"name": "birds", "kind": "bandEnergy", "lowHz": 2000, "highHz": 5000}]),
            serde_json::json!([{"always": true}]),
        );
        let conn = Connection::open(storage.join("metadata.db")).unwrap();
        let dep: uuid::Uuid = conn
            .query_row("SELECT deployment_id FROM recording LIMIT 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        for sql in [
            "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
             VALUES ('text-id', '/elsewhere/a.wav', '2020-01-01 00:00:00.000000', 1.0, 8000, 1, ?1)",
            "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
             VALUES ('blob-datetime', '/elsewhere/b.wav', X'00', 1.0, 8000, 1, ?1)",
            "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id, deleted_by)
             VALUES ('text-duration', NULL, '2099-01-01 00:00:00.000000', 'abc', 8000, 1, ?1, 'keep')",
        ] {
            conn.execute(sql, [&dep]).unwrap();
        }
        conn.execute(
            "INSERT INTO roost_detector (name, since, since_rowid) VALUES ('birds', 'x', 'abc')",
            [],
        )
        .unwrap();
        drop(conn);
        let mut curator = Curator::new(config, &dir.path().join("state"));
        curator.round_now();
        curator.round_now();
        assert_eq!(curator.report().error, None);
        let decided: Vec<String> = query(
            &storage,
            "SELECT r.path FROM roost_keep k JOIN recording r ON r.id = k.recording_id
             WHERE k.kept_by = 'keep[0]:always' ORDER BY r.rowid",
        );
        let expected: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        assert!(expected.iter().all(|p| decided.contains(p)), "{decided:?}");
        let analysed: Vec<i64> = query(
            &storage,
            "SELECT count(*) FROM roost_analysis WHERE detector = 'birds' AND outcome = 'done'",
        );
        assert!(
            analysed[0] >= 3,
            "the detector still analyses: {analysed:?}"
        );
    }

    /// While one detector run lasts long, what was analysed before it is decided (keep
    /// decisions never wait for a slow run), and the report is rewritten.
    #[test]
    fn decisions_go_on_while_a_detector_runs_long() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("runs");
        let script = format!(
            "n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; [ \"$n\" -ge 1 ] && sleep 3; echo '{{\"detections\": []}}'",
            c = count.display()
        );
        let (config, _paths, storage) = storage_with(
            dir.path(),
            2,
            serde_json::json!([{"name": "slow-second", "kind": "command", "timeout": "20s",
                "command": ["sh", "-c", script, "sh"]}]),
            serde_json::json!([{"always": true}]),
        );
        let state = dir.path().join("state");
        let mut curator = Curator::new(config, &state);
        curator.look_every = Duration::from_millis(500);
        curator.round_now();
        let order: Vec<String> = query(
            &storage,
            "SELECT 'decided ' || k.decided_on FROM roost_keep k
             UNION ALL SELECT 'finished ' || a.finished_on FROM roost_analysis a
             ORDER BY 1",
        );
        let decided: Vec<&String> = order.iter().filter(|l| l.starts_with("decided")).collect();
        let finished: Vec<&String> = order.iter().filter(|l| l.starts_with("finished")).collect();
        assert_eq!((decided.len(), finished.len()), (2, 2), "{order:?}");
        // The first recording was decided before the second's 3 s run ended.
        assert!(
            decided[0].trim_start_matches("decided ") < finished[1].trim_start_matches("finished "),
            "{order:?}"
        );
        assert_eq!(curator.report().analysing, None);
    }

    /// A detector that deletes (or moves) the recording it was given leaves its row saying
    /// so at once (path cleared, deleted_by missing), not at the next start.
    #[test]
    fn a_recording_a_detector_deleted_is_marked_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (config, paths, storage) = storage_with(
            dir.path(),
            2,
            serde_json::json!([{"name": "eater", "kind": "command",
                "command": ["sh", "-c", "rm \"$ROOST_RECORDING\"; echo '{\"detections\": []}'", "sh"]}]),
            serde_json::json!([]),
        );
        let mut curator = Curator::new(config, &dir.path().join("state"));
        curator.round_now();
        assert!(paths.iter().all(|p| !p.exists()));
        let rows: Vec<String> = query(
            &storage,
            "SELECT coalesce(path, 'NULL') || ':' || deleted_by FROM recording",
        );
        assert_eq!(rows, vec!["NULL:missing"; 2]);
        assert_eq!(curator.report().storage.recordings, 0);
    }

    /// A detector slower than the round's budget leaves the rest of the round to run: keep
    /// decisions for what it finished, the backlog with its size and oldest start.
    #[test]
    fn a_slow_detector_never_freezes_decisions_or_figures() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _paths, storage) = storage_with(
            dir.path(),
            5,
            serde_json::json!([{"name": "slow", "kind": "command",
                "command": ["sh", "-c", "sleep 0.4; echo '{\"detections\": []}'", "sh"]}]),
            serde_json::json!([{"always": true}]),
        );
        let state = dir.path().join("state");
        let mut curator = Curator::new(config, &state);
        curator.analysis_budget = Duration::from_millis(700);
        curator.round_now();
        let figures = curator.report().detectors[0].clone();
        assert!(
            (1..=3).contains(&figures.analysed) && figures.backlog == 5 - figures.analysed,
            "{figures:#?}"
        );
        assert!(figures.backlog_oldest.is_some());
        assert_eq!(curator.next_look(), Duration::ZERO, "more waits: at once");
        let kept: Vec<String> = query(&storage, "SELECT kept_by FROM roost_keep");
        assert_eq!(
            kept.len() as u64,
            figures.analysed,
            "decided what was analysed"
        );
        for _ in 0..5 {
            curator.round_now();
        }
        assert_eq!(curator.report().detectors[0].backlog, 0);
        assert_eq!(curator.next_look(), IDLE_LOOK);
    }

    /// A recording deleted by hand before analysis is marked (path cleared, `missing`, its
    /// detector entry failed with DEP_E613) and the queue goes on; a file that is not a WAV is
    /// failed with DEP_E610; the others are analysed once, and a second round does nothing.
    #[test]
    fn a_missing_or_broken_recording_never_holds_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let storage_path = dir.path().join("storage");
        let config: CurateConfig = serde_json::from_value(serde_json::json!({
            "deployment": "unit",
            "detectors": [{"name": "birds", "kind": "bandEnergy", "lowHz": 2000, "highHz": 5000}],
            "storage": {"path": storage_path, "minFreeSpace": "0", "onLowSpace": "stop",
                        "keep": [{"detection": {"minScore": 0.1}}]},
            "recorder": {"timezone": "UTC", "duration": "2s"},
        }))
        .unwrap();
        let mut storage = Storage::open(&storage_path, &config.storage).unwrap();
        let t0: Timestamp = "2020-06-01T10:00:00Z".parse().unwrap();
        let dep = storage.start_deployment("unit", None, t0).unwrap();
        let mut paths = Vec::new();
        for i in 0..4 {
            let t = t0 + SignedDuration::from_secs(2 * i);
            let path = storage
                .recordings_dir()
                .join(crate::storage::recording_file_name(t));
            match i {
                1 => {} // deleted by hand before analysis
                2 => {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, b"not a wav").unwrap();
                }
                _ => tone(&path),
            }
            let rec = NewRecording {
                path: path.clone(),
                datetime: t,
                duration_s: 2.0,
                samplerate_hz: 16_000,
                audio_channels: 1,
            };
            storage.register(&rec, &dep).unwrap();
            paths.push(path);
        }
        // The detector was first seen before these recordings.
        storage.connection().execute("INSERT INTO roost_detector (name, since) VALUES ('birds', '2020-01-01 00:00:00.000000')", []).unwrap();
        drop(storage);
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut curator = Curator::new(config, &state);
        curator.round_now();
        curator.round_now();
        let figures = &curator.report().detectors[0];
        assert_eq!(
            (figures.analysed, figures.failed, figures.backlog),
            (2, 2, 0),
            "{figures:#?}"
        );
        let conn = Connection::open(storage_path.join("metadata.db")).unwrap();
        type Row = (Option<String>, Option<String>, String, Option<String>);
        let rows: Vec<Row> = conn
            .prepare("SELECT r.path, r.deleted_by, a.outcome, a.error_code FROM recording r JOIN roost_analysis a ON a.recording_id = r.id ORDER BY r.datetime")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows[0].2, "done");
        assert_eq!(
            (
                rows[1].0.as_deref(),
                rows[1].1.as_deref(),
                rows[1].2.as_str(),
                rows[1].3.as_deref()
            ),
            (None, Some("missing"), "failed", Some("DEP_E613"))
        );
        assert_eq!(
            (rows[2].2.as_str(), rows[2].3.as_deref()),
            ("failed", Some("DEP_E610"))
        );
        assert_eq!(rows[3].2, "done");
        let outputs: i64 = conn
            .query_row("SELECT count(*) FROM model_output", [], |r| r.get(0))
            .unwrap();
        assert_eq!(outputs, 2, "analysed once each, whatever the rounds");
        // The tone files have a detection and are kept; the one the detector could not judge
        // is kept too.
        assert!(paths[0].exists() && paths[2].exists() && paths[3].exists());
        let kept: Vec<Option<String>> = conn
            .prepare("SELECT k.kept_by FROM roost_keep k JOIN recording r ON r.id = k.recording_id ORDER BY r.datetime")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            kept,
            vec![
                Some("keep[0]:detection".into()),
                Some("analysisFailed".into()),
                Some("keep[0]:detection".into())
            ]
        );
    }

    /// A recording registered while the curator looks for work (between its read of what
    /// waits and its read of the newest row) is analysed and decided all the same: the
    /// detector's low-water mark never passes a recording it has not seen.
    #[test]
    fn a_recording_registered_during_the_look_for_work_is_analysed() {
        const LATE: u32 = 60;
        const FIRST: usize = 30;
        let dir = tempfile::tempdir().unwrap();
        let (config, paths, storage) = storage_with(
            dir.path(),
            2,
            serde_json::json!([{"name": "birds", "kind": "bandEnergy", "lowHz": 2000, "highHz": 5000}]),
            serde_json::json!([{"always": true}]),
        );
        let mut curator = Curator::new(config, &dir.path().join("state"));
        curator.round_now();
        let late: Vec<String> = (0..LATE)
            .map(|i| {
                let p = paths[1].with_extension(format!("late{i}.wav"));
                tone(&p);
                p.to_string_lossy().into_owned()
            })
            .collect();
        // The recorder registers a file at every step of the curator's look for work after
        // its first steps (one of them between its read of what waits and its read of the
        // newest row).
        let other = Connection::open(storage.join("metadata.db")).unwrap();
        let mut calls: usize = 0;
        curator.follow_clock().unwrap();
        curator.conn.as_mut().unwrap().progress_handler(
            1,
            Some(move || {
                if let Some(path) = calls.checked_sub(FIRST).and_then(|i| late.get(i)) {
                    other
                        .execute(
                            "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
                             SELECT ?1, ?2, ?3, duration_s, samplerate_hz, audio_channels, deployment_id
                             FROM recording ORDER BY rowid LIMIT 1",
                            rusqlite::params![
                                uuid::Uuid::from_u128(0x1a7e << 64 | calls as u128),
                                path,
                                crate::storage::db_datetime(
                                    Timestamp::now() + SignedDuration::from_millis(calls as i64)
                                )
                            ],
                        )
                        .unwrap();
                }
                calls += 1;
                false
            }),
        )
        .unwrap();
        let (_tx, rx) = mpsc::channel();
        curator.analyse_all(&rx).unwrap();
        curator
            .conn
            .as_mut()
            .unwrap()
            .progress_handler(1, None::<fn() -> bool>)
            .unwrap();
        for _ in 0..3 {
            curator.round_now();
        }
        let waiting: Vec<uuid::Uuid> = query(
            &storage,
            "SELECT r.id FROM recording r WHERE hex(r.id) LIKE '0000000000001A7E%' AND NOT EXISTS (
                 SELECT 1 FROM roost_analysis a WHERE a.recording_id = r.id AND a.outcome = 'done')",
        );
        assert_eq!(
            waiting,
            Vec::<uuid::Uuid>::new(),
            "every late recording is analysed"
        );
        let undecided: Vec<uuid::Uuid> = query(
            &storage,
            "SELECT r.id FROM recording r WHERE hex(r.id) LIKE '0000000000001A7E%' AND NOT EXISTS (
                 SELECT 1 FROM roost_keep k WHERE k.recording_id = r.id)",
        );
        assert_eq!(undecided, Vec::<uuid::Uuid>::new(), "and decided");
    }

    /// Rows another program wrote with ids that are not UUIDs' 16 bytes (text), more than a
    /// batch of them in a row, never
    /// stop the curator stamping (and so sizing, counting and retaining) the recordings after
    /// them.
    #[test]
    fn many_foreign_rows_in_a_row_never_stop_the_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _, storage) = storage_with(
            dir.path(),
            0,
            serde_json::json!([]),
            serde_json::json!([{"always": true}]),
        );
        {
            let conn = Connection::open(storage.join("metadata.db")).unwrap();
            conn.execute(
                "INSERT INTO deployment (id, name, started_on) VALUES (X'00', 'other', '2020')",
                [],
            )
            .unwrap();
            for i in 0..(STAMP_BATCH + 10) {
                conn.execute(
                    "INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
                     VALUES ('foreign-' || ?2, ?1, '2020-01-01 00:00:00.' || ?2, 1.0, 8000, 1, X'00')",
                    rusqlite::params![format!("/elsewhere/{i}.wav"), i as i64],
                )
                .unwrap();
            }
        }
        let mut s = Storage::open(&storage, &config.storage).unwrap();
        let dep = s.start_deployment("unit", None, Timestamp::now()).unwrap();
        let path = tone_recording(&mut s, &dep, Timestamp::now());
        drop(s);
        let mut curator = Curator::new(config, &dir.path().join("state"));
        curator.round_now();
        curator.round_now();
        let stamped: Vec<i64> = query(
            &storage,
            "SELECT g.bytes FROM roost_age g JOIN recording r ON r.id = g.recording_id
             WHERE typeof(r.id) = 'blob'",
        );
        assert_eq!(stamped.len(), 1, "the recording is stamped");
        assert!(stamped[0] > 0, "with its size");
        assert!(path.exists());
        assert!(curator.report().storage.bytes_used > 0);
    }
}
