//! Shared rig of the recorder's end-to-end tests: real alsa-lib and cpal reading a FIFO through
//! ALSA's `file` plugin (selected by ALSA_CONFIG_PATH, passed to the child only), the real
//! `roost record` binary, real SQLite and real files.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use roost::recorder::RecorderReport;
use roost::recorder::feed::Feeder;

pub const BIN: &str = env!("CARGO_BIN_EXE_roost");

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub fifo: PathBuf,
    pub asound: PathBuf,
    pub state: PathBuf,
    pub storage: PathBuf,
    pub config: PathBuf,
    pub rate: u32,
    pub period: u32,
}

impl Rig {
    /// A rig at `rate` Hz mono; `recorder` and `storage` are merged into the configuration.
    pub fn new(rate: u32, recorder: serde_json::Value, storage: serde_json::Value) -> Self {
        Self::with_alsa_format(rate, "S16_LE", recorder, storage)
    }

    /// A rig whose FIFO carries raw samples in ALSA format `alsa_format`.
    pub fn with_alsa_format(
        rate: u32,
        alsa_format: &str,
        recorder: serde_json::Value,
        storage: serde_json::Value,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("mic.fifo");
        let asound = dir.path().join("asound.conf");
        let state = dir.path().join("state");
        let storage_path = dir.path().join("storage");
        std::fs::create_dir_all(&storage_path).unwrap();
        roost::recorder::feed::write_test_asound_conf_format(
            &asound,
            Some(&fifo),
            rate,
            1,
            alsa_format,
        )
        .unwrap();
        let period = roost::recorder::default_period_frames(rate);
        let rig = Self {
            config: dir.path().join("recorder-config.json"),
            dir,
            fifo,
            asound,
            state,
            storage: storage_path,
            rate,
            period,
        };
        rig.write_config(recorder, storage);
        rig
    }

    pub fn write_config(&self, recorder: serde_json::Value, storage: serde_json::Value) {
        let mut rec = serde_json::json!({"device": "default", "sampleRate": self.rate, "channels": 1, "sampleFormat": "i16", "duration": "1s"});
        merge(&mut rec, recorder);
        let mut sto =
            serde_json::json!({"path": self.storage, "minFreeSpace": "0", "onLowSpace": "stop"});
        merge(&mut sto, storage);
        let config = serde_json::json!({
            "deployment": "meadow-test",
            "location": {"latitude": 51.5, "longitude": -0.12},
            "storage": sto,
            "recorder": rec,
            "periodFrames": self.period,
        });
        std::fs::write(&self.config, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    pub fn spawn_recorder(&self) -> Child {
        self.spawn_recorder_with(&[])
    }

    /// Like `spawn_recorder`, with extra environment (libfaketime, say).
    pub fn spawn_recorder_with(&self, envs: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("recorder.log"))
            .unwrap();
        Command::new(BIN)
            .args(["record", "--config"])
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .env("ALSA_CONFIG_PATH", &self.asound)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("recorder.log")).unwrap_or_default()
    }

    pub fn report(&self) -> Option<RecorderReport> {
        <roost::recorder::RecorderReport as roost::component::ReportFile>::read(&self.state)
    }

    /// Waits until the report satisfies `cond`, failing with the log after `timeout`.
    pub fn wait_report(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&RecorderReport) -> bool,
    ) -> RecorderReport {
        let start = Instant::now();
        loop {
            if let Some(r) = self.report()
                && cond(&r)
            {
                return r;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out waiting for {what}; report: {:#?}\nlog:\n{}",
                    self.report(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.storage.join("recordings"), &mut out);
        out.sort();
        out
    }

    /// Every file has its row and every row its file; nothing half-written is left; SQLite is sound.
    pub fn assert_consistent(&self) {
        let conn = rusqlite::Connection::open(self.storage.join("metadata.db")).unwrap();
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let mut stmt = conn
            .prepare("SELECT path, duration_s, samplerate_hz FROM recording WHERE path IS NOT NULL")
            .unwrap();
        let rows: Vec<(String, f64, u32)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let row_paths: BTreeSet<PathBuf> = rows.iter().map(|r| PathBuf::from(&r.0)).collect();
        let files: BTreeSet<PathBuf> = self.recordings().into_iter().collect();
        assert_eq!(row_paths, files, "rows and files differ");
        for (path, duration, rate) in rows {
            let reader = hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let frames = reader.duration();
            assert_eq!(reader.spec().sample_rate, rate);
            assert!(
                (f64::from(frames) / f64::from(rate) - duration).abs() < 1e-6,
                "{path}"
            );
        }
        let partial: Vec<_> = std::fs::read_dir(self.storage.join(".partial"))
            .map(|d| d.filter_map(|e| e.ok()).collect())
            .unwrap_or_default();
        assert!(partial.is_empty(), "partial files left: {partial:?}");
    }

    pub fn row_count(&self) -> i64 {
        let conn = rusqlite::Connection::open(self.storage.join("metadata.db")).unwrap();
        conn.query_row(
            "SELECT count(*) FROM recording WHERE path IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }
}

fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Stops a child with SIGTERM and returns its exit status.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    signal(child, nix::sys::signal::Signal::SIGTERM);
    wait_exit(child, Duration::from_secs(20))
}

pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("the recorder did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child if the test panics.
pub struct KillOnDrop(pub Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A feeder thread writing the test signal at real-time pace until stopped; the FIFO stays
/// open (a stalled device) until `close` is called or the handle is dropped.
pub struct PacedFeeder {
    pub writing: Arc<AtomicBool>,
    close: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl PacedFeeder {
    pub fn start(fifo: &Path, rate: u32, period: u32) -> Self {
        let writing = Arc::new(AtomicBool::new(true));
        let close = Arc::new(AtomicBool::new(false));
        let mut feeder = Feeder::open(fifo, rate, 1, period).unwrap();
        let (w, c) = (writing.clone(), close.clone());
        let thread = std::thread::spawn(move || {
            let _ = feeder.write_paced(None, || w.load(Ordering::SeqCst));
            while !c.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            feeder.frames
        });
        Self {
            writing,
            close,
            thread: Some(thread),
        }
    }

    /// Stops writing but keeps the FIFO open: to the recorder, a device that went silent.
    pub fn stall(&self) {
        self.writing.store(false, Ordering::SeqCst);
    }

    pub fn close(mut self) -> u64 {
        self.finish()
    }

    fn finish(&mut self) -> u64 {
        self.writing.store(false, Ordering::SeqCst);
        self.close.store(true, Ordering::SeqCst);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for PacedFeeder {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The reader may be gone and the feeder blocked in a write to a full FIFO: joining
            // would turn a failed test into a hung one.
            self.writing.store(false, Ordering::SeqCst);
            self.close.store(true, Ordering::SeqCst);
            return;
        }
        self.finish();
    }
}

/// Mounts a small tmpfs (needs root, as CI has) and unmounts it on drop.
pub struct Tmpfs(pub PathBuf);
impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Option<Self> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Self(at.to_path_buf()))
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Paths of the recording rows in the order they were written; none while there is no
/// database or no table yet (opened read-only: a test never creates metadata.db behind the
/// recorder's back, as a plain open would).
pub fn rows_in_order(storage: &Path) -> Vec<PathBuf> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = rusqlite::Connection::open_with_flags(storage.join("metadata.db"), flags) else {
        return Vec::new();
    };
    let Ok(mut stmt) =
        conn.prepare("SELECT path FROM recording WHERE path IS NOT NULL ORDER BY rowid")
    else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get::<_, String>(0))
        .map(|rows| rows.flatten().map(PathBuf::from).collect())
        .unwrap_or_default()
}

/// Frames in a WAV file.
pub fn frames(path: &Path) -> u64 {
    u64::from(hound::WavReader::open(path).unwrap().duration())
}

/// True when running as root; otherwise prints why the test is skipped.
pub fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipping {test}: needs root (mounts, loop devices)");
    }
    root
}

/// True when `program` is installed; otherwise prints why the test is skipped.
pub fn have_or_skip(program: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipping {test}: {program} is not installed (bash .ci/setup installs it)");
    }
    found
}
