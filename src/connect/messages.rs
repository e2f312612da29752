//! What is sent: the status document, heartbeats (roost's and acoupi's JSON), Home Assistant
//! discovery and its state topics, each built from output facts (status.json, the recorder's
//! figures, metadata.db, free space, the outbox). Pure builders plus the few reads they need;
//! nothing here sends.

use crate::recorder::RecorderOutput;
use std::path::Path;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::outbox::OutboxStats;
use crate::status::StatusDoc;

/// The component name of the connector in status.json.
pub const CONNECT_COMPONENT: &str = "connect";

/// Facts a heartbeat reports besides the status document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// Recordings registered in the last hour (metadata.db), when it can be read.
    pub files_last_hour: Option<u64>,
    /// Free bytes on the storage's file system.
    pub free_bytes: Option<u64>,
    /// What waits in the outbox.
    pub outbox: OutboxStats,
}

/// The status document as compared between sends: the connector's own output (outbox depth,
/// link state) is left out, or each delivery would change the status and queue another.
pub fn comparable(doc: &StatusDoc) -> Value {
    // Meaning only: a counter that moves with every recording (files written, free space,
    // the connector's own outbox) rides in heartbeats, never in a status of its own.
    let components: Vec<Value> = doc
        .components
        .iter()
        .filter(|c| c.name != CONNECT_COMPONENT)
        .map(|c| {
            let warnings: Vec<&Value> = c
                .output
                .as_ref()
                .and_then(|o| o.get("warnings")?.as_array())
                .into_iter()
                .flatten()
                .filter_map(|w| w.get("code"))
                .collect();
            json!({"name": c.name, "status": c.status, "reason": c.reason,
                   "restartCount": c.restart_count, "warnings": warnings})
        })
        .collect();
    let errors: Vec<Value> = (doc.errors.iter())
        .map(|e| json!({"code": e.code, "component": e.component}))
        .collect();
    let mut summary = json!({
        "deployment": doc.deployment, "generation": doc.generation,
        "observedGeneration": doc.observed_generation, "phase": doc.phase,
        "status": doc.status, "specError": doc.spec_error.as_ref().map(|e| &e.code),
        "components": components, "errors": errors, "reconcilerPid": doc.reconciler.pid,
    });
    if !doc.deployments.is_empty() {
        // `roost run --dir`: each deployment of the device, for `roost fleet`.
        summary["deployments"] = (doc.deployments.iter())
            .map(|d| {
                json!({"deployment": d.deployment, "generation": d.generation,
                       "observedGeneration": d.observed_generation, "phase": d.phase,
                       "status": d.status, "specError": d.spec_error.as_ref().map(|e| &e.code),
                       "errorCodes": d.errors.iter().map(|e| &e.code).collect::<Vec<_>>()})
            })
            .collect();
    }
    summary
}

/// The largest message roost queues (bytes of payload): a quarter of the MQTT packet limit it
/// sets (1 MiB), and far more than any status, heartbeat or detection message needs.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The status message: the document itself with `messageId` and `deviceId` added. One larger
/// than [`MAX_MESSAGE_BYTES`] (hundreds of components, huge error messages) is summarised to
/// fit: component outputs left out, then messages cut to 500 characters, then components and
/// errors beyond the first 50; `summarised: true` says so.
pub fn status(doc: &StatusDoc, device_id: &str, message_id: &str) -> Value {
    let with_ids = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.insert("messageId".into(), json!(message_id));
            o.insert("deviceId".into(), json!(device_id));
        }
        v
    };
    let full = with_ids(serde_json::to_value(doc).unwrap_or(Value::Null));
    let fits = |v: &Value| v.to_string().len() <= MAX_MESSAGE_BYTES;
    if fits(&full) {
        return full;
    }
    let mut summary = doc.clone();
    summary.components.iter_mut().for_each(|c| c.output = None);
    let cut = |s: &mut String| {
        if let Some((i, _)) = s.char_indices().nth(500) {
            s.truncate(i);
            s.push('…');
        }
    };
    summary.errors.iter_mut().for_each(|e| cut(&mut e.message));
    if let Some(e) = summary.spec_error.as_mut() {
        cut(&mut e.message);
    }
    let mut v = with_ids(serde_json::to_value(&summary).unwrap_or(Value::Null));
    if !fits(&v) {
        summary.components.truncate(50);
        summary.errors.truncate(50);
        v = with_ids(serde_json::to_value(&summary).unwrap_or(Value::Null));
        v["componentsTotal"] = json!(doc.components.len());
        v["errorsTotal"] = json!(doc.errors.len());
    }
    v["summarised"] = json!(true);
    v
}

fn recorder_output(doc: &StatusDoc) -> Option<RecorderOutput> {
    doc.output_as(crate::spec::recorder::RECORDER_COMPONENT)
}

/// The heartbeat's metrics, in roost's names.
pub fn metrics(doc: Option<&StatusDoc>, facts: &Facts, now: Timestamp) -> Value {
    let rec = doc.and_then(recorder_output);
    let last_file_at = rec.as_ref().and_then(|r| r.last_file_at);
    let power = rec.as_ref().and_then(|r| r.power.as_ref());
    let now_bits = power.and_then(|p| p.reading.now);
    json!({
        "phase": doc.map(|d| d.phase),
        "status": doc.map(|d| d.status),
        "errorCodes": doc.map(|d| d.errors.iter().map(|e| e.code.clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "lastRecordingAt": last_file_at,
        "lastRecordingAgeSeconds": last_file_at.map(|t| now.duration_since(t).as_secs()),
        "filesWritten": rec.as_ref().map(|r| r.files_written),
        "filesLastHour": facts.files_last_hour,
        "samplesDropped": rec.as_ref().map(|r| r.samples_dropped),
        "freeBytes": facts.free_bytes,
        "clockSynchronized": rec.as_ref().and_then(|r| r.clock_synchronized),
        "outboxDepth": facts.outbox.depth,
        "outboxOldestAt": facts.outbox.oldest_at,
        "outboxDropped": facts.outbox.dropped,
        "temperatureC": power.and_then(|p| p.reading.temperature_c),
        "batteryPercent": power.and_then(|p| p.reading.battery_percent),
        "undervoltage": now_bits.map(|c| c.undervoltage),
        "throttled": now_bits.map(|c| c.throttled || c.frequency_capped),
        "powerSaving": power.map(|p| p.saving),
    })
}

/// Roost's heartbeat on `<prefix>/<deviceId>/heartbeat`.
pub fn heartbeat(
    doc: Option<&StatusDoc>,
    facts: &Facts,
    ids: (&str, &str),
    interval: std::time::Duration,
    now: Timestamp,
) -> Value {
    let (device_id, message_id) = ids;
    json!({
        "messageId": message_id,
        "deviceId": device_id,
        "deployment": doc.and_then(|d| d.deployment.clone()),
        "sentAt": now,
        "intervalSeconds": interval.as_secs(),
        "metrics": metrics(doc, facts, now),
    })
}

/// acoupi 0.8.0's `Heartbeat` (`acoupi.tasks.heartbeat`): `sent_on`, `device_id`, `status`
/// (`OK` only while the deployment runs without an error, else roost's status word: never
/// greener than roost's own status), `metrics` as acoupi's `Metric` list (`name`, `value` a
/// number, `captured_on`, `unit`), and roost's own metrics under `roost`, which acoupi's model
/// ignores. Published on `<acoupiTopic>/<deviceId>` (with `acoupiMessageType`:
/// `.../heartbeat`), so that what ingests acoupi's heartbeats takes roost's.
pub fn acoupi_heartbeat(
    doc: Option<&StatusDoc>,
    facts: &Facts,
    device_id: &str,
    now: Timestamp,
) -> Value {
    let healthy = doc
        .is_some_and(|d| d.status == crate::status::OverallStatus::Running && d.errors.is_empty());
    let status = match doc {
        _ if healthy => "OK".to_string(),
        Some(d) => format!("{:?}", d.status).to_lowercase(),
        None => "unknown".to_string(),
    };
    let roost = metrics(doc, facts, now);
    json!({
        "sent_on": now,
        "device_id": device_id,
        "status": status,
        "metrics": acoupi_metrics(&roost, now),
        "roost": roost,
    })
}

/// Roost's numeric metrics as acoupi `Metric`s (acoupi's own names where it has one:
/// `remaining_storage`); a metric roost does not know now is left out, never sent as 0.
fn acoupi_metrics(roost: &Value, now: Timestamp) -> Vec<Value> {
    const NAMES: [(&str, &str, &str); 12] = [
        ("remaining_storage", "freeBytes", "bytes"),
        ("files_written", "filesWritten", "files"),
        ("files_last_hour", "filesLastHour", "files"),
        ("samples_dropped", "samplesDropped", "samples"),
        ("last_recording_age", "lastRecordingAgeSeconds", "seconds"),
        ("outbox_depth", "outboxDepth", "messages"),
        ("outbox_dropped", "outboxDropped", "messages"),
        ("clock_synchronized", "clockSynchronized", "boolean"),
        ("temperature", "temperatureC", "celsius"),
        ("battery", "batteryPercent", "percent"),
        ("undervoltage", "undervoltage", "boolean"),
        ("throttled", "throttled", "boolean"),
    ];
    let metric = |name: &str, value: f64, unit: &str| json!({"name": name, "value": value, "captured_on": now, "unit": unit});
    let mut out: Vec<Value> = NAMES
        .iter()
        .filter_map(|(name, key, unit)| {
            let v = &roost[*key];
            let value = v
                .as_f64()
                .or_else(|| v.as_bool().map(|b| f64::from(u8::from(b))))?;
            Some(metric(name, value, unit))
        })
        .collect();
    // Errors are known only with a status document (none yet: not "0 errors").
    if let Some(codes) = roost["errorCodes"]
        .as_array()
        .filter(|_| !roost["status"].is_null())
    {
        out.push(metric("errors", codes.len() as f64, "count"));
    }
    out
}

/// One Home Assistant entity: its id, platform and the discovery fields beyond the common ones.
struct Entity {
    id: &'static str,
    platform: &'static str,
    name: &'static str,
    extra: Value,
}

fn entities() -> Vec<Entity> {
    vec![
        Entity {
            id: "status",
            platform: "sensor",
            name: "Status",
            extra: json!({}),
        },
        Entity {
            id: "phase",
            platform: "sensor",
            name: "Phase",
            extra: json!({}),
        },
        Entity {
            id: "problem",
            platform: "binary_sensor",
            name: "Problem",
            extra: json!({"dev_cla": "problem", "pl_on": "ON", "pl_off": "OFF"}),
        },
        Entity {
            id: "error_codes",
            platform: "sensor",
            name: "Error codes",
            extra: json!({}),
        },
        Entity {
            id: "last_recording",
            platform: "sensor",
            name: "Last recording",
            extra: json!({"dev_cla": "timestamp"}),
        },
        Entity {
            id: "files_written",
            platform: "sensor",
            name: "Recordings written",
            extra: json!({"stat_cla": "total_increasing"}),
        },
        Entity {
            id: "samples_dropped",
            platform: "sensor",
            name: "Samples dropped",
            extra: json!({"stat_cla": "total_increasing"}),
        },
        Entity {
            id: "free_bytes",
            platform: "sensor",
            name: "Free space",
            extra: json!({"dev_cla": "data_size", "unit_of_meas": "B", "stat_cla": "measurement"}),
        },
        Entity {
            id: "outbox_depth",
            platform: "sensor",
            name: "Outbox depth",
            extra: json!({"stat_cla": "measurement"}),
        },
        Entity {
            id: "temperature",
            platform: "sensor",
            name: "SoC temperature",
            extra: json!({"dev_cla": "temperature", "unit_of_meas": "°C", "stat_cla": "measurement"}),
        },
        Entity {
            id: "battery",
            platform: "sensor",
            name: "Battery",
            extra: json!({"dev_cla": "battery", "unit_of_meas": "%", "stat_cla": "measurement"}),
        },
        Entity {
            id: "undervoltage",
            platform: "binary_sensor",
            name: "Undervoltage",
            extra: json!({"dev_cla": "problem", "pl_on": "ON", "pl_off": "OFF"}),
        },
        Entity {
            id: "throttled",
            platform: "binary_sensor",
            name: "Throttled",
            extra: json!({"dev_cla": "problem", "pl_on": "ON", "pl_off": "OFF"}),
        },
    ]
}

/// Topic of one entity's retained state.
pub fn state_topic(prefix: &str, device_id: &str, entity: &str) -> String {
    format!("{prefix}/{device_id}/state/{entity}")
}

/// Topic of the availability (`online` / `offline`, retained; the last will says `offline`).
pub fn availability_topic(prefix: &str, device_id: &str) -> String {
    format!("{prefix}/{device_id}/availability")
}

/// Home Assistant device-based discovery: one retained config on
/// `<discoveryPrefix>/device/<deviceId>/config` listing every entity, each on its own state
/// topic, availability wired to roost's.
pub fn discovery(
    prefix: &str,
    discovery_prefix: &str,
    device_id: &str,
    deployment: Option<&str>,
) -> (String, Value) {
    let mut cmps = serde_json::Map::new();
    for e in entities() {
        let mut c = json!({
            "p": e.platform,
            "name": e.name,
            "uniq_id": format!("{device_id}_{}", e.id),
            "stat_t": state_topic(prefix, device_id, e.id),
        });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), e.extra.as_object()) {
            c.extend(extra.clone());
        }
        cmps.insert(e.id.to_string(), c);
    }
    let config = json!({
        "dev": {
            "ids": [format!("roost_{device_id}")],
            "name": format!("roost {device_id}"),
            "mf": "roost",
            "mdl": deployment.unwrap_or("field recorder"),
            "sw": env!("CARGO_PKG_VERSION"),
        },
        "o": {"name": "roost", "sw": env!("CARGO_PKG_VERSION")},
        "avty_t": availability_topic(prefix, device_id),
        "cmps": cmps,
    });
    (
        format!("{discovery_prefix}/device/{device_id}/config"),
        config,
    )
}

/// The Home Assistant entities whose state is a counter (sent with heartbeats only).
pub const COUNTER_ENTITIES: &[&str] = &[
    "last_recording",
    "files_written",
    "samples_dropped",
    "free_bytes",
    "outbox_depth",
    "temperature",
    "battery",
];

/// The Home Assistant entities of a sensor the board may not have: no state is published
/// while it is unknown (a board without it sends nothing more).
pub const BOARD_ENTITIES: &[&str] = &["temperature", "battery", "undervoltage", "throttled"];

/// Each entity's state now, as published on its state topic (strings, as Home Assistant reads).
pub fn entity_states(doc: &StatusDoc, facts: &Facts) -> Vec<(&'static str, String)> {
    let m = metrics(Some(doc), facts, Timestamp::now());
    let text = |v: &Value| match v {
        Value::Null => "unknown".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let in_error = matches!(doc.status, crate::status::OverallStatus::Error);
    vec![
        ("status", format!("{:?}", doc.status)),
        ("phase", format!("{:?}", doc.phase)),
        ("problem", if in_error { "ON" } else { "OFF" }.to_string()),
        ("error_codes", {
            let codes: Vec<&str> = doc.errors.iter().map(|e| e.code.as_str()).collect();
            if codes.is_empty() {
                "none".to_string()
            } else {
                codes.join(",")
            }
        }),
        ("last_recording", text(&m["lastRecordingAt"])),
        ("files_written", text(&m["filesWritten"])),
        ("samples_dropped", text(&m["samplesDropped"])),
        ("free_bytes", text(&m["freeBytes"])),
        ("outbox_depth", text(&m["outboxDepth"])),
        ("temperature", text(&m["temperatureC"])),
        ("battery", text(&m["batteryPercent"])),
        ("undervoltage", on_off(&m["undervoltage"])),
        ("throttled", on_off(&m["throttled"])),
    ]
}

/// A Home Assistant binary sensor's state from a metric (`unknown` when the board does not say).
fn on_off(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "ON".into(),
        Some(false) => "OFF".into(),
        None => "unknown".into(),
    }
}

/// Recordings registered in metadata.db over the hour before `now` (read-only, no waiting on a
/// lock); `None` when it cannot be read.
pub fn files_last_hour(storage: &Path, now: Timestamp) -> Option<u64> {
    crate::storage::read::recordings_since(storage, now - jiff::SignedDuration::from_hours(1))
}

/// Free bytes for unprivileged writers on the file system holding `path` (its nearest existing
/// folder: a storage not created yet lives on its parent's file system).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    crate::storage::free_bytes(existing).ok()
}
