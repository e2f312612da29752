//! The reconcile loop. It wakes on a trigger (file change, runtime event, back-off timer,
//! SIGHUP), re-reads the desired state if needed (a bad file keeps the last good one in force),
//! observes the runtime, plans, applies the plan action by action (one failure never aborts the
//! others) and writes the status file when anything changed.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use crate::errors;
use crate::history::History;
use crate::plan::{self, Desired, Plan, PlanInput};
use crate::recorder::{Health, RecordConfig};
use crate::runtime::{ComponentRun, Runtime, RuntimeEvent};
use crate::spec::{self, Deployment};
use crate::state_dir::StateDir;
use crate::status::{
    ComponentState, ErrorEntry, OverallStatus, Phase, ReconcilerInfo, SpecError, StatusDoc,
};
use crate::watch::FileWatcher;

/// Upper bound of observe -> plan -> apply passes per trigger (a chain of dependsOn needs one
/// pass per level); a pass in which every action failed ends the round early.
const MAX_PASSES: usize = 64;

#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub state_dir: PathBuf,
    /// The roost binary, used to start the recorder component.
    pub exe: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot create state folder {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    #[error("cannot install signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

pub struct Reconciler<R: Runtime> {
    cfg: Config,
    state: StateDir,
    pub runtime: R,
    desired: Option<(Deployment, Desired)>,
    generation: u64,
    observed_generation: u64,
    spec_error: Option<SpecError>,
    /// Hash of the last file content looked at, valid or not, so unchanged content is skipped.
    last_content_hash: Option<String>,
    history: History,
    stop_failures: BTreeMap<String, String>,
    runtime_error: Option<String>,
    runtime_retry: u32,
    last_status: Option<StatusDoc>,
    /// Where each new status document goes (status.json, later MQTT, HTTP ...).
    publishers: crate::publish::Publishers,
    /// What the last apply tried and how much of it failed (status.json `lastApply`).
    last_apply: Option<crate::apply::ApplyCounts>,
    requeue_at: Option<Instant>,
}

impl<R: Runtime> Reconciler<R> {
    pub fn new(cfg: Config, runtime: R) -> Result<Self, ReconcileError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| ReconcileError::StateDir {
            path: cfg.state_dir.display().to_string(),
            source,
        })?;
        let state = StateDir::new(cfg.state_dir.clone());
        let history = History::load(&state.history());
        let status_file = crate::publish::StatusFile {
            path: state.status(),
        };
        Ok(Self {
            generation: history.generation,
            observed_generation: 0,
            cfg,
            state,
            runtime,
            desired: None,
            spec_error: None,
            last_content_hash: None,
            history,
            stop_failures: BTreeMap::new(),
            runtime_error: None,
            runtime_retry: 0,
            last_status: None,
            publishers: crate::publish::Publishers::new(vec![Box::new(status_file)]),
            last_apply: None,
            requeue_at: None,
        })
    }

    /// Reads the file; a valid new content becomes the desired state (and a new generation),
    /// an invalid one is reported and changes nothing that runs.
    pub fn reload_file(&mut self) {
        let loaded = spec::load_file(&self.cfg.file);
        let content_hash = match &loaded {
            Ok((_, bytes)) => Some(plan::spec_hash(bytes)),
            Err(_) => None,
        };
        if content_hash.is_some()
            && content_hash == self.last_content_hash
            && self.desired.is_some()
        {
            self.spec_error = None;
            return;
        }
        self.last_content_hash = content_hash.clone();
        match loaded {
            Ok((deployment, bytes)) => {
                if self.history.accepted_hash != content_hash || self.generation == 0 {
                    self.generation += 1;
                    self.history.generation = self.generation;
                    self.history.accepted_hash = content_hash;
                    self.save_history();
                }
                if let Err(e) = crate::fsutil::write_atomic(&self.state.last_good(), &bytes) {
                    tracing::warn!(error = %e, "cannot keep a copy of the desired state");
                }
                tracing::info!(generation = self.generation, deployment = %deployment.name(), "desired state accepted");
                self.accept(deployment);
                self.spec_error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "desired state rejected; the last valid one stays in force");
                self.spec_error = Some(SpecError::from(&e));
                if self.desired.is_none() {
                    self.fall_back_to_last_good();
                }
            }
        }
    }

    fn accept(&mut self, deployment: Deployment) {
        self.end_recording_deployment_if_left(&deployment);
        let was_stopped = self.desired.as_ref().is_some_and(|(_, d)| !d.running);
        let extra = recorder_run(&self.cfg, &deployment).into_iter().collect();
        let desired = Desired::from_deployment(&deployment, extra);
        if was_stopped && desired.running {
            // Starting a stopped deployment again is a new run: finished components run again.
            self.history
                .components
                .values_mut()
                .for_each(|h| h.stopped_by_roost());
        }
        self.desired = Some((deployment, desired));
    }

    /// Roost (re)started while the file is bad or gone: run what was last accepted, which roost
    /// keeps a copy of, rather than nothing. The error stays reported.
    fn fall_back_to_last_good(&mut self) {
        let Ok((deployment, bytes)) = spec::load_file(&self.state.last_good()) else {
            return;
        };
        if self.history.accepted_hash.as_deref() != Some(plan::spec_hash(&bytes).as_str()) {
            self.generation += 1;
            self.history.generation = self.generation;
            self.history.accepted_hash = Some(plan::spec_hash(&bytes));
            self.save_history();
        }
        tracing::warn!(deployment = %deployment.name(), "running the last valid desired state");
        self.accept(deployment);
    }

    /// Marks the deployment's row in metadata.db as ended when the new desired state stops
    /// recording under that name (stopped, recorder removed, renamed, storage moved).
    fn end_recording_deployment_if_left(&self, next: &Deployment) {
        let Some((previous, _)) = &self.desired else {
            return;
        };
        let Some(old) = RecordConfig::from_deployment(previous, &self.state.root) else {
            return;
        };
        let new = RecordConfig::from_deployment(next, &self.state.root);
        let continues = next.spec.state == spec::RunState::Running
            && new.as_ref().is_some_and(|n| {
                n.deployment == old.deployment && n.storage.path == old.storage.path
            });
        if continues {
            return;
        }
        let root = old.storage_path(&self.state.root);
        match crate::storage::end_deployment(&root, &old.storage, &old.deployment, Timestamp::now())
        {
            Ok(_) => tracing::info!(deployment = %old.deployment, "recording deployment ended"),
            Err(e) => tracing::warn!(error = %e, "cannot mark the deployment ended in metadata.db"),
        }
    }

    /// Takes note of what the runtime reported; the next reconcile acts on it.
    pub fn record_event(&mut self, event: RuntimeEvent) {
        match event {
            RuntimeEvent::Exited { name, exit } => {
                tracing::info!(component = %name, code = ?exit.code, signal = ?exit.signal, "component exited");
                if let Some((_, desired)) = &self.desired
                    && let Some(dc) = desired
                        .components
                        .iter()
                        .find(|c| c.run.name.as_str() == name)
                {
                    self.history
                        .for_spec(&name, &dc.run.spec_hash)
                        .exited(exit, &dc.run.backoff);
                    self.save_history();
                }
            }
            RuntimeEvent::Changed => {}
            RuntimeEvent::Unreachable { reason } => self.runtime_error = Some(reason),
            RuntimeEvent::Reachable => {
                self.runtime_error = None;
                self.runtime_retry = 0;
            }
        }
    }

    /// Observes, plans and applies until nothing is left to do (or the pass limit), then writes
    /// the status.
    pub async fn reconcile(&mut self) {
        self.requeue_at = None;
        for pass in 0..MAX_PASSES {
            let deployment = self
                .desired
                .as_ref()
                .map(|(_, d)| d.deployment.clone())
                .unwrap_or_default();
            let observed = match self.runtime.observe(&deployment).await {
                Ok(o) => {
                    self.runtime_error = None;
                    self.runtime_retry = 0;
                    o
                }
                Err(e) => {
                    tracing::warn!(error = %e, "runtime not reachable");
                    self.runtime_error = Some(e.to_string());
                    self.runtime_retry = self.runtime_retry.saturating_add(1);
                    let delay = Duration::from_millis(500u64 << self.runtime_retry.min(6));
                    self.requeue_at = Some(Instant::now() + delay);
                    self.write_status(None);
                    return;
                }
            };
            let Some((_, desired)) = &self.desired else {
                self.write_status(None);
                return;
            };
            if self.runtime.restarts_itself() {
                let mut changed = false;
                for dc in &desired.components {
                    if let Some(o) = observed.get(dc.run.name.as_str()) {
                        let record = self
                            .history
                            .for_spec(dc.run.name.as_str(), &dc.run.spec_hash);
                        changed |= record.runtime_restarts_seen != o.runtime_restarts;
                        record.observe_runtime_restarts(o.runtime_restarts);
                    }
                }
                if changed {
                    self.save_history();
                }
            }
            let mut plan = plan::plan(&PlanInput {
                desired,
                observed: &observed,
                history: &self.history,
                stop_failures: &self.stop_failures,
                runtime_restarts_itself: self.runtime.restarts_itself(),
                now: Timestamp::now(),
            });
            let recorder_wake = self.judge_recorder(&mut plan);
            if plan.actions.is_empty() || pass + 1 == MAX_PASSES {
                self.observed_generation = self.generation;
                let wake = plan.requeue_after.into_iter().chain(recorder_wake).min();
                self.requeue_at = wake.map(|d| Instant::now() + d);
                if !plan.actions.is_empty() {
                    // Something keeps failing; look again soon rather than spin.
                    let soon = Instant::now() + Duration::from_secs(1);
                    self.requeue_at = Some(self.requeue_at.map_or(soon, |t| t.min(soon)));
                }
                self.write_status(Some(&plan));
                return;
            }
            if pass == 0 && self.observed_generation != self.generation {
                self.write_status_phase(&plan, Phase::InProgress);
            }
            if !self.apply(&plan).await {
                // Nothing went through: look again soon rather than spin.
                self.observed_generation = self.generation;
                self.requeue_at = Some(Instant::now() + Duration::from_secs(1));
                self.write_status(Some(&plan));
                return;
            }
        }
    }

    /// Carries the plan out (see `apply`); true when at least one action succeeded.
    async fn apply(&mut self, plan: &Plan) -> bool {
        let deployment = self
            .desired
            .as_ref()
            .map(|(_, d)| d.deployment.clone())
            .unwrap_or_default();
        let desired = self.desired.as_ref().map(|(d, _)| d.clone());
        let state_root = self.state.root.clone();
        let counts = crate::apply::apply(
            &mut self.runtime,
            &deployment,
            &plan.actions,
            &mut self.history,
            &mut self.stop_failures,
            |run| prepare_start(desired.as_ref(), &state_root, run),
        )
        .await;
        self.last_apply = Some(counts);
        self.save_history();
        counts.failed < counts.tried
    }

    /// Health is judged by output: a running recorder whose files do not arrive is an error,
    /// whatever its process does. Returns when to look again (a file falling due).
    fn judge_recorder(&self, plan: &mut Plan) -> Option<Duration> {
        let c = plan
            .components
            .iter_mut()
            .find(|c| c.name == spec::recorder::RECORDER_COMPONENT)?;
        if c.status != ComponentState::Running {
            return None;
        }
        let now = Timestamp::now();
        let report =
            crate::recorder::read_report(&self.state.root).filter(|r| Some(r.pid) == c.pid);
        let Some(report) = report else {
            // Just started: it has until its first report is due, then it is an error.
            let first_due = c.since.unwrap_or(now) + crate::recorder::HEARTBEAT * 3;
            if now < first_due {
                c.reason = Some("Starting".into());
                return Some(
                    first_due.duration_since(now).unsigned_abs() + Duration::from_millis(50),
                );
            }
            c.status = ComponentState::Error;
            c.reason = Some("NoRecordings".into());
            let message =
                format!("the recorder has run since {first_due} without reporting anything");
            plan.errors.push(ErrorEntry::new(
                &errors::NO_RECORDINGS,
                Some(&c.name),
                message,
            ));
            if plan.phase == Phase::Succeeded {
                plan.phase = Phase::FailedToStart;
            }
            return None;
        };
        c.output = serde_json::to_value(recorder_output(&report)).ok();
        match crate::recorder::assess(&report, now) {
            Health::Healthy | Health::Stopped => {}
            Health::Error { code, message } => {
                c.status = ComponentState::Error;
                c.reason = Some(recorder_reason(code).into());
                plan.errors
                    .push(ErrorEntry::new(code, Some(&c.name), message));
                // Provisioning failed only if the recorder never produced a file; later errors
                // keep the phase and make the status Error (status_doc).
                if plan.phase == Phase::Succeeded && report.files_written == 0 {
                    plan.phase = Phase::FailedToStart;
                }
            }
        }
        // Look again when the next file is overdue, or when the report would go stale.
        let grace = crate::recorder::FILE_GRACE;
        let stale = report.updated_at + crate::recorder::HEARTBEAT * 3 + grace;
        let due = report
            .expected_file_by
            .map(|t| t + grace)
            .into_iter()
            .chain([stale])
            .filter(|t| *t > now)
            .min()?;
        Some(due.duration_since(now).unsigned_abs() + Duration::from_millis(50))
    }

    fn save_history(&self) {
        if let Err(e) = self.history.save(&self.state.history()) {
            tracing::error!(error = %e, "cannot save history");
        }
    }

    fn write_status_phase(&mut self, plan: &Plan, phase: Phase) {
        let mut doc = self.status_doc(Some(plan));
        doc.phase = phase;
        doc.status = OverallStatus::Pending;
        self.write_doc(doc);
    }

    fn write_status(&mut self, plan: Option<&Plan>) {
        let doc = self.status_doc(plan);
        self.write_doc(doc);
    }

    fn write_doc(&mut self, doc: StatusDoc) {
        if self
            .last_status
            .as_ref()
            .is_some_and(|last| last.same_content(&doc))
        {
            return;
        }
        // Every publisher (status.json first) gets it on its own thread, retrying failures.
        self.last_status = Some(doc.clone());
        self.publishers.publish(doc);
    }

    fn status_doc(&self, plan: Option<&Plan>) -> StatusDoc {
        let mut errors: Vec<ErrorEntry> = Vec::new();
        if let Some(e) = &self.spec_error {
            errors.push(ErrorEntry::new(
                &errors::INVALID_SPEC,
                None,
                e.message.clone(),
            ));
        }
        if let Some(reason) = &self.runtime_error {
            errors.push(ErrorEntry::new(
                &errors::RUNTIME_UNREACHABLE,
                None,
                reason.clone(),
            ));
        }
        let (phase, components) = match plan {
            Some(p) => {
                errors.extend(p.errors.iter().cloned());
                (p.phase, p.components.clone())
            }
            None => match self.last_status.as_ref() {
                // Runtime unreachable: keep showing what was last known, marked Unknown below.
                Some(last) if self.desired.is_some() => (last.phase, last.components.clone()),
                _ => (Phase::FailedToStart, Vec::new()),
            },
        };
        // An error judged from output after provisioning (the recorder's) keeps the phase
        // Succeeded; the status must still not be greener than the output.
        let in_error = components.iter().any(|c| c.status == ComponentState::Error);
        let status = if self.runtime_error.is_some() {
            OverallStatus::Unknown
        } else {
            match phase {
                Phase::Succeeded if in_error => OverallStatus::Error,
                Phase::Succeeded => OverallStatus::Running,
                Phase::Stopped => OverallStatus::Stopped,
                Phase::FailedToStart | Phase::PartiallyDeprovisioned => OverallStatus::Error,
                Phase::InProgress | Phase::Provisioning => OverallStatus::Pending,
            }
        };
        StatusDoc {
            api_version: spec::API_VERSION.to_string(),
            kind: "DeploymentStatus".to_string(),
            deployment: self
                .desired
                .as_ref()
                .map(|(d, _)| d.metadata.name.to_string()),
            generation: self.generation,
            observed_generation: self.observed_generation,
            phase,
            status,
            spec_error: self.spec_error.clone(),
            components,
            errors,
            last_apply: self.last_apply,
            reconciler: ReconcilerInfo {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                runtime: self.runtime.kind().to_string(),
            },
            updated_at: Timestamp::now(),
        }
    }

    /// Stops what roost itself supervises (systemd units outlive roost) and writes a last status.
    pub async fn shutdown(&mut self) {
        if self.runtime.restarts_itself() {
            self.save_history();
            return;
        }
        let deployment = self
            .desired
            .as_ref()
            .map(|(_, d)| d.deployment.clone())
            .unwrap_or_default();
        let running = self.runtime.observe(&deployment).await.unwrap_or_default();
        let timeout_of = |name: &str| {
            self.desired
                .as_ref()
                .and_then(|(_, d)| d.components.iter().find(|c| c.run.name.as_str() == name))
                .map_or(plan::DEFAULT_STOP_TIMEOUT, |c| c.run.stop_timeout)
        };
        // Dependents first: reverse start order, then anything no longer desired.
        let mut order: Vec<String> = self
            .desired
            .as_ref()
            .map(|(_, d)| {
                d.components
                    .iter()
                    .rev()
                    .map(|c| c.run.name.to_string())
                    .collect()
            })
            .unwrap_or_default();
        order.extend(
            running
                .keys()
                .filter(|n| !order.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        for name in order {
            let is_running = running
                .get(&name)
                .is_some_and(|o| matches!(o.state, crate::runtime::ObservedState::Running { .. }));
            if !is_running {
                continue;
            }
            match self
                .runtime
                .stop(&deployment, &name, timeout_of(&name))
                .await
            {
                Ok(()) => {
                    if let Some(record) = self.history.components.get_mut(&name) {
                        record.stopped_by_roost();
                    }
                }
                Err(e) => {
                    tracing::warn!(component = %name, error = %e, "stop at shutdown failed");
                    failed.insert(name, e.to_string());
                }
            }
        }
        let mut doc = self.status_doc(None);
        for c in &mut doc.components {
            if let Some(reason) = failed.get(&c.name) {
                c.status = ComponentState::Error;
                c.reason = Some("StopFailed".into());
                doc.errors.push(ErrorEntry::new(
                    &errors::RUNTIME_UNREACHABLE,
                    Some(&c.name),
                    reason.clone(),
                ));
            } else {
                // The recorder's last word: its report written as it exited (its last file).
                if c.name == spec::recorder::RECORDER_COMPONENT
                    && let Some(report) = crate::recorder::read_report(&self.state.root)
                        .filter(|r| Some(r.pid) == c.pid)
                {
                    c.output = serde_json::to_value(recorder_output(&report)).ok();
                }
                c.status = ComponentState::Stopped;
                c.reason = Some("ReconcilerStopped".into());
                c.pid = None;
                c.since = Some(doc.updated_at);
            }
        }
        (doc.phase, doc.status) = if failed.is_empty() {
            (Phase::Stopped, OverallStatus::Stopped)
        } else {
            (Phase::PartiallyDeprovisioned, OverallStatus::Error)
        };
        self.write_doc(doc);
        self.save_history();
    }

    /// Waits (bounded) until every publisher has the newest status document.
    pub fn flush_status(&self) {
        if !self.publishers.flush(Duration::from_secs(5)) {
            tracing::warn!("a status publisher did not finish within 5 s");
        }
    }

    pub fn requeue_at(&self) -> Option<Instant> {
        self.requeue_at
    }
}

/// Writes what a component needs on disk before it starts (the recorder's configuration).
fn prepare_start(desired: Option<&Deployment>, state_root: &std::path::Path, run: &ComponentRun) {
    if run.name.as_str() != spec::recorder::RECORDER_COMPONENT {
        return;
    }
    if let Some(d) = desired
        && let Some(config) = RecordConfig::from_deployment(d, state_root)
        && let Err(e) = config.write(state_root)
    {
        tracing::error!(error = %e, "cannot write the recorder configuration");
    }
}

/// The part of the recorder's report shown under the `recorder` component in status.json.
fn recorder_output(r: &crate::recorder::RecorderReport) -> serde_json::Value {
    serde_json::json!({
        "state": r.state,
        "device": r.device,
        "filesWritten": r.files_written,
        "lastFile": r.last_file,
        "lastFileAt": r.last_file_at,
        "samplesCaptured": r.samples_captured,
        "samplesDropped": r.samples_dropped,
        "samplesDiscarded": r.samples_discarded,
        "overruns": r.overruns,
        "filesDiscarded": r.files_discarded,
        "expectedFileBy": r.expected_file_by,
        "rowsOwed": r.rows_owed,
        "filesDeleted": r.files_deleted,
        "recentlyDeleted": r.recently_deleted,
        "timeOverlaps": r.time_overlaps,
        "clockSynchronized": r.clock_synchronized,
        "warnings": r.warnings,
        "error": r.error,
    })
}

fn recorder_reason(code: &errors::ErrorCode) -> &'static str {
    match code.code {
        "DEP_E301" => "StorageUnusable",
        "DEP_E302" => "LowDiskSpace",
        "DEP_E303" => "DiskFull",
        "DEP_E311" => "AudioDeviceUnavailable",
        "DEP_E312" => "AudioFormatUnsupported",
        "DEP_E313" => "NoRecordings",
        "DEP_E314" => "SamplesDropped",
        "DEP_E315" => "InputNotRealTime",
        "DEP_E321" => "MetadataDbError",
        _ => "RecorderError",
    }
}

/// The recorder component, when the deployment asks for one: `roost record` of this binary,
/// reading the configuration roost writes before starting it.
pub fn recorder_run(cfg: &Config, d: &Deployment) -> Option<ComponentRun> {
    let config = RecordConfig::from_deployment(d, &cfg.state_dir)?;
    let config_json = serde_json::to_string(&config).expect("recorder config serializes");
    let hash_input = format!("{}\n{}", cfg.exe.display(), config_json);
    let argv = vec![
        cfg.exe.display().to_string(),
        "record".to_string(),
        "--config".to_string(),
        RecordConfig::path(&cfg.state_dir).display().to_string(),
        "--state-dir".to_string(),
        cfg.state_dir.display().to_string(),
    ];
    Some(ComponentRun {
        deployment: d.metadata.name.to_string(),
        name: spec::recorder::RECORDER_COMPONENT
            .try_into()
            .expect("valid name"),
        spec_hash: plan::spec_hash(hash_input.as_bytes()),
        command: argv.try_into().expect("non-empty argv"),
        env: BTreeMap::new(),
        working_dir: None,
        restart_policy: config
            .recorder
            .restart_policy
            .unwrap_or(d.spec.restart_policy),
        backoff: d.spec.backoff,
        // The recorder finishes and registers the file it is writing before it exits.
        stop_timeout: Duration::from_secs(30),
    })
}

/// Debounces a watcher in its own task, so that no trigger is lost when another branch of the
/// loop's select wins; at most one trigger waits in the channel.
fn spawn_trigger(mut watcher: FileWatcher) -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        loop {
            watcher.changed().await;
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The systemd watchdog's ticks: every half of `WatchdogSec`, on absolute deadlines (a late tick
/// is followed by the next one a full period later, never by a burst).
pub fn watchdog_ticks(watchdog: Option<Duration>) -> Option<tokio::time::Interval> {
    let period = watchdog? / 2;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some(ticks)
}

/// Runs the loop until `shutdown` resolves. `on_ready` is called once, after the first
/// reconcile (roost's unit uses it for READY=1).
pub async fn run<R: Runtime>(
    cfg: Config,
    runtime: R,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(),
) -> Result<(), ReconcileError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut reconciler = Reconciler::new(cfg.clone(), runtime)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(ReconcileError::Signal)?;
    // The watcher debounces in its own task so that no trigger is lost when another branch of
    // the select below wins.
    let mut file_rx = spawn_trigger(FileWatcher::new(&cfg.file)?);
    // The recorder's report arrives as a file in the state folder; its changes are triggers too.
    let mut report_rx = spawn_trigger(FileWatcher::new(&crate::recorder::report_path(
        &cfg.state_dir,
    ))?);
    let mut watchdog = watchdog_ticks(crate::notify::watchdog_interval());
    reconciler.reload_file();
    reconciler.reconcile().await;
    // READY=1 means status.json tells the truth already.
    reconciler.flush_status();
    on_ready();
    tokio::pin!(shutdown);
    loop {
        let requeue = reconciler.requeue_at();
        let timer = async move {
            match requeue {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // The interval keeps its own deadlines across turns: other wake-ups never postpone it,
        // and a loop stuck in reconcile stops feeding the watchdog, as it should.
        let watchdog_tick = async {
            match watchdog.as_mut() {
                Some(ticks) => ticks.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = file_rx.recv() => reconciler.reload_file(),
            Some(()) = report_rx.recv() => {}
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: re-reading the desired state");
                reconciler.last_content_hash = None;
                reconciler.reload_file();
            }
            event = reconciler.runtime.next_event() => reconciler.record_event(event),
            _ = timer => {}
            _ = watchdog_tick => {
                let _ = crate::notify::sd_notify("WATCHDOG=1");
                continue;
            }
        }
        reconciler.reconcile().await;
    }
    tracing::info!("shutting down");
    reconciler.shutdown().await;
    reconciler.flush_status();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop's shape: a select over a busy trigger and the watchdog. Woken every 100 ms by
    /// the trigger, the watchdog still ticks every 2 s (WatchdogSec=4s) on tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn frequent_wake_ups_never_postpone_the_watchdog() {
        let mut watchdog = watchdog_ticks(Some(Duration::from_secs(4)));
        let start = tokio::time::Instant::now();
        let mut busy = tokio::time::interval(Duration::from_millis(100));
        let mut ticks = Vec::new();
        while start.elapsed() < Duration::from_secs(20) {
            let watchdog_tick = async {
                match watchdog.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = busy.tick() => {}
                _ = watchdog_tick => ticks.push(start.elapsed()),
            }
        }
        // (At 20 s the last busy tick and a watchdog tick are due together; either may win.)
        let secs: Vec<u64> = ticks
            .iter()
            .map(|t| t.as_secs())
            .filter(|s| *s < 20)
            .collect();
        assert_eq!(secs, vec![2, 4, 6, 8, 10, 12, 14, 16, 18]);
        assert!(watchdog_ticks(None).is_none());
    }
}
