//! The places components run. A runtime starts, stops and observes components and reports what
//! happens to them as events; it never decides what should run (that is `plan`'s job).
//!
//! - [`process`]: roost supervises child processes itself (no systemd needed).
//! - [`systemd`]: one systemd unit per component, driven and observed over D-Bus.
//! - [`fake`]: a recording in-memory runtime for in-process tests of the loop.

pub mod fake;
pub mod process;
pub mod systemd;

use std::time::Duration;

pub use crate::observe::{ComponentRun, ExitInfo, Observation, ObservedComponent, ObservedState};

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
    #[error("{context}")]
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
