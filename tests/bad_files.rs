//! Every bad input in `tests/bad/` gets a clear error from `roost check`: the file, the line and
//! column or the field, what is expected, the code DEP_E162 and an action. Each `NAME.yaml` has
//! a `NAME.expect` listing texts the error must contain.

mod common;

use std::path::Path;
use std::process::Command;

fn check(file: &Path) -> (i32, String) {
    let out = Command::new(common::ROOST)
        .args(["check", "--file"])
        .arg(file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn every_bad_file_gets_its_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let expect = std::fs::read_to_string(path.with_extension("expect")).unwrap();
        let (code, text) = check(&path);
        let mut missing: Vec<&str> = expect
            .lines()
            .filter(|l| !l.is_empty() && !text.contains(l))
            .collect();
        for always in ["DEP_E162", "action:", path.to_str().unwrap()] {
            if !text.contains(always) {
                missing.push(always);
            }
        }
        if code != 1 || !missing.is_empty() {
            failures.push(format!(
                "{}: exit {code}, missing {missing:?} in:\n{text}",
                path.display()
            ));
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} bad files");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn files_over_one_mib_are_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.yaml");
    std::fs::write(&file, "# padding\n".repeat(110_000)).unwrap();
    let (code, text) = check(&file);
    assert_eq!(code, 1);
    assert!(
        text.contains("larger than 1 MiB") && text.contains("huge.yaml"),
        "{text}"
    );
}

#[test]
fn missing_file_and_good_file() {
    let (code, text) = check(Path::new("/nonexistent/deployment.yaml"));
    assert_eq!(code, 1);
    assert!(
        text.contains("/nonexistent/deployment.yaml") && text.contains("cannot read"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        common::deployment("good", "", &common::sleeper("a", "x")),
    )
    .unwrap();
    let out = Command::new(common::ROOST)
        .args(["check", "--file"])
        .arg(&good)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Health checks passed\n"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn check_verifies_the_audio_device() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deployment.yaml");
    let dir = tempfile::tempdir().unwrap();
    // No sound card and no ALSA configuration: the device is reported missing.
    let empty_conf = dir.path().join("empty.conf");
    std::fs::write(&empty_conf, "").unwrap();
    let out = Command::new(common::ROOST)
        .args(["check", "--file"])
        .arg(&example)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("ALSA_CONFIG_PATH", &empty_conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("DEP_E311") && text.contains("action:"),
        "{text}"
    );
    // With the file plugin as the default device, the same file passes.
    let conf = dir.path().join("asound.conf");
    roost::recorder::feed::write_test_asound_conf(&conf, Some(Path::new("/dev/zero")), 48_000, 1)
        .unwrap();
    let out = Command::new(common::ROOST)
        .args(["check", "--file"])
        .arg(&example)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("ALSA_CONFIG_PATH", &conf)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Health checks passed\n"
    );
}

#[test]
fn check_reports_a_missing_executable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.yaml");
    std::fs::write(
        &file,
        common::deployment("x", "", "    - {name: a, command: [/opt/none/prog]}\n"),
    )
    .unwrap();
    let (code, text) = check(&file);
    assert_eq!(code, 1);
    assert!(
        text.contains("DEP_E161") && text.contains("/opt/none/prog"),
        "{text}"
    );
}
