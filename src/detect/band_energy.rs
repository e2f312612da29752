//! The built-in `bandEnergy` detector: finds sound events in one frequency band of a recording
//! and boxes each in time and frequency. A short-time FFT (Hann window of at most 25 ms, a hop
//! of a quarter window) gives the band's energy per frame; frames more than `thresholdDb` above
//! the band's noise floor (a low percentile over the whole file) make events; each event's
//! frequency box is the span of bins that rise above their own floor. It reads a recording
//! front to back twice (hound checks the header, the samples are decoded here in blocks) and
//! never holds it in memory (a recording runs to hundreds of megabytes); it never writes
//! anything. docs/DETECTORS.md describes the method.

use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use realfft::RealFftPlanner;
use realfft::num_complex::Complex;

/// Longest analysis window in seconds: the FFT length is the largest power of two that fits
/// (1024 points at 48 kHz, 8192 at 384 kHz: 21.3 ms, bins 46.9 Hz wide).
const MAX_WINDOW_S: f64 = 0.025;
/// Frames per window length: a hop of a quarter window (5.3 ms at 48 kHz) puts event edges
/// within about half a window of the truth.
const HOPS_PER_WINDOW: usize = 4;
/// The percentile of the band energy over the file taken as its noise floor, and of each bin's
/// level as that bin's floor: sounds may fill up to 80% of a file before they raise it.
const NOISE_PERCENTILE: f64 = 0.2;
/// Frames below the threshold that may separate two parts of one event (16 ms at 48 kHz).
const MAX_GAP_FRAMES: usize = 3;
/// The excess over the floor, in dB, whose score is tanh(1) = 0.76.
const SCORE_SCALE_DB: f64 = 30.0;
/// Lowest level of the per-bin histograms, in dB (quieter frames count in the lowest step).
const LEVEL_MIN_DB: f64 = -190.0;
/// Steps of the per-bin histograms, 1 dB each (-190 to +10 dB).
const LEVELS: usize = 200;
/// First-channel samples handed on at once while reading.
const CHUNK: usize = 8192;

/// The detector's parameters (deployment.yaml:
/// `{kind: bandEnergy, lowHz: 2000, highHz: 8000, thresholdDb: 12, minDuration: 100ms}`).
#[derive(Clone, Debug, PartialEq)]
pub struct BandEnergy {
    /// Lower edge of the band, in Hz.
    pub low_hz: f64,
    /// Upper edge of the band, in Hz (clamped to half the sample rate).
    pub high_hz: f64,
    /// How far above the noise floor a frame's band energy must be to belong to an event, in dB.
    pub threshold_db: f64,
    /// Shortest event kept.
    pub min_duration: Duration,
}

/// One sound event: its bounding box and a score in 0..=1.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Event {
    /// Start, in seconds from the start of the recording.
    pub start_s: f64,
    /// End, in seconds from the start of the recording.
    pub end_s: f64,
    /// Lower edge of the event's frequency box, in Hz.
    pub low_hz: f64,
    /// Upper edge of the event's frequency box, in Hz.
    pub high_hz: f64,
    /// `tanh(peak excess / 30 dB)`, the peak excess being the most the band energy of one of
    /// its frames rose above the noise floor: 0.38 at 12 dB, 0.58 at 20 dB, 0.87 at 40 dB.
    pub score: f64,
}

/// Why a recording cannot be analysed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The file cannot be opened or read to its end (missing, unreadable, cut short).
    #[error("cannot read the recording {path}")]
    Io {
        /// The WAV file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a well-formed WAV file.
    #[error("the recording {path} is not a readable WAV file")]
    Wav {
        /// The WAV file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: hound::Error,
    },
    /// A WAV encoding the detector does not read (ADPCM and other compressed encodings).
    #[error("the recording {path} is in a format the detector does not read: {format}")]
    Unsupported {
        /// The WAV file.
        path: PathBuf,
        /// What the file holds, in words.
        format: String,
    },
}

impl BandEnergy {
    /// Streams the WAV at `path` and returns its events in time order. Reads what hound reads:
    /// 8, 16, 24 (in 3 or 4 bytes) and 32-bit integer PCM and 32-bit float, any channel count;
    /// only the first channel is analysed, the one the page's spectrogram shows.
    pub fn analyse_file(&self, path: &Path) -> Result<Vec<Event>, DetectError> {
        let mut wav = WavFile { path };
        let sample_rate = wav.open()?.spec.sample_rate;
        self.detect(sample_rate, &mut wav)
    }

    /// The same on samples in memory (mono, -1..1), for tests and benches.
    pub fn analyse(&self, samples: &[f32], sample_rate: u32) -> Vec<Event> {
        let Ok(events) = self.detect(sample_rate, &mut InMemory(samples));
        events
    }

    /// Two passes over `source`: the band energy of every frame and each bin's level
    /// histogram, then the spectra of the frames inside events for their frequency boxes.
    fn detect<S: Source>(&self, sample_rate: u32, source: &mut S) -> Result<Vec<Event>, S::Error> {
        let Some(geometry) = Geometry::new(self, sample_rate) else {
            return Ok(Vec::new());
        };
        let mut spectrum = Spectrum::new(&geometry);
        let mut band_db: Vec<f32> = Vec::new();
        let mut levels = BinLevels::new(geometry.bins.len());
        let mut framer = Framer::new(&geometry);
        source.stream(&mut |chunk| {
            framer.push(chunk, &mut |_, frame| {
                let power = spectrum.band_power(frame);
                band_db.push(db(power.iter().map(|&p| f64::from(p)).sum::<f64>()) as f32);
                levels.add(power);
                ControlFlow::Continue(())
            })
        })?;
        let Some(floor_db) = percentile(&band_db, NOISE_PERCENTILE) else {
            return Ok(Vec::new());
        };
        let min_frames =
            self.min_duration.as_secs_f64() * f64::from(sample_rate) / geometry.hop as f64;
        let runs: Vec<Run> = runs(&band_db, floor_db, self.threshold_db)
            .into_iter()
            .filter(|run| run.frames() as f64 >= min_frames)
            .collect();
        drop(band_db);
        if runs.is_empty() {
            return Ok(Vec::new());
        }

        let noise = levels.noise_power();
        let mut events = Vec::with_capacity(runs.len());
        let mut summed = vec![0.0f64; geometry.bins.len()];
        let mut framer = Framer::new(&geometry);
        source.stream(&mut |chunk| {
            framer.push(chunk, &mut |index, frame| {
                let run = &runs[events.len()];
                if index < run.first {
                    return ControlFlow::Continue(());
                }
                let power = spectrum.band_power(frame);
                for (sum, &p) in summed.iter_mut().zip(power) {
                    *sum += f64::from(p);
                }
                if index == run.last {
                    events.push(self.event(&geometry, run, &summed, &noise));
                    summed.fill(0.0);
                    if events.len() == runs.len() {
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })
        })?;
        Ok(events)
    }

    /// The event of `run`, from the summed power of its frames in each band bin.
    fn event(&self, geometry: &Geometry, run: &Run, summed: &[f64], noise: &[f64]) -> Event {
        let frames = run.frames() as f64;
        let rises = |(sum, noise): (&f64, &f64)| db(sum / frames) - db(*noise) >= self.threshold_db;
        let first = summed.iter().zip(noise).position(rises);
        let last = summed.iter().zip(noise).rposition(rises);
        // Energy spread thinly over the whole band can pass while no single bin does.
        let (low_bin, high_bin) = match (first, last) {
            (Some(first), Some(last)) => (first, last),
            _ => (0, geometry.bins.len() - 1),
        };
        let bin_hz = geometry.bin_hz();
        let edge =
            |offset: usize, side: f64| ((geometry.bins.start + offset) as f64 + side) * bin_hz;
        let rate = f64::from(geometry.sample_rate);
        // A frame stands for the hop around its centre.
        let centre = |frame: usize| (frame * geometry.hop) as f64 + geometry.fft_len as f64 / 2.0;
        let half_hop = geometry.hop as f64 / 2.0;
        Event {
            start_s: (centre(run.first) - half_hop) / rate,
            end_s: (centre(run.last) + half_hop) / rate,
            low_hz: edge(low_bin, -0.5).max(geometry.low_hz),
            high_hz: edge(high_bin, 0.5).min(geometry.high_hz),
            score: (run.peak_excess_db / SCORE_SCALE_DB).tanh().clamp(0.0, 1.0),
        }
    }
}

/// Power in dB; silence reads -300 dB rather than minus infinity.
fn db(power: f64) -> f64 {
    10.0 * power.max(1e-30).log10()
}

/// How a recording at one sample rate is cut into frames, and which bins make the band.
#[derive(Clone, Debug)]
struct Geometry {
    sample_rate: u32,
    fft_len: usize,
    hop: usize,
    /// The band's bins, each one whose centre frequency lies in the band.
    bins: Range<usize>,
    /// The band's edges, clamped to 0 and half the sample rate.
    low_hz: f64,
    high_hz: f64,
}

impl Geometry {
    /// None when the band holds no frequency at this sample rate.
    fn new(band: &BandEnergy, sample_rate: u32) -> Option<Self> {
        let rate = f64::from(sample_rate);
        let fits = (rate * MAX_WINDOW_S) as usize;
        let fft_len = if fits < 16 { 16 } else { 1 << fits.ilog2() };
        let low_hz = band.low_hz.max(0.0);
        let high_hz = band.high_hz.min(rate / 2.0);
        if sample_rate == 0 || low_hz.is_nan() || high_hz.is_nan() || low_hz >= high_hz {
            return None;
        }
        let bin_hz = rate / fft_len as f64;
        let first = (low_hz / bin_hz).ceil() as usize;
        let last = ((high_hz / bin_hz).floor() as usize).min(fft_len / 2);
        // A band narrower than one bin is its nearest bin.
        let bins = if first <= last {
            first..last + 1
        } else {
            let nearest = ((low_hz + high_hz) / 2.0 / bin_hz).round() as usize;
            nearest..nearest + 1
        };
        Some(Self {
            sample_rate,
            fft_len,
            hop: fft_len / HOPS_PER_WINDOW,
            bins,
            low_hz,
            high_hz,
        })
    }

    fn bin_hz(&self) -> f64 {
        f64::from(self.sample_rate) / self.fft_len as f64
    }
}

/// Hann-windowed FFT of one frame, as power in the band's bins.
struct Spectrum {
    fft: Arc<dyn realfft::RealToComplex<f32>>,
    window: Vec<f32>,
    input: Vec<f32>,
    output: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    bins: Range<usize>,
    /// Makes a full-scale sine centred on a bin read 1 (0 dB) there.
    scale: f32,
    power: Vec<f32>,
}

impl Spectrum {
    fn new(geometry: &Geometry) -> Self {
        let n = geometry.fft_len;
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n);
        let window: Vec<f32> = (0..n)
            .map(|i| 0.5 - 0.5 * (std::f32::consts::TAU * i as f32 / n as f32).cos())
            .collect();
        let gain: f32 = window.iter().sum();
        Self {
            input: fft.make_input_vec(),
            output: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            fft,
            window,
            bins: geometry.bins.clone(),
            scale: 4.0 / (gain * gain),
            power: vec![0.0; geometry.bins.len()],
        }
    }

    fn band_power(&mut self, frame: &[f32]) -> &[f32] {
        for ((x, s), w) in self.input.iter_mut().zip(frame).zip(&self.window) {
            *x = s * w;
        }
        // Lengths come from the plan itself, so the transform cannot fail.
        let _ = self
            .fft
            .process_with_scratch(&mut self.input, &mut self.output, &mut self.scratch);
        for (p, c) in self.power.iter_mut().zip(&self.output[self.bins.clone()]) {
            *p = c.norm_sqr() * self.scale;
        }
        &self.power
    }
}

/// Cuts a stream of chunks into overlapping frames, numbered from 0 at the first sample.
struct Framer {
    fft_len: usize,
    hop: usize,
    pending: Vec<f32>,
    next_index: usize,
}

impl Framer {
    fn new(geometry: &Geometry) -> Self {
        Self {
            fft_len: geometry.fft_len,
            hop: geometry.hop,
            pending: Vec::with_capacity(geometry.fft_len + CHUNK),
            next_index: 0,
        }
    }

    /// Calls `on_frame` with each frame `chunk` completes; stops when it breaks.
    fn push(
        &mut self,
        chunk: &[f32],
        on_frame: &mut impl FnMut(usize, &[f32]) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        let mut flow = ControlFlow::Continue(());
        while flow.is_continue() && self.pending.len() - start >= self.fft_len {
            flow = on_frame(self.next_index, &self.pending[start..start + self.fft_len]);
            self.next_index += 1;
            start += self.hop;
        }
        self.pending.drain(..start);
        flow
    }
}

/// Histograms of each band bin's level over the file, 1 dB steps: a percentile per bin
/// without keeping the spectrogram.
struct BinLevels {
    counts: Vec<u32>,
}

impl BinLevels {
    fn new(bins: usize) -> Self {
        Self {
            counts: vec![0; bins * LEVELS],
        }
    }

    fn add(&mut self, power: &[f32]) {
        for (row, &p) in self.counts.chunks_exact_mut(LEVELS).zip(power) {
            let step = (10.0 * p.max(1e-30).log10() - LEVEL_MIN_DB as f32).max(0.0) as usize;
            row[step.min(LEVELS - 1)] += 1;
        }
    }

    /// Each bin's mean noise power. Noise in one bin has exponentially distributed power, whose
    /// mean is its percentile q divided by -ln(1 - q): the figure an event's mean power in the
    /// bin is compared with.
    fn noise_power(&self) -> Vec<f64> {
        let mean_per_percentile = -(1.0 - NOISE_PERCENTILE).ln();
        self.counts
            .chunks_exact(LEVELS)
            .map(|row| {
                10f64.powf(histogram_percentile_db(row, NOISE_PERCENTILE) / 10.0)
                    / mean_per_percentile
            })
            .collect()
    }
}

/// The level below which a fraction `q` of the histogram's counts lie, interpolated within
/// its 1 dB step.
fn histogram_percentile_db(row: &[u32], q: f64) -> f64 {
    let total: u64 = row.iter().map(|&c| u64::from(c)).sum();
    let target = q * total as f64;
    let mut below = 0.0;
    for (step, &count) in row.iter().enumerate() {
        let count = f64::from(count);
        if count > 0.0 && below + count >= target {
            return LEVEL_MIN_DB + step as f64 + (target - below) / count;
        }
        below += count;
    }
    LEVEL_MIN_DB
}

/// The `q` percentile of `values` (None when there are none).
fn percentile(values: &[f32], q: f64) -> Option<f64> {
    let last = values.len().checked_sub(1)?;
    let mut copy = values.to_vec();
    let (_, value, _) =
        copy.select_nth_unstable_by((last as f64 * q).round() as usize, f32::total_cmp);
    Some(f64::from(*value))
}

/// Consecutive frames above the threshold (gaps of at most [`MAX_GAP_FRAMES`] bridged).
#[derive(Debug)]
struct Run {
    first: usize,
    last: usize,
    /// The highest band energy over the floor among its frames.
    peak_excess_db: f64,
}

impl Run {
    fn frames(&self) -> usize {
        self.last - self.first + 1
    }
}

/// The runs of frames more than `threshold_db` above `floor_db`, in time order.
fn runs(band_db: &[f32], floor_db: f64, threshold_db: f64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (index, &level) in band_db.iter().enumerate() {
        let excess = f64::from(level) - floor_db;
        if excess <= threshold_db {
            continue;
        }
        match runs.last_mut() {
            Some(run) if index - run.last <= MAX_GAP_FRAMES + 1 => {
                run.last = index;
                run.peak_excess_db = run.peak_excess_db.max(excess);
            }
            _ => runs.push(Run {
                first: index,
                last: index,
                peak_excess_db: excess,
            }),
        }
    }
    runs
}

/// Where first-channel samples come from: read front to back once per pass, in chunks, until
/// the end or until `each` breaks.
trait Source {
    type Error;
    fn stream(
        &mut self,
        each: &mut dyn FnMut(&[f32]) -> ControlFlow<()>,
    ) -> Result<(), Self::Error>;
}

struct InMemory<'a>(&'a [f32]);

impl Source for InMemory<'_> {
    type Error = std::convert::Infallible;

    fn stream(
        &mut self,
        each: &mut dyn FnMut(&[f32]) -> ControlFlow<()>,
    ) -> Result<(), Self::Error> {
        for chunk in self.0.chunks(CHUNK) {
            if each(chunk).is_break() {
                break;
            }
        }
        Ok(())
    }
}

/// A WAV file, opened anew for each pass. hound parses and checks the header; the samples are
/// then decoded from blocks of bytes, several times faster than hound's sample-at-a-time
/// iterator, which took three quarters of the detector's time.
struct WavFile<'a> {
    path: &'a Path,
}

/// An open WAV file, its reader at the first sample.
struct OpenWav {
    spec: hound::WavSpec,
    encoding: Encoding,
    /// Samples of all channels together.
    samples: u64,
    data: BufReader<File>,
}

impl WavFile<'_> {
    fn open(&self) -> Result<OpenWav, DetectError> {
        let reader = hound::WavReader::open(self.path).map_err(|e| self.error(e))?;
        let spec = reader.spec();
        let samples = u64::from(reader.len());
        let mut data = reader.into_inner();
        // hound leaves its reader just past the data chunk's header, whose last four bytes are
        // the chunk's length; divided by the sample count, the bytes each sample is stored in,
        // which hound does not say (24-bit samples come in 3 or 4).
        let mut length = [0u8; 4];
        data.seek_relative(-4)
            .and_then(|()| data.read_exact(&mut length))
            .map_err(|source| self.io_error(source))?;
        let bytes_per_sample = u64::from(u32::from_le_bytes(length))
            .checked_div(samples)
            .unwrap_or_else(|| u64::from(spec.bits_per_sample.div_ceil(8)));
        let Some(encoding) = Encoding::of(spec, bytes_per_sample) else {
            let kind = match spec.sample_format {
                hound::SampleFormat::Float => "float",
                hound::SampleFormat::Int => "integer",
            };
            let bits = spec.bits_per_sample;
            return Err(self.unsupported(format!(
                "{bits}-bit {kind} samples stored in {bytes_per_sample} bytes"
            )));
        };
        Ok(OpenWav {
            spec,
            encoding,
            samples,
            data,
        })
    }

    fn unsupported(&self, format: String) -> DetectError {
        DetectError::Unsupported {
            path: self.path.to_path_buf(),
            format,
        }
    }

    fn io_error(&self, source: std::io::Error) -> DetectError {
        DetectError::Io {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn error(&self, error: hound::Error) -> DetectError {
        match error {
            hound::Error::IoError(source) => self.io_error(source),
            hound::Error::Unsupported => {
                self.unsupported("neither integer PCM nor float".to_string())
            }
            source => DetectError::Wav {
                path: self.path.to_path_buf(),
                source,
            },
        }
    }
}

impl Source for WavFile<'_> {
    type Error = DetectError;

    fn stream(
        &mut self,
        each: &mut dyn FnMut(&[f32]) -> ControlFlow<()>,
    ) -> Result<(), DetectError> {
        let mut wav = self.open()?;
        let channels = u64::from(wav.spec.channels.max(1));
        let frame_bytes = channels as usize * wav.encoding.bytes();
        let mut remaining = wav.samples / channels * frame_bytes as u64;
        let mut bytes = vec![0u8; CHUNK * frame_bytes];
        let mut chunk = Vec::with_capacity(CHUNK);
        while remaining > 0 {
            let block = &mut bytes[..remaining.min(CHUNK as u64 * frame_bytes as u64) as usize];
            wav.data
                .read_exact(block)
                .map_err(|source| self.io_error(source))?;
            remaining -= block.len() as u64;
            chunk.clear();
            wav.encoding.first_channel(block, frame_bytes, &mut chunk);
            if each(&chunk).is_break() {
                break;
            }
        }
        Ok(())
    }
}

/// How samples are stored: the encodings hound reads, 24-bit samples in 4 bytes taken from
/// the low three as hound does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Encoding {
    Unsigned8,
    Signed16,
    Signed24,
    Signed24In4Bytes,
    Signed32,
    Float32,
}

impl Encoding {
    fn of(spec: hound::WavSpec, bytes_per_sample: u64) -> Option<Self> {
        use hound::SampleFormat::{Float, Int};
        match (spec.sample_format, spec.bits_per_sample, bytes_per_sample) {
            (Int, 8, 1) => Some(Self::Unsigned8),
            (Int, 16, 2) => Some(Self::Signed16),
            (Int, 24, 3) => Some(Self::Signed24),
            (Int, 24, 4) => Some(Self::Signed24In4Bytes),
            (Int, 32, 4) => Some(Self::Signed32),
            (Float, 32, 4) => Some(Self::Float32),
            _ => None,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Self::Unsigned8 => 1,
            Self::Signed16 => 2,
            Self::Signed24 => 3,
            Self::Signed24In4Bytes | Self::Signed32 | Self::Float32 => 4,
        }
    }

    /// Appends the first sample of each frame in `bytes` to `out`, integers scaled to -1..1.
    fn first_channel(self, bytes: &[u8], frame_bytes: usize, out: &mut Vec<f32>) {
        let frames = bytes.chunks_exact(frame_bytes);
        match self {
            Self::Unsigned8 => out.extend(frames.map(|f| (f32::from(f[0]) - 128.0) / 128.0)),
            Self::Signed16 => {
                out.extend(frames.map(|f| f32::from(i16::from_le_bytes([f[0], f[1]])) / 32_768.0))
            }
            Self::Signed24 | Self::Signed24In4Bytes => out
                .extend(frames.map(|f| {
                    (i32::from_le_bytes([0, f[0], f[1], f[2]]) >> 8) as f32 / 8_388_608.0
                })),
            Self::Signed32 => out
                .extend(frames.map(|f| {
                    i32::from_le_bytes([f[0], f[1], f[2], f[3]]) as f32 / 2_147_483_648.0
                })),
            Self::Float32 => {
                out.extend(frames.map(|f| f32::from_le_bytes([f[0], f[1], f[2], f[3]])))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 48_000;

    fn birds() -> BandEnergy {
        BandEnergy {
            low_hz: 2000.0,
            high_hz: 8000.0,
            threshold_db: 12.0,
            min_duration: Duration::from_millis(100),
        }
    }

    /// Uniform white noise in -amplitude..amplitude (xorshift64*, fixed seed).
    fn noise(seconds: f64, amplitude: f32, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        (0..(seconds * f64::from(RATE)) as usize)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let unit =
                    (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32;
                amplitude * (2.0 * unit - 1.0)
            })
            .collect()
    }

    /// Adds a tone from `start_s` to `end_s`, with 5 ms raised-cosine edges when `ramped`.
    fn add_tone(
        samples: &mut [f32],
        hz: f64,
        start_s: f64,
        end_s: f64,
        amplitude: f64,
        ramped: bool,
    ) {
        let rate = f64::from(RATE);
        let ramp = if ramped { 0.005 } else { 0.0 };
        let first = (start_s * rate) as usize;
        let span = &mut samples[first..(end_s * rate) as usize];
        for (n, sample) in (first..).zip(span) {
            let t = n as f64 / rate;
            let edge = ((t - start_s).min(end_s - t) / ramp).min(1.0);
            let gain = if ramp > 0.0 {
                0.5 - 0.5 * (std::f64::consts::PI * edge).cos()
            } else {
                1.0
            };
            *sample += (amplitude * gain * (std::f64::consts::TAU * hz * t).sin()) as f32;
        }
    }

    fn assert_found(event: &Event, hz: f64, start_s: f64, end_s: f64) {
        assert!(
            (event.start_s - start_s).abs() <= 0.05,
            "start {event:?}, tone from {start_s}"
        );
        assert!(
            (event.end_s - end_s).abs() <= 0.05,
            "end {event:?}, tone to {end_s}"
        );
        assert!(
            event.low_hz <= hz && hz <= event.high_hz,
            "box {event:?}, tone at {hz} Hz"
        );
        assert!(
            event.high_hz - event.low_hz < 1000.0,
            "box wider than 1 kHz: {event:?}"
        );
        assert!((0.0..=1.0).contains(&event.score), "{event:?}");
    }

    #[test]
    fn tones_in_the_band_are_found_at_their_times_and_frequencies() {
        let mut samples = noise(6.0, 0.01, 1);
        add_tone(&mut samples, 3000.0, 1.0, 1.5, 0.1, true);
        add_tone(&mut samples, 6100.0, 2.5, 2.8, 0.05, true);
        // Switched on and off without ramps: the clicks at its edges must not widen its box.
        add_tone(&mut samples, 4400.0, 4.0, 5.2, 0.1, false);
        let events = birds().analyse(&samples, RATE);
        assert_eq!(events.len(), 3, "{events:#?}");
        assert_found(&events[0], 3000.0, 1.0, 1.5);
        assert_found(&events[1], 6100.0, 2.5, 2.8);
        assert_found(&events[2], 4400.0, 4.0, 5.2);
        assert!(
            events[1].score < events[0].score,
            "a quieter tone scores lower: {events:#?}"
        );
    }

    #[test]
    fn a_tone_outside_the_band_is_not_found() {
        let mut samples = noise(3.0, 0.01, 2);
        add_tone(&mut samples, 12_000.0, 1.0, 2.0, 0.3, true);
        add_tone(&mut samples, 800.0, 0.5, 1.5, 0.3, true);
        assert_eq!(birds().analyse(&samples, RATE), Vec::new());
    }

    #[test]
    fn silence_and_steady_noise_give_nothing() {
        let detector = birds();
        assert_eq!(
            detector.analyse(&vec![0.0; 3 * RATE as usize], RATE),
            Vec::new()
        );
        assert_eq!(detector.analyse(&noise(5.0, 0.2, 3), RATE), Vec::new());
        assert_eq!(detector.analyse(&noise(5.0, 1e-4, 4), RATE), Vec::new());
        assert_eq!(detector.analyse(&[], RATE), Vec::new());
        assert_eq!(
            detector.analyse(&noise(0.01, 0.2, 5), RATE),
            Vec::new(),
            "shorter than a frame"
        );
    }

    #[test]
    fn min_duration_drops_a_short_click() {
        let mut samples = noise(3.0, 0.01, 6);
        let click = noise(0.005, 0.8, 7);
        let at = RATE as usize / 2;
        for (s, c) in samples[at..].iter_mut().zip(&click) {
            *s += c;
        }
        add_tone(&mut samples, 5000.0, 1.5, 1.7, 0.1, true);
        let events = birds().analyse(&samples, RATE);
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_found(&events[0], 5000.0, 1.5, 1.7);

        let everything = BandEnergy {
            min_duration: Duration::ZERO,
            ..birds()
        };
        let events = everything.analyse(&samples, RATE);
        assert_eq!(events.len(), 2, "{events:#?}");
        assert!((events[0].start_s - 0.5).abs() < 0.05, "{events:#?}");
        assert!(events[0].end_s - events[0].start_s < 0.05, "{events:#?}");
    }

    #[test]
    fn louder_events_score_higher() {
        let mut samples = noise(6.0, 0.01, 8);
        let amplitudes = [0.02, 0.05, 0.2, 0.9];
        for (i, a) in amplitudes.iter().enumerate() {
            add_tone(
                &mut samples,
                3500.0,
                1.0 + i as f64,
                1.3 + i as f64,
                *a,
                true,
            );
        }
        let events = birds().analyse(&samples, RATE);
        assert_eq!(events.len(), amplitudes.len(), "{events:#?}");
        for pair in events.windows(2) {
            assert!(pair[0].score < pair[1].score, "{events:#?}");
        }
        assert!(
            events.iter().all(|e| (0.0..=1.0).contains(&e.score)),
            "{events:#?}"
        );
    }

    fn write_wav<S: hound::Sample + Copy>(
        path: &Path,
        spec: hound::WavSpec,
        frames: impl Iterator<Item = S>,
    ) {
        let mut writer = hound::WavWriter::create(path, spec).unwrap();
        for sample in frames {
            writer.write_sample(sample).unwrap();
        }
        writer.finalize().unwrap();
    }

    #[test]
    fn files_give_the_events_of_their_first_channel() {
        let dir = tempfile::tempdir().unwrap();
        let mut samples = noise(4.0, 0.01, 9);
        add_tone(&mut samples, 3000.0, 1.0, 1.5, 0.1, true);
        add_tone(&mut samples, 7000.0, 2.5, 3.0, 0.1, true);
        let detector = birds();
        let in_memory = detector.analyse(&samples, RATE);
        assert_eq!(in_memory.len(), 2, "{in_memory:#?}");

        // 32-bit float, stereo with a loud tone on the second channel only: exactly the same.
        let stereo = dir.path().join("stereo-f32.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: RATE,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut second = vec![0.0f32; samples.len()];
        add_tone(&mut second, 5000.0, 0.2, 3.8, 0.5, true);
        write_wav(
            &stereo,
            spec,
            samples.iter().zip(&second).flat_map(|(a, b)| [*a, *b]),
        );
        assert_eq!(detector.analyse_file(&stereo).unwrap(), in_memory);

        // 16 and 24-bit integers: the same events within rounding.
        for bits in [16u16, 24] {
            let mono = dir.path().join(format!("mono-i{bits}.wav"));
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: RATE,
                bits_per_sample: bits,
                sample_format: hound::SampleFormat::Int,
            };
            let full_scale = (1i64 << (bits - 1)) as f32;
            write_wav(
                &mono,
                spec,
                samples.iter().map(|s| (s * full_scale).round() as i32),
            );
            let from_file = detector.analyse_file(&mono).unwrap();
            assert_eq!(
                from_file.len(),
                in_memory.len(),
                "{bits} bits: {from_file:#?}"
            );
            for (a, b) in from_file.iter().zip(&in_memory) {
                assert!((a.start_s - b.start_s).abs() < 0.011, "{a:?} {b:?}");
                assert!((a.end_s - b.end_s).abs() < 0.011, "{a:?} {b:?}");
                assert!((a.low_hz - b.low_hz).abs() < 100.0, "{a:?} {b:?}");
                assert!((a.high_hz - b.high_hz).abs() < 100.0, "{a:?} {b:?}");
                assert!((a.score - b.score).abs() < 0.02, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn samples_decode_as_hound_reads_them() {
        use hound::SampleFormat::{Float, Int};
        let dir = tempfile::tempdir().unwrap();
        // 24 bits in 4 bytes has WAVE_FORMAT_EXTENSIBLE's longer header.
        let cases = [
            (Int, 8, 1),
            (Int, 16, 2),
            (Int, 24, 3),
            (Int, 24, 4),
            (Int, 32, 4),
            (Float, 32, 4),
        ];
        for (format, bits, bytes) in cases {
            let path = dir.path().join(format!("{format:?}-{bits}-{bytes}.wav"));
            let spec = hound::WavSpec {
                channels: 3,
                sample_rate: RATE,
                bits_per_sample: bits,
                sample_format: format,
            };
            let spec_ex = hound::WavSpecEx {
                spec,
                bytes_per_sample: bytes,
            };
            let file = std::io::BufWriter::new(File::create(&path).unwrap());
            let mut writer = hound::WavWriter::new_with_spec_ex(file, spec_ex).unwrap();
            let values: Vec<f64> = (0..3000)
                .map(|i| (f64::from(i) / 1500.0 - 1.0) * 0.999)
                .collect();
            for v in &values {
                for channel in 0..3 {
                    let v = if channel == 0 { *v } else { -*v };
                    match format {
                        Float => writer.write_sample(v as f32).unwrap(),
                        Int => {
                            let full_scale = f64::from(1u32 << (bits - 1));
                            writer
                                .write_sample((v * full_scale).floor() as i32)
                                .unwrap()
                        }
                    }
                }
            }
            writer.finalize().unwrap();

            let mut decoded = Vec::new();
            WavFile { path: &path }
                .stream(&mut |chunk| {
                    decoded.extend_from_slice(chunk);
                    ControlFlow::Continue(())
                })
                .unwrap();
            let mut reader = hound::WavReader::open(&path).unwrap();
            let expected: Vec<f32> = match format {
                Float => reader
                    .samples::<f32>()
                    .step_by(3)
                    .map(Result::unwrap)
                    .collect(),
                Int => {
                    let full_scale = f64::from(1u32 << (bits - 1));
                    reader
                        .samples::<i32>()
                        .step_by(3)
                        .map(|s| (f64::from(s.unwrap()) / full_scale) as f32)
                        .collect()
                }
            };
            assert_eq!(decoded, expected, "{format:?} {bits} bits in {bytes} bytes");
            let error = values
                .iter()
                .zip(&decoded)
                .map(|(v, d)| (v - f64::from(*d)).abs());
            let worst = error.fold(0.0, f64::max);
            assert!(
                worst <= 1.0 / 128.0,
                "{format:?} {bits}/{bytes}: off by {worst}"
            );
        }
    }

    #[test]
    fn other_chunks_before_the_samples_are_skipped_and_a_cut_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut samples = noise(2.0, 0.01, 10);
        add_tone(&mut samples, 3000.0, 0.5, 1.0, 0.1, true);
        let plain = dir.path().join("plain.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        write_wav(&plain, spec, samples.iter().map(|s| (s * 32_767.0) as i16));
        let detector = birds();
        let expected = detector.analyse_file(&plain).unwrap();
        assert_eq!(expected.len(), 1, "{expected:#?}");

        // A LIST chunk (as other recorders write) between the format and the data.
        let mut bytes = std::fs::read(&plain).unwrap();
        let data_at = bytes.windows(4).position(|w| w == b"data").unwrap();
        let list = [b"LIST".as_slice(), &6u32.to_le_bytes(), b"roost!"].concat();
        bytes.splice(data_at..data_at, list.iter().copied());
        let riff_len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) + list.len() as u32;
        bytes[4..8].copy_from_slice(&riff_len.to_le_bytes());
        let listed = dir.path().join("listed.wav");
        std::fs::write(&listed, &bytes).unwrap();
        assert_eq!(detector.analyse_file(&listed).unwrap(), expected);

        // Cut short of what its header says, as by a power cut before the header was fixed.
        bytes.truncate(bytes.len() - 1000);
        let cut = dir.path().join("cut.wav");
        std::fs::write(&cut, &bytes).unwrap();
        let error = detector.analyse_file(&cut).unwrap_err();
        assert!(matches!(error, DetectError::Io { .. }), "{error:?}");

        let empty = dir.path().join("empty.wav");
        write_wav(&empty, spec, std::iter::empty::<i16>());
        assert_eq!(detector.analyse_file(&empty).unwrap(), Vec::new());
    }

    #[test]
    fn unreadable_files_are_errors_with_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let detector = birds();
        let missing = dir.path().join("missing.wav");
        let error = detector.analyse_file(&missing).unwrap_err();
        assert!(
            matches!(&error, DetectError::Io { path, .. } if *path == missing),
            "{error:?}"
        );
        assert!(std::error::Error::source(&error).is_some());

        let junk = dir.path().join("junk.wav");
        std::fs::write(&junk, b"not a wav at all, just text").unwrap();
        let error = detector.analyse_file(&junk).unwrap_err();
        assert!(matches!(error, DetectError::Wav { .. }), "{error:?}");
        assert!(std::error::Error::source(&error).is_some());

        // A consistent header for IMA ADPCM (format tag 0x11), which hound does not decode.
        let adpcm = dir.path().join("adpcm.wav");
        let mut bytes = b"RIFF".to_vec();
        bytes.extend(36u32.to_le_bytes());
        bytes.extend(b"WAVEfmt ");
        bytes.extend(16u32.to_le_bytes());
        bytes.extend(0x11u16.to_le_bytes()); // format tag
        bytes.extend(1u16.to_le_bytes()); // channels
        bytes.extend(RATE.to_le_bytes());
        bytes.extend((RATE * 2).to_le_bytes()); // bytes per second
        bytes.extend(2u16.to_le_bytes()); // block align
        bytes.extend(16u16.to_le_bytes()); // bits per sample
        bytes.extend(b"data");
        bytes.extend(0u32.to_le_bytes());
        std::fs::write(&adpcm, bytes).unwrap();
        let error = detector.analyse_file(&adpcm).unwrap_err();
        assert!(
            matches!(error, DetectError::Unsupported { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("adpcm.wav"), "{error}");
    }

    #[test]
    fn frames_are_short_enough_for_50_ms_edges_at_every_common_rate() {
        for rate in [
            8_000, 16_000, 22_050, 44_100, 48_000, 96_000, 192_000, 250_000, 384_000,
        ] {
            let geometry = Geometry::new(&birds(), rate).unwrap();
            let window_s = geometry.fft_len as f64 / f64::from(rate);
            let hop_s = geometry.hop as f64 / f64::from(rate);
            assert!(
                window_s <= MAX_WINDOW_S && window_s > MAX_WINDOW_S / 2.0,
                "{rate}: {geometry:?}"
            );
            assert!(hop_s <= 0.01, "{rate}: {geometry:?}");
        }
        let above_nyquist = BandEnergy {
            low_hz: 9000.0,
            ..birds()
        };
        assert!(Geometry::new(&above_nyquist, 16_000).is_none());
        let narrow = BandEnergy {
            low_hz: 3000.0,
            high_hz: 3001.0,
            ..birds()
        };
        assert_eq!(Geometry::new(&narrow, RATE).unwrap().bins.len(), 1);
    }
}
