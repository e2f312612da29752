//! The desired state: the types of `deployment.yaml` (serde + schemars), their validation, and
//! loading a file with errors that point at the line and column or the field. This module never
//! touches a runtime; it only says what is wanted.

pub mod connect;
pub mod curate;
mod duration;
mod load;
mod names;
pub mod order;
pub mod power;
pub mod recorder;
mod slips;

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use duration::{DurationParseError, HumanDuration};
pub use load::{LoadError, MAX_FILE_BYTES, load_file, parse_str};
pub use names::{
    AbsolutePath, Command, ComponentName, DeploymentName, DetectorName, EnvName, Latitude,
    Longitude, UserName,
};
pub use recorder::{RecorderSpec, StorageSpec};

/// The only accepted `apiVersion`.
pub const API_VERSION: &str = "roost/v1";

/// The format version a deployment file declares in `apiVersion`; only `roost/v1` exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    /// `roost/v1`, the current format.
    #[serde(rename = "roost/v1")]
    V1,
}

/// What a file describes, from its `kind`; roost reads only `Deployment` files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    /// The desired state of one field device.
    Deployment,
}

/// A whole `deployment.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    title = "roost Deployment",
    description = "Desired state of a roost field device."
)]
pub struct Deployment {
    /// Format version of the file: `roost/v1`.
    pub api_version: ApiVersion,
    /// What the file describes: `Deployment`.
    pub kind: Kind,
    /// Identifies the deployment (its `name`).
    pub metadata: Metadata,
    /// What runs on the device and how.
    pub spec: DeploymentSpec,
}

/// The `metadata` of a deployment: how the deployment is named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Lower-case letters, digits and '-', 1-63 characters.
    pub name: DeploymentName,
}

/// Whether the deployment's components should run (`spec.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Every component runs (the default).
    #[default]
    Running,
    /// Every component is stopped and none is started; roost keeps watching the file.
    Stopped,
}

/// What roost does when a component's program exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    /// Restart after every exit.
    #[default]
    Always,
    /// Restart after a non-zero exit or a death by signal; exit 0 ends as Completed.
    OnFailure,
    /// Never restart.
    Never,
}

/// Where the device stands, in decimal degrees.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Location {
    /// Degrees north of the equator (south is negative), -90 to 90.
    pub latitude: Latitude,
    /// Degrees east of Greenwich (west is negative), -180 to 180.
    pub longitude: Longitude,
}

/// Exponential back-off between restarts of a component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Backoff {
    /// Delay before the first restart; doubles after each quick failure.
    pub initial: HumanDuration,
    /// Longest delay.
    pub max: HumanDuration,
    /// A run at least this long resets the delay to `initial`.
    pub reset_after: HumanDuration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: HumanDuration::from_secs(1),
            max: HumanDuration::from_secs(300),
            reset_after: HumanDuration::from_secs(600),
        }
    }
}

/// The `spec` of a deployment: its components, the recorder, and how they are restarted.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentSpec {
    /// `running` (the default) runs the components; `stopped` stops them all.
    #[serde(default)]
    pub state: RunState,
    /// Where the device stands; needed for sunrise and sunset windows, and stored in metadata.db.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Default restart policy of the components.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Delays between restarts of a component that keeps exiting.
    #[serde(default)]
    pub backoff: Backoff,
    /// Programs roost runs and supervises besides the recorder.
    #[serde(default)]
    pub components: Vec<ComponentSpec>,
    /// Where recordings and metadata.db live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// The audio recorder, run as component `recorder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorder: Option<RecorderSpec>,
    /// Where status, heartbeats and messages go when the device is connected (component
    /// `connect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<connect::ConnectSpec>,
    /// Detectors that look at every new recording once, in order (component `curator`,
    /// `roost curate`); their findings go into metadata.db and, when connected, out as messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<curate::DetectorSpec>,
    /// The read-only field page (component `page`, `roost serve`); off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<PageSpec>,
    /// Power and heat: where they are read, when they warn, and the energy policy (what pauses
    /// when power runs short). Unset: read from `/sys` with the default limits, nothing pauses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<power::PowerSpec>,
    /// Other deployments of this device (`roost run --dir`) that must be Succeeded and healthy
    /// before this one's components start; while one of them is in error this one shows
    /// DEP_E156. Under `--file` a named deployment is never found (DEP_E157).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<DeploymentName>,
    /// Values this deployment offers the deployments that depend on it: each of their
    /// components gets `<DEPLOYMENT>_<NAME>` (upper case, `-` as `_`) in its environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exports: BTreeMap<EnvName, String>,
}

impl DeploymentSpec {
    /// Whether the curator runs: detectors, keep rules or retention are set (and a recorder).
    pub fn curates(&self) -> bool {
        self.recorder.is_some()
            && (!self.detectors.is_empty() || self.storage.as_ref().is_some_and(|s| s.curates()))
    }
}

/// `spec.page`: the read-only field page served on the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PageSpec {
    /// Address and port to listen on. Default `127.0.0.1:8080`: nothing leaves the device until
    /// the deployment names an interface. For a phone on the device's hotspot, the hotspot's
    /// own address (NetworkManager's default is `10.42.0.1:8080`) together with `passwordFile`;
    /// `0.0.0.0:8080` is every network the device is on.
    #[serde(default = "default_listen")]
    pub listen: ListenAddress,
    /// A file whose first line is the page's password, readable by the user the page runs as
    /// (`chown root:roost FILE && chmod 0640 FILE`); the browser asks for it (HTTP Basic, any
    /// user name). Without it anyone who reaches `listen` sees the page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<AbsolutePath>,
}

/// `spec.page.listen` when unset: this device only.
pub const DEFAULT_PAGE_LISTEN: &str = "127.0.0.1:8080";

fn default_listen() -> ListenAddress {
    ListenAddress(DEFAULT_PAGE_LISTEN.parse().expect("a valid address"))
}

/// A socket address to listen on: `IP:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct ListenAddress(std::net::SocketAddr);

impl TryFrom<String> for ListenAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
            .map(Self)
            .map_err(|_| format!("invalid listen address {s:?}: write IP:port, e.g. 0.0.0.0:8080"))
    }
}
impl From<ListenAddress> for String {
    fn from(a: ListenAddress) -> String {
        a.0.to_string()
    }
}
impl ListenAddress {
    /// The address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.0
    }
}

fn default_stop_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// A program roost runs and supervises: one entry of `spec.components`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentSpec {
    /// Unique name of the component; part of its unit name and log file name.
    pub name: ComponentName,
    /// Program and arguments; no shell is involved unless you call one.
    pub command: Command,
    /// Environment variables set for the program.
    #[serde(default)]
    pub env: BTreeMap<EnvName, String>,
    /// Absolute folder the program starts in; without it, the runtime's default (roost's own
    /// working folder under the process runtime, systemd's under systemd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<AbsolutePath>,
    /// Overrides `spec.restartPolicy` for this component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Components that must be running (or have completed) before this one starts.
    #[serde(default)]
    pub depends_on: Vec<ComponentName>,
    /// Time between SIGTERM and SIGKILL when stopping.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: HumanDuration,
    /// The user it runs as (it must exist); without it, roost's own user (root when roost runs
    /// as a system service: a program of the file may need the device's hardware or clock, so
    /// nothing is taken from it unless the file says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserName>,
    /// Opt in to the built-ins' sandbox: everything read-only but `writablePaths`, no `/home`,
    /// its own `/tmp`, no new privileges, no network unless `network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSpec>,
    /// `roost run --dir`: declared with the same name and the same spec by several deployments
    /// of the device, it runs once, under the restart policy of the deployment that declared
    /// it first. Without `--dir` it has no effect.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// `sandbox:` of a component.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSpec {
    /// Folders it may write (they must exist and be writable by its user: roost never changes
    /// their owner); everything else is read-only to it.
    #[serde(default)]
    pub writable_paths: Vec<AbsolutePath>,
    /// It may use IPv4/IPv6 (default: no network at all).
    #[serde(default)]
    pub network: bool,
    /// It may open the sound devices (`/dev/snd`, group `audio`).
    #[serde(default)]
    pub audio: bool,
}

/// A problem found after parsing, located by its field path (e.g. `spec.components[1].dependsOn[0]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldIssue {
    /// Field path of the problem, e.g. `spec.components[1].dependsOn[0]`.
    pub field: String,
    /// What is wrong and what to do about it, in one line.
    pub message: String,
}

impl FieldIssue {
    /// A problem with `field` (a field path) described by `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Values that one runtime cannot give a component exactly as the other would: refused when
/// the file is loaded, so that a file means the same under both runtimes and never fails only
/// at start time. (Everything else, newlines and control characters included, is escaped for
/// systemd by `runtime::systemd::unit`.)
fn runtime_parity_issues(i: usize, c: &ComponentSpec) -> Vec<FieldIssue> {
    let mut issues = Vec::new();
    let program = c.command.program();
    if program.starts_with(['-', '@', ':', '+', '!', '|']) {
        issues.push(FieldIssue::new(
            format!("spec.components[{i}].command[0]"),
            format!("program {program:?} starts with {:?}, which systemd reads as an ExecStart prefix; give an absolute path", &program[..1]),
        ));
    } else if program.split('/').any(|part| part == "..") {
        issues.push(FieldIssue::new(
            format!("spec.components[{i}].command[0]"),
            format!("program {program:?} holds a \"..\" component, which systemd refuses; give the path without it"),
        ));
    } else if program.contains('/') && !program.starts_with('/') {
        issues.push(FieldIssue::new(
            format!("spec.components[{i}].command[0]"),
            format!("program {program:?} is a relative path; give an absolute path (or a bare name found on PATH)"),
        ));
    }
    for (key, value) in &c.env {
        if value.contains('\0') {
            issues.push(FieldIssue::new(
                format!("spec.components[{i}].env.{}", key.as_str()),
                "the value contains a NUL character, which no process environment can hold",
            ));
        }
    }
    if let Some(dir) = &c.working_dir {
        let text = dir.as_path().to_string_lossy();
        if text.chars().any(char::is_control)
            || text.ends_with(|c: char| c.is_whitespace() || c == '\\')
            || text.split('/').any(|part| part == "..")
        {
            issues.push(FieldIssue::new(
                format!("spec.components[{i}].workingDir"),
                format!("{text:?} holds a control character or a \"..\" component, or ends with a blank or a backslash, which systemd's WorkingDirectory= cannot express; give the folder another name"),
            ));
        }
    }
    issues
}

impl Deployment {
    /// Cross-field checks that the types alone cannot express.
    pub fn validate(&self) -> Vec<FieldIssue> {
        let mut issues = Vec::new();
        let spec = &self.spec;
        if let Some(p) = &spec.power {
            issues.extend(p.validate());
        }
        if spec.backoff.initial > spec.backoff.max {
            issues.push(FieldIssue::new(
                "spec.backoff.initial",
                format!(
                    "initial ({}) is longer than max ({}); make initial <= max",
                    spec.backoff.initial, spec.backoff.max
                ),
            ));
        }
        let mut seen = BTreeMap::new();
        for (i, c) in spec.components.iter().enumerate() {
            if let Some(first) = seen.insert(c.name.as_str(), i) {
                issues.push(FieldIssue::new(
                    format!("spec.components[{i}].name"),
                    format!("duplicate component name {:?} (also spec.components[{first}]); names must be unique", c.name.as_str()),
                ));
            }
            if spec.page.is_some() && c.name.as_str() == "page" {
                issues.push(FieldIssue::new(
                    format!("spec.components[{i}].name"),
                    "the name \"page\" is reserved for spec.page; rename this component",
                ));
            }
            if spec.connect.is_some() && c.name.as_str() == "connect" {
                issues.push(FieldIssue::new(
                    format!("spec.components[{i}].name"),
                    "the name \"connect\" is reserved for spec.connect; rename this component",
                ));
            }
            if c.name.as_str() == curate::CURATOR_COMPONENT && spec.curates() {
                issues.push(FieldIssue::new(
                    format!("spec.components[{i}].name"),
                    "the name \"curator\" is reserved for detectors and keep rules; rename this component",
                ));
            }
            if spec.recorder.is_some() && c.name.as_str() == recorder::RECORDER_COMPONENT {
                issues.push(FieldIssue::new(
                    format!("spec.components[{i}].name"),
                    "the name \"recorder\" is reserved for spec.recorder; rename this component",
                ));
            }
        }
        for (i, c) in spec.components.iter().enumerate() {
            issues.extend(runtime_parity_issues(i, c));
        }
        let known: BTreeSet<&str> = self.component_names().collect();
        for (i, c) in spec.components.iter().enumerate() {
            for (j, dep) in c.depends_on.iter().enumerate() {
                if !known.contains(dep.as_str()) {
                    let hint = closest(dep.as_str(), known.iter().copied())
                        .map(|n| format!(" (did you mean {n:?}?)"))
                        .unwrap_or_default();
                    issues.push(FieldIssue::new(
                        format!("spec.components[{i}].dependsOn[{j}]"),
                        format!("unknown component {:?}{hint}; dependsOn must name components of this file", dep.as_str()),
                    ));
                } else if dep == &c.name {
                    issues.push(FieldIssue::new(
                        format!("spec.components[{i}].dependsOn[{j}]"),
                        "a component cannot depend on itself",
                    ));
                }
            }
        }
        if issues.is_empty()
            && let Err(cycle) = order::start_order(&spec.components)
        {
            issues.push(FieldIssue::new(
                "spec.components",
                format!(
                    "dependsOn forms a cycle: {}; remove one of these dependencies",
                    cycle.join(" -> ")
                ),
            ));
        }
        if let Some(rec) = &spec.recorder {
            issues.extend(rec.validate(spec.location.as_ref(), spec.storage.as_ref()));
        }
        if let Some(connect) = &spec.connect {
            issues.extend(connect.validate());
        }
        issues.extend(curate::validate_detectors(&spec.detectors));
        if let Some(storage) = &spec.storage {
            issues.extend(curate::validate_keep(
                &storage.keep,
                spec.location.is_some(),
            ));
        }
        issues.extend(self.binding_issues());
        if spec.recorder.is_none()
            && (!spec.detectors.is_empty() || spec.storage.as_ref().is_some_and(|s| s.curates()))
        {
            issues.push(FieldIssue::new(
                "spec.detectors",
                "detectors and keep rules look at the recorder's recordings; add spec.recorder",
            ));
        }
        issues
    }

    /// `spec.dependsOn` and `spec.exports`: no dependency on itself or twice, no value a
    /// process environment cannot hold.
    fn binding_issues(&self) -> Vec<FieldIssue> {
        let mut issues = Vec::new();
        let mut seen = BTreeSet::new();
        for (j, dep) in self.spec.depends_on.iter().enumerate() {
            if dep == self.name() {
                issues.push(FieldIssue::new(
                    format!("spec.dependsOn[{j}]"),
                    "a deployment cannot depend on itself",
                ));
            } else if !seen.insert(dep) {
                issues.push(FieldIssue::new(
                    format!("spec.dependsOn[{j}]"),
                    format!(
                        "{:?} is named twice; name each deployment once",
                        dep.as_str()
                    ),
                ));
            }
        }
        for (key, value) in &self.spec.exports {
            if value.contains('\0') {
                issues.push(FieldIssue::new(
                    format!("spec.exports.{}", key.as_str()),
                    "the value contains a NUL character, which no process environment can hold",
                ));
            }
        }
        issues
    }

    /// The environment variables this deployment's exports give its dependents' components:
    /// `<DEPLOYMENT>_<NAME>` (upper case, `-` as `_`) -> value.
    pub fn exported_env(&self) -> BTreeMap<String, String> {
        let prefix = self.name().as_str().to_ascii_uppercase().replace('-', "_");
        (self.spec.exports.iter())
            .map(|(k, v)| {
                (
                    format!("{prefix}_{}", k.as_str().to_ascii_uppercase()),
                    v.clone(),
                )
            })
            .collect()
    }

    /// The deployment's name from `metadata.name`.
    pub fn name(&self) -> &DeploymentName {
        &self.metadata.name
    }

    /// Names of every component roost runs, the recorder included.
    pub fn component_names(&self) -> impl Iterator<Item = &str> {
        self.spec
            .components
            .iter()
            .map(|c| c.name.as_str())
            .chain(
                self.spec
                    .recorder
                    .as_ref()
                    .map(|_| recorder::RECORDER_COMPONENT),
            )
            .chain(self.spec.connect.as_ref().map(|_| "connect"))
            .chain(self.spec.page.as_ref().map(|_| "page"))
    }
}

impl ComponentSpec {
    /// The component's own restart policy, else `default` (the deployment's `spec.restartPolicy`).
    pub fn effective_restart_policy(&self, default: RestartPolicy) -> RestartPolicy {
        self.restart_policy.unwrap_or(default)
    }
}

/// The known name nearest to `word`, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos_only() {
        let names = ["restartPolicy", "dependsOn", "command"];
        assert_eq!(
            closest("restartPolcy", names.iter().copied()),
            Some("restartPolicy")
        );
        assert_eq!(
            closest("dependson", names.iter().copied()),
            Some("dependsOn")
        );
        assert_eq!(closest("zzz", names.iter().copied()), None);
    }
}
