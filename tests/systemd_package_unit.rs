//! roost's own unit (packaging/roost.service) under a real manager: Type=notify means the start
//! job finishes only when roost sends READY=1 after its first reconcile, and the watchdog keeps
//! it alive. Needs root (see `support/systemd_sandbox.rs`).

#[path = "support/systemd_sandbox.rs"]
mod sandbox;

use std::path::Path;
use std::time::{Duration, Instant};

use sandbox::Sandbox;

const PACKAGED_UNIT: &str = include_str!("../packaging/roost.service");

#[test]
fn the_packaged_example_deployment_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/deployment.yaml");
    let (deployment, _) = roost::spec::load_file(&path).expect("packaging/deployment.yaml loads");
    assert!(
        deployment.validate().is_empty(),
        "{:?}",
        deployment.validate()
    );
}

#[test]
fn the_packaged_unit_runs_roost_from_etc_with_notify_and_watchdog() {
    let lines: Vec<&str> = PACKAGED_UNIT.lines().collect();
    for expected in [
        "Type=notify",
        "Restart=always",
        "ExecStart=/usr/bin/roost run --file /etc/roost/deployment.yaml --runtime systemd",
        "Environment=ROOST_STATE_DIR=/var/lib/roost",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            lines.contains(&expected),
            "packaging/roost.service lacks {expected:?}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("WatchdogSec=")));
}

/// The packaged unit with the paths of this test: the binary just built, the sandbox's file and
/// state folder, the process runtime (components as roost's children), and a short watchdog so
/// that a missing WATCHDOG=1 shows within the test.
fn unit_for_test(sandbox: &Sandbox) -> String {
    let roost = env!("CARGO_BIN_EXE_roost");
    let file = sandbox.dir().join("deployment.yaml");
    let state = sandbox.dir().join("state");
    PACKAGED_UNIT
        .lines()
        .map(|line| {
            if line.starts_with("ExecStart=") {
                format!(
                    "ExecStart={roost} run --file {} --runtime process",
                    file.display()
                )
            } else if line.starts_with("Environment=ROOST_STATE_DIR=") {
                format!("Environment=ROOST_STATE_DIR={}", state.display())
            } else if line.starts_with("WatchdogSec=") {
                "WatchdogSec=2s".to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn show(sandbox: &Sandbox, property: &str) -> String {
    let out = sandbox.systemctl(&["show", "-p", property, "--value", "roost.service"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn roost_as_a_notify_unit_becomes_active_after_its_first_reconcile() {
    let sandbox = Sandbox::start().await;
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/deployment.yaml"),
        sandbox.dir().join("deployment.yaml"),
    )
    .unwrap();
    std::fs::create_dir_all(sandbox.unit_dir()).unwrap();
    std::fs::write(
        sandbox.unit_dir().join("roost.service"),
        unit_for_test(&sandbox),
    )
    .unwrap();
    let reload = sandbox.systemctl(&["daemon-reload"]);
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );

    // `systemctl start` returns when the start job ends: for Type=notify, at READY=1.
    let started = Instant::now();
    let start = sandbox.systemctl(&["start", "roost.service"]);
    let to_active = started.elapsed();
    assert!(
        start.status.success(),
        "roost.service did not start: {}\n{}\nmanager log:\n{}",
        String::from_utf8_lossy(&start.stderr),
        String::from_utf8_lossy(&sandbox.systemctl(&["status", "roost.service"]).stdout),
        sandbox.log()
    );
    eprintln!("roost.service start -> active (READY=1): {to_active:?}");
    assert_eq!(show(&sandbox, "ActiveState"), "active");
    assert_eq!(show(&sandbox, "SubState"), "running");
    // READY=1 came after the first reconcile, so its status file is already there.
    let status = sandbox.dir().join("state/status.json");
    assert!(status.exists(), "no {} at READY=1", status.display());

    // The watchdog (2 s here) is fed: still the same process, never restarted.
    let pid = show(&sandbox, "MainPID");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(show(&sandbox, "ActiveState"), "active");
    assert_eq!(
        show(&sandbox, "MainPID"),
        pid,
        "roost was restarted (watchdog?)"
    );
    assert_eq!(show(&sandbox, "NRestarts"), "0");
    assert_eq!(show(&sandbox, "Result"), "success");

    let stop = sandbox.systemctl(&["stop", "roost.service"]);
    assert!(stop.status.success());
    assert_eq!(
        show(&sandbox, "Result"),
        "success",
        "roost did not stop cleanly on SIGTERM"
    );
}
