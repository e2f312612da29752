//! The device's side of desired state over the broker, a task of `roost run` (so a version
//! that breaks the connector cannot cut the device off from the next one). It subscribes to
//! `<topicPrefix>/<deviceId>/desired`, checks each message ([`super::signed::verify`]), writes
//! an accepted version into the watched file or folder (the reconciler takes it as a local
//! edit), watches the device's status through the health gate and reverts by itself, and
//! reports to the loop (status.json's `remote`, over `publish::RemoteLink`) and retained on
//! `<topicPrefix>/<deviceId>/desired/report`. Nothing here waits on the network to decide.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{Event, Incoming, MqttOptions, QoS, Transport};
use tokio::time::Instant;

use super::gate::{self, Health, Verdict};
use super::ledger::{self, Files, GateRecord, Ledger, Target};
use super::signed::{self, ApplyAt, Document, Refusal};
use crate::connect::mqtt::Session;
use crate::errors;
use crate::spec::connect::{DesiredSpec, MqttSpec};
use crate::status::{
    AppliedBy, RemoteRefused, RemoteReverted, RemoteState, RemoteStatus, StatusDoc,
};

/// What the deployment in force says about desired state over the broker.
#[derive(Clone, Debug, PartialEq)]
struct Link {
    device: String,
    mqtt: MqttSpec,
    desired: DesiredSpec,
    labels: std::collections::BTreeMap<String, String>,
}

/// An accepted version waiting for its moment.
struct Pending {
    doc: Document,
    deadline: Instant,
    files_at_arrival: Option<u64>,
}

/// The task's state.
struct Remote {
    target: Target,
    state_dir: PathBuf,
    ledger: Ledger,
    link: Option<Link>,
    files_hash: u64,
    session: Option<Session>,
    reconnect_at: Option<Instant>,
    backoff: Duration,
    pending: Option<Pending>,
    worse_since: Option<Duration>,
    gate_next: Option<Instant>,
    reported: Option<RemoteStatus>,
    /// Whether the session connected since the gate opened (or since roost started).
    connected_in_gate: bool,
    /// When the session now up connected.
    connected_at: Option<Instant>,
    /// Whether the files were looked at once (a bad file at start falls back to the last good).
    started: bool,
    /// The loop's generation and refusal when the files were last read, and whether they must
    /// be read again (at start, and when either changed).
    files_seen: Option<(u64, Option<String>)>,
    files_dirty: bool,
    /// The newest status document the loop published.
    doc: Option<std::sync::Arc<StatusDoc>>,
    /// The loop's generation when a version that changes the files was written: the gate
    /// decides only on a document past it (absent: no change to wait for, or after a restart).
    gen_at_apply: Option<u64>,
    /// Where the report goes (into status.json).
    report_tx: tokio::sync::watch::Sender<Option<RemoteStatus>>,
}

/// Runs until the process ends (the caller drops the task at shutdown; every write is whole).
/// `side` brings the status documents the loop publishes and takes the report back.
pub async fn run(target: Target, state_dir: PathBuf, side: crate::publish::RemoteSide) {
    let crate::publish::RemoteSide { mut docs, report } = side;
    let mut r = Remote::new(target, state_dir, report);
    r.settle_applying();
    r.settle_reverting();
    r.step(None).await;
    loop {
        let wake = r.next_wake();
        let event = async {
            match r.session.as_mut() {
                Some(s) => s.events.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = event => r.on_event(ev).await,
            changed = docs.changed() => {
                if changed.is_err() {
                    return; // the loop is gone: roost is stopping
                }
                let doc = docs.borrow_and_update().clone();
                // The loop's last words at shutdown (everything Stopped) are no verdict on a
                // version.
                if doc.as_deref().is_some_and(gate::is_shutdown) {
                    continue;
                }
                // The files can only have changed for the loop when its generation or its
                // refusal did: only then are they read again (not at every status rewrite).
                let seen = doc.as_deref().map(|d| (d.generation, d.spec_error.as_ref().map(|e| e.message.clone())));
                if seen != r.files_seen {
                    r.files_seen = seen;
                    r.files_dirty = true;
                }
                r.doc = doc;
                r.step(None).await;
            }
            () = sleep_until(wake) => r.step(None).await,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Remote {
    fn new(
        target: Target,
        state_dir: PathBuf,
        report_tx: tokio::sync::watch::Sender<Option<RemoteStatus>>,
    ) -> Self {
        Self {
            target,
            ledger: Ledger::load(&state_dir),
            state_dir,
            link: None,
            files_hash: 0,
            session: None,
            reconnect_at: None,
            backoff: Duration::from_secs(1),
            pending: None,
            worse_since: None,
            gate_next: None,
            reported: None,
            connected_in_gate: false,
            connected_at: None,
            started: false,
            files_seen: None,
            files_dirty: true,
            doc: None,
            gen_at_apply: None,
            report_tx,
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        [
            self.reconnect_at,
            // A waiting version is applied only once the loop has spoken (its document wakes
            // the task): no timer before that, or a passed deadline would spin.
            (self.pending.as_ref())
                .filter(|_| self.doc.is_some())
                .map(|p| p.deadline),
            self.gate_next,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Everything that follows from the files, the status and the clock now; `message` is a
    /// desired-state payload that just arrived.
    async fn step(&mut self, message: Option<&[u8]>) {
        if std::mem::take(&mut self.files_dirty) {
            self.follow_files();
        }
        if let Some(payload) = message {
            self.take_message(payload);
        }
        self.run_pending();
        self.run_gate();
        self.connect_if_due();
        self.report();
    }

    /// Re-reads the deployment files when they changed: the link's settings, and whether a
    /// local edit replaced what the broker wrote.
    fn follow_files(&mut self) {
        let files = self.target.read();
        let h = ledger::hash(&files);
        if h == self.files_hash {
            return;
        }
        self.files_hash = h;
        // A bad file changes nothing that runs: the link stays as the last valid files said
        // (at start, as the last valid file kept in the state folder says), so a fix can still
        // come from the broker.
        let link = match find_link(&files) {
            Some(link) => link,
            None if self.started => self.link.clone(),
            None => self.last_good_link(),
        };
        self.started = true;
        if link != self.link {
            tracing::info!(
                enabled = link.is_some(),
                "remote desired state: settings changed"
            );
            self.session = None;
            self.reconnect_at = link.as_ref().map(|_| Instant::now());
            self.backoff = Duration::from_secs(1);
            self.connected_in_gate = false;
            self.link = link;
        }
        let edited = self.ledger.written_hash.is_some_and(|w| w != h);
        if edited && self.ledger.gate.is_some() {
            tracing::warn!(
                "remote desired state: a local edit during the health gate; the gate ends without judging"
            );
            self.ledger.gate = None;
            self.gate_next = None;
            self.save();
        }
    }

    fn save(&self) {
        if let Err(e) = self.ledger.save(&self.state_dir) {
            tracing::error!(error = %e, "remote desired state: cannot write its ledger");
        }
    }

    /// The newest status: as the loop published it, or status.json as the last roost left it
    /// (before the loop's first document).
    fn status_doc(&self) -> Option<StatusDoc> {
        if let Some(d) = &self.doc {
            return Some((**d).clone());
        }
        let path = crate::state_dir::StateDir::new(self.state_dir.clone()).status();
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

impl Remote {
    /// The link of the last valid file roost kept (`last-good.yaml`, `roost run --file`).
    fn last_good_link(&self) -> Option<Link> {
        let path = crate::state_dir::StateDir::new(self.state_dir.clone()).last_good();
        let text = std::fs::read_to_string(path).ok()?;
        find_link(&Files::from([("last-good.yaml".to_string(), text)])).flatten()
    }
}

/// The desired-state link the deployment files declare (the one with `spec.connect.desired`);
/// `None` when a file does not parse (its link is unknown), `Some(None)` when none has one.
fn find_link(files: &Files) -> Option<Option<Link>> {
    let mut parsed = Vec::new();
    for (name, text) in files {
        parsed.push(crate::spec::parse_str(Path::new(name), text).ok()?);
    }
    Some(parsed.iter().find_map(|d| {
        let connect = d.spec.connect.as_ref()?;
        Some(Link {
            device: (connect.device_id.as_ref())
                .map_or_else(crate::connect::default_device_id, |d| d.to_string()),
            mqtt: connect.mqtt.clone()?,
            desired: connect.desired.clone()?,
            labels: (connect.labels.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }))
}

mod apply;
mod judge;
mod link;

use judge::fingerprint;
