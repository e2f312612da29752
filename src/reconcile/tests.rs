//! The loop in-process on tokio's paused clock, with the recording fake runtime: back-off
//! timing, crash-loop damping, requeue after a back-off with no other trigger, file triggers,
//! and built-ins that fall silent or overdue. Times are exact because nothing real passes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::builtin::{Builtin, BuiltinError, BuiltinHealth, BuiltinReport, Trouble};
use crate::clock::TokioClock;
use crate::errors;
use crate::runtime::fake::{Behaviour, Call, FakeHandle, FakeRuntime};
use crate::status::{ComponentState, OverallStatus, Phase, Reason};

const START: &str = "2026-06-01T04:00:00Z";

fn deployment(backoff: &str, extra: &str) -> String {
    format!(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {{name: meadow}}\nspec:\n  \
         restartPolicy: Always\n  backoff: {backoff}\n  components:\n    \
         - name: uploader\n      command: [\"/bin/true\"]\n{extra}"
    )
}

struct Loop {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    reconciler: Reconciler<FakeRuntime>,
    fake: FakeHandle,
    statuses: Arc<Mutex<Vec<StatusDoc>>>,
    start: Timestamp,
}

fn setup(yaml: &str, builtins: Vec<Box<dyn Builtin>>) -> Loop {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deployment.yaml");
    std::fs::write(&file, yaml).unwrap();
    let start: Timestamp = START.parse().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(start));
    let (runtime, fake) = FakeRuntime::new(clock.clone());
    let cfg = Config {
        file: file.clone(),
        state_dir: dir.path().join("state"),
        exe: "/usr/bin/roost".into(),
    };
    let mut reconciler =
        Reconciler::with_parts(cfg, runtime, Builtins::new(builtins), clock).unwrap();
    let statuses = reconciler.record_statuses();
    Loop {
        _dir: dir,
        file,
        reconciler,
        fake,
        statuses,
        start,
    }
}

impl Loop {
    /// When the runtime was observed, ms after the start.
    fn observes_ms(&self) -> Vec<i64> {
        (self.fake.calls().into_iter())
            .filter_map(|c| match c {
                Call::Observe(t) => Some(self.ms(t)),
                _ => None,
            })
            .collect()
    }

    /// Runs the loop for `secs` of paused time with hand-fed triggers.
    async fn run_for(&mut self, secs: u64) {
        self.run_for_ms(secs * 1000).await;
    }

    async fn run_for_ms(&mut self, ms: u64) {
        let (triggers, _senders) = Triggers::manual();
        let stop = tokio::time::sleep(Duration::from_millis(ms));
        drive(&mut self.reconciler, triggers, stop, || {}).await;
    }

    fn ms(&self, t: Timestamp) -> i64 {
        t.duration_since(self.start).as_millis() as i64
    }

    fn starts_ms(&self, name: &str) -> Vec<i64> {
        self.fake
            .starts(name)
            .into_iter()
            .map(|t| self.ms(t))
            .collect()
    }

    /// (ms since start, status, reason) of `name` in every document published.
    fn timeline(&self, name: &str) -> Vec<(i64, ComponentState, Option<Reason>)> {
        let docs = self.statuses.lock().unwrap();
        docs.iter()
            .filter_map(|d| {
                let c = d.components.iter().find(|c| c.name == name)?;
                Some((self.ms(d.updated_at), c.status, c.reason))
            })
            .collect()
    }

    fn last_before_shutdown(&self) -> StatusDoc {
        let docs = self.statuses.lock().unwrap();
        docs[docs.len() - 2].clone()
    }
}

/// Exits 100 ms after each start with status 1; back-off 1 s doubling to 8 s: restarts at
/// exit + 1, 2, 4, 8, 8 ... s. From the third quick failure on it is a crash loop.
#[tokio::test(start_paused = true)]
async fn back_off_doubles_to_its_max_and_a_crash_loop_is_named() {
    let mut l = setup(
        &deployment("{initial: 1s, max: 8s, resetAfter: 10m}", ""),
        vec![],
    );
    l.fake.script(
        "uploader",
        Behaviour::ExitsAfter {
            after: Duration::from_millis(100),
            code: 1,
        },
    );
    l.run_for(60).await;
    assert_eq!(
        l.starts_ms("uploader"),
        vec![
            0, 1100, 3200, 7300, 15400, 23500, 31600, 39700, 47800, 55900
        ]
    );
    let reasons: Vec<(i64, Option<Reason>)> = l
        .timeline("uploader")
        .into_iter()
        .filter(|(_, s, _)| *s != ComponentState::Running)
        .map(|(t, _, r)| (t, r))
        .collect();
    assert_eq!(reasons[1], (100, Some(Reason::BackOff)));
    assert_eq!(reasons[2], (1200, Some(Reason::BackOff)));
    assert_eq!(reasons[3], (3300, Some(Reason::CrashLoopBackOff)));
    let doc = l.last_before_shutdown();
    assert_eq!(doc.errors[0].code, errors::CRASH_LOOP.code);
    assert_eq!(doc.components[0].restart_count, 9);
}

/// `initial: 0s` would restart a crash at once: from the crash loop on, never faster than
/// one start a second.
#[tokio::test(start_paused = true)]
async fn a_crash_loop_is_damped_to_one_start_a_second() {
    let mut l = setup(
        &deployment("{initial: 0s, max: 5m, resetAfter: 10m}", ""),
        vec![],
    );
    l.fake.script(
        "uploader",
        Behaviour::ExitsAfter {
            after: Duration::ZERO,
            code: 2,
        },
    );
    l.run_for_ms(4500).await;
    assert_eq!(
        l.starts_ms("uploader"),
        vec![0, 0, 0, 1000, 2000, 3000, 4000]
    );
}

/// A back-off is the loop's only wake-up: nothing else happens between the exit and the
/// restart (no polling), and an idle loop observes nothing at all.
#[tokio::test(start_paused = true)]
async fn the_loop_wakes_once_when_a_back_off_expires_and_never_while_idle() {
    let mut l = setup(
        &deployment("{initial: 5s, max: 5m, resetAfter: 10m}", ""),
        vec![],
    );
    l.fake.script(
        "uploader",
        Behaviour::ExitsAfter {
            after: Duration::from_secs(2),
            code: 1,
        },
    );
    l.run_for(3).await;
    l.fake.script("uploader", Behaviour::RunsForever);
    l.run_for(600).await;
    assert_eq!(l.starts_ms("uploader"), vec![0, 7000]);
    let observes = l.observes_ms();
    // First run: start pass and settle pass at 0, the exit at 2 s, its shutdown's look at 3 s.
    // Second run (roost restarted; the back-off is kept): its first look at 3 s, the restart
    // at 7 s (two passes), then nothing until its shutdown's look at 603 s.
    assert_eq!(observes, vec![0, 0, 2000, 3000, 3000, 7000, 7000, 603000]);
}

/// A start that fails is retried on the back-off and stays reported (DEP_E161) until it works.
#[tokio::test(start_paused = true)]
async fn a_failed_start_is_retried_on_the_back_off_and_reported() {
    let mut l = setup(
        &deployment("{initial: 2s, max: 5m, resetAfter: 10m}", ""),
        vec![],
    );
    l.fake.script("uploader", Behaviour::FailsToStart);
    l.run_for(7).await;
    assert_eq!(l.starts_ms("uploader"), vec![0, 2000, 6000]);
    let doc = l.last_before_shutdown();
    assert_eq!(doc.errors[0].code, errors::EXECUTABLE_NOT_FOUND.code);
    assert_eq!(doc.components[0].reason, Some(Reason::ExecutableNotFound));
    assert_eq!(doc.last_apply.map(|a| (a.tried, a.failed)), Some((1, 1)));
}

/// A file trigger reloads the file: a changed command restarts the component at once.
#[tokio::test(start_paused = true)]
async fn a_file_trigger_applies_the_new_desired_state() {
    let mut l = setup(
        &deployment("{initial: 1s, max: 5m, resetAfter: 10m}", ""),
        vec![],
    );
    let (triggers, [file_tx, _, _]) = Triggers::manual();
    let newer = deployment("{initial: 1s, max: 5m, resetAfter: 10m}", "")
        .replace("/bin/true", "/bin/sleep");
    let file = l.file.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(4)).await;
        std::fs::write(&file, newer).unwrap();
        file_tx.send(()).await.unwrap();
    });
    let stop = tokio::time::sleep(Duration::from_secs(10));
    drive(&mut l.reconciler, triggers, stop, || {}).await;
    assert_eq!(l.starts_ms("uploader"), vec![0, 4000]);
    let doc = l.last_before_shutdown();
    assert_eq!((doc.generation, doc.observed_generation), (2, 2));
}

/// A built-in that reports by its output: due to produce by `due`, it has the grace in its
/// report's `look_again_at`; after that its output shows the fault.
struct Probe {
    due: Option<Timestamp>,
    /// Judged by an output file (as the recorder is), so the loop's safety look applies.
    reports: bool,
}

impl Builtin for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn run(&self, d: &crate::spec::Deployment) -> Option<crate::observe::ComponentRun> {
        Some(crate::observe::ComponentRun {
            deployment: d.name().to_string(),
            name: "probe".try_into().unwrap(),
            spec_hash: "p".into(),
            command: vec!["/bin/true".to_string()].try_into().unwrap(),
            env: Default::default(),
            working_dir: None,
            restart_policy: crate::spec::RestartPolicy::Always,
            backoff: Default::default(),
            stop_timeout: Duration::from_secs(1),
            confinement: None,
        })
    }
    fn prepare(&self, _: &crate::spec::Deployment) -> Result<(), BuiltinError> {
        Ok(())
    }
    fn output_file(&self) -> Option<std::path::PathBuf> {
        self.reports
            .then(|| "/nonexistent/probe-report.json".into())
    }
    fn health(&self, _pid: Option<u32>, now: Timestamp) -> BuiltinHealth {
        let Some(due) = self.due else {
            return BuiltinHealth::Silent {
                within: Duration::from_secs(30),
                code: &errors::NO_RECORDINGS,
                reason: Reason::NoRecordings,
            };
        };
        let overdue = due + SignedDuration::from_secs(30);
        BuiltinHealth::Reported(BuiltinReport {
            output: serde_json::json!({"expectedFileBy": due}),
            trouble: (now > overdue).then(|| Trouble {
                code: &errors::NO_RECORDINGS,
                reason: Reason::NoRecordings,
                message: "overdue".into(),
            }),
            produced: true,
            look_again_at: (overdue > now).then_some(overdue),
        })
    }
}

/// A loop running one [`Probe`] whose next output is due 60 s after the start.
fn probe_due_at_60_s(reports: bool) -> Loop {
    let due = START.parse::<Timestamp>().unwrap() + SignedDuration::from_secs(60);
    setup(
        &deployment("{initial: 1s, max: 5m, resetAfter: 10m}", ""),
        vec![Box::new(Probe {
            due: Some(due),
            reports,
        })],
    )
}

/// A built-in whose next output is due at 60 s falls overdue at 90 s: the loop wakes by
/// itself 50 ms later and the status turns Error, the phase staying Succeeded.
#[tokio::test(start_paused = true)]
async fn a_built_in_that_falls_overdue_turns_the_status_to_error_on_time() {
    let mut l = probe_due_at_60_s(false);
    l.run_for(120).await;
    let probe = l.timeline("probe");
    let turned = probe
        .iter()
        .find(|(_, s, _)| *s == ComponentState::Error)
        .copied();
    assert_eq!(
        turned,
        Some((90050, ComponentState::Error, Some(Reason::NoRecordings)))
    );
    let doc = l.last_before_shutdown();
    assert_eq!(
        (doc.phase, doc.status),
        (Phase::Succeeded, OverallStatus::Error)
    );
}

/// A built-in judged by its report, in error with no deadline left: the loop still looks every
/// 2 min (its file watch may have been lost), and never more often.
#[tokio::test(start_paused = true)]
async fn a_reporting_built_in_in_error_is_looked_at_every_two_minutes() {
    let mut l = probe_due_at_60_s(true);
    l.run_for(600).await;
    let observes: Vec<i64> = (l.observes_ms().into_iter())
        .filter(|t| *t > 90_050 && *t < 600_000)
        .collect();
    assert_eq!(observes, vec![210_050, 330_050, 450_050, 570_050]);
}

/// A built-in that never reports is Starting for 30 s, then in error and the deployment failed
/// to start.
#[tokio::test(start_paused = true)]
async fn a_silent_built_in_is_starting_then_failed_to_start() {
    let mut l = setup(
        &deployment("{initial: 1s, max: 5m, resetAfter: 10m}", ""),
        vec![Box::new(Probe {
            due: None,
            reports: false,
        })],
    );
    l.run_for(40).await;
    let probe = l.timeline("probe");
    assert_eq!(probe.last().unwrap().1, ComponentState::Stopped); // shutdown
    assert!(probe.contains(&(0, ComponentState::Running, Some(Reason::Starting))));
    assert!(probe.contains(&(30050, ComponentState::Error, Some(Reason::NoRecordings))));
    let doc = l.last_before_shutdown();
    assert_eq!(
        (doc.phase, doc.status),
        (Phase::FailedToStart, OverallStatus::Error)
    );
}

/// One component `c` with `X=x` in its environment and stop timeout `stop_timeout`.
fn with_x(x: &str, stop_timeout: &str) -> String {
    format!(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {{name: meadow}}\nspec:\n  \
         restartPolicy: Always\n  backoff: {{initial: 1s, max: 5m, resetAfter: 10m}}\n  \
         components:\n    - name: c\n      command: [\"/bin/sleep\", \"1000\"]\n      \
         stopTimeout: {stop_timeout}\n      env: {{X: \"{x}\"}}\n"
    )
}

impl Loop {
    /// Runs the loop for `ms` of paused time while `edits` (ms after the start, content) are
    /// written to the file, each followed by a file trigger as the watcher sends it.
    async fn run_with_edits(&mut self, ms: u64, edits: Vec<(u64, String)>) {
        let (triggers, [file_tx, _, _]) = Triggers::manual();
        let file = self.file.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for (at, yaml) in edits {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                std::fs::write(&file, yaml).unwrap();
                file_tx.send(()).await.unwrap();
            }
        });
        let stop = tokio::time::sleep(Duration::from_millis(ms));
        drive(&mut self.reconciler, triggers, stop, || {}).await;
    }

    /// (X, ms since start) of every start of `c`.
    fn starts_of_c(&self) -> Vec<(String, i64)> {
        (self.fake.runs("c").into_iter())
            .map(|(run, at)| (run.env["X"].clone(), self.ms(at)))
            .collect()
    }

    fn stops_ms(&self, name: &str) -> Vec<i64> {
        (self.fake.calls().into_iter())
            .filter_map(|c| match c {
                Call::Stop(n, t) if n == name => Some(self.ms(t)),
                _ => None,
            })
            .collect()
    }

    /// (generation, observedGeneration, phase, c's status, c's X) before the shutdown.
    fn settled(&self) -> (u64, u64, Phase, ComponentState, String) {
        let doc = self.last_before_shutdown();
        let x = self.fake.runs("c").last().unwrap().0.env["X"].clone();
        (
            doc.generation,
            doc.observed_generation,
            doc.phase,
            doc.components[0].status,
            x,
        )
    }
}

/// The baseline: a change pushed while the running instance takes 3 s to stop starts the new
/// spec once the stop is done, with one stop.
#[tokio::test(start_paused = true)]
async fn a_change_during_a_slow_stop_starts_the_new_spec_when_the_stop_is_done() {
    let mut l = setup(&with_x("1", "10s"), vec![]);
    l.fake.slow_stop("c", Duration::from_secs(3));
    l.run_with_edits(10_000, vec![(1000, with_x("2", "10s"))])
        .await;
    assert_eq!(l.starts_of_c(), [("1".into(), 0), ("2".into(), 4000)]);
    assert_eq!(
        l.stops_ms("c"),
        [1000, 10_000],
        "one stop, then the shutdown's"
    );
    let settled = (2, 2, Phase::Succeeded, ComponentState::Running, "2".into());
    assert_eq!(l.settled(), settled);
}

/// The field report: X=2 pushed, reverted to X=1 0.7 s later while X=1 takes 3 s to stop. The
/// pushed spec never starts: when the stop is done, the newest generation (3, the spec of 1)
/// starts at once, and is the only start after it.
#[tokio::test(start_paused = true)]
async fn a_change_reverted_during_a_slow_stop_never_starts_the_pushed_spec() {
    let mut l = setup(&with_x("1", "10s"), vec![]);
    l.fake.slow_stop("c", Duration::from_secs(3));
    let edits = vec![(1000, with_x("2", "10s")), (1700, with_x("1", "10s"))];
    l.run_with_edits(10_000, edits).await;
    assert_eq!(l.starts_of_c(), [("1".into(), 0), ("1".into(), 4000)]);
    assert_eq!(
        l.stops_ms("c"),
        [1000, 10_000],
        "one stop, then the shutdown's"
    );
    let settled = (3, 3, Phase::Succeeded, ComponentState::Running, "1".into());
    assert_eq!(l.settled(), settled);
    // While the stop ran the status said generation 2 was in progress; at 4 s, 3.
    let in_progress: Vec<(i64, u64)> = (l.statuses.lock().unwrap().iter())
        .filter(|d| d.phase == Phase::InProgress)
        .map(|d| (l.ms(d.updated_at), d.generation))
        .collect();
    assert_eq!(in_progress, [(0, 1), (1000, 2), (4000, 3)]);
}

/// A third spec pushed during the stop is the one that starts.
#[tokio::test(start_paused = true)]
async fn a_third_spec_pushed_during_a_slow_stop_is_the_one_started() {
    let mut l = setup(&with_x("1", "10s"), vec![]);
    l.fake.slow_stop("c", Duration::from_secs(3));
    let edits = vec![(1000, with_x("2", "10s")), (1700, with_x("3", "10s"))];
    l.run_with_edits(10_000, edits).await;
    assert_eq!(l.starts_of_c(), [("1".into(), 0), ("3".into(), 4000)]);
    let settled = (3, 3, Phase::Succeeded, ComponentState::Running, "3".into());
    assert_eq!(l.settled(), settled);
}

/// A -> B -> C -> A within 600 ms, all during the 3 s stop of A: only A starts again, once.
/// C was replaced before roost read it: it is no generation of its own.
#[tokio::test(start_paused = true)]
async fn quick_edits_during_a_slow_stop_start_only_the_last() {
    let mut l = setup(&with_x("A", "10s"), vec![]);
    l.fake.slow_stop("c", Duration::from_secs(3));
    let edits = vec![
        (1000, with_x("B", "10s")),
        (1300, with_x("C", "10s")),
        (1600, with_x("A", "10s")),
    ];
    l.run_with_edits(10_000, edits).await;
    assert_eq!(l.starts_of_c(), [("A".into(), 0), ("A".into(), 4000)]);
    assert_eq!(
        l.stops_ms("c"),
        [1000, 10_000],
        "one stop, then the shutdown's"
    );
    let settled = (3, 3, Phase::Succeeded, ComponentState::Running, "A".into());
    assert_eq!(l.settled(), settled);
}

/// A stop that would take 30 s is cut at the 2 s stop timeout (the kill): the reverted spec
/// starts then, never the pushed one.
#[tokio::test(start_paused = true)]
async fn a_stop_cut_by_its_timeout_starts_the_newest_spec() {
    let mut l = setup(&with_x("1", "2s"), vec![]);
    l.fake.slow_stop("c", Duration::from_secs(30));
    let edits = vec![(1000, with_x("2", "2s")), (1500, with_x("1", "2s"))];
    l.run_with_edits(10_000, edits).await;
    assert_eq!(l.starts_of_c(), [("1".into(), 0), ("1".into(), 3000)]);
    let settled = (3, 3, Phase::Succeeded, ComponentState::Running, "1".into());
    assert_eq!(l.settled(), settled);
}
