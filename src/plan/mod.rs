//! Pure decisions. `plan` takes the desired state, what the runtime observes, roost's history
//! and the current time, and returns the actions to take, the status of every component, and
//! when to look again. It never performs I/O and never sees the event that woke the loop.

/// The start order lives with the desired state it is computed from.
pub use crate::spec::order;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::errors::{self, ErrorCode};
use crate::history::{ComponentHistory, History, backoff_delay};
use crate::observe::{BuiltinHealth, ComponentRun, ExitInfo, Observation, ObservedState};
use crate::spec::{Deployment, RestartPolicy, RunState};
use crate::status::{ComponentState, ComponentStatus, ErrorEntry, Phase, Reason};

pub use crate::history::CRASH_LOOP_THRESHOLD;
/// Stop timeout for components that left the desired state (their own setting is gone).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One component as the plan sees it: how to run it and what it waits for.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredComponent {
    pub run: ComponentRun,
    pub depends_on: Vec<String>,
}

/// The desired state reduced to what planning needs, components in start order.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub deployment: String,
    pub running: bool,
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
            let hash_input = serde_json::json!({"component": c, "restartPolicy": restart_policy, "backoff": spec.backoff});
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

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start a component that is not running.
    Start(ComponentRun),
    /// Replace a running component whose spec changed.
    Restart(ComponentRun),
    /// Stop a component (the deployment is stopped).
    Stop { name: String, timeout: Duration },
    /// Stop a component that left the desired state and forget it.
    Remove { name: String, timeout: Duration },
}

impl Action {
    pub fn component(&self) -> &str {
        match self {
            Action::Start(r) | Action::Restart(r) => r.name.as_str(),
            Action::Stop { name, .. } | Action::Remove { name, .. } => name,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Start(r) => write!(f, "start {}", r.name),
            Action::Restart(r) => write!(f, "restart {} (spec changed)", r.name),
            Action::Stop { name, .. } => write!(f, "stop {name}"),
            Action::Remove { name, .. } => write!(f, "remove {name} (no longer in the file)"),
        }
    }
}

pub struct PlanInput<'a> {
    pub desired: &'a Desired,
    pub observed: &'a Observation,
    pub history: &'a History,
    /// Components whose last stop failed, with the reason (for PartiallyDeprovisioned).
    pub stop_failures: &'a BTreeMap<String, String>,
    /// systemd restarts components itself; the process runtime relies on roost.
    pub runtime_restarts_itself: bool,
    /// Health of the built-in components that run, read from their output.
    pub builtins: &'a BTreeMap<String, BuiltinHealth>,
    pub now: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub components: Vec<ComponentStatus>,
    pub errors: Vec<ErrorEntry>,
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

pub fn plan(input: &PlanInput<'_>) -> Plan {
    let desired = input.desired;
    let mut verdicts: Vec<Verdict> = Vec::with_capacity(desired.components.len());
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for dc in &desired.components {
        let v = if desired.running {
            decide_running(dc, input, &verdicts, &by_name)
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

fn decide_running(
    dc: &DesiredComponent,
    input: &PlanInput<'_>,
    earlier: &[Verdict],
    index: &BTreeMap<&str, usize>,
) -> Verdict {
    let (obs, history, mut status) = context(dc, input);
    let spec_current =
        obs.is_some_and(|o| o.spec_hash.as_deref().is_none_or(|h| h == dc.run.spec_hash));
    let verdict = |status: ComponentStatus, action, error, wake_at| Verdict {
        status,
        action,
        error,
        wake_at,
    };

    // Classify what is there now, then decide.
    match obs.map(|o| &o.state) {
        Some(ObservedState::Running { pid, since }) if spec_current => {
            status.status = ComponentState::Running;
            status.pid = *pid;
            status.since = Some(*since);
            return verdict(status, None, None, None);
        }
        Some(ObservedState::Running { .. }) => {
            status.reason = Some(Reason::SpecChanged);
            return verdict(status, Some(Action::Restart(dc.run.clone())), None, None);
        }
        Some(ObservedState::Restarting { last_exit })
            if spec_current && input.runtime_restarts_itself =>
        {
            let quick = history.map_or(0, |h| h.consecutive_failures);
            status.exit_code = last_exit.map(|e| e.display_code()).or(status.exit_code);
            status.since = last_exit.map(|e| e.at);
            return crash_or_backoff(status, quick, last_exit.as_ref(), None, verdict);
        }
        Some(ObservedState::StoppedByOperator) if spec_current => {
            status.status = ComponentState::Stopped;
            status.reason = Some(Reason::StoppedByOperator);
            return verdict(status, None, None, None);
        }
        _ => {}
    }

    // Not running: does the restart policy want it started, and when?
    let last_exit = match obs.map(|o| &o.state) {
        Some(ObservedState::Exited { exit }) if spec_current => Some(*exit),
        _ => history.and_then(|h| h.last_exit),
    };
    let policy = dc.run.restart_policy;
    let quick = history.map_or(0, |h| h.consecutive_failures);
    // A failed start stays reported (code and reason) while it is retried, until a start works:
    // no component is ever in Error without its error entry.
    let mut start_failure = None;
    if let Some(h) = history
        && let Some(reason) = &h.start_error
    {
        let code = h
            .start_error_code
            .as_deref()
            .and_then(errors::lookup)
            .unwrap_or(&errors::COMPONENT_FAILED);
        status.status = ComponentState::Error;
        status.reason = Some(start_failure_reason(code));
        status.since = h.start_error_at;
        let error = Some((code, reason.clone()));
        if policy == RestartPolicy::Never {
            return verdict(status, None, error, None);
        }
        let due = h.last_failure_at().unwrap_or(input.now) + backoff_delay(&dc.run.backoff, quick);
        if due > input.now {
            return verdict(status, None, error, Some(due));
        }
        start_failure = error;
    } else if let Some(exit) = last_exit {
        status.exit_code = Some(exit.display_code());
        let wants_restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.succeeded(),
            RestartPolicy::Never => false,
        };
        if !wants_restart {
            status.since = Some(exit.at);
            if exit.succeeded() {
                status.status = ComponentState::Stopped;
                status.reason = Some(Reason::Completed);
                return verdict(status, None, None, None);
            }
            status.status = ComponentState::Error;
            status.reason = Some(Reason::Failed);
            let msg = format!(
                "exited with {}; restartPolicy Never keeps it stopped",
                describe_exit(&exit)
            );
            return verdict(status, None, Some((&errors::COMPONENT_FAILED, msg)), None);
        }
        let due = exit.at + backoff_delay(&dc.run.backoff, quick);
        if due > input.now {
            status.since = Some(exit.at);
            return crash_or_backoff(status, quick, Some(&exit), Some(due), verdict);
        }
        if quick >= CRASH_LOOP_THRESHOLD {
            // Restarting now, but still a crash loop: say so rather than "Starting".
            status.since = Some(exit.at);
            let looping = crash_or_backoff(status, quick, Some(&exit), None, verdict);
            if deps_ready(dc, earlier, index) {
                return Verdict {
                    action: Some(Action::Start(dc.run.clone())),
                    ..looping
                };
            }
            return looping;
        }
    }

    // Due to start: only once everything it depends on runs.
    for dep in &dc.depends_on {
        let Some(d) = index.get(dep.as_str()).map(|i| &earlier[*i].status) else {
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
                return verdict(status, None, Some((&errors::DEPENDENCY_FAILED, msg)), None);
            }
            _ => {
                // A failed start stays reported while it waits; otherwise it is just waiting.
                if start_failure.is_none() {
                    status.reason = Some(Reason::WaitingForDependency);
                }
                return verdict(status, None, start_failure, None);
            }
        }
    }
    if start_failure.is_none() {
        status.reason = Some(Reason::Starting);
    }
    verdict(
        status,
        Some(Action::Start(dc.run.clone())),
        start_failure,
        None,
    )
}

fn deps_ready(dc: &DesiredComponent, earlier: &[Verdict], index: &BTreeMap<&str, usize>) -> bool {
    dc.depends_on.iter().all(|dep| {
        index
            .get(dep.as_str())
            .map(|i| &earlier[*i].status)
            .is_none_or(|d| d.status == ComponentState::Running || is_done(d))
    })
}

fn crash_or_backoff(
    mut status: ComponentStatus,
    quick_failures: u32,
    exit: Option<&ExitInfo>,
    wake_at: Option<Timestamp>,
    verdict: impl FnOnce(
        ComponentStatus,
        Option<Action>,
        Option<(&'static ErrorCode, String)>,
        Option<Timestamp>,
    ) -> Verdict,
) -> Verdict {
    let what = exit.map(describe_exit).unwrap_or_else(|| "an exit".into());
    if quick_failures >= CRASH_LOOP_THRESHOLD {
        status.status = ComponentState::Error;
        status.reason = Some(Reason::CrashLoopBackOff);
        let msg = format!(
            "exited {quick_failures} times in a row soon after starting (last: {what}); restarting with back-off"
        );
        verdict(status, None, Some((&errors::CRASH_LOOP, msg)), wake_at)
    } else {
        status.status = ComponentState::Pending;
        status.reason = Some(Reason::BackOff);
        verdict(
            status,
            None,
            Some((
                &errors::COMPONENT_FAILED,
                format!("exited with {what}; restarting after back-off"),
            )),
            wake_at,
        )
    }
}

fn start_failure_reason(code: &ErrorCode) -> Reason {
    match code.code {
        "DEP_E161" => Reason::ExecutableNotFound,
        "DEP_E164" => Reason::OutOfDescriptors,
        "DEP_E162" => Reason::InvalidSpec,
        "DEP_E151" => Reason::RuntimeUnreachable,
        _ => Reason::StartFailed,
    }
}

pub fn describe_exit(exit: &ExitInfo) -> String {
    match (exit.code, exit.signal) {
        (_, Some(sig)) => format!("signal {sig}"),
        (Some(code), None) => format!("code {code}"),
        (None, None) => "an unknown status".into(),
    }
}

mod builtin;
#[cfg(test)]
mod tests;
