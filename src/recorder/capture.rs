//! The audio device side: finding the ALSA device through cpal, checking the format, and a
//! capture stream whose callback does nothing but copy samples into a lock-free ring buffer
//! (and count what it could not copy). Everything slow happens on the writer's side.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

use super::wav::WavSample;
use crate::errors::{self, ErrorCode};
use crate::spec::recorder::{RecorderSpec, SampleFormat};

/// Seconds of audio the ring buffer holds: how long the writer may stall (a slow fsync, a busy
/// SD card) before samples are dropped.
pub const RING_SECONDS: u32 = 4;

/// Frames per capture period: 40 ms, so a period of 48 kHz mono i16 is 3840 bytes (one atomic
/// pipe write for the test feeder) and the callback runs 25 times a second.
pub fn default_period_frames(sample_rate: u32) -> u32 {
    (sample_rate / 25).max(64)
}

/// Why the device cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeviceError {
    /// DEP_E311 (unavailable) or DEP_E312 (format not offered).
    pub code: ErrorCode,
    /// What is wrong, naming the device and what it offers.
    pub message: String,
}

impl DeviceError {
    pub(crate) fn unavailable(message: String) -> Self {
        Self {
            code: errors::AUDIO_DEVICE_UNAVAILABLE,
            message,
        }
    }
}

/// A gap in the sample stream: `frames` frames were lost after `at_sample` samples had been
/// pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Samples pushed into the ring before the gap.
    pub at_sample: u64,
    /// Frames lost.
    pub frames: u64,
}

/// Seconds of audio the writer lets gather in the ring before the callback wakes it: the
/// writer then handles them in one go instead of waking every period (fewer wakeups and
/// context switches; the ring holds [`RING_SECONDS`], far more).
pub const WAKE_SECONDS: f64 = 0.5;

/// Counters shared between the audio callback and the writer.
#[derive(Debug, Default)]
pub struct Shared {
    /// Frames the device delivered (kept or dropped).
    pub frames_captured: AtomicU64,
    /// Frames dropped because the ring was full.
    pub frames_dropped: AtomicU64,
    /// Overruns ALSA reported (xruns).
    pub overruns: AtomicU64,
    /// Set by the error callback when the device disappeared or the stream died.
    pub device_lost: AtomicBool,
    /// The writer thread, woken by the callbacks when there is work.
    writer: std::sync::OnceLock<std::thread::Thread>,
    /// A wake-up is on its way: the callback does not send another until the writer waits again.
    wake_sent: AtomicBool,
}

impl Shared {
    /// Wakes the writer unless a wake-up is already on its way (cheap: one atomic swap; an
    /// unpark only when the writer may be waiting).
    fn wake_writer(&self) {
        if !self.wake_sent.swap(true, Ordering::AcqRel)
            && let Some(writer) = self.writer.get()
        {
            writer.unpark();
        }
    }
}

/// A running capture: the stream and the reading ends of its ring buffers.
pub struct Capture<T: WavSample> {
    stream: Option<cpal::Stream>,
    /// Samples, interleaved, in whole frames.
    pub samples: rtrb::Consumer<T>,
    /// Where periods were dropped.
    pub gaps: rtrb::Consumer<Gap>,
    /// Counters and the writer's wake-up.
    pub shared: Arc<Shared>,
    /// Frames per period the device delivers.
    pub period_frames: u32,
    /// Samples in the ring that make the callback wake the writer.
    wake_samples: usize,
}

impl<T: WavSample> Capture<T> {
    /// Waits, on the writer's thread, until the ring holds a batch of samples, a gap or a lost
    /// device is signalled, or `timeout` passes. Event-driven: no polling.
    pub fn wait(&self, timeout: Duration) {
        self.shared.wake_sent.store(false, Ordering::Release);
        // Samples that arrived before the flag was cleared sent no wake-up: look first.
        if self.samples.slots() >= self.wake_samples
            || !self.gaps.is_empty()
            || self.shared.device_lost.load(Ordering::Relaxed)
        {
            return;
        }
        std::thread::park_timeout(timeout);
    }
}

impl<T: WavSample> Drop for Capture<T> {
    fn drop(&mut self) {
        // Dropping a cpal stream joins its thread, which may sit in a blocking read of a device
        // that stopped delivering: drop it on a thread of its own so the writer never hangs.
        // Not even pause(): alsa-lib takes the PCM's lock for it, which that read holds.
        if let Some(stream) = self.stream.take() {
            let _ = std::thread::Builder::new()
                .name("roost-stream-drop".into())
                .spawn(move || drop(stream));
        }
    }
}

/// The ALSA host (cpal's default host on Linux).
fn host() -> cpal::Host {
    cpal::default_host()
}

/// Finds the input device named `name` ("default", a PCM name such as "hw:CARD=x,DEV=0", or a
/// description name).
pub fn find_device(name: &str) -> Result<cpal::Device, DeviceError> {
    let host = host();
    if name == "default" {
        return host.default_input_device().ok_or_else(|| {
            DeviceError::unavailable("there is no default audio input device".into())
        });
    }
    let devices = host
        .input_devices()
        .map_err(|e| DeviceError::unavailable(format!("cannot list audio devices: {e}")))?;
    let mut names = Vec::new();
    for d in devices {
        let id = d.id().ok().map(|id| id.id().to_string());
        let desc = d.description().ok().map(|d| d.name().to_string());
        if id.as_deref() == Some(name) || desc.as_deref() == Some(name) {
            return Ok(d);
        }
        names.extend(id);
    }
    if let Some(d) = host.device_by_id(&cpal::DeviceId::new(host.id(), name)) {
        return Ok(d);
    }
    Err(DeviceError::unavailable(format!(
        "audio input device {name:?} not found; available: {}",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )))
}

fn cpal_format(f: SampleFormat) -> cpal::SampleFormat {
    match f {
        SampleFormat::I16 => cpal::SampleFormat::I16,
        SampleFormat::I24 => cpal::SampleFormat::I24,
        SampleFormat::F32 => cpal::SampleFormat::F32,
    }
}

/// Checks that `device` can capture the spec's rate, channels and format.
pub fn check_format(device: &cpal::Device, spec: &RecorderSpec) -> Result<(), DeviceError> {
    let configs = device.supported_input_configs().map_err(|e| {
        DeviceError::unavailable(format!(
            "cannot query device {:?}: {e}",
            spec.device.as_str()
        ))
    })?;
    let wanted = cpal_format(spec.sample_format);
    let mut offered = Vec::new();
    for c in configs {
        if c.channels() == spec.channels.get()
            && c.sample_format() == wanted
            && c.contains_rate(spec.sample_rate.get())
        {
            return Ok(());
        }
        offered.push(format!(
            "{}ch {} {}-{} Hz",
            c.channels(),
            c.sample_format(),
            c.min_sample_rate(),
            c.max_sample_rate()
        ));
    }
    offered.sort();
    offered.dedup();
    Err(DeviceError {
        code: errors::AUDIO_FORMAT_UNSUPPORTED,
        message: format!(
            "device {:?} cannot capture {} Hz, {} channel(s), {}; it offers: {}",
            spec.device.as_str(),
            spec.sample_rate.get(),
            spec.channels.get(),
            spec.sample_format,
            if offered.is_empty() {
                "nothing".into()
            } else {
                offered.join("; ")
            }
        ),
    })
}

/// Converts a device sample into the writer's sample type.
pub trait FromDevice<D>: WavSample {
    /// The sample as the writer holds it.
    fn from_device(d: D) -> Self;
}
impl FromDevice<i16> for i16 {
    fn from_device(d: i16) -> Self {
        d
    }
}
impl FromDevice<cpal::I24> for i32 {
    fn from_device(d: cpal::I24) -> Self {
        d.inner()
    }
}
impl FromDevice<f32> for f32 {
    fn from_device(d: f32) -> Self {
        d
    }
}

/// Opens the device and starts capturing into fresh ring buffers.
pub fn start<D, T>(spec: &RecorderSpec, period_frames: u32) -> Result<Capture<T>, DeviceError>
where
    D: cpal::SizedSample + Send + 'static,
    T: FromDevice<D>,
{
    let device = find_device(spec.device.as_str())?;
    check_format(&device, spec)?;
    let mut config = cpal::StreamConfig {
        channels: spec.channels.get(),
        sample_rate: spec.sample_rate.get(),
        buffer_size: cpal::BufferSize::Fixed(period_frames),
    };
    let built = match build::<D, T>(&device, config, period_frames) {
        Err(e)
            if e.kind() == cpal::ErrorKind::UnsupportedConfig
                || e.kind() == cpal::ErrorKind::InvalidInput =>
        {
            tracing::info!(error = %e, period_frames, "the device refuses the period size; using its default");
            config.buffer_size = cpal::BufferSize::Default;
            build::<D, T>(&device, config, period_frames)
        }
        other => other,
    };
    let (stream, samples, gaps, shared, wake_samples) = built.map_err(|e| stream_error(spec, e))?;
    stream.play().map_err(|e| stream_error(spec, e))?;
    let period_frames = stream.buffer_size().unwrap_or(period_frames);
    Ok(Capture {
        stream: Some(stream),
        samples,
        gaps,
        shared,
        period_frames,
        wake_samples,
    })
}

type Built<T> = (
    cpal::Stream,
    rtrb::Consumer<T>,
    rtrb::Consumer<Gap>,
    Arc<Shared>,
    usize,
);

fn build<D, T>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    period_frames: u32,
) -> Result<Built<T>, cpal::Error>
where
    D: cpal::SizedSample + Send + 'static,
    T: FromDevice<D>,
{
    let channels = usize::from(config.channels);
    let rate = config.sample_rate as usize;
    // A whole number of frames, so that a read never splits a frame at the wrap-around.
    let capacity = (rate * RING_SECONDS as usize).max(period_frames as usize * 8) * channels;
    let (mut producer, consumer) = rtrb::RingBuffer::<T>::new(capacity);
    let (mut gap_producer, gap_consumer) = rtrb::RingBuffer::<Gap>::new(256);
    let shared = Arc::new(Shared::default());
    // The stream is built on the writer's thread: that is the thread the callbacks wake.
    let _ = shared.writer.set(std::thread::current());
    let wake_samples = ((rate as f64 * WAKE_SECONDS) as usize * channels)
        .max(period_frames as usize * channels)
        .min(capacity / 4);
    let data_shared = shared.clone();
    let mut pushed: u64 = 0;
    let mut pending_gap: Option<Gap> = None;
    let data_callback = move |data: &[D], _: &cpal::InputCallbackInfo| {
        let frames = (data.len() / channels) as u64;
        data_shared
            .frames_captured
            .fetch_add(frames, Ordering::Relaxed);
        if let Some(gap) = pending_gap
            && gap_producer.push(gap).is_ok()
        {
            pending_gap = None;
        }
        match producer.write_chunk_uninit(data.len()) {
            Ok(chunk) if pending_gap.is_none() => {
                chunk.fill_from_iter(data.iter().map(|&d| T::from_device(d)));
                pushed += data.len() as u64;
                if capacity - producer.slots() >= wake_samples {
                    data_shared.wake_writer();
                }
            }
            _ => {
                // The writer is behind: drop this period whole and tell the writer where.
                data_shared
                    .frames_dropped
                    .fetch_add(frames, Ordering::Relaxed);
                let gap = match pending_gap {
                    Some(g) => Gap {
                        frames: g.frames + frames,
                        ..g
                    },
                    None => Gap {
                        at_sample: pushed,
                        frames,
                    },
                };
                pending_gap = match gap_producer.push(gap) {
                    Ok(()) => None,
                    Err(_) => Some(gap),
                };
                data_shared.wake_writer();
            }
        }
    };
    let error_shared = shared.clone();
    let error_callback = move |e: cpal::Error| match e.kind() {
        cpal::ErrorKind::Xrun => {
            error_shared.overruns.fetch_add(1, Ordering::Relaxed);
        }
        cpal::ErrorKind::DeviceNotAvailable
        | cpal::ErrorKind::StreamInvalidated
        | cpal::ErrorKind::HostUnavailable => {
            error_shared.device_lost.store(true, Ordering::Relaxed);
            error_shared.wake_writer();
        }
        _ => tracing::warn!(error = %e, "audio stream error"),
    };
    let stream = device.build_input_stream::<D, _, _>(
        config,
        data_callback,
        error_callback,
        Some(Duration::from_secs(5)),
    )?;
    Ok((stream, consumer, gap_consumer, shared, wake_samples))
}

fn stream_error(spec: &RecorderSpec, e: cpal::Error) -> DeviceError {
    let code = match e.kind() {
        cpal::ErrorKind::UnsupportedConfig => errors::AUDIO_FORMAT_UNSUPPORTED,
        _ => errors::AUDIO_DEVICE_UNAVAILABLE,
    };
    DeviceError {
        code,
        message: format!("cannot capture from device {:?}: {e}", spec.device.as_str()),
    }
}
