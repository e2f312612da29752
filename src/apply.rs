//! Carries a plan out through the runtime, action by action, and keeps the books the planner
//! reads next time (history: starts, failed starts, stops; stop failures). One action's failure
//! never aborts the others; the outcome says how many were tried and how many failed. It never
//! decides what to do: that is `plan`'s.

use std::collections::BTreeMap;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::errors;
use crate::history::History;
use crate::observe::ComponentRun;
use crate::plan::Action;
use crate::runtime::{Runtime, RuntimeError};

/// What the last apply did: shown in status.json as `lastApply`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyCounts {
    /// Actions tried (starts, restarts, stops, removals).
    pub tried: u32,
    /// Of those, the ones that failed (their errors are in `errors` and the components).
    pub failed: u32,
}

/// Applies `actions` for `deployment`; `before_start` writes what a component needs on disk
/// before it starts (the recorder's configuration).
pub async fn apply<R: Runtime>(
    runtime: &mut R,
    deployment: &str,
    actions: &[Action],
    history: &mut History,
    stop_failures: &mut BTreeMap<String, String>,
    mut before_start: impl FnMut(&ComponentRun),
) -> ApplyCounts {
    let mut counts = ApplyCounts::default();
    for action in actions {
        // A stop may take its whole stopTimeout: keep systemd's watchdog fed meanwhile.
        let _ = crate::notify::sd_notify("WATCHDOG=1");
        tracing::info!(%action, "applying");
        counts.tried += 1;
        let result = match action {
            Action::Start(run) | Action::Restart(run) => {
                before_start(run);
                let r = runtime.start(run).await;
                let record = history.for_spec(run.name.as_str(), &run.spec_hash);
                match &r {
                    Ok(()) => record.started(Timestamp::now()),
                    Err(e) => {
                        record.start_failed(start_error_code(e), errors::chain(e), Timestamp::now())
                    }
                }
                stop_failures.remove(run.name.as_str());
                r
            }
            Action::Stop { name, timeout } => {
                let r = runtime.stop(deployment, name, *timeout).await;
                note_stop(stop_failures, name, &r);
                if r.is_ok()
                    && let Some(record) = history.components.get_mut(name)
                {
                    record.stopped_by_roost();
                }
                r
            }
            Action::Remove { name, timeout } => {
                let r = runtime.remove(deployment, name, *timeout).await;
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
    counts
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
