//! The loop's books on the desired state: reading the file (a bad one keeps the last good
//! one in force), counting generations, telling built-ins what changed, and taking note of
//! what the runtime reports. Nothing here starts or stops anything.

use super::{Reconciler, Triggers};
use crate::desired::Loaded;
use crate::plan::gate::Links;
use crate::plan::{self, Desired};
use crate::runtime::{Runtime, RuntimeEvent};
use crate::spec::Deployment;

impl<R: Runtime> Reconciler<R> {
    /// Reads the file; a valid new content becomes the desired state (and a new generation),
    /// an invalid one is reported and changes nothing that runs.
    pub fn reload_file(&mut self) {
        match self.source.read(self.desired.is_some()) {
            Loaded::Unchanged => self.spec_error = None,
            Loaded::Valid { deployment, hash } => {
                self.count_generation(hash);
                tracing::info!(generation = self.generation, deployment = %deployment.name(), "desired state accepted");
                self.accept(*deployment);
                self.spec_error = None;
            }
            Loaded::Refused(e) => {
                self.spec_error = Some(e);
                // Roost (re)started while the file is bad or gone: run what was last accepted
                // rather than nothing. The error stays reported.
                if self.desired.is_none()
                    && let Some((deployment, hash)) = self.source.last_good()
                {
                    self.count_generation(hash);
                    tracing::warn!(deployment = %deployment.name(), "running the last valid desired state");
                    self.accept(deployment);
                }
            }
        }
    }

    /// Takes a file change or SIGHUP that waits in `triggers` (without waiting for one) and
    /// reads the file as the loop would have.
    pub(super) fn take_desired_news(&mut self, triggers: &mut Triggers) {
        let hangup = triggers.hangup.try_recv().is_ok();
        let file = triggers.file.try_recv().is_ok();
        if hangup {
            tracing::info!("SIGHUP: re-reading the desired state");
            self.source.forget();
        }
        if hangup || file {
            self.reload_file();
        }
    }

    pub(super) fn count_generation(&mut self, hash: String) {
        if self.history.accepted_hash.as_ref() != Some(&hash) || self.generation == 0 {
            self.generation += 1;
            self.history.generation = self.generation;
            self.history.accepted_hash = Some(hash);
            self.save_history();
        }
    }

    pub(super) fn accept(&mut self, deployment: Deployment) {
        if let Some((previous, _)) = &self.desired {
            self.builtins
                .desired_changed(previous, &deployment, self.clock.now());
        }
        let was_stopped = self.desired.as_ref().is_some_and(|(_, d)| !d.running);
        let desired = self.resolve(&deployment);
        if was_stopped && desired.running {
            // Starting a stopped deployment again is a new run: finished components run again.
            self.history
                .components
                .values_mut()
                .for_each(|h| h.stopped_by_roost());
        }
        self.desired = Some((deployment, desired));
    }

    /// The desired state of `deployment` as the device's links make it: everything removed
    /// once its file is gone, its dependencies' exports in its components' environment.
    fn resolve(&self, deployment: &Deployment) -> Desired {
        if self.links.gone {
            let mut none = deployment.clone();
            // Stopped: the phase says PartiallyDeprovisioned while a removal fails.
            none.spec = crate::spec::DeploymentSpec {
                state: crate::spec::RunState::Stopped,
                ..Default::default()
            };
            return Desired::from_deployment(&none, Vec::new());
        }
        let deployment = &self.without_borrowed(deployment);
        let mut desired = Desired::from_deployment(deployment, self.builtins.runs(deployment));
        let own: Vec<&str> = (deployment.spec.components.iter())
            .map(|c| c.name.as_str())
            .collect();
        plan::gate::bind(&mut desired, &self.links.env, &own);
        if self.links.runs_shared {
            plan::gate::hash_apart_from_policy(&mut desired, deployment);
        }
        desired
    }

    /// `deployment` without the shared components the device runs once for all (`roost run
    /// --dir`), and without dependencies on them (the device holds starts until they run).
    fn without_borrowed(&self, deployment: &Deployment) -> Deployment {
        let mut d = deployment.clone();
        let borrowed = &self.links.borrowed;
        if borrowed.is_empty() {
            return d;
        }
        d.spec
            .components
            .retain(|c| !borrowed.contains(c.name.as_str()));
        for c in &mut d.spec.components {
            c.depends_on.retain(|n| !borrowed.contains(n.as_str()));
        }
        d
    }

    /// Takes the device's new word on this deployment: the desired state in force is resolved
    /// again (no new generation: the file did not change).
    pub fn set_links(&mut self, links: Links) {
        if links == self.links {
            return;
        }
        tracing::info!(
            holds = links.holds.len(),
            bindings = links.env.len(),
            gone = links.gone,
            "the device's links changed"
        );
        let moved = (links.file.as_ref()).filter(|f| f.as_path() != self.source.file());
        if let Some(file) = moved.cloned() {
            tracing::info!(file = %file.display(), "the deployment's file moved");
            self.source.retarget(file);
            self.reload_file();
        }
        self.links = links;
        if let Some((deployment, _)) = &self.desired {
            let desired = self.resolve(deployment);
            if let Some((_, d)) = self.desired.as_mut() {
                *d = desired;
            }
        }
    }

    /// Takes note of what the runtime reported; the next reconcile acts on it.
    pub fn record_event(&mut self, event: RuntimeEvent) {
        match event {
            RuntimeEvent::Exited { name, exit } => {
                tracing::info!(component = %name, code = ?exit.code, signal = ?exit.signal, "component exited");
                let Some(dc) = self.desired_component(&name) else {
                    return;
                };
                let (hash, backoff) = (dc.run.spec_hash.clone(), dc.run.backoff);
                self.history.for_spec(&name, &hash).exited(exit, &backoff);
                self.save_history();
            }
            RuntimeEvent::Changed => {}
            RuntimeEvent::Unreachable { reason } => self.runtime_error = Some(reason),
            RuntimeEvent::Reachable => {
                self.runtime_error = None;
                self.runtime_retry = 0;
            }
        }
    }

    pub(super) fn desired_component(&self, name: &str) -> Option<&plan::DesiredComponent> {
        let (_, desired) = self.desired.as_ref()?;
        desired
            .components
            .iter()
            .find(|c| c.run.name.as_str() == name)
    }

    pub(super) fn deployment_name(&self) -> String {
        self.desired
            .as_ref()
            .map(|(_, d)| d.deployment.clone())
            .unwrap_or_default()
    }
}
