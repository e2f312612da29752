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
    Exited {
        /// The component whose program ended.
        name: String,
        /// How it ended: exit code or signal, and when.
        exit: ExitInfo,
    },
    /// Some component changed state; look again.
    Changed,
    /// The runtime cannot be reached (DEP_E151).
    Unreachable {
        /// What failed, e.g. the D-Bus error.
        reason: String,
    },
    /// The runtime answers again.
    Reachable,
}

/// Why a runtime could not do what it was asked; [`crate::apply::start_error_code`] maps a
/// failed start to its catalogue code.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime does not answer (systemd's bus or manager); holds what failed, and zbus's
    /// error as the source when the bus said why.
    #[error("runtime not reachable")]
    Unreachable(#[source] Lost),
    /// The systemd manager refused or failed an operation on a component's unit.
    #[error("component {name}: {doing}")]
    Bus {
        /// The unit concerned.
        name: String,
        /// What was being done.
        doing: String,
        /// zbus's error.
        #[source]
        source: zbus::Error,
    },
    /// A component's program is missing or may not be executed.
    #[error("executable not found or not executable: {program}: {reason}")]
    ExecutableNotFound {
        /// The program as written in the command.
        program: String,
        /// Why it cannot be run (the system's error, or what the search found).
        reason: String,
    },
    /// Any other failure to start, stop or observe one component.
    #[error("component {name}: {message}")]
    Component {
        /// The component concerned.
        name: String,
        /// What failed.
        message: String,
    },
    /// Starting a component failed because roost or the system ran out of file descriptors.
    #[error("component {name} cannot start: out of file descriptors ({reason})")]
    OutOfDescriptors {
        /// The component that could not start.
        name: String,
        /// The system's error.
        reason: String,
    },
    /// A value of the component's spec cannot be expressed in this runtime (e.g. in a unit file).
    #[error("invalid value for component {name}: {message}")]
    InvalidValue {
        /// The component concerned.
        name: String,
        /// Which value, and why.
        message: String,
    },
    /// A file or process operation of the runtime itself failed.
    #[error("{context}")]
    Io {
        /// What the runtime was doing, e.g. "cannot create /var/lib/roost/logs".
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What was being done when the runtime could not be reached, and the bus's own error.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Lost {
    /// What was being done (to which unit).
    pub what: String,
    /// zbus's error, when the bus said why.
    #[source]
    pub source: Option<zbus::Error>,
}

impl Lost {
    /// Lost while doing `what`, for the bus's reason `source`.
    pub fn bus(what: impl Into<String>, source: zbus::Error) -> Self {
        Self {
            what: what.into(),
            source: Some(source),
        }
    }
}

impl From<String> for Lost {
    fn from(what: String) -> Self {
        Self { what, source: None }
    }
}

impl From<&str> for Lost {
    fn from(what: &str) -> Self {
        what.to_string().into()
    }
}

impl RuntimeError {
    /// An [`RuntimeError::Io`] saying what was being done (`context`) and the error.
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
