//! What plan and runtime share: a component's run as the runtime needs it, and what a runtime
//! observes of components (state, exits). Data only: this module decides nothing and does no
//! I/O, so that `plan` and `runtime` both depend on it and not on each other.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::spec::{Backoff, Command, ComponentName, RestartPolicy};

/// Everything a runtime needs to run one component, resolved from the desired state.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentRun {
    /// The deployment it belongs to.
    pub deployment: String,
    /// Its name.
    pub name: ComponentName,
    /// Changes whenever anything in the component's spec changes.
    pub spec_hash: String,
    /// Program and arguments (absolute program path).
    pub command: Command,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Its working folder, if set.
    pub working_dir: Option<PathBuf>,
    /// When it is restarted after an exit.
    pub restart_policy: RestartPolicy,
    /// Delays between restarts.
    pub backoff: Backoff,
    /// How long a stop waits before killing it.
    pub stop_timeout: Duration,
    /// Its user and sandbox (built-ins always; a file's component with `user:`/`sandbox:`);
    /// `None`: roost's own user, unconfined.
    pub confinement: Option<crate::sandbox::Confinement>,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    /// Exit status, when it exited by itself.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// When it ended.
    pub at: Timestamp,
}

impl ExitInfo {
    /// Exit status 0, not killed by a signal.
    pub fn succeeded(&self) -> bool {
        self.code == Some(0) && self.signal.is_none()
    }
    /// The number shown as `exitCode`: the status, or 128 + signal as shells report it.
    pub fn display_code(&self) -> i32 {
        self.code.unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
    }
}

/// What a runtime sees of one component right now.
#[derive(Clone, Debug, PartialEq)]
pub enum ObservedState {
    /// Its main process is alive.
    Running {
        /// Its main process, when known.
        pid: Option<u32>,
        /// Since when it runs.
        since: Timestamp,
    },
    /// It exited and the runtime itself will start it again (systemd's auto-restart).
    Restarting {
        /// Its last exit, when known.
        last_exit: Option<ExitInfo>,
    },
    /// It exited and nothing will start it again unless roost does.
    Exited {
        /// How it ended.
        exit: ExitInfo,
    },
    /// Someone stopped it outside roost (e.g. `systemctl stop`): leave it until its spec changes.
    StoppedByOperator,
    /// Known to the runtime but not running and never run (e.g. a unit file without a process).
    Inactive,
}

/// What a runtime holds of one component.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedComponent {
    /// Its state.
    pub state: ObservedState,
    /// Hash of the spec this instance was started from, when the runtime can tell.
    pub spec_hash: Option<String>,
    /// Restarts the runtime did by itself since roost last started it (systemd's NRestarts).
    pub runtime_restarts: u32,
    /// The stop timeout it was started with, when the runtime knows it: a component removed
    /// from the file is stopped by its own rule, not a default.
    pub stop_timeout: Option<std::time::Duration>,
}

/// Everything a runtime holds for a deployment, by component name.
pub type Observation = BTreeMap<String, ObservedComponent>;

/// What a built-in component's output says of its running instance (read by the loop, judged
/// by the planner).
#[derive(Clone, Debug, PartialEq)]
pub enum BuiltinHealth {
    /// The running instance has not reported yet. It must within `within` of its start, or it
    /// is in error with `code` and `reason`.
    Silent {
        /// How long after its start its first report may take.
        within: Duration,
        /// The error once it is overdue (the recorder's DEP_E313).
        code: &'static crate::errors::ErrorCode,
        /// The component's reason once it is overdue.
        reason: crate::status::Reason,
    },
    /// It reported.
    Reported(BuiltinReport),
}

/// A built-in's report, reduced to what status and planning need.
#[derive(Clone, Debug, PartialEq)]
pub struct BuiltinReport {
    /// Shown as the component's `output` in status.json.
    pub output: serde_json::Value,
    /// A fault its output shows.
    pub trouble: Option<Trouble>,
    /// Whether it has produced anything yet: a fault before its first output means the
    /// deployment failed to start; a later one keeps the phase and makes the status Error.
    pub produced: bool,
    /// When its output next means something new (a file falling due, the report going stale).
    pub look_again_at: Option<Timestamp>,
}

/// A fault a built-in's output shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Trouble {
    /// A catalogue entry (`DEP_E3xx` for the recorder).
    pub code: &'static crate::errors::ErrorCode,
    /// The component's reason in status.json.
    pub reason: crate::status::Reason,
    /// What happened, for `errors[].message`.
    pub message: String,
}
