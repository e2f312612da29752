//! The recorder process (`roost record`): capture (cpal) -> ring buffer -> WAV files (hound) ->
//! rows in metadata.db. It records what the schedule asks for, sample-exact, and says what it
//! produced in `<state-dir>/run/recorder-report.json`. It must never block the audio callback, never
//! register a file before it is complete on disk, and never hide a sample it lost.
//!
//! Time stamps come from samples: the wall clock is read once when a stream starts (the anchor)
//! and every later instant is `anchor + frames / sampleRate`, so consecutive files of a
//! continuous recording are contiguous and their start times follow from their lengths.

/// The audio device side: cpal capture into a lock-free ring buffer.
pub mod capture;
/// The kernel's clock synchronisation (adjtimex).
pub mod clock;
/// The audio inputs and what each captures (`roost devices`, `roost init`).
pub mod devices;
/// A paced test source for ALSA's file plugin (`roost feed`).
pub mod feed;
/// The report's error and warnings, pure.
pub mod health;
/// The device as `roost check` sees it.
pub mod probe;
/// The only metadata.db connection, on a thread of its own.
pub mod registrar;
/// The recorder's report (`recorder-report.json`) and its assessment.
pub mod report;
/// Where recordings land: `.partial/`, recordings/, files kept for later, salvage.
pub mod sink;
/// The low-space verdict, pure.
pub mod space;
mod supply;

/// What `roost record` is given (`recorder-config.json`) and why it cannot run.
pub mod config;
mod files;
/// The recorder's output in status.json, typed.
pub mod output;
mod pacing;
mod reporting;
/// The recorder's rules about time, pure: sample index <-> wall clock, pace, re-anchoring.
pub mod timeline;
/// One WAV file being written, and salvage of a cut one.
pub mod wav;
mod windows;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;

use crate::component::{ConfigFile, ReportFile};
use crate::errors;
use crate::schedule::{Schedule, Segment};
use crate::spec::recorder::SampleFormat;
use crate::storage::{self, Folders, NewRecording, StorageError};
use registrar::{DeploymentInfo, Registrar};
use reporting::initial_report;
use sink::{Finished, Placed, Salvage, Sink};
use timeline::{Now, Pace, Pacing, Recovery, Timeline};

pub use capture::default_period_frames;
pub use config::{CONFIG_FILE, RecordConfig, RecorderError};
pub use output::RecorderOutput;
pub use probe::{check_device, check_device_or_report};
pub use report::{
    FILE_GRACE, FIRST_REPORT_WITHIN, HEARTBEAT, Health, REPORT_FILE, RecorderReport, RecorderState,
    ReportError, assess,
};
use wav::{Guano, WavFile, WavFormat, WavSample};

/// How long a new stream's first samples wait before the anchor is taken.
const ANCHOR_SETTLE: Duration = Duration::from_millis(300);
/// Longest wait for samples: the stop flag, the registrar's news and the report are looked at
/// at least this often while the device is silent.
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// How often the storage is looked at while no file is being written.
const IDLE_STORAGE_CHECK: Duration = Duration::from_secs(60);

/// Input far faster than real time for this long closes the stream until a later look.
const FAST_INPUT_CLOSE: Duration = Duration::from_millis(500);
/// First pause before looking again at a source that was far faster than real time.
const FAST_INPUT_FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Longest pause before looking again at a source that was far faster than real time.
const FAST_INPUT_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A stream that delivered this long resets the reopening back-off.
const STABLE_STREAM: Duration = Duration::from_secs(10);

/// Longest time between SIGTERM/SIGINT and the recorder's exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(8);

/// Runs the recorder until SIGTERM or SIGINT, then finishes the current file (registered) and
/// returns. Device and storage problems are reported and retried, not returned. Call it from the
/// main thread before other threads exist: the signals are blocked here and in every thread
/// started later, and taken by a thread of the recorder's own.
pub fn run(config_path: &Path, state_dir: &Path) -> Result<(), RecorderError> {
    let config = RecordConfig::load(config_path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // The writer runs on this thread: a stop wakes it at once, wherever it waits. Opening a
    // device can block (a FIFO without a writer, a hung driver): the process does not outlive
    // a stop by more than STOP_TIMEOUT; a file cut then is completed at the next start.
    let writer = std::thread::current();
    let on_stop = move || {
        flag.store(true, Ordering::SeqCst);
        writer.unpark();
    };
    crate::component::stop_on_signals(on_stop, Some(STOP_TIMEOUT))
        .map_err(RecorderError::Signals)?;
    run_with(config, state_dir, stop)
}

/// Runs the recorder until `stop` is set.
pub fn run_with(
    config: RecordConfig,
    state_dir: &Path,
    stop: Arc<AtomicBool>,
) -> Result<(), RecorderError> {
    std::fs::create_dir_all(state_dir).map_err(|source| RecorderError::Report {
        path: RecorderReport::path(state_dir),
        source,
    })?;
    match config.recorder.sample_format {
        SampleFormat::I16 => Recorder::<i16>::new(config, state_dir, stop).run::<i16>(),
        SampleFormat::I24 => Recorder::<i32>::new(config, state_dir, stop).run::<cpal::I24>(),
        SampleFormat::F32 => Recorder::<f32>::new(config, state_dir, stop).run::<f32>(),
    }
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
    /// Seconds by which the start lies before the end of an earlier file (clock stepped back).
    overlap_s: Option<f64>,
    clock_synchronized: Option<bool>,
    /// What the board's firmware said while it was written (for its GUANO).
    power_seen: crate::power::Conditions,
    /// The firmware's since-boot conditions at the last look (a dip between looks shows as a
    /// new one).
    boot_power_at_open: Option<crate::power::Conditions>,
}

/// How long a storage that cannot be written is left alone before the next try (frames of
/// audio skipped meanwhile are counted as lost to the storage, never silently).
const STORAGE_RETRY: Duration = Duration::from_secs(1);
/// Rows handed to the registrar count in the report's `rowsOwed` once they have waited this
/// long (DEP_E321 follows later, see `effective_error`).
const OWED_SHOWN_AFTER: Duration = Duration::from_secs(1);

/// Where the capture loop stands in one stream.
struct StreamPosition {
    /// Samples taken from the ring since the stream opened.
    consumed: u64,
    /// Monotonic times (see [`Now`]) of the last samples and of the opening.
    last_data: Duration,
    opened: Duration,
    /// Stop was asked (when): the ring is read until it is empty, so what the device already
    /// delivered is in the last file, bounded by [`MAX_DRAIN`].
    draining: Option<Duration>,
    /// No samples for this long: the device is lost.
    stall_timeout: Duration,
}

impl StreamPosition {
    fn new(period_frames: u32, sample_rate: u32, now: Now) -> Self {
        let period_time =
            Duration::from_secs_f64(f64::from(period_frames) / f64::from(sample_rate));
        Self {
            consumed: 0,
            last_data: now.mono,
            opened: now.mono,
            draining: None,
            stall_timeout: (period_time * 8).max(Duration::from_secs(2)),
        }
    }
}

/// The longest the capture loop goes on reading the ring once stop was asked.
const MAX_DRAIN: Duration = Duration::from_secs(2);

/// What the capture loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StreamStep {
    /// Close the stream: stopped and drained, or input far off real time for long enough.
    End,
    /// The device is gone or silent; why.
    Lost(String),
    /// A gap in the stream at the read position: the file ends, the timeline jumps.
    Gap { frames: u64 },
    /// Nothing to read yet.
    Idle,
    /// Samples wait in the ring until the stream's anchor can be taken.
    Settle,
    /// Handle this many samples (whole frames).
    Read { samples: usize },
}

struct Recorder<T: WavSample> {
    config: RecordConfig,
    state_dir: PathBuf,
    stop: Arc<AtomicBool>,
    schedule: Schedule,
    format: WavFormat,
    sink: Sink,
    registrar: Option<Registrar>,
    registrar_version: u64,
    report: RecorderReport,
    /// The writer's own error; the report shows it, or else rows owed by the registrar.
    own_error: Option<ReportError>,
    last_report_write: Duration,
    /// `expected_file_by` as last written to the report.
    written_due: Option<Timestamp>,
    file: Option<OpenFile<T>>,
    /// End of the newest file written (or registered before), for overlap checks.
    last_file_end: Option<Timestamp>,
    /// The clocks as read for the chunk being handled: every rule below judges at this instant.
    now: Now,
    /// Where the current stream's frames sit on the wall clock.
    timeline: Timeline,
    /// Whether samples are recorded or discarded for not being real time.
    pacing: Pacing,
    /// The board's power and heat, and the energy policy.
    supply: supply::Supply,
    /// The first deleteOldest request of the current low-space episode.
    low_space_since_request: Option<u64>,
    /// Frame index at which the storage is looked at next while idle.
    next_storage_check: u64,
    /// The frames being skipped are lost to a fault (storage, space), not outside the windows.
    discarding: bool,
    /// Frames since the anchor that have been handled.
    index: u64,
    /// Frames before this index are not recorded (between files, outside windows, low space).
    skip_until: u64,
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
        let now = Now::read();
        let storage_root = config.storage_path(state_dir);
        let mut report = initial_report(&config, &format, &storage_root, now.wall);
        let supply = supply::Supply::new(config.power.clone());
        report.power = supply.output();
        Self {
            sink: Sink::new(Folders::new(&storage_root, &config.storage)),
            config,
            state_dir: state_dir.to_path_buf(),
            stop,
            schedule,
            format,
            registrar: None,
            registrar_version: 0,
            report,
            own_error: None,
            last_report_write: now.mono,
            written_due: None,
            file: None,
            last_file_end: None,
            now,
            timeline: Timeline::new(format.sample_rate, now),
            pacing: Pacing::Recording,
            supply,
            low_space_since_request: None,
            next_storage_check: 0,
            discarding: false,
            index: 0,
            skip_until: 0,
            captured_before: 0,
            dropped_before: 0,
            overruns_before: 0,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Samples arrive far faster than real time and are discarded (DEP_E315).
    fn fast_input(&self) -> bool {
        matches!(self.pacing, Pacing::Discarding { .. })
    }

    /// Reads the clocks once for what follows (a chunk, a wait).
    fn tick(&mut self) -> Now {
        self.now = Now::read();
        self.now
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
        // Partial files of a crash are completed here, before the registrar's start-up repair.
        self.prepare_storage();
        self.registrar = Some(Registrar::start(
            self.sink.folders().clone(),
            DeploymentInfo {
                name: self.config.deployment.clone(),
                location: self.config.location,
            },
        ));
        let period = self
            .config
            .period_frames
            .unwrap_or_else(|| default_period_frames(self.format.sample_rate));
        let mut backoff = Duration::from_millis(250);
        while !self.stopping() {
            if self.supply.stops_recording() {
                self.rest_for_power();
                continue;
            }
            match capture::start::<D, T>(&self.config.recorder, period) {
                Ok(capture) => {
                    tracing::info!(device = %self.config.recorder.device, period_frames = capture.period_frames, "capturing");
                    let opened = self.tick().mono;
                    self.capture_loop(capture);
                    if self.supply.stops_recording() {
                        continue;
                    }
                    // A stream lost soon after it opened is retried with back-off too: a device
                    // that opens and fails at once must not be reopened in a tight loop.
                    let cap = if self.fast_input() {
                        FAST_INPUT_MAX_BACKOFF
                    } else {
                        Duration::from_secs(10)
                    };
                    if self.tick().since(opened) >= STABLE_STREAM && !self.fast_input() {
                        backoff = Duration::from_millis(250);
                    } else if !self.stopping() {
                        if self.fast_input() {
                            backoff = backoff.max(FAST_INPUT_FIRST_BACKOFF);
                        }
                        self.sleep(backoff);
                        backoff = (backoff * 2).min(cap);
                    }
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
        // Files kept in .partial/ because they could not be placed are tried once more now,
        // not a second later: a stop right after the way cleared leaves none behind.
        self.tick();
        self.retry_stranded(true);
        if let Some(registrar) = self.registrar.take() {
            let view = registrar.finish(STOP_TIMEOUT / 3);
            self.apply_view(view);
        }
        self.report.expected_file_by = None;
        self.set_state(RecorderState::Stopped, None);
        self.write_report()
    }

    /// Sleeps up to `d`, waking early on stop, refreshing the report on the way.
    fn sleep(&mut self, d: Duration) {
        let until = self.tick().mono + d;
        while !self.stopping() && self.now.mono < until {
            // The signal thread unparks this thread on a stop.
            std::thread::park_timeout(IDLE_LOOK.min(until.saturating_sub(self.now.mono)));
            self.tick();
            self.heartbeat();
        }
    }

    fn capture_loop<D>(&mut self, mut cap: capture::Capture<T>)
    where
        T: capture::FromDevice<D>,
    {
        self.timeline.reset();
        self.index = 0;
        self.next_storage_check = 0;
        if self.fast_input() {
            // This stream has not shown it yet.
            self.pacing = Pacing::Discarding {
                seen_on_stream_at: None,
            };
        }
        self.skip_until = 0;
        let now = self.tick();
        let mut stream = StreamPosition::new(cap.period_frames, self.format.sample_rate, now);
        let lost = loop {
            let now = self.tick();
            if self.stopping() {
                // What the device already delivered belongs in the last file: every sample in
                // the ring, not one more period (a backlog behind a slow start held several, and
                // the report counted them captured but never written). Bounded: a source far
                // faster than real time never empties it.
                let since = *stream.draining.get_or_insert(now.mono);
                if now.since(since) > MAX_DRAIN {
                    break None;
                }
            }
            match self.next_step(&cap, &stream) {
                StreamStep::End => break None,
                StreamStep::Lost(message) => break Some(message),
                StreamStep::Gap { frames } => {
                    let _ = cap.gaps.pop();
                    // The drops behind this gap belong to the file it ends.
                    self.update_counters(&cap);
                    self.end_file();
                    self.index += frames;
                }
                StreamStep::Idle => {
                    self.update_counters(&cap);
                    self.heartbeat();
                    // Woken by the callback when a batch is in (or a gap, a lost device); the
                    // bound keeps the stall check and the stop flag looked at.
                    let to_stall = stream
                        .stall_timeout
                        .saturating_sub(now.since(stream.last_data));
                    cap.wait(to_stall.min(IDLE_LOOK));
                }
                StreamStep::Settle => {
                    stream.last_data = now.mono;
                    std::thread::sleep(ANCHOR_SETTLE.saturating_sub(now.since(stream.opened)));
                }
                StreamStep::Read { samples } => {
                    stream.last_data = now.mono;
                    stream.consumed += self.read_samples(&mut cap, samples);
                }
            }
        };
        self.end_stream(cap, lost);
    }

    /// Classifies what the capture loop does next; changes nothing.
    fn next_step(&self, cap: &capture::Capture<T>, stream: &StreamPosition) -> StreamStep {
        if cap.shared.device_lost.load(Ordering::Relaxed) {
            return StreamStep::Lost("the audio device disappeared".to_string());
        }
        // The energy policy stops recording: once the current file is finished (kept), the
        // stream closes.
        if self.supply.stops_recording() && self.file.is_none() {
            return StreamStep::End;
        }
        // Input far faster than real time keeps a core busy for nothing: close the stream
        // and look again later (run() backs off), keeping DEP_E315 meanwhile.
        if let Pacing::Discarding {
            seen_on_stream_at: Some(since),
        } = self.pacing
            && self.now.since(since) >= FAST_INPUT_CLOSE
        {
            return StreamStep::End;
        }
        let channels = self.channels();
        // A period at a time: counters and the pace check stay current through a backlog.
        let mut available = cap
            .samples
            .slots()
            .min(cap.period_frames as usize * channels);
        available -= available % channels;
        // A gap splits the stream: samples before it, then a jump of the timeline. It may
        // come with no samples after it yet (the writer was far behind), so look first.
        if let Ok(gap) = cap.gaps.peek() {
            if gap.at_sample == stream.consumed {
                return StreamStep::Gap { frames: gap.frames };
            }
            available = available.min((gap.at_sample - stream.consumed) as usize);
        }
        let stalled = self.now.since(stream.last_data) > stream.stall_timeout;
        // What a source had buffered before the stream opened (a FIFO's backlog) arrives in its
        // first moments: let it into the ring, then anchor with all of it, so that its samples
        // get their true, earlier times.
        let settling =
            !self.timeline.is_anchored() && self.now.since(stream.opened) < ANCHOR_SETTLE;
        match (available, stream.draining.is_some(), stalled, settling) {
            (0, true, _, _) => StreamStep::End,
            (0, false, true, _) => StreamStep::Lost(format!(
                "the audio device delivered no samples for {:.1} s",
                stream.stall_timeout.as_secs_f64()
            )),
            (0, false, false, _) => StreamStep::Idle,
            (_, _, _, true) => StreamStep::Settle,
            (samples, _, _, false) => StreamStep::Read { samples },
        }
    }

    /// Handles `available` samples from the ring (anchoring the stream first if it is not yet);
    /// returns how many were taken.
    fn read_samples(&mut self, cap: &mut capture::Capture<T>, available: usize) -> u64 {
        let channels = self.channels();
        if !self.timeline.is_anchored() {
            self.anchor_stream(cap);
        }
        // Frames already captured beyond the ones about to be handled: for the drift check.
        let queued = (cap.samples.slots() / channels) as u64;
        self.timeline
            .note_captured(self.index + queued, self.now.wall);
        let mut taken = 0;
        if let Ok(chunk) = cap.samples.read_chunk(available) {
            let (a, b) = chunk.as_slices();
            self.process(a);
            self.process(b);
            chunk.commit_all();
            taken = available as u64;
        }
        self.update_counters(cap);
        self.heartbeat();
        taken
    }

    /// Frame 0 of the stream gets the wall-clock time it was captured at, judged from what is
    /// queued behind it.
    fn anchor_stream(&mut self, cap: &capture::Capture<T>) {
        let queued = (cap.samples.slots() / self.channels()) as u64;
        self.update_counters(cap);
        self.timeline
            .anchor(self.now, queued, self.report.samples_captured);
        if self.report.state == RecorderState::DeviceUnavailable {
            tracing::info!("the audio device delivers samples again");
            self.set_state(RecorderState::Starting, None);
        }
    }

    /// Keeps the stream's counters for the next one, ends the file and closes the stream;
    /// a lost device is reported.
    fn end_stream(&mut self, cap: capture::Capture<T>, lost: Option<String>) {
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

    /// Handles interleaved samples starting at frame `self.index`.
    fn process(&mut self, samples: &[T]) {
        let mut rest = samples;
        while !rest.is_empty() {
            let fast = self.pace() == Pace::Fast;
            let skipping = self.index < self.skip_until;
            match (self.file.is_some(), self.fast_input(), skipping, fast) {
                (true, _, _, true) | (false, false, false, true) => {
                    self.enter_fast_input("samples arrive far faster than real time");
                }
                (true, _, _, false) => rest = self.write_to_file(rest),
                (false, true, _, _) => {
                    // Discarded: these samples have no true time.
                    self.leave_fast_input_when_real_time();
                    let frames = (rest.len() / self.channels()) as u64;
                    self.report.samples_discarded += frames;
                    self.index += frames;
                    rest = &[];
                }
                (false, false, true, _) => rest = self.skip(rest),
                (false, false, false, false) => self.decide(),
            }
        }
    }

    /// Writes what belongs in the open file; returns the samples left over.
    fn write_to_file<'a>(&mut self, rest: &'a [T]) -> &'a [T] {
        let channels = self.channels();
        let Some(file) = self.file.as_mut() else {
            return rest;
        };
        let frames = (rest.len() / channels) as u64;
        let take = frames.min(file.end_index - self.index);
        let n = take as usize * channels;
        if let Err(e) = file.wav.write(&rest[..n]) {
            self.write_failed(e);
            return rest;
        }
        self.index += take;
        if self.index >= self.file.as_ref().map_or(0, |f| f.end_index) {
            self.finish_file();
        }
        &rest[n..]
    }

    /// Passes over samples no file wants (between files, outside the windows, after a fault);
    /// returns the samples left over.
    fn skip<'a>(&mut self, rest: &'a [T]) -> &'a [T] {
        // While no file is open, a wall clock that stepped (into a window, say) changes
        // what to do now: decide again instead of waiting out a stale idle period.
        if self.follow_wall_clock() {
            self.skip_until = self.index;
            return rest;
        }
        self.check_storage_while_idle();
        let frames = (rest.len() / self.channels()) as u64;
        let take = frames.min(self.skip_until - self.index);
        if self.discarding {
            self.report.samples_discarded += take;
        }
        self.index += take;
        &rest[take as usize * self.channels()..]
    }
}
