//! A sound card for machines without one: a generated, deterministic signal written into a FIFO
//! that ALSA's `file` plugin reads as a capture device (see `write_test_asound_conf`). Used by
//! `roost feed`, the README quick start, the end-to-end tests and the benchmark. The signal is a
//! pure function of the frame number, so a test can recompute what the recorder should have got.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Sample `channel` of frame `frame`: a repeating 100 Hz-8 kHz sweep whose low 6 bits carry the
/// frame number, so that a lost or repeated period is visible.
pub fn test_signal(frame: u64, channel: u16, sample_rate: u32) -> i16 {
    let rate = f64::from(sample_rate);
    let period = 10.0; // seconds per sweep
    let t = (frame as f64 / rate) % period;
    let (f0, f1) = (100.0, 8000.0f64.min(rate / 4.0));
    let k = (f1 - f0) / period;
    let phase = 2.0 * std::f64::consts::PI * (f0 * t + 0.5 * k * t * t) + f64::from(channel);
    let value = (phase.sin() * 12_000.0) as i16;
    (value & !0x3f) | ((frame + u64::from(channel)) & 0x3f) as i16
}

/// What the feeder writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Signal {
    /// [`test_signal`]: a sweep carrying the frame number (sample-exact checks).
    #[default]
    Sweep,
    /// [`events_signal`]: tone bursts at known times over faint noise (detector checks).
    Events,
}

/// The period of [`events_signal`], s.
pub const EVENTS_PERIOD_S: f64 = 2.0;
/// The in-band burst of [`events_signal`]: (start s, end s, Hz) within each period.
pub const EVENT_IN_BAND: (f64, f64, f64) = (0.5, 0.8, 3000.0);
/// The out-of-band burst: (start s, end s, Hz) within each period (a band of 2-5 kHz misses it).
pub const EVENT_OUT_OF_BAND: (f64, f64, f64) = (1.3, 1.5, 7000.0);

/// Sample of frame `frame`: every [`EVENTS_PERIOD_S`] a 3 kHz burst ([`EVENT_IN_BAND`]) and a
/// 7 kHz burst ([`EVENT_OUT_OF_BAND`], at most 0.45 of the sample rate) over faint
/// deterministic noise; the rest is that noise alone. Channels carry the same signal.
pub fn events_signal(frame: u64, sample_rate: u32) -> i16 {
    let rate = f64::from(sample_rate);
    let t = frame as f64 / rate;
    let within = t % EVENTS_PERIOD_S;
    // A small xorshift of the frame number: noise at about -50 dBFS.
    let mut x = frame.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    let noise = ((x % 201) as f64 - 100.0) * 1.0;
    let burst = |(from, to, hz): (f64, f64, f64)| {
        let hz = hz.min(rate * 0.45);
        if within >= from && within < to {
            (2.0 * std::f64::consts::PI * hz * t).sin() * 8000.0
        } else {
            0.0
        }
    };
    (noise + burst(EVENT_IN_BAND) + burst(EVENT_OUT_OF_BAND)) as i16
}

/// Interleaved S16_LE bytes of `frames` frames starting at `first_frame`.
pub fn signal_bytes(first_frame: u64, frames: u64, sample_rate: u32, channels: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames as usize * usize::from(channels) * 2);
    for f in first_frame..first_frame + frames {
        for c in 0..channels {
            out.extend_from_slice(&test_signal(f, c, sample_rate).to_le_bytes());
        }
    }
    out
}

/// An open FIFO being fed. Dropping it closes the FIFO (the reader then sees end of file).
pub struct Feeder {
    fifo: File,
    sample_rate: u32,
    channels: u16,
    period_frames: u32,
    /// Frames written so far.
    pub frames: u64,
    /// How late the latest paced write was, at worst (a full pipe shows here).
    pub max_lateness: Duration,
    /// What is written (default: the sweep).
    pub signal: Signal,
}

impl Feeder {
    /// Creates the FIFO if missing and opens it read-write, so that neither side's open blocks.
    pub fn open(
        fifo: &Path,
        sample_rate: u32,
        channels: u16,
        period_frames: u32,
    ) -> std::io::Result<Self> {
        if !fifo.exists() {
            nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(std::io::Error::from)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(fifo)?;
        // A deep pipe absorbs a slow reader for a while instead of blocking the writer at once.
        let _ = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        Ok(Self {
            fifo: file,
            sample_rate,
            channels,
            period_frames: period_frames.max(1),
            frames: 0,
            max_lateness: Duration::ZERO,
            signal: Signal::Sweep,
        })
    }

    /// Writes `periods` capture periods as fast as the reader takes them.
    pub fn write_unpaced(&mut self, periods: u64) -> std::io::Result<()> {
        for _ in 0..periods {
            self.write_period()?;
        }
        Ok(())
    }

    fn write_period(&mut self) -> std::io::Result<()> {
        let frames = u64::from(self.period_frames);
        let bytes = match self.signal {
            Signal::Sweep => signal_bytes(self.frames, frames, self.sample_rate, self.channels),
            Signal::Events => (self.frames..self.frames + frames)
                .flat_map(|f| {
                    let v = events_signal(f, self.sample_rate).to_le_bytes();
                    std::iter::repeat_n(v, usize::from(self.channels)).flatten()
                })
                .collect(),
        };
        self.fifo.write_all(&bytes)?;
        self.frames += u64::from(self.period_frames);
        Ok(())
    }

    /// Writes one period every period duration, to absolute deadlines, for `duration` (or until
    /// `keep_going` returns false).
    pub fn write_paced(
        &mut self,
        duration: Option<Duration>,
        mut keep_going: impl FnMut() -> bool,
    ) -> std::io::Result<()> {
        let start = Instant::now();
        let first = self.frames;
        let rate = f64::from(self.sample_rate);
        let total = duration.map(|d| (d.as_secs_f64() * rate) as u64);
        loop {
            let written = self.frames - first;
            if total.is_some_and(|t| written >= t) || !keep_going() {
                return Ok(());
            }
            let deadline = start + Duration::from_secs_f64(written as f64 / rate);
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            } else {
                self.max_lateness = self.max_lateness.max(now - deadline);
            }
            self.write_period()?;
        }
    }
}

/// `roost feed`: feeds the test signal into `fifo` at real-time pace, in chunks of exactly one
/// capture period (the file plugin reads one period per `read()` and pads a short read with
/// silence), for `seconds` or until killed.
pub fn run_feeder(
    fifo: &Path,
    sample_rate: u32,
    channels: u16,
    period_frames: u32,
    seconds: Option<f64>,
    signal: Signal,
) -> std::io::Result<()> {
    let mut feeder = Feeder::open(fifo, sample_rate, channels, period_frames)?;
    feeder.signal = signal;
    feeder.write_paced(seconds.map(Duration::from_secs_f64), || true)?;
    if feeder.max_lateness > Duration::from_millis(100) {
        tracing::warn!(
            "feed: the reader fell behind by up to {:.0} ms",
            feeder.max_lateness.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// Writes an ALSA configuration (for `ALSA_CONFIG_PATH`) in which the default capture device,
/// and a listed device named `roost_test`, read raw S16_LE samples at `rate` Hz and `channels`
/// channels from `infile` (or from `$ROOST_TEST_INFILE` when `infile` is `None`, `/dev/zero`
/// when that is unset), through alsa-lib's `file` plugin and `plug` conversion.
pub fn write_test_asound_conf(
    path: &Path,
    infile: Option<&Path>,
    rate: u32,
    channels: u16,
) -> std::io::Result<()> {
    write_test_asound_conf_format(path, infile, rate, channels, "S16_LE")
}

/// Like [`write_test_asound_conf`] with raw samples in ALSA format `alsa_format` ("S24_LE",
/// "FLOAT_LE", ...). A capture in the same format passes through `plug` unconverted.
pub fn write_test_asound_conf_format(
    path: &Path,
    infile: Option<&Path>,
    rate: u32,
    channels: u16,
    alsa_format: &str,
) -> std::io::Result<()> {
    let infile = match infile {
        Some(p) => format!("\"{}\"", p.display()),
        None => "{ @func getenv vars [ ROOST_TEST_INFILE ] default \"/dev/zero\" }".to_string(),
    };
    let conf = format!(
        r#"# Written by roost: a capture device fed from a file or FIFO (no sound card needed).
defaults.pcm.minperiodtime 5000
pcm.roost_filecap {{
    type file
    slave.pcm {{ type null }}
    file "/dev/null"
    infile {infile}
    format "raw"
}}
pcm.roost_test {{
    type plug
    slave {{ pcm "roost_filecap" format {alsa_format} channels {channels} rate {rate} }}
    hint {{ show on description "roost test signal (ALSA file plugin)" }}
}}
pcm.!default {{
    type plug
    slave {{ pcm "roost_filecap" format {alsa_format} channels {channels} rate {rate} }}
}}
"#
    );
    crate::fsutil::write_atomic(path, conf.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_is_deterministic_and_counts_frames() {
        assert_eq!(test_signal(12345, 0, 48_000), test_signal(12345, 0, 48_000));
        for f in 0..200u64 {
            assert_eq!((test_signal(f, 0, 48_000) & 0x3f) as u64, f & 0x3f);
        }
        assert_eq!(signal_bytes(0, 10, 48_000, 2).len(), 40);
    }
}
