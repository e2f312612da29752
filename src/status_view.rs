//! What `roost status` says to people on site: a first line that answers "is it recording?",
//! then the recorder's figures (last file and its age, files today, samples lost, free space
//! and days until full), each component in plain words, every problem with its code and what
//! to do, times in the deployment's time zone. Rendering is pure ([`render`]); [`gather`] reads
//! the few facts status.json does not hold (metadata.db, free space, the recorder's settings).
//! The status.json contract and `--json` are untouched.

use crate::component::ConfigFile;
use crate::curate::report::CuratorReport;
use crate::recorder::{RecorderOutput, RecorderState};
use crate::storage::RepairPhase;
use std::fmt::Write;
use std::path::Path;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::status::{ComponentState, ComponentStatus, OverallStatus, Phase, Reason, StatusDoc};
use crate::status_seen::Seen;

/// Facts beside the status document.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The deployment's time zone (the recorder's `timezone`), UTC when unknown.
    pub time_zone: Option<TimeZone>,
    /// Recordings registered since local midnight.
    pub files_today: Option<u64>,
    /// Bytes of audio a day at the rate of the last 24 hours' recordings (for the
    /// days-until-full estimate).
    pub bytes_last_day: Option<u64>,
    /// Free bytes on the storage's file system.
    pub free_bytes: Option<u64>,
    /// What a reader makes of status.json beyond its words (roost gone, out of date).
    pub seen: crate::status_seen::Seen,
}

/// Reads the facts for `doc` from the state folder: the recorder's configuration (time zone,
/// storage), metadata.db (read-only) and the storage's free space.
pub fn gather(doc: &StatusDoc, state_dir: &Path, now: Timestamp) -> Facts {
    let config = crate::recorder::RecordConfig::read(state_dir);
    let time_zone = config.as_ref().map(|c| c.recorder.time_zone());
    let storage = config.as_ref().map(|c| c.storage_path(state_dir));
    let tz = time_zone.clone().unwrap_or(TimeZone::UTC);
    let (files_today, bytes_last_day) = storage
        .as_deref()
        .map(|s| recorded(s, &tz, now))
        .unwrap_or((None, None));
    Facts {
        time_zone,
        files_today,
        bytes_last_day,
        free_bytes: storage
            .as_deref()
            .and_then(crate::connect::messages::free_bytes),
        seen: crate::status_seen::look(doc, state_dir, now).0,
    }
}

/// Recordings since local midnight, and bytes a day at the last 24 h's rate, from metadata.db.
fn recorded(storage: &Path, tz: &TimeZone, now: Timestamp) -> (Option<u64>, Option<u64>) {
    let midnight = now
        .to_zoned(tz.clone())
        .start_of_day()
        .map(|z| z.timestamp())
        .unwrap_or(now);
    let today = crate::storage::read::recordings_since(storage, midnight);
    let day_ago = now - SignedDuration::from_hours(24);
    // An estimate at 2 bytes a sample, said to be one. Over the span the last day's
    // recordings cover, so that a deployment a few minutes old is not taken for one that
    // records a few minutes a day. Only over an hour at least: a rate from a few minutes'
    // files, extrapolated to a day, jumps with every file (148 days, then 13, a minute later).
    let per_day = crate::storage::read::audio_since(storage, day_ago).and_then(|(bytes, first)| {
        let first = first?.max(day_ago);
        let span = now.duration_since(first).as_secs_f64();
        (span >= 3600.0).then(|| (bytes * 86_400.0 / span) as u64)
    });
    (today, per_day)
}

/// The human report.
pub fn render(doc: &StatusDoc, facts: &Facts, now: Timestamp) -> String {
    let tz = facts.time_zone.clone().unwrap_or(TimeZone::UTC);
    let mut out = String::new();
    // A file that was pushed and refused comes first: the pusher must learn it at once.
    if let Some(e) = &doc.spec_error {
        let at = match (e.line, e.column, &e.field) {
            (Some(l), Some(c), _) => format!("{}:{l}:{c}", e.file),
            (_, _, Some(f)) => format!("{} ({f})", e.file),
            _ => e.file.clone(),
        };
        // The loader's message may carry the position already: said once.
        let message = e
            .message
            .strip_prefix(&format!("{at}: "))
            .unwrap_or(&e.message);
        let kept = if doc.generation == 0 {
            "nothing runs until the file is valid (there are no earlier settings)".to_string()
        } else {
            format!(
                "the previous settings (version {}) stay in force",
                doc.generation
            )
        };
        let action = crate::errors::lookup(&e.code).map_or("", crate::errors::action_on_device);
        let _ = writeln!(
            out,
            "The desired state was refused ({}): {at}: {message}\n  {kept}\n  what to do: {action}\n",
            e.code
        );
    }
    let _ = writeln!(out, "{}", headline_in(doc, facts, &tz, now));
    if recorder(doc).is_none() && doc.status == OverallStatus::Running {
        // The packaged default records nothing: say how to get a recording.
        let _ = writeln!(
            out,
            "  To record: `roost devices` lists the microphones; `roost init` writes a deployment that records (site, microphone, schedule, storage)."
        );
    }
    recorder_section(&mut out, doc, facts, &tz, now);
    remote_section(&mut out, doc);
    let curated = curator_figures(doc);
    if !curated.is_empty() {
        let _ = writeln!(out, "\nDetectors and keep rules");
        for (label, value) in curated {
            let _ = writeln!(out, "  {label:<15}{value}");
        }
    }
    deployments_section(&mut out, doc);
    components_section(&mut out, doc);
    problems_section(&mut out, doc);
    let roost = match (doc.status, &facts.seen) {
        (OverallStatus::Stopped, _) => format!("stopped at {}", local(doc.updated_at, &tz)),
        (_, Seen::RoostGone) => format!("not running; last update {}", local(doc.updated_at, &tz)),
        (_, _) => format!(
            "pid {}, updated {}",
            doc.reconciler.pid,
            local(doc.updated_at, &tz)
        ),
    };
    let _ = writeln!(
        out,
        "\nDeployment {}: settings version {}; roost {} ({} runtime), {roost}",
        doc.deployment.as_deref().unwrap_or("(none yet)"),
        doc.generation,
        doc.reconciler.version,
        doc.reconciler.runtime,
    );
    out
}

fn recorder(doc: &StatusDoc) -> Option<(&ComponentStatus, RecorderOutput)> {
    let c = doc.component(crate::spec::recorder::RECORDER_COMPONENT)?;
    Some((c, c.output_as()?))
}

/// The first line of the report: recording, not recording and why, or stopped (times in the
/// deployment's time zone). `roost serve` shows it in large type.
pub fn headline(doc: &StatusDoc, facts: &Facts, now: Timestamp) -> String {
    let tz = facts.time_zone.clone().unwrap_or(TimeZone::UTC);
    headline_in(doc, facts, &tz, now)
}

fn headline_in(doc: &StatusDoc, facts: &Facts, tz: &TimeZone, now: Timestamp) -> String {
    match &facts.seen {
        Seen::RoostGone => {
            let recorder = doc.component(crate::spec::recorder::RECORDER_COMPONENT);
            let still = match recorder.map(|c| (c.status, c.pid)) {
                Some((ComponentState::Running, Some(pid))) => {
                    format!("the recorder (pid {pid}) still records, unsupervised; ")
                }
                Some(_) => "the recorder is not running either; ".to_string(),
                None => String::new(),
            };
            return format!(
                "NOT RUNNING: roost stopped unexpectedly; {still}this is what it last knew, at {}.",
                local(doc.updated_at, tz)
            );
        }
        Seen::Stale { due, why } => {
            let why = why
                .as_deref()
                .map_or("roost may be stuck".to_string(), |w| {
                    format!("roost cannot write it: {w}")
                });
            return format!(
                "STATUS OUT OF DATE: not rewritten since {} although a file was due by {}; {why}.",
                local(doc.updated_at, tz),
                local(*due, tz)
            );
        }
        Seen::Current => {}
    }
    if doc.status == OverallStatus::Stopped || doc.phase == Phase::Stopped {
        return format!("Stopped (since {}).", local(doc.updated_at, tz));
    }
    let Some((c, out)) = recorder(doc) else {
        return match doc.status {
            OverallStatus::Running => "Running (no recorder in this deployment).".to_string(),
            _ => format!("Not all is well: {}.", first_problem(doc)),
        };
    };
    match (c.status, out.state) {
        (ComponentState::Running, RecorderState::Recording) => match out.last_file_at {
            Some(t) => format!("Recording. Last file finished {} ago.", age(now, t)),
            None => "Recording (the first file is not finished yet).".to_string(),
        },
        (ComponentState::Running, RecorderState::Waiting) => waiting_line(&out, tz),
        (ComponentState::Running, RecorderState::Starting) => "Starting the recorder.".to_string(),
        // Files still arrive (metadata.db locked, samples dropped): say so, and what is wrong.
        // A recorder whose files stopped (DEP_E313) is not recording, whatever it reports.
        (ComponentState::Error, RecorderState::Recording)
            if c.reason != Some(Reason::NoRecordings) =>
        {
            format!("Recording, with a problem: {}.", first_problem(doc))
        }
        _ => format!("NOT RECORDING: {}.", first_problem(doc)),
    }
}

fn first_problem(doc: &StatusDoc) -> String {
    let refused = doc.spec_error.as_ref().map(|r| r.message.as_str());
    match doc
        .errors
        .iter()
        .find(|e| Some(e.message.as_str()) != refused)
    {
        Some(e) => format!("{} ({})", e.message, e.code),
        None if refused.is_some() => "the desired state was refused (above)".to_string(),
        None => "see the components below".to_string(),
    }
}

fn recorder_section(
    out: &mut String,
    doc: &StatusDoc,
    facts: &Facts,
    tz: &TimeZone,
    now: Timestamp,
) {
    let Some(figures) = recorder_figures_in(doc, facts, tz, now) else {
        return;
    };
    let _ = writeln!(out, "\nRecorder");
    for (label, value) in figures {
        let _ = writeln!(out, "  {label:<15}{value}");
    }
}

/// The recorder's figures as (label, value) pairs: last file and its age, files today, samples
/// lost, free space and days until full, clock. `None` without a recorder.
pub fn recorder_figures(
    doc: &StatusDoc,
    facts: &Facts,
    now: Timestamp,
) -> Option<Vec<(&'static str, String)>> {
    let tz = facts.time_zone.clone().unwrap_or(TimeZone::UTC);
    recorder_figures_in(doc, facts, &tz, now)
}

/// While the recorder's start-up repair (or the rebuild of a lost metadata.db) runs: how far
/// it has got. `None` once it is done, or when the report has no progress.
fn repair_line(rec: &RecorderOutput, tz: &TimeZone) -> Option<String> {
    let p = rec.repair.as_ref()?.progress.as_ref()?;
    let what = match p.phase {
        RepairPhase::Rows => "checking that each row's file is there",
        RepairPhase::Files => "looking for files without a row",
        RepairPhase::Done => return None,
    };
    let since = (p.started_at).map_or(String::new(), |t| format!(" since {}", local(t, tz)));
    Some(format!(
        "{what}{since}: {} rows and {} files checked, {} registered (recording goes on meanwhile)",
        p.rows_checked, p.files_checked, p.registered
    ))
}

/// The board's power and heat in words: temperature, battery, the firmware's word, and what
/// the energy policy pauses.
fn power_line(p: &crate::power::PowerOutput) -> String {
    use crate::spec::power::SavingLevel;
    let r = &p.reading;
    let mut parts = Vec::new();
    if let Some(t) = r.temperature_c {
        parts.push(format!("{t:.1} °C"));
    }
    if let Some(b) = r.battery_percent {
        let status = r.battery_status.as_deref().unwrap_or("");
        parts.push(format!("battery {b:.0} % {status}").trim_end().to_string());
    }
    let now = r.now.unwrap_or_default();
    match (r.now, r.since_boot) {
        (Some(_), _) if now.any() => parts.push(format!("NOW: {}", now.names().join(", "))),
        (_, Some(b)) if b.any() => parts.push(format!("since boot: {}", b.names().join(", "))),
        (Some(_), _) => parts.push("supply and clock normal".into()),
        _ => {}
    }
    match p.saving {
        SavingLevel::None => {}
        SavingLevel::Reduce => parts.push("SAVING: detectors and spectrograms paused".into()),
        SavingLevel::Stop => parts.push("SAVING: recording stopped".into()),
    }
    parts.join("; ")
}

fn recorder_figures_in(
    doc: &StatusDoc,
    facts: &Facts,
    tz: &TimeZone,
    now: Timestamp,
) -> Option<Vec<(&'static str, String)>> {
    let (_, rec) = recorder(doc)?;
    let mut figures = Vec::new();
    let last_line = match (&rec.last_file, rec.last_file_at) {
        (Some(f), Some(t)) => {
            let name = (f.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{name}, {} ago ({})", age(now, t), local(t, tz))
        }
        // The recorder started again (new settings, a restart): its report begins empty while
        // the storage holds today's files.
        _ if facts.files_today.is_some_and(|n| n > 0) => {
            let since =
                (rec.started_at).map_or(String::new(), |t| format!(" (at {})", local(t, tz)));
            format!("none since the recorder started{since}; the first is on its way")
        }
        _ => "none yet".to_string(),
    };
    figures.push(("last file", last_line));
    if let Some(n) = facts.files_today {
        figures.push(("files today", n.to_string()));
    }
    figures.push((
        "samples lost",
        format!(
            "{} dropped, {} not written",
            rec.samples_dropped, rec.samples_discarded
        ),
    ));
    if let Some(free) = facts.free_bytes {
        let days = match facts.bytes_last_day {
            Some(per_day) if per_day > 0 => format!(
                ", about {:.0} days at the last day's rate",
                free as f64 / per_day as f64
            ),
            None if facts.files_today.is_some_and(|n| n > 0) => {
                ", days until full after an hour of recording".into()
            }
            _ => String::new(),
        };
        figures.push(("free space", format!("{}{days}", bytes(free))));
    }
    if let Some(line) = rec.power.as_ref().map(power_line) {
        figures.push(("power", line));
    }
    if let Some(line) = repair_line(&rec, tz) {
        figures.push(("storage repair", line));
    }
    let clock = match rec.clock_synchronized {
        Some(true) => "synchronised",
        Some(false) => "NOT synchronised (file times may be wrong)",
        None => "unknown",
    };
    figures.push(("clock", clock.to_string()));
    Some(figures)
}

/// The curator's figures as (label, value): per detector what it analysed, what waits and
/// what it found in the last hour, then the files deleted by rule. Empty without a curator.
pub fn curator_figures(doc: &StatusDoc) -> Vec<(String, String)> {
    let Some(out) = doc.output_as::<CuratorReport>(crate::spec::curate::CURATOR_COMPONENT) else {
        return Vec::new();
    };
    let mut figures = Vec::new();
    for d in &out.detectors {
        let failure = (d.last_failure.as_ref())
            .map(|p| format!(", last failure {}", p.code))
            .unwrap_or_default();
        figures.push((
            d.name.clone(),
            format!(
                "{} analysed, {} failed, {} waiting, {} detections in the last hour{failure}",
                d.analysed, d.failed, d.backlog, d.detections_last_hour
            ),
        ));
    }
    let deleted: Vec<String> = (out.storage.deleted_by_rule.iter())
        .map(|(rule, n)| format!("{n} by {rule}"))
        .collect();
    if !deleted.is_empty() {
        figures.push(("files deleted".to_string(), deleted.join(", ")));
    }
    let held = out.storage.held_for_retention;
    if held > 0 {
        figures.push((
            "files held".to_string(),
            format!("{held} past maxAge or maxUsage, kept until analysed and their messages sent"),
        ));
    }
    let disagree = out.storage.clock_disagrees;
    if disagree > 0 {
        figures.push((
            "file times".to_string(),
            format!(
                "{disagree} recordings' clock times disagree with how long they have existed here (the clock was set or stepped since); maxAge counts their real age"
            ),
        ));
    }
    figures
}

/// `roost run --dir`: one line per deployment (its status, phase and file), worst news first
/// in its own words; `roost status NAME` shows one.
fn deployments_section(out: &mut String, doc: &StatusDoc) {
    if doc.deployments.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nDeployments");
    for d in &doc.deployments {
        let file = d.file.as_deref().unwrap_or("");
        let name = d.deployment.as_deref().unwrap_or("(refused)");
        let mut line = format!("  {name:<16} {:?} ({:?}), {file}", d.status, d.phase);
        if let Some(e) = &d.spec_error {
            let _ = write!(line, "; file refused: {}", e.code);
        } else if let Some(e) = d.errors.first() {
            let _ = write!(line, "; {}", e.code);
        }
        let _ = writeln!(out, "{line}");
    }
}

fn components_section(out: &mut String, doc: &StatusDoc) {
    let _ = writeln!(out, "\nComponents");
    if doc.components.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for c in &doc.components {
        let name = match &c.deployment {
            Some(d) => format!("{d}/{}", c.name),
            None => c.name.clone(),
        };
        let mut line = format!("  {name:<16} {}", component_in_words(c));
        if c.restart_count > 0 {
            let _ = write!(line, "; restarted {} times", c.restart_count);
        }
        if let Some(code) = c.exit_code.filter(|_| c.status != ComponentState::Running) {
            let _ = write!(line, "; last exit code {code}");
        }
        let _ = writeln!(out, "{line}");
    }
}

/// A component's state in words a field ecologist knows.
pub fn component_in_words(c: &ComponentStatus) -> &'static str {
    match (c.status, c.reason) {
        (ComponentState::Running, Some(Reason::Starting)) => "starting",
        (ComponentState::Running, _) => "running",
        (_, Some(reason)) => reason_in_words(reason),
        (ComponentState::Pending, None) => "starting",
        (ComponentState::Error, None) => "in trouble",
        (ComponentState::Stopped, None) => "stopped",
    }
}

fn reason_in_words(r: Reason) -> &'static str {
    match r {
        Reason::Starting => "starting",
        Reason::SpecChanged => "restarting with new settings",
        Reason::StoppedByOperator => "stopped by hand (starts again when its settings change)",
        Reason::StopFailed => "could not be stopped",
        Reason::DeploymentStopped => "stopped (the deployment says state: stopped)",
        Reason::Completed => "finished",
        Reason::Failed => "failed and is not restarted",
        Reason::DependencyFailed => "held back: something it needs is failing",
        Reason::WaitingForDependency => "waiting for something it needs",
        Reason::CrashLoopBackOff => "keeps crashing; retrying more and more slowly",
        Reason::BackOff => "stopped unexpectedly; restarting shortly",
        Reason::ExecutableNotFound => "its program is missing",
        Reason::OutOfDescriptors => "cannot start: too many open files",
        Reason::InvalidSpec => "cannot start: a setting is invalid",
        Reason::RuntimeUnreachable => "cannot start: the service manager does not answer",
        Reason::StartFailed => "cannot start",
        Reason::NoRecordings => "running but producing no recordings",
        Reason::StorageUnusable => "cannot write to the storage",
        Reason::LowDiskSpace => "the card is nearly full",
        Reason::DiskFull => "the card is full",
        Reason::AudioDeviceUnavailable => "the microphone / sound card is missing",
        Reason::AudioFormatUnsupported => "the sound card cannot record these settings",
        Reason::SamplesDropped => "losing samples",
        Reason::InputNotRealTime => "the audio input runs far too fast",
        Reason::MetadataDbError => "cannot write the recordings' list (metadata.db)",
        Reason::RecorderError => "in trouble",
        Reason::DetectorBehind => "falling behind the recordings",
        Reason::DetectorStalled => "stalled: no recording analysed for long",
        Reason::DetectorFailing => "failing on every recording",
        Reason::CuratorError => "in trouble",
        Reason::PowerSaving => "paused to save power",
        Reason::ReconcilerStopped => "stopped with roost",
        Reason::Unknown => "in an unknown state",
    }
}

fn problems_section(out: &mut String, doc: &StatusDoc) {
    // The refused file is said first, with what to do; not again here.
    let refused = doc.spec_error.as_ref().map(|r| r.message.as_str());
    let errors: Vec<_> = doc
        .errors
        .iter()
        .filter(|e| Some(e.message.as_str()) != refused)
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nProblems");
        for e in errors {
            let who = match (&e.deployment, &e.component) {
                (Some(d), Some(c)) => format!("[{d}/{c}] "),
                (Some(d), None) => format!("[{d}] "),
                (None, Some(c)) => format!("[{c}] "),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                out,
                "  {} {who}{}\n      what to do: {}",
                e.code, e.message, e.action
            );
        }
    }
    let warnings = warnings(doc);
    if !warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings");
        for w in warnings {
            let _ = writeln!(
                out,
                "  {} [{}] {}\n      what to do: {}",
                w.code,
                w.component.as_deref().unwrap_or_default(),
                w.message,
                w.action
            );
        }
    }
}

/// Every component's warnings (conditions that do not stop anything but should be known),
/// with the catalogue's action: what `roost status` lists under "Warnings", and the page too.
pub fn warnings(doc: &StatusDoc) -> Vec<crate::status::ErrorEntry> {
    doc.components
        .iter()
        .flat_map(|c| {
            let list = c.output_as::<Warned>().unwrap_or_default().warnings;
            list.into_iter().map(move |w| crate::status::ErrorEntry {
                action: crate::errors::lookup(&w.code)
                    .map(|c| crate::errors::action_on_device(c).to_string())
                    .unwrap_or_default(),
                code: w.code,
                component: Some(c.name.clone()),
                message: w.message,
                deployment: None,
            })
        })
        .collect()
}

/// The part every component output shares: its warnings (the recorder's and the connector's;
/// the curator has none).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct Warned {
    /// Conditions that do not stop anything but should be known.
    pub warnings: Vec<crate::errors::Problem>,
}

/// The headline of a recorder waiting: outside its windows, when the next one opens and what
/// that was computed from; between the files of a window, when the next file is due.
fn waiting_line(out: &RecorderOutput, tz: &TimeZone) -> String {
    let from = out.next_window_from.as_deref();
    match (out.next_window_at, from, out.expected_file_by) {
        (Some(at), Some(from), _) => format!(
            "Waiting: outside the recording windows; the next opens {} (from {from}).",
            local(at, tz)
        ),
        (None, Some(from), _) => format!(
            "Waiting: outside the recording windows, and none opens within a year (from {from})."
        ),
        (_, None, Some(t)) => format!(
            "Waiting between recordings; the next file is due by {}.",
            local(t, tz)
        ),
        _ => "Waiting: outside the recording windows.".to_string(),
    }
}

/// `Sat 28 Nov 14:03:05 GMT`: the time in `tz`, with the zone's abbreviation.
fn local(t: Timestamp, tz: &TimeZone) -> String {
    let z = t.to_zoned(tz.clone());
    z.strftime("%a %-d %b %H:%M:%S %Z").to_string()
}

/// "35 s", "4 min", "2 h 5 min", "3 days".
fn age(now: Timestamp, t: Timestamp) -> String {
    let s = now.duration_since(t).as_secs().max(0);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} days", s / 86_400),
    }
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    match b {
        _ if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        _ if b >= 1e6 => format!("{:.0} MB", b / 1e6),
        _ => format!("{:.0} kB", b / 1e3),
    }
}

/// "Desired state from the broker": the version asked for and where it stands.
fn remote_section(out: &mut String, doc: &StatusDoc) {
    use crate::status::{AppliedBy, RemoteState};
    let Some(r) = &doc.remote else {
        return;
    };
    let _ = writeln!(out, "\nDesired state from the broker (device {})", r.device);
    let asked = r
        .desired_version
        .map_or_else(|| "-".to_string(), |v| format!("version {v}"));
    let line = match r.state {
        RemoteState::None => "nothing received yet".to_string(),
        RemoteState::Waiting => {
            format!("{asked} accepted, waiting for a file boundary or the recording window's end")
        }
        RemoteState::Gating => format!(
            "{asked} applied; health gate open for {} s more",
            r.gate_left_s.unwrap_or(0)
        ),
        RemoteState::Passed => format!("{asked} applied and through its health gate"),
        RemoteState::Reverted => match &r.reverted {
            Some(rv) => format!(
                "version {} reverted by the health gate ({}): {}",
                rv.version,
                rv.codes.join(", "),
                rv.reason
            ),
            None => format!("{asked} reverted"),
        },
        RemoteState::Refused => match &r.refused {
            Some(f) => format!("last message refused ({}): {}", f.code, f.reason),
            None => "last message refused".to_string(),
        },
    };
    let _ = writeln!(out, "  {line}");
    let in_force = match (r.applied_by, r.applied_version) {
        (AppliedBy::Remote, Some(v)) => format!("files in force: version {v} from the broker"),
        _ => "files in force: a local edit (not a version from the broker)".to_string(),
    };
    let _ = writeln!(out, "  {in_force}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ErrorEntry, ReconcilerInfo};
    use serde_json::{Value, json};

    fn doc(
        status: OverallStatus,
        phase: Phase,
        recorder: Option<(ComponentState, Value)>,
    ) -> StatusDoc {
        StatusDoc {
            api_version: "roost/v1".into(),
            kind: "DeploymentStatus".into(),
            deployment: Some("meadow".into()),
            generation: 3,
            observed_generation: 3,
            phase,
            status,
            spec_error: None,
            components: recorder
                .map(|(s, out)| ComponentStatus {
                    name: "recorder".into(),
                    status: s,
                    reason: None,
                    restart_count: 0,
                    exit_code: None,
                    pid: Some(7),
                    since: None,
                    output: Some(out),
                    deployment: None,
                })
                .into_iter()
                .collect(),
            errors: Vec::new(),
            last_apply: None,
            reconciler: ReconcilerInfo {
                pid: 1,
                version: "0.1.0".into(),
                runtime: "process".into(),
            },
            updated_at: "2026-06-01T04:00:00Z".parse().unwrap(),
            file: None,
            deployments: Vec::new(),
            shared: Vec::new(),
            remote: None,
        }
    }

    fn facts() -> Facts {
        Facts {
            time_zone: Some(TimeZone::get("Europe/London").unwrap()),
            files_today: Some(57),
            bytes_last_day: Some(8_294_400_000),
            free_bytes: Some(124_000_000_000),
            seen: Seen::Current,
        }
    }

    /// A repair that runs (a lost metadata.db rebuilt) is shown with how far it has got; a
    /// finished one is not.
    #[test]
    fn a_running_repair_is_shown_with_its_progress() {
        let now: Timestamp = "2026-06-01T04:02:30Z".parse().unwrap();
        let running = json!({"state": "recording", "repair": {"progress": {"phase": "files",
            "rowsChecked": 0, "filesChecked": 120500, "registered": 120400,
            "startedAt": "2026-06-01T04:00:00Z"}}});
        let d = doc(
            OverallStatus::Running,
            Phase::Succeeded,
            Some((ComponentState::Running, running)),
        );
        let text = render(&d, &facts(), now);
        assert!(
            text.contains("storage repair looking for files without a row since Mon 1 Jun 05:00:00 BST: 0 rows and 120500 files checked, 120400 registered"),
            "{text}"
        );
        let done = json!({"state": "recording", "repair": {"progress": {"phase": "done", "filesChecked": 3}}});
        let d = doc(
            OverallStatus::Running,
            Phase::Succeeded,
            Some((ComponentState::Running, done)),
        );
        assert!(!render(&d, &facts(), now).contains("storage repair"));
    }

    /// The first line answers "is it recording?" for each kind of state.
    #[test]
    fn the_first_line_says_whether_it_records() {
        let now: Timestamp = "2026-06-01T04:02:30Z".parse().unwrap();
        let recording = json!({"state": "recording", "lastFile": "/s/recordings/2026/06/01/a.wav", "lastFileAt": "2026-06-01T04:00:00Z", "samplesDropped": 0, "samplesDiscarded": 0, "clockSynchronized": true});
        let waiting = json!({"state": "waiting", "expectedFileBy": "2026-06-01T19:30:00Z"});
        let dawn = json!({"state": "waiting", "expectedFileBy": "2026-06-02T04:15:00Z",
            "nextWindowAt": "2026-06-02T04:14:00Z",
            "nextWindowFrom": "windows sunrise-30m-sunrise+2h (Europe/London); sunrise and sunset at spec.location"});
        let polar = json!({"state": "waiting", "nextWindowFrom": "windows sunrise-30m-sunrise+2h (Europe/London); sunrise and sunset at spec.location"});
        let lost = json!({"state": "deviceUnavailable"});
        let mut broken = doc(
            OverallStatus::Error,
            Phase::Succeeded,
            Some((ComponentState::Error, lost)),
        );
        broken.errors.push(ErrorEntry::new(
            &crate::errors::AUDIO_DEVICE_UNAVAILABLE,
            Some("recorder"),
            "the audio device disappeared",
        ));
        let writing = json!({"state": "recording", "lastFile": "/s/recordings/2026/06/01/a.wav", "lastFileAt": "2026-06-01T04:00:00Z"});
        let mut locked = doc(
            OverallStatus::Error,
            Phase::Succeeded,
            Some((ComponentState::Error, writing.clone())),
        );
        locked.components[0].reason = Some(Reason::MetadataDbError);
        locked.errors.push(ErrorEntry::new(
            &crate::errors::METADATA_DB_ERROR,
            Some("recorder"),
            "2 recordings wait for their row",
        ));
        let mut hung = doc(
            OverallStatus::Error,
            Phase::Succeeded,
            Some((ComponentState::Error, writing)),
        );
        hung.components[0].reason = Some(Reason::NoRecordings);
        hung.errors.push(ErrorEntry::new(
            &crate::errors::NO_RECORDINGS,
            Some("recorder"),
            "a recording was due and has not arrived",
        ));
        let cases = [
            (
                locked,
                facts(),
                "Recording, with a problem: 2 recordings wait for their row (DEP_E321).",
            ),
            (
                hung,
                facts(),
                "NOT RECORDING: a recording was due and has not arrived (DEP_E313).",
            ),
            (
                doc(
                    OverallStatus::Running,
                    Phase::Succeeded,
                    Some((ComponentState::Running, recording)),
                ),
                facts(),
                "Recording. Last file finished 2 min ago.",
            ),
            (
                doc(
                    OverallStatus::Running,
                    Phase::Succeeded,
                    Some((ComponentState::Running, waiting)),
                ),
                facts(),
                "Waiting between recordings; the next file is due by Mon 1 Jun 20:30:00 BST.",
            ),
            (
                doc(
                    OverallStatus::Running,
                    Phase::Succeeded,
                    Some((ComponentState::Running, dawn)),
                ),
                facts(),
                "Waiting: outside the recording windows; the next opens Tue 2 Jun 05:14:00 BST (from windows sunrise-30m-sunrise+2h (Europe/London); sunrise and sunset at spec.location).",
            ),
            (
                doc(
                    OverallStatus::Running,
                    Phase::Succeeded,
                    Some((ComponentState::Running, polar)),
                ),
                facts(),
                "Waiting: outside the recording windows, and none opens within a year (from windows sunrise-30m-sunrise+2h (Europe/London); sunrise and sunset at spec.location).",
            ),
            (
                broken,
                facts(),
                "NOT RECORDING: the audio device disappeared (DEP_E311).",
            ),
            (
                doc(OverallStatus::Stopped, Phase::Stopped, None),
                facts(),
                "Stopped (since Mon 1 Jun 05:00:00 BST).",
            ),
            (
                doc(OverallStatus::Running, Phase::Succeeded, None),
                Facts {
                    seen: Seen::RoostGone,
                    ..facts()
                },
                "NOT RUNNING: roost stopped unexpectedly; this is what it last knew, at Mon 1 Jun 05:00:00 BST.",
            ),
            (
                doc(
                    OverallStatus::Running,
                    Phase::Succeeded,
                    Some((ComponentState::Running, json!({"state": "recording"}))),
                ),
                Facts {
                    seen: Seen::RoostGone,
                    ..facts()
                },
                "NOT RUNNING: roost stopped unexpectedly; the recorder (pid 7) still records, unsupervised; this is what it last knew, at Mon 1 Jun 05:00:00 BST.",
            ),
            (
                doc(OverallStatus::Running, Phase::Succeeded, None),
                Facts {
                    seen: Seen::Stale {
                        due: "2026-06-01T04:01:00Z".parse().unwrap(),
                        why: Some("No space left on device (os error 28)".into()),
                    },
                    ..facts()
                },
                "STATUS OUT OF DATE: not rewritten since Mon 1 Jun 05:00:00 BST although a file was due by Mon 1 Jun 05:01:00 BST; roost cannot write it: No space left on device (os error 28).",
            ),
            (
                doc(OverallStatus::Running, Phase::Succeeded, None),
                facts(),
                "Running (no recorder in this deployment).",
            ),
        ];
        for (d, f, first) in cases {
            let text = render(&d, &f, now);
            assert_eq!(text.lines().next(), Some(first), "{text}");
        }
    }

    #[test]
    fn the_curator_says_what_each_detector_did_and_what_was_deleted() {
        let mut d = doc(
            OverallStatus::Running,
            Phase::Succeeded,
            Some((ComponentState::Running, json!({"state": "recording"}))),
        );
        let mut curator = d.components[0].clone();
        curator.name = "curator".into();
        curator.output = Some(
            json!({"detectors": [{"name": "birds", "analysed": 120, "failed": 1, "backlog": 2, "detectionsLastHour": 14, "lastFailure": {"code": "DEP_E603", "message": "slow"}}],
                                     "storage": {"deletedByRule": {"keep": 30, "maxAge": 2}, "heldForRetention": 3, "clockDisagrees": 15}}),
        );
        d.components.push(curator);
        let text = render(&d, &facts(), "2026-06-01T04:02:30Z".parse().unwrap());
        assert!(text.contains("Detectors and keep rules"), "{text}");
        assert!(text.contains("birds          120 analysed, 1 failed, 2 waiting, 14 detections in the last hour, last failure DEP_E603"), "{text}");
        assert!(
            text.contains("files deleted  30 by keep, 2 by maxAge"),
            "{text}"
        );
        assert!(
            text.contains("file times     15 recordings' clock times disagree with how long they have existed here"),
            "{text}"
        );
        assert!(
            text.contains("files held     3 past maxAge or maxUsage, kept until analysed and their messages sent"),
            "{text}"
        );
    }

    #[test]
    fn the_recorder_section_has_the_figures_a_visit_needs() {
        let now: Timestamp = "2026-06-01T04:02:30Z".parse().unwrap();
        let out = json!({"state": "recording", "lastFile": "/s/recordings/2026/06/01/20260601T040000.000000Z.wav", "lastFileAt": "2026-06-01T04:00:00Z", "samplesDropped": 3, "samplesDiscarded": 0, "clockSynchronized": false});
        let text = render(
            &doc(
                OverallStatus::Running,
                Phase::Succeeded,
                Some((ComponentState::Running, out)),
            ),
            &facts(),
            now,
        );
        for needle in [
            "last file      20260601T040000.000000Z.wav, 2 min ago (Mon 1 Jun 05:00:00 BST)",
            "files today    57",
            "samples lost   3 dropped, 0 not written",
            "free space     124.0 GB, about 15 days at the last day's rate",
            "clock          NOT synchronised",
            "recorder         running",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        for jargon in [
            "ReconcilerStopped",
            "observed generation",
            "observedGeneration",
        ] {
            assert!(!text.contains(jargon), "{text}");
        }
    }

    /// A file refused at the first start: said once, with what to do, without "previous
    /// settings (version 0)" that never existed.
    #[test]
    fn a_file_refused_at_the_first_start_is_said_once() {
        let now: Timestamp = "2026-06-01T04:02:30Z".parse().unwrap();
        let mut d = doc(OverallStatus::Error, Phase::FailedToStart, None);
        d.generation = 0;
        let message = "/e/d.yaml:9:17: \"48k\" is not a number of hertz; write 48000".to_string();
        d.spec_error = Some(crate::status::SpecError {
            code: "DEP_E162".into(),
            message: message.clone(),
            file: "/e/d.yaml".into(),
            line: Some(9),
            column: Some(17),
            field: None,
        });
        d.errors = vec![crate::status::ErrorEntry::new(
            &crate::errors::INVALID_SPEC,
            None,
            message,
        )];
        let text = render(&d, &facts(), now);
        assert_eq!(text.matches("48k").count(), 1, "{text}");
        assert_eq!(text.matches("/e/d.yaml:9:17").count(), 1, "{text}");
        assert!(
            text.contains("nothing runs until the file is valid (there are no earlier settings)"),
            "{text}"
        );
        assert!(!text.contains("previous settings (version 0)"), "{text}");
        assert!(text.contains("what to do: Fix the file"), "{text}");
    }

    /// After a settings change the recorder's report starts empty while the storage holds
    /// today's files: not "none yet" beside "files today 57"; a rate from less than an hour
    /// of files is no rate.
    #[test]
    fn a_restarted_recorder_and_a_young_deployment_are_said_as_they_are() {
        let now: Timestamp = "2026-06-01T04:02:30Z".parse().unwrap();
        let out = json!({"state": "recording", "startedAt": "2026-06-01T04:02:00Z", "samplesDropped": 0, "samplesDiscarded": 0});
        let mut f = facts();
        f.bytes_last_day = None;
        let text = render(
            &doc(
                OverallStatus::Running,
                Phase::Succeeded,
                Some((ComponentState::Running, out)),
            ),
            &f,
            now,
        );
        assert!(
            text.contains("last file      none since the recorder started (at Mon 1 Jun 05:02:00 BST); the first is on its way"),
            "{text}"
        );
        assert!(
            text.contains("124.0 GB, days until full after an hour of recording"),
            "{text}"
        );
    }
}
