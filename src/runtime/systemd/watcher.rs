//! The one task that listens to the manager: it owns the connection's life (connect, subscribe,
//! reconnect with back-off), applies `PropertiesChanged` to the unit cache the runtime observes
//! from, and turns what it sees into [`RuntimeEvent`]s. It never starts or stops anything.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use zbus::message::{Sequence, Type as MessageType};
use zbus::{Connection, MatchRule, MessageStream, OwnedVariant};

use super::dbus::{self, ManagerProxy};
use super::names::{UNIT_PREFIX, unit_from_object_path};
use super::state::{ActiveState, CLD_KILLED, READ_PROPERTIES, UnitProps};
use super::{SystemdTarget, open_connection};
use crate::runtime::RuntimeEvent;

const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
const MAX_QUEUED: usize = 4096;

/// A live connection to a manager that answers.
#[derive(Clone)]
pub(super) struct Link {
    pub conn: Connection,
    pub manager: ManagerProxy<'static>,
    pub version: u32,
}

/// What roost knows of one of its units.
pub(super) struct Entry {
    pub deployment: String,
    pub component: String,
    /// Last values read; `None` until the first `GetAll`.
    pub props: Option<UnitProps>,
    /// Receive position of the `GetAll` replies `props` came from: older signals are ignored.
    pub fetched_at: Sequence,
    /// Newest signal applied; a `GetAll` older than this is stored but kept dirty.
    pub signal_at: Sequence,
    /// Must be fetched again before it is trusted.
    pub dirty: bool,
}

impl Entry {
    pub fn new(deployment: &str, component: &str) -> Self {
        Self {
            deployment: deployment.to_string(),
            component: component.to_string(),
            props: None,
            fetched_at: Sequence::default(),
            signal_at: Sequence::default(),
            dirty: true,
        }
    }
}

/// State shared by the runtime (calls) and the watcher (signals).
#[derive(Default)]
pub(super) struct Shared {
    /// `None` while the bus or the manager is away.
    pub link: Option<Link>,
    pub units: HashMap<String, Entry>,
    /// Roost has a job in flight on these (start, restart, stop): their stops are roost's.
    pub roost_busy: HashSet<String>,
    /// Receive position of the `JobRemoved` of roost's last job per unit: signals up to it were
    /// caused by that job even when the watcher handles them after roost's call returned.
    pub roost_jobs_until: HashMap<String, Sequence>,
    /// Roost stopped these; cleared by roost's next start.
    pub roost_stopped: HashSet<String>,
    /// Someone else stopped these; cleared by roost's next start or when they run again.
    /// Mirrored as empty files in `marks_dir` (a runtime folder: a reboot clears them), so a
    /// restarted roost still knows.
    pub operator_stopped: HashSet<String>,
    pub marks_dir: Option<PathBuf>,
    /// Units pinned in the manager's memory (`Unit.Ref`) on the current connection, so that
    /// systemd keeps their exit status after they stop.
    pub referenced: HashSet<String>,
}

impl Shared {
    /// Loads the marks a previous roost left.
    pub fn load_marks(&mut self) {
        let Some(dir) = &self.marks_dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if let Ok(name) = entry.file_name().into_string()
                && name.starts_with(UNIT_PREFIX)
            {
                self.operator_stopped.insert(name);
            }
        }
    }

    pub fn mark_operator_stop(&mut self, unit: &str) {
        if self.operator_stopped.insert(unit.to_string())
            && let Some(dir) = &self.marks_dir
        {
            // Best effort: without the file only a roost restart forgets the stop.
            let _ = std::fs::create_dir_all(dir);
            let _ = std::fs::write(dir.join(unit), b"");
        }
    }

    pub fn clear_operator_stop(&mut self, unit: &str) {
        if self.operator_stopped.remove(unit)
            && let Some(dir) = &self.marks_dir
        {
            let _ = std::fs::remove_file(dir.join(unit));
        }
    }

    fn mark_all_dirty(&mut self) {
        self.units.values_mut().for_each(|e| e.dirty = true);
    }
    fn roost_caused(&self, unit: &str, seq: Sequence) -> bool {
        self.roost_busy.contains(unit)
            || self.roost_stopped.contains(unit)
            || self
                .roost_jobs_until
                .get(unit)
                .is_some_and(|until| seq <= *until)
    }
}

pub(super) type SharedRef = Arc<Mutex<Shared>>;

pub(super) fn lock(shared: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Streams {
    properties: MessageStream,
    manager: MessageStream,
    owner: MessageStream,
}

/// Runs until the runtime is dropped (it aborts this task). `first` is the connection the
/// constructor made; `ready` is answered once the first subscription is in place.
pub(super) async fn run(
    target: SystemdTarget,
    first: Connection,
    shared: SharedRef,
    events: mpsc::UnboundedSender<RuntimeEvent>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    let mut next_conn = Some(first);
    let mut reachable = true;
    let mut delay = RECONNECT_FIRST;
    loop {
        let conn = match next_conn.take() {
            Some(conn) => Ok(conn),
            None => open_connection(&target).await.map_err(|e| e.to_string()),
        };
        let attached = match conn {
            Ok(conn) => attach(&conn).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let (streams, link) = match attached {
            Ok(ok) => ok,
            Err(reason) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(reason));
                    return;
                }
                if reachable {
                    reachable = false;
                    let _ = events.send(RuntimeEvent::Unreachable { reason });
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        delay = RECONNECT_FIRST;
        {
            let mut s = lock(&shared);
            s.link = Some(link.clone());
            s.referenced.clear();
            // Receive positions of another connection do not compare.
            s.roost_jobs_until.clear();
            for entry in s.units.values_mut() {
                entry.fetched_at = Sequence::default();
                entry.signal_at = Sequence::default();
            }
            s.mark_all_dirty();
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        } else if !reachable {
            let _ = events.send(RuntimeEvent::Reachable);
        }
        let reason = pump(streams, &link, &shared, &events).await;
        tracing::warn!(%reason, "lost the systemd manager; reconnecting");
        {
            let mut s = lock(&shared);
            s.link = None;
            s.mark_all_dirty();
        }
        reachable = false;
        let _ = events.send(RuntimeEvent::Unreachable { reason });
    }
}

/// Opens the signal streams, then subscribes: no signal after `Subscribe` can be missed.
async fn attach(conn: &Connection) -> zbus::Result<(Streams, Link)> {
    let properties = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path_namespace(dbus::UNIT_PATH_NAMESPACE)
        .build()?;
    let manager = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .interface(dbus::MANAGER_INTERFACE)
        .path(dbus::MANAGER_PATH)
        .build()?;
    let owner = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .arg(0, dbus::SERVICE)
        .build()?;
    let queued = std::num::NonZeroUsize::new(MAX_QUEUED);
    let streams = Streams {
        properties: MessageStream::for_match_rule(properties, conn, queued).await?,
        manager: MessageStream::for_match_rule(manager, conn, queued).await?,
        owner: MessageStream::for_match_rule(owner, conn, queued).await?,
    };
    let link = subscribe(conn).await?;
    Ok((streams, link))
}

async fn subscribe(conn: &Connection) -> zbus::Result<Link> {
    let manager = dbus::manager_proxy(conn).await?;
    manager.subscribe().await?;
    let version = super::parse_version(&manager.version().await?);
    Ok(Link {
        conn: conn.clone(),
        manager,
        version,
    })
}

/// Handles signals until the connection ends; returns why.
async fn pump(
    mut streams: Streams,
    link: &Link,
    shared: &SharedRef,
    events: &mpsc::UnboundedSender<RuntimeEvent>,
) -> String {
    loop {
        let (which, msg) = tokio::select! {
            m = streams.properties.next() => (0, m),
            m = streams.manager.next() => (1, m),
            m = streams.owner.next() => (2, m),
        };
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return format!("bus connection failed: {e}"),
            None => return "bus connection closed".into(),
        };
        match which {
            0 => on_properties_changed(&msg, shared, events),
            1 => on_manager_signal(&msg, shared, events),
            _ => on_owner_changed(&msg, link, shared, events).await,
        }
    }
}

fn on_properties_changed(
    msg: &zbus::Message,
    shared: &SharedRef,
    events: &mpsc::UnboundedSender<RuntimeEvent>,
) {
    let header = msg.header();
    let Some(unit) = header
        .path()
        .and_then(|p| unit_from_object_path(p.as_str()))
    else {
        return;
    };
    if !unit.starts_with(UNIT_PREFIX) {
        return;
    }
    let body = msg.body();
    let Ok((interface, changed, invalidated)) =
        body.deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
    else {
        return;
    };
    let is_unit = interface == dbus::UNIT_INTERFACE;
    if !is_unit && interface != dbus::SERVICE_INTERFACE {
        return;
    }
    let seq = msg.recv_position();
    let mut guard = lock(shared);
    let s = &mut *guard;
    let roost_caused = s.roost_caused(&unit, seq);
    let Some(entry) = s.units.get_mut(&unit) else {
        if is_unit {
            let _ = events.send(RuntimeEvent::Changed);
        }
        return;
    };
    entry.signal_at = entry.signal_at.max(seq);
    if invalidated
        .iter()
        .any(|p| READ_PROPERTIES.contains(&p.as_str()))
    {
        entry.dirty = true;
    }
    let Some(props) = entry.props.as_mut().filter(|_| seq > entry.fetched_at) else {
        if is_unit {
            let _ = events.send(RuntimeEvent::Changed);
        }
        return;
    };
    let before = props.clone();
    props.merge(&changed);
    let props = props.clone();
    if is_unit && props.active_state == ActiveState::Failed {
        // Maybe the transient `failed` before an auto-restart: only a fresh read tells.
        entry.dirty = true;
    }
    let component = entry.component.clone();

    if !is_unit
        && props.exec_main_exit_us != 0
        && props.exec_main_exit_us != before.exec_main_exit_us
    {
        // The `failed` signal carries the exit; the auto-restart right after resets it.
        // A death by SIGTERM/SIGINT/SIGHUP/SIGPIPE that systemd calls success is a stop, even
        // when the manager's signals skipped `deactivating` (a quick stop comes as one change).
        let clean_stop = props.result == "success"
            && props.exec_main_code == CLD_KILLED
            && matches!(props.exec_main_status, 1 | 2 | 13 | 15);
        let stopping = roost_caused
            || s.operator_stopped.contains(&unit)
            || before.active_state == ActiveState::Deactivating
            || clean_stop;
        match props.last_exit() {
            Some(exit) if !stopping => {
                let _ = events.send(RuntimeEvent::Exited {
                    name: component,
                    exit,
                });
            }
            _ => {
                if !roost_caused {
                    s.mark_operator_stop(&unit);
                }
                let _ = events.send(RuntimeEvent::Changed);
            }
        }
        return;
    }
    if is_unit && (props.active_state != before.active_state || props.sub_state != before.sub_state)
    {
        match props.active_state {
            // A stop while the main process still lives, and roost did not ask for it.
            ActiveState::Deactivating if props.main_pid != 0 && !roost_caused => {
                s.mark_operator_stop(&unit);
            }
            ActiveState::Active => {
                s.clear_operator_stop(&unit);
            }
            ActiveState::Deactivating
            | ActiveState::Reloading
            | ActiveState::Inactive
            | ActiveState::Failed
            | ActiveState::Activating
            | ActiveState::Maintenance
            | ActiveState::Refreshing
            | ActiveState::Other(_) => {}
        }
        let _ = events.send(RuntimeEvent::Changed);
    }
}

fn on_manager_signal(
    msg: &zbus::Message,
    shared: &SharedRef,
    events: &mpsc::UnboundedSender<RuntimeEvent>,
) {
    let header = msg.header();
    let Some(member) = header.member() else {
        return;
    };
    match member.as_str() {
        // `Reloading(false)`: unit files were re-read.
        "Reloading" if msg.body().deserialize::<bool>() == Ok(false) => {
            lock(shared).mark_all_dirty();
            let _ = events.send(RuntimeEvent::Changed);
        }
        "UnitNew" | "UnitRemoved" => {
            let Ok((unit, _path)) = msg.body().deserialize::<(String, zbus::ObjectPath<'_>)>()
            else {
                return;
            };
            if let Some(entry) = lock(shared).units.get_mut(&unit) {
                entry.dirty = true;
            }
        }
        _ => {}
    }
}

async fn on_owner_changed(
    msg: &zbus::Message,
    link: &Link,
    shared: &SharedRef,
    events: &mpsc::UnboundedSender<RuntimeEvent>,
) {
    let Ok((_name, _old, new)) = msg.body().deserialize::<(String, String, String)>() else {
        return;
    };
    if new.is_empty() {
        // The manager left the bus (re-exec, crash) while the bus stayed.
        {
            let mut s = lock(shared);
            s.link = None;
            s.mark_all_dirty();
        }
        let _ = events.send(RuntimeEvent::Unreachable {
            reason: "the systemd manager left the bus".into(),
        });
        return;
    }
    // A new manager instance: it knows nothing of our subscription.
    match subscribe(&link.conn).await {
        Ok(fresh) => {
            {
                let mut s = lock(shared);
                s.link = Some(fresh);
                s.referenced.clear();
                s.mark_all_dirty();
            }
            let _ = events.send(RuntimeEvent::Reachable);
        }
        Err(e) => tracing::warn!(error = %e, "systemd manager returned but subscribing failed"),
    }
}
