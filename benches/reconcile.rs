//! End-to-end figures of the reconciler on the process runtime, driving the real release
//! binary: `cargo build --release && cargo bench --bench reconcile`.
//! Prints: edit -> status latency, crash -> replacement latency, resident memory with 10
//! components, CPU used while idle, and `roost status` wall time. `ROOST_BENCH_IDLE_SECS`
//! shortens the idle measurement (default 60).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::Watcher;
use serde_json::Value;

fn roost_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/roost");
    assert!(p.exists(), "build first: cargo build --release");
    p
}

/// `resetAfter: 0s` makes every kill a first crash (restarted at once with `initial: 0s`): the
/// figure is crash -> replacement, not the damping of a crash loop (50 kills in a row would be one).
fn yaml(version: u32, components: usize) -> String {
    let mut s = String::from(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: bench}\nspec:\n  backoff: {initial: 0s, max: 1s, resetAfter: 0s}\n  components:\n",
    );
    for i in 0..components {
        // The last component changes with each version; the others stay.
        let v = if i + 1 == components { version } else { 0 };
        s.push_str(&format!(
            "    - {{name: c{i}, command: [/bin/sh, -c, \"while :; do sleep 1000; done # v{v}\"], stopTimeout: 2s}}\n"
        ));
    }
    s
}

struct Bench {
    _dir: tempfile::TempDir,
    file: PathBuf,
    status: PathBuf,
    roost: Child,
    events: mpsc::Receiver<()>,
    _watcher: notify::RecommendedWatcher,
}

impl Bench {
    fn start(components: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deployment.yaml");
        std::fs::write(&file, yaml(1, components)).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let (tx, events) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |_| {
            let _ = tx.send(());
        })
        .unwrap();
        watcher
            .watch(&state, notify::RecursiveMode::NonRecursive)
            .unwrap();
        let roost = Command::new(roost_bin())
            .args(["run", "--runtime", "process", "--file"])
            .arg(&file)
            .arg("--state-dir")
            .arg(&state)
            .env("ROOST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = Self {
            file,
            status: state.join("status.json"),
            roost,
            events,
            _watcher: watcher,
            _dir: dir,
        };
        b.wait(|s| s["phase"] == "Succeeded" && s["observedGeneration"] == 1);
        b
    }

    fn read(&self) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(&self.status).ok()?).ok()
    }

    /// Waits on inotify events for the status file to satisfy `pred`.
    fn wait(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.read()
                && pred(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out; last status {:?}",
                self.read()
            );
            let _ = self.events.recv_timeout(Duration::from_millis(50));
        }
    }

    fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.roost.id().to_string()])
            .status();
        let _ = self.roost.wait();
    }
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "median {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        ms(p(0.5)),
        ms(p(0.99)),
        ms(p(1.0)),
        v.len()
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn proc_field(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn main() {
    // 1. atomic replace -> status.json with the new generation and every component Running
    let b = Bench::start(3);
    let mut edit = Vec::new();
    for v in 2..=101u32 {
        let tmp = b.file.with_extension("tmp");
        std::fs::write(&tmp, yaml(v, 3)).unwrap();
        b.drain();
        let t0 = Instant::now();
        std::fs::rename(&tmp, &b.file).unwrap();
        b.wait(|s| s["observedGeneration"] == v as u64 && s["phase"] == "Succeeded");
        edit.push(t0.elapsed());
    }
    println!(
        "edit -> status Running (atomic replace, 3 components, 1 changed): {}",
        percentiles(edit)
    );

    // 2. crash (SIGKILL of a component, backoff initial 0s) -> replacement Running in status.json
    let mut crash = Vec::new();
    for _ in 0..50 {
        let s = b.read().unwrap();
        let pid = s["components"][0]["pid"].as_u64().unwrap();
        b.drain();
        let t0 = Instant::now();
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        b.wait(|s| {
            s["components"][0]["status"] == "Running"
                && s["components"][0]["pid"].as_u64().is_some_and(|p| p != pid)
        });
        crash.push(t0.elapsed());
    }
    println!(
        "crash (kill -9) -> replacement Running in status.json: {}",
        percentiles(crash)
    );
    drop(b);

    // 3. resident memory with 10 components, and CPU while idle
    let b = Bench::start(10);
    std::thread::sleep(Duration::from_millis(500));
    let pid = b.roost.id();
    println!(
        "roost run with 10 components: VmRSS {} KiB, VmHWM {} KiB",
        proc_field(pid, "VmRSS:"),
        proc_field(pid, "VmHWM:")
    );
    let idle_secs: u64 = std::env::var("ROOST_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let used = cpu_ticks(pid) - before;
    println!("CPU used over {idle_secs} s idle: {used} clock ticks (1 tick = 10 ms)");

    // 4. `roost status` wall time
    let state = b.status.parent().unwrap().to_path_buf();
    let mut wall = Vec::new();
    for _ in 0..50 {
        let t0 = Instant::now();
        let out = Command::new(roost_bin())
            .args(["status", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        wall.push(t0.elapsed());
        assert!(out.status.success());
    }
    println!("roost status wall time: {}", percentiles(wall));
}
