//! `roost connect`: the built-in component `connect` that sends the device's status, heartbeats
//! and messages to an MQTT broker and an HTTP endpoint, and keeps a Prometheus text file. It
//! runs as a process of its own, so that no network fault, TLS stack or broker ever disturbs
//! the reconciler or the recorder. Everything it sends goes first into the durable outbox
//! ([`outbox`]) and leaves it only when the sink acknowledged it. It reads status.json (on
//! inotify) and metadata.db; it writes only its outbox, its report and the Prometheus file.

/// Detectors' findings as acoupi's model-output messages, read from metadata.db:
/// [`crate::storage::detections`].
pub use crate::storage::detections;
pub mod http;
pub mod link;
pub mod messages;
pub mod mqtt;
pub mod outbox;
pub mod prometheus;
pub mod report;
pub mod roost_watch;
mod run;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use run::run;

use crate::spec::Deployment;
use crate::spec::connect::{ConnectSpec, TopicLevel};

/// File name of the connector's configuration in the state folder.
pub const CONFIG_FILE: &str = "connect-config.json";

/// What `roost connect` is given (written by the reconciler before it starts it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectConfig {
    /// The deployment's name.
    pub deployment: String,
    /// This device's id in topics and messages (resolved: the file's, or from /etc/machine-id).
    pub device_id: String,
    /// `spec.connect` as written.
    pub connect: ConnectSpec,
    /// The recordings' storage folder (free space, recordings of the last hour).
    pub storage: PathBuf,
    /// Per detector, the lowest detection score sent (`spec.detectors[].sendMinScore`).
    #[serde(default)]
    pub send_min_scores: std::collections::BTreeMap<String, f64>,
}

impl crate::component::ConfigFile for ConnectConfig {
    const FILE: &'static str = CONFIG_FILE;
}

impl ConnectConfig {
    /// The connector's configuration of a deployment, `None` when it has no `spec.connect`.
    pub fn from_deployment(d: &Deployment, state_dir: &Path) -> Option<Self> {
        let connect = d.spec.connect.clone()?;
        let device_id = connect
            .device_id
            .as_ref()
            .map(|id| id.as_str().to_string())
            .unwrap_or_else(default_device_id);
        let storage = d
            .spec
            .storage
            .clone()
            .unwrap_or_default()
            .resolved_path(state_dir);
        Some(Self {
            deployment: d.name().to_string(),
            device_id,
            connect,
            storage,
            send_min_scores: d
                .spec
                .detectors
                .iter()
                .map(|x| (x.name.to_string(), x.send_min_score()))
                .collect(),
        })
    }
}

/// What the connector still owes about recordings: messages waiting in its outbox, and how far
/// it has queued the curator's model outputs. Its public word for the curator, whose retention
/// must not delete a recording before its messages left; read without disturbing the
/// connector. `None` when the connector has not run yet or its outbox cannot be read now.
pub fn owed_messages(state_dir: &Path) -> Option<OwedMessages> {
    outbox::owed(&state_dir.join(outbox::OUTBOX_FILE))
}

/// See [`owed_messages`].
pub use outbox::Owed as OwedMessages;

/// The device's id when spec.connect.deviceId does not say: `ROOST_DEVICE_ID` when set to a
/// valid topic level (provisioning sets it, e.g. `Environment=` in roost.service, so one
/// deployment file serves a whole fleet), else `roost-` and the first 12 characters of
/// /etc/machine-id (stable across reboots, unique per installation), `roost-unknown` when
/// there is none.
pub fn default_device_id() -> String {
    if let Ok(id) = std::env::var("ROOST_DEVICE_ID") {
        match TopicLevel::try_from(id) {
            Ok(id) => return id.to_string(),
            Err(why) => tracing::warn!(%why, "ROOST_DEVICE_ID ignored"),
        }
    }
    let id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let id: String = id
        .trim()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    match id.is_empty() {
        true => "roost-unknown".to_string(),
        false => format!("roost-{id}"),
    }
}

/// Why the connector cannot run (link faults are reported, not returned).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configuration cannot be taken.
    #[error("the connector cannot start")]
    Config(#[from] crate::component::ConfigError),
    /// The outbox cannot be opened even after setting a bad one aside.
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    /// The async runtime or the signal handler cannot start.
    #[error("cannot start the connector's runtime")]
    Runtime(#[source] std::io::Error),
    /// The status file cannot be watched.
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
}

/// The files `spec` names (passwordFile, headersFile, the caFiles), read and parsed as the
/// connector will, changing nothing: one problem (DEP_E507) per file that cannot be used.
/// For `roost check`.
pub fn check_files(spec: &crate::spec::connect::ConnectSpec) -> Vec<report::Problem> {
    let mut problems = Vec::new();
    let unusable = |what: &str, path: &std::path::Path, why: String| {
        report::Problem::new(
            crate::errors::SECRET_UNREADABLE,
            format!("{what} {}: {why}", path.display()),
        )
    };
    if let Some(m) = &spec.mqtt {
        if let Some(p) = &m.password_file
            && let Err(e) = std::fs::read_to_string(p.as_path())
        {
            problems.push(unusable("passwordFile", p.as_path(), e.to_string()));
        }
        if let Some(p) = &m.ca_file
            && let Err(problem) = mqtt::tls_config(Some(p.as_path()))
        {
            problems.push(problem);
        }
    }
    if let Some(h) = &spec.http {
        if let Some(p) = &h.headers_file
            && let Err(why) = http::read_headers(p.as_path())
        {
            problems.push(unusable("headersFile", p.as_path(), why));
        }
        if let Some(p) = &h.ca_file
            && let Err(problem) = mqtt::tls_config(Some(p.as_path()))
        {
            problems.push(problem);
        }
    }
    problems
}
