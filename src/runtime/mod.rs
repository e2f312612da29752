//! The places components run. A runtime starts, stops and observes components and reports what
//! happens to them as events; it never decides what should run (that is `plan`'s job).
//!
//! - [`process`]: roost supervises child processes itself (no systemd needed).
//! - [`systemd`]: one systemd unit per component, driven and observed over D-Bus.

pub mod process;
pub mod systemd;

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

/// Something that happened in the runtime and may need a new reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum RuntimeEvent {
    /// A component's main process ended (the reconciler counts it in the history).
    Exited { name: String, exit: ExitInfo },
    /// Some component changed state; look again.
    Changed,
    /// The runtime cannot be reached (DEP_E151).
    Unreachable { reason: String },
    /// The runtime answers again.
    Reachable,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("runtime not reachable: {0}")]
    Unreachable(String),
    #[error("executable not found or not executable: {program}: {reason}")]
    ExecutableNotFound { program: String, reason: String },
    #[error("component {name}: {message}")]
    Component { name: String, message: String },
    #[error("component {name} cannot start: out of file descriptors ({reason})")]
    OutOfDescriptors { name: String, reason: String },
    #[error("invalid value for component {name}: {message}")]
    InvalidValue { name: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// A place components run. Implementations must make `next_event` cancel-safe: it is polled in
/// a `select!` with other triggers.
#[allow(async_fn_in_trait)]
pub trait Runtime {
    /// `"process"` or `"systemd"`, as shown in `reconciler.runtime`.
    fn kind(&self) -> &'static str;
    /// Whether the runtime restarts exited components by itself according to their policy.
    fn restarts_itself(&self) -> bool;
    /// Everything this runtime holds for the deployment, keyed by component name.
    async fn observe(&mut self, deployment: &str) -> Result<Observation, RuntimeError>;
    /// Starts (or restarts with a new spec) one component.
    async fn start(&mut self, run: &ComponentRun) -> Result<(), RuntimeError>;
    /// Stops one component, waiting up to its stop timeout before killing it.
    async fn stop(
        &mut self,
        deployment: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), RuntimeError>;
    /// Stops a component and forgets it entirely (it left the desired state).
    async fn remove(
        &mut self,
        deployment: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), RuntimeError>;
    /// Waits for the next thing that happened.
    async fn next_event(&mut self) -> RuntimeEvent;
}
