//! `roost fleet`: what every device under a topic prefix last said on the broker, one row per
//! device. It owns the reading of the retained `status`, `availability` and `heartbeat` topics
//! ([`collect`], the only I/O: connect, subscribe, gather until quiet, disconnect) and the pure
//! judgement of those messages ([`fleet_view`], which takes `now`). It never publishes, so it
//! can never disturb a device's retained messages or its last will.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use rumqttc::{
    AsyncClient, ConnectionError, Event, Incoming, MqttOptions, QoS, SubscribeFilter, Transport,
};
use serde::Serialize;
use serde_json::Value;

use crate::connect::mqtt;
use crate::connect::report::Problem;
use crate::errors;
use crate::spec::HumanDuration;
use crate::spec::connect::{BrokerUrl, HeartbeatSpec, TopicLevel};
use crate::status::{OverallStatus, Phase};

/// One message as it arrived: its topic and its payload.
pub type Message = (String, Vec<u8>);

/// How long `--wait` may be: retained messages come in one burst right after subscribing.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// How long the broker may take to accept the connection and the subscription.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Gathering stops after this even if messages keep coming (devices heartbeating live).
const GATHER_AT_MOST: Duration = Duration::from_secs(30);

/// How long no message may arrive before the retained ones are taken as all there is
/// (`--wait`, at most [`MAX_WAIT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietWait(Duration);

impl QuietWait {
    /// The duration.
    pub fn as_std(self) -> Duration {
        self.0
    }
}

impl Default for QuietWait {
    fn default() -> Self {
        Self(Duration::from_secs(2))
    }
}

impl std::str::FromStr for QuietWait {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let d = text
            .parse::<HumanDuration>()
            .map_err(|e| e.to_string())?
            .as_std();
        match d.is_zero() || d > MAX_WAIT {
            true => Err(format!(
                "--wait {text:?}: give more than 0s and at most {}s",
                MAX_WAIT.as_secs()
            )),
            false => Ok(Self(d)),
        }
    }
}

/// Where and how `roost fleet` reads.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// The broker.
    pub broker: BrokerUrl,
    /// First topic level of the devices' topics.
    pub prefix: TopicLevel,
    /// User name, when the broker asks for one.
    pub username: Option<String>,
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates to trust besides the system's (`mqtts`).
    pub ca_file: Option<PathBuf>,
    /// How long no message may arrive before gathering ends.
    pub wait: QuietWait,
}

/// A device's `availability` topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// `online`: roost connect is connected.
    Online,
    /// `offline`: the last will, or roost connect stopped.
    Offline,
}

/// Why a device is shown with DEP_E151: its code, a fleet message and the fleet's action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unreachable {
    /// Always `DEP_E151`.
    pub code: &'static str,
    /// `device offline or not reachable: <why>`.
    pub message: String,
    /// The catalogue's recommended action.
    pub action: &'static str,
}

impl Unreachable {
    fn new(why: String) -> Self {
        Self {
            code: errors::RUNTIME_UNREACHABLE.code,
            message: format!("device offline or not reachable: {why}"),
            action: errors::RUNTIME_UNREACHABLE_IN_FLEET,
        }
    }
}

/// One device as the broker last heard of it (one object of `--json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRow {
    /// The device id: the topic level after the prefix.
    pub device_id: String,
    /// The deployment's name.
    pub deployment: Option<String>,
    /// `phase` of its status document (or of its heartbeat).
    pub phase: Option<Phase>,
    /// `status` of its status document (or of its heartbeat).
    pub status: Option<OverallStatus>,
    /// Codes of its status document's errors.
    pub error_codes: Vec<String>,
    /// Seconds from its newest recording to `now`.
    pub last_recording_age_seconds: Option<u64>,
    /// The newest time the device itself wrote into a message (heartbeat `sentAt`, status
    /// `updatedAt`).
    pub last_seen: Option<Timestamp>,
    /// Its availability topic; `None` when absent or not `online`/`offline`.
    pub availability: Option<Availability>,
    /// DEP_E151 when it is offline or its heartbeat is overdue.
    pub problem: Option<Unreachable>,
    /// A device run with `roost run --dir`: each deployment's name, phase, status and error
    /// codes (`deployment` then holds their names joined).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<Value>,
    /// Desired state over the broker: the version asked for, the one applied, and its state
    /// (`gating`, `passed`, `reverted`, `refused`...), from `<prefix>/<id>/desired/report`.
    pub desired_version: Option<u64>,
    /// The remote version whose files are in force (absent: none, or a local edit since).
    pub applied_version: Option<u64>,
    /// `remote.state` of the device's report.
    pub remote_state: Option<String>,
    /// The last version the device's health gate reverted, and the codes that caused it.
    pub reverted: Option<Value>,
    /// The board's power and heat from its heartbeat (`temperatureC`, `batteryPercent`,
    /// `undervoltage`, `throttled`, `powerSaving`: what it reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power: Option<Value>,
}

impl DeviceRow {
    /// Reachable and `Running`.
    pub fn is_healthy(&self) -> bool {
        self.problem.is_none() && self.status == Some(OverallStatus::Running)
    }
}

/// The messages of one device, by topic kind (the newest of each wins).
#[derive(Default)]
struct Heard {
    status: Option<Value>,
    availability: Option<Availability>,
    heartbeat: Option<Value>,
    remote: Option<Value>,
}

/// What a device's heartbeat says about its reachability.
enum HeartbeatAge {
    /// No heartbeat, or none with a readable `sentAt`.
    Missing,
    /// Sent within two intervals.
    Fresh,
    /// Older than two intervals.
    Overdue { age: u64, interval: u64 },
}

/// One row per device, sorted by device id, from `(topic, payload)` pairs in the order they
/// arrived. Topics are `<prefix>/<deviceId>/<kind>`; other topics and payloads that are not
/// the JSON (or text) expected are ignored, never an error.
pub fn fleet_view(messages: &[Message], now: Timestamp) -> Vec<DeviceRow> {
    let mut heard = Gathered::default();
    for (topic, payload) in messages {
        heard.take(topic, payload);
    }
    heard.rows(now)
}

/// What every device last said, taken message by message as they arrive (only the newest
/// of each kind is kept, slimmed: see [`slim`]).
#[derive(Default)]
pub struct Gathered {
    devices: BTreeMap<String, Kept>,
}

/// One device's newest messages as compact JSON bytes, parsed only when its row is made (a
/// parsed document weighs several times its text).
#[derive(Default)]
struct Kept {
    status: Option<Vec<u8>>,
    heartbeat: Option<Vec<u8>>,
    remote: Option<Vec<u8>>,
    availability: Option<Availability>,
}

impl Kept {
    fn heard(&self) -> Heard {
        let parse = |b: &Option<Vec<u8>>| b.as_deref().and_then(json_object);
        Heard {
            status: parse(&self.status),
            heartbeat: parse(&self.heartbeat),
            remote: parse(&self.remote),
            availability: self.availability,
        }
    }
}

impl Gathered {
    /// Takes one message.
    pub fn take(&mut self, topic: &str, payload: &[u8]) {
        let levels: Vec<&str> = topic.split('/').collect();
        let (device_id, kind) = match levels[..] {
            [_prefix, device_id, kind] => (device_id, kind),
            [_prefix, device_id, "desired", "report"] => (device_id, "desired/report"),
            _ => return,
        };
        let heard = self.devices.entry(device_id.to_string()).or_default();
        let kept = |p: &[u8]| json_object(p).map(|_| slim(topic, p));
        match kind {
            "desired/report" => heard.remote = kept(payload),
            "status" => heard.status = kept(payload),
            "heartbeat" => heard.heartbeat = kept(payload),
            "availability" => {
                heard.availability = match payload.trim_ascii() {
                    b"online" => Some(Availability::Online),
                    b"offline" => Some(Availability::Offline),
                    _ => None,
                }
            }
            _ => {}
        }
    }

    /// One row per device, sorted by id, judged at `now`.
    pub fn rows(&self, now: Timestamp) -> Vec<DeviceRow> {
        (self.devices.iter())
            .map(|(id, kept)| row(id, &kept.heard(), now))
            .collect()
    }
}

fn json_object(payload: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .filter(Value::is_object)
}

fn timestamp(v: Option<&Value>) -> Option<Timestamp> {
    v?.as_str()?.parse().ok()
}

fn row(device_id: &str, heard: &Heard, now: Timestamp) -> DeviceRow {
    let status = heard.status.as_ref();
    let heartbeat = heard.heartbeat.as_ref();
    let metrics = heartbeat.and_then(|h| h.get("metrics"));
    // The status document is sent when its meaning changes; the heartbeat's copy (counters)
    // is the fallback.
    let field = |name: &str| {
        status
            .and_then(|s| s.get(name))
            .or_else(|| metrics.and_then(|m| m.get(name)))
            .cloned()
    };
    let sent_at = timestamp(heartbeat.and_then(|h| h.get("sentAt")));
    let last_seen = [sent_at, timestamp(status.and_then(|s| s.get("updatedAt")))]
        .into_iter()
        .flatten()
        .max();
    let last_recording = [
        timestamp(metrics.and_then(|m| m.get("lastRecordingAt"))),
        recorder_last_file(status),
    ]
    .into_iter()
    .flatten()
    .max();
    let age = |t: Timestamp| now.duration_since(t).as_secs().max(0) as u64;
    let heartbeat_age = match sent_at {
        None => HeartbeatAge::Missing,
        Some(sent) => {
            let interval = heartbeat
                .and_then(|h| h.get("intervalSeconds"))
                .and_then(Value::as_u64)
                .filter(|&s| s > 0)
                .unwrap_or(HeartbeatSpec::default().interval.as_std().as_secs());
            match age(sent) > 2 * interval {
                true => HeartbeatAge::Overdue {
                    age: age(sent),
                    interval,
                },
                false => HeartbeatAge::Fresh,
            }
        }
    };
    DeviceRow {
        device_id: device_id.to_string(),
        deployment: field("deployment")
            .or_else(|| heartbeat.and_then(|h| h.get("deployment")).cloned())
            .and_then(|v| v.as_str().map(str::to_string)),
        phase: field("phase").and_then(|v| serde_json::from_value(v).ok()),
        status: field("status").and_then(|v| serde_json::from_value(v).ok()),
        error_codes: error_codes(status, metrics),
        last_recording_age_seconds: last_recording.map(age),
        last_seen,
        availability: heard.availability,
        problem: unreachable(heard.availability, heartbeat_age).map(Unreachable::new),
        deployments: field("deployments")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default(),
        desired_version: remote_field(heard, "desiredVersion").and_then(|v| v.as_u64()),
        applied_version: remote_field(heard, "appliedVersion").and_then(|v| v.as_u64()),
        remote_state: remote_field(heard, "state").and_then(|v| v.as_str().map(str::to_string)),
        reverted: remote_field(heard, "reverted"),
        power: metrics.and_then(power_of),
    }
}

/// The heartbeat's power metrics, those the device reports.
fn power_of(metrics: &Value) -> Option<Value> {
    let keys = POWER_METRICS.iter().filter(|k| !metrics[**k].is_null());
    let kept: serde_json::Map<String, Value> =
        keys.map(|k| (k.to_string(), metrics[*k].clone())).collect();
    (!kept.is_empty()).then_some(Value::Object(kept))
}

/// The heartbeat metrics that say the board's power and heat.
const POWER_METRICS: [&str; 5] = [
    "temperatureC",
    "batteryPercent",
    "undervoltage",
    "throttled",
    "powerSaving",
];

/// The POWER column: what needs a visit first (undervoltage, throttling, saving), then
/// temperature and battery.
fn power_cell(r: &DeviceRow) -> String {
    let Some(p) = &r.power else {
        return "-".into();
    };
    let mut parts = Vec::new();
    if p["undervoltage"] == true {
        parts.push("UNDERVOLTAGE".to_string());
    }
    if p["throttled"] == true {
        parts.push("throttled".to_string());
    }
    if let Some(level) = p["powerSaving"].as_str().filter(|l| *l != "none") {
        parts.push(format!("saving:{level}"));
    }
    if let Some(t) = p["temperatureC"].as_f64() {
        parts.push(format!("{t:.0}C"));
    }
    if let Some(b) = p["batteryPercent"].as_f64() {
        parts.push(format!("{b:.0}%"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn remote_field(heard: &Heard, name: &str) -> Option<Value> {
    heard.remote.as_ref()?.get(name).cloned()
}

/// The REMOTE column: the version asked for, its state, the version in force when another.
fn remote_cell(r: &DeviceRow) -> String {
    let Some(state) = &r.remote_state else {
        return "-".into();
    };
    let asked = r
        .desired_version
        .map_or_else(String::new, |v| format!("v{v} "));
    let mut cell = format!("{asked}{state}");
    if r.applied_version != r.desired_version {
        cell += &match r.applied_version {
            Some(a) => format!(", on v{a}"),
            None => ", on local files".into(),
        };
    }
    if state == "reverted"
        && let Some(codes) = r
            .reverted
            .as_ref()
            .and_then(|v| v.get("codes")?.as_array().cloned())
    {
        let codes: Vec<&str> = codes.iter().filter_map(Value::as_str).collect();
        cell += &format!(" ({})", codes.join(","));
    }
    cell
}

/// The part of the recorder's output (`RecorderOutput`) `roost fleet` keeps: a slim copy of
/// a device's status holds only this.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RecorderSeen {
    last_file_at: Option<Timestamp>,
}

/// The recorder's output in a component of a status document, as far as `roost fleet` reads it.
fn recorder_seen(component: &Value) -> Option<RecorderSeen> {
    let recorder = component.get("name").and_then(Value::as_str)
        == Some(crate::spec::recorder::RECORDER_COMPONENT);
    recorder.then(|| RecorderSeen::deserialize(component.get("output")?).ok())?
}

/// `lastFileAt` of the `recorder` component's output in a status document.
fn recorder_last_file(status: Option<&Value>) -> Option<Timestamp> {
    let components = status?.get("components")?.as_array()?;
    components.iter().find_map(recorder_seen)?.last_file_at
}

fn error_codes(status: Option<&Value>, metrics: Option<&Value>) -> Vec<String> {
    let from_status = status
        .and_then(|s| s.get("errors"))
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e.get("code").and_then(Value::as_str))
                .collect::<Vec<_>>()
        });
    let from_heartbeat = || {
        metrics
            .and_then(|m| m.get("errorCodes"))
            .and_then(Value::as_array)
            .map(|codes| codes.iter().filter_map(Value::as_str).collect::<Vec<_>>())
    };
    from_status
        .or_else(from_heartbeat)
        .unwrap_or_default()
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// Why a device is not reachable, if it is not. An `online` device without a heartbeat yet is
/// reachable (its first heartbeat is on its way); a device that published neither is not known
/// to be.
fn unreachable(availability: Option<Availability>, heartbeat: HeartbeatAge) -> Option<String> {
    use Availability::{Offline, Online};
    match (availability, heartbeat) {
        (Some(Offline), _) => Some(
            "its availability is offline (the broker published its last will, or roost connect stopped)"
                .into(),
        ),
        (_, HeartbeatAge::Overdue { age, interval }) => Some(format!(
            "its last heartbeat is {} old, more than two intervals of {}",
            human_age(age),
            human_age(interval)
        )),
        (None, HeartbeatAge::Missing) => {
            Some("it published neither its availability nor a heartbeat".into())
        }
        (Some(Online), HeartbeatAge::Missing | HeartbeatAge::Fresh)
        | (None, HeartbeatAge::Fresh) => None,
    }
}

/// The exit code of `roost fleet`: 0 when there are devices and every one is reachable and
/// `Running`, 1 otherwise.
pub fn exit_code(rows: &[DeviceRow]) -> u8 {
    match !rows.is_empty() && rows.iter().all(DeviceRow::is_healthy) {
        true => 0,
        false => 1,
    }
}

/// `42s`, `5m`, `3h`, `2d`: whole units, rounded down.
pub fn human_age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// One aligned line per device under a header, then for each unreachable device its problem
/// and the recommended action; nothing at all without devices.
pub fn render_human(rows: &[DeviceRow], now: Timestamp) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let header = [
        "DEVICE",
        "DEPLOYMENT",
        "PHASE",
        "STATUS",
        "ERRORS",
        "LAST RECORDING",
        "LAST SEEN",
        "AVAILABILITY",
        "REMOTE",
        "POWER",
        "PROBLEM",
    ]
    .map(String::from);
    let dash = || "-".to_string();
    let ago = |secs: Option<u64>| secs.map_or_else(dash, |s| format!("{} ago", human_age(s)));
    let mut table = vec![header.to_vec()];
    for r in rows {
        table.push(vec![
            r.device_id.clone(),
            r.deployment.clone().unwrap_or_else(dash),
            r.phase.map_or_else(dash, |p| format!("{p:?}")),
            r.status.map_or_else(dash, |s| format!("{s:?}")),
            match r.error_codes.is_empty() {
                true => dash(),
                false => r.error_codes.join(","),
            },
            ago(r.last_recording_age_seconds),
            ago(r
                .last_seen
                .map(|t| now.duration_since(t).as_secs().max(0) as u64)),
            match r.availability {
                Some(Availability::Online) => "online".into(),
                Some(Availability::Offline) => "offline".into(),
                None => dash(),
            },
            remote_cell(r),
            power_cell(r),
            r.problem.as_ref().map_or_else(dash, |p| p.code.to_string()),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| table.iter().map(|line| line[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in &table {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    for r in rows {
        if let Some(p) = &r.problem {
            out += &format!(
                "\n{} {}: {}\n  Recommended action: {}\n",
                r.device_id, p.code, p.message, p.action
            );
        }
    }
    out
}

/// The rows as a JSON array (stable keys; absent values are `null`).
pub fn render_json(rows: &[DeviceRow]) -> String {
    serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into()) + "\n"
}

/// What `roost fleet` prints and its exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetOutcome {
    /// For stdout.
    pub stdout: String,
    /// For stderr.
    pub stderr: String,
    /// 0 all reachable and Running, 1 otherwise, 2 the broker could not be read.
    pub exit_code: u8,
}

/// `roost fleet`: gathers, judges at the time the gathering ended, renders.
pub fn run(options: &FleetOptions, json: bool) -> FleetOutcome {
    let heard = match collect(options) {
        Ok(heard) => heard,
        Err(problem) => {
            let action = errors::lookup(&problem.code).map_or("", |c| c.action);
            return FleetOutcome {
                stdout: String::new(),
                stderr: format!(
                    "{}: {}\nRecommended action: {action}\n",
                    problem.code, problem.message
                ),
                exit_code: 2,
            };
        }
    };
    let now = Timestamp::now();
    let rows = heard.rows(now);
    let stderr = match rows.is_empty() {
        true => format!(
            "no device has published under {}/ on {}\n",
            options.prefix, options.broker
        ),
        false => String::new(),
    };
    FleetOutcome {
        stdout: match json {
            true => render_json(&rows),
            false => render_human(&rows, now),
        },
        stderr,
        exit_code: exit_code(&rows),
    }
}

/// Reads every retained (and any live) message on `<prefix>/+/status`, `<prefix>/+/availability`
/// and `<prefix>/+/heartbeat` until none arrived for `options.wait`, then disconnects. A broker
/// that cannot be reached, refuses the credentials or presents an untrusted certificate is a
/// DEP_E501/E502/E503 problem; a secret file that cannot be read is DEP_E507.
pub fn collect(options: &FleetOptions) -> Result<Gathered, Problem> {
    let mqtt_options = mqtt_options(options)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Problem::new(errors::INTERNAL, format!("cannot start a runtime: {e}")))?;
    let filters = ["status", "availability", "heartbeat", "desired/report"]
        .map(|kind| SubscribeFilter::new(format!("{}/+/{kind}", options.prefix), QoS::AtMostOnce));
    runtime
        .block_on(gather(
            mqtt_options,
            filters.to_vec(),
            options.wait.as_std(),
        ))
        .map_err(|e| mqtt::classify(&e, &options.broker.to_string()))
}

fn mqtt_options(options: &FleetOptions) -> Result<MqttOptions, Problem> {
    broker_options(options, "fleet")
}

/// Options for a tool's session with the fleet's broker: client id `roost-<role>-<pid>`,
/// credentials and TLS from `options`.
pub fn broker_options(options: &FleetOptions, role: &str) -> Result<MqttOptions, Problem> {
    // Unique per process, so two people looking at once do not throw each other off.
    let client_id = format!("roost-{role}-{}", std::process::id());
    let mut o = MqttOptions::new(client_id, options.broker.host.clone(), options.broker.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(user) = &options.username {
        let password = match &options.password_file {
            Some(path) => crate::secret_file::first_line(path).map_err(|e| {
                Problem::new(
                    errors::SECRET_UNREADABLE,
                    format!("password file {}: {e}", path.display()),
                )
            })?,
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if options.broker.tls {
        let config = mqtt::tls_config(options.ca_file.as_deref())?;
        o.set_transport(Transport::Tls(rumqttc::TlsConfiguration::Rustls(config)));
    }
    Ok(o)
}

/// What the fleet view reads of a message, and nothing more, taken as it arrives: a fleet of
/// 10,000 devices fits in a few MiB instead of their whole status documents (129 MiB).
/// Status documents and heartbeats keep their summary, error codes, the recorder's last file
/// and each deployment's name, phase, status and codes; other messages are small and kept.
pub fn slim(topic: &str, payload: &[u8]) -> Vec<u8> {
    let kind = topic.rsplit('/').next().unwrap_or("");
    if kind != "status" && kind != "heartbeat" {
        return payload.to_vec();
    }
    let Some(v) = json_object(payload) else {
        return payload.to_vec();
    };
    serde_json::to_vec(&slim_doc(&v)).unwrap_or_default()
}

fn slim_doc(v: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in [
        "deployment",
        "phase",
        "status",
        "updatedAt",
        "sentAt",
        "intervalSeconds",
        "lastRecordingAt",
        "errorCodes",
        "temperatureC",
        "batteryPercent",
        "undervoltage",
        "throttled",
        "powerSaving",
    ] {
        if let Some(x) = v.get(key) {
            out.insert(key.into(), x.clone());
        }
    }
    if let Some(errors) = v.get("errors").and_then(Value::as_array) {
        let codes: Vec<Value> = (errors.iter())
            .filter_map(|e| Some(serde_json::json!({"code": e.get("code")?})))
            .collect();
        out.insert("errors".into(), Value::Array(codes));
    }
    if let Some(components) = v.get("components").and_then(Value::as_array) {
        let recorder: Vec<Value> = (components.iter())
            .filter_map(|c| Some((c.get("name")?, recorder_seen(c)?)))
            .map(|(name, seen)| serde_json::json!({"name": name, "output": seen}))
            .collect();
        out.insert("components".into(), Value::Array(recorder));
    }
    if let Some(deployments) = v.get("deployments").and_then(Value::as_array) {
        let each: Vec<Value> = deployments.iter().map(slim_doc).collect();
        out.insert("deployments".into(), Value::Array(each));
    }
    if let Some(metrics) = v.get("metrics") {
        out.insert("metrics".into(), slim_doc(metrics));
    }
    Value::Object(out)
}

async fn gather(
    options: MqttOptions,
    filters: Vec<SubscribeFilter>,
    quiet: Duration,
) -> Result<Gathered, ConnectionError> {
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let started = tokio::time::Instant::now();
    let mut subscribed_at = None;
    let mut last_message = started;
    let mut messages = Gathered::default();
    loop {
        let deadline = match subscribed_at {
            None => started + CONNECT_TIMEOUT,
            Some(at) => (last_message + quiet).min(at + GATHER_AT_MOST),
        };
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(event) => event?,
            Err(_) if subscribed_at.is_none() => return Err(ConnectionError::NetworkTimeout),
            Err(_) => break,
        };
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                // Queued only: the event loop sends it on the next poll.
                client
                    .try_subscribe_many(filters.clone())
                    .map_err(|e| ConnectionError::Io(std::io::Error::other(e)))?;
            }
            Event::Incoming(Incoming::SubAck(_)) => {
                subscribed_at = Some(tokio::time::Instant::now());
                last_message = tokio::time::Instant::now();
            }
            Event::Incoming(Incoming::Publish(p)) => {
                messages.take(&p.topic, &p.payload);
                last_message = tokio::time::Instant::now();
            }
            _ => {}
        }
    }
    // A polite goodbye; the messages are in hand whether or not it gets out.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while !matches!(
                eventloop.poll().await,
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
            ) {}
        })
        .await;
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-06-01T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn at(seconds_before_now: i64) -> String {
        (now() - jiff::SignedDuration::from_secs(seconds_before_now)).to_string()
    }

    fn status(device: &str, status: &str, codes: &[&str], last_file_ago: i64) -> Message {
        let errors: Vec<Value> = codes
            .iter()
            .map(|c| serde_json::json!({"code": c, "message": "m", "action": "a"}))
            .collect();
        let doc = serde_json::json!({
            "messageId": "m1", "deviceId": device, "deployment": "dawn-chorus",
            "phase": "Succeeded", "status": status, "errors": errors,
            "updatedAt": at(60),
            "components": [{"name": "recorder", "status": "Running",
                            "output": {"lastFileAt": at(last_file_ago)}}],
        });
        (
            format!("roost/{device}/status"),
            doc.to_string().into_bytes(),
        )
    }

    fn availability(device: &str, text: &str) -> Message {
        (
            format!("roost/{device}/availability"),
            text.as_bytes().to_vec(),
        )
    }

    fn heartbeat(device: &str, sent_ago: i64, interval: u64) -> Message {
        let hb = serde_json::json!({
            "messageId": "h1", "deviceId": device, "deployment": "dawn-chorus",
            "sentAt": at(sent_ago), "intervalSeconds": interval,
            "metrics": {"phase": "Succeeded", "status": "Running", "errorCodes": [],
                        "lastRecordingAt": at(sent_ago + 30)},
        });
        (
            format!("roost/{device}/heartbeat"),
            hb.to_string().into_bytes(),
        )
    }

    fn one(messages: &[Message]) -> DeviceRow {
        let rows = fleet_view(messages, now());
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows.into_iter().next().unwrap()
    }

    /// (case, messages, problem expected, healthy expected)
    #[test]
    fn each_device_is_judged_from_what_it_last_published() {
        let cases: Vec<(&str, Vec<Message>, Option<&str>, bool)> = vec![
            (
                "online and fresh",
                vec![
                    status("d", "Running", &[], 40),
                    availability("d", "online"),
                    heartbeat("d", 5, 10),
                ],
                None,
                true,
            ),
            (
                "offline by availability, heartbeat still fresh",
                vec![
                    status("d", "Running", &[], 40),
                    availability("d", "offline"),
                    heartbeat("d", 5, 10),
                ],
                Some("availability is offline"),
                false,
            ),
            (
                "heartbeat older than two intervals while the will is not out yet",
                vec![
                    status("d", "Running", &[], 40),
                    availability("d", "online"),
                    heartbeat("d", 21, 10),
                ],
                Some("last heartbeat is 21s old, more than two intervals of 10s"),
                false,
            ),
            (
                "exactly two intervals is still on time",
                vec![availability("d", "online"), heartbeat("d", 20, 10)],
                None,
                true,
            ),
            (
                "online, no heartbeat yet",
                vec![status("d", "Running", &[], 40), availability("d", "online")],
                None,
                true,
            ),
            (
                "neither availability nor heartbeat",
                vec![status("d", "Running", &[], 40)],
                Some("neither its availability nor a heartbeat"),
                false,
            ),
            (
                "reachable but in error",
                vec![
                    status("d", "Error", &["DEP_E311", "DEP_E313"], 4000),
                    availability("d", "online"),
                ],
                None,
                false,
            ),
            (
                "unknown JSON and text are ignored, the topic still names the device",
                vec![
                    ("roost/d/status".into(), b"not json".to_vec()),
                    ("roost/d/heartbeat".into(), b"[1,2]".to_vec()),
                    availability("d", "maybe"),
                ],
                Some("neither its availability nor a heartbeat"),
                false,
            ),
        ];
        for (case, messages, problem, healthy) in cases {
            let row = one(&messages);
            match (problem, &row.problem) {
                (None, None) => {}
                (Some(why), Some(p)) => {
                    assert_eq!(p.code, "DEP_E151", "{case}");
                    assert!(
                        p.message.starts_with("device offline or not reachable: ")
                            && p.message.contains(why),
                        "{case}: {}",
                        p.message
                    );
                    assert_eq!(p.action, errors::RUNTIME_UNREACHABLE_IN_FLEET, "{case}");
                }
                (want, got) => panic!("{case}: wanted {want:?}, got {got:?}"),
            }
            assert_eq!(row.is_healthy(), healthy, "{case}");
        }
    }

    #[test]
    fn a_row_carries_the_status_documents_facts() {
        let row = one(&[
            status("d", "Error", &["DEP_E311"], 4000),
            availability("d", "online"),
            heartbeat("d", 5, 600),
        ]);
        assert_eq!(row.deployment.as_deref(), Some("dawn-chorus"));
        assert_eq!(row.phase, Some(Phase::Succeeded));
        assert_eq!(row.status, Some(OverallStatus::Error));
        assert_eq!(row.error_codes, ["DEP_E311"]);
        // The heartbeat's lastRecordingAt (35s ago) is newer than the status's lastFileAt.
        assert_eq!(row.last_recording_age_seconds, Some(35));
        assert_eq!(
            row.last_seen,
            Some(now() - jiff::SignedDuration::from_secs(5))
        );
        assert_eq!(row.availability, Some(Availability::Online));
    }

    #[test]
    fn a_heartbeat_alone_stands_in_for_the_status() {
        let row = one(&[heartbeat("d", 5, 600)]);
        assert_eq!(row.status, Some(OverallStatus::Running));
        assert_eq!(row.deployment.as_deref(), Some("dawn-chorus"));
        assert!(row.problem.is_none() && row.is_healthy());
    }

    #[test]
    fn the_newest_message_of_a_topic_wins_and_rows_are_sorted() {
        let rows = fleet_view(
            &[
                availability("b", "online"),
                availability("a", "online"),
                availability("a", "offline"),
                ("roost/a/state/status".into(), b"Running".to_vec()),
                ("elsewhere".into(), b"x".to_vec()),
            ],
            now(),
        );
        let ids: Vec<&str> = rows.iter().map(|r| r.device_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(rows[0].availability, Some(Availability::Offline));
        assert_eq!(exit_code(&rows), 1);
        assert_eq!(exit_code(&[]), 1, "no device at all is not a healthy fleet");
        assert_eq!(render_human(&[], now()), "");
    }

    #[test]
    fn the_exit_code_is_zero_only_for_a_reachable_running_fleet() {
        let fine = [
            status("a", "Running", &[], 10),
            availability("a", "online"),
            status("b", "Running", &[], 10),
            heartbeat("b", 1, 10),
        ];
        assert_eq!(exit_code(&fleet_view(&fine, now())), 0);
        let pending = [status("a", "Pending", &[], 10), availability("a", "online")];
        assert_eq!(exit_code(&fleet_view(&pending, now())), 1);
    }

    #[test]
    fn human_output_is_aligned_and_explains_each_unreachable_device() {
        let rows = fleet_view(
            &[
                status("dev-a", "Running", &[], 40),
                availability("dev-a", "online"),
                availability("dev-bb", "offline"),
            ],
            now(),
        );
        let text = render_human(&rows, now());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("DEVICE  DEPLOYMENT   PHASE"), "{text}");
        let column = lines[0].find("STATUS").unwrap();
        assert_eq!(&lines[1][column..column + 7], "Running", "{text}");
        assert!(
            lines[1].contains("40s ago") && lines[1].contains("60s ago"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("dev-bb") && lines[2].ends_with("DEP_E151"),
            "{text}"
        );
        assert!(
            text.contains(
                "\ndev-bb DEP_E151: device offline or not reachable: its availability is offline"
            ) && text.contains("  Recommended action: "),
            "{text}"
        );
    }

    #[test]
    fn json_output_has_every_key_for_every_device() {
        let rows = fleet_view(&[availability("d", "offline")], now());
        let v: Value = serde_json::from_str(&render_json(&rows)).unwrap();
        let d = &v[0];
        for key in [
            "deviceId",
            "deployment",
            "phase",
            "status",
            "errorCodes",
            "lastRecordingAgeSeconds",
            "lastSeen",
            "availability",
            "problem",
        ] {
            assert!(d.get(key).is_some(), "{key} missing: {d}");
        }
        assert_eq!(d["availability"], "offline");
        assert_eq!(d["problem"]["code"], "DEP_E151");
        assert!(d["problem"]["action"].as_str().is_some());
        assert_eq!(d["deployment"], Value::Null);
    }

    #[test]
    fn a_slimmed_message_gives_the_same_row_as_the_whole_one() {
        let mut dir_status = serde_json::json!({
            "deployment": "a, b", "phase": "Succeeded", "status": "Error", "updatedAt": at(5),
            "errors": [{"code": "DEP_E161", "message": "long text", "action": "more text"}],
            "components": [
                {"name": "recorder", "status": "Running", "output": {"lastFileAt": at(60), "big": "x".repeat(5000)}},
                {"name": "curator", "status": "Running", "output": {"queue": 4}}
            ],
            "deployments": [{"deployment": "a", "phase": "Succeeded", "status": "Error", "errors": [{"code": "DEP_E161", "message": "m"}], "components": []}]
        });
        dir_status["reconciler"] = serde_json::json!({"pid": 1});
        let raw = vec![
            (
                "roost/pi-1/status".to_string(),
                dir_status.to_string().into_bytes(),
            ),
            heartbeat("pi-1", 30, 600),
            availability("pi-1", "online"),
            (
                "roost/pi-1/desired/report".to_string(),
                br#"{"state":"passed","desiredVersion":3,"appliedVersion":3}"#.to_vec(),
            ),
        ];
        let slimmed: Vec<Message> = raw.iter().map(|(t, p)| (t.clone(), slim(t, p))).collect();
        let total = |m: &[Message]| m.iter().map(|(_, p)| p.len()).sum::<usize>();
        assert!(
            total(&slimmed) * 4 < total(&raw),
            "{} vs {}",
            total(&slimmed),
            total(&raw)
        );
        let (whole, slim_row) = (one(&raw), one(&slimmed));
        let strip = |mut r: DeviceRow| {
            r.deployments.iter_mut().for_each(|d| *d = serde_json::json!({"deployment": d["deployment"], "phase": d["phase"], "status": d["status"]}));
            r
        };
        assert_eq!(strip(whole), strip(slim_row));
        assert_eq!(one(&slimmed).error_codes, vec!["DEP_E161"]);
        assert_eq!(one(&slimmed).remote_state.as_deref(), Some("passed"));
    }

    #[test]
    fn the_quiet_wait_is_bounded() {
        assert_eq!(
            "500ms".parse::<QuietWait>().unwrap().as_std(),
            Duration::from_millis(500)
        );
        assert_eq!(QuietWait::default().as_std(), Duration::from_secs(2));
        for bad in ["0s", "11s", "1h", "two"] {
            assert!(bad.parse::<QuietWait>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ages_read_in_whole_units() {
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(119), "119s");
        assert_eq!(human_age(120), "2m");
        assert_eq!(human_age(7200), "2h");
        assert_eq!(human_age(3 * 86_400 + 5), "3d");
    }
}
