//! Costs against the size of the archive (issue 22): `cargo bench --bench archive -- [N ...]`
//! builds, for each N (default 10000 130000), a storage of N one-a-minute recordings
//! (`roost::archive`, in a folder under $ARCHIVE_DIR or /tmp) and prints, each measured in a
//! process of its own (so that memory figures are that work's alone):
//! - curator start-up: CPU of its first round, resident memory (VmHWM) after it;
//! - work per new file: CPU and SQLite VM steps of the round after one new recording arrives
//!   (median of 20), and of a round where nothing arrived;
//! - curator CPU at one file a minute (the work per file plus one idle look, over 60 s);
//! - `roost plan`'s preview of the curator (CPU);
//! - metadata.db bytes per recording;
//! - with `--new-rules`: an archive whose keep rules are new (nothing decided): `roost plan`
//!   and the curator's first pass.
//! - with `--v6`: the same archive in an older roost's layout (version 6, `roost::archive::
//!   as_roost_v6`) converted to acoupi's at the first open (issue 23): wall and CPU time,
//!   VmHWM, metadata.db's bytes before and after.
//!
//! `cargo bench --bench archive -- --measure KIND DIR` runs one measurement (internal).

use std::path::{Path, PathBuf};
use std::time::Instant;

use roost::archive::{ArchiveShape, build};
use roost::curate::config::CurateConfig;
use roost::curate::run::Curator;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--measure") {
        measure(&args[1], Path::new(&args[2]));
        return;
    }
    let sizes: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 130_000]
    } else {
        sizes
    };
    let base = PathBuf::from(std::env::var("ARCHIVE_DIR").unwrap_or_else(|_| "/tmp".into()));
    for n in sizes {
        let dir = base.join(format!("roost-archive-{n}"));
        if !dir.join("storage/metadata.db").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            let t = Instant::now();
            let shape = ArchiveShape {
                recordings: n,
                ..ArchiveShape::default()
            };
            build(&dir.join("storage"), &shape, jiff::Timestamp::now()).expect("archive");
            println!("built {n} recordings in {:.1} s", t.elapsed().as_secs_f64());
        }
        println!("== {n} recordings ==");
        if args.iter().any(|a| a == "--new-rules") {
            new_rules(&base, n);
        }
        if args.iter().any(|a| a == "--v6") {
            v6(&base, n);
            continue;
        }
        for kind in ["curator", "plan"] {
            measure_in_child(kind, &dir);
        }
    }
}

/// Keep rules new to an archive of `n` recordings (none decided yet): the curator's first
/// pass and `roost plan` on it, each in a process of its own.
fn new_rules(base: &Path, n: u64) {
    let dir = base.join(format!("roost-archive-{n}-new-rules"));
    if !dir.join("storage/metadata.db").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let shape = ArchiveShape {
            recordings: n,
            decided: false,
            ..ArchiveShape::default()
        };
        build(&dir.join("storage"), &shape, jiff::Timestamp::now()).expect("archive");
    }
    println!("== {n} recordings, keep rules new ==");
    for kind in ["plan", "first-pass"] {
        measure_in_child(kind, &dir);
    }
}

/// An archive of `n` recordings as an older roost (layout 6) left it, converted by the first
/// open, in a process of its own, from the same copy each time.
fn v6(base: &Path, n: u64) {
    let dir = base.join(format!("roost-archive-{n}-v6"));
    let pristine = dir.join("metadata.v6-pristine.db");
    if !pristine.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let shape = ArchiveShape {
            recordings: n,
            ..ArchiveShape::default()
        };
        build(&dir.join("storage"), &shape, jiff::Timestamp::now()).expect("archive");
        roost::archive::as_roost_v6(&dir.join("storage")).expect("layout 6");
        std::fs::copy(dir.join("storage/metadata.db"), &pristine).unwrap();
    }
    println!("== {n} recordings in layout 6, converted ==");
    for _ in 0..3 {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("storage/metadata.db{suffix}")));
        }
        std::fs::copy(&pristine, dir.join("storage/metadata.db")).unwrap();
        measure_in_child("convert", &dir);
    }
}

/// Runs measurement `kind` on the archive in `dir` in a process of its own (its memory figures
/// are that work's alone), with a fresh state folder of its own.
fn measure_in_child(kind: &str, dir: &Path) {
    let work = dir.join(format!("work-{kind}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--measure", kind, dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "{kind} measurement failed");
}

fn config(dir: &Path) -> CurateConfig {
    roost::archive::curate_config(
        dir,
        "[{detection: {detector: band, minScore: 0.5}}, {every: 10m}]",
        "100GiB",
    )
    .unwrap()
}

fn measure(kind: &str, dir: &Path) {
    let state = dir.join(format!("work-{kind}"));
    let config = config(dir);
    match kind {
        "curator" => curator(config, &state),
        "first-pass" => {
            let mut curator = Curator::new(config, &state);
            let (t, wall) = (cpu_s(), Instant::now());
            curator.round_now();
            let s = &curator.report().storage;
            println!(
                "first pass of new keep rules: {} decided ({} kept, {} deleted) in {:.1} s ({:.1} s CPU), in commits of 256; VmHWM {} KiB",
                s.kept_this_run + s.deleted_this_run,
                s.kept_this_run,
                s.deleted_this_run,
                wall.elapsed().as_secs_f64(),
                cpu_s() - t,
                vm_hwm_kib()
            );
        }
        "plan" => {
            let t = cpu_s();
            let preview = roost::curate::preview(&config).unwrap();
            println!(
                "roost plan (curator preview): {:.3} s CPU, {} recordings: {} would be deleted, {} kept, {} not judged; VmHWM {} KiB",
                cpu_s() - t,
                preview.recordings,
                preview.would_delete.len(),
                preview.kept,
                preview.not_judged,
                vm_hwm_kib()
            );
            let db = dir.join("storage/metadata.db");
            let bytes = std::fs::metadata(&db).map_or(0, |m| m.len())
                + std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len());
            println!(
                "metadata.db: {bytes} bytes, {} bytes per recording",
                bytes / preview.recordings.max(1) as u64
            );
        }
        "convert" => {
            let db = dir.join("storage/metadata.db");
            let before = std::fs::metadata(&db).map_or(0, |m| m.len());
            let (t, wall) = (cpu_s(), Instant::now());
            let storage =
                roost::storage::Storage::open(&config.storage_path(), &config.storage).unwrap();
            let (wall, cpu) = (wall.elapsed().as_secs_f64(), cpu_s() - t);
            drop(storage);
            let after = std::fs::metadata(&db).map_or(0, |m| m.len());
            println!(
                "converted to acoupi's layout: {wall:.2} s ({cpu:.2} s CPU), VmHWM {} KiB; metadata.db {before} -> {after} bytes",
                vm_hwm_kib()
            );
        }
        _ => panic!("unknown measurement {kind}"),
    }
}

fn curator(config: CurateConfig, state: &Path) {
    let storage_path = config.storage_path();
    let mut curator = Curator::new(config.clone(), state);
    let t = cpu_s();
    curator.round_now();
    println!(
        "curator start-up: {:.3} s CPU, VmHWM {} KiB, VmRSS {} KiB",
        cpu_s() - t,
        vm_hwm_kib(),
        vm_rss_kib()
    );
    let mut storage = roost::storage::Storage::open(&storage_path, &config.storage).unwrap();
    let deployment = storage
        .start_deployment("archive", None, jiff::Timestamp::now())
        .unwrap();
    let mut per_file = Vec::new();
    let mut steps = Vec::new();
    for _ in 0..20 {
        let start = jiff::Timestamp::now();
        let path = roost::storage::recording_path(&storage.recordings_dir(), start);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, roost::archive::wav_bytes(400)).unwrap();
        let rec = roost::storage::NewRecording {
            path,
            datetime: start,
            duration_s: 0.05,
            samplerate_hz: roost::archive::SAMPLERATE_HZ,
            audio_channels: 1,
        };
        storage.register(&rec, &deployment).unwrap();
        let (cpu, vm) = counted(&mut curator);
        per_file.push(cpu);
        steps.push(vm);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (idle_cpu, idle_steps) = counted(&mut curator);
    let per_file_s = median(&mut per_file);
    println!(
        "work per new file: {:.1} ms CPU (median of 20), {} VM steps; a round with nothing new: {:.1} ms, {} VM steps",
        per_file_s * 1e3,
        median_u(&mut steps),
        idle_cpu * 1e3,
        idle_steps
    );
    println!(
        "curator at one file a minute: {:.3} % of a core; VmHWM {} KiB after 21 rounds",
        (per_file_s + idle_cpu) / 60.0 * 100.0,
        vm_hwm_kib()
    );
}

/// CPU seconds and SQLite VM steps (thousands, from the curator's connection) of one round.
fn counted(curator: &mut Curator) -> (f64, u64) {
    let steps0 = curator.vm_steps();
    let t = cpu_s();
    curator.round_now();
    (cpu_s() - t, curator.vm_steps() - steps0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_u(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn cpu_s() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    tv(u.user_time()) + tv(u.system_time())
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn vm_hwm_kib() -> u64 {
    status_kib("VmHWM:")
}

fn vm_rss_kib() -> u64 {
    status_kib("VmRSS:")
}
