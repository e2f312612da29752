//! Components roost provides itself: the recorder now, detectors and publishers later. Each
//! says how it runs for a deployment, what it needs on disk before it starts, and how healthy
//! its running instance is, read from its output. A built-in never decides what the deployment
//! does about that: the planner receives the health as input and decides alone.
//!
//! A new built-in is a type implementing [`Builtin`], added to [`Builtins::standard`]; a new
//! component process of roost's own binary is a [`process::Process`] description and its
//! [`process::Adapter`].

pub mod connect;
pub mod curator;
pub mod page;
pub mod process;
pub mod recorder;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

pub use crate::observe::{BuiltinHealth, BuiltinReport, Trouble};

use crate::observe::{ComponentRun, Observation, ObservedState};
use crate::spec::Deployment;

/// A failure of a built-in's own housekeeping (never of the component it runs).
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    /// What it needs before it starts could not be written.
    #[error("cannot prepare the {component} component in {path}")]
    Prepare {
        /// The built-in's component name.
        component: &'static str,
        /// The file it tried to write.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A component roost provides itself.
pub trait Builtin: Send {
    /// Its component name in status.json (`recorder`).
    fn name(&self) -> &'static str;
    /// How it runs for `deployment`; `None` when the deployment does not ask for it.
    fn run(&self, deployment: &Deployment) -> Option<ComponentRun>;
    /// Writes what it needs on disk before it starts (its configuration).
    fn prepare(&self, deployment: &Deployment) -> Result<(), BuiltinError>;
    /// Its running instance's health at `now`, read from its output; `pid` is the instance the
    /// runtime observes, so that output left by an earlier instance is not taken for its own.
    fn health(&self, pid: Option<u32>, now: Timestamp) -> BuiltinHealth;
    /// The desired state moved from `previous` to `next`: wind up what `previous` left (the
    /// recorder marks its deployment ended in metadata.db when recording stops under its name).
    fn desired_changed(&self, _previous: &Deployment, _next: &Deployment, _now: Timestamp) {}
    /// A file whose changes mean its health may have changed (a trigger for the loop).
    fn output_file(&self) -> Option<PathBuf> {
        None
    }
}

/// `<exe> <subcommand> --config <config> --state-dir <state_dir>`: how roost starts a built-in
/// that reads a configuration roost wrote for it.
pub(crate) fn config_argv(
    exe: &Path,
    subcommand: &str,
    config: &Path,
    state_dir: &Path,
) -> Vec<String> {
    vec![
        exe.display().to_string(),
        subcommand.to_string(),
        "--config".to_string(),
        config.display().to_string(),
        "--state-dir".to_string(),
        state_dir.display().to_string(),
    ]
}

/// A built-in that runs as `<exe> <subcommand> --config <file> --state-dir <state>` from a
/// configuration file roost writes for it (recorder, curator, connect).
pub(crate) struct Configured<'a> {
    /// Its component name.
    pub component: &'static str,
    /// roost's subcommand that runs it.
    pub subcommand: &'static str,
    /// roost's binary.
    pub exe: &'a Path,
    /// The state folder.
    pub state_dir: &'a Path,
    /// Where its configuration is written.
    pub config_path: PathBuf,
}

impl Configured<'_> {
    /// Its run for `d` reading `config`, which goes into the spec hash: a changed configuration
    /// (or binary) restarts it.
    pub fn run(
        &self,
        d: &Deployment,
        config: &impl serde::Serialize,
        restart_policy: crate::spec::RestartPolicy,
        stop_timeout: std::time::Duration,
        confinement: crate::sandbox::Confinement,
    ) -> ComponentRun {
        let config_json = serde_json::to_string(config).expect("a built-in's config serializes");
        let hash_input = format!("{}\n{}", self.exe.display(), config_json);
        let argv = config_argv(self.exe, self.subcommand, &self.config_path, self.state_dir);
        own_run(
            self.component,
            d,
            argv,
            &hash_input,
            restart_policy,
            stop_timeout,
            confinement,
        )
    }

    /// The outcome of writing its configuration, an error naming the component and the file.
    pub fn prepared<T>(&self, written: std::io::Result<T>) -> Result<(), BuiltinError> {
        written.map(drop).map_err(|source| BuiltinError::Prepare {
            component: self.component,
            path: self.config_path.clone(),
            source,
        })
    }
}

/// The run of a built-in that is a subcommand of roost itself: `argv` (the binary first), its
/// spec hash made from `hash_input` (everything that, when it changes, must restart it).
pub(crate) fn own_run(
    name: &'static str,
    d: &Deployment,
    argv: Vec<String>,
    hash_input: &str,
    restart_policy: crate::spec::RestartPolicy,
    stop_timeout: std::time::Duration,
    confinement: crate::sandbox::Confinement,
) -> ComponentRun {
    // Who it runs as and what it may reach restart it when they change.
    let hash_input = format!("{hash_input}\n{confinement:?}");
    ComponentRun {
        deployment: d.metadata.name.to_string(),
        name: name.try_into().expect("a built-in's name is valid"),
        spec_hash: crate::plan::spec_hash(hash_input.as_bytes()),
        command: argv.try_into().expect("non-empty argv"),
        env: BTreeMap::new(),
        working_dir: None,
        restart_policy,
        backoff: d.spec.backoff,
        stop_timeout,
        confinement: Some(confinement),
    }
}

/// Every built-in roost knows, in start order (they start before the file's components).
pub struct Builtins(Vec<Box<dyn Builtin>>);

impl Builtins {
    /// The built-ins of a roost running `exe` with its state in `state_dir`.
    pub fn standard(exe: &Path, state_dir: &Path) -> Self {
        Self(vec![
            Box::new(recorder::Recorder::new(exe, state_dir)),
            Box::new(curator::Curator::new(exe, state_dir)),
            Box::new(connect::Connect::new(exe, state_dir)),
            Box::new(page::Page::new(exe, state_dir)),
        ])
    }

    /// A chosen set (tests).
    pub fn new(builtins: Vec<Box<dyn Builtin>>) -> Self {
        Self(builtins)
    }

    /// The runs `deployment` asks for.
    pub fn runs(&self, deployment: &Deployment) -> Vec<ComponentRun> {
        self.0.iter().filter_map(|b| b.run(deployment)).collect()
    }

    /// Prepares the built-in named `name`, if it is one (its configuration, then its folders
    /// handed to its user); nothing for other components.
    pub fn prepare(&self, name: &str, deployment: &Deployment) -> Result<(), BuiltinError> {
        let Some(b) = self.0.iter().find(|b| b.name() == name) else {
            return Ok(());
        };
        b.prepare(deployment)?;
        if let Some(c) = b.run(deployment).and_then(|r| r.confinement) {
            crate::sandbox::hand_over_writable(&c).map_err(|why| BuiltinError::Prepare {
                component: b.name(),
                path: c.writable.first().cloned().unwrap_or_default(),
                source: std::io::Error::other(why),
            })?;
        }
        Ok(())
    }

    /// The health of every built-in the runtime observes running, keyed by component name.
    pub fn health(
        &self,
        observed: &Observation,
        now: Timestamp,
    ) -> BTreeMap<String, BuiltinHealth> {
        self.0
            .iter()
            .filter_map(|b| match observed.get(b.name()).map(|o| &o.state) {
                Some(ObservedState::Running { pid, .. }) => {
                    Some((b.name().to_string(), b.health(*pid, now)))
                }
                _ => None,
            })
            .collect()
    }

    /// Tells every built-in that the desired state changed.
    pub fn desired_changed(&self, previous: &Deployment, next: &Deployment, now: Timestamp) {
        for b in &self.0 {
            b.desired_changed(previous, next, now);
        }
    }

    /// The files whose changes are triggers.
    pub fn output_files(&self) -> Vec<PathBuf> {
        self.0.iter().filter_map(|b| b.output_file()).collect()
    }

    /// Whether `deployment` runs a built-in judged by an output file (the recorder, say).
    pub fn any_reporting(&self, deployment: &Deployment) -> bool {
        (self.0.iter()).any(|b| b.output_file().is_some() && b.run(deployment).is_some())
    }
}
