//! Spectrogram PNGs of WAV files: a 1024-point Hann STFT (half overlap), power averaged into at
//! most [`MAX_WIDTH`] columns, in dB over an 80 dB range mapped to grey, low frequencies at the
//! bottom. The WAV is streamed, never read whole into memory (a recording can be hundreds of
//! megabytes). Renders are cached by file stem; this module never writes beside the recordings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use realfft::RealFftPlanner;

/// Points of each FFT; the image is `FFT_LEN / 2` rows high.
pub const FFT_LEN: usize = 1024;
/// Samples between the starts of two frames (half overlap).
const HOP: usize = FFT_LEN / 2;
/// Widest image in pixels; longer recordings average several frames into a column.
pub const MAX_WIDTH: usize = 800;
/// Range of levels shown below the loudest cell, in dB; quieter cells are black.
const DYNAMIC_RANGE_DB: f64 = 80.0;

/// Why a spectrogram cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum SpectrogramError {
    /// The WAV cannot be opened or decoded.
    #[error("cannot read the recording {path}")]
    Wav {
        /// The WAV file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: hound::Error,
    },
    /// The PNG cannot be encoded.
    #[error("cannot encode the spectrogram of {path}")]
    Png {
        /// The WAV file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: png::EncodingError,
    },
}

/// Most bytes the spectrogram cache may hold (the oldest pictures go first).
pub const CACHE_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Where rendered pictures are kept, and their bounds. Derived files never compete with
/// recordings: the cache is bounded, lives off the recordings' file system (nothing is cached
/// when `dir` is on the same one), and a picture goes when its recording has gone.
#[derive(Clone, Debug)]
pub struct Cache {
    /// The cache folder (`<state>/run/cache/spectrograms`).
    pub dir: PathBuf,
    /// The storage's `recordings/`, where each picture's recording is looked for.
    pub recordings_dir: PathBuf,
    /// Most bytes the folder may hold.
    pub max_bytes: u64,
    /// Whether the cache folder shares a file system with the recordings (no RAM folder for
    /// run-time files): then nothing is cached, so a picture never takes a recording's place.
    pub beside_recordings: bool,
}

/// The cached PNG for `wav` (`<stem>.png` in the cache), rendered and stored first when it is
/// not there. The WAV name is unique, so a cached file never goes stale. A cache that cannot
/// be written only costs a render next time.
pub fn cached(wav: &Path, cache: &Cache) -> Result<Vec<u8>, SpectrogramError> {
    let stem = wav.file_stem().map(|s| s.to_string_lossy().into_owned());
    let cache_file = stem.map(|s| cache.dir.join(format!("{s}.png")));
    let from_cache = || cache_file.as_ref().and_then(|f| std::fs::read(f).ok());
    if let Some(bytes) = from_cache() {
        return Ok(bytes);
    }
    // One render at a time, so many clients asking at once cost one render's memory and one
    // core; who waited gets the cached result.
    static RENDERING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = RENDERING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(bytes) = from_cache() {
        return Ok(bytes);
    }
    let (png, whole) = render_checked(wav)?;
    // A file drawn only to where its data ended may be completed later (salvage): not cached.
    if let Some(file) = cache_file.filter(|_| whole) {
        cache.store(&file, &png);
    }
    Ok(png)
}

impl Cache {
    /// Stores `png` as `file` when the cache may hold it, after making room: pictures of
    /// recordings that are gone first, then the oldest.
    fn store(&self, file: &Path, png: &[u8]) {
        if self.beside_recordings || std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        self.sweep(self.max_bytes.saturating_sub(png.len() as u64));
        if png.len() as u64 > self.max_bytes {
            return;
        }
        if let Err(e) = crate::fsutil::replace_quietly(file, png) {
            tracing::warn!(file = %file.display(), error = %e, "cannot cache the spectrogram");
        }
    }

    /// The page's cache in `dir` for the recordings in `recordings_dir`, bounded by
    /// [`CACHE_MAX_BYTES`], off when `dir`'s parent lies on the recordings' file system.
    pub fn new(dir: PathBuf, recordings_dir: PathBuf) -> Self {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
        // The cache folder may not be made yet: the nearest folder above it that is.
        let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(&dir);
        let beside_recordings = match (dev(existing), dev(&recordings_dir)) {
            (Ok(a), Ok(b)) => a == b,
            // Either not there now: cache nothing rather than guess.
            _ => true,
        };
        Self {
            dir,
            recordings_dir,
            max_bytes: CACHE_MAX_BYTES,
            beside_recordings,
        }
    }

    /// Removes the pictures of recordings that are gone, then the oldest until the rest holds
    /// at most `keep` bytes.
    pub fn sweep(&self, keep: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut pictures: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if !self.recording_of(&path).is_some_and(|wav| wav.exists()) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            pictures.push((modified, meta.len(), path));
        }
        pictures.sort();
        let mut total: u64 = pictures.iter().map(|(_, len, _)| len).sum();
        for (_, len, path) in pictures {
            if total <= keep {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }

    /// The recording a cached picture was drawn from (`recordings/YYYY/MM/DD/<stem>.wav`).
    fn recording_of(&self, picture: &Path) -> Option<PathBuf> {
        let stem = picture.file_stem()?.to_str()?;
        let wav = format!("{stem}.wav");
        let start = crate::storage::start_from_file_name(Path::new(&wav))?;
        let day = crate::storage::recording_path(&self.recordings_dir, start);
        Some(day.with_file_name(wav))
    }
}

/// Renders the spectrogram of the first channel of `wav` as a greyscale PNG.
///
/// A recording shorter than one frame (the first file after a start is cut at the next file
/// boundary, sometimes after a few milliseconds) is padded with silence to one column, and a
/// data chunk that ends early (a file cut by a power failure and not yet salvaged) is drawn up
/// to where it ends: every recording the page lists gets a picture. A read error of the device
/// (EIO) is an error, not an end.
pub fn render(wav: &Path) -> Result<Vec<u8>, SpectrogramError> {
    render_checked(wav).map(|(png, _)| png)
}

/// [`render`], and whether the whole data chunk was read.
fn render_checked(wav: &Path) -> Result<(Vec<u8>, bool), SpectrogramError> {
    let wav_err = |source| SpectrogramError::Wav {
        path: wav.to_path_buf(),
        source,
    };
    let reader = hound::WavReader::open(wav).map_err(wav_err)?;
    let spec = reader.spec();
    let frames_total = (reader.duration() as usize).saturating_sub(FFT_LEN) / HOP + 1;
    let mut stft = Stft::new(frames_total.div_ceil(MAX_WIDTH));
    let channels = spec.channels as usize;
    let first_channel = |i: &usize| i.is_multiple_of(channels);
    let whole = match spec.sample_format {
        hound::SampleFormat::Float => {
            let samples = reader
                .into_samples::<f32>()
                .enumerate()
                .filter(|(i, _)| first_channel(i));
            feed(&mut stft, samples.map(|(_, s)| s)).map_err(wav_err)?
        }
        hound::SampleFormat::Int => {
            let full_scale = (1u64 << (spec.bits_per_sample - 1)) as f32;
            let samples = reader
                .into_samples::<i32>()
                .enumerate()
                .filter(|(i, _)| first_channel(i));
            let scaled = samples.map(|(_, s)| s.map(|s| s as f32 / full_scale));
            feed(&mut stft, scaled).map_err(wav_err)?
        }
    };
    let columns = stft.finish();
    let png = encode(&columns).map_err(|source| SpectrogramError::Png {
        path: wav.to_path_buf(),
        source,
    })?;
    Ok((png, whole))
}

/// Pushes samples until the stream ends; a data chunk cut short ends it too. Returns whether
/// the stream ended where the header said.
fn feed(
    stft: &mut Stft,
    samples: impl Iterator<Item = Result<f32, hound::Error>>,
) -> Result<bool, hound::Error> {
    for sample in samples {
        match sample {
            Ok(s) => stft.push(s),
            // hound reports a data chunk shorter than its header says as an I/O error of its
            // own making; one from the operating system (EIO) carries its errno.
            Err(hound::Error::IoError(e)) if e.raw_os_error().is_none() => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A streaming short-time Fourier transform that averages power over groups of frames.
struct Stft {
    fft: Arc<dyn realfft::RealToComplex<f32>>,
    window: Vec<f32>,
    pending: Vec<f32>,
    input: Vec<f32>,
    spectrum: Vec<realfft::num_complex::Complex<f32>>,
    frames_per_column: usize,
    sum: Vec<f64>,
    frames_in_sum: usize,
    columns: Vec<Vec<f64>>,
}

impl Stft {
    fn new(frames_per_column: usize) -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(FFT_LEN);
        let window = (0..FFT_LEN)
            .map(|n| {
                let x = std::f32::consts::TAU * n as f32 / FFT_LEN as f32;
                0.5 - 0.5 * x.cos()
            })
            .collect();
        Self {
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            fft,
            window,
            pending: Vec::with_capacity(FFT_LEN),
            frames_per_column,
            sum: vec![0.0; FFT_LEN / 2],
            frames_in_sum: 0,
            columns: Vec::new(),
        }
    }

    fn push(&mut self, sample: f32) {
        self.pending.push(sample);
        if self.pending.len() < FFT_LEN {
            return;
        }
        for ((x, s), w) in self.input.iter_mut().zip(&self.pending).zip(&self.window) {
            *x = s * w;
        }
        // Lengths come from the plan itself, so the transform cannot fail.
        let _ = self.fft.process(&mut self.input, &mut self.spectrum);
        for (acc, c) in self.sum.iter_mut().zip(&self.spectrum) {
            *acc += c.norm_sqr() as f64;
        }
        self.frames_in_sum += 1;
        if self.frames_in_sum == self.frames_per_column {
            self.flush();
        }
        self.pending.drain(..HOP);
    }

    fn flush(&mut self) {
        let n = self.frames_in_sum as f64;
        self.columns.push(self.sum.iter().map(|p| p / n).collect());
        self.sum.iter_mut().for_each(|p| *p = 0.0);
        self.frames_in_sum = 0;
    }

    /// Columns of mean power per bin (bin 0 first).
    fn finish(mut self) -> Vec<Vec<f64>> {
        if self.columns.is_empty() && self.frames_in_sum == 0 {
            // Shorter than one frame: pad with silence so the image has one column.
            while self.columns.is_empty() && self.frames_in_sum == 0 {
                self.push(0.0);
            }
        }
        if self.frames_in_sum > 0 {
            self.flush();
        }
        self.columns
    }
}

/// One grey pixel per (column, bin), the highest bin on the top row.
fn encode(columns: &[Vec<f64>]) -> Result<Vec<u8>, png::EncodingError> {
    let width = columns.len();
    let height = FFT_LEN / 2;
    let db = |p: f64| 10.0 * (p + 1e-20).log10();
    let loudest = columns
        .iter()
        .flatten()
        .map(|&p| db(p))
        .fold(f64::NEG_INFINITY, f64::max);
    let mut pixels = vec![0u8; width * height];
    for (x, column) in columns.iter().enumerate() {
        for (bin, &p) in column.iter().enumerate() {
            let level = ((db(p) - loudest + DYNAMIC_RANGE_DB) / DYNAMIC_RANGE_DB).clamp(0.0, 1.0);
            let row = height - 1 - bin;
            pixels[row * width + x] = (level * 255.0).round() as u8;
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone_wav(path: &Path, rate: u32, hz: f32, seconds: f32) {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for n in 0..(rate as f32 * seconds) as usize {
            let t = n as f32 / rate as f32;
            let s = 0.5 * (std::f32::consts::TAU * hz * t).sin();
            w.write_sample((s * i16::MAX as f32) as i16).unwrap();
        }
        w.finalize().unwrap();
    }

    fn decode(png_bytes: &[u8]) -> (usize, usize, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        buf.truncate(info.buffer_size());
        (info.width as usize, info.height as usize, buf)
    }

    #[test]
    fn a_1_khz_tone_is_the_brightest_row_at_1_khz() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("tone.wav");
        let rate = 48_000;
        tone_wav(&wav, rate, 1000.0, 2.0);
        let (width, height, pixels) = decode(&render(&wav).unwrap());
        assert_eq!(height, FFT_LEN / 2);
        assert!(width > 100 && width <= MAX_WIDTH, "width {width}");
        let row_sum = |r: usize| -> u64 {
            pixels[r * width..(r + 1) * width]
                .iter()
                .map(|&p| p as u64)
                .sum()
        };
        let brightest = (0..height).max_by_key(|&r| row_sum(r)).unwrap();
        let bin = 1000.0 * FFT_LEN as f64 / rate as f64;
        let expected_row = (height - 1) as f64 - bin;
        assert!(
            (brightest as f64 - expected_row).abs() <= 1.0,
            "brightest row {brightest}, 1 kHz at row {expected_row:.1}"
        );
    }

    #[test]
    fn long_recordings_are_capped_in_width_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let recordings = dir.path().join("recordings");
        let start: jiff::Timestamp = "2026-06-01T04:30:00Z".parse().unwrap();
        let wav = crate::storage::recording_path(&recordings, start);
        std::fs::create_dir_all(wav.parent().unwrap()).unwrap();
        tone_wav(&wav, 8_000, 500.0, 60.0); // 937 frames
        let cache = test_cache(dir.path(), 1 << 20);
        let first = cached(&wav, &cache).unwrap();
        let (width, _, _) = decode(&first);
        assert!(width <= MAX_WIDTH, "width {width}");
        let png = cache.dir.join("20260601T043000.000000Z.png");
        assert_eq!(std::fs::read(&png).unwrap(), first);
        assert_eq!(
            cached(&wav, &cache).unwrap(),
            first,
            "served from the cache"
        );
        // The recording gone: its picture goes at the next sweep.
        std::fs::remove_file(&wav).unwrap();
        cache.sweep(u64::MAX);
        assert!(!png.exists());
    }

    /// A cache in `dir/cache` for `dir/recordings`, holding at most `max_bytes`, allowed on the
    /// same file system (unit tests have one).
    fn test_cache(dir: &Path, max_bytes: u64) -> Cache {
        Cache {
            dir: dir.join("cache"),
            recordings_dir: dir.join("recordings"),
            max_bytes,
            beside_recordings: false,
        }
    }

    /// The cache never holds more than its bound (the oldest pictures go first), and caches
    /// nothing on the recordings' own file system.
    #[test]
    fn the_cache_is_bounded_and_never_beside_the_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let recordings = dir.path().join("recordings");
        let mut sizes = Vec::new();
        let t0: jiff::Timestamp = "2026-06-01T04:30:00Z".parse().unwrap();
        let wavs: Vec<PathBuf> = (0..6)
            .map(|i| {
                let wav = crate::storage::recording_path(
                    &recordings,
                    t0 + jiff::SignedDuration::from_secs(i),
                );
                std::fs::create_dir_all(wav.parent().unwrap()).unwrap();
                tone_wav(&wav, 8_000, 500.0 + 100.0 * i as f32, 2.0);
                wav
            })
            .collect();
        let unbounded = test_cache(dir.path(), u64::MAX);
        for wav in &wavs {
            sizes.push(cached(wav, &unbounded).unwrap().len() as u64);
        }
        std::fs::remove_dir_all(&unbounded.dir).unwrap();
        // Room for three pictures.
        let bound = sizes[..3].iter().sum::<u64>() + 10;
        let cache = test_cache(dir.path(), bound);
        for wav in &wavs {
            cached(wav, &cache).unwrap();
            // Pictures written in the same instant keep their order by name.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let held: u64 = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(held <= bound, "{held} > {bound}");
        assert!(
            cache.dir.join("20260601T043005.000000Z.png").exists(),
            "the newest stays"
        );
        assert!(
            !cache.dir.join("20260601T043000.000000Z.png").exists(),
            "the oldest went"
        );
        let beside = Cache::new(dir.path().join("cache2"), recordings.clone());
        assert!(beside.beside_recordings);
        cached(&wavs[0], &beside).unwrap();
        assert!(!beside.dir.exists(), "nothing cached beside the recordings");
    }

    #[test]
    fn short_empty_and_cut_recordings_still_get_a_picture() {
        let dir = tempfile::tempdir().unwrap();
        // 0 samples, 80 samples (10 ms at 8 kHz), one sample short of a frame, exactly one frame.
        for (name, seconds, columns) in [
            ("empty", 0.0, 1),
            ("short", 0.01, 1),
            ("almost", 1023.5 / 8000.0, 1),
            ("one-frame", 1024.5 / 8000.0, 1),
        ] {
            let wav = dir.path().join(format!("{name}.wav"));
            tone_wav(&wav, 8_000, 500.0, seconds);
            let (width, height, _) = decode(&render(&wav).unwrap());
            assert_eq!((width, height), (columns, FFT_LEN / 2), "{name}");
        }
        // A 1 s file whose data chunk was cut after 0.5 s (header still says 1 s).
        let cut = dir.path().join("cut.wav");
        tone_wav(&cut, 8_000, 500.0, 1.0);
        let len = std::fs::metadata(&cut).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
        file.set_len(len - 8_000).unwrap();
        let (width, _, _) = decode(&render(&cut).unwrap());
        assert_eq!(
            width,
            (4_000 - FFT_LEN) / HOP + 1,
            "frames of the half that is there"
        );
        let cache = test_cache(dir.path(), 1 << 20);
        cached(&cut, &cache).unwrap();
        assert!(
            !cache.dir.join("cut.png").exists(),
            "a cut file's picture is not cached"
        );
    }

    #[test]
    fn not_a_wav_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.wav");
        std::fs::write(&junk, b"not a wav").unwrap();
        assert!(matches!(render(&junk), Err(SpectrogramError::Wav { .. })));
    }
}
