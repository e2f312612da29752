//! One round of the loop: observe, plan, apply, pass after pass until nothing is left to do,
//! then publish the status and say when to look again. The planner decides; a round only
//! carries data between the runtime, the built-ins, the planner and the applier. A desired state
//! that changes during a round (while a stop takes its time) is taken at the next pass, and the
//! applier leaves the rest of a plan made from the older one: no pass carries out a superseded
//! plan.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{MAX_PASSES, RETRY_FAILED_ACTIONS, Reconciler, Triggers};
use crate::apply::{Applied, Applier, Reach};
use crate::builtin::BuiltinHealth;
use crate::observe::Observation;
use crate::plan::{self, Plan, PlanInput};
use crate::runtime::Runtime;
use crate::status::{OverallStatus, Phase};

/// The longest the loop sleeps while a built-in judged by its report runs: twice the
/// recorder's report heartbeat, so a lost file watch delays news by at most this.
const OUTPUT_SAFETY_LOOK: Duration = Duration::from_secs(120);

/// How a round of passes ended: where the next wake-up comes from (with the safety look).
#[derive(Clone, Copy, Debug, PartialEq)]
enum RoundEnd {
    /// The runtime did not answer (its `retry`-th time in a row).
    Unreachable { retry: u32 },
    /// No desired state is in force.
    NothingDesired,
    /// Nothing left to do; a back-off or a built-in's deadline may fall due.
    Settled { requeue_after: Option<Duration> },
    /// Actions keep failing or the pass limit was hit.
    Stuck { requeue_after: Option<Duration> },
}

impl RoundEnd {
    fn wake_after(self) -> Option<Duration> {
        match self {
            RoundEnd::Unreachable { retry } => Some(Duration::from_millis(500u64 << retry.min(6))),
            RoundEnd::NothingDesired => None,
            RoundEnd::Settled { requeue_after } => requeue_after,
            RoundEnd::Stuck { requeue_after } => {
                Some(requeue_after.map_or(RETRY_FAILED_ACTIONS, |d| d.min(RETRY_FAILED_ACTIONS)))
            }
        }
    }
}
impl<R: Runtime> Reconciler<R> {
    /// Observes, plans and applies until nothing is left to do (or the pass limit), publishes
    /// the status and sets the next wake-up. `triggers` are looked at (never waited on) for a
    /// desired state newer than the one a pass planned from.
    pub async fn reconcile(&mut self, triggers: &mut Triggers) {
        self.liveness.busy();
        let end = self.round(triggers).await;
        let mut wake = end.wake_after();
        if self.desired_reports() {
            // A built-in's report wakes the loop through a file watch; should that watch be
            // lost (its folder removed and made again), this look still catches its news.
            wake = Some(wake.map_or(OUTPUT_SAFETY_LOOK, |d| d.min(OUTPUT_SAFETY_LOOK)));
        }
        self.next_wake = wake.map(|d| Instant::now() + d);
    }

    fn desired_reports(&self) -> bool {
        (self.desired.as_ref()).is_some_and(|(d, _)| self.builtins.any_reporting(d))
    }

    async fn round(&mut self, triggers: &mut Triggers) -> RoundEnd {
        // The generation whose InProgress the status has said, so it is said once per generation.
        let mut announced = self.observed_generation;
        for pass in 0..MAX_PASSES {
            // A file changed while the last pass applied (a stop can take seconds): plan from it.
            self.take_desired_news(triggers);
            let observed = match self.observe().await {
                Ok(o) => o,
                Err(end) => return end,
            };
            if self.desired.is_none() {
                self.write_status(None);
                return RoundEnd::NothingDesired;
            }
            let plan = self.plan(&observed);
            if plan.actions.is_empty() || pass + 1 == MAX_PASSES {
                self.observed_generation = self.generation;
                self.write_status(Some(&plan));
                return match plan.actions.is_empty() {
                    true => RoundEnd::Settled {
                        requeue_after: plan.requeue_after,
                    },
                    false => RoundEnd::Stuck {
                        requeue_after: plan.requeue_after,
                    },
                };
            }
            if announced != self.generation {
                announced = self.generation;
                let mut doc = self.status_doc(Some(&plan));
                (doc.phase, doc.status) = (Phase::InProgress, OverallStatus::Pending);
                self.write_doc(doc);
            }
            let applied = self.apply(&plan, triggers).await;
            let none_went_through = applied.counts.failed == applied.counts.tried;
            if applied.reach == Reach::Whole && none_went_through {
                // Nothing went through: look again soon rather than spin.
                self.observed_generation = self.generation;
                self.write_status(Some(&plan));
                return RoundEnd::Stuck {
                    requeue_after: None,
                };
            }
        }
        RoundEnd::Settled {
            requeue_after: None,
        }
    }

    async fn observe(&mut self) -> Result<Observation, RoundEnd> {
        match self.runtime.observe(&self.deployment_name()).await {
            Ok(observed) => {
                self.runtime_error = None;
                self.runtime_retry = 0;
                self.note_runtime_restarts(&observed);
                Ok(observed)
            }
            Err(e) => {
                let why = crate::errors::chain(&e);
                tracing::warn!(error = %why, "runtime not reachable");
                self.runtime_error = Some(why);
                self.runtime_retry = self.runtime_retry.saturating_add(1);
                self.write_status(None);
                Err(RoundEnd::Unreachable {
                    retry: self.runtime_retry,
                })
            }
        }
    }

    /// systemd restarts components itself: its restart counts go into the history.
    fn note_runtime_restarts(&mut self, observed: &Observation) {
        let Some((_, desired)) = &self.desired else {
            return;
        };
        if !self.runtime.restarts_itself() {
            return;
        }
        let mut changed = false;
        for dc in &desired.components {
            if let Some(o) = observed.get(dc.run.name.as_str()) {
                let record = self
                    .history
                    .for_spec(dc.run.name.as_str(), &dc.run.spec_hash);
                changed |= record.runtime_restarts_seen != o.runtime_restarts;
                record.observe_runtime_restarts(o.runtime_restarts);
            }
        }
        if changed {
            self.save_history();
        }
    }

    fn plan(&self, observed: &Observation) -> Plan {
        let (_, desired) = self.desired.as_ref().expect("a desired state is in force");
        let now = self.clock.now();
        let builtins: BTreeMap<String, BuiltinHealth> = self.builtins.health(observed, now);
        let mut plan = plan::plan(&PlanInput {
            desired,
            observed,
            history: &self.history,
            stop_failures: &self.stop_failures,
            runtime_restarts_itself: self.runtime.restarts_itself(),
            builtins: &builtins,
            now,
        });
        plan::gate::gate(&mut plan, &desired.deployment, &self.holds());
        plan
    }

    /// What holds this deployment's starts: the device's word under `roost run --dir`; with a
    /// single file every deployment named in `spec.dependsOn` is missing (DEP_E157).
    fn holds(&self) -> Vec<plan::gate::Hold> {
        if self.forward.is_some() {
            return self.links.holds.clone();
        }
        let deps = self.desired.iter().flat_map(|(d, _)| &d.spec.depends_on);
        deps.map(|n| plan::gate::Hold::Missing {
            deployment: n.to_string(),
        })
        .collect()
    }

    /// Carries the plan out, until its end or until a newer desired state waits in `triggers`.
    async fn apply(&mut self, plan: &Plan, triggers: &Triggers) -> Applied {
        let deployment = self.deployment_name();
        let spec = self.desired.as_ref().map(|(d, _)| d.clone());
        let builtins = &self.builtins;
        let superseded = || triggers.desired_news_waiting();
        let applied = Applier {
            runtime: &mut self.runtime,
            deployment: &deployment,
            clock: self.clock.as_ref(),
            liveness: &self.liveness,
            superseded: &superseded,
        }
        .apply(
            &plan.actions,
            &mut self.history,
            &mut self.stop_failures,
            |run| {
                let Some(spec) = &spec else { return };
                if let Err(e) = builtins.prepare(run.name.as_str(), spec) {
                    tracing::error!(error = %crate::errors::chain(&e), "cannot prepare a built-in component");
                }
            },
        )
        .await;
        if applied.counts.tried > 0 {
            self.last_apply = Some(applied.counts);
        }
        self.save_history();
        applied
    }

    pub(super) fn save_history(&self) {
        if let Err(e) = self.history.save(&self.state.history()) {
            tracing::error!(error = %crate::errors::chain(&e), "cannot save history");
        }
    }
}
