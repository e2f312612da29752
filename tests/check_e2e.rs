//! `roost check` end to end: the real binary, real alsa-lib and cpal reading a FIFO through
//! ALSA's file plugin. The device is judged as `roost status` judges it (a live recorder's
//! report, else a probe that waits for real samples), every probe is bounded in time, and
//! `--offline` checks the file alone. The elapsed-time bounds are hang guards, not timing tests.

mod recorder_common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use recorder_common::{BIN, KillOnDrop, PacedFeeder, Rig, terminate};
use roost::recorder::feed::Feeder;
use roost::recorder::{Health, RecorderState};
use serde_json::json;

const LONG: Duration = Duration::from_secs(40);
/// A probe is bounded by 3 s; anything near this means it hung.
const HANG_GUARD: Duration = Duration::from_secs(15);

/// A deployment recording what the rig's device delivers, into the rig's storage.
fn deployment_yaml(rig: &Rig) -> String {
    format!(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: check-e2e\nspec:\n  storage: {{path: {}, minFreeSpace: 0, onLowSpace: stop}}\n  recorder:\n    device: default\n    sampleRate: {}\n    channels: 1\n    sampleFormat: i16\n    duration: 1s\n  components: []\n",
        rig.storage.display(),
        rig.rate
    )
}

/// Runs `roost check` on the rig's device and state folder; returns its output, its text
/// (stdout and stderr) and how long it took. It is killed if it outlives the hang guard.
fn check(rig: &Rig, extra: &[&str]) -> (Output, String, Duration) {
    let file = rig.dir.path().join("deployment.yaml");
    std::fs::write(&file, deployment_yaml(rig)).unwrap();
    let started = Instant::now();
    let child = Command::new(BIN)
        .args(["check", "--file"])
        .arg(&file)
        .arg("--state-dir")
        .arg(&rig.state)
        .args(extra)
        .env("ALSA_CONFIG_PATH", &rig.asound)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let guard = std::thread::spawn(move || {
        std::thread::sleep(HANG_GUARD * 2);
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    });
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    drop(guard);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text, elapsed)
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn a_fifo_nobody_writes_to_is_unavailable_within_the_bound() {
    let rig = Rig::new(16_000, json!({}), json!({}));
    // No writer at all: alsa-lib's open of the FIFO blocks for ever.
    mkfifo(&rig.fifo);
    let (out, text, elapsed) = check(&rig, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DEP_E311"), "{text}");
    assert!(text.contains("did not answer within 3 s"), "{text}");
    assert!(elapsed < HANG_GUARD, "check took {elapsed:?}:\n{text}");
}

#[test]
fn a_device_that_opens_but_delivers_nothing_is_unavailable_within_the_bound() {
    let rig = Rig::new(16_000, json!({}), json!({}));
    // Opened by a writer that never writes: the device opens, its reads never return.
    let _silent = Feeder::open(&rig.fifo, rig.rate, 1, rig.period).unwrap();
    let (out, text, elapsed) = check(&rig, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DEP_E311"), "{text}");
    assert!(
        text.contains("opened but delivered no samples in 3 s"),
        "{text}"
    );
    assert!(elapsed < HANG_GUARD, "check took {elapsed:?}:\n{text}");
}

#[test]
fn a_device_fed_at_real_time_passes() {
    let rig = Rig::new(16_000, json!({}), json!({}));
    let feeder = PacedFeeder::start(&rig.fifo, rig.rate, rig.period);
    let (out, text, elapsed) = check(&rig, &[]);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("Health checks passed"), "{text}");
    assert!(elapsed < HANG_GUARD, "check took {elapsed:?}:\n{text}");
    drop(feeder);
}

#[test]
fn check_says_dep_e311_when_the_live_recorder_reports_the_device_unavailable() {
    let rig = Rig::new(16_000, json!({}), json!({}));
    let feeder = PacedFeeder::start(&rig.fifo, rig.rate, rig.period);
    let mut recorder = KillOnDrop(rig.spawn_recorder());
    rig.wait_report("a file written", LONG, |r| r.files_written >= 1);
    feeder.stall();
    let report = rig.wait_report("device unavailable", LONG, |r| {
        r.state == RecorderState::DeviceUnavailable
    });
    // What status makes of the same report.
    let Health::Error { code, message } = roost::recorder::assess(&report, jiff::Timestamp::now())
    else {
        panic!("the report is not an error: {report:#?}");
    };
    assert_eq!(code.code, "DEP_E311");

    let (out, text, _) = check(&rig, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // The report's own words: the answer came from the recorder, not from a second probe.
    assert!(
        text.contains(&format!("DEP_E311 {message}")),
        "{text}\nexpected: {message}"
    );
    assert!(terminate(&mut recorder.0).success());
    drop(feeder);
}

#[test]
fn offline_checks_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deployment.yaml");
    let storage = dir.path().join("no/such/card");
    let state = dir.path().join("no-such-state");
    std::fs::write(
        &file,
        format!(
            "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: offline\nspec:\n  storage: {{path: {}}}\n  recorder:\n    device: no-such-microphone\n  components:\n    - name: uploader\n      command: [\"/no/such/program\"]\n",
            storage.display()
        ),
    )
    .unwrap();
    let offline = |file: &Path| {
        Command::new(BIN)
            .args(["check", "--offline", "--file"])
            .arg(file)
            .env("ROOST_STATE_DIR", &state)
            .env("ALSA_CONFIG_PATH", dir.path().join("no-such-asound.conf"))
            .output()
            .unwrap()
    };
    let out = offline(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text.contains("Health checks passed"), "{text}");
    assert!(
        !storage.exists() && !state.exists(),
        "offline created folders"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: offline\nspec:\n  components:\n    - name: a\n      comand: [\"/bin/true\"]\n",
    )
    .unwrap();
    let out = offline(&bad);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text.contains("DEP_E162"), "{text}");
    assert!(
        text.contains(&format!("{}:8:", bad.display())),
        "file:line:column expected:\n{text}"
    );
}

#[test]
fn a_storage_that_must_be_a_mounted_card_is_checked_as_the_recorder_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("card");
    let file = dir.path().join("deployment.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: card\nspec:\n  storage: {{path: {}, requireMount: true}}\n  recorder: {{}}\n",
            card.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--file"])
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("ALSA_CONFIG_PATH", dir.path().join("no-such-asound.conf"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text.contains(&format!("DEP_E301 storage {}", card.display())),
        "{text}"
    );
    assert!(
        !card.exists(),
        "check created the card's folder on the root file system"
    );
}

/// `roost check` checks what the running components would need, with their codes: a command
/// detector's program (DEP_E601), the MQTT password file, the HTTP headers file and CA files
/// (DEP_E507, also when a file is there but not what it should be); and it creates nothing,
/// not its state folder, not the storage.
#[test]
fn check_finds_every_missing_file_a_component_needs_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let not_pem = dir.path().join("ca.txt");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let storage = dir.path().join("not/yet/storage");
    let state = dir.path().join("state/deeper");
    let yaml = format!(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: needs\nspec:\n  storage: {{path: {storage}}}\n  recorder: {{}}\n  detectors:\n    - {{name: birdnet, kind: command, command: [{m}/birdnet.sh]}}\n  connect:\n    deviceId: pi-1\n    mqtt: {{url: \"mqtts://127.0.0.1:8883\", username: pi, passwordFile: {m}/password, caFile: {ca}}}\n    http: {{url: \"https://127.0.0.1:9/ingest\", headersFile: {m}/headers, caFile: {m}/http-ca.pem}}\n  components: []\n",
        storage = storage.display(),
        m = missing.display(),
        ca = not_pem.display(),
    );
    let file = dir.path().join("deployment.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--file"])
        .arg(&file)
        .arg("--state-dir")
        .arg(&state)
        .env("ALSA_CONFIG_PATH", dir.path().join("no-such-asound.conf"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expected in [
        "DEP_E601 detector birdnet: ".to_string(),
        format!("DEP_E507 passwordFile {}/password", missing.display()),
        format!("DEP_E507 caFile {}", not_pem.display()),
        format!("DEP_E507 headersFile {}/headers", missing.display()),
        format!("DEP_E507 caFile {}/http-ca.pem", missing.display()),
    ] {
        assert!(text.contains(&expected), "{expected:?} missing in:\n{text}");
    }
    assert!(text.contains("birdnet.sh"), "{text}");
    assert!(
        !state.exists() && !dir.path().join("state").exists(),
        "check made its state folder"
    );
    assert!(!dir.path().join("not").exists(), "check made the storage");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "only the file and ca.txt: {left:?}");
}

/// Outside its windows, `roost check` says when the next one opens (local time), and warns
/// with DEP_E318 when that is more than 7 days away or never within a year (a sunrise window
/// near a pole in its polar night or day).
#[test]
fn check_says_when_the_next_window_opens() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deployment.yaml");
    let check = |location: &str, window: &str, tz: &str| {
        std::fs::write(
            &file,
            format!(
                "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: dawn\nspec:\n  location: {location}\n  storage: {{path: {}}}\n  recorder: {{timezone: {tz}, windows: [{window}]}}\n  components: []\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["check", "--file"])
            .arg(&file)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("ALSA_CONFIG_PATH", dir.path().join("no-such-asound.conf"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A clock window opening in two hours (UTC), at Oxford.
    let now = jiff::Timestamp::now();
    let start = (now + jiff::SignedDuration::from_hours(2)).to_zoned(jiff::tz::TimeZone::UTC);
    let end = start.clone() + jiff::SignedDuration::from_mins(30);
    let window = format!(
        "{{start: \"{}\", end: \"{}\"}}",
        start.strftime("%H:%M"),
        end.strftime("%H:%M")
    );
    let text = check("{latitude: 51.76, longitude: -1.26}", &window, "UTC");
    let expected = format!(
        "note: outside the recording windows now; the next opens {} UTC",
        start.strftime("%a %-d %b %Y %H:%M")
    );
    assert!(text.contains(&expected), "{expected:?} in:\n{text}");
    assert!(!text.contains("DEP_E318"), "{text}");
    // A sunrise window at a pole: its equinox is weeks to months away (the pole whose
    // equinox is farther from today), or no sunrise within a year.
    let month = now.to_zoned(jiff::tz::TimeZone::UTC).month();
    let pole = if (1..=6).contains(&month) {
        -89.9
    } else {
        89.9
    };
    let text = check(
        &format!("{{latitude: {pole}, longitude: 0}}"),
        "{start: \"sunrise\", end: \"sunrise+1h\"}",
        "UTC",
    );
    assert!(
        text.contains("warning: DEP_E318 the next recording window opens")
            || text.contains("warning: DEP_E318 no recording window opens within a year"),
        "{text}"
    );
}
