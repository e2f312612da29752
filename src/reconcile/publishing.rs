//! The loop's status: each new document built from the loop's state and handed to the
//! publishers (never waited on), and the shutdown sequence that ends with a last document.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Reconciler;
use crate::apply::Applier;
use crate::builtin::BuiltinHealth;
use crate::plan::{self, Plan};
use crate::runtime::Runtime;
use crate::status::{StatusDoc, StatusInputs};

impl<R: Runtime> Reconciler<R> {
    pub(super) fn write_status(&mut self, plan: Option<&Plan>) {
        let doc = self.status_doc(plan);
        self.write_doc(doc);
    }

    /// Hands a new document to every publisher (status.json first), each on its own thread;
    /// one that says the same as the last is not handed on.
    pub(super) fn write_doc(&mut self, doc: StatusDoc) {
        if self
            .last_status
            .as_ref()
            .is_some_and(|last| last.same_content(&doc))
        {
            return;
        }
        self.last_status = Some(doc.clone());
        if let Some(log) = &self.status_log {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(doc.clone());
        }
        if let Some(tx) = &self.forward {
            let _ = tx.send(doc.clone());
        }
        if let Some(link) = &self.remote {
            link.docs.send_replace(Some(Arc::new(doc.clone())));
        }
        self.publishers.publish(doc);
    }

    pub(super) fn status_doc(&self, plan: Option<&Plan>) -> StatusDoc {
        let mut doc = self.built_doc(plan);
        doc.remote = self.remote.as_ref().and_then(|l| l.current());
        doc
    }

    fn built_doc(&self, plan: Option<&Plan>) -> StatusDoc {
        StatusDoc::build(StatusInputs {
            deployment: self
                .desired
                .as_ref()
                .map(|(d, _)| d.metadata.name.to_string()),
            generation: self.generation,
            observed_generation: self.observed_generation,
            spec_error: self.spec_error.as_ref(),
            runtime_error: self.runtime_error.as_deref(),
            planned: plan.map(|p| (p.phase, p.components.as_slice(), p.errors.as_slice())),
            last: self.last_status.as_ref(),
            has_desired: self.desired.is_some(),
            last_apply: self.last_apply,
            runtime: self.runtime.kind(),
            now: self.clock.now(),
        })
    }

    /// Stops what roost itself supervises (systemd units outlive roost) and writes a last status.
    pub async fn shutdown(&mut self) {
        if self.runtime.restarts_itself() {
            self.save_history();
            return;
        }
        let deployment = self.deployment_name();
        let running = self.runtime.observe(&deployment).await.unwrap_or_default();
        let desired: Vec<&plan::DesiredComponent> = self
            .desired
            .as_ref()
            .map(|(_, d)| d.components.iter().collect())
            .unwrap_or_default();
        let timeouts: BTreeMap<String, Duration> = desired
            .iter()
            .map(|c| (c.run.name.to_string(), c.run.stop_timeout))
            .collect();
        // Dependents first: reverse start order, then anything no longer desired.
        let mut order: Vec<String> = desired
            .iter()
            .rev()
            .map(|c| c.run.name.to_string())
            .collect();
        order.extend(
            running
                .keys()
                .filter(|n| !timeouts.contains_key(*n))
                .cloned(),
        );
        let failed = Applier {
            runtime: &mut self.runtime,
            deployment: &deployment,
            clock: self.clock.as_ref(),
            liveness: &self.liveness,
            superseded: &|| false,
        }
        .stop_all(
            &order,
            &running,
            // Each instance by its own rule (it may run an older spec), else the file's.
            |n| {
                (running.get(n).and_then(|o| o.stop_timeout))
                    .or_else(|| timeouts.get(n).copied())
                    .unwrap_or(plan::DEFAULT_STOP_TIMEOUT)
            },
            &mut self.history,
        )
        .await;
        // A built-in's last word: its output written as it exited (the recorder's last file).
        let health = self.builtins.health(&running, self.clock.now());
        let doc = self
            .status_doc(None)
            .after_shutdown(&failed, |c| match health.get(&c.name) {
                Some(BuiltinHealth::Reported(r)) => Some(r.output.clone()),
                _ => None,
            });
        self.write_doc(doc);
        self.save_history();
    }

    /// Waits (bounded) until every publisher has the newest status document.
    pub fn flush_status(&self) {
        if !self.publishers.flush(Duration::from_secs(5)) {
            tracing::warn!("a status publisher did not finish within 5 s");
        }
    }

    /// Keeps every document published from now on in memory, in order (tests read the loop's
    /// states from it; the threaded publishers may skip a document superseded quickly).
    pub fn record_statuses(&mut self) -> Arc<std::sync::Mutex<Vec<StatusDoc>>> {
        self.status_log.get_or_insert_with(Default::default).clone()
    }
}
