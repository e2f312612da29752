//! The reconcile loop. It wakes on a trigger (file change, a built-in's output, runtime event,
//! its one wake-up time, SIGHUP), re-reads the desired state if needed (a bad file keeps the
//! last good one in force), observes the runtime and the built-ins' health, plans, applies the
//! plan and hands the status to the publishers when anything changed. It decides nothing
//! itself: `plan` does; it never waits on a publisher.

mod books;
mod publishing;
mod round;
mod triggers;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use triggers::{Triggers, of_deployment};

use crate::apply::ApplyCounts;
use crate::builtin::Builtins;
use crate::clock::{Clock, SystemClock};
use crate::desired::DesiredSource;
use crate::history::History;
use crate::plan::Desired;
use crate::plan::gate::Links;
use crate::publish::{Publishers, StatusFile};
use crate::runtime::Runtime;
use crate::sd_notify::Liveness;
use crate::spec::Deployment;
use crate::state_dir::StateDir;
use crate::status::{SpecError, StatusDoc};

/// Upper bound of observe -> plan -> apply passes per trigger (a chain of dependsOn needs one
/// pass per level); a pass in which every action failed ends the round early.
const MAX_PASSES: usize = 64;
/// How soon to look again when actions keep failing: soon, but never a spin.
const RETRY_FAILED_ACTIONS: Duration = Duration::from_secs(1);

/// Where roost's loop finds its file, its state and itself.
#[derive(Clone, Debug)]
pub struct Config {
    /// The desired-state file (`deployment.yaml`).
    pub file: PathBuf,
    /// The state folder (status.json, history.json, the recorder's files).
    pub state_dir: PathBuf,
    /// The roost binary, which built-ins run (`roost record`).
    pub exe: PathBuf,
}

/// Why the loop cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The state folder cannot be created.
    #[error("cannot create state folder {path}")]
    StateDir {
        /// The folder.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file's folders cannot be watched.
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    /// SIGHUP cannot be caught.
    #[error("cannot install signal handler")]
    Signal(#[source] std::io::Error),
}

/// The loop's state between turns.
pub struct Reconciler<R: Runtime> {
    state: StateDir,
    /// The in-process link with the desired state over the broker (set by [`run_linked`]).
    remote: Option<crate::publish::RemoteLink>,
    /// Where components run.
    pub runtime: R,
    builtins: Builtins,
    clock: Arc<dyn Clock>,
    liveness: Liveness,
    source: DesiredSource,
    desired: Option<(Deployment, Desired)>,
    /// The device's word on this deployment (`roost run --dir`; default for a single file).
    links: Links,
    generation: u64,
    observed_generation: u64,
    spec_error: Option<SpecError>,
    history: History,
    stop_failures: BTreeMap<String, String>,
    runtime_error: Option<String>,
    runtime_retry: u32,
    last_status: Option<StatusDoc>,
    /// Where each new status document goes (status.json, later MQTT, HTTP ...).
    publishers: Publishers,
    last_apply: Option<ApplyCounts>,
    next_wake: Option<Instant>,
    /// Every document published, kept in memory when asked for (tests).
    status_log: Option<Arc<std::sync::Mutex<Vec<StatusDoc>>>>,
    /// Every new document also goes to the device's coordinator (`roost run --dir`).
    forward: Option<tokio::sync::mpsc::UnboundedSender<StatusDoc>>,
}

impl<R: Runtime> Reconciler<R> {
    /// The loop of roost as it runs: the standard built-ins, the system clock, status.json.
    pub fn new(cfg: Config, runtime: R) -> Result<Self, ReconcileError> {
        let builtins = Builtins::standard(&cfg.exe, &cfg.state_dir);
        Self::with_parts(cfg, runtime, builtins, Arc::new(SystemClock))
    }

    /// The loop with chosen built-ins and clock (tests on tokio's paused clock).
    pub fn with_parts(
        cfg: Config,
        runtime: R,
        builtins: Builtins,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ReconcileError> {
        // The run-time folder is made before anything watches the reports in it.
        crate::fsutil::prepare_run_dir(&cfg.state_dir).map_err(|source| {
            ReconcileError::StateDir {
                path: cfg.state_dir.display().to_string(),
                source,
            }
        })?;
        // Made again by roost (root) after a reboot emptied /run: the built-ins write there,
        // including those the manager started at boot before roost (never prepared by it).
        if let Some(target) = crate::fsutil::run_target(&cfg.state_dir) {
            crate::sandbox::give_to_builtins(&target);
        }
        let state = StateDir::new(cfg.state_dir.clone());
        let history = History::load(&state.history());
        let status_file = StatusFile {
            path: state.status(),
        };
        Ok(Self {
            remote: None,
            generation: history.generation,
            observed_generation: 0,
            source: DesiredSource::new(cfg.file, state.last_good()),
            state,
            runtime,
            builtins,
            clock,
            liveness: Liveness::default(),
            desired: None,
            links: Links::default(),
            spec_error: None,
            history,
            stop_failures: BTreeMap::new(),
            runtime_error: None,
            runtime_retry: 0,
            last_status: None,
            publishers: Publishers::new(vec![Box::new(status_file)]),
            last_apply: None,
            next_wake: None,
            status_log: None,
            forward: None,
        })
    }

    /// A deployment of a folder (`roost run --dir`): `veto` refuses files that clash with the
    /// other deployments; every new status document also goes to `forward`.
    pub fn in_device(
        mut self,
        veto: crate::desired::Veto,
        forward: tokio::sync::mpsc::UnboundedSender<StatusDoc>,
    ) -> Self {
        let source = std::mem::replace(
            &mut self.source,
            DesiredSource::new(PathBuf::new(), PathBuf::new()),
        );
        self.source = source.with_veto(veto);
        self.forward = Some(forward);
        // The device writes one status.json for all its deployments (each one's document is
        // an entry of it): no file, no thread per deployment.
        self.publishers = Publishers::new(Vec::new());
        self
    }

    /// When the loop looks again by itself if nothing else happens.
    pub fn requeue_at(&self) -> Option<Instant> {
        self.next_wake
    }

    /// Whether the loop makes progress (for the watchdog task).
    pub fn liveness(&self) -> Liveness {
        self.liveness.clone()
    }

    /// The built-ins' output files (triggers).
    pub fn output_files(&self) -> Vec<PathBuf> {
        self.builtins.output_files()
    }
}

/// Runs roost's loop until `shutdown` resolves: real file watches, SIGHUP, the watchdog in its
/// own task. `on_ready` is called once, after the first reconcile (roost's unit uses it for
/// READY=1).
pub async fn run<R: Runtime>(
    cfg: Config,
    runtime: R,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(),
) -> Result<(), ReconcileError> {
    run_linked(cfg, runtime, shutdown, on_ready, None).await
}

/// [`run`], linked with the desired state over the broker: documents go to it, its report
/// comes into the status.
pub async fn run_linked<R: Runtime>(
    cfg: Config,
    runtime: R,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(),
    remote: Option<crate::publish::RemoteLink>,
) -> Result<(), ReconcileError> {
    let mut reconciler = Reconciler::new(cfg.clone(), runtime)?;
    reconciler.remote = remote;
    let triggers = Triggers::watching(&cfg.file, &reconciler.output_files())?;
    let watchdog = crate::sd_notify::watchdog_interval().map(|w| {
        crate::sd_notify::spawn_watchdog(w, reconciler.liveness(), || {
            let _ = crate::sd_notify::sd_notify("WATCHDOG=1");
        })
    });
    drive(&mut reconciler, triggers, shutdown, on_ready).await;
    if let Some(task) = watchdog {
        task.abort();
    }
    Ok(())
}

/// The loop itself: one reconcile, then one per trigger or wake-up, until `shutdown`; then the
/// shutdown sequence.
pub async fn drive<R: Runtime>(
    reconciler: &mut Reconciler<R>,
    mut triggers: Triggers,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(),
) {
    reconciler.reload_file();
    reconciler.reconcile(&mut triggers).await;
    // READY=1 means status.json tells the truth already.
    reconciler.flush_status();
    on_ready();
    tokio::pin!(shutdown);
    loop {
        let wake = reconciler.requeue_at();
        let timer = async move {
            match wake {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        reconciler.liveness.idle();
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = triggers.file.recv() => reconciler.reload_file(),
            Some(()) = triggers.outputs.recv() => {}
            Some(()) = triggers.hangup.recv() => {
                tracing::info!("SIGHUP: re-reading the desired state");
                reconciler.source.forget();
                reconciler.reload_file();
            }
            event = reconciler.runtime.next_event() => reconciler.record_event(event),
            links = triggers::next_links(&mut triggers.links) => reconciler.set_links(links),
            () = crate::publish::RemoteLink::changed(reconciler.remote.as_mut()) => {}
            _ = timer => {}
        }
        if let Some(links) = triggers::pending_links(&mut triggers.links) {
            reconciler.set_links(links);
        }
        reconciler.reconcile(&mut triggers).await;
    }
    tracing::info!("shutting down");
    reconciler.liveness.busy();
    reconciler.shutdown().await;
    reconciler.flush_status();
}
