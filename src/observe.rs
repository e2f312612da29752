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
    pub deployment: String,
    pub name: ComponentName,
    /// Changes whenever anything in the component's spec changes.
    pub spec_hash: String,
    pub command: Command,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
    pub restart_policy: RestartPolicy,
    pub backoff: Backoff,
    pub stop_timeout: Duration,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    /// Exit status, when it exited by itself.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    pub at: Timestamp,
}

impl ExitInfo {
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
    Running { pid: Option<u32>, since: Timestamp },
    /// It exited and the runtime itself will start it again (systemd's auto-restart).
    Restarting { last_exit: Option<ExitInfo> },
    /// It exited and nothing will start it again unless roost does.
    Exited { exit: ExitInfo },
    /// Someone stopped it outside roost (e.g. `systemctl stop`): leave it until its spec changes.
    StoppedByOperator,
    /// Known to the runtime but not running and never run (e.g. a unit file without a process).
    Inactive,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObservedComponent {
    pub state: ObservedState,
    /// Hash of the spec this instance was started from, when the runtime can tell.
    pub spec_hash: Option<String>,
    /// Restarts the runtime did by itself since roost last started it (systemd's NRestarts).
    pub runtime_restarts: u32,
    /// The stop timeout it was started with, when the runtime knows it: a component removed
    /// from the file is stopped by its own rule, not a default.
    pub stop_timeout: Option<std::time::Duration>,
}

pub type Observation = BTreeMap<String, ObservedComponent>;
