//! `roost run --dir` end to end on the process runtime, with the real binary: several
//! deployments on one device, a dependency whose microphone goes away and comes back (real
//! ALSA through the file plugin), files removed, renamed, half written, in a cycle, and
//! roost killed with -9 while a dependency starts. Each expected value is written here.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ROOST, alive, deployment, processes_with, shell, sleeper, start_feed, unique};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(40);

/// A folder of deployment files and `roost run --dir` on it.
struct Device {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Device {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        Self { dir, child: None }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn folder(&self) -> PathBuf {
        self.path("d")
    }

    fn state(&self) -> PathBuf {
        self.path("state")
    }

    /// Writes `name` in the folder atomically (temp file, rename), as sync tools do.
    fn put(&self, name: &str, yaml: &str) {
        let tmp = self.folder().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.folder().join(name)).unwrap();
    }

    fn start(&mut self, envs: &[(&str, &Path)]) {
        let child = Command::new(ROOST)
            .args(["run", "--runtime", "process", "--dir"])
            .arg(self.folder())
            .arg("--state-dir")
            .arg(self.state())
            .env("ROOST_LOG", "debug")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("roost.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn status(&self) -> Option<Value> {
        let bytes = std::fs::read(self.state().join("status.json")).ok()?;
        Some(serde_json::from_slice(&bytes).expect("status.json must always parse"))
    }

    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status()
                && pred(&s)
            {
                return s;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.path("roost.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "timed out waiting for {what}\nstatus: {:#?}\nroost log tail:\n{}",
                    self.status(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "roost did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn roost_status(&self, args: &[&str]) -> (String, i32) {
        let out = Command::new(ROOST)
            .arg("status")
            .args(args)
            .arg("--state-dir")
            .arg(self.state())
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// The entry of deployment `name` in the device's status.json.
fn entry<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    (s["deployments"].as_array()?.iter()).find(|d| d["deployment"] == name)
}

fn is(s: &Value, name: &str, status: &str) -> bool {
    entry(s, name).is_some_and(|d| d["status"] == status)
}

fn codes(d: &Value) -> Vec<String> {
    (d["errors"].as_array().into_iter().flatten())
        .filter_map(|e| e["code"].as_str().map(str::to_string))
        .collect()
}

fn pid_in(s: &Value, deployment: &str, component: &str) -> u64 {
    let d = entry(s, deployment).unwrap();
    (d["components"].as_array().unwrap().iter())
        .find(|c| c["name"] == component)
        .and_then(|c| c["pid"].as_u64())
        .unwrap_or(0)
}

fn running_everywhere(s: &Value, names: &[&str]) -> bool {
    names.iter().all(|n| {
        entry(s, n).is_some_and(|d| {
            d["status"] == "Running"
                && d["phase"] == "Succeeded"
                && d["generation"] == d["observedGeneration"]
        })
    })
}

#[test]
fn an_uploader_waits_for_the_recorder_shows_dep_e156_while_its_microphone_is_gone_and_recovers() {
    let mut dev = Device::new();
    let storage = dev.path("storage");
    let out = dev.path("uploader-saw");
    let tag = unique("e2e-monitor");
    dev.put(
        "recorder-site.yaml",
        &common::recorder_deployment(
            "recorder-site",
            &storage,
            &format!(
                "  exports: {{RECORDINGS: {}/recordings}}\n",
                storage.display()
            ),
        ),
    );
    let script = format!(
        "echo \"$RECORDER_SITE_RECORDINGS\" > {}; while :; do sleep 1000; done",
        out.display()
    );
    dev.put(
        "uploader.yaml",
        &deployment(
            "uploader",
            "  dependsOn: [recorder-site]\n",
            &shell("rsync", &script, ""),
        ),
    );
    dev.put(
        "monitor.yaml",
        &deployment("monitor", "", &sleeper("agent", &tag)),
    );
    let conf = dev.path("asound.conf");
    let fifo = dev.path("mic.fifo");
    let feed = start_feed(&fifo, &conf, &[]);
    dev.start(&[("ALSA_CONFIG_PATH", &conf)]);
    let all = ["recorder-site", "uploader", "monitor"];
    let s = dev.wait("three deployments running", LONG, |s| {
        running_everywhere(s, &all)
    });
    assert_eq!(s["status"], "Running", "the device's summary: {s:#}");
    assert_eq!(s["deployments"].as_array().unwrap().len(), 3);
    // The uploader got the recorder's export, and started only once the recorder recorded
    // (its report said so: "starting" is not yet healthy).
    let seen = std::fs::read_to_string(&out).unwrap();
    assert_eq!(seen.trim(), format!("{}/recordings", storage.display()));
    let rec = entry(&s, "recorder-site").unwrap();
    let recorder = &rec["components"][0];
    assert_eq!(recorder["output"]["state"], "recording", "{recorder:#}");
    let log = std::fs::read_to_string(dev.path("roost.log")).unwrap();
    // Only the uploader has a dependency: a hold is its.
    let waited = log.find("the device's links changed holds=1");
    let started = log
        .find("applying action=start rsync")
        .expect("rsync started");
    assert!(
        waited.is_some_and(|w| w < started),
        "the uploader waited for the recorder"
    );
    let (uploader_pid, monitor_pid) = (
        pid_in(&s, "uploader", "rsync"),
        pid_in(&s, "monitor", "agent"),
    );
    // Each deployment keeps its own files.
    for n in all {
        assert!(
            dev.state()
                .join("deployments")
                .join(n)
                .join("last-good.yaml")
                .exists(),
            "{n}"
        );
    }
    let (text, code) = dev.roost_status(&[]);
    assert_eq!(code, 0, "{text}");
    for n in all {
        assert!(
            text.contains(&format!("  {n:<16} Running (Succeeded)")),
            "{text}"
        );
    }
    let (one, code) = dev.roost_status(&["uploader"]);
    assert_eq!(code, 0, "{one}");
    assert!(one.contains("Deployment uploader:"), "{one}");

    // The microphone goes: the recorder's deployment is in error, the uploader says DEP_E156
    // and keeps running; the monitor is untouched.
    Command::new("kill")
        .args(["-STOP", &feed.0.id().to_string()])
        .status()
        .unwrap();
    std::fs::remove_file(&fifo).unwrap();
    let s = dev.wait("DEP_E156 on the uploader", LONG, |s| {
        entry(s, "uploader")
            .is_some_and(|d| d["status"] == "Error" && codes(d).contains(&"DEP_E156".to_string()))
    });
    let up = entry(&s, "uploader").unwrap();
    let e156 = (up["errors"].as_array().unwrap().iter())
        .find(|e| e["code"] == "DEP_E156")
        .unwrap();
    assert!(
        e156["message"]
            .as_str()
            .unwrap()
            .contains("dependent deployment \"recorder-site\" is in error state: DEP_E3"),
        "{e156:#}"
    );
    assert!(
        e156["action"]
            .as_str()
            .unwrap()
            .contains("troubleshoot the dependent deployment that is in error state")
    );
    assert_eq!(
        pid_in(&s, "uploader", "rsync"),
        uploader_pid,
        "what runs keeps running"
    );
    assert!(is(&s, "monitor", "Running"));
    assert_eq!(pid_in(&s, "monitor", "agent"), monitor_pid);
    assert_eq!(
        s["status"], "Error",
        "the device is never greener than its worst deployment"
    );

    // It comes back: everything clears by itself, nothing was restarted.
    drop(feed);
    let _feed = start_feed(&fifo, &conf, &[]);
    let s = dev.wait("recovered", LONG, |s| {
        running_everywhere(s, &all) && s["errors"].as_array().unwrap().is_empty()
    });
    assert_eq!(pid_in(&s, "uploader", "rsync"), uploader_pid);
    assert_eq!(s["status"], "Running");

    // The monitor's file is removed: after the grace its agent stops and it leaves the status.
    std::fs::remove_file(dev.folder().join("monitor.yaml")).unwrap();
    let removed_at = Instant::now();
    let s = dev.wait("monitor gone", LONG, |s| entry(s, "monitor").is_none());
    assert!(
        removed_at.elapsed() >= Duration::from_secs(9),
        "the grace is 10 s: {:?}",
        removed_at.elapsed()
    );
    assert!(!alive(monitor_pid));
    assert!(processes_with(&tag).is_empty());
    assert!(!dev.state().join("deployments/monitor").exists());
    assert!(running_everywhere(&s, &["recorder-site", "uploader"]));
    assert_eq!(dev.stop(), Some(0));
    assert!(!alive(uploader_pid));
}

#[test]
fn a_bad_file_disturbs_only_its_own_deployment() {
    let mut dev = Device::new();
    let (ta, tb) = (unique("e2e-a"), unique("e2e-b"));
    dev.put("a.yaml", &deployment("a", "", &sleeper("x", &ta)));
    dev.put("b.yaml", &deployment("b", "", &sleeper("y", &tb)));
    dev.start(&[]);
    let s = dev.wait("both running", LONG, |s| running_everywhere(s, &["a", "b"]));
    let a_pid = pid_in(&s, "a", "x");
    // Logs by component, or by deployment/component.
    for name in ["x", "a/x", "b/y"] {
        let out = Command::new(ROOST)
            .args(["logs", name, "--state-dir"])
            .arg(dev.state())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dev.put("a.yaml", "apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: a}\nspec:\n  components:\n    - name: x\n      command: [\"/bin/sleep\", 5s]\n      bogus: 1\n");
    let tc = unique("e2e-b2");
    dev.put(
        "b.yaml",
        &deployment(
            "b",
            "",
            &format!("{}{}", sleeper("y", &tb), sleeper("z", &tc)),
        ),
    );
    let s = dev.wait("b's change applied, a refused", LONG, |s| {
        entry(s, "a").is_some_and(|d| d["specError"].is_object())
            && entry(s, "b").is_some_and(|d| {
                d["generation"] == 2 && d["observedGeneration"] == 2 && d["status"] == "Running"
            })
    });
    let a = entry(&s, "a").unwrap();
    assert!(
        a["specError"]["message"]
            .as_str()
            .unwrap()
            .contains("bogus"),
        "{a:#}"
    );
    assert_eq!(a["generation"], 1, "the last valid file stays in force");
    assert_eq!(
        pid_in(&s, "a", "x"),
        a_pid,
        "nothing running is disturbed by a bad file"
    );
    assert_eq!(processes_with(&tc).len(), 1);
    assert_eq!(
        s["status"], "Error",
        "a refused file is news on the device: {s:#}"
    );
    let (text, code) = dev.roost_status(&[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("file refused: DEP_E162"), "{text}");
}

#[test]
fn cycles_missing_dependencies_duplicates_and_renames_each_get_a_clear_status() {
    let mut dev = Device::new();
    let ta = unique("e2e-cyc");
    dev.put(
        "a.yaml",
        &deployment("a", "  dependsOn: [b]\n", &sleeper("x", &ta)),
    );
    dev.put(
        "b.yaml",
        &deployment("b", "  dependsOn: [c]\n", &sleeper("x", &ta)),
    );
    dev.put(
        "c.yaml",
        &deployment("c", "  dependsOn: [a]\n", &sleeper("x", &ta)),
    );
    dev.put(
        "lonely.yaml",
        &deployment("lonely", "  dependsOn: [nowhere]\n", &sleeper("x", &ta)),
    );
    dev.start(&[]);
    // a and b are read first; c closes the cycle a -> b -> c -> a and is refused, naming it.
    let s = dev.wait("the cycle refused", LONG, |s| {
        s["deployments"].as_array().is_some_and(|ds| {
            ds.iter().any(|d| {
                d["specError"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("cycle"))
            })
        })
    });
    let refused = (s["deployments"].as_array().unwrap().iter())
        .find(|d| d["specError"].is_object())
        .unwrap();
    let message = refused["specError"]["message"].as_str().unwrap();
    assert!(message.contains("c -> a -> b -> c"), "{message}");
    assert!(message.contains("c.yaml"), "{message}");
    // Nothing of the cycle starts (b waits for c, a for b), and nothing loops.
    let lonely = entry(&s, "lonely").unwrap();
    assert_eq!(lonely["status"], "Pending");
    assert!(
        codes(lonely).contains(&"DEP_E157".to_string()),
        "{lonely:#}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        processes_with(&ta).is_empty(),
        "nothing of the cycle or of lonely runs"
    );
    let later = dev.status().unwrap();
    assert_eq!(
        entry(&later, "lonely").unwrap()["generation"],
        1,
        "no retry loop"
    );
    // The cycle is broken in another file than the refused one (a no longer depends on b), and
    // the missing dependency appears: c is read again, and everything starts by itself.
    dev.put("a.yaml", &deployment("a", "", &sleeper("x", &ta)));
    dev.put(
        "nowhere.yaml",
        &deployment("nowhere", "", &sleeper("y", &ta)),
    );
    let s = dev.wait("all running", LONG, |s| {
        running_everywhere(s, &["a", "b", "c", "lonely", "nowhere"])
    });
    assert_eq!(processes_with(&ta).len(), 5, "a, b, c, lonely, nowhere");
    // A second file naming an existing deployment is refused, naming both files.
    dev.put("a-copy.yaml", &deployment("a", "", &sleeper("x", &ta)));
    let s2 = dev.wait("duplicate refused", LONG, |s| {
        s["specError"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("a-copy.yaml"))
    });
    let m = s2["specError"]["message"].as_str().unwrap();
    assert!(
        m.contains("already declared by") && m.contains("/a.yaml"),
        "{m}"
    );
    std::fs::remove_file(dev.folder().join("a-copy.yaml")).unwrap();
    // A renamed file keeps its deployment running (same pid), and the status names the new file.
    let pid = pid_in(&s, "nowhere", "y");
    std::fs::rename(
        dev.folder().join("nowhere.yaml"),
        dev.folder().join("renamed.yaml"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(12));
    let s = dev.wait("renamed", LONG, |s| {
        entry(s, "nowhere").is_some_and(|d| {
            d["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("renamed.yaml"))
        })
    });
    assert_eq!(pid_in(&s, "nowhere", "y"), pid, "a rename restarts nothing");
    assert!(s["specError"].is_null(), "{s:#}");
}

#[test]
fn a_half_written_file_is_read_once_whole_and_fifty_files_all_converge() {
    let mut dev = Device::new();
    let tag = unique("e2e-fifty");
    for i in 0..50 {
        dev.put(
            &format!("d{i:02}.yaml"),
            &deployment(&format!("d{i:02}"), "", &sleeper("x", &tag)),
        );
    }
    dev.start(&[]);
    let names: Vec<String> = (0..50).map(|i| format!("d{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    dev.wait("fifty running", Duration::from_secs(90), |s| {
        running_everywhere(s, &refs)
    });
    assert_eq!(processes_with(&tag).len(), 50);
    // Written in place in two halves with a pause: never refused half way.
    let yaml = deployment("half", "", &sleeper("x", &tag));
    let (first, second) = yaml.split_at(yaml.len() / 2);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(dev.folder().join("half.yaml")).unwrap();
        f.write_all(first.as_bytes()).unwrap();
        f.sync_all().unwrap();
        std::thread::sleep(Duration::from_millis(600));
        f.write_all(second.as_bytes()).unwrap();
    }
    let s = dev.wait("half running", LONG, |s| running_everywhere(s, &["half"]));
    assert_eq!(
        entry(&s, "half").unwrap()["generation"],
        1,
        "read once, whole"
    );
    let log = std::fs::read_to_string(dev.path("roost.log")).unwrap();
    assert!(
        !log.contains("deployment file refused"),
        "never refused: {log}"
    );
    assert_eq!(dev.stop(), Some(0));
    assert!(processes_with(&tag).is_empty());
}

#[test]
fn kill_9_while_a_dependency_starts_leaves_nothing_twice() {
    let mut dev = Device::new();
    let tag = unique("e2e-kill9");
    // The dependency takes a second to say it runs (a slow start); the dependent waits for it.
    dev.put("base.yaml", &deployment("base", "", &sleeper("db", &tag)));
    dev.put(
        "app.yaml",
        &deployment("app", "  dependsOn: [base]\n", &sleeper("web", &tag)),
    );
    for round in 0..3 {
        dev.start(&[]);
        std::thread::sleep(Duration::from_millis(150 + 100 * round));
        dev.kill9();
    }
    dev.start(&[]);
    dev.wait("running after kill -9", LONG, |s| {
        running_everywhere(s, &["base", "app"])
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        processes_with(&tag).len(),
        2,
        "one db and one web, nothing twice"
    );
    assert_eq!(dev.stop(), Some(0));
    assert!(processes_with(&tag).is_empty());
}

#[test]
fn a_dependency_in_a_crash_loop_holds_its_dependents_back() {
    let mut dev = Device::new();
    let tag = unique("e2e-crash");
    dev.put(
        "base.yaml",
        &deployment("base", "", &shell("db", "exit 3", "")),
    );
    dev.put(
        "app.yaml",
        &deployment("app", "  dependsOn: [base]\n", &sleeper("web", &tag)),
    );
    dev.start(&[]);
    let s = dev.wait("app held back", LONG, |s| {
        entry(s, "app").is_some_and(|d| codes(d).contains(&"DEP_E156".to_string()))
    });
    let app = entry(&s, "app").unwrap();
    assert_eq!(app["status"], "Error");
    assert_eq!(s["status"], "Error");
    // The dependency may have looked Running for the instant before its first exit; a web
    // started then keeps running (DEP_E156 says why the deployment is in error), one not yet
    // started waits.
    let web = &app["components"][0];
    match web["status"].as_str() {
        Some("Running") => assert_eq!(processes_with(&tag).len(), 1),
        _ => {
            assert_eq!(web["reason"], "DependencyFailed", "{web:#}");
            assert!(processes_with(&tag).is_empty());
        }
    }
    dev.put("base.yaml", &deployment("base", "", &sleeper("db", &tag)));
    dev.wait("both running", LONG, |s| {
        running_everywhere(s, &["base", "app"])
    });
}

fn with_shared(name: &str, tag: &str, master_tag: &str, extra: &str) -> String {
    deployment(
        name,
        extra,
        &format!(
            "{}      shared: true\n{}      dependsOn: [master]\n",
            sleeper("master", master_tag),
            sleeper("worker", tag)
        ),
    )
}

#[test]
fn a_shared_component_runs_once_its_owner_is_remembered_and_handed_on_without_a_restart() {
    let mut dev = Device::new();
    let (tm, ta, tb) = (unique("e2e-master"), unique("e2e-wa"), unique("e2e-wb"));
    // beta sorts after alpha, but it is there first: it owns the shared component.
    dev.put(
        "beta.yaml",
        &with_shared("beta", &tb, &tm, "  restartPolicy: OnFailure\n"),
    );
    dev.start(&[]);
    dev.wait("beta running", LONG, |s| {
        running_everywhere(s, &["beta", "shared"])
    });
    dev.put("alpha.yaml", &with_shared("alpha", &ta, &tm, ""));
    let s = dev.wait("both running", LONG, |s| {
        running_everywhere(s, &["alpha", "beta", "shared"])
    });
    assert_eq!(
        processes_with(&tm).len(),
        1,
        "the shared component runs once"
    );
    assert_eq!(s["shared"][0]["name"], "master");
    assert_eq!(s["shared"][0]["owner"], "beta", "{s:#}");
    assert_eq!(
        s["shared"][0]["users"],
        serde_json::json!(["beta", "alpha"])
    );
    let master = pid_in(&s, "shared", "master");
    // A user lists it (as the deployment shared's) beside its own.
    assert_eq!(pid_in(&s, "alpha", "master"), master);
    let shared_yaml = std::fs::read_to_string(dev.state().join("shared.yaml")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dev.state().join("shared.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "it holds env: values");
    }
    assert!(
        shared_yaml.contains("\"restartPolicy\": \"OnFailure\""),
        "the owner's policy: {shared_yaml}"
    );
    // Remembered across a restart of roost, whatever the order files are read in.
    assert_eq!(dev.stop(), Some(0));
    dev.start(&[]);
    let s = dev.wait("back", LONG, |s| {
        running_everywhere(s, &["alpha", "beta", "shared"])
    });
    assert_eq!(s["shared"][0]["owner"], "beta");
    let master = pid_in(&s, "shared", "master");
    // A declaration that differs is refused, naming both files.
    dev.put(
        "gamma.yaml",
        &with_shared("gamma", &ta, &format!("{tm}-other"), ""),
    );
    let s = dev.wait("gamma refused", LONG, |s| {
        s["specError"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gamma.yaml"))
    });
    let m = s["specError"]["message"].as_str().unwrap();
    assert!(
        m.contains("shared component \"master\" differs") && m.contains("alpha.yaml"),
        "{m}"
    );
    std::fs::remove_file(dev.folder().join("gamma.yaml")).unwrap();
    // The owner's file goes: alpha owns it now, and it was not restarted.
    std::fs::remove_file(dev.folder().join("beta.yaml")).unwrap();
    let s = dev.wait("owner handed on", LONG, |s| {
        entry(s, "beta").is_none() && entry(s, "gamma").is_none()
    });
    assert_eq!(s["shared"][0]["owner"], "alpha", "{s:#}");
    assert_eq!(
        pid_in(&s, "shared", "master"),
        master,
        "handed on without a restart"
    );
    assert_eq!(processes_with(&tm).len(), 1);
    assert!(processes_with(&tb).is_empty());
    // The last user goes: the shared component stops too, and nothing is left behind.
    std::fs::remove_file(dev.folder().join("alpha.yaml")).unwrap();
    dev.wait("all gone", LONG, |s| {
        s["deployments"].as_array().is_none_or(|d| d.is_empty())
    });
    assert!(processes_with(&tm).is_empty() && processes_with(&ta).is_empty());
    assert_eq!(dev.stop(), Some(0));
}

#[test]
fn a_single_file_that_depends_on_another_deployment_waits_with_dep_e157() {
    let tag = unique("e2e-single");
    let mut r = common::Roost::new(&deployment(
        "up",
        "  dependsOn: [recorder-site]\n",
        &sleeper("x", &tag),
    ));
    r.start();
    let s = r.wait_for("DEP_E157", LONG, |s| {
        s["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["code"] == "DEP_E157"))
    });
    assert_eq!(s["status"], "Pending");
    assert_eq!(s["components"][0]["reason"], "WaitingForDependency");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        processes_with(&tag).is_empty(),
        "--file has no other deployment: nothing starts"
    );
}

#[test]
fn a_file_refused_when_roost_starts_keeps_its_deployment_on_its_last_valid_state() {
    let mut dev = Device::new();
    let (ta, tb) = (unique("e2e-keep-a"), unique("e2e-keep-b"));
    dev.put("a.yaml", &deployment("a", "", &sleeper("x", &ta)));
    dev.put("b.yaml", &deployment("b", "", &sleeper("y", &tb)));
    dev.start(&[]);
    dev.wait("running", LONG, |s| running_everywhere(s, &["a", "b"]));
    assert_eq!(dev.stop(), Some(0));
    // While roost is down a's file is broken, and a duplicate of b appears.
    dev.put(
        "a.yaml",
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: a}\nspec:\n  components: [oops\n",
    );
    dev.put(
        "b-copy.yaml",
        &deployment("b", "", &sleeper("y", &format!("{tb}-copy"))),
    );
    dev.start(&[]);
    let s = dev.wait("a on its last valid state", LONG, |s| {
        entry(s, "a").is_some_and(|d| {
            d["specError"].is_object() && d["components"][0]["status"] == "Running"
        })
    });
    assert_eq!(processes_with(&ta).len(), 1);
    assert!(
        entry(&s, "b").unwrap()["file"]
            .as_str()
            .unwrap()
            .ends_with("/b.yaml")
    );
    // Past the grace it is still there: a refused file is not a removed one.
    std::thread::sleep(Duration::from_secs(11));
    let s = dev.status().unwrap();
    assert!(entry(&s, "a").is_some(), "{s:#}");
    assert_eq!(processes_with(&ta).len(), 1);
    // A typo in b's own file does not hand b to its duplicate.
    dev.put(
        "b.yaml",
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: b}\nspec: [\n",
    );
    std::thread::sleep(Duration::from_secs(1));
    dev.put("b.yaml", &deployment("b", "", &sleeper("y", &tb)));
    let s = dev.wait("b back", LONG, |s| {
        running_everywhere(s, &["b"]) && entry(s, "b").is_some_and(|d| d["specError"].is_null())
    });
    assert!(
        entry(&s, "b").unwrap()["file"]
            .as_str()
            .unwrap()
            .ends_with("/b.yaml"),
        "{s:#}"
    );
    assert!(
        processes_with(&format!("{tb}-copy")).is_empty(),
        "the duplicate never ran"
    );
    // A file naming the reserved deployment `shared` is refused, naming why.
    dev.put("shared.yaml", &deployment("shared", "", &sleeper("z", &ta)));
    let s = dev.wait("shared refused", LONG, |s| {
        s["errors"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e["message"].as_str().is_some_and(|m| {
                    m.contains("shared.yaml") && m.contains("reserved")
                        || m.contains("shared components")
                })
            })
        })
    });
    assert!(entry(&s, "shared").is_none(), "{s:#}");
}
