//! `roost run --dir` on the systemd runtime, against a private `systemd --user` (see
//! `support/systemd_sandbox.rs`): units named after their deployment, each deployment in its own
//! slice, exports in the dependents' environment, DEP_E156 while a dependency crash-loops and
//! its recovery, adoption after roost crashes, a removed file's units removed. Needs root.

mod common;
#[path = "support/systemd_sandbox.rs"]
mod sandbox;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use roost::device::{DirConfig, MakeRuntime};
use roost::runtime::RuntimeError;
use roost::runtime::systemd::{SystemdRuntime, SystemdTarget};
use roost::status::{ComponentState, StatusDoc};
use sandbox::Sandbox;

struct Maker(SystemdTarget);

impl MakeRuntime for Maker {
    type R = SystemdRuntime;
    async fn make(&self, _: &Path) -> Result<SystemdRuntime, RuntimeError> {
        Ok(SystemdRuntime::connect(self.0.clone())
            .await?
            .with_deployment_slices())
    }
}

fn target(sandbox: &Sandbox) -> SystemdTarget {
    SystemdTarget::Address {
        bus_address: sandbox.bus_address(),
        unit_dir: sandbox.dir().join("config/systemd/user"),
    }
}

/// The roost binary where confined built-ins can run it: not under /tmp (their PrivateTmp=
/// hides it; a clone of the repository may live there), as tests/sandbox_e2e.rs does. The copy
/// goes with the value.
struct Exe(PathBuf, Option<PathBuf>);

impl Exe {
    fn outside_tmp(tag: &str) -> Self {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_roost"));
        if !built.starts_with("/tmp") {
            return Self(built, None);
        }
        let dir = PathBuf::from(format!(
            "/srv/roost-deployments-e2e-{}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("roost");
        std::fs::copy(&built, &copy).unwrap();
        Self(copy, Some(dir))
    }
}

impl Drop for Exe {
    fn drop(&mut self) {
        if let Some(dir) = &self.1 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn start(sandbox: &Sandbox, dir: &Path, exe: &Exe) -> tokio::task::JoinHandle<()> {
    let cfg = DirConfig {
        dir: dir.to_path_buf(),
        state_dir: sandbox.dir().join("state"),
        exe: exe.0.clone(),
    };
    let maker = Maker(target(sandbox));
    tokio::task::spawn_local(async move {
        if let Err(e) = roost::device::run(cfg, maker, std::future::pending(), || {}).await {
            panic!("device loop stopped: {e}");
        }
    })
}

fn status(sandbox: &Sandbox) -> Option<StatusDoc> {
    serde_json::from_slice(&std::fs::read(sandbox.dir().join("state/status.json")).ok()?).ok()
}

async fn wait(sandbox: &Sandbox, what: &str, want: impl Fn(&StatusDoc) -> bool) -> StatusDoc {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(doc) = status(sandbox)
            && want(&doc)
        {
            return doc;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}; last: {:#?}",
            status(sandbox)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entry<'a>(doc: &'a StatusDoc, name: &str) -> Option<&'a StatusDoc> {
    doc.deployments
        .iter()
        .find(|d| d.deployment.as_deref() == Some(name))
}

fn running(doc: &StatusDoc, names: &[&str]) -> bool {
    names.iter().all(|n| {
        entry(doc, n).is_some_and(|d| {
            d.status == roost::status::OverallStatus::Running
                && d.observed_generation == d.generation
        })
    })
}

fn pid(doc: &StatusDoc, deployment: &str, component: &str) -> Option<u32> {
    (entry(doc, deployment)?.components.iter())
        .find(|c| c.name == component && c.status == ComponentState::Running)?
        .pid
}

fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn base(command: &str) -> String {
    format!(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {{name: rec-site}}\nspec:\n  backoff: {{initial: 100ms, max: 1s, resetAfter: 10s}}\n  exports: {{PORT: \"8080\"}}\n  components:\n    - name: db\n      command: {command}\n"
    )
}

fn app(out: &Path) -> String {
    format!(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {{name: app}}\nspec:\n  dependsOn: [rec-site]\n  components:\n    - name: web\n      command: [\"/bin/sh\", \"-c\", \"echo $REC_SITE_PORT > {}; exec sleep 100000\"]\n",
        out.display()
    )
}

#[tokio::test]
async fn deployments_of_a_folder_run_as_units_in_their_own_slices() {
    tokio::task::LocalSet::new().run_until(folder()).await;
}

async fn folder() {
    let sandbox = Sandbox::start().await;
    let exe = Exe::outside_tmp("slices");
    let dir = sandbox.dir().join("deployments.d");
    std::fs::create_dir(&dir).unwrap();
    let out = sandbox.dir().join("web-saw");
    put(&dir, "rec-site.yaml", &base("[\"/bin/sleep\", \"100000\"]"));
    put(&dir, "app.yaml", &app(&out));
    let task = start(&sandbox, &dir, &exe);
    let doc = wait(&sandbox, "both running", |d| {
        running(d, &["rec-site", "app"])
    })
    .await;
    assert_eq!(doc.reconciler.runtime, "systemd");
    // Units carry their deployment in their names, and sit in its slice ('-' escaped).
    let unit_dir = sandbox.dir().join("config/systemd/user");
    let unit = std::fs::read_to_string(unit_dir.join("roost-rec-site-db.service")).unwrap();
    assert!(unit.contains("Slice=roost-rec\\x2dsite.slice\n"), "{unit}");
    let shown = sandbox.systemctl(&[
        "show",
        "-p",
        "Slice",
        "--value",
        "roost-rec-site-db.service",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout).trim(),
        "roost-rec\\x2dsite.slice"
    );
    let shown = sandbox.systemctl(&["show", "-p", "Slice", "--value", "roost-app-web.service"]);
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout).trim(),
        "roost-app.slice"
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "8080",
        "the export reached app"
    );
    let (db, web) = (
        pid(&doc, "rec-site", "db").unwrap(),
        pid(&doc, "app", "web").unwrap(),
    );

    // roost crashes and starts again: every deployment's units are adopted, nothing restarts.
    task.abort();
    let _ = task.await;
    let task = start(&sandbox, &dir, &exe);
    let doc = wait(&sandbox, "adopted", |d| {
        running(d, &["rec-site", "app"]) && d.reconciler.pid == std::process::id()
    })
    .await;
    assert_eq!(
        (pid(&doc, "rec-site", "db"), pid(&doc, "app", "web")),
        (Some(db), Some(web))
    );

    // The dependency crash-loops: app says DEP_E156 and keeps running; it clears by itself.
    put(
        &dir,
        "rec-site.yaml",
        &base("[\"/bin/sh\", \"-c\", \"exit 3\"]"),
    );
    let doc = wait(&sandbox, "DEP_E156", |d| {
        entry(d, "app").is_some_and(|a| a.errors.iter().any(|e| e.code == "DEP_E156"))
    })
    .await;
    assert_eq!(
        entry(&doc, "app").unwrap().status,
        roost::status::OverallStatus::Error
    );
    assert_eq!(pid(&doc, "app", "web"), Some(web));
    put(&dir, "rec-site.yaml", &base("[\"/bin/sleep\", \"100001\"]"));
    let doc = wait(&sandbox, "recovered", |d| {
        running(d, &["rec-site", "app"]) && d.errors.is_empty()
    })
    .await;
    assert_eq!(pid(&doc, "app", "web"), Some(web));

    // app's file goes: after the grace its unit is stopped and removed, and app leaves.
    std::fs::remove_file(dir.join("app.yaml")).unwrap();
    wait(&sandbox, "app removed", |d| entry(d, "app").is_none()).await;
    assert!(!unit_dir.join("roost-app-web.service").exists());
    let active = sandbox.systemctl(&["is-active", "roost-app-web.service"]);
    assert_ne!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    task.abort();
}

#[tokio::test]
async fn an_uploader_shows_dep_e156_while_the_recorders_microphone_is_gone_under_systemd() {
    tokio::task::LocalSet::new().run_until(microphone()).await;
}

async fn microphone() {
    let sandbox = Sandbox::start().await;
    let exe = Exe::outside_tmp("microphone");
    let dir = sandbox.dir().join("deployments.d");
    std::fs::create_dir(&dir).unwrap();
    let (conf, fifo) = (
        sandbox.dir().join("asound.conf"),
        sandbox.dir().join("mic.fifo"),
    );
    let feed = common::start_feed(&fifo, &conf, &[]);
    // Units get the manager's environment: the test's ALSA file plugin.
    let env = format!("ALSA_CONFIG_PATH={}", conf.display());
    assert!(
        sandbox
            .systemctl(&["set-environment", &env])
            .status
            .success()
    );
    let storage = sandbox.dir().join("storage");
    let exports = format!(
        "  exports: {{RECORDINGS: {}/recordings}}\n",
        storage.display()
    );
    put(
        &dir,
        "recorder-site.yaml",
        &common::recorder_deployment("recorder-site", &storage, &exports),
    );
    let out = sandbox.dir().join("uploader-saw");
    let uploader = format!(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {{name: uploader}}\nspec:\n  dependsOn: [recorder-site]\n  components:\n    - name: rsync\n      command: [\"/bin/sh\", \"-c\", \"echo $RECORDER_SITE_RECORDINGS > {}; exec sleep 100000\"]\n",
        out.display()
    );
    put(&dir, "uploader.yaml", &uploader);
    put(
        &dir,
        "monitor.yaml",
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: monitor}\nspec:\n  components:\n    - name: agent\n      command: [\"/bin/sleep\", \"100000\"]\n",
    );
    let task = start(&sandbox, &dir, &exe);
    let all = ["recorder-site", "uploader", "monitor"];
    let doc = wait(&sandbox, "three running", |d| running(d, &all)).await;
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        format!("{}/recordings", storage.display())
    );
    let unit_dir = sandbox.dir().join("config/systemd/user");
    assert!(
        unit_dir
            .join("roost-recorder-site-recorder.service")
            .exists()
    );
    let (rsync, agent) = (
        pid(&doc, "uploader", "rsync"),
        pid(&doc, "monitor", "agent"),
    );

    // The microphone goes: the recorder's deployment is in error, the uploader says DEP_E156.
    std::process::Command::new("kill")
        .args(["-STOP", &feed.0.id().to_string()])
        .status()
        .unwrap();
    std::fs::remove_file(&fifo).unwrap();
    let doc = wait(&sandbox, "DEP_E156", |d| {
        entry(d, "uploader").is_some_and(|u| u.errors.iter().any(|e| e.code == "DEP_E156"))
    })
    .await;
    let e = (entry(&doc, "uploader").unwrap().errors.iter())
        .find(|e| e.code == "DEP_E156")
        .unwrap();
    // Under systemd the recorder, stuck on a device that stopped, is restarted by its unit and
    // cannot open it again: a crash loop (DEP_E163) or the device's own code (DEP_E311).
    assert!(
        e.message
            .contains("\"recorder-site\" is in error state: DEP_E"),
        "{}",
        e.message
    );
    assert_eq!(
        pid(&doc, "uploader", "rsync"),
        rsync,
        "what runs keeps running"
    );
    assert_eq!(pid(&doc, "monitor", "agent"), agent);

    // It comes back: everything clears by itself.
    drop(feed);
    let _feed = common::start_feed(&fifo, &conf, &[]);
    let doc = wait(&sandbox, "recovered", |d| {
        running(d, &all) && d.errors.is_empty()
    })
    .await;
    assert_eq!(pid(&doc, "uploader", "rsync"), rsync);
    task.abort();
}
