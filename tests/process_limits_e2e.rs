//! The process runtime at its limits, end to end on real processes: a removed component is
//! stopped by its own stopTimeout; 300 components start under the usual soft limit of 1024 open
//! files; children that detach with setsid are stopped with their component, whether it is
//! stopped or exits by itself.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Starts `roost run` on `r` under `ulimit ARGS` (open files limits).
fn start_with_ulimit(r: &mut Roost, args: &str) {
    let child = Command::new("sh")
        .args(["-c", &format!("ulimit {args} && exec \"$0\" \"$@\"")])
        .arg(ROOST)
        .args(["run", "--runtime", "process", "--file"])
        .arg(&r.file)
        .arg("--state-dir")
        .arg(&r.state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(r.path("roost.log")).unwrap())
        .spawn()
        .unwrap();
    r.child = Some(child);
}

#[test]
fn a_removed_component_is_stopped_by_its_own_stop_timeout() {
    let tag = unique("removed");
    let stubborn = shell(
        "stubborn",
        &format!("trap '' TERM; while :; do sleep 1; done # {tag}"),
        "",
    )
    .replace("stopTimeout: 2s", "stopTimeout: 1s");
    let keep = sleeper("keep", &unique("keep"));
    let mut r = Roost::new(&deployment("removal", "", &format!("{stubborn}{keep}")));
    r.start();
    r.wait_succeeded(1);
    let t0 = Instant::now();
    r.replace_atomically(&deployment("removal", "", &keep));
    r.wait_for("removed", WAIT, |s| {
        s["components"].as_array().is_some_and(|c| c.len() == 1)
    });
    while !processes_with(&tag).is_empty() && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t0.elapsed();
    eprintln!("figure: removed component (stopTimeout 1s, ignores SIGTERM) gone in {took:?}");
    // Its own 1 s, not the 10 s default (generous for a loaded machine).
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(processes_with(&tag).is_empty());
}

#[test]
fn three_hundred_components_start_under_a_soft_limit_of_1024_files() {
    let tag = unique("many");
    let comps: String = (0..300).map(|i| sleeper(&format!("c{i}"), &tag)).collect();
    let mut r = Roost::new(&deployment("many", "", &comps));
    let t0 = Instant::now();
    start_with_ulimit(&mut r, "-Sn 1024");
    let s = r.wait_for("all 300 running", Duration::from_secs(120), |s| {
        s["phase"] == "Succeeded"
            && s["components"]
                .as_array()
                .is_some_and(|c| c.iter().filter(|c| c["status"] == "Running").count() == 300)
    });
    eprintln!(
        "figure: 300 components, soft limit 1024: all Running in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(s["errors"].as_array().unwrap().is_empty(), "{s:#}");
    assert_eq!(processes_with(&tag).len(), 300);
    assert_eq!(r.stop(), Some(0));
    assert!(processes_with(&tag).is_empty());
}

#[test]
fn children_that_detach_with_setsid_are_stopped_with_their_component() {
    let tag = unique("detached");
    // 20 children that leave the component's process group and session.
    let spawner = shell(
        "spawner",
        &format!(
            "for i in $(seq 20); do setsid sh -c 'sleep 1000 # {tag}' & done; while :; do sleep 1; done"
        ),
        "",
    );
    let mut r = Roost::new(&deployment("detach", "", &spawner));
    r.start();
    r.wait_succeeded(1);
    let deadline = Instant::now() + WAIT;
    while processes_with(&tag).len() <= 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The 20 detached ones (the spawner's own command line names the tag too).
    assert!(processes_with(&tag).len() > 20);
    r.replace_atomically(&deployment("detach", "  state: stopped\n", &spawner));
    r.wait_for("stopped", WAIT, |s| s["phase"] == "Stopped");
    assert_eq!(processes_with(&tag), Vec::<u32>::new(), "stopped with it");

    // A component that exits by itself takes its detached children with it too.
    let tag2 = unique("orphans");
    let quitter = shell(
        "quitter",
        &format!(
            "for i in $(seq 5); do setsid sh -c 'sleep 1000 # {tag2}' & done; sleep 0.5; exit 3"
        ),
        "      restartPolicy: Never\n",
    );
    r.replace_atomically(&deployment("detach", "", &quitter));
    r.wait_for("exited", WAIT, |s| {
        s["components"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["name"] == "quitter" && c["reason"] == "Failed")
        })
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&tag2).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        processes_with(&tag2),
        Vec::<u32>::new(),
        "gone with their component"
    );
}

#[test]
fn a_start_that_runs_out_of_file_descriptors_says_so() {
    let tag = unique("nofile");
    let comps: String = (0..40).map(|i| sleeper(&format!("c{i}"), &tag)).collect();
    let mut r = Roost::new(&deployment("nofile", "", &comps));
    // Hard limit 48: roost cannot raise it, and runs out after a few components.
    start_with_ulimit(&mut r, "-n 48");
    let s = r.wait_for("DEP_E164", WAIT, |s| {
        s["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["code"] == "DEP_E164"))
    });
    let failed = s["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["reason"] == "OutOfDescriptors")
        .count();
    assert!(failed > 0, "{s:#}");
    let err = s["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["code"] == "DEP_E164")
        .unwrap();
    assert!(
        err["action"].as_str().unwrap().contains("LimitNOFILE"),
        "{err}"
    );
    assert_eq!(r.stop(), Some(0));
    assert!(processes_with(&tag).is_empty());
}
