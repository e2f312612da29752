//! End-to-end tests of `roost record`: real ALSA (file plugin over a FIFO) through cpal, the real
//! binary, real SQLite and real files. Waits are on the recorder's report, with generous
//! timeouts, so that a loaded 2-core machine only makes them slower.

mod recorder_common;

use std::path::PathBuf;
use std::time::Duration;

use recorder_common::{KillOnDrop, PacedFeeder, Rig, Tmpfs, signal, terminate, wait_exit};
use roost::recorder::RecorderState;
use roost::recorder::feed::{Feeder, signal_bytes};
use serde_json::json;

const LONG: Duration = Duration::from_secs(40);

fn samples(path: &PathBuf) -> Vec<i16> {
    hound::WavReader::open(path)
        .unwrap()
        .into_samples::<i16>()
        .map(|s| s.unwrap())
        .collect()
}

#[test]
fn continuous_files_concatenate_to_exactly_the_fed_samples() {
    let rate = 16_000;
    // The device by its listed name, to exercise lookup by name.
    let rig = Rig::new(rate, json!({"device": "roost_test"}), json!({}));
    // 3.5 s of signal at real-time pace (input far faster is refused: DEP_E315); then the FIFO
    // stays open and silent.
    let mut feeder = Feeder::open(&rig.fifo, rate, 1, rig.period).unwrap();
    let mut child = KillOnDrop(rig.spawn_recorder());
    let feeding = std::thread::spawn(move || {
        feeder
            .write_paced(Some(Duration::from_millis(3500)), || true)
            .unwrap();
        feeder
    });
    let feeder = feeding.join().unwrap();
    let fed_frames = feeder.frames;
    // Stop by sample count: once every fed frame is in, the silent device is reported lost.
    rig.wait_report("all fed samples captured", LONG, |r| {
        r.samples_captured >= fed_frames && r.state == RecorderState::DeviceUnavailable
    });
    let status = terminate(&mut child.0);
    assert!(status.success(), "{status:?}\n{}", rig.log());
    let report = rig.report().unwrap();
    assert_eq!(report.state, RecorderState::Stopped);
    assert_eq!(report.samples_dropped, 0);
    assert_eq!(report.error, None, "{:#?}", report);

    let files = rig.recordings();
    assert!(files.len() >= 4, "{files:?}");
    let mut all = Vec::new();
    for f in &files {
        all.extend(samples(f));
    }
    let expected: Vec<i16> = signal_bytes(0, fed_frames, rate, 1)
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(all.len(), expected.len(), "frames recorded vs fed");
    assert!(
        all == expected,
        "the concatenated files differ from the fed signal"
    );
    // Inner files are exactly one second; each starts where the previous one ended.
    for f in &files[1..files.len() - 1] {
        assert_eq!(samples(f).len(), rate as usize, "{}", f.display());
    }
    let starts: Vec<jiff::Timestamp> = files
        .iter()
        .map(|f| roost::storage::start_from_file_name(f).unwrap())
        .collect();
    for (i, w) in starts.windows(2).enumerate() {
        let len = samples(&files[i]).len() as f64 / f64::from(rate);
        let gap = w[1].duration_since(w[0]).as_secs_f64();
        assert!(
            (gap - len).abs() < 2e-5,
            "file {i}: {gap} s apart, {len} s long"
        );
    }
    let text = String::from_utf8_lossy(&std::fs::read(&files[0]).unwrap()).into_owned();
    assert!(
        text.contains("GUANO|Version:1.0")
            && text.contains("ROOST|Deployment:meadow-test")
            && text.contains("Loc Position:51.5 -0.12")
    );
    rig.assert_consistent();
    assert_eq!(rig.row_count(), files.len() as i64);
}

#[test]
fn kill_9_mid_file_then_restart_leaves_a_consistent_storage() {
    let rate = 16_000;
    let rig = Rig::new(rate, json!({"duration": "6s"}), json!({}));
    let feeder = PacedFeeder::start(&rig.fifo, rate, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    rig.wait_report("one file", LONG, |r| r.files_written >= 1);
    // Mid-file: 2.5 s into the next 6 s file.
    std::thread::sleep(Duration::from_millis(2500));
    signal(&child.0, nix::sys::signal::Signal::SIGKILL);
    wait_exit(&mut child.0, Duration::from_secs(10));
    let partial: Vec<_> = std::fs::read_dir(rig.storage.join(".partial"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(partial.len(), 1, "a file was being written");
    let rows_before = rig.row_count();

    let mut child = KillOnDrop(rig.spawn_recorder());
    let report = rig.wait_report("restart", LONG, |r| {
        r.state == RecorderState::Recording && r.pid == child.0.id()
    });
    assert_eq!(report.repair.salvaged.len(), 1, "{:#?}", report.repair);
    assert!(report.repair.quarantined.is_empty() && report.repair.rows_removed.is_empty());
    let salvaged = &report.repair.salvaged[0];
    let frames = samples(salvaged).len();
    assert!(
        frames >= rate as usize && frames < 6 * rate as usize,
        "{frames}"
    );
    rig.wait_report("a file after restart", LONG, |r| r.files_written >= 1);
    let status = terminate(&mut child.0);
    assert!(status.success(), "{}", rig.log());
    drop(feeder);
    rig.assert_consistent();
    assert!(rig.row_count() >= rows_before + 2);
    // One deployment row, continued across the crash.
    let conn = rusqlite::Connection::open(rig.storage.join("metadata.db")).unwrap();
    let deployments: i64 = conn
        .query_row("SELECT count(*) FROM deployment", [], |r| r.get(0))
        .unwrap();
    assert_eq!(deployments, 1);
    let orphans: i64 = conn
        .query_row(
            "SELECT count(*) FROM recording WHERE deployment_id NOT IN (SELECT id FROM deployment)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
}

/// A power cut loses at most `syncInterval` of audio: kill -9 mid-file, then the file cut back
/// to the last multiple of `syncInterval` the writer synced (what a power cut leaves on a card
/// that kept only synced data); the restarted recorder salvages exactly that prefix.
#[test]
fn a_power_cut_costs_at_most_the_sync_interval() {
    let rate = 16_000u64;
    let rig = Rig::new(
        rate as u32,
        json!({"duration": "10s", "syncInterval": "2s"}),
        json!({}),
    );
    let feeder = PacedFeeder::start(&rig.fifo, rate as u32, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    let first = rig.wait_report("one file", LONG, |r| r.files_written >= 1);
    let file_start = first.last_file_at.unwrap();
    // 5.3 s into the next 10 s file: synced at 2 s and 4 s of its audio.
    let since_start = jiff::Timestamp::now()
        .duration_since(file_start)
        .unsigned_abs();
    let into = Duration::from_millis(5300).saturating_sub(since_start);
    std::thread::sleep(into);
    signal(&child.0, nix::sys::signal::Signal::SIGKILL);
    let killed_at = jiff::Timestamp::now();
    wait_exit(&mut child.0, Duration::from_secs(10));
    let part = std::fs::read_dir(rig.storage.join(".partial"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "part"))
        .expect("a file was being written");
    let on_disk = (std::fs::metadata(&part).unwrap().len() - 44) / 2;
    let sync_frames = 2 * rate;
    let synced = on_disk / sync_frames * sync_frames;
    // Normally 4 s (the writer is at most a batch behind); a loaded machine may lag one sync.
    assert!(synced >= 2 * rate, "{on_disk} frames reached the kernel");
    let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    f.set_len(44 + synced * 2).unwrap();
    drop(f);

    let mut child = KillOnDrop(rig.spawn_recorder());
    let report = rig.wait_report("restart", LONG, |r| {
        r.state == RecorderState::Recording && r.pid == child.0.id()
    });
    let salvaged = &report.repair.salvaged[0];
    assert_eq!(samples(salvaged).len() as u64, synced);
    // Audio lost: from the last sync to the cut, at most the interval plus the writer's batch
    // (0.5 s) and its buffer; a second of slack for a loaded machine.
    let recorded_for = killed_at.duration_since(file_start).as_secs_f64();
    let lost = recorded_for - synced as f64 / rate as f64;
    eprintln!(
        "figure: power cut {recorded_for:.2} s into a file lost {lost:.2} s (syncInterval 2 s)"
    );
    assert!(lost <= 2.0 + 1.5, "{lost}");
    terminate(&mut child.0);
    drop(feeder);
    rig.assert_consistent();
}

#[test]
fn a_device_that_vanishes_is_reported_and_recording_resumes_when_it_returns() {
    let rate = 16_000;
    let rig = Rig::new(rate, json!({}), json!({}));
    let first = PacedFeeder::start(&rig.fifo, rate, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    rig.wait_report("recording", LONG, |r| r.files_written >= 1);
    // Vanish: the signal stops and the device node is gone.
    first.stall();
    std::fs::remove_file(&rig.fifo).unwrap();
    let lost = rig.wait_report("device unavailable", LONG, |r| {
        r.state == RecorderState::DeviceUnavailable
    });
    assert_eq!(lost.error.as_ref().unwrap().code, "DEP_E311");
    let health = roost::recorder::assess(&lost, jiff::Timestamp::now());
    assert!(
        matches!(health, roost::recorder::Health::Error { code, .. } if code.code == "DEP_E311")
    );
    let files_before = lost.files_written;
    std::thread::sleep(Duration::from_secs(1));
    // Return: a new device node with signal.
    let second = PacedFeeder::start(&rig.fifo, rate, rig.period);
    let back = rig.wait_report("recording again", LONG, |r| {
        r.files_written >= files_before + 2
    });
    assert_eq!(back.error, None);
    let status = terminate(&mut child.0);
    assert!(status.success(), "{}", rig.log());
    drop(second);
    drop(first);
    rig.assert_consistent();
}

#[test]
fn a_disk_that_fills_ends_the_file_registered_and_says_so() {
    let rate = 48_000;
    let rig = Rig::new(rate, json!({"duration": "2s"}), json!({}));
    let Some(_mount) = Tmpfs::mount(&rig.storage, "4M") else {
        assert!(
            !nix::unistd::Uid::effective().is_root(),
            "mounting a tmpfs failed as root"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let feeder = PacedFeeder::start(&rig.fifo, rate, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    let r = rig.wait_report("a file", LONG, |r| {
        r.files_written >= 1 && r.state == RecorderState::Recording
    });
    // Another program fills the disk, leaving room for about one second of audio.
    let free = roost::storage::free_bytes(&rig.storage).unwrap();
    let leave =
        roost::storage::DB_RESERVE_BYTES + roost::recorder::wav::RESERVE_EXTRA + 96_000 + 40_000;
    let filler = rig.storage.join("filler");
    std::fs::write(&filler, vec![1u8; (free - leave) as usize]).unwrap();
    let full = rig.wait_report("disk full", LONG, |x| {
        x.error.as_ref().is_some_and(|e| e.code == "DEP_E303") && x.files_written > r.files_written
    });
    assert_eq!(full.state, RecorderState::StorageError);
    // The file cut short by the full disk is complete and registered.
    rig.assert_consistent();
    let short: Vec<_> = rig
        .recordings()
        .into_iter()
        .filter(|f| {
            let n = samples(f).len();
            n < 2 * rate as usize && n >= rate as usize / 2
        })
        .collect();
    assert!(!short.is_empty(), "{:?}", rig.recordings());
    // Space returns: recording resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let resumed = rig.wait_report("resumed", LONG, |x| {
        x.files_written > full.files_written && x.error.is_none()
    });
    assert_eq!(resumed.state, RecorderState::Recording);
    let status = terminate(&mut child.0);
    assert!(status.success(), "{}", rig.log());
    drop(feeder);
    rig.assert_consistent();
}

#[test]
fn low_space_policies_stop_discard_or_delete_the_oldest() {
    let rate = 16_000;
    let rig = Rig::new(rate, json!({}), json!({}));
    let feeder = PacedFeeder::start(&rig.fifo, rate, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    rig.wait_report("three files", LONG, |r| r.files_written >= 3);
    assert!(terminate(&mut child.0).success());
    let old = rig.recordings();

    for policy in ["stop", "discardNew"] {
        rig.write_config(
            json!({}),
            json!({"minFreeSpace": "100TiB", "onLowSpace": policy}),
        );
        let mut child = KillOnDrop(rig.spawn_recorder());
        let low = rig.wait_report(policy, LONG, |r| {
            r.state == RecorderState::LowSpace && r.pid == child.0.id()
        });
        assert_eq!(low.error.as_ref().unwrap().code, "DEP_E302");
        assert!(terminate(&mut child.0).success());
        assert_eq!(
            rig.recordings(),
            old,
            "{policy} keeps what is there and adds nothing"
        );
    }

    rig.write_config(
        json!({}),
        json!({"minFreeSpace": "100TiB", "onLowSpace": "deleteOldest"}),
    );
    let mut child = KillOnDrop(rig.spawn_recorder());
    let low = rig.wait_report("deleteOldest", LONG, |r| {
        r.state == RecorderState::LowSpace && r.pid == child.0.id()
    });
    // 100 TiB cannot be freed by deleting recordings: the space is held by other files, so
    // nothing is deleted and the error says so.
    let error = low.error.as_ref().unwrap();
    assert_eq!(error.code, "DEP_E302");
    assert!(error.message.contains("held by other files"), "{error:?}");
    // Files go into minFreeSpace's margin only while deleteOldest looks (the writer never
    // waits on metadata.db); none after the verdict, and nothing is deleted.
    let at_verdict = rig.recordings();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(terminate(&mut child.0).success());
    let now = rig.recordings();
    assert!(old.iter().all(|f| now.contains(f)), "nothing deleted");
    assert_eq!(now, at_verdict, "no file after the verdict");
    assert_eq!(rig.row_count(), now.len() as i64);
    assert_eq!(rig.report().unwrap().files_deleted, 0);
    drop(feeder);
    rig.assert_consistent();
}

#[test]
fn check_reads_the_report_while_a_healthy_recorder_holds_the_device() {
    let rate = 16_000;
    let rig = Rig::new(rate, json!({}), json!({}));
    let feeder = PacedFeeder::start(&rig.fifo, rate, rig.period);
    let mut child = KillOnDrop(rig.spawn_recorder());
    rig.wait_report("recording", LONG, |r| r.files_written >= 1);
    let spec: roost::spec::RecorderSpec =
        serde_json::from_value(json!({"sampleRate": rate})).unwrap();
    // Without ALSA_CONFIG_PATH in this process the device cannot be opened here: only the report can answer.
    assert_eq!(
        roost::recorder::check_device_or_report(&spec, &rig.state, jiff::Timestamp::now()),
        Ok(())
    );
    let other: roost::spec::RecorderSpec =
        serde_json::from_value(json!({"sampleRate": 44_100})).unwrap();
    assert!(
        roost::recorder::check_device_or_report(&other, &rig.state, jiff::Timestamp::now())
            .is_err()
    );
    assert!(terminate(&mut child.0).success());
    drop(feeder);
    let r = rig.report().unwrap();
    assert_eq!((r.samples_dropped, r.overruns), (0, 0));
}

#[test]
fn i24_and_f32_files_hold_exactly_what_the_device_delivered() {
    use std::io::Write;
    let rate = 16_000;
    let frames = rate as usize * 3 / 2;
    for (format, alsa_format) in [("i24", "S24_LE"), ("f32", "FLOAT_LE")] {
        let rig = Rig::with_alsa_format(
            rate,
            alsa_format,
            json!({"sampleFormat": format}),
            json!({}),
        );
        let ints: Vec<i32> = (0..frames)
            .map(|f| {
                i32::from(roost::recorder::feed::test_signal(f as u64, 0, rate)) * 256
                    + (f % 256) as i32
            })
            .collect();
        let floats: Vec<f32> = (0..frames).map(|f| (f as f32 * 0.01).sin() * 0.7).collect();
        let bytes: Vec<u8> = match format {
            "i24" => ints.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => floats.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        nix::unistd::mkfifo(&rig.fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut fifo = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&rig.fifo)
            .unwrap();
        nix::fcntl::fcntl(&fifo, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
        let period_bytes = rig.period as usize * 4;
        let whole = bytes.len() / period_bytes * period_bytes;
        fifo.write_all(&bytes[..whole]).unwrap();
        let fed = (whole / 4) as u64;
        let mut child = KillOnDrop(rig.spawn_recorder());
        rig.wait_report("all fed samples captured", LONG, |r| {
            r.samples_captured >= fed && r.state == RecorderState::DeviceUnavailable
        });
        assert!(terminate(&mut child.0).success(), "{}", rig.log());
        let (mut got_ints, mut got_floats) = (Vec::new(), Vec::new());
        for f in rig.recordings() {
            let mut reader = hound::WavReader::open(&f).unwrap();
            let spec = reader.spec();
            if format == "i24" {
                assert_eq!(
                    (spec.bits_per_sample, spec.sample_format),
                    (24, hound::SampleFormat::Int)
                );
                got_ints.extend(reader.samples::<i32>().map(|s| s.unwrap()));
            } else {
                assert_eq!(
                    (spec.bits_per_sample, spec.sample_format),
                    (32, hound::SampleFormat::Float)
                );
                got_floats.extend(reader.samples::<f32>().map(|s| s.unwrap()));
            }
        }
        if format == "i24" {
            assert!(
                got_ints == ints[..fed as usize],
                "i24 samples differ: {} of {fed}; {:#?}\n{}",
                got_ints.len(),
                rig.report(),
                rig.log()
            );
        } else {
            assert!(
                got_floats == floats[..fed as usize],
                "f32 samples differ: {} of {fed}; {:#?}\n{}",
                got_floats.len(),
                rig.report(),
                rig.log()
            );
        }
        rig.assert_consistent();
        drop(fifo);
    }
}

#[test]
fn input_far_faster_than_real_time_is_refused_and_never_stamped_ahead() {
    let rate = 16_000;
    let rig = Rig::new(rate, json!({}), json!({}));
    // A regular file as the device: alsa-lib delivers it (and then its last period, forever)
    // as fast as it can: a source at its end, or a misconfigured device.
    std::fs::write(&rig.fifo, signal_bytes(0, u64::from(rate) * 2, rate, 1)).unwrap();
    let started = jiff::Timestamp::now();
    let mut child = KillOnDrop(rig.spawn_recorder());
    let report = rig.wait_report("input refused", LONG, |r| {
        r.state == RecorderState::InputNotRealTime
            && r.error.as_ref().is_some_and(|e| e.code == "DEP_E315")
    });
    let health = roost::recorder::assess(&report, jiff::Timestamp::now());
    assert!(
        matches!(health, roost::recorder::Health::Error { code, .. } if code.code == "DEP_E315")
    );
    // Minutes of samples arrive every second; none of them goes into a file, and the stream
    // is closed and looked at again later instead of read flat out.
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let t0 = ticks(child.0.id());
    std::thread::sleep(Duration::from_secs(4));
    let used = (ticks(child.0.id()) - t0) as f64 / 100.0 / 4.0 * 100.0;
    eprintln!(
        "figure: recorder CPU while input is far faster than real time: {used:.0}% of a core"
    );
    assert_eq!(rig.report().unwrap().files_written, report.files_written);
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    let last = rig.report().unwrap();
    assert_eq!(last.files_written, report.files_written);
    assert!(last.samples_captured > u64::from(rate) * 60, "{last:#?}");
    rig.assert_consistent();
    // No file claims a start more than one file duration (1 s) after the recorder started, and
    // files never overlap; the first holds the signal exactly.
    let files = rig.recordings();
    assert!(files.len() <= 3, "{files:?}");
    let limit = started
        .checked_add(jiff::SignedDuration::from_secs(3))
        .unwrap();
    for f in &files {
        let start = roost::storage::start_from_file_name(f).unwrap();
        assert!(
            start < limit,
            "{} is stamped ahead of the wall clock",
            f.display()
        );
    }
    for w in files.windows(2) {
        let start = roost::storage::start_from_file_name(&w[0]).unwrap();
        let next = roost::storage::start_from_file_name(&w[1]).unwrap();
        let len = samples(&w[0]).len() as f64 / f64::from(rate);
        assert!(next.duration_since(start).as_secs_f64() >= len - 2e-5);
    }
    if let Some(first) = files.first() {
        let first = samples(first);
        let expected: Vec<i16> = signal_bytes(0, first.len() as u64, rate, 1)
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert!(first == expected);
    }
}

#[test]
fn a_backlog_waiting_in_the_source_at_start_is_recorded_with_its_true_times() {
    let rate = 16_000;
    let rig = Rig::new(rate, json!({}), json!({}));
    // The source runs 1.5 s before the recorder opens it (a slow start on a loaded board): its
    // backlog is real audio from the past, not input faster than real time.
    let fed_from = jiff::Timestamp::now();
    let feeder = PacedFeeder::start(&rig.fifo, rate, rig.period);
    std::thread::sleep(Duration::from_millis(1500));
    let mut child = KillOnDrop(rig.spawn_recorder());
    rig.wait_report("four files", LONG, |r| r.files_written >= 4);
    assert!(terminate(&mut child.0).success(), "{}", rig.log());
    drop(feeder);
    let report = rig.report().unwrap();
    assert_eq!(report.error, None, "{report:#?}");
    assert_eq!(report.time_overlaps, 0);
    let files = rig.recordings();
    let recorded: u64 = files
        .iter()
        .map(|f| u64::from(hound::WavReader::open(f).unwrap().duration()))
        .sum();
    assert_eq!(
        (recorded, report.samples_dropped),
        (report.samples_captured, 0)
    );
    // The first file starts when the source started, not when the recorder did.
    let first = roost::storage::start_from_file_name(&files[0]).unwrap();
    let off = first.duration_since(fed_from).as_secs_f64();
    assert!(
        off.abs() < 0.5,
        "first file starts {off:.3} s after the source"
    );
    rig.assert_consistent();
}
