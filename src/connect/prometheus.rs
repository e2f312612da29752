//! The Prometheus text file for node_exporter's textfile collector: `roost_*` metrics with HELP
//! and TYPE lines, rendered from the status document and the connector's facts. Pure rendering;
//! the connector writes it whole (temp file in the same folder, rename).

use crate::recorder::RecorderOutput;
use std::fmt::Write;

use super::messages::Facts;
use super::report::ConnectReport;
use crate::status::{OverallStatus, Phase, StatusDoc};

const PHASES: [Phase; 6] = [
    Phase::InProgress,
    Phase::Provisioning,
    Phase::Succeeded,
    Phase::FailedToStart,
    Phase::PartiallyDeprovisioned,
    Phase::Stopped,
];
const STATUSES: [OverallStatus; 5] = [
    OverallStatus::Running,
    OverallStatus::Pending,
    OverallStatus::Error,
    OverallStatus::Unknown,
    OverallStatus::Stopped,
];

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The text file's content for `doc` (none yet: only the device's own metrics).
pub fn render(
    doc: Option<&StatusDoc>,
    facts: &Facts,
    report: &ConnectReport,
    device_id: &str,
) -> String {
    let dev = format!("device=\"{}\"", label(device_id));
    let mut out = String::new();
    if let Some(doc) = doc {
        let phase: Vec<(String, f64)> = PHASES
            .iter()
            .map(|p| {
                (
                    format!("{{{dev},phase=\"{p:?}\"}}"),
                    f64::from(u8::from(doc.phase == *p)),
                )
            })
            .collect();
        metric(
            &mut out,
            "roost_phase",
            "gauge",
            "1 for the deployment's current phase, 0 for the others.",
            &phase,
        );
        let status: Vec<(String, f64)> = STATUSES
            .iter()
            .map(|s| {
                (
                    format!("{{{dev},status=\"{s:?}\"}}"),
                    f64::from(u8::from(doc.status == *s)),
                )
            })
            .collect();
        metric(
            &mut out,
            "roost_status",
            "gauge",
            "1 for the deployment's current status, 0 for the others.",
            &status,
        );
        metric(
            &mut out,
            "roost_errors",
            "gauge",
            "Errors the status document reports now.",
            &[(format!("{{{dev}}}"), doc.errors.len() as f64)],
        );
        let restarts: Vec<(String, f64)> = doc
            .components
            .iter()
            .map(|c| {
                (
                    format!("{{{dev},component=\"{}\"}}", label(&c.name)),
                    f64::from(c.restart_count),
                )
            })
            .collect();
        metric(
            &mut out,
            "roost_component_restarts_total",
            "counter",
            "Restarts of each component since roost first started it under its spec.",
            &restarts,
        );
        let up: Vec<(String, f64)> = doc
            .components
            .iter()
            .map(|c| {
                (
                    format!("{{{dev},component=\"{}\"}}", label(&c.name)),
                    f64::from(u8::from(c.status == crate::status::ComponentState::Running)),
                )
            })
            .collect();
        metric(
            &mut out,
            "roost_component_up",
            "gauge",
            "1 when the component runs.",
            &up,
        );
        recorder_metrics(&mut out, doc, &dev);
    }
    if let Some(free) = facts.free_bytes {
        metric(
            &mut out,
            "roost_storage_free_bytes",
            "gauge",
            "Free bytes on the storage's file system.",
            &[(format!("{{{dev}}}"), free as f64)],
        );
    }
    metric(
        &mut out,
        "roost_outbox_messages",
        "gauge",
        "Messages waiting in the outbox.",
        &[(format!("{{{dev}}}"), facts.outbox.depth as f64)],
    );
    metric(
        &mut out,
        "roost_outbox_dropped_total",
        "counter",
        "Messages dropped to keep the outbox within its limits.",
        &[(format!("{{{dev}}}"), facts.outbox.dropped as f64)],
    );
    metric(
        &mut out,
        "roost_mqtt_connected",
        "gauge",
        "1 while the MQTT broker is connected.",
        &[(
            format!("{{{dev}}}"),
            f64::from(u8::from(report.mqtt.connected)),
        )],
    );
    out
}

fn recorder_metrics(out: &mut String, doc: &StatusDoc, dev: &str) {
    let Some(rec) = doc.output_as::<RecorderOutput>(crate::spec::recorder::RECORDER_COMPONENT)
    else {
        return;
    };
    let labels = format!("{{{dev}}}");
    for (name, value, kind, help) in [
        (
            "roost_recorder_files_written_total",
            rec.files_written,
            "counter",
            "Recordings written since the recorder started.",
        ),
        (
            "roost_recorder_samples_captured_total",
            rec.samples_captured,
            "counter",
            "Frames the audio device delivered since the recorder started.",
        ),
        (
            "roost_recorder_samples_dropped_total",
            rec.samples_dropped,
            "counter",
            "Frames lost because the writer fell behind.",
        ),
        (
            "roost_recorder_samples_discarded_total",
            rec.samples_discarded,
            "counter",
            "Frames delivered but not written (storage faults, low space).",
        ),
    ] {
        metric(out, name, kind, help, &[(labels.clone(), value as f64)]);
    }
    let last = rec.last_file_at;
    if let Some(t) = last {
        metric(
            out,
            "roost_recorder_last_file_timestamp_seconds",
            "gauge",
            "When the newest recording was completed (Unix time).",
            &[(labels.clone(), t.as_millisecond() as f64 / 1000.0)],
        );
    }
    if let Some(power) = &rec.power {
        power_metrics(out, power, &labels);
    }
}

/// The board's power and heat (only what the board reports: a missing sensor is no sample).
fn power_metrics(out: &mut String, power: &crate::power::PowerOutput, labels: &str) {
    let r = &power.reading;
    let flag = |b: bool| f64::from(u8::from(b));
    let now = r.now;
    for (name, value, help) in [
        (
            "roost_power_undervoltage",
            now.map(|c| flag(c.undervoltage)),
            "1 while the supply is below what the board needs (DEP_E901).",
        ),
        (
            "roost_power_undervoltage_since_boot",
            r.since_boot.map(|c| flag(c.undervoltage)),
            "1 when the supply fell too low at some time since boot (DEP_E902).",
        ),
        (
            "roost_power_throttled",
            now.map(|c| flag(c.throttled || c.frequency_capped)),
            "1 while the processor's clock is throttled or capped (DEP_E903).",
        ),
        (
            "roost_power_soc_temperature_celsius",
            r.temperature_c,
            "The SoC's temperature.",
        ),
        (
            "roost_power_battery_percent",
            r.battery_percent,
            "The battery's level.",
        ),
        (
            "roost_power_saving_level",
            Some(power.saving as u8 as f64),
            "What the energy policy pauses: 0 nothing, 1 detectors and spectrograms, 2 recording too (DEP_E906).",
        ),
    ] {
        if let Some(v) = value {
            metric(out, name, "gauge", help, &[(labels.to_string(), v)]);
        }
    }
}
