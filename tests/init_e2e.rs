//! `roost init` as a field technician uses it: non-interactively for each preset (a script,
//! Ansible), and at a terminal (a pseudo-terminal made by `script`), on real ALSA fed by the
//! file plugin; the file it writes passes `roost check` and records.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ROOST, Roost, component, start_feed};

fn init(dir: &Path, file: &Path, preset: &str, conf: &Path) -> std::process::Output {
    Command::new(ROOST)
        .args(["init", "--yes", "--file"])
        .arg(file)
        .args([
            "--name",
            "meadow-north",
            "--latitude",
            "51.76",
            "--longitude",
            "-1.26",
        ])
        .args([
            "--device",
            "default",
            "--timezone",
            "UTC",
            "--sample-rate",
            "16000",
        ])
        .args(["--preset", preset, "--storage"])
        .arg(dir.join("storage"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("ALSA_CONFIG_PATH", conf)
        .output()
        .unwrap()
}

/// Each preset's file is written, passes the full check (its microphone probed) and the
/// offline one; a second run keeps the first file as `.bak`; the continuous one records.
#[test]
fn init_writes_a_deployment_that_checks_and_records_for_every_preset() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("asound.conf");
    let feed = start_feed(&dir.path().join("mic.fifo"), &conf, &[]);
    for preset in ["continuous", "dawn-chorus", "dusk-and-night"] {
        let file = dir.path().join(format!("{preset}.yaml"));
        let out = init(dir.path(), &file, preset, &conf);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{preset}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Health checks passed"), "{preset}: {text}");
        let written = std::fs::read_to_string(&file).unwrap();
        assert!(
            written.starts_with("# yaml-language-server: $schema="),
            "{written}"
        );
        let offline = Command::new(ROOST)
            .args(["check", "--offline", "--file"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(offline.status.success(), "{preset}: {written}");
    }
    // Again on the same file: the first is kept beside it.
    let file = dir.path().join("continuous.yaml");
    let first = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        init(dir.path(), &file, "continuous", &conf).status.code(),
        Some(0)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("continuous.yaml.bak")).unwrap(),
        first
    );
    drop(feed);
    // The continuous deployment records.
    let mut r = Roost::new(&first);
    let _feed = r.start_recording();
    r.wait_for("recording", Duration::from_secs(30), |s| {
        component(s, "recorder")["output"]["state"] == "recording"
    });
    assert_eq!(r.stop(), Some(0));
}

/// A preset that needs the site refuses to guess it, and nothing is written.
#[test]
fn init_without_the_site_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deployment.yaml");
    let out = Command::new(ROOST)
        .args(["init", "--yes", "--preset", "dawn-chorus", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("give the site's --latitude and --longitude")
            && err.contains("nothing was written"),
        "{err}"
    );
    assert!(!file.exists());
}

/// At a terminal: the microphones are listed, each question offers a default, the answers
/// make the file, and the check runs.
#[test]
fn init_at_a_terminal_asks_and_writes() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping: no `script` (util-linux) to make a pseudo-terminal");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("asound.conf");
    let _feed = start_feed(&dir.path().join("mic.fifo"), &conf, &[]);
    let file = dir.path().join("deployment.yaml");
    let storage = dir.path().join("storage");
    let command = format!(
        "{ROOST} init --file {} --state-dir {}",
        file.display(),
        dir.path().join("state").display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("ALSA_CONFIG_PATH", &conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Name, preset, latitude, longitude, microphone, rate, storage, time zone.
    let answers = format!(
        "wood-edge\ndawn-chorus\n52.2\n0.12\ndefault\n16000\n{}\nUTC\n",
        storage.display()
    );
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(answers.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for asked in [
        "Deployment name (the site)",
        "Schedule: continuous, dawn-chorus or dusk-and-night",
        "Latitude in degrees",
        "Microphone (a NAME from `roost devices`)",
        "Sample rate in Hz [48000]",
        "Health checks passed",
    ] {
        assert!(text.contains(asked), "{asked}: {text}");
    }
    let written = std::fs::read_to_string(&file).unwrap();
    let d = roost::spec::parse_str(&file, &written).unwrap();
    assert_eq!(d.metadata.name.as_str(), "wood-edge");
    assert!(written.contains("sunrise-30m"), "{written}");
}
