//! End to end on real processes: a new generation arriving while a component takes its time to
//! stop (a shell trapping SIGTERM). The field report: X=2 pushed, reverted to X=1 0.7 s later,
//! the X=1 instance taking 3 s to stop; roost started the pushed X=2 instance after the stop and
//! was still stopping it 10 s later. Whatever the edits during a stop, once it is done exactly
//! one instance runs, of the newest spec; an outdated spec never starts; never two at once.
//! With the process runtime (`roost run`), and with the systemd runtime against a private
//! `systemd --user` (`support/systemd_sandbox.rs`, needs root).

mod common;
#[path = "support/systemd_sandbox.rs"]
mod sandbox;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// A component `c` logging its starts and SIGTERMs (with its X) to `log`, taking `stop_takes`
/// seconds to stop after SIGTERM, with stop timeout `stop_timeout`.
fn spec(x: &str, tag: &str, log: &std::path::Path, stop_takes: u32, stop_timeout: &str) -> String {
    let log = log.display();
    let script = format!(
        "echo start X=$X >> {log}; trap 'echo Terminated X=$X >> {log}; sleep {stop_takes}; exit 0' TERM; while :; do sleep 1000; done # {tag}"
    );
    let component = shell("c", &script, &format!("      env: {{X: \"{x}\"}}\n"))
        .replace("stopTimeout: 2s", &format!("stopTimeout: {stop_timeout}"));
    deployment("race", "", &component)
}

/// Instances of `c`: process groups of processes with `tag` in their command line (a shell's
/// fork before its exec carries its command line too, in its group).
fn instances(tag: &str) -> usize {
    let groups: std::collections::BTreeSet<String> = (processes_with(tag).into_iter())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(2).map(str::to_string)
        })
        .collect();
    groups.len()
}

/// Counts the instances of `c` every 2 ms in a thread of its own.
struct Sampler {
    most: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(tag: &str) -> Self {
        let (most, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (m, d, tag) = (most.clone(), done.clone(), tag.to_string());
        let thread = std::thread::spawn(move || {
            while !d.load(Ordering::SeqCst) {
                m.fetch_max(instances(&tag), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self {
            most,
            done,
            thread: Some(thread),
        }
    }

    /// The most instances seen at once.
    fn most(mut self) -> usize {
        self.done.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.most.load(Ordering::SeqCst)
    }
}

struct Race {
    r: Roost,
    tag: String,
    log: std::path::PathBuf,
    first_pid: u64,
}

/// Roost running `c` with X=`x` (generation 1).
fn running(x: &str, stop_takes: u32, stop_timeout: &str) -> Race {
    let tag = unique("race");
    let mut r = Roost::new("");
    let log = r.path("c.log");
    std::fs::write(&r.file, spec(x, &tag, &log, stop_takes, stop_timeout)).unwrap();
    r.start();
    let s = r.wait_succeeded(1);
    let first_pid = pid_of(&s, "c");
    Race {
        r,
        tag,
        log,
        first_pid,
    }
}

impl Race {
    fn push(&self, x: &str, stop_takes: u32, stop_timeout: &str) {
        let yaml = spec(x, &self.tag, &self.log, stop_takes, stop_timeout);
        self.r.replace_atomically(&yaml);
    }

    fn log(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(str::to_string).collect()
    }

    /// Waits for `generation` Running and Succeeded, and returns that status and when it was
    /// seen; checks it stays so, with one instance.
    fn settled(&self, generation: u64) -> (serde_json::Value, Instant) {
        let s = self
            .r
            .wait_for(&format!("generation {generation} running"), WAIT, |s| {
                s["generation"] == generation
                    && s["observedGeneration"] == generation
                    && s["phase"] == "Succeeded"
                    && s["status"] == "Running"
            });
        let seen = Instant::now();
        let pid = pid_of(&s, "c");
        std::thread::sleep(Duration::from_millis(500));
        let later = self.r.status().unwrap();
        assert_eq!(later["observedGeneration"], generation, "{later:#}");
        assert_eq!(pid_of(&later, "c"), pid, "the instance stays: {later:#}");
        assert_eq!(instances(&self.tag), 1, "exactly one instance");
        assert!(
            processes_with(&self.tag).contains(&(pid as u32)),
            "{later:#}"
        );
        (s, seen)
    }
}

/// The baseline: a change while the running instance takes 3 s to stop starts the new spec
/// once the stop is done (one SIGTERM, one stop).
#[test]
fn a_change_during_a_slow_stop_starts_the_new_spec_once_the_stop_is_done() {
    let race = running("1", 3, "10s");
    let sampler = Sampler::start(&race.tag);
    let pushed = Instant::now();
    race.push("2", 3, "10s");
    let took = race.settled(2).1 - pushed;
    assert_eq!(sampler.most(), 1, "never two instances at once");
    assert_eq!(race.log(), ["start X=1", "Terminated X=1", "start X=2"]);
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(5500),
        "one 3 s stop, took {took:?}"
    );
}

/// The field report: X=2 pushed and reverted 0.7 s later, during the 3 s stop of X=1. The
/// pushed spec never starts; generation 3 (X=1) runs as soon as the stop is done.
#[test]
fn a_change_reverted_during_a_slow_stop_never_starts_the_pushed_spec() {
    let race = running("1", 3, "10s");
    let sampler = Sampler::start(&race.tag);
    let pushed = Instant::now();
    race.push("2", 3, "10s");
    std::thread::sleep(Duration::from_millis(700));
    race.push("1", 3, "10s");
    let (s, seen) = race.settled(3);
    let took = seen - pushed;
    assert_eq!(sampler.most(), 1, "never two instances at once");
    assert_eq!(race.log(), ["start X=1", "Terminated X=1", "start X=1"]);
    assert_ne!(pid_of(&s, "c"), race.first_pid);
    assert!(
        took < Duration::from_millis(5500),
        "one 3 s stop, not a second one of a pushed instance: took {took:?}"
    );
}

/// A third spec pushed during the stop is the one that starts.
#[test]
fn a_third_spec_pushed_during_a_slow_stop_is_the_one_started() {
    let race = running("1", 3, "10s");
    let sampler = Sampler::start(&race.tag);
    race.push("2", 3, "10s");
    std::thread::sleep(Duration::from_millis(700));
    race.push("3", 3, "10s");
    race.settled(3);
    assert_eq!(sampler.most(), 1, "never two instances at once");
    assert_eq!(race.log(), ["start X=1", "Terminated X=1", "start X=3"]);
}

/// A -> B -> C -> A within 0.6 s, during the 3 s stop of A: only A starts again. C was replaced
/// before roost read it, so it is no generation of its own.
#[test]
fn quick_edits_during_a_slow_stop_start_only_the_last() {
    let race = running("A", 3, "10s");
    let sampler = Sampler::start(&race.tag);
    let pushed = Instant::now();
    race.push("B", 3, "10s");
    std::thread::sleep(Duration::from_millis(300));
    race.push("C", 3, "10s");
    std::thread::sleep(Duration::from_millis(300));
    race.push("A", 3, "10s");
    let took = race.settled(3).1 - pushed;
    assert_eq!(sampler.most(), 1, "never two instances at once");
    assert_eq!(race.log(), ["start X=A", "Terminated X=A", "start X=A"]);
    assert!(
        took < Duration::from_millis(5500),
        "one stop: took {took:?}"
    );
}

/// A stop that would take 30 s is cut by the 1 s stop timeout (SIGKILL to the whole group):
/// the reverted spec starts then, and nothing of the killed instance is left.
#[test]
fn a_stop_cut_by_its_timeout_starts_the_newest_spec() {
    let race = running("1", 30, "1s");
    let sampler = Sampler::start(&race.tag);
    let pushed = Instant::now();
    race.push("2", 30, "1s");
    std::thread::sleep(Duration::from_millis(500));
    race.push("1", 30, "1s");
    let took = race.settled(3).1 - pushed;
    assert_eq!(sampler.most(), 1, "never two instances at once");
    assert_eq!(race.log(), ["start X=1", "Terminated X=1", "start X=1"]);
    assert!(
        processes_in_group(race.first_pid as u32).is_empty(),
        "the killed instance's group is gone"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "killed at its 1 s stop timeout: took {took:?}"
    );
}

/// The same revert under systemd: the stop is the unit's stop job (SIGTERM to its control
/// group, 3 s of trap); the pushed spec's unit never starts, generation 3 runs once it is done.
#[tokio::test]
async fn under_systemd_a_change_reverted_during_a_slow_stop_never_starts_the_pushed_spec() {
    tokio::task::LocalSet::new()
        .run_until(systemd_revert())
        .await;
}

async fn systemd_revert() {
    use roost::runtime::systemd::SystemdRuntime;
    let sandbox = sandbox::Sandbox::start().await;
    let (tag, log) = (unique("race-sd"), sandbox.dir().join("c.log"));
    let file = sandbox.dir().join("deployment.yaml");
    let state = sandbox.dir().join("state");
    let write = |x: &str| {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, spec(x, &tag, &log, 3, "10s")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    let settled = |generation: u64| {
        move |s: &serde_json::Value| {
            s["observedGeneration"] == generation
                && s["phase"] == "Succeeded"
                && s["status"] == "Running"
        }
    };
    write("1");
    let runtime = SystemdRuntime::connect(sandbox.target()).await.unwrap();
    let cfg = roost::reconcile::Config {
        file: file.clone(),
        state_dir: state.clone(),
        exe: ROOST.into(),
    };
    let task = tokio::task::spawn_local(async move {
        let _ = roost::reconcile::run(cfg, runtime, std::future::pending(), || {}).await;
    });
    wait_status(&state, "generation 1 running", settled(1)).await;
    let pushed = Instant::now();
    write("2");
    tokio::time::sleep(Duration::from_millis(700)).await;
    write("1");
    let s = wait_status(&state, "generation 3 running", settled(3)).await;
    let took = pushed.elapsed();
    task.abort();
    assert_eq!(s["generation"], 3, "{s:#}");
    let lines: Vec<String> = (std::fs::read_to_string(&log).unwrap().lines())
        .map(str::to_string)
        .collect();
    assert_eq!(lines, ["start X=1", "Terminated X=1", "start X=1"]);
    assert!(
        took < Duration::from_millis(5500),
        "one 3 s stop, not a second one of a pushed instance: took {took:?}"
    );
}

/// Waits until `want` holds for the status file in `state`; panics with the last one.
async fn wait_status(
    state: &std::path::Path,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let status = || -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = status()
            && want(&s)
        {
            return s;
        }
        assert!(Instant::now() < deadline, "never {what}: {:#?}", status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
