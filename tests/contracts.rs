//! Contracts other tools rely on: committed schemas equal the generated ones, every example
//! loads, an old status file stays readable, `roost explain` and `roost logs` work.

mod common;

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_schemas_equal_generated() {
    for (kind, generated) in [
        ("deployment", roost::app::deployment_schema()),
        ("status", roost::app::status_schema()),
        ("view", roost::app::view_schema()),
    ] {
        let path = root().join(format!("schemas/{kind}.schema.json"));
        let committed = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            committed.trim_end(),
            generated.trim_end(),
            "{} is stale: run `cargo run -- schema {kind} > schemas/{kind}.schema.json`",
            path.display()
        );
    }
}

#[test]
fn every_example_loads_and_points_at_the_schema() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schemas/deployment.schema.json"),
            "{} must start with the schema line",
            path.display()
        );
        roost::spec::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert!(n >= 1);
    roost::spec::load_file(&root().join("packaging/deployment.yaml"))
        .map(|_| ())
        .unwrap_or_else(|e| {
            // packaging may not exist yet in every checkout of this history
            assert!(
                matches!(e, roost::spec::LoadError::Unreadable { .. }),
                "{e}"
            );
        });
}

#[test]
fn an_old_minimal_status_file_stays_readable() {
    // The first published shape, with optional fields missing.
    let old = r#"{"apiVersion":"roost/v1","kind":"DeploymentStatus","deployment":"m","generation":1,
        "observedGeneration":1,"phase":"Succeeded","status":"Running",
        "components":[{"name":"a","status":"Running"}],
        "reconciler":{"pid":1,"version":"0.1.0","runtime":"process"},"updatedAt":"2026-11-22T01:02:03Z"}"#;
    let doc: roost::status::StatusDoc = serde_json::from_str(old).unwrap();
    assert_eq!(doc.exit_code(), 0);
}

#[test]
fn explain_prints_title_and_action() {
    let out = Command::new(common::ROOST)
        .args(["explain", "DEP_E163"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("Crash loop") && text.contains("Recommended action"),
        "{text}"
    );
    for code in [
        "DEP_E151", "DEP_E152", "DEP_E156", "DEP_E161", "DEP_E162", "DEP_E163",
    ] {
        assert!(roost::errors::lookup(code).is_some(), "{code}");
    }
    let out = Command::new(common::ROOST)
        .args(["explain", "DEP_E999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `roost explain e317` and `roost explain 311` are what people type: found.
#[test]
fn explain_takes_a_code_as_people_type_it() {
    for typed in ["e317", "311", "DEP-E303", "dep_e321"] {
        let out = Command::new(common::ROOST)
            .args(["explain", typed])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{typed}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("DEP_E3"),
            "{typed}"
        );
    }
}

/// A reader that stops early (`| head -1`) ends the printing commands quietly: no panic, no
/// backtrace, no error message; exit 0 or death by SIGPIPE, as `cat` ends. The reader is gone
/// before the first line here, so every run meets the closed pipe.
#[test]
fn a_pipe_closed_early_ends_printing_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [
        vec!["explain"],
        vec!["explain", "311"],
        vec!["schema", "deployment"],
        vec!["schema", "status"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(common::ROOST)
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(13),
            "{args:?}: {:?}",
            out.status
        );
    }
}

#[test]
fn status_command_reports_and_exits_by_health() {
    let tag = common::unique("st");
    let mut r = common::Roost::new(&common::deployment("st", "", &common::sleeper("a", &tag)));
    r.start();
    r.wait_succeeded(1);
    let out = Command::new(common::ROOST)
        .args(["status", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for section in [
        "Running (no recorder in this deployment).",
        "Components",
        "Deployment st",
    ] {
        assert!(text.contains(section), "{text}");
    }
    let out = Command::new(common::ROOST)
        .args(["status", "--json", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["phase"], "Succeeded");
    // ROOST_STATE_DIR is honoured
    let out = Command::new(common::ROOST)
        .arg("status")
        .env("ROOST_STATE_DIR", &r.state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    r.stop();
    let out = Command::new(common::ROOST)
        .args(["status", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(common::ROOST)
        .args(["status", "--state-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "not started");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not started"));
    // A status left by a roost that died is stale: not healthy, whatever it says.
    let mut r = common::Roost::new(&common::deployment("st2", "", &common::sleeper("a", &tag)));
    r.start();
    r.wait_succeeded(1);
    r.kill9();
    let out = Command::new(common::ROOST)
        .args(["status", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    // the next roost would clean the leftover component up; here, by hand
    for pid in common::processes_with(&tag) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

#[test]
fn logs_are_captured_rotated_and_followed() {
    let comps = common::shell(
        "talker",
        "i=0; while [ $i -lt 400 ]; do echo line-$i-padding-padding-padding; i=$((i+1)); done; echo done-talking; sleep 1000",
        "",
    );
    let mut r = common::Roost::new(&common::deployment("logs", "", &comps));
    // small cap so rotation happens
    r.child = Some(
        Command::new(common::ROOST)
            .args(["run", "--runtime", "process", "--file"])
            .arg(&r.file)
            .arg("--state-dir")
            .arg(&r.state)
            .env("ROOST_LOG_MAX_BYTES", "4096")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    r.wait_succeeded(1);
    let log = r.state.join("logs/talker.log");
    for _ in 0..200 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("done-talking")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(std::fs::metadata(&log).unwrap().len() <= 4096);
    assert!(r.state.join("logs/talker.log.1").exists());
    assert!(!r.state.join("logs/talker.log.3").exists());
    let out = Command::new(common::ROOST)
        .args(["logs", "talker", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("done-talking\n"),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    let out = Command::new(common::ROOST)
        .args(["logs", "nobody", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn plan_shows_what_would_change_and_changes_nothing() {
    let (ta, tb) = (common::unique("pa"), common::unique("pb"));
    let yaml = common::deployment(
        "plan",
        "",
        &(common::sleeper("a", &ta) + &common::sleeper("b", &tb)),
    );
    let mut r = common::Roost::new(&yaml);
    let state = r.state.clone();
    let plan = |file: &Path| {
        let out = Command::new(common::ROOST)
            .args(["plan", "--file"])
            .arg(file)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = plan(&r.file);
    assert!(
        before.contains("start a") && before.contains("start b"),
        "{before}"
    );
    r.start();
    let s = r.wait_succeeded(1);
    assert!(plan(&r.file).contains("No changes"));
    let changed = r.path("changed.yaml");
    std::fs::write(
        &changed,
        common::deployment(
            "plan",
            "",
            &(common::sleeper("a", &ta) + &common::sleeper("c", &tb)),
        ),
    )
    .unwrap();
    let text = plan(&changed);
    assert!(
        text.contains("remove b") && text.contains("start c") && !text.contains(" a"),
        "{text}"
    );
    let after = r.status().unwrap();
    assert_eq!(
        common::pid_of(&after, "b"),
        common::pid_of(&s, "b"),
        "plan must not touch anything"
    );
}

#[test]
fn json_logs_and_logs_follow() {
    let mut r = common::Roost::new(&common::deployment(
        "follow",
        "",
        &common::shell(
            "talker",
            "echo first; sleep 0.5; echo second; sleep 1000",
            "",
        ),
    ));
    r.child = Some(
        Command::new(common::ROOST)
            .args([
                "run",
                "--log-format",
                "json",
                "--runtime",
                "process",
                "--file",
            ])
            .arg(&r.file)
            .arg("--state-dir")
            .arg(&r.state)
            .stderr(std::fs::File::create(r.path("roost.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    r.wait_succeeded(1);
    let log = std::fs::read_to_string(r.path("roost.log")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(first["fields"].is_object(), "{first}");
    let mut follow = Command::new(common::ROOST)
        .args(["logs", "talker", "--follow", "--state-dir"])
        .arg(&r.state)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = follow.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut buf = [0u8; 256];
    while !seen.contains("second") && std::time::Instant::now() < deadline {
        use std::io::Read;
        let n = out.read(&mut buf).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert!(
        seen.contains("first\n") && seen.contains("second\n"),
        "{seen}"
    );
}

/// Every YAML block of the README and every example (and the packaged deployment) is a
/// deployment `roost check --offline` passes: what a reader copies works.
#[test]
fn every_readme_block_and_example_passes_check() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, block) in readme.split("```yaml\n").skip(1).enumerate() {
        let block = block.split("```").next().unwrap();
        let file = dir.path().join(format!("readme-{i}.yaml"));
        std::fs::write(&file, block).unwrap();
        files.push(file);
    }
    assert!(files.len() >= 3, "README's yaml blocks: {}", files.len());
    for e in std::fs::read_dir(root.join("examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            files.push(p);
        }
    }
    files.push(root.join("packaging/deployment.yaml"));
    for file in &files {
        let out = Command::new(common::ROOST)
            .args(["check", "--offline", "--file"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(file).unwrap()
        );
    }
}

/// The README's error table lists every code roost can report.
#[test]
fn the_readme_lists_every_error_code() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for c in roost::errors::CATALOGUE {
        assert!(
            readme.contains(&format!("| {} | {} |", c.code, c.title)),
            "{} {}",
            c.code,
            c.title
        );
    }
}
