//! One WAV file being written: hound writes the samples into a temporary file whose space was
//! reserved up front without changing its size (so a disk that fills cannot tear it, and the
//! size always says how much was written); the data is flushed to the card every
//! `syncInterval` (the most audio a power cut can cost); on completion the file is trimmed,
//! given a GUANO metadata chunk and fsynced. [`salvage`] completes a temporary file a crash
//! left behind from its size alone: the data after the header is plain PCM, so no header
//! checkpoint is needed (on ext4's default `data=ordered`, a size on disk never covers data
//! that did not reach it).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use jiff::Timestamp;

use crate::spec::recorder::SampleFormat;

/// Extra bytes reserved beyond the audio for the header and the GUANO chunk.
pub const RESERVE_EXTRA: u64 = 8192;

type Writer = hound::WavWriter<BufWriter<File>>;

/// A sample as the writer holds it: i16, i32 (24-bit) or f32.
pub trait WavSample: Copy + Default + Send + 'static + hound::Sample {
    /// Appends samples; i16 (the common case) uses hound's block writer.
    fn write_all(writer: &mut Writer, samples: &[Self]) -> hound::Result<()> {
        for &s in samples {
            writer.write_sample(s)?;
        }
        Ok(())
    }
}
impl WavSample for i16 {
    fn write_all(writer: &mut Writer, samples: &[Self]) -> hound::Result<()> {
        // Files of i16 samples are always written as 16-bit integers (see `hound_spec`).
        let mut block = writer.get_i16_writer(samples.len() as u32);
        for &s in samples {
            block.write_sample(s);
        }
        block.flush()
    }
}
impl WavSample for i32 {}
impl WavSample for f32 {}

/// Format of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WavFormat {
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Channels per frame.
    pub channels: u16,
    /// Sample encoding.
    pub sample_format: SampleFormat,
}

impl WavFormat {
    fn hound_spec(self) -> hound::WavSpec {
        let (bits, format) = match self.sample_format {
            SampleFormat::I16 => (16, hound::SampleFormat::Int),
            SampleFormat::I24 => (24, hound::SampleFormat::Int),
            SampleFormat::F32 => (32, hound::SampleFormat::Float),
        };
        hound::WavSpec {
            channels: self.channels,
            sample_rate: self.sample_rate,
            bits_per_sample: bits,
            sample_format: format,
        }
    }

    /// Bytes of one frame (all channels).
    pub fn bytes_per_frame(self) -> u64 {
        u64::from(self.channels) * u64::from(self.sample_format.bytes_per_sample())
    }

    /// Size of the header hound writes before the samples.
    fn header_bytes(self) -> u64 {
        if self.channels > 2 || self.sample_format != SampleFormat::I16 {
            68
        } else {
            44
        }
    }
}

/// What goes into the GUANO chunk.
#[derive(Clone, Debug)]
pub struct Guano {
    /// When the first sample was captured.
    pub start: Timestamp,
    /// The deployment's name.
    pub deployment: String,
    /// The ALSA device name.
    pub device: String,
    /// Where, in decimal degrees, when the spec says.
    pub latitude_longitude: Option<(f64, f64)>,
    /// Whether the kernel said the wall clock was synchronised when the file started.
    pub clock_synchronized: Option<bool>,
    /// Seconds by which the start lies before the end of an earlier file (clock stepped back).
    pub time_overlap_s: Option<f64>,
    /// What the board's firmware said while the file was made (`undervoltage, throttled`):
    /// audio taken under undervoltage or a capped clock can glitch. `None`: nothing, or a
    /// board that does not say.
    pub power: Option<String>,
}

impl Guano {
    fn text(&self, format: WavFormat, frames: u64, file_name: &str) -> String {
        let mut s = String::from("GUANO|Version:1.0\n");
        s += &format!(
            "Timestamp:{}\n",
            self.start.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        );
        s += &format!("Samplerate:{}\n", format.sample_rate);
        s += &format!(
            "Length:{:.6}\n",
            frames as f64 / f64::from(format.sample_rate)
        );
        if let Some((lat, lon)) = self.latitude_longitude {
            s += &format!("Loc Position:{lat} {lon}\n");
        }
        s += "Make:roost\n";
        s += &format!("Firmware Version:{}\n", env!("CARGO_PKG_VERSION"));
        s += &format!("Original Filename:{file_name}\n");
        s += &format!("ROOST|Deployment:{}\n", single_line(&self.deployment));
        s += &format!("ROOST|Device:{}\n", single_line(&self.device));
        s += &format!("ROOST|Channels:{}\n", format.channels);
        s += &format!("ROOST|Sample Format:{}\n", format.sample_format);
        if let Some(synced) = self.clock_synchronized {
            s += &format!(
                "ROOST|Clock Synchronized:{}\n",
                if synced { "yes" } else { "no" }
            );
        }
        if let Some(overlap) = self.time_overlap_s {
            s += &format!("ROOST|Time Overlap:{overlap:.6}\n");
        }
        if let Some(power) = &self.power {
            s += &format!("ROOST|Power:{}\n", single_line(power));
        }
        s
    }
}

fn single_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// How a file's audio is pushed to the card while it is written (its end is always fsynced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Nothing before the end (`syncInterval: 0s`).
    AtEnd,
    /// `fdatasync` every interval: each one a journal commit and a cache flush of the card.
    Datasync(std::time::Duration),
    /// On ext3/ext4 with ordered data: the audio written so far is handed to the kernel's
    /// write-back every interval (whole pages, no wait, no forced commit); the file system's own
    /// next commit, at most its commit interval later, makes the new size durable. The interval
    /// is `syncInterval` less that commit interval, so the bound is still `syncInterval`.
    WriteBack(std::time::Duration),
}

impl Flush {
    /// The plan for `sync_interval` on a file system whose ordered journal commits every
    /// `journal_commit` (`None`: not such a file system). Write-back needs at least 1 s of its
    /// own; a shorter remainder falls back to `fdatasync`.
    pub fn plan(
        sync_interval: std::time::Duration,
        journal_commit: Option<std::time::Duration>,
    ) -> Self {
        let one_second = std::time::Duration::from_secs(1);
        match journal_commit {
            _ if sync_interval.is_zero() => Self::AtEnd,
            Some(commit) if sync_interval >= commit + one_second => {
                Self::WriteBack(sync_interval - commit)
            }
            _ => Self::Datasync(sync_interval),
        }
    }

    fn interval(self) -> std::time::Duration {
        match self {
            Self::AtEnd => std::time::Duration::ZERO,
            Self::Datasync(every) | Self::WriteBack(every) => every,
        }
    }
}

/// The page size write-back works in; the last, partial page waits for the next round so it
/// is not written twice.
const PAGE: u64 = 4096;

/// A file being written.
pub struct WavFile<T: WavSample> {
    writer: Writer,
    file: File,
    format: WavFormat,
    frames: u64,
    max_frames: u64,
    /// How audio reaches the card between the file's start and its end.
    flush: Flush,
    /// Samples between flushes (0: at the end only).
    sync_every: u64,
    samples_since_sync: u64,
    /// Bytes from the file's start handed to the kernel's write-back so far ([`Flush::WriteBack`]).
    written_back: u64,
    /// The folder holding the file, fsynced with the first flush so that the name survives a
    /// power cut along with the data (a file that ends first is placed, and synced, by its move).
    dir_to_sync: Option<std::path::PathBuf>,
    _sample: std::marker::PhantomData<T>,
}

impl<T: WavSample> WavFile<T> {
    /// Creates `temp` with room reserved for `max_frames` frames, flushed to the card every
    /// `sync_interval` of audio (zero: at the end only). Fails with ENOSPC when not even that
    /// fits; the caller decides how many frames to ask for.
    pub fn create(
        temp: &Path,
        format: WavFormat,
        max_frames: u64,
        sync_interval: std::time::Duration,
    ) -> std::io::Result<Self> {
        let file = File::create_new(temp)?;
        let bytes = max_frames * format.bytes_per_frame() + RESERVE_EXTRA;
        // KEEP_SIZE: the blocks are the file's, its size grows only as data is written.
        let keep_size = nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        // off_t has 32 bits on armhf: a reservation past 2 GiB stops there, and the rest is
        // written without the guarantee, as on a file system that cannot reserve.
        let reserve = nix::libc::off_t::try_from(bytes).unwrap_or(nix::libc::off_t::MAX);
        if let Err(e) = nix::fcntl::fallocate(&file, keep_size, 0, reserve) {
            // EINVAL/EOPNOTSUPP: the file system cannot reserve; write without the guarantee.
            if e == nix::errno::Errno::ENOSPC {
                drop(file);
                let _ = std::fs::remove_file(temp);
                return Err(e.into());
            }
        }
        let flush = Flush::plan(
            sync_interval,
            temp.parent()
                .and_then(crate::fsutil::ordered_journal_commit),
        );
        let writer_file = file.try_clone()?;
        let writer = hound::WavWriter::new(
            BufWriter::with_capacity(64 * 1024, writer_file),
            format.hound_spec(),
        )
        .map_err(hound_to_io)?;
        Ok(Self {
            writer,
            file,
            format,
            frames: 0,
            max_frames,
            flush,
            sync_every: (flush.interval().as_secs_f64()
                * f64::from(format.sample_rate)
                * f64::from(format.channels)) as u64,
            samples_since_sync: 0,
            written_back: 0,
            dir_to_sync: temp.parent().map(Path::to_path_buf),
            _sample: std::marker::PhantomData,
        })
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Frames the file was created for.
    pub fn max_frames(&self) -> u64 {
        self.max_frames
    }

    /// Appends whole frames.
    pub fn write(&mut self, samples: &[T]) -> std::io::Result<()> {
        T::write_all(&mut self.writer, samples).map_err(hound_to_io)?;
        let channels = u64::from(self.format.channels);
        self.frames += samples.len() as u64 / channels;
        self.samples_since_sync += samples.len() as u64;
        if self.sync_every > 0 && self.samples_since_sync >= self.sync_every {
            self.samples_since_sync = 0;
            self.writer.flush().map_err(hound_to_io)?;
            match self.flush {
                Flush::WriteBack(_) => self.write_back()?,
                _ => self.datasync()?,
            }
        }
        Ok(())
    }

    /// The flush in use.
    pub fn flush_mode(&self) -> Flush {
        self.flush
    }

    fn datasync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        if let Some(dir) = self.dir_to_sync.take() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Starts write-back of the whole pages written since the last round (POSIX_FADV_DONTNEED
    /// starts it without waiting and drops the pages once clean: audio is never read back). The
    /// journal's next commit carries the new size and the file's name.
    fn write_back(&mut self) -> std::io::Result<()> {
        let end = (self.format.header_bytes() + self.frames * self.format.bytes_per_frame()) / PAGE
            * PAGE;
        if end > self.written_back {
            let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
            // off_t has 32 bits on armhf: past 2 GiB the pages are left to the kernel's own
            // write-back.
            let from = nix::libc::off_t::try_from(self.written_back);
            let len = nix::libc::off_t::try_from(end - self.written_back);
            if let (Ok(from), Ok(len)) = (from, len) {
                nix::fcntl::posix_fadvise(&self.file, from, len, advice)?;
            }
            self.written_back = end;
        }
        Ok(())
    }

    /// Finalizes the header, trims the reservation, appends GUANO and fsyncs. Returns the frames.
    pub fn finish(self, guano: &Guano, file_name: &str) -> std::io::Result<u64> {
        let Self {
            writer,
            file,
            format,
            frames,
            ..
        } = self;
        writer.finalize().map_err(hound_to_io)?;
        complete(&file, format, frames, guano, file_name)?;
        Ok(frames)
    }

    /// Gives up on a file after a write error: the caller salvages what reached the disk.
    pub fn abandon(self) {
        // hound's Drop rewrites the header for what it buffered; salvage trusts only the file length.
        drop(self);
    }
}

fn hound_to_io(e: hound::Error) -> std::io::Error {
    match e {
        hound::Error::IoError(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Trims `file` to its header and `frames` frames, appends a GUANO chunk and fixes the sizes.
fn complete(
    file: &File,
    format: WavFormat,
    frames: u64,
    guano: &Guano,
    file_name: &str,
) -> std::io::Result<()> {
    let header = format.header_bytes();
    let data_bytes = frames * format.bytes_per_frame();
    let data_end = header + data_bytes;
    let mut f = file;
    f.set_len(data_end)?;
    // The data size field sits just before the data.
    f.seek(SeekFrom::Start(header - 4))?;
    f.write_all(&(data_bytes as u32).to_le_bytes())?;
    f.seek(SeekFrom::Start(data_end))?;
    if data_bytes % 2 == 1 {
        f.write_all(&[0])?;
    }
    let mut text = guano.text(format, frames, file_name).into_bytes();
    let text_len = text.len() as u32;
    if text.len() % 2 == 1 {
        text.push(0);
    }
    let mut chunk = Vec::with_capacity(8 + text.len());
    chunk.extend_from_slice(b"guan");
    chunk.extend_from_slice(&text_len.to_le_bytes());
    chunk.extend_from_slice(&text);
    // On a full disk the metadata chunk may not fit; the audio matters more.
    if let Err(e) = f.write_all(&chunk) {
        tracing::warn!(error = %e, "cannot append the GUANO chunk; keeping the file without it");
        f.set_len(data_end + data_bytes % 2)?;
    }
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(4))?;
    f.write_all(&((len - 8) as u32).to_le_bytes())?;
    f.sync_all()
}

/// Completes a temporary file left by a crash or a write error: keeps every whole frame present
/// on disk after the header (the header's own sizes are not trusted: hound writes them at the
/// end). Returns the frames kept and the format, or `None` when the file holds no readable audio.
pub fn salvage(
    temp: &Path,
    guano: &Guano,
    file_name: &str,
) -> std::io::Result<Option<(u64, WavFormat)>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(temp)?;
    let len = file.metadata()?.len();
    // A header of zeros (space reserved by an older roost's posix_fallocate, a file system
    // that zero-filled after a power cut) means an empty file, not a damaged one.
    let mut head = [0u8; 44];
    let read = std::io::Read::read(&mut (&file), &mut head)?;
    if head[..read].iter().all(|&b| b == 0) {
        return Ok(None);
    }
    std::io::Seek::seek(&mut (&file), std::io::SeekFrom::Start(0))?;
    // A header that cannot be read is not "no audio": the caller keeps such a file aside.
    let unreadable = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let reader = hound::WavReader::new(std::io::BufReader::new(&file))
        .map_err(|e| unreadable(format!("unreadable WAV header: {e}")))?;
    let spec = reader.spec();
    let sample_format = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => SampleFormat::I16,
        (hound::SampleFormat::Int, 24) => SampleFormat::I24,
        (hound::SampleFormat::Float, 32) => SampleFormat::F32,
        (f, bits) => {
            return Err(unreadable(format!(
                "unexpected sample format {f:?} {bits} bits"
            )));
        }
    };
    let format = WavFormat {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        sample_format,
    };
    let declared = u64::from(reader.duration());
    drop(reader);
    let header = format.header_bytes();
    // A file completed (GUANO appended) whose move into recordings/ a crash undid: its header
    // is right and what follows the data is metadata, not audio.
    let declared_end = header + declared * format.bytes_per_frame();
    let completed = declared > 0 && chunk_id_at(&file, declared_end + declared_end % 2) == *b"guan";
    let frames = match completed {
        true => declared,
        false => len.saturating_sub(header) / format.bytes_per_frame(),
    };
    if frames == 0 {
        return Ok(None);
    }
    complete(&file, format, frames, guano, file_name)?;
    Ok(Some((frames, format)))
}

/// The four bytes at `offset`, or zeros when the file is shorter.
fn chunk_id_at(file: &File, offset: u64) -> [u8; 4] {
    use std::os::unix::fs::FileExt;
    let mut id = [0u8; 4];
    match file.read_exact_at(&mut id, offset) {
        Ok(()) => id,
        Err(_) => [0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNC: std::time::Duration = std::time::Duration::from_secs(10);

    fn guano() -> Guano {
        Guano {
            start: "2026-06-01T10:00:00Z".parse().unwrap(),
            deployment: "meadow".into(),
            device: "default".into(),
            latitude_longitude: Some((51.5, -0.12)),
            clock_synchronized: Some(false),
            time_overlap_s: Some(1.5),
            power: Some("undervoltage, throttled".into()),
        }
    }

    #[test]
    fn a_preallocated_file_whose_header_never_reached_the_disk_holds_no_audio() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 10, 44, 1 << 20] {
            let p = dir.path().join(format!("{len}.wav.part"));
            std::fs::write(&p, vec![0u8; len]).unwrap();
            assert!(salvage(&p, &guano(), "x.wav").unwrap().is_none(), "{len}");
        }
        let junk = dir.path().join("junk.wav.part");
        std::fs::write(&junk, b"RIFX not a wav file at all, but not empty either").unwrap();
        assert!(salvage(&junk, &guano(), "x.wav").is_err());
    }

    #[test]
    fn files_read_back_with_guano() {
        let dir = tempfile::tempdir().unwrap();
        for (fmt, channels) in [
            (SampleFormat::I16, 1),
            (SampleFormat::I24, 3),
            (SampleFormat::F32, 2),
        ] {
            let format = WavFormat {
                sample_rate: 8000,
                channels,
                sample_format: fmt,
            };
            let p = dir.path().join(format!("{fmt}.wav"));
            match fmt {
                SampleFormat::I16 => {
                    let mut w = WavFile::<i16>::create(&p, format, 20_000, SYNC).unwrap();
                    let s: Vec<i16> = (0..9001 * channels as i16)
                        .map(|i| i.wrapping_mul(7))
                        .collect();
                    w.write(&s).unwrap();
                    assert_eq!(w.finish(&guano(), "x.wav").unwrap(), 9001);
                    let r: Vec<i16> = hound::WavReader::open(&p)
                        .unwrap()
                        .into_samples()
                        .map(|s| s.unwrap())
                        .collect();
                    assert_eq!(r, s);
                }
                SampleFormat::I24 => {
                    let mut w = WavFile::<i32>::create(&p, format, 20_000, SYNC).unwrap();
                    let s: Vec<i32> = (0..9001 * i32::from(channels))
                        .map(|i| i * 100 - 8_000_000)
                        .collect();
                    w.write(&s).unwrap();
                    w.finish(&guano(), "x.wav").unwrap();
                    let r: Vec<i32> = hound::WavReader::open(&p)
                        .unwrap()
                        .into_samples()
                        .map(|s| s.unwrap())
                        .collect();
                    assert_eq!(r, s);
                }
                SampleFormat::F32 => {
                    let mut w = WavFile::<f32>::create(&p, format, 20_000, SYNC).unwrap();
                    let s: Vec<f32> = (0..9001 * channels)
                        .map(|i| f32::from(i) / 20_000.0)
                        .collect();
                    w.write(&s).unwrap();
                    w.finish(&guano(), "x.wav").unwrap();
                    let r: Vec<f32> = hound::WavReader::open(&p)
                        .unwrap()
                        .into_samples()
                        .map(|s| s.unwrap())
                        .collect();
                    assert_eq!(r, s);
                }
            }
            let bytes = std::fs::read(&p).unwrap();
            let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(riff + 8, bytes.len(), "{fmt}");
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                text.contains("GUANO|Version:1.0\nTimestamp:2026-06-01T10:00:00.000000Z"),
                "{fmt}"
            );
            assert!(text.contains("ROOST|Deployment:meadow"));
        }
    }

    /// Kill -9 at any moment: every whole frame hound handed to the kernel is kept, whatever the
    /// header says; a cut mid-frame loses that frame only. A power cut that loses what was not
    /// yet synced is the same as a file truncated to its last synced length.
    #[test]
    fn salvage_keeps_every_whole_frame_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let format = WavFormat {
            sample_rate: 8000,
            channels: 2,
            sample_format: SampleFormat::I16,
        };
        let s: Vec<i16> = (0..40_000).map(|i| i as i16).collect();
        let header = format.header_bytes();
        // (frames written, bytes cut from the end (a torn frame), frames expected)
        for (written, cut, kept) in [
            (20_000, 0, 20_000),
            (20_000, 3, 19_999),
            (9_000, 0, 9_000),
            (1, 0, 1),
        ] {
            let p = dir.path().join(format!("{written}-{cut}.wav.part"));
            let mut w = WavFile::<i16>::create(&p, format, 80_000, SYNC).unwrap();
            w.write(&s[..written * 2]).unwrap();
            // Simulate kill -9: what hound buffered reaches the kernel, nothing finalizes.
            w.writer.flush().unwrap();
            std::mem::forget(w);
            let len = std::fs::metadata(&p).unwrap().len();
            assert_eq!(
                len,
                header + written as u64 * 4,
                "the size says what was written"
            );
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(len - cut).unwrap();
            let (frames, _) = salvage(&p, &guano(), "x.wav").unwrap().unwrap();
            assert_eq!(frames, kept);
            let r: Vec<i16> = hound::WavReader::open(&p)
                .unwrap()
                .into_samples()
                .map(|s| s.unwrap())
                .collect();
            assert_eq!(r, s[..kept as usize * 2]);
        }
    }

    /// A completed file (GUANO appended) left in .partial by a crash before its move keeps
    /// exactly its frames: the metadata after them is not taken for audio.
    #[test]
    fn salvage_of_a_completed_file_keeps_its_frames() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("done.wav.part");
        let format = WavFormat {
            sample_rate: 8000,
            channels: 1,
            sample_format: SampleFormat::I16,
        };
        let s: Vec<i16> = (0..8001).map(|i| i as i16).collect();
        let mut w = WavFile::<i16>::create(&p, format, 8001, SYNC).unwrap();
        w.write(&s).unwrap();
        w.finish(&guano(), "done.wav").unwrap();
        let (frames, _) = salvage(&p, &guano(), "done.wav").unwrap().unwrap();
        assert_eq!(frames, 8001);
        let r: Vec<i16> = hound::WavReader::open(&p)
            .unwrap()
            .into_samples()
            .map(|s| s.unwrap())
            .collect();
        assert_eq!(r, s);
    }

    /// The reservation does not show in the size, and finishing gives back what was not used.
    #[test]
    fn reserved_space_is_returned_when_the_file_ends() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.wav");
        let format = WavFormat {
            sample_rate: 48_000,
            channels: 1,
            sample_format: SampleFormat::I16,
        };
        let mut w = WavFile::<i16>::create(&p, format, 48_000 * 60, SYNC).unwrap();
        w.write(&vec![1i16; 48_000]).unwrap();
        w.finish(&guano(), "r.wav").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert!(meta.len() < 100_000, "{}", meta.len());
        // Allocated blocks: about the file, not the 5.8 MB reserved for 60 s.
        assert!(meta.blocks() * 512 < 200_000, "{} blocks", meta.blocks());
    }

    #[test]
    fn the_flush_follows_the_journal_under_the_file() {
        let secs = std::time::Duration::from_secs;
        assert_eq!(Flush::plan(secs(0), Some(secs(5))), Flush::AtEnd);
        assert_eq!(
            Flush::plan(secs(10), Some(secs(5))),
            Flush::WriteBack(secs(5))
        );
        assert_eq!(
            Flush::plan(secs(6), Some(secs(5))),
            Flush::WriteBack(secs(1))
        );
        assert_eq!(
            Flush::plan(secs(5), Some(secs(5))),
            Flush::Datasync(secs(5))
        );
        assert_eq!(
            Flush::plan(secs(2), Some(secs(5))),
            Flush::Datasync(secs(2))
        );
        assert_eq!(Flush::plan(secs(10), None), Flush::Datasync(secs(10)));
        assert_eq!(
            Flush::plan(secs(60), Some(secs(30))),
            Flush::WriteBack(secs(30))
        );
    }
}
