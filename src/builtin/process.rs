//! One adapter for every component process roost starts from its own binary
//! (`<exe> <subcommand> --config <file> --state-dir <state>`): it writes the configuration,
//! says how the process runs, and reads its health from its report. What differs between the
//! recorder, the curator and the connector is a [`Process`] description.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use super::{Builtin, BuiltinError, Configured};
use crate::component::{ConfigFile, ReportFile};
use crate::observe::{BuiltinHealth, BuiltinReport, ComponentRun};
use crate::sandbox::Confinement;
use crate::spec::{Deployment, RestartPolicy};

/// How one component process runs, and what its report means.
pub trait Process: Send + 'static {
    /// Its component name in status.json.
    const NAME: &'static str;
    /// roost's subcommand that runs it.
    const SUBCOMMAND: &'static str;
    /// The configuration roost writes for it.
    type Config: ConfigFile;
    /// The report it writes back.
    type Report: ReportFile;

    /// Its configuration for `d`; `None` when the deployment does not ask for it.
    fn config(d: &Deployment, state_dir: &Path) -> Option<Self::Config>;
    /// Its restart policy, its stop timeout, and what it may touch.
    fn how(
        config: &Self::Config,
        d: &Deployment,
        state_dir: &Path,
    ) -> (RestartPolicy, Duration, Confinement);
    /// The process that wrote `report` (output left by an earlier instance is not its own).
    fn pid(report: &Self::Report) -> u32;
    /// What its own report says at `now`.
    fn judge(report: &Self::Report, now: Timestamp) -> BuiltinReport;
    /// Its health while its instance has not reported.
    fn silent() -> BuiltinHealth;
    /// What else it needs once its configuration is written (the recorder's storage folder).
    fn prepare_more(_config: &Self::Config, _state_dir: &Path) {}
    /// The desired state moved from `previous` to `next` (see [`Builtin::desired_changed`]).
    fn desired_changed(_state_dir: &Path, _prev: &Deployment, _next: &Deployment, _now: Timestamp) {
    }
}

/// The built-in of process `P` of a roost running `exe` with its state in `state_dir`.
pub struct Adapter<P: Process> {
    exe: PathBuf,
    state_dir: PathBuf,
    process: PhantomData<fn() -> P>,
}

impl<P: Process> Adapter<P> {
    /// The process started as `<exe> <P::SUBCOMMAND>`, its files in `state_dir`.
    pub fn new(exe: &Path, state_dir: &Path) -> Self {
        Self {
            exe: exe.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            process: PhantomData,
        }
    }

    fn configured(&self) -> Configured<'_> {
        Configured {
            component: P::NAME,
            subcommand: P::SUBCOMMAND,
            exe: &self.exe,
            state_dir: &self.state_dir,
            config_path: P::Config::path(&self.state_dir),
        }
    }
}

impl<P: Process> Builtin for Adapter<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn run(&self, d: &Deployment) -> Option<ComponentRun> {
        let config = P::config(d, &self.state_dir)?;
        let (restart, stop, confinement) = P::how(&config, d, &self.state_dir);
        Some(
            self.configured()
                .run(d, &config, restart, stop, confinement),
        )
    }

    fn prepare(&self, d: &Deployment) -> Result<(), BuiltinError> {
        let Some(config) = P::config(d, &self.state_dir) else {
            return Ok(());
        };
        self.configured().prepared(config.write(&self.state_dir))?;
        P::prepare_more(&config, &self.state_dir);
        Ok(())
    }

    fn health(&self, pid: Option<u32>, now: Timestamp) -> BuiltinHealth {
        match P::Report::read(&self.state_dir).filter(|r| Some(P::pid(r)) == pid) {
            Some(report) => BuiltinHealth::Reported(P::judge(&report, now)),
            None => P::silent(),
        }
    }

    fn desired_changed(&self, previous: &Deployment, next: &Deployment, now: Timestamp) {
        P::desired_changed(&self.state_dir, previous, next, now);
    }

    fn output_file(&self) -> Option<PathBuf> {
        Some(P::Report::path(&self.state_dir))
    }
}
