//! What the other deployments of a device (`roost run --dir`) mean for one deployment's plan:
//! its dependencies hold back its starts (DEP_E156 while one is in error, DEP_E157 while one is
//! missing), their exports reach its components' environment, and a deployment whose file is
//! gone is planned with nothing desired. Pure: the device's coordinator computes [`Links`].

use std::collections::BTreeMap;

use super::{Action, Desired, Plan, spec_hash};
use crate::errors;
use crate::status::{ComponentState, ErrorEntry, Phase, Reason};

/// Why a dependency holds this deployment back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// No file of the folder declares it.
    Missing {
        /// The deployment named in `spec.dependsOn`.
        deployment: String,
    },
    /// It is not (yet) Succeeded and Running: being applied, starting, stopped.
    NotReady {
        /// The dependency.
        deployment: String,
        /// Its phase and status, in words (`InProgress/Pending`).
        state: String,
    },
    /// It is in error (status Error or phase FailedToStart).
    InError {
        /// The dependency.
        deployment: String,
        /// Its first error's code and message, when it has one.
        why: String,
    },
}

/// The device's word to one deployment, recomputed whenever another deployment changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// Dependencies that are not ready, in `spec.dependsOn` order; empty when all are.
    pub holds: Vec<Hold>,
    /// `<DEPLOYMENT>_<NAME>` -> value from the exports of the deployments this one depends on.
    pub env: BTreeMap<String, String>,
    /// The deployment's file is gone (past its grace): every component is to be removed.
    pub gone: bool,
    /// The file the deployment is read from now, when another file took it over (a rename).
    pub file: Option<std::path::PathBuf>,
    /// Its `shared: true` components: they run once for the device (deployment `shared`), not
    /// in this deployment.
    pub borrowed: std::collections::BTreeSet<String>,
    /// This is the deployment `shared`: its components' restart policy (their owner's) is
    /// left out of their spec hash, so a new owner takes them over without a restart.
    pub runs_shared: bool,
}

/// Spec hashes without the restart policy (the deployment `shared`, whose owner may change):
/// the same program, environment and settings are the same instance whoever owns it.
pub fn hash_apart_from_policy(desired: &mut Desired, deployment: &crate::spec::Deployment) {
    for c in &mut desired.components {
        let Some(spec) = (deployment.spec.components.iter()).find(|s| s.name == c.run.name) else {
            continue;
        };
        let mut spec = spec.clone();
        spec.restart_policy = None;
        let input =
            serde_json::json!({"component": spec, "backoff": deployment.spec.backoff, "shared": 1});
        c.run.spec_hash = spec_hash(input.to_string().as_bytes());
    }
}

/// Adds the bindings to every component of the file (not the built-ins, which take nothing
/// from the environment), its own `env:` winning on a clash; a changed value changes the spec
/// hash, so the component is restarted with it. No bindings: the desired state is unchanged.
pub fn bind(desired: &mut Desired, env: &BTreeMap<String, String>, file_components: &[&str]) {
    if env.is_empty() {
        return;
    }
    let bindings = serde_json::to_string(env).unwrap_or_default();
    for c in &mut desired.components {
        if !file_components.contains(&c.run.name.as_str()) {
            continue;
        }
        for (k, v) in env {
            c.run.env.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let input = format!("{}{bindings}", c.run.spec_hash);
        c.run.spec_hash = spec_hash(input.as_bytes());
    }
}

/// Holds back every start of `plan` while `holds` is not empty: the components not yet running
/// wait (Pending, WaitingForDependency; Error, DependencyFailed while a dependency is in
/// error); the running ones keep running; restarts, stops and removals go on. Each hold is an
/// error of the deployment (no component): DEP_E156 or DEP_E157.
pub fn gate(plan: &mut Plan, deployment: &str, holds: &[Hold]) {
    if holds.is_empty() {
        return;
    }
    let in_error = holds.iter().any(|h| matches!(h, Hold::InError { .. }));
    let held: Vec<String> = (plan.actions.iter())
        .filter_map(|a| match a {
            Action::Start(run) => Some(run.name.to_string()),
            _ => None,
        })
        .collect();
    plan.actions.retain(|a| !matches!(a, Action::Start(_)));
    for c in plan
        .components
        .iter_mut()
        .filter(|c| held.contains(&c.name))
    {
        (c.status, c.reason) = match in_error {
            true => (ComponentState::Error, Some(Reason::DependencyFailed)),
            false => (ComponentState::Pending, Some(Reason::WaitingForDependency)),
        };
    }
    for hold in holds {
        // Waiting is news only while it holds something back.
        if !held.is_empty() || !matches!(hold, Hold::NotReady { .. }) {
            plan.errors.push(hold_error(deployment, hold));
        }
    }
    if !held.is_empty() {
        plan.phase = match in_error {
            true => Phase::FailedToStart,
            false => Phase::Provisioning,
        };
    }
}

fn hold_error(deployment: &str, hold: &Hold) -> ErrorEntry {
    match hold {
        Hold::Missing { deployment: dep } => ErrorEntry::new(
            &errors::DEPENDENCY_NOT_FOUND,
            None,
            format!(
                "deployment {deployment:?} depends on {dep:?}, which no deployment file of this device declares; its components wait"
            ),
        ),
        Hold::NotReady {
            deployment: dep,
            state,
        } => ErrorEntry::new(
            &errors::DEPENDENCY_NOT_READY,
            None,
            format!(
                "deployment {deployment:?} waits for {dep:?} to be Succeeded and Running (now {state})"
            ),
        ),
        Hold::InError {
            deployment: dep,
            why,
        } => ErrorEntry::new(
            &errors::DEPENDENCY_FAILED,
            None,
            format!("dependent deployment {dep:?} is in error state: {why}"),
        ),
    }
}
