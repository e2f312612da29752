//! `roost run --dir DIR`: several deployments on one device, one file each. Every deployment
//! runs its own reconcile loop (`reconcile::drive`) with its own runtime, state folder
//! (`<state>/deployments/<name>/`: history, last valid file, status.json, logs), generation,
//! phase and restart counts; a bad file disturbs only its own deployment. This coordinator
//! watches the folder once, hands each file's changes to its deployment, tells each deployment
//! what its dependencies mean for it (`plan::gate::Links`), removes a deployment whose file is
//! gone past [`GRACE`], and writes the device's status.json (a summary and one entry per
//! deployment). It decides nothing about components: each deployment's planner does.

pub mod folder;
pub mod graph;
mod outputs;
mod summary;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::plan::gate::Links;
use crate::reconcile::{self, Config, ReconcileError, Reconciler};
use crate::runtime::{Runtime, RuntimeError};
use crate::status::{SpecError, StatusDoc};
use folder::{FileContent, Folder};
use graph::InForce;

/// How long a deployment whose file disappeared stays in force: a writer that deletes and
/// writes anew (some sync tools do) must not restart everything.
pub const GRACE: Duration = Duration::from_secs(10);

/// The longest roost waits for every deployment's first status before it says it is ready.
const FIRST_STATUS_WAIT: Duration = Duration::from_secs(30);

/// Where the device's loop finds its folder, its state and itself.
#[derive(Clone, Debug)]
pub struct DirConfig {
    /// The folder of deployment files.
    pub dir: PathBuf,
    /// The state folder: the device's status.json, and `deployments/<name>/` for each one.
    pub state_dir: PathBuf,
    /// The roost binary, which built-ins run.
    pub exe: PathBuf,
}

/// Makes the runtime of one deployment (its own processes, or its own units under systemd).
#[allow(async_fn_in_trait)]
pub trait MakeRuntime {
    /// The runtime made.
    type R: Runtime + 'static;
    /// A runtime keeping its files in `state_dir` (the deployment's state folder).
    async fn make(&self, state_dir: &Path) -> Result<Self::R, RuntimeError>;
}

/// Why the device's loop cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A deployment's loop could not be set up.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// A deployment's runtime could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The state folder of deployment `name`.
pub fn deployment_state_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("deployments").join(name)
}

struct Member {
    file: PathBuf,
    file_tx: mpsc::Sender<()>,
    hangup_tx: mpsc::Sender<()>,
    links_tx: watch::Sender<Links>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    /// When its file went missing (no file of the folder names it).
    missing_since: Option<Instant>,
    /// Its number among the loops this device started.
    epoch: u64,
    /// Whether its loop was told it is gone.
    gone_sent: bool,
}

/// A deployment's loop ends with its member: roost's own loop aborted (a crash, a test) leaves
/// no loop behind that would go on driving its components.
impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = Rc<RefCell<BTreeMap<String, InForce>>>;

struct Device<M: MakeRuntime> {
    cfg: DirConfig,
    maker: M,
    folder: Folder,
    members: BTreeMap<String, Member>,
    in_force: Shared,
    docs: BTreeMap<String, StatusDoc>,
    /// Files of the folder that no deployment takes (refused, or a name taken by another file).
    refusals: Vec<SpecError>,
    status_tx: mpsc::UnboundedSender<(String, u64, StatusDoc)>,
    status_rx: mpsc::UnboundedReceiver<(String, u64, StatusDoc)>,
    /// Each member's number: a late document of a removed loop never lands on its successor.
    epoch: u64,
    /// The exports each dependency last offered: a dependent keeps its bindings (and runs on)
    /// while its dependency is gone or refused.
    last_exports: BTreeMap<String, BTreeMap<String, String>>,
    publishers: crate::publish::Publishers,
    last: Option<StatusDoc>,
    /// Who declares each shared component, first declarer first (`shared-owners.json`).
    shared_users: BTreeMap<String, Vec<String>>,
    outputs: outputs::Outputs,
    /// The in-process link with the desired state over the broker.
    remote: Option<crate::publish::RemoteLink>,
    /// Files whose newest content the other deployments refuse (judged again on any change).
    vetoed: std::collections::BTreeSet<PathBuf>,
    /// The folder as last scanned and who claimed which file: judged again when a deployment
    /// leaves (its recorder is free for a refused file).
    last_scan: (Vec<(PathBuf, FileContent)>, BTreeMap<String, PathBuf>),
}

/// Runs the device's deployments until `shutdown` resolves. Must run inside a
/// `tokio::task::LocalSet` (each deployment's loop is a local task). `on_ready` is called once
/// every deployment has said its first status (or after 30 s).
pub async fn run<M: MakeRuntime>(
    cfg: DirConfig,
    maker: M,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(),
) -> Result<(), DeviceError> {
    run_linked(cfg, maker, shutdown, on_ready, None).await
}

/// [`run`], linked with the desired state over the broker: the device's documents go to it,
/// its report comes into the device's status.
pub async fn run_linked<M: MakeRuntime>(
    cfg: DirConfig,
    maker: M,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(),
    remote: Option<crate::publish::RemoteLink>,
) -> Result<(), DeviceError> {
    std::fs::create_dir_all(&cfg.dir).ok();
    // In its own task: a watcher's wait is not cancel-safe (it settles after the first event),
    // and the select below must never drop a file change.
    let watcher = crate::watch::FileWatcher::folder(&cfg.dir, Some(folder::is_deployment_file))
        .map_err(ReconcileError::from)?;
    let mut folder_changed = forward_changes(watcher);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ReconcileError::Signal)?;
    let mut device = Device::new(cfg, maker);
    device.remote = remote;
    device.rescan().await;
    device.adopt_leftovers().await;
    device.wait_first_statuses().await;
    device.publish();
    // READY=1 means status.json tells the truth already.
    device.publishers.flush(Duration::from_secs(5));
    on_ready();
    tokio::pin!(shutdown);
    loop {
        let grace = device.next_grace_end();
        let timer = async move {
            match grace {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = folder_changed.recv() => device.rescan().await,
            Some(()) = hangup.recv() => device.hangup().await,
            () = crate::publish::RemoteLink::changed(device.remote.as_mut()) => device.publish(),
            Some((name, epoch, doc)) = device.status_rx.recv() => device.took_status(name, epoch, doc).await,
            Some(ev) = device.outputs.events.recv() => device.outputs.route(&ev),
            () = timer => device.settle().await,
        }
    }
    tracing::info!("shutting down every deployment");
    device.stop_all().await;
    Ok(())
}

impl<M: MakeRuntime> Device<M> {
    fn new(cfg: DirConfig, maker: M) -> Self {
        let cfg_state = cfg.state_dir.clone();
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        let status_file = crate::publish::RedactedStatusFile {
            path: crate::state_dir::StateDir::new(cfg.state_dir.clone()).status(),
        };
        Self {
            cfg,
            maker,
            folder: Folder::default(),
            members: BTreeMap::new(),
            in_force: Rc::default(),
            docs: BTreeMap::new(),
            refusals: Vec::new(),
            status_tx,
            status_rx,
            publishers: crate::publish::Publishers::new(vec![Box::new(status_file)]),
            last: None,
            shared_users: std::fs::read(cfg_state_owners(&cfg_state))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
            outputs: outputs::Outputs::new(),
            remote: None,
            vetoed: Default::default(),
            epoch: 0,
            last_exports: BTreeMap::new(),
            last_scan: Default::default(),
        }
    }

    /// Reads the folder and brings the members in line: new files start deployments, a
    /// changed file is handed to its deployment, a missing one starts its grace.
    async fn rescan(&mut self) {
        let (files, changed) = self.folder.scan(&self.cfg.dir);
        let now = Instant::now();
        self.refusals.clear();
        let mut claimed: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (path, content) in &files {
            match content {
                FileContent::Valid(d) if d.name().as_str() == graph::SHARED => {
                    let why = graph::veto(graph::SHARED, d, &BTreeMap::new()).map(|(_, w)| w);
                    self.refusals.push(refusal(path, why.unwrap_or_default()));
                }
                FileContent::Valid(d) => {
                    let name = d.name().to_string();
                    // Its file: the one its loop reads, else (roost starting) the one its
                    // state folder notes, whatever the order of names.
                    let bound = (self.members.get(&name).map(|m| m.file.clone())).or_else(|| {
                        remembered_file(&deployment_state_dir(&self.cfg.state_dir, &name))
                    });
                    // A file present keeps its deployment, even while refused (a typo must
                    // not hand it to a duplicate).
                    let taken = claimed.get(&name).cloned().or_else(|| {
                        bound.filter(|b| {
                            b != path
                                && files.iter().any(|(p, _)| p == b)
                                && !claims_other(&files, b, &name)
                        })
                    });
                    if let Some(first) = taken {
                        self.refusals.push(duplicate(path, &first, &name));
                        continue;
                    }
                    claimed.insert(name, path.clone());
                }
                FileContent::Refused(e) => {
                    let owner = self.members.values().any(|m| &m.file == path);
                    if let Some(name) = (!owner).then(|| self.owner_of(path)).flatten() {
                        // Refused at roost's start: still its deployment's, which runs its
                        // last valid state and says why the file is refused.
                        claimed.insert(name, path.clone());
                    } else if !owner {
                        tracing::warn!(file = %path.display(), error = %e.message, "deployment file refused");
                        self.refusals.push(e.clone());
                    }
                }
            }
        }
        let again = self.judge(&files, &claimed, &changed);
        self.last_scan = (files.clone(), claimed.clone());
        for (name, member) in self
            .members
            .iter_mut()
            .filter(|(n, _)| n.as_str() != graph::SHARED)
        {
            let present = files.iter().any(|(p, _)| p == &member.file);
            match claimed.get(name) {
                Some(file) => {
                    member.missing_since = None;
                    if file != &member.file {
                        member.file = file.clone();
                        remember_file(&deployment_state_dir(&self.cfg.state_dir, name), file);
                    }
                }
                // A file refused now still belongs to its deployment (its last good runs).
                None if present && !claims_other(&files, &member.file, name) => {
                    member.missing_since = None
                }
                None => {
                    member.missing_since.get_or_insert(now);
                }
            }
        }
        let new: Vec<(String, PathBuf)> = (claimed.iter())
            .filter(|(n, _)| !self.members.contains_key(*n))
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        for (name, file) in new {
            self.start_member(&name, file, None).await;
        }
        for (name, member) in &self.members {
            let read_again = changed.contains(&member.file) || again.contains(name);
            if read_again && member.missing_since.is_none() {
                let _ = member.file_tx.try_send(());
            }
        }
        self.settle().await;
    }

    /// After any change: the shared components' deployment brought in line, every deployment
    /// told what the others mean for it, the device's status published.
    async fn settle(&mut self) {
        self.relink();
        self.sync_shared().await;
        self.relink();
        // Gone past the grace with nothing left running (or never anything valid): removed.
        let finished: Vec<String> = (self.members.keys())
            .filter(|n| self.is_gone(n))
            .filter(|n| self.docs.get(*n).is_some_and(removed_all))
            .cloned()
            .collect();
        let left = !finished.is_empty();
        for name in finished {
            self.remove_member(&name).await;
        }
        if left && !self.vetoed.is_empty() {
            let (files, claimed) = std::mem::take(&mut self.last_scan);
            for name in self.judge(&files, &claimed, &[]) {
                if let Some(m) = self.members.get(&name) {
                    let _ = m.file_tx.try_send(());
                }
            }
            self.last_scan = (files, claimed);
            self.relink();
        }
        self.publish();
    }

    /// Runs the shared components once, in the deployment `shared` (its file written by roost
    /// in the state folder); removes it when nothing is shared any more.
    async fn sync_shared(&mut self) {
        let users = graph::shared_users(&self.in_force.borrow(), &self.shared_users);
        if users != self.shared_users {
            self.shared_users = users;
            let bytes = serde_json::to_vec(&self.shared_users).unwrap_or_default();
            if let Err(e) =
                crate::fsutil::write_atomic(&cfg_state_owners(&self.cfg.state_dir), &bytes)
            {
                tracing::warn!(error = %e, "cannot keep the shared components' owners");
            }
        }
        let file = self.cfg.state_dir.join("shared.yaml");
        let synthesized = graph::shared_deployment(&self.in_force.borrow(), &self.shared_users);
        let Some(d) = synthesized else {
            let _ = std::fs::remove_file(&file);
            if let Some(m) = self.members.get_mut(graph::SHARED) {
                m.missing_since.get_or_insert_with(|| {
                    Instant::now()
                        .checked_sub(GRACE)
                        .unwrap_or_else(Instant::now)
                });
            }
            return;
        };
        // JSON is YAML: the loader reads it as any deployment file.
        let text = serde_json::to_vec_pretty(&d).unwrap_or_default();
        if std::fs::read(&file).ok().as_deref() != Some(text.as_slice()) {
            // It holds the shared components' env: values, as last-good.yaml does: root's alone.
            if let Err(e) = crate::fsutil::write_private(&file, &text) {
                tracing::error!(error = %e, "cannot write the shared components' deployment");
                return;
            }
            if let Some(m) = self.members.get(graph::SHARED) {
                let _ = m.file_tx.try_send(());
            }
        }
        match self.members.get_mut(graph::SHARED) {
            Some(m) => m.missing_since = None,
            None => self.start_member(graph::SHARED, file, None).await,
        }
    }

    /// [`Device::update_in_force`] until nothing changes: a file refused for what another said
    /// is judged again once that other is judged (both changed in one scan). Returns the
    /// deployments that must read their unchanged file again.
    fn judge(
        &mut self,
        files: &[(PathBuf, FileContent)],
        claimed: &BTreeMap<String, PathBuf>,
        changed: &[PathBuf],
    ) -> Vec<String> {
        let mut again = self.update_in_force(files, claimed, changed);
        for _ in 0..claimed.len() {
            let more = self.update_in_force(files, claimed, &[]);
            if more.is_empty() {
                break;
            }
            again.extend(more);
        }
        again
    }

    /// What each deployment has in force, as its own loop will judge it: its valid file
    /// unless the other deployments refuse it, else what it had.
    fn update_in_force(
        &mut self,
        files: &[(PathBuf, FileContent)],
        claimed: &BTreeMap<String, PathBuf>,
        changed: &[PathBuf],
    ) -> Vec<String> {
        let mut accepted_again = Vec::new();
        for (name, path) in claimed {
            let known = (self.in_force.borrow().get(name)).is_some_and(|o| &o.file == path);
            let was_refused = self.vetoed.contains(path);
            if known && !was_refused && !changed.contains(path) {
                // Judged when it last changed; only its content changes its verdict.
                continue;
            }
            let Some(FileContent::Valid(d)) = files.iter().find(|(p, _)| p == path).map(|(_, c)| c)
            else {
                continue;
            };
            if graph::veto(name, d, &self.in_force.borrow()).is_some() {
                self.vetoed.insert(path.clone());
                continue;
            }
            self.vetoed.remove(path);
            if was_refused && !changed.contains(path) {
                // Refused for what another file said (a cycle, a second recorder), and that
                // file changed: its deployment must read it again.
                accepted_again.push(name.clone());
            }
            self.in_force.borrow_mut().insert(
                name.clone(),
                InForce {
                    file: path.clone(),
                    deployment: (**d).clone(),
                },
            );
        }
        accepted_again
    }

    /// Starts the loop of deployment `name` read from `file`; `last_good` is what it had in
    /// force when roost last ran (a leftover state folder whose file is gone).
    async fn start_member(&mut self, name: &str, file: PathBuf, gone_since: Option<Instant>) {
        match self.spawn_member(name, file.clone(), gone_since).await {
            Ok(member) => {
                self.members.insert(name.to_string(), member);
            }
            Err(e) => {
                let why = crate::errors::chain(&e);
                tracing::error!(deployment = name, error = %why, "cannot start the deployment's loop");
                self.refusals.push(SpecError {
                    code: crate::errors::RUNTIME_UNREACHABLE.code.to_string(),
                    message: format!(
                        "{}: deployment {name:?} cannot start: {why}",
                        file.display()
                    ),
                    file: file.display().to_string(),
                    line: None,
                    column: None,
                    field: None,
                });
            }
        }
    }

    async fn spawn_member(
        &mut self,
        name: &str,
        file: PathBuf,
        gone_since: Option<Instant>,
    ) -> Result<Member, DeviceError> {
        let state_dir = deployment_state_dir(&self.cfg.state_dir, name);
        make_state_dir(&self.cfg.state_dir, &state_dir);
        remember_file(&state_dir, &file);
        let runtime = self.maker.make(&state_dir).await?;
        let cfg = Config {
            file: file.clone(),
            state_dir,
            exe: self.cfg.exe.clone(),
        };
        let in_force = self.in_force.clone();
        let member_name = name.to_string();
        let veto: crate::desired::Veto = std::sync::Arc::new(move |_: &Path, d| {
            match member_name == graph::SHARED {
                // roost's own file: always consistent with the others.
                true => None,
                false => graph::veto(&member_name, d, &in_force.borrow()),
            }
        });
        let (forward, mut forwarded) = mpsc::unbounded_channel();
        let mut reconciler = Reconciler::new(cfg, runtime)?.in_device(veto, forward);
        let (file_tx, file_rx) = mpsc::channel(1);
        let (hangup_tx, hangup_rx) = mpsc::channel(1);
        let mut links = self.links_for(name);
        // Its first round already knows what the device says (a leftover is gone at once).
        links.gone = gone_since.is_some_and(|t| t + GRACE <= Instant::now());
        let links_gone = links.gone;
        reconciler.set_links(links.clone());
        let (links_tx, links_rx) = watch::channel(links);
        let triggers = reconcile::of_deployment(
            file_rx,
            hangup_rx,
            self.outputs.add(name, &reconciler.output_files()),
            links_rx,
        );
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let status_tx = self.status_tx.clone();
        let tag = name.to_string();
        self.epoch += 1;
        let epoch = self.epoch;
        tokio::task::spawn_local(async move {
            while let Some(doc) = forwarded.recv().await {
                if status_tx.send((tag.clone(), epoch, doc)).is_err() {
                    return;
                }
            }
        });
        let task = tokio::task::spawn_local(async move {
            let stop = async move {
                let _ = stop_rx.await;
            };
            reconcile::drive(&mut reconciler, triggers, stop, || {}).await;
        });
        tracing::info!(deployment = name, file = %file.display(), "deployment started");
        Ok(Member {
            file,
            file_tx,
            hangup_tx,
            links_tx,
            stop: Some(stop_tx),
            task,
            missing_since: gone_since,
            epoch,
            gone_sent: links_gone,
        })
    }

    /// The deployment whose state folder notes `file` as its file, if one does.
    fn owner_of(&self, file: &Path) -> Option<String> {
        let root = self.cfg.state_dir.join("deployments");
        std::fs::read_dir(root).ok()?.flatten().find_map(|e| {
            (remembered_file(&e.path()).as_deref() == Some(file))
                .then(|| e.file_name().to_str().map(str::to_string))
                .flatten()
        })
    }

    /// State folders of deployments no file names any more (removed while roost was down):
    /// each runs once more with nothing desired, so what it left running is removed.
    async fn adopt_leftovers(&mut self) {
        let root = self.cfg.state_dir.join("deployments");
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        let leftovers: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !self.members.contains_key(n))
            .filter(|n| crate::spec::DeploymentName::try_from(n.as_str()).is_ok())
            // A loop that could not start (its runtime) is not a removed deployment.
            .filter(|n| {
                remembered_file(&deployment_state_dir(&self.cfg.state_dir, n))
                    .is_none_or(|f| !f.exists() || n == graph::SHARED)
            })
            .collect();
        for name in leftovers {
            tracing::info!(deployment = %name, "its file is gone: removing what it left");
            let file = self.cfg.dir.join(format!(".{name}.gone"));
            let long_ago = Instant::now()
                .checked_sub(GRACE)
                .unwrap_or_else(Instant::now);
            self.start_member(&name, file, Some(long_ago)).await;
        }
        self.relink();
    }

    async fn wait_first_statuses(&mut self) {
        let deadline = Instant::now() + FIRST_STATUS_WAIT;
        while self.members.keys().any(|n| !self.docs.contains_key(n)) {
            match tokio::time::timeout_at(deadline, self.status_rx.recv()).await {
                Ok(Some((name, epoch, doc))) => {
                    if self.members.get(&name).is_some_and(|m| m.epoch == epoch) {
                        self.docs.insert(name, crate::redact::typed(&doc));
                    }
                }
                _ => break,
            }
        }
        self.relink();
    }

    async fn hangup(&mut self) {
        tracing::info!("SIGHUP: every deployment reads its file again");
        for m in self.members.values() {
            let _ = m.hangup_tx.try_send(());
        }
        self.rescan().await;
    }

    async fn took_status(&mut self, name: String, epoch: u64, doc: StatusDoc) {
        if self.members.get(&name).is_none_or(|m| m.epoch != epoch) {
            // The last word of a loop already removed.
            return;
        }
        let finished = self.is_gone(&name) && removed_all(&doc);
        // Redacted once here: the device's document is written from these parts as they are.
        self.docs.insert(name.clone(), crate::redact::typed(&doc));
        if finished {
            self.remove_member(&name).await;
        }
        self.settle().await;
    }

    fn is_gone(&self, name: &str) -> bool {
        (self.members.get(name))
            .is_some_and(|m| m.missing_since.is_some_and(|t| t + GRACE <= Instant::now()))
    }

    /// A deployment whose file is gone and whose components are all removed: its loop ends,
    /// its state folder goes, it leaves the status.
    async fn remove_member(&mut self, name: &str) {
        let Some(mut member) = self.members.remove(name) else {
            return;
        };
        if let Some(stop) = member.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut member.task).await;
        self.docs.remove(name);
        self.outputs.remove(name);
        self.in_force.borrow_mut().remove(name);
        let dir = deployment_state_dir(&self.cfg.state_dir, name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot remove a removed deployment's state folder");
        }
        tracing::info!(deployment = name, "deployment removed (its file is gone)");
    }

    fn links_for(&self, name: &str) -> Links {
        let in_force = self.in_force.borrow();
        let mut links = match in_force.get(name) {
            Some(o) => graph::links_of(&o.deployment, &in_force, &self.docs, &self.last_exports),
            None => Links::default(),
        };
        links.gone = self.is_gone(name);
        links.runs_shared = name == graph::SHARED;
        links.file = self.members.get(name).map(|m| m.file.clone());
        links
    }

    /// Tells every deployment what the others mean for it now (only changes wake it).
    fn relink(&mut self) {
        let gone: Vec<String> = (self.members.keys())
            .filter(|n| self.is_gone(n))
            .cloned()
            .collect();
        for name in &gone {
            // A deployment being removed offers nothing to others any more.
            self.in_force.borrow_mut().remove(name);
        }
        for (name, o) in self.in_force.borrow().iter() {
            self.last_exports
                .insert(name.clone(), o.deployment.exported_env());
        }
        let names: Vec<String> = self.members.keys().cloned().collect();
        for name in names {
            let links = self.links_for(&name);
            let Some(member) = self.members.get_mut(&name) else {
                continue;
            };
            member.gone_sent = links.gone;
            member.links_tx.send_if_modified(|l| {
                let changed = *l != links;
                *l = links;
                changed
            });
        }
    }

    fn next_grace_end(&self) -> Option<Instant> {
        (self.members.values())
            .filter(|m| !m.gone_sent)
            .filter_map(|m| m.missing_since.map(|t| t + GRACE))
            .min()
    }

    fn publish(&mut self) {
        let doc = summary::device_doc(
            &self.docs,
            &self.members_files(),
            &self.refusals,
            &self.shared_users,
            jiff::Timestamp::now(),
        );
        let mut doc = doc;
        doc.remote = self.remote.as_ref().and_then(|l| l.current());
        if self.last.as_ref().is_some_and(|l| l.same_content(&doc)) {
            return;
        }
        self.last = Some(doc.clone());
        if let Some(link) = &self.remote {
            link.docs
                .send_replace(Some(std::sync::Arc::new(doc.clone())));
        }
        self.publishers.publish(doc);
    }

    fn members_files(&self) -> BTreeMap<String, String> {
        (self.members.iter())
            .map(|(n, m)| (n.clone(), m.file.display().to_string()))
            .collect()
    }

    async fn stop_all(&mut self) {
        let mut members = std::mem::take(&mut self.members);
        // Dependents first, as within a deployment: each round stops (together) the
        // deployments no remaining one depends on; users of shared components before `shared`.
        while !members.is_empty() {
            let wave = graph::stop_wave(
                &members.keys().cloned().collect::<Vec<_>>(),
                &self.in_force.borrow(),
            );
            let mut stopping = Vec::new();
            for name in wave {
                if let Some(mut m) = members.remove(&name) {
                    if let Some(stop) = m.stop.take() {
                        let _ = stop.send(());
                    }
                    stopping.push(m);
                }
            }
            for mut m in stopping {
                let _ = (&mut m.task).await;
            }
        }
        // The loops' last words (each forwarder hands them on when its loop has ended).
        tokio::task::yield_now().await;
        while let Ok((name, _, doc)) = self.status_rx.try_recv() {
            if self.docs.contains_key(&name) {
                self.docs.insert(name, crate::redact::typed(&doc));
            }
        }
        self.publish();
        self.publishers.flush(Duration::from_secs(5));
    }
}

/// Delivers the folder watcher's changes through a channel, from a task of its own.
fn forward_changes(mut watcher: crate::watch::FileWatcher) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    tokio::task::spawn_local(async move {
        loop {
            watcher.changed().await;
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The deployment file a deployment's state folder belongs to, kept in the folder (`file`):
/// a file refused when roost starts is still known as this deployment's (its last valid
/// state runs), never taken for a removed one.
fn remember_file(state_dir: &Path, file: &Path) {
    let record = state_dir.join("file");
    let text = file.display().to_string();
    if std::fs::read_to_string(&record).ok().as_deref() != Some(text.as_str())
        && let Err(e) = crate::fsutil::write_atomic(&record, text.as_bytes())
    {
        tracing::warn!(error = %e, "cannot note a deployment's file");
    }
}

/// The deployment file noted in a deployment's state folder, if any.
fn remembered_file(state_dir: &Path) -> Option<PathBuf> {
    std::fs::read_to_string(state_dir.join("file"))
        .ok()
        .map(PathBuf::from)
}

/// A gone deployment's loop is done: nothing desired, nothing left running or failing to
/// stop (Stopped; PartiallyDeprovisioned while a stop fails), the runtime answering.
fn removed_all(doc: &StatusDoc) -> bool {
    // A loop that never had a valid file in force (refused from the start) started nothing.
    let never_desired = doc.deployment.is_none() && doc.generation == 0;
    (doc.phase == crate::status::Phase::Stopped || never_desired)
        && doc.status != crate::status::OverallStatus::Unknown
        && doc.components.is_empty()
}

/// `<state>/shared-owners.json`: who declares each shared component, first declarer first.
fn cfg_state_owners(state_dir: &Path) -> PathBuf {
    state_dir.join("shared-owners.json")
}

/// Whether `file` now holds a valid deployment other than `name`.
fn claims_other(files: &[(PathBuf, FileContent)], file: &Path, name: &str) -> bool {
    (files.iter())
        .any(|(p, c)| p == file && matches!(c, FileContent::Valid(d) if d.name().as_str() != name))
}

/// A file of the folder roost does not apply, and why.
fn refusal(path: &Path, why: String) -> SpecError {
    SpecError {
        code: crate::errors::INVALID_SPEC.code.to_string(),
        message: format!("{}: metadata.name: {why}", path.display()),
        file: path.display().to_string(),
        line: None,
        column: None,
        field: Some("metadata.name".into()),
    }
}

fn duplicate(path: &Path, first: &Path, name: &str) -> SpecError {
    SpecError {
        code: crate::errors::INVALID_SPEC.code.to_string(),
        message: format!(
            "{}: metadata.name: deployment {name:?} is already declared by {}; each deployment has one file: rename one (metadata.name) or remove one. This file is not applied.",
            path.display(),
            first.display()
        ),
        file: path.display().to_string(),
        line: None,
        column: None,
        field: Some("metadata.name".into()),
    }
}

/// A deployment's state folder, with the owner, group and mode of the state folder (the
/// built-ins' user reads and writes there under the package).
fn make_state_dir(state_root: &Path, dir: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for d in [dir.parent().unwrap_or(dir), dir] {
        if std::fs::create_dir_all(d).is_err() {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(state_root) {
            let _ =
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(meta.mode() & 0o7777));
            let _ = nix::unistd::chown(d, Some(meta.uid().into()), Some(meta.gid().into()));
        }
    }
}
