//! Band-energy detector cost: `cargo bench --bench detect` writes 60 s mono 16-bit WAVs at
//! 48 and 384 kHz (white noise with 20 tones and sweeps in the 2-8 kHz band, and one tone
//! outside it) and prints, for each, the median time of `BandEnergy::analyse_file` over several
//! runs as times real time (wall and CPU time), the events found against those planted, and
//! the resident memory one analysis adds (VmHWM after less VmRSS before, in a child process of
//! its own so that no earlier run's heap is reused). `ROOST_BENCH_RUNS` sets the runs (default 7).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use roost::detect::band_energy::{BandEnergy, Event};

const SECONDS: f64 = 60.0;
const CHILD: &str = "ROOST_DETECT_BENCH_MEMORY_OF";

fn detector() -> BandEnergy {
    BandEnergy {
        low_hz: 2000.0,
        high_hz: 8000.0,
        threshold_db: 12.0,
        min_duration: Duration::from_millis(100),
    }
}

/// A planted sound: from `start_s` for `length_s`, a sweep from `from_hz` to `to_hz`.
struct Planted {
    start_s: f64,
    length_s: f64,
    from_hz: f64,
    to_hz: f64,
    amplitude: f64,
}

fn planted() -> Vec<Planted> {
    let mut sounds: Vec<Planted> = (0..20)
        .map(|i| {
            let f = i as f64;
            let from_hz = 2500.0 + 200.0 * f;
            Planted {
                start_s: 1.0 + 3.0 * f,
                length_s: 0.15 + 0.05 * (i % 10) as f64,
                from_hz,
                // Every other one a sweep up by 1.5 kHz, as many bird notes are.
                to_hz: if i % 2 == 0 {
                    from_hz
                } else {
                    from_hz + 1500.0
                },
                amplitude: 0.03 + 0.02 * (i % 8) as f64,
            }
        })
        .collect();
    // Outside the band: must not be found.
    sounds.push(Planted {
        start_s: 2.5,
        length_s: 0.5,
        from_hz: 12_000.0,
        to_hz: 12_000.0,
        amplitude: 0.3,
    });
    sounds
}

fn write_recording(path: &Path, rate: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let sounds = planted();
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..(SECONDS * f64::from(rate)) as usize {
        let t = n as f64 / f64::from(rate);
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let unit = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        let mut s = 0.01 * (2.0 * unit - 1.0);
        for p in &sounds {
            let local = t - p.start_s;
            if (0.0..p.length_s).contains(&local) {
                let edge = (local.min(p.length_s - local) / 0.005).min(1.0);
                let gain = 0.5 - 0.5 * (std::f64::consts::PI * edge).cos();
                let rate_of_sweep = (p.to_hz - p.from_hz) / p.length_s;
                let phase = std::f64::consts::TAU
                    * (p.from_hz * local + rate_of_sweep * local * local / 2.0);
                s += p.amplitude * gain * phase.sin();
            }
        }
        writer.write_sample((s * 32767.0).round() as i16).unwrap();
    }
    writer.finalize().unwrap();
}

/// Planted in-band sounds with an event starting and ending within 50 ms of them.
fn matched(events: &[Event]) -> usize {
    planted()
        .iter()
        .filter(|p| p.from_hz < 8000.0)
        .filter(|p| {
            events.iter().any(|e| {
                (e.start_s - p.start_s).abs() <= 0.05
                    && (e.end_s - p.start_s - p.length_s).abs() <= 0.05
                    && e.low_hz <= p.from_hz.min(p.to_hz)
                    && e.high_hz >= p.from_hz.max(p.to_hz)
            })
        })
        .count()
}

/// CPU time this process has used (user and system): the figure on a machine shared with
/// other work, where wall time also counts waiting for a core.
fn cpu_time() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let seconds = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    seconds(usage.user_time()) + seconds(usage.system_time())
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// In the child: one analysis, then "<rss before> <peak after>" in KiB.
fn measure_memory(path: &Path) {
    // Resets VmHWM to the current VmRSS (Linux 4.0 and later).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let events = detector().analyse_file(path).unwrap();
    let peak = status_kib("VmHWM:");
    assert!(!events.is_empty());
    println!("{before} {peak}");
}

fn main() {
    if let Ok(path) = std::env::var(CHILD) {
        measure_memory(Path::new(&path));
        return;
    }
    let runs: usize = std::env::var("ROOST_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    for rate in [48_000u32, 384_000] {
        let path = dir.path().join(format!("bench-{rate}.wav"));
        write_recording(&path, rate);
        let size_mib = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;

        let child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, &path)
            .output()
            .unwrap();
        assert!(child.status.success(), "{child:?}");
        let figures: Vec<u64> = String::from_utf8(child.stdout)
            .unwrap()
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        let (before, peak) = (figures[0], figures[1]);

        let mut times = Vec::new();
        let mut cpu_times = Vec::new();
        let mut events = Vec::new();
        for _ in 0..runs {
            let (t, cpu) = (Instant::now(), cpu_time());
            events = detector().analyse_file(&path).unwrap();
            times.push(t.elapsed());
            cpu_times.push(cpu_time() - cpu);
        }
        times.sort();
        cpu_times.sort();
        let median = times[times.len() / 2];
        let median_cpu = cpu_times[cpu_times.len() / 2];
        let in_band = planted().iter().filter(|p| p.from_hz < 8000.0).count();
        println!(
            "{} kHz mono 16-bit, {SECONDS} s ({size_mib:.1} MiB): median {median:.3?} of {runs} runs \
             ({:.0}x real time; fastest {:.3?}, slowest {:.3?}), CPU time (user + system) median \
             {median_cpu:.3?} ({:.0}x real time); {} events, {}/{in_band} planted found within \
             50 ms; memory added {} KiB (VmRSS {before} KiB before, VmHWM {peak} KiB)",
            rate / 1000,
            SECONDS / median.as_secs_f64(),
            times[0],
            times[times.len() - 1],
            SECONDS / median_cpu.as_secs_f64(),
            events.len(),
            matched(&events),
            peak.saturating_sub(before),
        );
    }
}
