//! Carries a plan out through the runtime, action by action, and keeps the books the planner
//! reads next time (history: starts, failed starts, stops; stop failures). One action's failure
//! never aborts the others; the outcome says how many were tried and how many failed. A plan is
//! only as good as the desired state it was made from: once a newer one waits (a stop can take
//! seconds), nothing more of the old plan is carried out, not even the start half of a restart
//! whose stop is done. It never decides what to do: that is `plan`'s.

use std::collections::BTreeMap;

use crate::clock::Clock;
use crate::errors;
use crate::history::History;
use crate::observe::{ComponentRun, Observation, ObservedState};
use crate::plan::Action;
use crate::runtime::{Runtime, RuntimeError};
use crate::sd_notify::Liveness;

/// What the last apply did (a status.json type, kept with the document).
pub use crate::status::ApplyCounts;

/// Carries actions out for one deployment through a runtime.
pub struct Applier<'a, R: Runtime> {
    /// Where components run.
    pub runtime: &'a mut R,
    /// The deployment the actions are for.
    pub deployment: &'a str,
    /// The wall clock the history's times come from.
    pub clock: &'a dyn Clock,
    /// Told after every action, so that a long stop does not look like a hung loop.
    pub liveness: &'a Liveness,
    /// Whether a newer desired state than the plan's waits to be read; asked before each
    /// action and between the stop and the start of a restart.
    pub superseded: &'a dyn Fn() -> bool,
}

/// How far an apply went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every action of the plan was tried.
    Whole,
    /// A newer desired state arrived while the plan was carried out: the rest of it (and the
    /// start of a restart whose stop was done) is left to a plan made from the newer state.
    Superseded,
}

/// What an apply did: its counts and how far it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Actions tried and failed.
    pub counts: ApplyCounts,
    /// Whether the plan was carried out to its end.
    pub reach: Reach,
}

/// How a restart ended.
enum Replaced {
    /// The old instance stopped and the new one was started (or either failed).
    Done(Result<(), RuntimeError>),
    /// The old instance stopped; a newer desired state says what starts instead.
    StoppedOnly,
}

impl<R: Runtime> Applier<'_, R> {
    /// Applies `actions` in order and keeps the books (`history`, `stop_failures`), until the
    /// end or until [`Applier::superseded`] says a newer desired state waits; `before_start`
    /// writes what a component needs on disk before it starts (a built-in's configuration).
    pub async fn apply(
        &mut self,
        actions: &[Action],
        history: &mut History,
        stop_failures: &mut BTreeMap<String, String>,
        mut before_start: impl FnMut(&ComponentRun),
    ) -> Applied {
        let mut counts = ApplyCounts::default();
        let mut reach = Reach::Whole;
        for (done, action) in actions.iter().enumerate() {
            if (self.superseded)() {
                tracing::info!(
                    left = actions.len() - done,
                    "a newer desired state arrived: the rest of this plan is left to a new one"
                );
                reach = Reach::Superseded;
                break;
            }
            self.liveness.busy();
            tracing::info!(%action, "applying");
            counts.tried += 1;
            let result = match action {
                Action::Start(run) => {
                    before_start(run);
                    self.start(run, history, stop_failures).await
                }
                Action::Restart { run, stop_timeout } => {
                    let replaced = self
                        .replace(
                            run,
                            *stop_timeout,
                            history,
                            stop_failures,
                            &mut before_start,
                        )
                        .await;
                    match replaced {
                        Replaced::Done(r) => r,
                        Replaced::StoppedOnly => {
                            tracing::info!(component = %run.name, "stopped; a newer desired state says what starts instead");
                            reach = Reach::Superseded;
                            break;
                        }
                    }
                }
                Action::Stop { name, timeout } => {
                    let r = self.runtime.stop(self.deployment, name, *timeout).await;
                    note_stop(stop_failures, name, &r);
                    if r.is_ok()
                        && let Some(record) = history.components.get_mut(name)
                    {
                        record.stopped_by_roost();
                    }
                    r
                }
                Action::Remove { name, timeout } => {
                    let r = self.runtime.remove(self.deployment, name, *timeout).await;
                    note_stop(stop_failures, name, &r);
                    if r.is_ok() {
                        history.components.remove(name);
                    }
                    r
                }
            };
            if let Err(e) = result {
                counts.failed += 1;
                tracing::warn!(%action, error = %errors::chain(&e), "action failed");
            }
        }
        if counts.failed > 0 {
            tracing::warn!(
                failed = counts.failed,
                tried = counts.tried,
                "some actions failed"
            );
        }
        Applied { counts, reach }
    }

    /// Stops the running instance, then starts `run` unless a newer desired state arrived
    /// meanwhile: a stop may take the whole stop timeout, and an instance of a spec already
    /// superseded must never start (it would run, and take as long to stop again).
    async fn replace(
        &mut self,
        run: &ComponentRun,
        stop_timeout: std::time::Duration,
        history: &mut History,
        stop_failures: &mut BTreeMap<String, String>,
        before_start: &mut impl FnMut(&ComponentRun),
    ) -> Replaced {
        let name = run.name.as_str();
        if let Err(e) = self.runtime.stop(self.deployment, name, stop_timeout).await {
            // The new instance cannot start beside the old one: its start failed.
            let record = history.for_spec(name, &run.spec_hash);
            record.start_failed(start_error_code(&e), errors::chain(&e), self.clock.now());
            stop_failures.remove(name);
            return Replaced::Done(Err(e));
        }
        stop_failures.remove(name);
        if let Some(record) = history.components.get_mut(name) {
            record.stopped_by_roost();
        }
        self.liveness.busy();
        if (self.superseded)() {
            return Replaced::StoppedOnly;
        }
        before_start(run);
        Replaced::Done(self.start(run, history, stop_failures).await)
    }

    async fn start(
        &mut self,
        run: &ComponentRun,
        history: &mut History,
        stop_failures: &mut BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let r = self.runtime.start(run).await;
        let record = history.for_spec(run.name.as_str(), &run.spec_hash);
        match &r {
            Ok(()) => record.started(self.clock.now()),
            Err(e) => record.start_failed(start_error_code(e), errors::chain(e), self.clock.now()),
        }
        stop_failures.remove(run.name.as_str());
        r
    }

    /// Stops every component of `order` that `running` shows running, in that order (roost
    /// shutting down); `timeout_of` gives each one's stop timeout. Returns the ones that could
    /// not be stopped, with why.
    pub async fn stop_all(
        &mut self,
        order: &[String],
        running: &Observation,
        timeout_of: impl Fn(&str) -> std::time::Duration,
        history: &mut History,
    ) -> BTreeMap<String, String> {
        let mut failed = BTreeMap::new();
        for name in order {
            let is_running = running
                .get(name)
                .is_some_and(|o| matches!(o.state, ObservedState::Running { .. }));
            if !is_running {
                continue;
            }
            self.liveness.busy();
            match self
                .runtime
                .stop(self.deployment, name, timeout_of(name))
                .await
            {
                Ok(()) => {
                    if let Some(record) = history.components.get_mut(name) {
                        record.stopped_by_roost();
                    }
                }
                Err(e) => {
                    let why = errors::chain(&e);
                    tracing::warn!(component = %name, error = %why, "stop at shutdown failed");
                    failed.insert(name.clone(), why);
                }
            }
        }
        failed
    }
}

fn note_stop(
    stop_failures: &mut BTreeMap<String, String>,
    name: &str,
    r: &Result<(), RuntimeError>,
) {
    match r {
        Ok(()) => stop_failures.remove(name),
        Err(e) => stop_failures.insert(name.to_string(), errors::chain(e)),
    };
}

/// The catalogue code of a failed start.
pub fn start_error_code(e: &RuntimeError) -> &'static str {
    match e {
        RuntimeError::ExecutableNotFound { .. } => errors::EXECUTABLE_NOT_FOUND.code,
        RuntimeError::OutOfDescriptors { .. } => errors::OUT_OF_DESCRIPTORS.code,
        RuntimeError::InvalidValue { .. } => errors::INVALID_SPEC.code,
        RuntimeError::Unreachable(_) => errors::RUNTIME_UNREACHABLE.code,
        _ => errors::COMPONENT_FAILED.code,
    }
}
