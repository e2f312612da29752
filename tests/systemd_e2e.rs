//! The reconciler with the systemd runtime end to end against a private `systemd --user` (see
//! `support/systemd_sandbox.rs`): what status.json says while components are killed, stopped by
//! an operator, added and removed, while roost itself crashes and starts again, and while the
//! manager goes away. Needs root.

#[path = "support/systemd_sandbox.rs"]
mod sandbox;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use roost::reconcile::{self, Config};
use roost::runtime::systemd::{SystemdRuntime, SystemdTarget};
use roost::status::{ComponentState, ComponentStatus, StatusDoc};
use sandbox::Sandbox;

const TWO_COMPONENTS: &str = r#"apiVersion: roost/v1
kind: Deployment
metadata: {name: e2e}
spec:
  restartPolicy: Always
  backoff: {initial: 100ms, max: 2s, resetAfter: 10s}
  components:
    - name: recorder-sim
      command: ["/bin/sleep", "100000"]
    - name: uploader
      command: ["/bin/sh", "-c", "exec sleep 100000"]
      restartPolicy: OnFailure
      stopTimeout: 2s
"#;

struct Roost {
    task: tokio::task::JoinHandle<()>,
    state: PathBuf,
}

impl Roost {
    /// The reconciler of `roost run` with the systemd runtime on the sandbox's manager, in this
    /// process (the binary's `--runtime systemd` wiring is `app.rs`'s; this is the library path).
    async fn start(sandbox: &Sandbox, file: &Path) -> Self {
        let state = sandbox.dir().join("state");
        let runtime = SystemdRuntime::connect(SystemdTarget::Address {
            bus_address: sandbox.bus_address(),
            unit_dir: sandbox.dir().join("config/systemd/user"),
        })
        .await
        .expect("connect");
        let cfg = Config {
            file: file.to_path_buf(),
            state_dir: state.clone(),
            exe: PathBuf::from(env!("CARGO_BIN_EXE_roost")),
        };
        let task = tokio::task::spawn_local(async move {
            if let Err(e) = reconcile::run(cfg, runtime, std::future::pending(), || {}).await {
                panic!("reconciler stopped: {e}");
            }
        });
        Self { task, state }
    }

    fn status(&self) -> Option<StatusDoc> {
        serde_json::from_slice(&std::fs::read(self.state.join("status.json")).ok()?).ok()
    }

    /// Waits until `want` holds for status.json; panics with the last document.
    async fn wait(
        &mut self,
        what: &str,
        within: Duration,
        want: impl Fn(&StatusDoc) -> bool,
    ) -> StatusDoc {
        let deadline = Instant::now() + within;
        loop {
            let doc = self.status();
            if let Some(doc) = &doc
                && want(doc)
            {
                return doc.clone();
            }
            assert!(
                !self.task.is_finished(),
                "the reconciler ended while waiting for {what}"
            );
            if Instant::now() > deadline {
                panic!("status.json never showed {what}; last: {doc:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// As a crash: no shutdown path runs; the units keep running.
    fn crash(self) {
        self.task.abort();
    }
}

impl Drop for Roost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn component<'a>(doc: &'a StatusDoc, name: &str) -> Option<&'a ComponentStatus> {
    doc.components.iter().find(|c| c.name == name)
}

fn running_pid(doc: &StatusDoc, name: &str) -> Option<u32> {
    component(doc, name)
        .filter(|c| c.status == ComponentState::Running)
        .and_then(|c| c.pid)
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn roost_drives_units_through_their_lives() {
    tokio::task::LocalSet::new().run_until(lives()).await;
}

async fn lives() {
    let mut sandbox = Sandbox::start().await;
    let file = sandbox.dir().join("deployment.yaml");
    write_atomic(&file, TWO_COMPONENTS);
    let unit_dir = sandbox.dir().join("config/systemd/user");
    let mut roost = Roost::start(&sandbox, &file).await;

    // Both components come up as units.
    let doc = roost
        .wait("both components Running", Duration::from_secs(15), |d| {
            running_pid(d, "recorder-sim").is_some() && running_pid(d, "uploader").is_some()
        })
        .await;
    assert_eq!(doc.reconciler.runtime, "systemd");
    assert!(unit_dir.join("roost-e2e-recorder-sim.service").exists());
    assert!(unit_dir.join("roost-e2e-uploader.service").exists());

    // kill -9: systemd restarts it, status.json follows with the new pid and the count.
    let pid = running_pid(&doc, "recorder-sim").unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let doc = roost
        .wait("recorder-sim running again", Duration::from_secs(10), |d| {
            running_pid(d, "recorder-sim").is_some_and(|p| p != pid)
        })
        .await;
    assert!(component(&doc, "recorder-sim").unwrap().restart_count >= 1);

    // An operator stop is respected.
    let out = sandbox.systemctl(&["stop", "roost-e2e-uploader.service"]);
    assert!(out.status.success());
    roost
        .wait("uploader StoppedByOperator", Duration::from_secs(10), |d| {
            component(d, "uploader").is_some_and(|c| {
                c.status == ComponentState::Stopped
                    && c.reason == Some(roost::status::Reason::StoppedByOperator)
            })
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let doc = roost.status().unwrap();
    assert_eq!(
        component(&doc, "uploader")
            .unwrap()
            .reason
            .map(|r| r.to_string())
            .as_deref(),
        Some("StoppedByOperator")
    );

    // roost killed and started again: running units are adopted, not restarted.
    let pid = running_pid(&doc, "recorder-sim").unwrap();
    roost.crash();
    std::fs::remove_file(sandbox.dir().join("state/status.json")).unwrap();
    let mut roost = Roost::start(&sandbox, &file).await;
    let doc = roost
        .wait(
            "a restarted roost reporting",
            Duration::from_secs(15),
            |d| running_pid(d, "recorder-sim").is_some(),
        )
        .await;
    assert_eq!(
        running_pid(&doc, "recorder-sim"),
        Some(pid),
        "adoption restarted a unit"
    );

    // A component added by an atomic replace of the file.
    let added =
        format!("{TWO_COMPONENTS}    - name: late\n      command: [\"/bin/sleep\", \"100000\"]\n");
    let replaced = Instant::now();
    write_atomic(&file, &added);
    roost
        .wait(
            "the added component Running",
            Duration::from_secs(10),
            |d| running_pid(d, "late").is_some(),
        )
        .await;
    println!(
        "atomic replace adding a component -> Running in status.json: {:?}",
        replaced.elapsed()
    );
    assert!(unit_dir.join("roost-e2e-late.service").exists());

    // Removed from the file: its unit is stopped and deleted.
    write_atomic(&file, TWO_COMPONENTS);
    roost
        .wait("the removed component gone", Duration::from_secs(10), |d| {
            component(d, "late").is_none()
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while unit_dir.join("roost-e2e-late.service").exists() {
        assert!(
            Instant::now() < deadline,
            "unit file of a removed component stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A component that exits at once: systemd restarts it until its start limit, roost shows
    // the crash loop (DEP_E163) and keeps restarting it with its own back-off.
    let crashing = format!(
        "{TWO_COMPONENTS}    - name: crasher\n      command: [\"/bin/sh\", \"-c\", \"exit 1\"]\n"
    );
    write_atomic(&file, &crashing);
    let doc = roost
        .wait(
            "crasher in CrashLoopBackOff",
            Duration::from_secs(15),
            |d| {
                component(d, "crasher")
                    .is_some_and(|c| c.reason == Some(roost::status::Reason::CrashLoopBackOff))
                    && d.errors.iter().any(|e| e.code == "DEP_E163")
            },
        )
        .await;
    let crasher = component(&doc, "crasher").unwrap();
    assert_eq!(crasher.status, ComponentState::Error);
    assert_eq!(crasher.exit_code, Some(1));
    assert!(crasher.restart_count >= 1, "{crasher:?}");
    write_atomic(&file, TWO_COMPONENTS);
    roost
        .wait("crasher removed", Duration::from_secs(10), |d| {
            component(d, "crasher").is_none()
        })
        .await;

    // The manager goes away: DEP_E151; it comes back: recovery.
    sandbox.stop_manager();
    roost
        .wait("DEP_E151", Duration::from_secs(10), |d| {
            d.errors.iter().any(|e| e.code == "DEP_E151")
        })
        .await;
    sandbox.start_manager().await;
    roost
        .wait(
            "recovery after the manager returned",
            Duration::from_secs(20),
            |d| {
                d.errors.iter().all(|e| e.code != "DEP_E151")
                    && running_pid(d, "recorder-sim").is_some()
            },
        )
        .await;

    // state: stopped stops and disables every unit.
    write_atomic(
        &file,
        &TWO_COMPONENTS.replace("spec:\n", "spec:\n  state: stopped\n"),
    );
    roost
        .wait("every component Stopped", Duration::from_secs(15), |d| {
            d.components
                .iter()
                .all(|c| c.status == ComponentState::Stopped)
        })
        .await;
    let wants = sandbox
        .dir()
        .join("config/systemd/user/default.target.wants");
    assert!(
        !wants.join("roost-e2e-recorder-sim.service").exists(),
        "a stopped unit stays enabled"
    );
}
