//! The status document other tools read (`<state-dir>/status.json`) and its writer. Field names
//! are a contract: extend, never rename. The writer replaces the file whole (temp file, fsync,
//! rename) and only when something other than `updatedAt` changed.

use std::path::Path;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::errors::ErrorCode;

/// Where a deployment is on its way to the desired state (`phase` in status.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// A new desired state was accepted and is being applied.
    InProgress,
    /// Components are being started.
    Provisioning,
    /// Every component started and is running (or completed as its policy allows).
    Succeeded,
    /// Provisioning hit an error.
    FailedToStart,
    /// A stop was requested and some component could not be stopped.
    PartiallyDeprovisioned,
    /// `state: stopped` and every component is stopped.
    Stopped,
}

/// The one-word summary of a deployment (`status`): never greener than the components' output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OverallStatus {
    /// Every component runs (or completed) and none reports a fault.
    Running,
    /// Being applied, or components waiting to start.
    Pending,
    /// Some component is in error, or the deployment failed to start.
    Error,
    /// The runtime cannot be reached: what was last known is shown.
    Unknown,
    /// `state: stopped` and nothing runs, or roost stopped.
    Stopped,
}

/// The state of one component (`components[].status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ComponentState {
    /// Its process runs the current spec.
    Running,
    /// Starting, waiting for a dependency or a back-off, or being stopped.
    Pending,
    /// Failed, crash-looping, or its output shows a fault.
    Error,
    /// Not running, as intended (completed, stopped by roost or an operator).
    Stopped,
}

pub use crate::errors::Reason;

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One entry of `components` in status.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// The component's name from the file (or `recorder`).
    pub name: String,
    /// Its state.
    pub status: ComponentState,
    /// Why it is not Running: CrashLoopBackOff, ExecutableNotFound, DependencyFailed, Completed, ...
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub reason: Option<Reason>,
    /// Restarts since roost first started it under this spec (roost's and the runtime's own).
    #[serde(default)]
    pub restart_count: u32,
    /// Last exit status (128 + signal for a death by signal).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Its main process, while it runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// When it entered its current status.
    #[serde(default)]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub since: Option<Timestamp>,
    /// What the component produced: its output type (the recorder's `RecorderOutput`, the
    /// curator's `CuratorReport`, the connector's `ConnectReport`; see the schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// The deployment it belongs to, in the device's summary of `roost run --dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

impl ComponentStatus {
    /// Its output read as `T`; `None` when it has none or not of that shape.
    pub fn output_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        T::deserialize(self.output.as_ref()?).ok()
    }
}

/// What the last apply did: shown in status.json as `lastApply`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyCounts {
    /// Actions tried (starts, restarts, stops, removals).
    pub tried: u32,
    /// Of those, the ones that failed (their errors are in `errors` and the components).
    pub failed: u32,
}

/// One entry of `errors` in status.json: a catalogue code, what happened, what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEntry {
    /// The catalogue code (`DEP_E161` ...); `roost explain CODE` describes it.
    pub code: String,
    /// The component it concerns, if any.
    #[serde(default)]
    pub component: Option<String>,
    /// What happened, in words.
    pub message: String,
    /// The recommended action (the catalogue's).
    pub action: String,
    /// The deployment it concerns, in the device's summary of `roost run --dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

impl ErrorEntry {
    /// An entry for `code` about `component`, with the catalogue's action as it applies on
    /// the device ([`crate::errors::action_on_device`]).
    pub fn new(code: &ErrorCode, component: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            code: code.code.to_string(),
            component: component.map(str::to_string),
            message: message.into(),
            action: crate::errors::action_on_device(code).to_string(),
            deployment: None,
        }
    }
}

/// Why the newest desired-state file was refused (`specError`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpecError {
    /// Always `DEP_E162`.
    pub code: String,
    /// What is wrong and what to do.
    pub message: String,
    /// The file that was read.
    pub file: String,
    /// 1-based line of the problem, when the parser knows it.
    #[serde(default)]
    pub line: Option<u64>,
    /// 1-based column of the problem, when the parser knows it.
    #[serde(default)]
    pub column: Option<u64>,
    /// Field path for errors found after parsing (e.g. `spec.components[1].dependsOn[0]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl From<&crate::spec::LoadError> for SpecError {
    fn from(e: &crate::spec::LoadError) -> Self {
        let (line, column) = e.position().unzip();
        Self {
            code: crate::errors::INVALID_SPEC.code.to_string(),
            message: e.to_string(),
            file: e.file().display().to_string(),
            line,
            column,
            field: e.field().map(str::to_string),
        }
    }
}

/// The roost process that wrote the document (`reconciler`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilerInfo {
    /// Its process id (`roost status` checks it still runs).
    pub pid: u32,
    /// Roost's version.
    pub version: String,
    /// `process` or `systemd`.
    pub runtime: String,
}

/// The status document other tools read (`<state-dir>/status.json`). Field names are a contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "roost DeploymentStatus")]
pub struct StatusDoc {
    /// `roost/v1`.
    pub api_version: String,
    /// `DeploymentStatus`.
    pub kind: String,
    /// Name of the deployment, once a valid desired state was seen.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Count of valid desired states accepted.
    pub generation: u64,
    /// The generation that `phase` and `components` reflect.
    pub observed_generation: u64,
    /// Where the deployment is on its way to the desired state.
    pub phase: Phase,
    /// The one-word summary.
    pub status: OverallStatus,
    /// Why the newest file was refused, while it is.
    #[serde(default)]
    pub spec_error: Option<SpecError>,
    /// Every component, built-ins first, then in start order.
    #[serde(default)]
    pub components: Vec<ComponentStatus>,
    /// Every error now, each with its code and action.
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
    /// What the last pass of applying a plan tried and how many of those actions failed
    /// (absent until roost first applied something).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply: Option<ApplyCounts>,
    /// The roost process that wrote it.
    pub reconciler: ReconcilerInfo,
    /// When it was built (UTC).
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub updated_at: Timestamp,
    /// The deployment file it was read from (each entry of `deployments`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// `roost run --dir`: one document per deployment of the folder, by name. The fields
    /// above are then the device's summary: phase and status of the worst deployment, every
    /// component and error (each with its `deployment`), generations summed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<StatusDoc>,
    /// `roost run --dir`: the components several deployments share (`shared: true`), each run
    /// once in the deployment `shared`, with its owner (whose restart policy it follows) and
    /// every deployment that declares it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<SharedComponent>,
    /// Desired state over the broker (spec.connect.desired): which version the broker asked
    /// for, which is applied and by what, the health gate, a revert or a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteStatus>,
}

/// `remote` in status.json, also published retained on `<topicPrefix>/<deviceId>/desired/report`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteStatus {
    /// The device's id (spec.connect.deviceId or from /etc/machine-id).
    pub device: String,
    /// Where the remote version stands: `waiting` (accepted, deferred until a file boundary
    /// or a window's end), `gating`, `passed`, `reverted`, `refused` (the newest message), or
    /// `none` (nothing from the broker yet).
    pub state: RemoteState,
    /// The newest version the broker asked for and the device accepted (absent: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_version: Option<u64>,
    /// The version whose files are in force (absent: files not from the broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_version: Option<u64>,
    /// What wrote the files in force: `remote` (that version) or `local` (a local edit since).
    pub applied_by: AppliedBy,
    /// The highest version accepted: a message must carry at least this one.
    pub highest_version: u64,
    /// Seconds left in the health gate, while `gating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_left_s: Option<u64>,
    /// The last version the health gate reverted, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted: Option<RemoteReverted>,
    /// The last message refused, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RemoteRefused>,
    /// The rollout that sent the newest version (`roost fleet rollout`'s id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// spec.connect.labels.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `remote.state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RemoteState {
    /// Nothing from the broker yet.
    #[default]
    None,
    /// Accepted, waiting for a file boundary or a window's end.
    Waiting,
    /// Applied; the health gate is watching.
    Gating,
    /// Through the health gate.
    Passed,
    /// Made the device worse: the files before it are back.
    Reverted,
    /// The newest message was refused (DEP_E801..DEP_E809); nothing of it applied.
    Refused,
}

/// `remote.appliedBy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AppliedBy {
    /// The files in force are not the broker's: a local edit (or none came yet).
    #[default]
    Local,
    /// The files in force are `appliedVersion`'s.
    Remote,
}

/// `remote.reverted`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteReverted {
    /// The version taken back.
    pub version: u64,
    /// The codes that made the device worse (DEP_E807 is the revert's own).
    pub codes: Vec<String>,
    /// What happened, for people.
    pub reason: String,
}

/// `remote.refused`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteRefused {
    /// The message's version, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// DEP_E801..DEP_E809.
    pub code: String,
    /// Why, naming the key, device, file, line and column.
    pub reason: String,
    /// The deployment file's error, when the file did not validate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_error: Option<SpecError>,
}

/// One entry of `shared` in the device's status.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedComponent {
    /// The component's name.
    pub name: String,
    /// The deployment that declared it first (its restart policy applies).
    pub owner: String,
    /// Every deployment that declares it, the owner first.
    pub users: Vec<String>,
}

impl StatusDoc {
    /// The component named `name` (`recorder`, `curator`), if the document has it.
    pub fn component(&self, name: &str) -> Option<&ComponentStatus> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The output of the component named `name` (its report), if it has one.
    pub fn output_of(&self, name: &str) -> Option<&serde_json::Value> {
        self.component(name).and_then(|c| c.output.as_ref())
    }

    /// The output of the component named `name` read as its type (`RecorderOutput`,
    /// `CuratorReport`, `ConnectReport`); `None` when it has none or not of that shape.
    pub fn output_as<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        self.component(name)?.output_as()
    }

    /// Whether two documents say the same thing, `updatedAt` aside, and each component's
    /// output's own `updatedAt` too: a report rewritten only to say it is alive (the
    /// connector's minute) is no news, and rewriting status.json on the card for it would
    /// follow every heartbeat of every component.
    pub fn same_content(&self, other: &Self) -> bool {
        let strip = |d: &Self| {
            let mut d = d.clone();
            d.updated_at = Timestamp::UNIX_EPOCH;
            for c in &mut d.components {
                if let Some(serde_json::Value::Object(o)) = c.output.as_mut() {
                    o.remove("updatedAt");
                }
            }
            d
        };
        strip(self) == strip(other)
    }

    /// Exit code of `roost status`: 0 healthy, 3 stopped or not started, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match (self.phase, self.status) {
            // A file that was pushed and refused: the pusher must learn it, whatever runs.
            _ if self.spec_error.is_some() => 1,
            (Phase::Succeeded, OverallStatus::Running) => 0,
            (_, OverallStatus::Stopped) | (Phase::Stopped, _) => 3,
            _ => 1,
        }
    }
}

/// Everything a status document is built from: the loop's state at one moment.
#[derive(Clone, Debug)]
pub struct StatusInputs<'a> {
    /// The deployment's name, once a valid desired state was seen.
    pub deployment: Option<String>,
    /// Count of valid desired states accepted.
    pub generation: u64,
    /// The generation the plan reflects.
    pub observed_generation: u64,
    /// The refusal of the newest file, if it was refused.
    pub spec_error: Option<&'a SpecError>,
    /// Why the runtime cannot be reached, if it cannot (status Unknown).
    pub runtime_error: Option<&'a str>,
    /// The plan's phase, components and errors; `None` when nothing could be planned.
    pub planned: Option<(Phase, &'a [ComponentStatus], &'a [ErrorEntry])>,
    /// The document published before, shown (as Unknown) while the runtime is unreachable.
    pub last: Option<&'a StatusDoc>,
    /// Whether a desired state is in force.
    pub has_desired: bool,
    /// What the last apply tried and how much failed.
    pub last_apply: Option<ApplyCounts>,
    /// `process` or `systemd`.
    pub runtime: &'static str,
    /// `updatedAt`.
    pub now: Timestamp,
}

impl StatusDoc {
    /// Builds the document: the status is never greener than the components' output, and a
    /// runtime that cannot be reached makes it Unknown.
    pub fn build(i: StatusInputs<'_>) -> Self {
        let mut errors: Vec<ErrorEntry> = Vec::new();
        if let Some(e) = i.spec_error {
            errors.push(ErrorEntry::new(
                &crate::errors::INVALID_SPEC,
                None,
                e.message.clone(),
            ));
        }
        if let Some(reason) = i.runtime_error {
            errors.push(ErrorEntry::new(
                &crate::errors::RUNTIME_UNREACHABLE,
                None,
                reason,
            ));
        }
        let (phase, components) = match i.planned {
            Some((phase, components, plan_errors)) => {
                errors.extend(plan_errors.iter().cloned());
                (phase, components.to_vec())
            }
            None => match i.last {
                // Runtime unreachable: keep showing what was last known, marked Unknown below.
                Some(last) if i.has_desired => (last.phase, last.components.clone()),
                _ => (Phase::FailedToStart, Vec::new()),
            },
        };
        let mut status = overall(phase, &components, i.runtime_error.is_some());
        if status == OverallStatus::Running && held_by_error(&errors) {
            // A deployment whose dependency is in error is in error itself (DEP_E156), even
            // while its own components run.
            status = OverallStatus::Error;
        }
        StatusDoc {
            api_version: crate::spec::API_VERSION.to_string(),
            kind: "DeploymentStatus".to_string(),
            deployment: i.deployment,
            generation: i.generation,
            observed_generation: i.observed_generation,
            phase,
            status,
            spec_error: i.spec_error.cloned(),
            components,
            errors,
            last_apply: i.last_apply,
            reconciler: ReconcilerInfo {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                runtime: i.runtime.to_string(),
            },
            updated_at: i.now,
            file: None,
            deployments: Vec::new(),
            shared: Vec::new(),
            remote: None,
        }
    }

    /// The last document of a roost that stopped: every component it stopped is Stopped
    /// (`ReconcilerStopped`), each in `stop_failed` (name -> why) is in error. `last_output`
    /// gives a component's last output (the recorder's report written as it exited).
    pub fn after_shutdown(
        mut self,
        stop_failed: &std::collections::BTreeMap<String, String>,
        last_output: impl Fn(&ComponentStatus) -> Option<serde_json::Value>,
    ) -> Self {
        let at = self.updated_at;
        for c in &mut self.components {
            if let Some(reason) = stop_failed.get(&c.name) {
                c.status = ComponentState::Error;
                c.reason = Some(Reason::StopFailed);
                self.errors.push(ErrorEntry::new(
                    &crate::errors::RUNTIME_UNREACHABLE,
                    Some(&c.name),
                    reason.clone(),
                ));
                continue;
            }
            if let Some(output) = last_output(c) {
                c.output = Some(output);
            }
            c.status = ComponentState::Stopped;
            c.reason = Some(Reason::ReconcilerStopped);
            c.pid = None;
            c.since = Some(at);
        }
        (self.phase, self.status) = if stop_failed.is_empty() {
            (Phase::Stopped, OverallStatus::Stopped)
        } else {
            (Phase::PartiallyDeprovisioned, OverallStatus::Error)
        };
        self
    }
}

/// An error judged from output after provisioning (a built-in's) keeps the phase Succeeded;
/// the status must still not be greener than the output.
/// Whether `errors` hold a dependency in error at the deployment's level (no component):
/// `roost run --dir`'s DEP_E156.
pub fn held_by_error(errors: &[ErrorEntry]) -> bool {
    (errors.iter())
        .any(|e| e.component.is_none() && e.code == crate::errors::DEPENDENCY_FAILED.code)
}

fn overall(phase: Phase, components: &[ComponentStatus], unreachable: bool) -> OverallStatus {
    let in_error = components.iter().any(|c| c.status == ComponentState::Error);
    match phase {
        _ if unreachable => OverallStatus::Unknown,
        Phase::Succeeded if in_error => OverallStatus::Error,
        Phase::Succeeded => OverallStatus::Running,
        Phase::Stopped => OverallStatus::Stopped,
        Phase::FailedToStart | Phase::PartiallyDeprovisioned => OverallStatus::Error,
        Phase::InProgress | Phase::Provisioning => OverallStatus::Pending,
    }
}

/// Why status.json cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The file cannot be written.
    #[error("cannot write status file {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read status file {path} (is `roost run` running with this state folder?)")]
    /// The file cannot be read.
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a status document.
    #[error("status file {path} is not a roost status document")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `doc` to `path` whole or not at all (temp file, rename; not fsynced: a derived file
/// rewritten on every change, so a power cut may lose the newest version, never tear it).
pub fn write(path: &Path, doc: &StatusDoc) -> Result<(), StatusError> {
    // Every reader (the page, the broker, other users of the group) sees it: no credential a
    // component printed or a start error quoted goes in.
    write_redacted(path, &crate::redact::typed(doc))
}

/// [`write`] of a document already passed through [`crate::redact::typed`] (the device's
/// document under `roost run --dir`, made of parts each redacted once when it arrived).
pub fn write_redacted(path: &Path, doc: &StatusDoc) -> Result<(), StatusError> {
    let mut bytes = serde_json::to_vec_pretty(doc).expect("status serializes");
    bytes.push(b'\n');
    crate::fsutil::replace_quietly(path, &bytes).map_err(|source| StatusError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a status document.
pub fn read(path: &Path) -> Result<StatusDoc, StatusError> {
    let bytes = std::fs::read(path).map_err(|source| StatusError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StatusError::Parse {
        path: path.display().to_string(),
        source,
    })
}
