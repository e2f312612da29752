//! The audio device as `roost check` sees it, with the same judgement `roost status` makes.
//! While a live recorder captures the device in the requested format, its report answers through
//! [`assess`] (whatever its state), so the device is not opened twice and `check` says DEP_E311
//! exactly when `status` does. Otherwise the device is opened, a capture stream started and real
//! samples awaited: a device that opens but delivers nothing is not healthy.
//!
//! A probe must never block its caller past [`PROBE_TIMEOUT`]: an ALSA open can block forever (a
//! FIFO without a writer behind the file plugin, a hung driver), so the device is opened on a
//! thread that is detached and abandoned at the deadline, never joined.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::capture::{self, DeviceError, FromDevice};
use super::report::{Health, RecorderReport, assess};
use crate::component::ReportFile;
use crate::errors::{self, ErrorCode};
use crate::spec::recorder::{RecorderSpec, SampleFormat};

/// Longest time a probe of the device takes, opening included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the probe looks at the capture's sample counter.
const POLL: Duration = Duration::from_millis(10);

/// Checks that the device opens in the requested format and delivers samples, within
/// [`PROBE_TIMEOUT`] (for `roost check`).
pub fn check_device(spec: &RecorderSpec) -> Result<(), (ErrorCode, String)> {
    probe(spec, PROBE_TIMEOUT).map_err(|e| (e.code, e.message))
}

/// Like [`check_device`], but while a live recorder holds the device in this format, judges its
/// report as `roost status` does instead of opening the device a second time.
pub fn check_device_or_report(
    spec: &RecorderSpec,
    state_dir: &Path,
    now: Timestamp,
) -> Result<(), (ErrorCode, String)> {
    match live_report(spec, state_dir).map(|report| assess(&report, now)) {
        Some(Health::Healthy) => Ok(()),
        Some(Health::Error { code, message }) => Err((*code, message)),
        // No recorder holds the device (or one is just gone): look at the device itself.
        Some(Health::Stopped) | None => check_device(spec),
    }
}

/// The report of a running recorder capturing `spec`'s device, rate, channels and format.
fn live_report(spec: &RecorderSpec, state_dir: &Path) -> Option<RecorderReport> {
    let report = RecorderReport::read(state_dir)?;
    let same_capture = report.device == spec.device.as_str()
        && report.sample_rate == spec.sample_rate.get()
        && report.channels == spec.channels.get()
        && report.sample_format == spec.sample_format.to_string();
    (same_capture && process_alive(report.pid)).then_some(report)
}

/// A process with this pid exists and has not exited (a zombie waiting for its parent counts
/// as gone).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !is_zombie(&stat))
        .unwrap_or(true)
}

/// Whether a `/proc/PID/stat` line is a zombie's; the command name may hold spaces and ')'.
fn is_zombie(stat: &str) -> bool {
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// What the probing thread tells the caller.
enum Progress {
    /// The device opened and the capture started.
    Opened,
    Finished(Result<(), DeviceError>),
}

/// Opens the device and waits for its first samples on a detached thread, for at most
/// `timeout`.
fn probe(spec: &RecorderSpec, timeout: Duration) -> Result<(), DeviceError> {
    let deadline = Instant::now() + timeout;
    let (progress, updates) = mpsc::channel();
    let thread_spec = spec.clone();
    std::thread::Builder::new()
        .name("roost-probe".into())
        .spawn(move || {
            let result = first_samples(&thread_spec, deadline, timeout, &progress);
            let _ = progress.send(Progress::Finished(result));
        })
        .map_err(|e| unavailable(spec, format!("could not be probed: {e}")))?;
    let mut opened = false;
    loop {
        match updates.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Progress::Opened) => opened = true,
            Ok(Progress::Finished(result)) => return result,
            Err(RecvTimeoutError::Timeout) if opened => return Err(no_samples(spec, timeout)),
            Err(RecvTimeoutError::Timeout) => {
                return Err(unavailable(
                    spec,
                    format!("did not answer within {} s", timeout.as_secs_f64()),
                ));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(unavailable(
                    spec,
                    "could not be probed (the probe ended without an answer)".into(),
                ));
            }
        }
    }
}

/// The probing thread's work, in the device's sample type.
fn first_samples(
    spec: &RecorderSpec,
    deadline: Instant,
    timeout: Duration,
    progress: &Sender<Progress>,
) -> Result<(), DeviceError> {
    match spec.sample_format {
        SampleFormat::I16 => await_samples::<i16, i16>(spec, deadline, timeout, progress),
        SampleFormat::I24 => await_samples::<cpal::I24, i32>(spec, deadline, timeout, progress),
        SampleFormat::F32 => await_samples::<f32, f32>(spec, deadline, timeout, progress),
    }
}

/// Starts a capture and waits until it delivered a frame, the device is lost, or `deadline`.
fn await_samples<D, T>(
    spec: &RecorderSpec,
    deadline: Instant,
    timeout: Duration,
    progress: &Sender<Progress>,
) -> Result<(), DeviceError>
where
    D: cpal::SizedSample + Send + 'static,
    T: FromDevice<D>,
{
    let period = capture::default_period_frames(spec.sample_rate.get());
    // Dropping the capture never blocks: a stalled stream is dropped on a thread of its own.
    let capture = capture::start::<D, T>(spec, period)?;
    let _ = progress.send(Progress::Opened);
    loop {
        if capture.shared.frames_captured.load(Ordering::Relaxed) > 0 {
            return Ok(());
        }
        if capture.shared.device_lost.load(Ordering::Relaxed) {
            return Err(unavailable(spec, "opened but disappeared at once".into()));
        }
        if Instant::now() >= deadline {
            return Err(no_samples(spec, timeout));
        }
        std::thread::sleep(POLL);
    }
}

fn no_samples(spec: &RecorderSpec, timeout: Duration) -> DeviceError {
    unavailable(
        spec,
        format!(
            "opened but delivered no samples in {} s",
            timeout.as_secs_f64()
        ),
    )
}

fn unavailable(spec: &RecorderSpec, what: String) -> DeviceError {
    DeviceError {
        code: errors::AUDIO_DEVICE_UNAVAILABLE,
        message: format!("audio device {:?} {what}", spec.device.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombies_are_not_alive() {
        assert!(is_zombie("42 (roost record) Z 1 42 42"));
        assert!(is_zombie("42 (a) b) Z 1"));
        assert!(!is_zombie("42 (roost) S 1 42 42"));
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }
}
