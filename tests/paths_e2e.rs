//! Paths given on the command line are resolved once, at start: `roost run --state-dir .state`
//! (as the README writes it) from some folder is the same state folder as its absolute spelling,
//! so `roost plan` sees no change that is not there, and the recorder is given absolute paths.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn yaml(name: &str, tag: &str) -> String {
    // A recorder without a storage path (its storage goes into the state folder) whose device
    // does not exist: the component runs and retries, which is all this test needs.
    let recorder = "  recorder:\n    device: default\n    sampleRate: 16000\n    channels: 1\n    sampleFormat: i16\n    duration: 1s\n";
    deployment(name, recorder, &sleeper("helper", tag))
}

/// `roost plan` in the test's folder, the state folder given by `--state-dir` or, with
/// `from_env`, by ROOST_STATE_DIR.
fn plan(r: &Roost, state_dir: &str, from_env: bool) -> Output {
    let mut cmd = Command::new(ROOST);
    cmd.args(["plan", "--file", "deployment.yaml"])
        .current_dir(r.dir.path());
    if from_env {
        cmd.env("ROOST_STATE_DIR", state_dir);
    } else {
        cmd.args(["--state-dir", state_dir]);
    }
    cmd.output().unwrap()
}

#[test]
fn a_relative_state_dir_is_the_same_folder_as_its_absolute_spelling() {
    let tag = unique("relpath");
    let mut r = Roost::new(&yaml("relpath", &tag));
    r.state = r.path(".state");
    let child = Command::new(ROOST)
        .args(["run", "--runtime", "process", "--file", "deployment.yaml"])
        .args(["--state-dir", ".state"])
        .current_dir(r.dir.path())
        .env("ALSA_CONFIG_PATH", r.path("no-such-asound.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(r.path("roost.log")).unwrap())
        .spawn()
        .unwrap();
    r.child = Some(child);
    r.wait_for("both components started", Duration::from_secs(20), |s| {
        component(s, "helper")["status"] == "Running" && component(s, "recorder")["pid"].is_u64()
    });

    let absolute = r.state.to_str().unwrap().to_string();
    for (spelling, from_env) in [
        (".state", false),
        ("./.state/", false),
        (absolute.as_str(), false),
        (".state", true),
    ] {
        let out = plan(&r, spelling, from_env);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{spelling} (env: {from_env}): {out:?}"
        );
        assert!(
            text.contains("No changes"),
            "plan with state folder {spelling} (env: {from_env}) sees a change that is not there:\n{text}"
        );
    }

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.state.join("recorder-config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["storage"]["path"].as_str(),
        Some(r.state.join("storages").to_str().unwrap()),
        "the recorder's storage path is absolute: {config:#}"
    );
    assert_eq!(r.stop(), Some(0));
    assert!(processes_with(&tag).is_empty());
}
