//! The recorder process (`roost record`): capture (cpal) -> ring buffer -> WAV files (hound) ->
//! rows in metadata.db. It records what the schedule asks for, sample-exact, and says what it
//! produced in `<state-dir>/recorder-report.json`. It must never block the audio callback, never
//! register a file before it is complete on disk, and never hide a sample it lost.
//!
//! Time stamps come from samples: the wall clock is read once when a stream starts (the anchor)
//! and every later instant is `anchor + frames / sampleRate`, so consecutive files of a
//! continuous recording are contiguous and their start times follow from their lengths.

pub mod capture;
pub mod feed;
pub mod report;
pub mod wav;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::errors::{self, ErrorCode};
use crate::schedule::{Schedule, Segment};
use crate::spec::recorder::{OnLowSpace, RecorderSpec, SampleFormat, StorageSpec};
use crate::spec::{Deployment, Location};
use crate::storage::{self, NewRecording, SpaceCheck, Storage, StorageError};

pub use capture::default_period_frames;
pub use report::{
    FILE_GRACE, HEARTBEAT, Health, REPORT_FILE, RecorderReport, RecorderState, ReportError, assess,
    read_report, report_path,
};
use wav::{Guano, WavFile, WavFormat, WavSample};

/// Longest time between SIGTERM/SIGINT and the recorder's exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(8);

/// File name of the recorder's configuration in the state folder.
pub const CONFIG_FILE: &str = "recorder-config.json";

/// What `roost record` is given: everything it needs, with the storage path resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordConfig {
    pub deployment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// With `path` set.
    pub storage: StorageSpec,
    pub recorder: RecorderSpec,
    /// Frames per capture period; default [`default_period_frames`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_frames: Option<u32>,
}

impl RecordConfig {
    /// The recorder configuration of a deployment, `None` when it has no recorder.
    pub fn from_deployment(deployment: &Deployment, state_dir: &Path) -> Option<Self> {
        let recorder = deployment.spec.recorder.clone()?;
        let storage = deployment
            .spec
            .storage
            .clone()
            .unwrap_or_default()
            .resolved(state_dir);
        Some(Self {
            deployment: deployment.name().to_string(),
            location: deployment.spec.location,
            storage,
            recorder,
            period_frames: None,
        })
    }

    /// `<state_dir>/recorder-config.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(CONFIG_FILE)
    }

    /// Writes the configuration atomically to `<state_dir>/recorder-config.json`.
    pub fn write(&self, state_dir: &Path) -> std::io::Result<PathBuf> {
        let path = Self::path(state_dir);
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&path, &bytes)?;
        Ok(path)
    }

    pub fn storage_path(&self, state_dir: &Path) -> PathBuf {
        self.storage.resolved_path(state_dir)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("cannot read the recorder configuration {path}")]
    ConfigUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the recorder configuration {path} is invalid")]
    ConfigInvalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    #[error("cannot write the recorder report {path}")]
    Report {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RecorderError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::ConfigUnreadable { .. }
            | Self::ConfigInvalid { .. }
            | Self::Signals(_)
            | Self::Report { .. } => errors::INTERNAL,
        }
    }
}

/// Runs the recorder until SIGTERM or SIGINT, then finishes the current file (registered) and
/// returns. Device and storage problems are reported and retried, not returned. Call it from the
/// main thread before other threads exist: the signals are blocked here and in every thread
/// started later, and taken by a thread of the recorder's own.
pub fn run(config_path: &Path, state_dir: &Path) -> Result<(), RecorderError> {
    let bytes = std::fs::read(config_path).map_err(|source| RecorderError::ConfigUnreadable {
        path: config_path.to_path_buf(),
        source,
    })?;
    let config: RecordConfig =
        serde_json::from_slice(&bytes).map_err(|source| RecorderError::ConfigInvalid {
            path: config_path.to_path_buf(),
            source,
        })?;
    let stop = stop_on_signals()?;
    run_with(config, state_dir, stop)
}

/// Runs the recorder until `stop` is set.
pub fn run_with(
    config: RecordConfig,
    state_dir: &Path,
    stop: Arc<AtomicBool>,
) -> Result<(), RecorderError> {
    std::fs::create_dir_all(state_dir).map_err(|source| RecorderError::Report {
        path: report_path(state_dir),
        source,
    })?;
    match config.recorder.sample_format {
        SampleFormat::I16 => Recorder::<i16>::new(config, state_dir, stop).run::<i16>(),
        SampleFormat::I24 => Recorder::<i32>::new(config, state_dir, stop).run::<cpal::I24>(),
        SampleFormat::F32 => Recorder::<f32>::new(config, state_dir, stop).run::<f32>(),
    }
}

/// SIGTERM and SIGINT set the returned flag. The signals are blocked in this thread (and so in
/// every thread started after, the audio threads included) and taken by a thread of their own.
fn stop_on_signals() -> Result<Arc<AtomicBool>, RecorderError> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(RecorderError::Signals)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("roost-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                tracing::info!(signal = ?sig, "stopping: finishing the current file");
            }
            flag.store(true, Ordering::SeqCst);
            // Opening a device can block (a FIFO without a writer, a hung driver): do not
            // outlive a stop request by much. A file cut here is completed at the next start.
            std::thread::sleep(STOP_TIMEOUT);
            tracing::error!(
                "the recorder did not stop within {} s; exiting",
                STOP_TIMEOUT.as_secs()
            );
            std::process::exit(1);
        })
        .map_err(|e| RecorderError::Signals(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    Ok(stop)
}

/// Checks that the device exists and supports the requested format (for `roost check`).
pub fn check_device(spec: &RecorderSpec) -> Result<(), (ErrorCode, String)> {
    let device = capture::find_device(spec.device.as_str()).map_err(|e| (e.code, e.message))?;
    capture::check_format(&device, spec).map_err(|e| (e.code, e.message))
}

/// Like [`check_device`], but while a healthy recorder holds the device, answers from its report
/// instead of opening the device a second time.
pub fn check_device_or_report(
    spec: &RecorderSpec,
    state_dir: &Path,
    now: Timestamp,
) -> Result<(), (ErrorCode, String)> {
    if let Some(report) = read_report(state_dir)
        && report.device == spec.device.as_str()
        && report.sample_rate == spec.sample_rate.get()
        && report.channels == spec.channels.get()
        && report.sample_format == spec.sample_format.to_string()
        && matches!(
            report.state,
            RecorderState::Recording | RecorderState::Waiting
        )
        && process_alive(report.pid)
    {
        return match assess(&report, now) {
            Health::Healthy => Ok(()),
            Health::Stopped => check_device(spec),
            Health::Error { code, message } => Err((*code, message)),
        };
    }
    check_device(spec)
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// A file being recorded.
struct OpenFile<T: WavSample> {
    wav: WavFile<T>,
    temp: PathBuf,
    start: Timestamp,
    /// Frame index (on the stream's timeline) where the file ends.
    end_index: u64,
    /// The disk had room for less than the schedule asked for.
    cut_by_disk_full: bool,
    dropped_at_start: u64,
}

struct Recorder<T: WavSample> {
    config: RecordConfig,
    state_dir: PathBuf,
    stop: Arc<AtomicBool>,
    schedule: Schedule,
    format: WavFormat,
    storage: Option<Storage>,
    deployment_id: String,
    report: RecorderReport,
    last_report_write: Instant,
    file: Option<OpenFile<T>>,
    /// Wall-clock nanoseconds of frame 0 of the current stream.
    anchor_ns: Option<i128>,
    /// When the anchor was taken (monotonic) and the frame index then: the sample clock is
    /// compared with the monotonic clock to tell input far off real time (a file, an unpaced
    /// FIFO) from a wall clock that moved (NTP step, drift).
    anchored_at: Instant,
    anchored_frame: u64,
    /// Frame index just past the newest captured frame, and when it was seen.
    captured_end_index: u64,
    captured_end_at: Timestamp,
    /// Warned once that samples arrive much faster than real time (file or FIFO input).
    warned_fast_input: bool,
    /// Frames since the anchor that have been handled.
    index: u64,
    /// Frames before this index are not recorded (between files, outside windows, low space).
    skip_until: u64,
    /// Finished files whose row could not be written yet.
    unregistered: Vec<NewRecording>,
    /// Counters of earlier streams, added to the current stream's.
    captured_before: u64,
    dropped_before: u64,
    overruns_before: u64,
}

impl<T: WavSample> Recorder<T> {
    fn new(config: RecordConfig, state_dir: &Path, stop: Arc<AtomicBool>) -> Self {
        let schedule = Schedule::new(&config.recorder, config.location.as_ref());
        let format = WavFormat {
            sample_rate: config.recorder.sample_rate.get(),
            channels: config.recorder.channels.get(),
            sample_format: config.recorder.sample_format,
        };
        let now = Timestamp::now();
        let report = RecorderReport {
            pid: std::process::id(),
            state: RecorderState::Starting,
            deployment: config.deployment.clone(),
            device: config.recorder.device.to_string(),
            sample_rate: format.sample_rate,
            channels: format.channels,
            sample_format: format.sample_format.to_string(),
            storage: config.storage_path(state_dir),
            started_at: now,
            files_written: 0,
            last_file: None,
            last_file_at: None,
            samples_captured: 0,
            samples_dropped: 0,
            overruns: 0,
            files_discarded: 0,
            expected_file_by: None,
            error: None,
            repair: Default::default(),
            updated_at: now,
        };
        Self {
            config,
            state_dir: state_dir.to_path_buf(),
            stop,
            schedule,
            format,
            storage: None,
            deployment_id: String::new(),
            report,
            last_report_write: Instant::now(),
            file: None,
            anchor_ns: None,
            anchored_at: Instant::now(),
            anchored_frame: 0,
            captured_end_index: 0,
            captured_end_at: now,
            warned_fast_input: false,
            index: 0,
            skip_until: 0,
            unregistered: Vec::new(),
            captured_before: 0,
            dropped_before: 0,
            overruns_before: 0,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn channels(&self) -> usize {
        usize::from(self.format.channels)
    }

    fn run<D>(mut self) -> Result<(), RecorderError>
    where
        D: cpal::SizedSample + Send + 'static,
        T: capture::FromDevice<D>,
    {
        self.write_report()?;
        self.open_storage();
        let period = self
            .config
            .period_frames
            .unwrap_or_else(|| default_period_frames(self.format.sample_rate));
        let mut backoff = Duration::from_millis(250);
        while !self.stopping() {
            if self.storage.is_none() {
                self.sleep(Duration::from_secs(5));
                self.open_storage();
                continue;
            }
            match capture::start::<D, T>(&self.config.recorder, period) {
                Ok(capture) => {
                    backoff = Duration::from_millis(250);
                    tracing::info!(device = %self.config.recorder.device, period_frames = capture.period_frames, "capturing");
                    self.capture_loop(capture);
                }
                Err(e) => {
                    if self.report.state != RecorderState::DeviceUnavailable {
                        tracing::warn!(code = e.code.code, "{}", e.message);
                    }
                    self.report.expected_file_by = self.expected_by_wall_clock();
                    self.set_state(
                        RecorderState::DeviceUnavailable,
                        Some(ReportError::new(e.code, e.message)),
                    );
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.end_file();
        self.report.expected_file_by = None;
        self.set_state(RecorderState::Stopped, None);
        self.write_report()
    }

    /// Sleeps up to `d`, waking early on stop, refreshing the report on the way.
    fn sleep(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopping() && Instant::now() < until {
            std::thread::sleep(
                Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())),
            );
            self.heartbeat();
        }
    }

    fn open_storage(&mut self) {
        let root = self.config.storage_path(&self.state_dir);
        let opened = Storage::open(&root, &self.config.storage).and_then(|mut s| {
            let id = s.start_deployment(
                &self.config.deployment,
                self.config.location.as_ref(),
                Timestamp::now(),
            )?;
            Ok((s, id))
        });
        match opened {
            Ok((storage, id)) => {
                self.storage = Some(storage);
                self.deployment_id = id;
                self.repair();
                if self.report.state == RecorderState::StorageError {
                    self.set_state(RecorderState::Starting, None);
                }
            }
            Err(e) => self.storage_failed(&e),
        }
    }

    fn storage_failed(&mut self, e: &StorageError) {
        let message = error_chain(e);
        tracing::error!(code = e.code().code, "{message}");
        self.set_state(
            RecorderState::StorageError,
            Some(ReportError::new(e.code(), message)),
        );
    }

    /// Start-up repair: partial files of a crash are completed and registered, then files and
    /// rows are made to agree. Everything done is logged and put in the report.
    fn repair(&mut self) {
        let Some(storage) = self.storage.as_mut() else {
            return;
        };
        let mut salvaged = Vec::new();
        let mut problems = Vec::new();
        let partial_dir = storage.partial_dir();
        let entries: Vec<PathBuf> = std::fs::read_dir(&partial_dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        for temp in entries {
            let Some(final_name) = temp
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".part"))
            else {
                continue;
            };
            let final_path = storage.recordings_dir().join(final_name);
            let Some(start) = storage::start_from_file_name(&final_path) else {
                match storage.quarantine(&temp) {
                    Ok(p) => problems.push(p),
                    Err(e) => tracing::error!("{}", error_chain(&e)),
                }
                continue;
            };
            let guano = guano_of(&self.config, start);
            match wav::salvage(&temp, &guano, final_name) {
                Ok(Some((frames, format))) => {
                    let target = storage::recording_path(&storage.recordings_dir(), start);
                    let rec = NewRecording {
                        path: target.clone(),
                        datetime: start,
                        duration_s: frames as f64 / f64::from(format.sample_rate),
                        samplerate_hz: format.sample_rate,
                        audio_channels: format.channels,
                    };
                    match move_into_place(&temp, &target)
                        .map_err(|e| e.to_string())
                        .and_then(|_| {
                            storage
                                .register(&rec, &self.deployment_id)
                                .map_err(|e| error_chain(&e))
                        }) {
                        Ok(_) => {
                            tracing::warn!(path = %target.display(), frames, "repair: completed and registered a recording interrupted by a crash");
                            salvaged.push(target);
                        }
                        Err(e) => {
                            tracing::error!(path = %temp.display(), "repair: cannot register a salvaged recording: {e}")
                        }
                    }
                }
                Ok(None) => {
                    tracing::warn!(path = %temp.display(), "repair: removed a partial file that holds no audio");
                    let _ = std::fs::remove_file(&temp);
                }
                Err(e) => {
                    tracing::error!(path = %temp.display(), error = %e, "repair: cannot salvage a partial file; quarantining it");
                    if let Ok(p) = storage.quarantine(&temp) {
                        problems.push(p);
                    }
                }
            }
        }
        match storage.repair(&self.deployment_id) {
            Ok(mut r) => {
                r.salvaged = salvaged;
                r.quarantined.extend(problems);
                self.report.repair = r;
            }
            Err(e) => self.storage_failed(&e),
        }
    }

    fn capture_loop<D>(&mut self, mut cap: capture::Capture<T>)
    where
        T: capture::FromDevice<D>,
    {
        self.anchor_ns = None;
        self.index = 0;
        self.skip_until = 0;
        let channels = self.channels();
        let period_time = Duration::from_secs_f64(
            f64::from(cap.period_frames) / f64::from(self.format.sample_rate),
        );
        let stall_timeout = (period_time * 8).max(Duration::from_secs(2));
        let poll = (period_time / 2).clamp(Duration::from_millis(2), Duration::from_millis(20));
        let mut consumed: u64 = 0;
        let mut last_data = Instant::now();
        let mut draining = false;
        let lost = loop {
            if self.stopping() {
                // What the device already delivered belongs in the last file: one more pass.
                if draining {
                    break None;
                }
                draining = true;
            }
            if cap.shared.device_lost.load(Ordering::Relaxed) {
                break Some("the audio device disappeared".to_string());
            }
            let mut available = cap.samples.slots();
            available -= available % channels;
            // A gap splits the stream: samples before it, then a jump of the timeline. It may
            // come with no samples after it yet (the writer was far behind), so look first.
            if let Ok(gap) = cap.gaps.peek().copied() {
                if gap.at_sample == consumed {
                    let _ = cap.gaps.pop();
                    self.end_file();
                    self.index += gap.frames;
                    continue;
                }
                available = available.min((gap.at_sample - consumed) as usize);
            }
            if available == 0 {
                if draining {
                    break None;
                }
                if last_data.elapsed() > stall_timeout {
                    break Some(format!(
                        "the audio device delivered no samples for {:.1} s",
                        stall_timeout.as_secs_f64()
                    ));
                }
                self.update_counters(&cap);
                self.heartbeat();
                std::thread::sleep(poll);
                continue;
            }
            last_data = Instant::now();
            if self.anchor_ns.is_none() {
                let behind = (available / channels) as f64 / f64::from(self.format.sample_rate);
                self.anchor_ns = Some(Timestamp::now().as_nanosecond() - (behind * 1e9) as i128);
                self.anchored_at = Instant::now();
                self.anchored_frame = self.index + (available / channels) as u64;
                if self.report.state == RecorderState::DeviceUnavailable {
                    tracing::info!("the audio device delivers samples again");
                    self.set_state(RecorderState::Starting, None);
                }
            }
            // Frames already captured beyond the ones about to be handled: for the drift check.
            let queued = (cap.samples.slots() / channels) as u64;
            self.captured_end_index = self.index + queued;
            self.captured_end_at = Timestamp::now();
            if let Ok(chunk) = cap.samples.read_chunk(available) {
                let (a, b) = chunk.as_slices();
                self.process(a);
                self.process(b);
                chunk.commit_all();
                consumed += available as u64;
            }
            self.update_counters(&cap);
            self.heartbeat();
        };
        self.update_counters(&cap);
        self.captured_before = self.report.samples_captured;
        self.dropped_before = self.report.samples_dropped;
        self.overruns_before = self.report.overruns;
        self.end_file();
        drop(cap);
        if let Some(message) = lost {
            tracing::warn!(
                code = errors::AUDIO_DEVICE_UNAVAILABLE.code,
                "{message}; retrying"
            );
            self.report.expected_file_by = self.expected_by_wall_clock();
            self.set_state(
                RecorderState::DeviceUnavailable,
                Some(ReportError::new(
                    errors::AUDIO_DEVICE_UNAVAILABLE,
                    format!("{message}; retrying until it returns"),
                )),
            );
        }
    }

    fn update_counters(&mut self, cap: &capture::Capture<T>) {
        self.report.samples_captured =
            self.captured_before + cap.shared.frames_captured.load(Ordering::Relaxed);
        self.report.samples_dropped =
            self.dropped_before + cap.shared.frames_dropped.load(Ordering::Relaxed);
        self.report.overruns = self.overruns_before + cap.shared.overruns.load(Ordering::Relaxed);
    }

    /// Wall-clock time of frame `index` of the current stream.
    fn time_of(&self, index: u64) -> Timestamp {
        let anchor = self
            .anchor_ns
            .unwrap_or_else(|| Timestamp::now().as_nanosecond());
        let ns = anchor + i128::from(index) * 1_000_000_000 / i128::from(self.format.sample_rate);
        Timestamp::from_nanosecond(ns).unwrap_or(Timestamp::MAX)
    }

    /// The first frame index at or after instant `t`.
    fn index_of(&self, t: Timestamp) -> u64 {
        if t == Timestamp::MAX {
            return u64::MAX;
        }
        let anchor = self
            .anchor_ns
            .unwrap_or_else(|| Timestamp::now().as_nanosecond());
        let num = (t.as_nanosecond() - anchor) * i128::from(self.format.sample_rate);
        if num <= 0 {
            return 0;
        }
        let idx = (num + 999_999_999) / 1_000_000_000;
        u64::try_from(idx).unwrap_or(u64::MAX)
    }

    /// Handles interleaved samples starting at frame `self.index`.
    fn process(&mut self, samples: &[T]) {
        let channels = self.channels();
        let mut rest = samples;
        while !rest.is_empty() {
            let frames = (rest.len() / channels) as u64;
            if let Some(file) = self.file.as_mut() {
                let take = frames.min(file.end_index - self.index);
                let n = take as usize * channels;
                if let Err(e) = file.wav.write(&rest[..n]) {
                    self.write_failed(e);
                    continue;
                }
                self.index += take;
                rest = &rest[n..];
                if self.index >= self.file.as_ref().map_or(0, |f| f.end_index) {
                    self.finish_file();
                }
                continue;
            }
            if self.index < self.skip_until {
                let take = frames.min(self.skip_until - self.index);
                self.index += take;
                rest = &rest[take as usize * channels..];
                continue;
            }
            self.follow_wall_clock();
            let t = self.time_of(self.index);
            match self.schedule.segment_at(t) {
                Segment::Record { end, .. } => {
                    let end_index = self.index_of(end).max(self.index + 1);
                    self.open_file(end_index);
                }
                Segment::Idle { until } => {
                    self.skip_until = until
                        .map_or(u64::MAX, |u| self.index_of(u))
                        .max(self.index + 1);
                    self.report.expected_file_by = self.expected_after(until);
                    if self.report.state == RecorderState::Recording
                        || self.report.state == RecorderState::Starting
                    {
                        self.set_state(RecorderState::Waiting, self.report.error.clone());
                    }
                }
            }
        }
    }

    /// Between files, moves the anchor when sample time and the wall clock differ by a second or
    /// more: a drifting sound card (tens of ppm add up to seconds a day) or a wall clock that was
    /// stepped (an RTC-less board set by NTP after boot). Input far off real time against the
    /// monotonic clock (a file, an unpaced FIFO) keeps its sample clock, once warned.
    fn follow_wall_clock(&mut self) {
        let Some(anchor) = self.anchor_ns else { return };
        let rate = i128::from(self.format.sample_rate);
        let behind =
            i128::from(self.captured_end_index.saturating_sub(self.index)) * 1_000_000_000 / rate;
        let wall = self.captured_end_at.as_nanosecond() - behind;
        let drift = anchor + i128::from(self.index) * 1_000_000_000 / rate - wall;
        if drift.abs() < 1_000_000_000 {
            return;
        }
        // Against the monotonic clock, a real sound card keeps time within a fraction of a
        // per mille; input that does not is not real time, and keeps its sample clock.
        let monotonic = self.anchored_at.elapsed().as_nanos() as i128;
        let sampled = i128::from(self.captured_end_index.saturating_sub(self.anchored_frame))
            * 1_000_000_000
            / rate;
        if (sampled - monotonic).abs() > monotonic / 1000 + 200_000_000 {
            if !self.warned_fast_input {
                self.warned_fast_input = true;
                tracing::warn!(
                    drift_s = drift as f64 / 1e9,
                    "samples arrive far off real time (file or unpaced input?); keeping the sample clock"
                );
            }
            return;
        }
        tracing::info!(
            drift_s = drift as f64 / 1e9,
            "the wall clock moved against the sound card (drift or a clock step); re-anchoring between files"
        );
        self.anchor_ns = Some(wall - i128::from(self.index) * 1_000_000_000 / rate);
        self.anchored_at = Instant::now();
        self.anchored_frame = self.captured_end_index;
    }

    /// When the first file after an idle period ending at `until` should be complete; `None`
    /// when that is outside every window.
    fn expected_after(&self, until: Option<Timestamp>) -> Option<Timestamp> {
        match self.schedule.segment_at(until?) {
            Segment::Record { end, .. } => Some(end),
            Segment::Idle { .. } => None,
        }
    }

    /// Like [`Self::expected_after`], judged from the wall clock (when no samples arrive).
    fn expected_by_wall_clock(&self) -> Option<Timestamp> {
        match self.schedule.segment_at(Timestamp::now()) {
            Segment::Record { end, .. } => Some(end),
            Segment::Idle { until } => self.expected_after(until),
        }
    }

    fn open_file(&mut self, end_index: u64) {
        let frames_wanted = end_index - self.index;
        let bytes_wanted = frames_wanted * self.format.bytes_per_frame() + wav::RESERVE_EXTRA;
        let expected = self.time_of(end_index);
        let start = self.time_of(self.index);
        let Some(storage) = self.storage.as_mut() else {
            self.skip_until = end_index;
            return;
        };
        match storage.ensure_space(bytes_wanted) {
            Ok(SpaceCheck::Enough { deleted }) => {
                if deleted > 0 {
                    tracing::info!(
                        deleted,
                        "onLowSpace: deleteOldest removed recordings to keep minFreeSpace"
                    );
                }
            }
            Ok(SpaceCheck::Low { free, policy }) => {
                let min = storage.spec().min_free_space;
                let what = match policy {
                    OnLowSpace::DeleteOldest => {
                        "deleteOldest found nothing left to delete; not recording"
                    }
                    OnLowSpace::Stop => "onLowSpace: stop; recording paused until there is space",
                    OnLowSpace::DiscardNew => "onLowSpace: discardNew; this file is discarded",
                };
                let message =
                    format!("free space {free} bytes is below minFreeSpace {min}; {what}");
                if self.report.state != RecorderState::LowSpace {
                    tracing::warn!(code = errors::LOW_DISK_SPACE.code, "{message}");
                }
                self.report.files_discarded += 1;
                self.skip_until = end_index;
                self.report.expected_file_by = None;
                self.set_state(
                    RecorderState::LowSpace,
                    Some(ReportError::new(errors::LOW_DISK_SPACE, message)),
                );
                return;
            }
            Err(e) => {
                self.skip_until = end_index;
                self.storage_failed(&e);
                return;
            }
        }
        // Reserve the file's space now; if the disk cannot hold all of it, record what fits.
        let free = storage.free_bytes().unwrap_or(0);
        let room = free.saturating_sub(storage::DB_RESERVE_BYTES + wav::RESERVE_EXTRA)
            / self.format.bytes_per_frame();
        let frames = frames_wanted.min(room);
        if frames < u64::from(self.format.sample_rate) && frames < frames_wanted {
            self.disk_full(
                end_index,
                format!("the disk is full ({free} bytes free); not recording"),
            );
            return;
        }
        let name = storage::recording_file_name(start);
        let temp = storage.partial_dir().join(format!("{name}.part"));
        match WavFile::<T>::create(&temp, self.format, frames) {
            Ok(wav) => {
                self.file = Some(OpenFile {
                    wav,
                    temp,
                    start,
                    end_index: self.index + frames,
                    cut_by_disk_full: frames < frames_wanted,
                    dropped_at_start: self.report.samples_dropped,
                });
                self.report.expected_file_by = Some(expected);
                let error = match &self.report.error {
                    // Errors about the stream itself stay until a file proves them gone.
                    Some(e) if e.code == errors::SAMPLES_DROPPED.code => Some(e.clone()),
                    _ => None,
                };
                self.set_state(RecorderState::Recording, error);
            }
            Err(e) if storage::is_disk_full(&e) => {
                self.disk_full(
                    end_index,
                    format!("the disk is full ({free} bytes free); not recording"),
                );
            }
            Err(e) => {
                self.skip_until = end_index;
                let err = StorageError::Unusable {
                    path: temp,
                    action: "create a recording",
                    source: e,
                };
                self.storage_failed(&err);
            }
        }
    }

    fn disk_full(&mut self, end_index: u64, message: String) {
        if self.report.state != RecorderState::StorageError {
            tracing::error!(code = errors::DISK_FULL.code, "{message}");
        }
        self.skip_until = end_index;
        self.report.files_discarded += 1;
        self.report.expected_file_by = None;
        self.set_state(
            RecorderState::StorageError,
            Some(ReportError::new(errors::DISK_FULL, message)),
        );
    }

    /// A write failed mid-file: keep what reached the disk, register it, report.
    fn write_failed(&mut self, e: std::io::Error) {
        let Some(file) = self.file.take() else { return };
        let end_index = file.end_index;
        file.wav.abandon();
        let code = if storage::is_disk_full(&e) {
            errors::DISK_FULL
        } else {
            errors::STORAGE_UNUSABLE
        };
        let message = format!(
            "writing {} failed: {e}; the file was ended early",
            file.temp.display()
        );
        tracing::error!(code = code.code, "{message}");
        let guano = self.guano(file.start);
        let name = storage::recording_file_name(file.start);
        match wav::salvage(&file.temp, &guano, &name) {
            Ok(Some((frames, _))) => {
                self.place_and_register(&file.temp, file.start, frames);
            }
            _ => {
                let _ = std::fs::remove_file(&file.temp);
            }
        }
        self.skip_until = end_index;
        self.report.files_discarded += 1;
        self.report.expected_file_by = None;
        self.set_state(
            RecorderState::StorageError,
            Some(ReportError::new(code, message)),
        );
    }

    fn guano(&self, start: Timestamp) -> Guano {
        guano_of(&self.config, start)
    }

    /// Ends the open file where it is (stop, device loss, a gap), keeping it if it holds audio.
    fn end_file(&mut self) {
        if let Some(file) = self.file.as_mut() {
            file.end_index = self.index;
            if file.wav.frames() == 0 {
                let file = self.file.take().expect("checked above");
                file.wav.abandon();
                let _ = std::fs::remove_file(&file.temp);
            } else {
                self.finish_file();
            }
        }
    }

    /// Completes the open file: header, GUANO, fsync, rename into recordings/, then the row.
    fn finish_file(&mut self) {
        let Some(file) = self.file.take() else { return };
        let name = storage::recording_file_name(file.start);
        let guano = self.guano(file.start);
        let dropped = self.report.samples_dropped - file.dropped_at_start;
        match file.wav.finish(&guano, &name) {
            Ok(frames) => {
                if !self.place_and_register(&file.temp, file.start, frames) {
                    // storage_failed has put the error in the report: it must stay there, or
                    // files would keep landing without rows while the status says Running.
                    return;
                }
            }
            Err(e) => {
                let code = if storage::is_disk_full(&e) {
                    errors::DISK_FULL
                } else {
                    errors::STORAGE_UNUSABLE
                };
                let message = format!("cannot complete {}: {e}", file.temp.display());
                tracing::error!(code = code.code, "{message}");
                match wav::salvage(&file.temp, &guano, &name) {
                    Ok(Some((frames, _))) => {
                        self.place_and_register(&file.temp, file.start, frames);
                    }
                    _ => {
                        let _ = std::fs::remove_file(&file.temp);
                    }
                }
                self.set_state(
                    RecorderState::StorageError,
                    Some(ReportError::new(code, message)),
                );
                return;
            }
        }
        let error = if file.cut_by_disk_full {
            Some(ReportError::new(
                errors::DISK_FULL,
                format!("the disk filled: {name} was ended early and registered"),
            ))
        } else if dropped > 0 {
            Some(ReportError::new(
                errors::SAMPLES_DROPPED,
                format!(
                    "{dropped} frames were dropped while {name} was recorded; the file was split at the gap"
                ),
            ))
        } else {
            None
        };
        let state = if error
            .as_ref()
            .is_some_and(|e| e.code == errors::DISK_FULL.code)
        {
            RecorderState::StorageError
        } else {
            self.report.state
        };
        self.set_state(state, error);
    }

    /// Moves a finished file into recordings/ and registers it (with any rows still owed);
    /// false when that failed and the error is in the report.
    fn place_and_register(&mut self, temp: &Path, start: Timestamp, frames: u64) -> bool {
        let Some(storage) = self.storage.as_mut() else {
            return false;
        };
        let target = storage::recording_path(&storage.recordings_dir(), start);
        if let Err(e) = move_into_place(temp, &target) {
            let err = StorageError::Unusable {
                path: target,
                action: "move a finished recording into recordings/",
                source: e,
            };
            self.storage_failed(&err);
            return false;
        }
        let rec = NewRecording {
            path: target.clone(),
            datetime: start,
            duration_s: frames as f64 / f64::from(self.format.sample_rate),
            samplerate_hz: self.format.sample_rate,
            audio_channels: self.format.channels,
        };
        // Rows that could not be written before (a full disk, a damaged database) go first.
        let mut unregistered = std::mem::take(&mut self.unregistered);
        unregistered.push(rec);
        let mut failure = None;
        let mut registered = 0;
        for rec in unregistered {
            if failure.is_some() {
                self.unregistered.push(rec);
                continue;
            }
            match storage.register(&rec, &self.deployment_id) {
                Ok(_) => registered += 1,
                Err(e) => {
                    // The file stays in recordings/: retried with the next file, and registered
                    // by the next start's repair at the latest.
                    self.unregistered.push(rec);
                    failure = Some(e);
                }
            }
        }
        self.report.files_written += registered;
        if let Some(e) = failure {
            self.storage_failed(&e);
            return false;
        }
        self.report.last_file = Some(target);
        self.report.last_file_at = Some(Timestamp::now());
        self.force_report();
        true
    }

    fn set_state(&mut self, state: RecorderState, error: Option<ReportError>) {
        // Files whose rows are still owed keep the recorder in error until they are written.
        let error = error.or_else(|| {
            (!self.unregistered.is_empty()).then(|| {
                ReportError::new(
                    errors::METADATA_DB_ERROR,
                    format!(
                        "{} recordings are in recordings/ without their metadata.db row yet; retried with every file",
                        self.unregistered.len()
                    ),
                )
            })
        });
        if self.report.state != state || self.report.error != error {
            self.report.state = state;
            self.report.error = error;
            self.force_report();
        }
    }

    fn force_report(&mut self) {
        if let Err(e) = self.write_report() {
            tracing::warn!("{}", error_chain(&e));
        }
    }

    fn heartbeat(&mut self) {
        if self.last_report_write.elapsed() >= HEARTBEAT {
            self.force_report();
        }
    }

    fn write_report(&mut self) -> Result<(), RecorderError> {
        self.report.updated_at = Timestamp::now();
        self.last_report_write = Instant::now();
        report::write_report(&self.state_dir, &self.report).map_err(|source| {
            RecorderError::Report {
                path: report_path(&self.state_dir),
                source,
            }
        })
    }
}

/// Renames a complete file into place and makes the rename durable.
fn move_into_place(temp: &Path, target: &Path) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    std::fs::rename(temp, target)?;
    std::fs::File::open(dir)?.sync_all()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// The GUANO metadata of a file of this recorder starting at `start`.
fn guano_of(config: &RecordConfig, start: Timestamp) -> Guano {
    Guano {
        start,
        deployment: config.deployment.clone(),
        device: config.recorder.device.to_string(),
        latitude_longitude: config
            .location
            .map(|l| (l.latitude.value(), l.longitude.value())),
    }
}
