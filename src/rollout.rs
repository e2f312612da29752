//! `roost fleet rollout`: signs a version for each chosen device, publishes it retained on the
//! device's desired topic batch by batch, waits until each device of a batch reports the
//! version through its health gate, and halts when more failed than allowed (optionally
//! reverting those that took it). Its progress is a retained message on
//! `<prefix>/_rollouts/<id>`, so `--resume ID` carries on after the controller stopped.
//! Pure parts ([`plan_batches`], [`outcome_of`], [`next_version`]) take everything as values.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fleet::FleetOptions;
use crate::remote::ledger::Files;
use crate::remote::signed::{ApplyOptions, Document};
use crate::spec::HumanDuration;

/// What `roost fleet rollout` was asked to do (a new rollout).
#[derive(Clone, Debug)]
pub struct RolloutRequest {
    /// The deployment files, by name.
    pub files: Files,
    /// Devices by id (`--devices`), or empty with `select`.
    pub devices: Vec<String>,
    /// `label=value` (`--select`).
    pub select: Option<(String, String)>,
    /// `--batches`.
    pub batches: Vec<BatchSize>,
    /// `--gate`.
    pub gate: HumanDuration,
    /// `--max-failed`.
    pub max_failed: usize,
    /// `--apply` and `--max-wait`.
    pub apply: ApplyOptions,
    /// `--version` (default: one above the highest any device of the fleet reports).
    pub version: Option<u64>,
}

/// How the controller runs: broker, key, output, patience.
#[derive(Clone, Debug)]
pub struct RolloutRun {
    /// The broker and prefix.
    pub broker: FleetOptions,
    /// The minisign secret key's text.
    pub key: String,
    /// Its password, when it is encrypted.
    pub key_password: Option<String>,
    /// How long a device may take beyond its gate (and `maxWait` when deferred) to report.
    pub timeout: Duration,
    /// Revert the devices that took the version when the rollout halts.
    pub revert_on_halt: bool,
    /// `--json`.
    pub json: bool,
}

/// One entry of `--batches`: a count or a percentage of the devices (cumulative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchSize {
    /// This many devices in all by the end of the batch.
    Count(usize),
    /// This percentage of the devices in all by the end of the batch.
    Percent(u8),
}

impl std::str::FromStr for BatchSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("batch {s:?}: give a count (1, 5) or a percentage (10%, 100%)");
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Self::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::Count(n)),
                _ => Err(bad()),
            },
        }
    }
}

/// The devices of each batch, in order: each entry says how many devices in all have the
/// version by its end; the last batch always reaches every device.
pub fn plan_batches(devices: &[String], sizes: &[BatchSize]) -> Vec<Vec<String>> {
    let n = devices.len();
    let mut out = Vec::new();
    let mut done = 0;
    for size in sizes {
        let upto = match *size {
            BatchSize::Count(c) => c.min(n),
            BatchSize::Percent(p) => (n * usize::from(p)).div_ceil(100).min(n),
        };
        if upto > done {
            out.push(devices[done..upto].to_vec());
            done = upto;
        }
    }
    if done < n {
        out.push(devices[done..].to_vec());
    }
    out
}

/// A device's standing in the rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum DeviceOutcome {
    /// Not sent yet.
    Queued,
    /// Sent; no verdict yet.
    Sent,
    /// Applied and through its gate.
    Passed,
    /// Reverted by its gate, refused, or silent past the timeout.
    Failed {
        /// Why, with codes.
        reason: String,
        /// No report came in time (the device may still take the version: at a halt it is
        /// asked to drop it).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        silent: bool,
    },
    /// Taken back by the controller after a halt.
    Reverted,
}

/// The rollout's record, retained on `<prefix>/_rollouts/<id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The rollout's id.
    pub id: String,
    /// The version every device gets.
    pub version: u64,
    /// The files.
    pub files: Files,
    /// Apply options.
    pub apply: ApplyOptions,
    /// The gate's length.
    pub gate: HumanDuration,
    /// Most failures before a halt.
    pub max_failed: usize,
    /// The devices of each batch.
    pub batches: Vec<Vec<String>>,
    /// The batch being worked on (== batches.len() when done).
    pub batch: usize,
    /// Each device's standing.
    pub devices: BTreeMap<String, DeviceOutcome>,
    /// `running`, `done`, `halted`.
    pub state: String,
}

impl Progress {
    fn failed(&self) -> Vec<(&String, &String)> {
        (self.devices.iter())
            .filter_map(|(d, o)| match o {
                DeviceOutcome::Failed { reason, .. } => Some((d, reason)),
                _ => None,
            })
            .collect()
    }
}

/// A device's verdict on `version` from its report (`<prefix>/<id>/desired/report`), or
/// `None` while it has none.
pub fn outcome_of(report: &serde_json::Value, version: u64) -> Option<DeviceOutcome> {
    let num = |k: &str| report.get(k).and_then(serde_json::Value::as_u64);
    let state = report.get("state").and_then(|s| s.as_str()).unwrap_or("");
    if let Some(r) = report
        .get("reverted")
        .filter(|r| r.get("version").and_then(|v| v.as_u64()) == Some(version))
    {
        let codes: Vec<&str> = (r
            .get("codes")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten())
        .filter_map(|c| c.as_str())
        .collect();
        let reason = r.get("reason").and_then(|s| s.as_str()).unwrap_or("");
        return Some(DeviceOutcome::Failed {
            reason: format!(
                "reverted by its health gate ({}): {reason}",
                codes.join(",")
            ),
            silent: false,
        });
    }
    if let Some(r) = report.get("refused").filter(|_| state == "refused")
        && r.get("version").and_then(|v| v.as_u64()) == Some(version)
    {
        let code = r.get("code").and_then(|s| s.as_str()).unwrap_or("");
        let reason = r.get("reason").and_then(|s| s.as_str()).unwrap_or("");
        return Some(DeviceOutcome::Failed {
            reason: format!("refused {code}: {reason}"),
            silent: false,
        });
    }
    let passed = state == "passed" && num("appliedVersion") == Some(version);
    passed.then_some(DeviceOutcome::Passed)
}

/// One above the highest version any report shows; `None` when a report claims the highest
/// version there is (a device that reports so takes no newer one).
pub fn next_version<'a>(reports: impl Iterator<Item = &'a serde_json::Value>) -> Option<u64> {
    let highest = reports
        .filter_map(|r| r.get("highestVersion")?.as_u64())
        .max();
    highest.unwrap_or(0).checked_add(1)
}

/// The devices whose report carries `label=value`.
pub fn select(
    reports: &BTreeMap<String, serde_json::Value>,
    label: &str,
    value: &str,
) -> Vec<String> {
    (reports.iter())
        .filter(|(_, r)| r.get("labels").and_then(|l| l.get(label)?.as_str()) == Some(value))
        .map(|(d, _)| d.clone())
        .collect()
}

/// What the controller ends with.
pub struct RolloutOutcome {
    /// The final record, for `--json` and the summary.
    pub progress: Option<Progress>,
    /// 0 done, 1 halted, 2 could not run.
    pub exit_code: u8,
    /// Why it could not run.
    pub error: Option<String>,
}

mod run;
pub use run::{resume, start};

#[cfg(test)]
mod tests;

/// Reads the deployment files of `--file` or `--dir`.
pub fn read_files(file: Option<&PathBuf>, dir: Option<&PathBuf>) -> std::io::Result<Files> {
    match (file, dir) {
        (Some(f), _) => {
            let name = (f.file_name()).map_or("deployment.yaml".into(), |n| {
                n.to_string_lossy().into_owned()
            });
            Ok(Files::from([(name, std::fs::read_to_string(f)?)]))
        }
        (None, Some(d)) => {
            let target = crate::remote::ledger::Target::Dir(d.clone());
            std::fs::read_dir(d)?;
            Ok(target.read())
        }
        (None, None) => Ok(Files::new()),
    }
}

/// Signs `version` of `progress` for `device`.
fn document(progress: &Progress, device: &str) -> Document {
    Document {
        device: device.to_string(),
        version: progress.version,
        files: progress.files.clone(),
        revert_of: None,
        apply: progress.apply,
        gate: Some(progress.gate),
        rollout: Some(progress.id.clone()),
    }
}

fn progress_topic(prefix: &str, id: &str) -> String {
    format!("{prefix}/_rollouts/{id}")
}

/// A line of progress on stderr: a bar on a terminal, a plain line otherwise.
fn say_progress(p: &Progress, json: bool) {
    if json {
        return;
    }
    let total = p.devices.len();
    let passed = p
        .devices
        .values()
        .filter(|o| **o == DeviceOutcome::Passed)
        .count();
    let failed = p.failed().len();
    let width = 30;
    let filled = (passed + failed) * width / total.max(1);
    let bar: String = "#".repeat(filled) + &".".repeat(width - filled);
    let mut err = std::io::stderr().lock();
    let line = format!(
        "rollout {} v{}: batch {}/{} [{bar}] {passed} passed, {failed} failed of {total}",
        p.id,
        p.version,
        (p.batch + 1).min(p.batches.len()),
        p.batches.len()
    );
    use std::io::IsTerminal;
    let _ = match std::io::stderr().is_terminal() {
        true => write!(err, "\r{line}"),
        false => writeln!(err, "{line}"),
    };
}

/// `roost fleet rollout` from its arguments: (stdout, stderr, exit code).
pub fn command(args: crate::cli::RolloutArgs) -> (String, String, u8) {
    let fail = |e: String| (String::new(), format!("roost fleet rollout: {e}\n"), 2);
    let key = match std::fs::read_to_string(&args.key) {
        Ok(k) => k,
        Err(e) => return fail(format!("--key {}: {e}", args.key.display())),
    };
    let key_password = match &args.key_password_file {
        Some(p) => match crate::secret_file::first_line(p) {
            Ok(t) => Some(t),
            Err(e) => return fail(format!("--key-password-file {}: {e}", p.display())),
        },
        None => std::env::var("ROOST_KEY_PASSWORD").ok(),
    };
    let run = RolloutRun {
        broker: FleetOptions {
            broker: args.broker,
            prefix: args.prefix,
            username: args.username,
            password_file: args.password_file,
            ca_file: args.ca_file,
            wait: Default::default(),
        },
        key,
        key_password,
        timeout: args.timeout.as_std(),
        revert_on_halt: args.revert,
        json: args.json,
    };
    let outcome = match &args.resume {
        Some(id) => resume(id, &run),
        None => {
            let files = match read_files(args.file.as_ref(), args.dir.as_ref()) {
                Ok(f) => f,
                Err(e) => return fail(format!("cannot read the deployment files: {e}")),
            };
            let req = RolloutRequest {
                files,
                devices: args.devices,
                select: args.select,
                batches: args.batches,
                gate: args.gate,
                max_failed: args.max_failed,
                apply: ApplyOptions {
                    at: args.apply,
                    max_wait: args.max_wait,
                },
                version: args.version,
            };
            start(req, &run)
        }
    };
    render(&outcome, args.json)
}

/// The outcome as (stdout, stderr, exit code): a summary, or `--json` (the files left out).
pub fn render(outcome: &RolloutOutcome, json: bool) -> (String, String, u8) {
    let Some(p) = &outcome.progress else {
        let e = outcome.error.clone().unwrap_or_default();
        return (
            String::new(),
            format!("roost fleet rollout: {e}\n"),
            outcome.exit_code,
        );
    };
    if json {
        let mut v = serde_json::to_value(p).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("files");
        }
        return (format!("{v:#}\n"), String::new(), outcome.exit_code);
    }
    let passed = p
        .devices
        .values()
        .filter(|o| **o == DeviceOutcome::Passed)
        .count();
    let mut out = format!(
        "\nrollout {} version {}: {} ({passed} of {} devices passed)\n",
        p.id,
        p.version,
        p.state,
        p.devices.len()
    );
    for (d, why) in p.failed() {
        out += &format!("  {d}: {why}\n");
    }
    let reverted: Vec<&String> = (p.devices.iter())
        .filter(|(_, o)| **o == DeviceOutcome::Reverted)
        .map(|(d, _)| d)
        .collect();
    if !reverted.is_empty() {
        out += &format!(
            "  asked to revert: {}\n",
            reverted
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if p.state == "halted" {
        out += "halted: fix the deployment and start a new rollout (a newer version); the devices that did not pass were asked to drop the version\n";
    }
    (out, String::new(), outcome.exit_code)
}
