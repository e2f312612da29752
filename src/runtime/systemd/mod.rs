//! The systemd runtime: one unit per component, written to roost's unit folder and driven and
//! observed over D-Bus (zbus). It never shells out to `systemctl` and never polls: a watcher
//! task keeps a cache of unit properties up to date from `PropertiesChanged`, so an observe
//! when nothing changed makes no D-Bus call. Roost only changes or removes unit files that carry
//! its marker line.
//!
//! - [`unit`]: rendering and escaping the unit file, the marker.
//! - [`names`]: unit names and object paths.
//! - [`dbus`]: hand-written proxies.
//! - [`state`]: unit properties -> [`ObservedState`](crate::runtime::ObservedState).
//! - `watcher`: the signal task (connection life, cache, events).
//! - [`notify`]: sd_notify for roost's own unit.

pub mod dbus;
pub mod hardening;
pub mod names;
/// sd_notify is used under any runtime; kept here under its old path too.
pub use crate::sd_notify;
pub mod state;
pub mod unit;

/// The folder (under the unit folder, mode 0700) of the components' environment files.
pub const ENV_DIR: &str = "roost-env";
mod watcher;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use zbus::message::Sequence;
use zbus::{Connection, OwnedVariant};

use crate::runtime::{
    ComponentRun, Lost, Observation, ObservedComponent, Runtime, RuntimeError, RuntimeEvent,
};
use crate::spec::RestartPolicy;
use state::{ActiveState, CLD_EXITED, EXIT_EXEC, Memory, UnitProps};
use unit::UnitOptions;
use watcher::{Entry, Link, SharedRef, lock};

/// Every D-Bus call gives up after this; a manager that does not answer is unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A start or restart job may wait behind a stop: the stop timeout plus this.
const JOB_MARGIN: Duration = Duration::from_secs(30);
/// `spec_hash` reported for a unit whose file was changed by hand: never equal to a real hash,
/// so the reconciler rewrites it.
pub const EDITED_SPEC_HASH: &str = "edited-by-hand";
/// `spec_hash` reported for a unit that still runs but whose file was deleted.
pub const MISSING_SPEC_HASH: &str = "unit-file-missing";

/// Which manager roost drives, and where its unit files go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SystemdTarget {
    /// The system manager on the system bus; units in `/etc/systemd/system`.
    System,
    /// The calling user's manager on the session bus; units in `$XDG_CONFIG_HOME/systemd/user`.
    User,
    /// A user manager on an explicit bus (tests: `unix:path=$DIR/xdg/bus`), with its unit folder.
    Address {
        /// D-Bus address of the manager's bus, e.g. `unix:path=/run/user/1000/bus`.
        bus_address: String,
        /// Folder the manager loads unit files from; roost writes its units there.
        unit_dir: PathBuf,
    },
}

impl SystemdTarget {
    /// Where roost writes unit files for this manager.
    pub fn unit_dir(&self) -> PathBuf {
        match self {
            Self::System => PathBuf::from("/etc/systemd/system"),
            Self::User => std::env::var_os("XDG_CONFIG_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                .unwrap_or_else(|| PathBuf::from(".config"))
                .join("systemd/user"),
            Self::Address { unit_dir, .. } => unit_dir.clone(),
        }
    }

    /// A folder the manager's runtime lives in (cleared at reboot) for roost's marks of
    /// operator stops: `/run/roost` for the system manager, `$XDG_RUNTIME_DIR/roost` for a user
    /// manager (for an explicit bus `unix:path=DIR/bus`: `DIR/roost`).
    pub fn runtime_dir(&self) -> Option<PathBuf> {
        match self {
            Self::System => Some(PathBuf::from("/run/roost")),
            Self::User => std::env::var_os("XDG_RUNTIME_DIR")
                .filter(|v| !v.is_empty())
                .map(|d| PathBuf::from(d).join("roost")),
            Self::Address { bus_address, .. } => bus_address
                .strip_prefix("unix:path=")
                .map(|rest| rest.split(',').next().unwrap_or(rest))
                .and_then(|socket| Path::new(socket).parent().map(|d| d.join("roost"))),
        }
    }

    fn wanted_by(&self) -> &'static str {
        match self {
            Self::System => "multi-user.target",
            Self::User | Self::Address { .. } => "default.target",
        }
    }
}

pub(crate) async fn open_connection(target: &SystemdTarget) -> zbus::Result<Connection> {
    let builder = match target {
        SystemdTarget::System => zbus::connection::Builder::system(),
        SystemdTarget::User => zbus::connection::Builder::session(),
        SystemdTarget::Address { bus_address, .. } => {
            zbus::connection::Builder::address(bus_address.as_str())
        }
    };
    builder.method_timeout(CALL_TIMEOUT).build().await
}

/// The major version in systemd's `Version` property (`"252.38-1~deb12u1"` -> 252); 0 if unknown.
pub fn parse_version(version: &str) -> u32 {
    let digits: String = version
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap_or(0)
}

/// Whether a manager answers on `target`'s bus within `within` (for `--runtime auto`).
pub async fn probe(target: &SystemdTarget, within: Duration) -> bool {
    let answer = async {
        let conn = open_connection(target).await?;
        dbus::manager_proxy(&conn).await?.version().await
    };
    matches!(tokio::time::timeout(within, answer).await, Ok(Ok(_)))
}

/// Components as units of a systemd manager.
pub struct SystemdRuntime {
    unit_dir: PathBuf,
    wanted_by: &'static str,
    /// Units go into their deployment's slice (`roost run --dir`).
    deployment_slices: bool,
    shared: SharedRef,
    events: mpsc::UnboundedReceiver<RuntimeEvent>,
    watcher: tokio::task::JoinHandle<()>,
    dbus_calls: u64,
}

impl Drop for SystemdRuntime {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[derive(Clone, Copy, Debug)]
enum JobKind {
    Start,
    Restart,
    Stop,
}

impl SystemdRuntime {
    /// Roost's own job on `unit` is over: signals about it are news again, and the unit is
    /// read afresh at the next observe.
    fn roost_job_done(&self, unit: &str) {
        let mut s = lock(&self.shared);
        s.roost_busy.remove(unit);
        if let Some(entry) = s.units.get_mut(unit) {
            entry.dirty = true;
        }
    }

    /// Connects to the manager, subscribes to its signals and starts watching. Fails when no
    /// manager answers; after that, losing it is reported as [`RuntimeEvent::Unreachable`] and
    /// the watcher reconnects with back-off.
    pub async fn connect(target: SystemdTarget) -> Result<Self, RuntimeError> {
        let conn = open_connection(&target).await.map_err(|source| {
            let what = "cannot connect to the systemd manager's bus";
            RuntimeError::Unreachable(Lost::bus(what, source))
        })?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let shared = SharedRef::default();
        {
            let mut s = lock(&shared);
            s.marks_dir = target.runtime_dir().map(|d| d.join("operator-stopped"));
            s.load_marks();
        }
        let unit_dir = target.unit_dir();
        let wanted_by = target.wanted_by();
        let watcher = tokio::spawn(watcher::run(
            target,
            conn,
            shared.clone(),
            events_tx,
            ready_tx,
        ));
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Err(RuntimeError::Unreachable(Lost::from(format!(
                    "systemd manager: {reason}"
                ))));
            }
            Err(_) => return Err(RuntimeError::Unreachable("systemd watcher stopped".into())),
        }
        Ok(Self {
            unit_dir,
            wanted_by,
            deployment_slices: false,
            shared,
            events,
            watcher,
            dbus_calls: 0,
        })
    }

    /// Puts every unit it writes into its deployment's slice (`roost run --dir`).
    pub fn with_deployment_slices(mut self) -> Self {
        self.deployment_slices = true;
        self
    }

    /// Where this runtime writes unit files.
    pub fn unit_dir(&self) -> &Path {
        &self.unit_dir
    }

    /// The manager's major version (252 on Debian 12), when connected.
    pub fn manager_version(&self) -> Option<u32> {
        lock(&self.shared).link.as_ref().map(|l| l.version)
    }

    /// D-Bus method calls this runtime made so far (the watcher's subscriptions not counted).
    pub fn dbus_calls(&self) -> u64 {
        self.dbus_calls
    }

    /// The current bus connection, when connected (tests read unit properties through it).
    pub fn connection(&self) -> Option<Connection> {
        lock(&self.shared).link.as_ref().map(|l| l.conn.clone())
    }

    /// The unit name roost gives a component.
    pub fn unit_name(deployment: &str, component: &str) -> String {
        names::unit_name(deployment, component)
    }

    fn link(&self) -> Result<Link, RuntimeError> {
        lock(&self.shared)
            .link
            .clone()
            .ok_or_else(|| RuntimeError::Unreachable("the systemd manager is not reachable".into()))
    }

    fn options(&self, link: &Link) -> UnitOptions {
        UnitOptions {
            wanted_by: self.wanted_by,
            restart_steps: link.version >= 254,
            privileged: self.wanted_by == "multi-user.target" || nix::unistd::geteuid().is_root(),
            deployment_slice: self.deployment_slices,
        }
    }

    /// Where the environment of `unit` is kept: `<unit folder>/roost-env/<unit>.env`, 0600.
    pub fn env_file(&self, unit: &str) -> PathBuf {
        self.unit_dir.join(ENV_DIR).join(format!("{unit}.env"))
    }

    /// Writes (or removes, when `run` has none) the environment file of `unit`, only when its
    /// content changes.
    fn write_env_file(&self, unit: &str, run: &ComponentRun) -> Result<(), RuntimeError> {
        let path = self.env_file(unit);
        if run.env.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(RuntimeError::io(format!("removing {}", path.display()), e))
                }
                _ => Ok(()),
            };
        }
        let text = hardening::environment_file(&run.env).map_err(|message| {
            RuntimeError::InvalidValue {
                name: run.name.to_string(),
                message,
            }
        })?;
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let dir = self.unit_dir.join(ENV_DIR);
        std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .and_then(|()| crate::fsutil::write_private(&path, text.as_bytes()))
            .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))
    }

    /// Reads the unit's properties (two `GetAll` calls) with the receive position of the replies.
    async fn fetch(
        &mut self,
        link: &Link,
        unit: &str,
    ) -> Result<(UnitProps, Sequence), RuntimeError> {
        let proxy: zbus::Proxy<'_> = zbus::proxy::Builder::new(&link.conn)
            .destination(dbus::SERVICE)
            .path(names::unit_object_path(unit))
            .interface("org.freedesktop.DBus.Properties")
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| dbus_error(unit, "building a proxy", e))?;
        let mut props = UnitProps::default();
        let mut seq = None;
        for interface in [dbus::UNIT_INTERFACE, dbus::SERVICE_INTERFACE] {
            self.dbus_calls += 1;
            let reply = proxy
                .call_method("GetAll", &(interface,))
                .await
                .map_err(|e| dbus_error(unit, "reading unit properties", e))?;
            let values: HashMap<String, OwnedVariant> = reply
                .body()
                .deserialize()
                .map_err(|e| dbus_error(unit, "reading unit properties", e))?;
            props.merge(&values);
            let at = reply.recv_position();
            seq = Some(seq.map_or(at, |s: Sequence| s.min(at)));
        }
        Ok((props, seq.unwrap_or_default()))
    }

    /// Fetches and stores in the cache; pins the unit first (once per connection).
    async fn refresh(&mut self, link: &Link, unit: &str) -> Result<UnitProps, RuntimeError> {
        if !lock(&self.shared).referenced.contains(unit) {
            self.dbus_calls += 1;
            let path = zbus::OwnedObjectPath::try_from(names::unit_object_path(unit))
                .map_err(|e| dbus_error(unit, "naming the unit object", e))?;
            let pinned = match dbus::unit_proxy(&link.conn, path).await {
                Ok(proxy) => proxy.ref_unit().await,
                Err(e) => Err(e),
            };
            match pinned {
                Ok(()) => {
                    lock(&self.shared).referenced.insert(unit.to_string());
                }
                Err(e) => tracing::debug!(%unit, error = %e, "could not pin the unit"),
            }
        }
        let (props, seq) = self.fetch(link, unit).await?;
        if let Some(entry) = lock(&self.shared).units.get_mut(unit) {
            entry.props = Some(props.clone());
            entry.fetched_at = seq;
            entry.dirty = entry.signal_at > seq;
        }
        Ok(props)
    }

    /// Queues a job and waits for its `JobRemoved`; returns the job result (`done`, `failed`,
    /// `canceled`, `timeout`, ...). The signal stream is open before the call.
    async fn run_job(
        &mut self,
        link: &Link,
        unit: &str,
        kind: JobKind,
        wait: Duration,
    ) -> Result<String, RuntimeError> {
        let mut removed = link
            .manager
            .receive_job_removed()
            .await
            .map_err(|e| dbus_error(unit, "watching jobs", e))?;
        self.dbus_calls += 1;
        let job = match kind {
            JobKind::Start => link.manager.start_unit(unit, "replace").await,
            JobKind::Restart => link.manager.restart_unit(unit, "replace").await,
            JobKind::Stop => link.manager.stop_unit(unit, "replace").await,
        };
        let job = match job {
            Ok(job) => job,
            Err(e) if kind_is_stop(kind) && is_no_such_unit(&e) => return Ok("done".into()),
            Err(e) => return Err(dbus_error(unit, &format!("{kind:?} job"), e)),
        };
        let waited = tokio::time::timeout(wait, async {
            while let Some(signal) = removed.next().await {
                if let Ok(args) = signal.args()
                    && args.job().as_str() == job.as_str()
                {
                    return Some((args.result().to_string(), signal.message().recv_position()));
                }
            }
            None
        })
        .await;
        match waited {
            Ok(Some((result, seq))) => {
                lock(&self.shared)
                    .roost_jobs_until
                    .insert(unit.to_string(), seq);
                Ok(result)
            }
            Ok(None) => Err(RuntimeError::Unreachable(
                "bus connection closed while waiting for a job".into(),
            )),
            Err(_) => Err(RuntimeError::Component {
                name: unit.to_string(),
                message: format!("{kind:?} job did not finish within {wait:?}"),
            }),
        }
    }

    async fn start_inner(
        &mut self,
        link: &Link,
        run: &ComponentRun,
        unit: &str,
        text: &str,
    ) -> Result<(), RuntimeError> {
        let path = self.unit_dir.join(unit);
        let existing = read_optional(&path)?;
        check_owned(
            existing.as_deref(),
            &path,
            &run.deployment,
            run.name.as_str(),
        )?;
        // Before the unit is (re)loaded: the manager reads it when the unit starts.
        self.write_env_file(unit, run)?;
        let before = self.refresh(link, unit).await?;
        let file_changed = existing.as_deref() != Some(text);
        let load = match Prepare::classify(file_changed, &before) {
            // It already runs this very unit.
            Prepare::Adopt => return Ok(()),
            Prepare::Nothing => Reread::Nothing,
            Prepare::Reload => Reread::Reload,
            Prepare::WriteThen(load) => {
                self.write_unit_file(&path, text)?;
                load
            }
        };
        self.set_enablement(link, unit, run.restart_policy).await?;
        self.load(link, unit, load).await?;
        let props = self.refresh(link, unit).await?;
        if props.load_state != "loaded" {
            return Err(RuntimeError::Component {
                name: run.name.to_string(),
                message: format!(
                    "unit {unit} did not load (load state {:?}); see the manager's log",
                    props.load_state
                ),
            });
        }
        let kind = self.start_job(link, unit, &props.active_state).await?;
        let result = self
            .run_job(link, unit, kind, run.stop_timeout + JOB_MARGIN)
            .await?;
        if result == "done" {
            return Ok(());
        }
        let props = self.refresh(link, unit).await?;
        start_job_failed(run, unit, &result, &props)
    }

    /// The job that starts the unit from `state`.
    async fn start_job(
        &mut self,
        link: &Link,
        unit: &str,
        state: &ActiveState,
    ) -> Result<JobKind, RuntimeError> {
        Ok(match state {
            ActiveState::Active
            | ActiveState::Reloading
            | ActiveState::Activating
            | ActiveState::Deactivating => JobKind::Restart,
            ActiveState::Failed => {
                // Also resets the start-limit counter.
                self.dbus_calls += 1;
                link.manager
                    .reset_failed_unit(unit)
                    .await
                    .map_err(|e| dbus_error(unit, "resetting the failed state", e))?;
                JobKind::Start
            }
            ActiveState::Inactive
            | ActiveState::Maintenance
            | ActiveState::Refreshing
            | ActiveState::Other(_) => JobKind::Start,
        })
    }

    fn write_unit_file(&self, path: &Path, text: &str) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(&self.unit_dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", self.unit_dir.display()), e))?;
        crate::fsutil::write_atomic(path, text.as_bytes())
            .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))
    }

    /// Enablement only matters at the next boot, when every file is read anyway: it needs no
    /// reload.
    async fn set_enablement(
        &mut self,
        link: &Link,
        unit: &str,
        policy: RestartPolicy,
    ) -> Result<(), RuntimeError> {
        self.dbus_calls += 1;
        if policy == RestartPolicy::Always {
            link.manager
                .enable_unit_files(&[unit], false, true)
                .await
                .map(|_| ())
        } else {
            link.manager
                .disable_unit_files(&[unit], false)
                .await
                .map(|_| ())
        }
        .map_err(|e| dbus_error(unit, "enabling or disabling", e))
    }

    async fn load(&mut self, link: &Link, unit: &str, load: Reread) -> Result<(), RuntimeError> {
        match load {
            Reread::Nothing => Ok(()),
            Reread::Reload => {
                self.dbus_calls += 1;
                link.manager
                    .reload()
                    .await
                    .map_err(|e| dbus_error(unit, "reloading", e))
            }
            Reread::LoadUnit => {
                self.dbus_calls += 1;
                link.manager
                    .load_unit(unit)
                    .await
                    .map(|_| ())
                    .map_err(|e| dbus_error(unit, "loading", e))
            }
        }
    }

    async fn stop_inner(
        &mut self,
        link: &Link,
        unit: &str,
        (deployment, component): (&str, &str),
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let path = self.unit_dir.join(unit);
        let existing = read_optional(&path)?;
        check_owned(existing.as_deref(), &path, deployment, component)?;
        if existing.is_some() {
            // Stopped by roost means not started at boot either.
            self.dbus_calls += 1;
            link.manager
                .disable_unit_files(&[unit], false)
                .await
                .map_err(|e| dbus_error(unit, "disabling", e))?;
        }
        let result = self
            .run_job(link, unit, JobKind::Stop, timeout + JOB_MARGIN)
            .await?;
        if result == "done" {
            Ok(())
        } else {
            Err(RuntimeError::Component {
                name: unit.to_string(),
                message: format!("stop job ended {result:?}"),
            })
        }
    }

    /// Unit files of `deployment` in the unit folder, by marker.
    fn scan(&self, deployment: &str) -> Result<BTreeMap<String, unit::Marker>, RuntimeError> {
        let prefix = names::deployment_prefix(deployment);
        let mut found = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.unit_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("listing {}", self.unit_dir.display()),
                    e,
                ));
            }
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with(&prefix) || !name.ends_with(names::UNIT_SUFFIX) {
                continue;
            }
            let Some(text) = read_optional(&entry.path())? else {
                continue;
            };
            if let Some(marker) = unit::parse_marker(&text)
                && marker.deployment == deployment
                && names::unit_name(deployment, &marker.component) == name
            {
                found.insert(name, marker);
            }
        }
        Ok(found)
    }
}

/// How the manager comes to read a unit file roost wrote or found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reread {
    Nothing,
    /// The whole manager re-reads every file (tens of ms): the only way for a unit it holds.
    Reload,
    /// The manager reads this one file: enough for a unit it never loaded.
    LoadUnit,
}

/// What a start does before its job, from the unit file and the manager's copy of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prepare {
    /// The manager already runs this very unit.
    Adopt,
    /// File and manager agree: only the job is needed.
    Nothing,
    /// The manager holds an older copy of an unchanged file (written but never reloaded, or
    /// reloaded while edited by hand and put back since).
    Reload,
    /// The file changes: write it, then have the manager read it.
    WriteThen(Reread),
}

impl Prepare {
    fn classify(file_changed: bool, before: &UnitProps) -> Self {
        let manager_stale = before.load_state != "loaded" || before.need_daemon_reload;
        // A unit the manager never loaded (or only as not-found, and not running) is read from
        // disk by `LoadUnit`; only a unit it holds in memory needs `Reload`.
        let unknown_to_manager =
            before.load_state == "not-found" && before.active_state == ActiveState::Inactive;
        let up = match before.active_state {
            ActiveState::Active | ActiveState::Reloading | ActiveState::Activating => true,
            ActiveState::Inactive
            | ActiveState::Failed
            | ActiveState::Deactivating
            | ActiveState::Maintenance
            | ActiveState::Refreshing
            | ActiveState::Other(_) => false,
        };
        match (file_changed, manager_stale, unknown_to_manager, up) {
            (false, false, _, true) => Self::Adopt,
            (false, false, _, false) | (false, true, true, _) => Self::Nothing,
            (false, true, false, _) => Self::Reload,
            (true, _, false, _) => Self::WriteThen(Reread::Reload),
            (true, _, true, _) => Self::WriteThen(Reread::LoadUnit),
        }
    }
}

/// How a start job that did not end `done` ended, told from the unit's properties after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JobEnd {
    /// systemd could not execute the program (203/EXEC).
    NotExecutable,
    /// It ran and exited before the job finished: an exit (reported as one by the watcher and
    /// by observe), not a failure to start.
    RanAndExited,
    /// It never ran, or systemd's set-up before the program failed (statuses 200-243).
    Failed,
}

impl JobEnd {
    fn classify(props: &UnitProps) -> Self {
        let exited = props.exec_main_code == CLD_EXITED;
        let setup_failed = exited && (200..=243).contains(&props.exec_main_status);
        let ran = props.exec_main_start_us != 0;
        match (
            exited && props.exec_main_status == EXIT_EXEC,
            setup_failed,
            ran,
        ) {
            (true, _, _) => Self::NotExecutable,
            (false, false, true) => Self::RanAndExited,
            (false, true, _) | (false, false, false) => Self::Failed,
        }
    }
}

fn start_job_failed(
    run: &ComponentRun,
    unit: &str,
    result: &str,
    props: &UnitProps,
) -> Result<(), RuntimeError> {
    match JobEnd::classify(props) {
        JobEnd::NotExecutable => Err(RuntimeError::ExecutableNotFound {
            program: run.command.program().to_string(),
            reason: "systemd could not execute it (status 203/EXEC)".into(),
        }),
        JobEnd::RanAndExited => Ok(()),
        JobEnd::Failed => Err(RuntimeError::Component {
            name: run.name.to_string(),
            message: format!(
                "start job of {unit} ended {result:?} (state {}/{}, result {}, status {}; statuses 200-243 are systemd.exec(5) set-up errors)",
                props.active_state, props.sub_state, props.result, props.exec_main_status
            ),
        }),
    }
}

fn kind_is_stop(kind: JobKind) -> bool {
    matches!(kind, JobKind::Stop)
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

/// A lost bus or manager is `Unreachable`; anything else is about the unit.
fn dbus_error(unit: &str, doing: &str, e: zbus::Error) -> RuntimeError {
    let lost = match &e {
        zbus::Error::InputOutput(_) => true,
        zbus::Error::MethodError(name, _, _) => matches!(
            name.as_str(),
            "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NoReply"
                | "org.freedesktop.DBus.Error.Disconnected"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
        ),
        _ => false,
    };
    if lost {
        RuntimeError::Unreachable(Lost::bus(format!("{doing} {unit}"), e))
    } else {
        RuntimeError::Bus {
            name: unit.to_string(),
            doing: doing.to_string(),
            source: e,
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, RuntimeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io(format!("reading {}", path.display()), e)),
    }
}

impl Runtime for SystemdRuntime {
    fn kind(&self) -> &'static str {
        "systemd"
    }

    fn restarts_itself(&self) -> bool {
        true
    }

    async fn observe(&mut self, deployment: &str) -> Result<Observation, RuntimeError> {
        let link = self.link()?;
        let files = self.scan(deployment)?;
        let mut candidates: BTreeMap<String, (String, String, bool)> = files
            .into_iter()
            .map(|(unit, m)| {
                let hash = if m.intact {
                    m.spec_hash
                } else {
                    EDITED_SPEC_HASH.to_string()
                };
                (unit, (m.component, hash, true))
            })
            .collect();
        {
            let mut s = lock(&self.shared);
            for (unit, entry) in &s.units {
                if entry.deployment == deployment && !candidates.contains_key(unit) {
                    candidates.insert(
                        unit.clone(),
                        (
                            entry.component.clone(),
                            MISSING_SPEC_HASH.to_string(),
                            false,
                        ),
                    );
                }
            }
            for (unit, (component, _, _)) in &candidates {
                s.units
                    .entry(unit.clone())
                    .or_insert_with(|| Entry::new(deployment, component));
            }
        }
        let mut observation = Observation::new();
        for (unit, (component, spec_hash, has_file)) in candidates {
            let cached = {
                let s = lock(&self.shared);
                s.units
                    .get(&unit)
                    .filter(|e| !e.dirty)
                    .and_then(|e| e.props.clone())
            };
            let props = match cached {
                Some(props) => props,
                None => self.refresh(&link, &unit).await?,
            };
            let mut s = lock(&self.shared);
            if !has_file
                && props.load_state == "not-found"
                && matches!(
                    props.active_state,
                    ActiveState::Inactive | ActiveState::Failed
                )
            {
                // Gone entirely (file deleted and the unit stopped): forget it.
                s.units.remove(&unit);
                continue;
            }
            if props.active_state == ActiveState::Active {
                // Running again (started by hand, or at boot): an old stop no longer holds.
                s.clear_operator_stop(&unit);
            }
            let memory = Memory {
                roost_stopped: s.roost_stopped.contains(&unit),
                operator_stopped: s.operator_stopped.contains(&unit),
            };
            observation.insert(
                component,
                ObservedComponent {
                    state: state::classify(&props, memory),
                    spec_hash: Some(spec_hash),
                    runtime_restarts: props.n_restarts,
                    stop_timeout: None,
                },
            );
        }
        Ok(observation)
    }

    async fn start(&mut self, run: &ComponentRun) -> Result<(), RuntimeError> {
        let link = self.link()?;
        let unit = names::unit_name(&run.deployment, run.name.as_str());
        let text = unit::render(run, &self.options(&link), &self.env_file(&unit))?;
        {
            let mut s = lock(&self.shared);
            s.units
                .entry(unit.clone())
                .or_insert_with(|| Entry::new(&run.deployment, run.name.as_str()));
            s.roost_stopped.remove(&unit);
            s.clear_operator_stop(&unit);
            s.roost_busy.insert(unit.clone());
        }
        let result = self.start_inner(&link, run, &unit, &text).await;
        self.roost_job_done(&unit);
        result
    }

    async fn stop(
        &mut self,
        deployment: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let link = self.link()?;
        let unit = names::unit_name(deployment, name);
        {
            let mut s = lock(&self.shared);
            s.roost_busy.insert(unit.clone());
            s.roost_stopped.insert(unit.clone());
            s.clear_operator_stop(&unit);
        }
        let result = self
            .stop_inner(&link, &unit, (deployment, name), timeout)
            .await;
        self.roost_job_done(&unit);
        result
    }

    async fn remove(
        &mut self,
        deployment: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let link = self.link()?;
        let unit = names::unit_name(deployment, name);
        let path = self.unit_dir.join(&unit);
        let existing = read_optional(&path)?;
        check_owned(existing.as_deref(), &path, deployment, name)?;
        self.stop(deployment, name, timeout).await?;
        if existing.is_some() {
            std::fs::remove_file(&path)
                .map_err(|e| RuntimeError::io(format!("removing {}", path.display()), e))?;
            let _ = std::fs::remove_file(self.env_file(&unit));
            if let Ok(dir) = std::fs::File::open(&self.unit_dir) {
                let _ = dir.sync_all();
            }
            self.dbus_calls += 1;
            link.manager
                .reload()
                .await
                .map_err(|e| dbus_error(&unit, "reloading", e))?;
        }
        // Drops a `failed` state so the unit is forgotten by the manager too; absent is fine.
        self.dbus_calls += 1;
        let _ = link.manager.reset_failed_unit(&unit).await;
        let mut s = lock(&self.shared);
        s.units.remove(&unit);
        s.roost_stopped.remove(&unit);
        s.clear_operator_stop(&unit);
        Ok(())
    }

    async fn next_event(&mut self) -> RuntimeEvent {
        match self.events.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }
}

/// Roost changes a unit file only when its marker names this very deployment and component:
/// unit names alone are ambiguous (`roost-a-b-c` is `a`/`b-c` or `a-b`/`c`), and a file without
/// a marker was written by someone else.
fn check_owned(
    existing: Option<&str>,
    path: &Path,
    deployment: &str,
    component: &str,
) -> Result<(), RuntimeError> {
    let Some(text) = existing else { return Ok(()) };
    let refuse = |why: String| {
        Err(RuntimeError::Component {
            name: component.to_string(),
            message: format!(
                "{}: {why}; roost leaves it alone: move it away",
                path.display()
            ),
        })
    };
    match unit::parse_marker(text) {
        None => refuse("exists and was not written by roost (no marker line)".into()),
        Some(m) if m.deployment != deployment || m.component != component => refuse(format!(
            "belongs to deployment {:?} component {:?}",
            m.deployment, m.component
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(load_state: &str, active: &str, need_daemon_reload: bool) -> UnitProps {
        UnitProps {
            load_state: load_state.into(),
            active_state: ActiveState::parse(active),
            need_daemon_reload,
            ..UnitProps::default()
        }
    }

    #[test]
    fn a_start_prepares_by_the_file_and_the_managers_copy() {
        use Prepare::*;
        let table = [
            (false, props("loaded", "active", false), Adopt),
            (false, props("loaded", "activating", false), Adopt),
            (false, props("loaded", "failed", false), Nothing),
            (false, props("loaded", "active", true), Reload),
            (false, props("not-found", "active", false), Reload),
            (false, props("not-found", "inactive", false), Nothing),
            (
                true,
                props("loaded", "active", false),
                WriteThen(Reread::Reload),
            ),
            (
                true,
                props("not-found", "failed", false),
                WriteThen(Reread::Reload),
            ),
            (
                true,
                props("not-found", "inactive", false),
                WriteThen(Reread::LoadUnit),
            ),
        ];
        for (file_changed, before, want) in table {
            assert_eq!(Prepare::classify(file_changed, &before), want, "{before:?}");
        }
    }

    #[test]
    fn a_start_job_that_failed_is_told_apart() {
        let ended = |code, status, start_us| UnitProps {
            exec_main_code: code,
            exec_main_status: status,
            exec_main_start_us: start_us,
            ..UnitProps::default()
        };
        assert_eq!(
            JobEnd::classify(&ended(CLD_EXITED, EXIT_EXEC, 1)),
            JobEnd::NotExecutable
        );
        assert_eq!(
            JobEnd::classify(&ended(CLD_EXITED, 3, 1)),
            JobEnd::RanAndExited
        );
        assert_eq!(JobEnd::classify(&ended(CLD_EXITED, 217, 1)), JobEnd::Failed);
        assert_eq!(JobEnd::classify(&ended(0, 0, 0)), JobEnd::Failed);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("252.38-1~deb12u1"), 252);
        assert_eq!(parse_version("256"), 256);
        assert_eq!(parse_version("v?"), 0);
    }

    #[test]
    fn unit_folders() {
        assert_eq!(
            SystemdTarget::System.unit_dir(),
            PathBuf::from("/etc/systemd/system")
        );
        let t = SystemdTarget::Address {
            bus_address: "unix:path=/x/bus".into(),
            unit_dir: "/x/units".into(),
        };
        assert_eq!(t.unit_dir(), PathBuf::from("/x/units"));
        assert_eq!(t.wanted_by(), "default.target");
        assert_eq!(SystemdTarget::System.wanted_by(), "multi-user.target");
        assert_eq!(t.runtime_dir(), Some(PathBuf::from("/x/roost")));
        assert_eq!(
            SystemdTarget::System.runtime_dir(),
            Some(PathBuf::from("/run/roost"))
        );
    }
}
