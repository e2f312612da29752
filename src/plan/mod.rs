//! Pure decisions. `plan` takes the desired state, what the runtime observes, roost's history
//! and the current time, and returns the actions to take, the status of every component, and
//! when to look again. It never performs I/O and never sees the event that woke the loop.

/// The start order lives with the desired state it is computed from.
pub use crate::spec::order;

pub mod gate;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::errors::{self, ErrorCode};
use crate::history::{ComponentHistory, History, backoff_delay};
use crate::observe::{
    BuiltinHealth, ComponentRun, ExitInfo, Observation, ObservedComponent, ObservedState,
};
use crate::spec::{Deployment, RestartPolicy, RunState};
use crate::status::{ComponentState, ComponentStatus, ErrorEntry, Phase, Reason};

pub use crate::history::CRASH_LOOP_THRESHOLD;
/// Stop timeout for components that left the desired state (their own setting is gone).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One component as the plan sees it: how to run it and what it waits for.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredComponent {
    /// How the runtime runs it.
    pub run: ComponentRun,
    /// Components that must run (or have completed) before it starts.
    pub depends_on: Vec<String>,
}

/// The desired state reduced to what planning needs, components in start order.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The deployment's name.
    pub deployment: String,
    /// `state: running` (false: `stopped`).
    pub running: bool,
    /// Built-ins first, then the file's components in start order.
    pub components: Vec<DesiredComponent>,
}

impl Desired {
    /// Resolves a validated deployment; `extra` are components roost adds itself (the recorder),
    /// which depend on nothing and start first.
    pub fn from_deployment(d: &Deployment, extra: Vec<ComponentRun>) -> Self {
        let spec = &d.spec;
        let order = order::start_order(&spec.components)
            .unwrap_or_else(|_| (0..spec.components.len()).collect());
        let mut components: Vec<DesiredComponent> = extra
            .into_iter()
            .map(|run| DesiredComponent {
                run,
                depends_on: Vec::new(),
            })
            .collect();
        for i in order {
            let c = &spec.components[i];
            let restart_policy = c.effective_restart_policy(spec.restart_policy);
            // `envFile`: a unit an older roost wrote holds env: values in clear; a new hash has
            // it rewritten (and the component restarted once) with an environment file.
            let hash_input = match c.env.is_empty() {
                true => {
                    serde_json::json!({"component": c, "restartPolicy": restart_policy, "backoff": spec.backoff})
                }
                false => {
                    serde_json::json!({"component": c, "restartPolicy": restart_policy, "backoff": spec.backoff, "envFile": 1})
                }
            };
            components.push(DesiredComponent {
                run: ComponentRun {
                    deployment: d.metadata.name.to_string(),
                    name: c.name.clone(),
                    spec_hash: spec_hash(hash_input.to_string().as_bytes()),
                    command: c.command.clone(),
                    env: c
                        .env
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                        .collect(),
                    working_dir: c.working_dir.as_ref().map(|p| p.as_path().to_path_buf()),
                    restart_policy,
                    backoff: spec.backoff,
                    stop_timeout: c.stop_timeout.as_std(),
                    confinement: confinement_of(c),
                },
                depends_on: c.depends_on.iter().map(|n| n.to_string()).collect(),
            });
        }
        Self {
            deployment: d.metadata.name.to_string(),
            running: spec.state == RunState::Running,
            components,
        }
    }
}

/// A stable 64-bit FNV-1a hash, hex: persisted in history and unit files, so it must not
/// change between builds the way std's hasher may.
pub fn spec_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One thing for the applier to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start a component that is not running.
    Start(ComponentRun),
    /// Replace a running component whose spec changed: stop the running instance (by its own
    /// stop timeout), then start `run`.
    Restart {
        /// How to run the new instance.
        run: ComponentRun,
        /// How long the running instance gets to stop before it is killed.
        stop_timeout: Duration,
    },
    /// Stop a component (the deployment is stopped).
    Stop {
        /// The component.
        name: String,
        /// How long to wait before killing it.
        timeout: Duration,
    },
    /// Stop a component that left the desired state and forget it.
    Remove {
        /// The component.
        name: String,
        /// How long to wait before killing it.
        timeout: Duration,
    },
}

impl Action {
    /// The component the action is about.
    pub fn component(&self) -> &str {
        match self {
            Action::Start(r) | Action::Restart { run: r, .. } => r.name.as_str(),
            Action::Stop { name, .. } | Action::Remove { name, .. } => name,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Start(r) => write!(f, "start {}", r.name),
            Action::Restart { run, .. } => write!(f, "restart {} (spec changed)", run.name),
            Action::Stop { name, .. } => write!(f, "stop {name}"),
            Action::Remove { name, .. } => write!(f, "remove {name} (no longer in the file)"),
        }
    }
}

/// Everything a plan is made from.
pub struct PlanInput<'a> {
    /// The desired state in force.
    pub desired: &'a Desired,
    /// What the runtime holds now.
    pub observed: &'a Observation,
    /// What roost remembers (restarts, exits, failed starts).
    pub history: &'a History,
    /// Components whose last stop failed, with the reason (for PartiallyDeprovisioned).
    pub stop_failures: &'a BTreeMap<String, String>,
    /// systemd restarts components itself; the process runtime relies on roost.
    pub runtime_restarts_itself: bool,
    /// Health of the built-in components that run, read from their output.
    pub builtins: &'a BTreeMap<String, BuiltinHealth>,
    /// The current wall-clock time.
    pub now: Timestamp,
}

/// What the planner decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Actions in order: removals, stops (dependents first), starts (start order).
    pub actions: Vec<Action>,
    /// Every desired component's status.
    pub components: Vec<ComponentStatus>,
    /// Errors, each with its code and component.
    pub errors: Vec<ErrorEntry>,
    /// The deployment's phase.
    pub phase: Phase,
    /// When to reconcile again even if nothing happens (a back-off expiring).
    pub requeue_after: Option<Duration>,
}

/// What the planner concludes about one component.
struct Verdict {
    status: ComponentStatus,
    action: Option<Action>,
    error: Option<(&'static ErrorCode, String)>,
    wake_at: Option<Timestamp>,
}

impl Verdict {
    fn of(status: ComponentStatus) -> Self {
        Self {
            status,
            action: None,
            error: None,
            wake_at: None,
        }
    }
    fn with_action(self, action: Action) -> Self {
        Self {
            action: Some(action),
            ..self
        }
    }
    fn with_error(self, error: (&'static ErrorCode, String)) -> Self {
        self.with_optional_error(Some(error))
    }
    fn with_optional_error(self, error: Option<(&'static ErrorCode, String)>) -> Self {
        Self { error, ..self }
    }
    fn waking_at(self, at: Timestamp) -> Self {
        Self {
            wake_at: Some(at),
            ..self
        }
    }
}

/// Decides actions, statuses, errors, phase and the next look from `input`. Pure.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let desired = input.desired;
    let mut verdicts: Vec<Verdict> = Vec::with_capacity(desired.components.len());
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for dc in &desired.components {
        let v = if desired.running {
            let earlier = Earlier {
                verdicts: &verdicts,
                index: &by_name,
            };
            decide_running(dc, input, &earlier)
        } else {
            decide_stopped(dc, input)
        };
        by_name.insert(dc.run.name.as_str(), verdicts.len());
        verdicts.push(v);
    }

    let mut actions: Vec<Action> = Vec::new();
    let mut errors: Vec<ErrorEntry> = Vec::new();
    // Anything the runtime holds that the file no longer names goes away first.
    for (name, obs) in input.observed {
        if !by_name.contains_key(name.as_str()) {
            actions.push(Action::Remove {
                name: name.clone(),
                timeout: obs.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
            });
        }
    }
    // Stops go in reverse start order so dependents stop before what they depend on.
    let stop_actions: Vec<Action> = verdicts
        .iter()
        .rev()
        .filter_map(|v| {
            v.action
                .clone()
                .filter(|a| matches!(a, Action::Stop { .. }))
        })
        .collect();
    actions.extend(stop_actions);
    actions.extend(verdicts.iter().filter_map(|v| {
        v.action
            .clone()
            .filter(|a| !matches!(a, Action::Stop { .. }))
    }));

    for v in &verdicts {
        if let Some((code, message)) = &v.error {
            errors.push(ErrorEntry::new(code, Some(&v.status.name), message.clone()));
        }
    }
    let wake = verdicts.iter().filter_map(|v| v.wake_at).min();
    let components: Vec<ComponentStatus> = verdicts.into_iter().map(|v| v.status).collect();
    let phase = phase_of(desired.running, &components, &actions, input.stop_failures);
    let mut plan = Plan {
        actions,
        components,
        errors,
        phase,
        requeue_after: None,
    };
    let builtin_wake = builtin::judge(&mut plan, |n| input.builtins.get(n).cloned(), input.now);
    plan.requeue_after = wake.into_iter().chain(builtin_wake).min().map(|t| {
        let d = t.duration_since(input.now);
        if d.is_negative() {
            Duration::ZERO
        } else {
            d.unsigned_abs()
        }
    });
    plan
}

fn phase_of(
    running: bool,
    components: &[ComponentStatus],
    actions: &[Action],
    stop_failures: &BTreeMap<String, String>,
) -> Phase {
    if !running {
        return if !stop_failures.is_empty() {
            Phase::PartiallyDeprovisioned
        } else if actions.is_empty()
            && components
                .iter()
                .all(|c| c.status != ComponentState::Running)
        {
            Phase::Stopped
        } else {
            Phase::InProgress
        };
    }
    if components.iter().any(|c| c.status == ComponentState::Error) {
        Phase::FailedToStart
    } else if actions.is_empty()
        && components
            .iter()
            .all(|c| c.status == ComponentState::Running || is_done(c))
    {
        Phase::Succeeded
    } else {
        Phase::Provisioning
    }
}

/// A component that finished as its policy allows (exit 0 under OnFailure/Never, or stopped by an operator).
fn is_done(c: &ComponentStatus) -> bool {
    c.status == ComponentState::Stopped
        && matches!(
            c.reason,
            Some(Reason::Completed | Reason::StoppedByOperator)
        )
}

fn base_status(
    dc: &DesiredComponent,
    history: Option<&ComponentHistory>,
    runtime_restarts: u32,
) -> ComponentStatus {
    ComponentStatus {
        name: dc.run.name.to_string(),
        status: ComponentState::Pending,
        reason: None,
        restart_count: history
            .map_or(0, |h| h.restart_count)
            .saturating_add(runtime_restarts),
        exit_code: history.and_then(|h| h.last_exit).map(|e| e.display_code()),
        pid: None,
        since: None,
        output: None,
        deployment: None,
    }
}

/// What is observed and remembered of a component under its current spec, and the status
/// both start from.
fn context<'a>(
    dc: &DesiredComponent,
    input: &PlanInput<'a>,
) -> (
    Option<&'a crate::observe::ObservedComponent>,
    Option<&'a ComponentHistory>,
    ComponentStatus,
) {
    let name = dc.run.name.as_str();
    let obs = input.observed.get(name);
    let history = input
        .history
        .components
        .get(name)
        .filter(|h| h.spec_hash == dc.run.spec_hash);
    let status = base_status(dc, history, obs.map_or(0, |o| o.runtime_restarts));
    (obs, history, status)
}

fn decide_stopped(dc: &DesiredComponent, input: &PlanInput<'_>) -> Verdict {
    let name = dc.run.name.as_str();
    let (obs, _, mut status) = context(dc, input);
    let running = obs.is_some_and(|o| {
        matches!(
            o.state,
            ObservedState::Running { .. } | ObservedState::Restarting { .. }
        )
    });
    let mut verdict = Verdict {
        status: status.clone(),
        action: None,
        error: None,
        wake_at: None,
    };
    if let Some(reason) = input.stop_failures.get(name) {
        status.status = ComponentState::Error;
        status.reason = Some(Reason::StopFailed);
        verdict.error = Some((
            &errors::RUNTIME_UNREACHABLE,
            format!("could not stop: {reason}"),
        ));
    } else {
        status.status = if running {
            ComponentState::Pending
        } else {
            ComponentState::Stopped
        };
        status.reason = Some(Reason::DeploymentStopped);
    }
    if running || input.stop_failures.contains_key(name) {
        verdict.action = Some(Action::Stop {
            name: name.to_string(),
            timeout: dc.run.stop_timeout,
        });
    }
    verdict.status = status;
    verdict
}

/// What the runtime shows of a component the deployment wants running.
enum Seen {
    /// Running the current spec.
    Running { pid: Option<u32>, since: Timestamp },
    /// Running an older spec; the stop timeout it was started with, when known.
    Outdated { stop_timeout: Option<Duration> },
    /// Exited; the runtime restarts it itself (systemd).
    RestartingItself { last_exit: Option<ExitInfo> },
    /// Stopped by someone outside roost.
    StoppedByOperator,
    /// Not running; `exit` when the runtime saw its last exit under the current spec.
    NotRunning { exit: Option<ExitInfo> },
}

fn classify(dc: &DesiredComponent, obs: Option<&ObservedComponent>, restarts_itself: bool) -> Seen {
    let spec_current =
        obs.is_some_and(|o| o.spec_hash.as_deref().is_none_or(|h| h == dc.run.spec_hash));
    match (obs.map(|o| &o.state), spec_current) {
        (Some(ObservedState::Running { pid, since }), true) => Seen::Running {
            pid: *pid,
            since: *since,
        },
        (Some(ObservedState::Running { .. }), false) => Seen::Outdated {
            stop_timeout: obs.and_then(|o| o.stop_timeout),
        },
        (Some(ObservedState::Restarting { last_exit }), true) if restarts_itself => {
            Seen::RestartingItself {
                last_exit: *last_exit,
            }
        }
        (Some(ObservedState::StoppedByOperator), true) => Seen::StoppedByOperator,
        (Some(ObservedState::Exited { exit }), true) => Seen::NotRunning { exit: Some(*exit) },
        _ => Seen::NotRunning { exit: None },
    }
}

fn decide_running(dc: &DesiredComponent, input: &PlanInput<'_>, earlier: &Earlier<'_>) -> Verdict {
    let (obs, history, mut status) = context(dc, input);
    match classify(dc, obs, input.runtime_restarts_itself) {
        Seen::Running { pid, since } => {
            status.status = ComponentState::Running;
            status.pid = pid;
            status.since = Some(since);
            Verdict::of(status)
        }
        Seen::Outdated { stop_timeout } => {
            status.reason = Some(Reason::SpecChanged);
            Verdict::of(status).with_action(Action::Restart {
                run: dc.run.clone(),
                stop_timeout: stop_timeout.unwrap_or(dc.run.stop_timeout),
            })
        }
        Seen::RestartingItself { last_exit } => {
            let quick = history.map_or(0, |h| h.consecutive_failures);
            status.exit_code = last_exit.map(|e| e.display_code()).or(status.exit_code);
            status.since = last_exit.map(|e| e.at);
            crash_or_backoff(status, quick, last_exit.as_ref(), None)
        }
        Seen::StoppedByOperator => {
            status.status = ComponentState::Stopped;
            status.reason = Some(Reason::StoppedByOperator);
            Verdict::of(status)
        }
        Seen::NotRunning { exit } => decide_start(dc, input, earlier, history, status, exit),
    }
}

/// The verdicts of the components before this one in start order, by name.
struct Earlier<'a> {
    verdicts: &'a [Verdict],
    index: &'a BTreeMap<&'a str, usize>,
}

impl Earlier<'_> {
    fn status(&self, name: &str) -> Option<&ComponentStatus> {
        self.index.get(name).map(|i| &self.verdicts[*i].status)
    }
}

/// What the last outcome of a component that is not running leaves to do.
enum Then {
    /// Nothing now: the verdict is final (waiting for a back-off, completed, failed).
    Done(Verdict),
    /// Start it once its dependencies run; a failed start stays reported meanwhile.
    Start(Option<PlanError>),
    /// Start it now, still a crash loop: the verdict says so.
    StartLooping(Verdict),
}

type PlanError = (&'static ErrorCode, String);

/// Not running: does the restart policy want it started, and when?
fn decide_start(
    dc: &DesiredComponent,
    input: &PlanInput<'_>,
    earlier: &Earlier<'_>,
    history: Option<&ComponentHistory>,
    mut status: ComponentStatus,
    exit_now: Option<ExitInfo>,
) -> Verdict {
    let last_exit = exit_now.or_else(|| history.and_then(|h| h.last_exit));
    let failed_start = history.filter(|h| h.start_error.is_some());
    let then = match (failed_start, last_exit) {
        (Some(h), _) => after_failed_start(dc, input, h, &mut status),
        (None, Some(exit)) => after_exit(dc, input, history, exit, &mut status),
        (None, None) => Then::Start(None),
    };
    match then {
        Then::Done(verdict) => verdict,
        Then::StartLooping(verdict) if deps_ready(dc, earlier) => {
            verdict.with_action(Action::Start(dc.run.clone()))
        }
        Then::StartLooping(verdict) => verdict,
        Then::Start(start_failure) => start_when_ready(dc, earlier, status, start_failure),
    }
}

/// A failed start stays reported (code and reason) while it is retried, until a start works:
/// no component is ever in Error without its error entry.
fn after_failed_start(
    dc: &DesiredComponent,
    input: &PlanInput<'_>,
    h: &ComponentHistory,
    status: &mut ComponentStatus,
) -> Then {
    let code = h
        .start_error_code
        .as_deref()
        .and_then(errors::lookup)
        .unwrap_or(&errors::COMPONENT_FAILED);
    status.status = ComponentState::Error;
    status.reason = Some(start_failure_reason(code));
    status.since = h.start_error_at;
    let error = (code, h.start_error.clone().unwrap_or_default());
    if dc.run.restart_policy == RestartPolicy::Never {
        return Then::Done(Verdict::of(status.clone()).with_error(error));
    }
    let due = h.last_failure_at().unwrap_or(input.now)
        + backoff_delay(&dc.run.backoff, h.consecutive_failures);
    if due > input.now {
        return Then::Done(Verdict::of(status.clone()).with_error(error).waking_at(due));
    }
    Then::Start(Some(error))
}

/// After an exit: completed or failed for good under its policy, backing off, or due again.
fn after_exit(
    dc: &DesiredComponent,
    input: &PlanInput<'_>,
    history: Option<&ComponentHistory>,
    exit: ExitInfo,
    status: &mut ComponentStatus,
) -> Then {
    let quick = history.map_or(0, |h| h.consecutive_failures);
    status.exit_code = Some(exit.display_code());
    let wants_restart = match dc.run.restart_policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !exit.succeeded(),
        RestartPolicy::Never => false,
    };
    let due = exit.at + backoff_delay(&dc.run.backoff, quick);
    let mut status = status.clone();
    status.since = Some(exit.at);
    match (wants_restart, exit.succeeded()) {
        (false, true) => {
            status.status = ComponentState::Stopped;
            status.reason = Some(Reason::Completed);
            Then::Done(Verdict::of(status))
        }
        (false, false) => {
            status.status = ComponentState::Error;
            status.reason = Some(Reason::Failed);
            let msg = format!(
                "exited with {}; restartPolicy Never keeps it stopped",
                describe_exit(&exit)
            );
            Then::Done(Verdict::of(status).with_error((&errors::COMPONENT_FAILED, msg)))
        }
        (true, _) if due > input.now => {
            Then::Done(crash_or_backoff(status, quick, Some(&exit), Some(due)))
        }
        // Restarting now, but still a crash loop: say so rather than "Starting".
        (true, _) if quick >= CRASH_LOOP_THRESHOLD => {
            Then::StartLooping(crash_or_backoff(status, quick, Some(&exit), None))
        }
        (true, _) => Then::Start(None),
    }
}

/// Due to start: only once everything it depends on runs (or completed).
fn start_when_ready(
    dc: &DesiredComponent,
    earlier: &Earlier<'_>,
    mut status: ComponentStatus,
    start_failure: Option<PlanError>,
) -> Verdict {
    for dep in &dc.depends_on {
        let Some(d) = earlier.status(dep) else {
            continue;
        };
        match d.status {
            ComponentState::Running => {}
            ComponentState::Stopped if is_done(d) => {}
            ComponentState::Error => {
                status.status = ComponentState::Error;
                status.reason = Some(Reason::DependencyFailed);
                let msg = format!(
                    "held back: dependency {dep} is in error ({})",
                    d.reason.map_or("Error".to_string(), |r| r.to_string())
                );
                return Verdict::of(status).with_error((&errors::DEPENDENCY_FAILED, msg));
            }
            _ => {
                // A failed start stays reported while it waits; otherwise it is just waiting.
                if start_failure.is_none() {
                    status.reason = Some(Reason::WaitingForDependency);
                }
                return Verdict::of(status).with_optional_error(start_failure);
            }
        }
    }
    if start_failure.is_none() {
        status.reason = Some(Reason::Starting);
    }
    Verdict::of(status)
        .with_action(Action::Start(dc.run.clone()))
        .with_optional_error(start_failure)
}

fn deps_ready(dc: &DesiredComponent, earlier: &Earlier<'_>) -> bool {
    dc.depends_on.iter().all(|dep| {
        earlier
            .status(dep)
            .is_none_or(|d| d.status == ComponentState::Running || is_done(d))
    })
}

fn crash_or_backoff(
    mut status: ComponentStatus,
    quick_failures: u32,
    exit: Option<&ExitInfo>,
    wake_at: Option<Timestamp>,
) -> Verdict {
    let what = exit.map(describe_exit).unwrap_or_else(|| "an exit".into());
    let error = if quick_failures >= CRASH_LOOP_THRESHOLD {
        status.status = ComponentState::Error;
        status.reason = Some(Reason::CrashLoopBackOff);
        let msg = format!(
            "exited {quick_failures} times in a row soon after starting (last: {what}); restarting with back-off"
        );
        (&errors::CRASH_LOOP, msg)
    } else {
        status.status = ComponentState::Pending;
        status.reason = Some(Reason::BackOff);
        let msg = format!("exited with {what}; restarting after back-off");
        (&errors::COMPONENT_FAILED, msg)
    };
    Verdict {
        wake_at,
        ..Verdict::of(status).with_error(error)
    }
}

fn start_failure_reason(code: &ErrorCode) -> Reason {
    code.reason().unwrap_or(Reason::StartFailed)
}

/// An exit in words: `code 3`, `signal 9`.
pub fn describe_exit(exit: &ExitInfo) -> String {
    match (exit.code, exit.signal) {
        (_, Some(sig)) => format!("signal {sig}"),
        (Some(code), None) => format!("code {code}"),
        (None, None) => "an unknown status".into(),
    }
}

/// A component's user and sandbox from its `user:` and `sandbox:`, `None` when it asks for
/// neither.
fn confinement_of(c: &crate::spec::ComponentSpec) -> Option<crate::sandbox::Confinement> {
    if c.user.is_none() && c.sandbox.is_none() {
        return None;
    }
    let sandbox = c.sandbox.clone().unwrap_or_default();
    Some(crate::sandbox::Confinement {
        user: c.user.as_ref().map(|u| u.as_str().to_string()),
        hardened: c.sandbox.is_some(),
        writable: Vec::new(),
        shared: sandbox
            .writable_paths
            .iter()
            .map(|p| p.as_path().to_path_buf())
            .collect(),
        network: sandbox.network || c.sandbox.is_none(),
        audio: sandbox.audio,
        own_code_only: false,
    })
}

mod builtin;
#[cfg(test)]
mod tests;
