//! The connector's report (`<state-dir>/run/connect-report.json`), shown as the `connect`
//! component's output in status.json: link state per sink, the outbox, and warnings. A link
//! that is down is a warning, never an error of the recording. Replaced whole, not fsynced.

use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::outbox::OutboxStats;

/// File name of the report in the state folder.
pub const REPORT_FILE: &str = "connect-report.json";

/// A warning or a sink's last error: a catalogue code and what happened.
pub use crate::errors::Problem;

/// One sink's link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LinkState {
    /// Whether the sink is configured.
    pub configured: bool,
    /// Connected (MQTT) or the last POST succeeded (HTTP).
    pub connected: bool,
    /// Since when it is connected, or since when it is not.
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub since: Option<Timestamp>,
    /// Messages it acknowledged since the connector started.
    pub delivered: u64,
    /// Why the last attempt failed, while it fails.
    pub last_error: Option<Problem>,
}

/// `<state-dir>/run/connect-report.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectReport {
    /// The connector's process id (a report of another process is ignored).
    pub pid: u32,
    /// The device id in topics and messages.
    pub device_id: String,
    /// The MQTT broker's link.
    pub mqtt: LinkState,
    /// The HTTP endpoint's link.
    pub http: LinkState,
    /// What waits in the outbox.
    pub outbox: OutboxStats,
    /// Outbox files set aside because they could not be read.
    pub outboxes_set_aside: Vec<PathBuf>,
    /// Why messages cannot be queued right now (DEP_E506), while they cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_error: Option<Problem>,
    /// Messages the outbox had dropped before this connector started (DEP_E505 warns only of
    /// drops since).
    #[serde(default)]
    pub dropped_before: u64,
    /// Messages dropped since the connector started because they could never be carried
    /// (over [`super::messages::MAX_MESSAGE_BYTES`]), and the newest of them (DEP_E508).
    #[serde(default)]
    pub oversized: u64,
    /// The newest oversized message: its topic and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_oversized: Option<String>,
    /// Conditions that do not stop anything but should be known (DEP_E501 ... DEP_E508).
    pub warnings: Vec<Problem>,
    /// When the report was written.
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub updated_at: Option<Timestamp>,
}

/// `<state-dir>/run/connect-report.json`, replaced whole on change.
impl crate::component::ReportFile for ConnectReport {
    const FILE: &'static str = REPORT_FILE;
    // Link errors may quote a URL with its user info.
    const REDACT: bool = true;
}
