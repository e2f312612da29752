//! The command detector on real processes: the scripts in `tests/detectors/` stand for
//! detectors that work, fail, hang, print garbage or print too much; each failure must give its
//! variant and catalogue code, and nothing a command started may outlive its run. The example
//! converters in `examples/detectors/` are run on their fixtures and must print findings that
//! parse and validate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use roost::detect::command::{CommandDetector, CommandError, MAX_OUTPUT_BYTES};
use roost::detect::findings::{Detection, Findings, PredictedTag, findings_schema};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script(name: &str) -> String {
    root()
        .join("tests/detectors")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A recording in a folder whose name has spaces (the detector never reads its samples).
fn recording() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("roost detect ")
        .tempdir()
        .unwrap();
    let wav = dir.path().join("dawn chorus 05-00.wav");
    std::fs::write(&wav, b"RIFF....WAVE").unwrap();
    (dir, wav)
}

fn detector(command: &[&str], timeout: Duration) -> CommandDetector {
    CommandDetector {
        command: command.iter().map(|s| s.to_string()).collect(),
        timeout,
    }
}

fn run(command: &[&str], timeout: Duration) -> Result<Findings, CommandError> {
    let (_dir, wav) = recording();
    detector(command, timeout).run(&wav, 10.0, 48_000)
}

/// Whether `pid` is a live process (a zombie has ended; it only waits to be reaped).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    !state.starts_with('Z') && !state.starts_with('X')
}

/// Waits up to 2 s for the pids to end: SIGKILL is delivered asynchronously.
fn assert_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|p| running(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left: Vec<_> = pids.iter().filter(|p| running(**p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
}

fn pids_in(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn a_working_detector_gets_the_path_last_even_with_spaces() {
    let fixed = script("fixed.sh");
    let findings = run(&[&fixed, "--an option", "x y"], Duration::from_secs(20)).unwrap();
    assert_eq!(
        findings,
        Findings {
            detections: vec![Detection {
                location: [0.5, 2000.0, 1.5, 8000.0],
                detection_score: 0.9,
                tags: vec![PredictedTag {
                    key: "species".into(),
                    value: "Turdus merula".into(),
                    confidence_score: 0.8,
                }],
            }],
            tags: vec![PredictedTag {
                key: "weather".into(),
                value: "rain".into(),
                confidence_score: 0.6,
            }],
        }
    );
}

#[test]
fn a_relative_recording_path_is_made_absolute() {
    let (dir, wav) = recording();
    let relative = pathdiff(&wav, &std::env::current_dir().unwrap());
    assert!(relative.is_relative());
    detector(&[&script("fixed.sh")], Duration::from_secs(20))
        .run(&relative, 10.0, 48_000)
        .unwrap();
    drop(dir);
}

/// `to` relative to `from` (both absolute), with `..` as needed.
fn pathdiff(to: &Path, from: &Path) -> PathBuf {
    let common = to
        .components()
        .zip(from.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut path = PathBuf::new();
    for _ in from.components().skip(common) {
        path.push("..");
    }
    for part in to.components().skip(common) {
        path.push(part);
    }
    path
}

#[test]
fn a_failing_detector_reports_its_status_and_stderr() {
    let e = run(&[&script("exit3.sh")], Duration::from_secs(20)).unwrap_err();
    let CommandError::Exited {
        code,
        signal,
        ref stderr_tail,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!((code, signal), (Some(3), None));
    assert!(
        stderr_tail.ends_with("error: model file /opt/model.tflite not found"),
        "{stderr_tail:?}"
    );
    assert_eq!(e.code().code, "DEP_E602");
    assert!(e.retryable());
    let message = e.to_string();
    assert!(message.contains("exited with status 3"), "{message}");
    assert!(
        message.contains("model file /opt/model.tflite"),
        "{message}"
    );
}

#[test]
fn a_detector_killed_by_a_signal_reports_it() {
    let e = run(
        &["sh", "-c", "kill -SEGV $$", "sh"],
        Duration::from_secs(20),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            CommandError::Exited {
                code: None,
                signal: Some(11),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("killed by signal SIGSEGV"), "{e}");
}

#[test]
fn a_hanging_detector_is_killed_with_its_grandchildren() {
    let (dir, wav) = recording();
    let pid_file = dir.path().join("pids");
    let pid_file_arg = pid_file.to_string_lossy().into_owned();
    let started = Instant::now();
    let e = detector(&[&script("hang.sh"), &pid_file_arg], Duration::from_secs(1))
        .run(&wav, 10.0, 48_000)
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(e, CommandError::TimedOut { after, .. } if after == Duration::from_secs(1)),
        "{e:?}"
    );
    assert_eq!(e.code().code, "DEP_E603");
    assert!(e.retryable());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_gone(&pids_in(&pid_file));
}

#[test]
fn what_a_detector_leaves_behind_is_killed_when_it_exits() {
    let (dir, wav) = recording();
    let pid_file = dir.path().join("pids");
    let pid_file_arg = pid_file.to_string_lossy().into_owned();
    let started = Instant::now();
    // The grandchild holds stdout open: without killing the group at the exit, the run
    // would last the whole timeout.
    let findings = detector(
        &[&script("leaves_child.sh"), &pid_file_arg],
        Duration::from_secs(30),
    )
    .run(&wav, 10.0, 48_000)
    .unwrap();
    assert_eq!(findings, Findings::default());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_gone(&pids_in(&pid_file));
}

/// A process the detector started in a session of its own (setsid: outside the run's
/// process group) does not outlive the run either: it carries the run's mark.
#[test]
fn what_a_detector_starts_outside_its_group_is_killed_too() {
    let (dir, wav) = recording();
    let pid_file = dir.path().join("pids");
    let pid_file_arg = pid_file.to_string_lossy().into_owned();
    let findings = detector(
        &[&script("escapes_group.sh"), &pid_file_arg],
        Duration::from_secs(30),
    )
    .run(&wav, 10.0, 48_000)
    .unwrap();
    assert_eq!(findings, Findings::default());
    let escaped = pids_in(&pid_file);
    assert_eq!(escaped.len(), 1);
    assert_gone(&escaped);
}

#[test]
fn garbage_on_stdout_is_bad_output_with_line_and_column() {
    let e = run(&[&script("garbage.sh")], Duration::from_secs(20)).unwrap_err();
    let CommandError::BadOutput { ref why, .. } = e else {
        panic!("{e:?}")
    };
    assert!(why.contains("line 1 column 1"), "{why}");
    assert_eq!(e.code().code, "DEP_E604");
    assert!(!e.retryable());
}

#[test]
fn findings_out_of_range_are_bad_output_naming_the_field() {
    let json = r#"{"detections": [{"location": [0, 0, 99, 100], "detection_score": 0.5}]}"#;
    let e = run(
        &["sh", "-c", &format!("echo '{json}'"), "sh"],
        Duration::from_secs(20),
    )
    .unwrap_err();
    let CommandError::BadOutput { ref why, .. } = e else {
        panic!("{e:?}")
    };
    assert!(
        why.starts_with("detections[0].location[2]: end 99 s"),
        "{why}"
    );
    let e = run(&["true"], Duration::from_secs(20)).unwrap_err();
    assert!(e.to_string().contains("printed nothing on stdout"), "{e}");
}

#[test]
fn too_much_output_is_refused_and_the_detector_killed() {
    let started = Instant::now();
    let e = run(&[&script("huge.sh")], Duration::from_secs(30)).unwrap_err();
    assert!(
        matches!(e, CommandError::TooLarge { limit, .. } if limit == MAX_OUTPUT_BYTES),
        "{e:?}"
    );
    assert_eq!(e.code().code, "DEP_E604");
    assert!(!e.retryable());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_missing_or_unexecutable_program_is_not_found() {
    let not_executable = script("birdnet.BirdNET.results.csv");
    let no_shebang = script("no_shebang.sh");
    for command in [
        vec!["/nonexistent/detector"],
        vec!["roost-no-such-detector-on-path"],
        vec![not_executable.as_str()],
        vec![no_shebang.as_str()],
        vec![],
    ] {
        let e = run(&command, Duration::from_secs(20)).unwrap_err();
        assert!(
            matches!(e, CommandError::NotFound { .. }),
            "{command:?}: {e:?}"
        );
        assert_eq!(e.code().code, "DEP_E601");
        assert!(!e.retryable());
    }
}

#[test]
fn a_missing_recording_is_not_the_detectors_failure() {
    let dir = tempfile::tempdir().unwrap();
    let e = detector(&[&script("fixed.sh")], Duration::from_secs(20))
        .run(&dir.path().join("gone.wav"), 10.0, 48_000)
        .unwrap_err();
    assert!(matches!(e, CommandError::Io { .. }), "{e:?}");
    assert_eq!(e.code().code, "DEP_E605");
}

#[test]
fn the_committed_findings_schema_is_current() {
    let path = root().join("schemas/findings.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        committed.trim_end(),
        findings_schema().trim_end(),
        "{} is stale: regenerate it from roost::detect::findings::findings_schema()",
        path.display()
    );
}

/// Runs an example converter on a fixture, as a detector's wrapper would, and parses what it
/// printed. None when there is no python3 to run it with.
fn convert(converter: &str, fixture: &str, duration_s: f64, sample_rate: u32) -> Option<Findings> {
    let output = std::process::Command::new("python3")
        .arg(root().join("examples/detectors").join(converter))
        .arg(script(fixture))
        .env("ROOST_DURATION_S", duration_s.to_string())
        .env("ROOST_SAMPLE_RATE", sample_rate.to_string())
        .output();
    let output = match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: no python3 ({e})");
            return None;
        }
        output => output.unwrap(),
    };
    assert!(
        output.status.success(),
        "{converter} {fixture}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let findings: Findings = serde_json::from_slice(&output.stdout).unwrap();
    findings.validate(duration_s, sample_rate).unwrap();
    Some(findings)
}

fn tag_values(detection: &Detection) -> Vec<(&str, &str)> {
    detection
        .tags
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect()
}

#[test]
fn birdnet_csv_results_convert_to_valid_findings() {
    let Some(findings) = convert(
        "birdnet_to_roost.py",
        "birdnet.BirdNET.results.csv",
        10.0,
        48_000,
    ) else {
        return;
    };
    assert_eq!(findings.detections.len(), 4);
    let first = &findings.detections[0];
    assert_eq!(first.location, [0.0, 0.0, 3.0, 15_000.0]);
    assert_eq!(first.detection_score, 0.9123);
    assert_eq!(
        tag_values(first),
        [
            ("species", "Turdus merula"),
            ("common_name", "Eurasian Blackbird")
        ]
    );
    // BirdNET pads the last segment past the end of the file: cut at the duration.
    assert_eq!(findings.detections[3].location, [9.0, 0.0, 10.0, 15_000.0]);
    // A 22.05 kHz recording has nothing above 11025 Hz.
    let low_rate = convert(
        "birdnet_to_roost.py",
        "birdnet.BirdNET.results.csv",
        10.0,
        22_050,
    )
    .unwrap();
    assert_eq!(low_rate.detections[0].location, [0.0, 0.0, 3.0, 11_025.0]);
}

#[test]
fn a_birdnet_selection_table_converts_to_valid_findings() {
    let Some(findings) = convert(
        "birdnet_to_roost.py",
        "birdnet.BirdNET.selection.table.txt",
        10.0,
        48_000,
    ) else {
        return;
    };
    assert_eq!(findings.detections.len(), 2);
    assert_eq!(
        tag_values(&findings.detections[0]),
        [
            ("common_name", "Eurasian Blackbird"),
            ("species_code", "eurbla")
        ]
    );
    assert_eq!(findings.detections[1].location, [9.0, 0.0, 10.0, 15_000.0]);
}

#[test]
fn batdetect2_results_convert_to_valid_findings() {
    let Some(findings) = convert(
        "batdetect2_to_roost.py",
        "batdetect2.wav.json",
        5.0,
        256_000,
    ) else {
        return;
    };
    assert_eq!(findings.detections.len(), 3);
    let first = &findings.detections[0];
    assert_eq!(first.location, [0.0615, 44_531.0, 0.0672, 71_875.0]);
    assert_eq!(first.detection_score, 0.716);
    assert_eq!(first.tags[0].confidence_score, 0.552);
    assert_eq!(
        tag_values(first),
        [("species", "Pipistrellus pipistrellus")]
    );
    assert_eq!(findings.detections[2].location[2], 5.0);
}

/// A detector starts with no signal blocked, whatever the thread that runs it blocks (the
/// curator blocks SIGTERM and SIGINT for the thread that waits for them): so SIGTERM reaches
/// it, and its own `trap` runs when roost stops.
#[test]
fn a_detector_starts_with_no_signal_blocked() {
    use nix::sys::signal::{SigSet, Signal};
    let (dir, _wav) = recording();
    let out = dir.path().join("sigblk");
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGTERM);
    blocked.add(Signal::SIGINT);
    // This test's own thread, as the curator's.
    blocked.thread_block().unwrap();
    let script = format!(
        "grep SigBlk /proc/self/status > '{}'; echo '{{\"detections\": []}}'",
        out.display()
    );
    let findings = run(&["sh", "-c", &script, "sh"], Duration::from_secs(20));
    blocked.thread_unblock().unwrap();
    assert_eq!(findings.unwrap(), Findings::default());
    let line = std::fs::read_to_string(&out).unwrap();
    assert_eq!(line.trim(), "SigBlk:\t0000000000000000");
}
