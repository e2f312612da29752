//! Harness for end-to-end tests: runs the real `roost` binary on a temporary folder and waits
//! for the status file to say something. Waiting polls the file: fine in tests, never in roost.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ROOST: &str = env!("CARGO_BIN_EXE_roost");

pub struct Roost {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub state: PathBuf,
    pub child: Option<Child>,
}

impl Roost {
    /// A temporary folder with `deployment.yaml` holding `yaml`; roost not started yet.
    pub fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deployment.yaml");
        std::fs::write(&file, yaml).unwrap();
        let state = dir.path().join("state");
        Self {
            dir,
            file,
            state,
            child: None,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `roost run` on `file` (which may differ from the default, e.g. a link).
    pub fn start_with_file(&mut self, file: &Path) {
        self.start_with(file, &[]);
    }

    /// Starts `roost run` on `file` with extra environment (`NOTIFY_SOCKET`, say).
    pub fn start_with(&mut self, file: &Path, envs: &[(&str, &str)]) {
        let child = Command::new(ROOST)
            .args(["run", "--runtime", "process", "--file"])
            .arg(file)
            .arg("--state-dir")
            .arg(&self.state)
            .env("ROOST_LOG", "debug")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("roost.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn start(&mut self) {
        let file = self.file.clone();
        self.start_with_file(&file);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn status(&self) -> Option<Value> {
        let bytes = std::fs::read(self.state.join("status.json")).ok()?;
        Some(serde_json::from_slice(&bytes).expect("status.json must always parse"))
    }

    /// Waits until `pred` holds for the status file; panics with the last status and roost's log.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status()
                && pred(&s)
            {
                return s;
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("roost.log")).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!(
                    "timed out waiting for {what}\nstatus: {:#?}\nroost log tail:\n{tail}",
                    self.status()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_succeeded(&self, generation: u64) -> Value {
        self.wait_for(
            &format!("generation {generation} Succeeded"),
            Duration::from_secs(20),
            |s| {
                s["observedGeneration"] == generation
                    && s["phase"] == "Succeeded"
                    && s["status"] == "Running"
            },
        )
    }

    /// Replaces the file atomically, as configuration-management tools do.
    pub fn replace_atomically(&self, yaml: &str) {
        let tmp = self.dir.path().join(".deployment.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Sends SIGTERM and waits for roost to exit; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("roost did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Roost {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

pub fn component<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no component {name} in {status:#}"))
}

pub fn pid_of(status: &Value, name: &str) -> u64 {
    component(status, name)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} has no pid: {status:#}"))
}

pub fn alive(pid: u64) -> bool {
    // A zombie has exited already: only count processes that still run.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(marker)
            && alive(pid as u64)
        {
            out.push(pid);
        }
    }
    out
}

/// A deployment file with the given components (YAML list items, already indented by 4).
pub fn deployment(name: &str, extra_spec: &str, components: &str) -> String {
    format!(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  backoff: {{initial: 0s, max: 1s, resetAfter: 10m}}\n{extra_spec}  components:\n{components}"
    )
}

/// A component that sleeps forever; `tag` makes its command line unique for process counting.
pub fn sleeper(name: &str, tag: &str) -> String {
    format!(
        "    - name: {name}\n      command: [\"/bin/sh\", \"-c\", \"while :; do sleep 1000; done # {tag}\"]\n      stopTimeout: 2s\n"
    )
}

pub fn shell(name: &str, script: &str, extra: &str) -> String {
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "    - name: {name}\n      command: [\"/bin/sh\", \"-c\", \"{script}\"]\n      stopTimeout: 2s\n{extra}"
    )
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_u64()
    )
}

fn rand_u64() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Live processes whose process group is `pgid`.
pub fn processes_in_group(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            && fields.first() != Some(&"Z")
        {
            out.push(pid);
        }
    }
    out
}

/// The paced feeder (`roost feed`, RECIPES §2) behind the ALSA file plugin; resumed (if a test
/// stopped it) and killed on drop.
pub struct Feed(pub Child);

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the 16 kHz feeder writing `fifo` and its ALSA configuration `conf`, with more
/// `feed_args`; returns once the configuration is written.
pub fn start_feed(fifo: &Path, conf: &Path, feed_args: &[&str]) -> Feed {
    let feed = Feed(
        Command::new(ROOST)
            .args(["feed", "--sample-rate", "16000", "--fifo"])
            .arg(fifo)
            .arg("--alsa-config")
            .arg(conf)
            .args(feed_args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while !conf.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    feed
}

/// A deployment named `name` that records 16 kHz mono i16 in 1 s files into `storage`, with
/// `extra_spec` (lines indented by 2) and no components.
pub fn recorder_deployment(name: &str, storage: &Path, extra_spec: &str) -> String {
    format!(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  location: {{latitude: 51.76, longitude: -1.26}}\n  backoff: {{initial: 0s, max: 1s, resetAfter: 10m}}\n  storage: {{path: {}, minFreeSpace: 0, onLowSpace: stop}}\n  recorder:\n    device: default\n    sampleRate: 16000\n    channels: 1\n    sampleFormat: i16\n    duration: 1s\n    timezone: UTC\n{extra_spec}  components: []\n",
        storage.display()
    )
}

impl Roost {
    /// Starts the 16 kHz feeder (it writes the ALSA configuration) and `roost run --runtime
    /// process` on this deployment, its log in `roost.log`.
    pub fn start_recording(&mut self) -> Feed {
        self.start_recording_with(&[])
    }

    /// [`Roost::start_recording`] with more arguments for `roost feed` (`--signal events`).
    pub fn start_recording_with(&mut self, feed_args: &[&str]) -> Feed {
        self.start_recording_env(feed_args, &[])
    }

    /// [`Roost::start_recording_with`] with extra environment for `roost run`.
    pub fn start_recording_env(&mut self, feed_args: &[&str], envs: &[(&str, &Path)]) -> Feed {
        let conf = self.path("asound.conf");
        let feed = start_feed(&self.path("mic.fifo"), &conf, feed_args);
        let child = Command::new(ROOST)
            .args(["run", "--runtime", "process", "--file"])
            .arg(&self.file)
            .arg("--state-dir")
            .arg(&self.state)
            .env("ALSA_CONFIG_PATH", &conf)
            .envs(envs.iter().copied())
            .stderr(std::fs::File::create(self.path("roost.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        feed
    }
}
