//! Detectors, keep rules and detection messages end to end: `roost run` records a fed signal
//! through ALSA's file plugin (tone bursts at known times: `roost feed --signal events`), the
//! curator (`roost curate`) analyses each file with the built-in band-energy detector or an
//! external command, writes acoupi's tables in the real metadata.db, keeps or deletes files,
//! and the connector sends the model outputs to a real Mosquitto broker.

#[path = "support/acoupi.rs"]
mod acoupi;
mod common;
#[path = "support/mosquitto.rs"]
mod mosquitto;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Roost, component, recorder_deployment};
use serde_json::Value;

/// A sounding part of a recording found from its samples: start and end (s) and frequency
/// (Hz, from zero crossings).
#[derive(Debug)]
struct Burst {
    start: f64,
    end: f64,
    hz: f64,
}

/// The bursts in a WAV, from its own samples: 5 ms blocks louder than the noise, joined, their
/// frequency from zero crossings. The ground truth the detector is held to.
fn bursts(path: &Path) -> (Vec<Burst>, f64) {
    let mut reader = hound::WavReader::open(path).unwrap();
    let rate = f64::from(reader.spec().sample_rate);
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let block = (rate * 0.005) as usize;
    let mut out: Vec<Burst> = Vec::new();
    let mut current: Option<(usize, usize, usize)> = None; // first block, last block, crossings
    for (i, chunk) in samples.chunks(block).enumerate() {
        let rms =
            (chunk.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / chunk.len() as f64).sqrt();
        let crossings = chunk
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        match (rms > 1000.0, current.as_mut()) {
            (true, Some(c)) => {
                c.1 = i;
                c.2 += crossings;
            }
            (true, None) => current = Some((i, i, crossings)),
            (false, Some(&mut (a, b, z))) => {
                let secs = (b - a + 1) as f64 * block as f64 / rate;
                out.push(Burst {
                    start: a as f64 * block as f64 / rate,
                    end: (b + 1) as f64 * block as f64 / rate,
                    hz: z as f64 / 2.0 / secs,
                });
                current = None;
            }
            (false, None) => {}
        }
    }
    if let Some((a, b, z)) = current {
        let secs = (b - a + 1) as f64 * block as f64 / rate;
        out.push(Burst {
            start: a as f64 * block as f64 / rate,
            end: (b + 1) as f64 * block as f64 / rate,
            hz: z as f64 / 2.0 / secs,
        });
    }
    (out, samples.len() as f64 / rate)
}

/// (start, low, end, high, score) of every located detection (`event`) of `detector` in the
/// recording at `path`, from acoupi's four box columns (an end left NULL is the start: a span
/// of no length, see `roost::storage::schema::box_values`).
fn detections(db: &rusqlite::Connection, path: &Path, detector: &str) -> Vec<[f64; 5]> {
    let mut stmt = db
        .prepare(
            "SELECT d.start_time_s, d.low_freq_hz, d.end_time_s, d.high_freq_hz, d.detection_score
             FROM detection d
             JOIN model_output m ON m.id = d.model_output_id JOIN recording r ON r.id = m.recording_id
             WHERE r.path = ?1 AND m.model_name = ?2 AND d.prediction_type = 'event'",
        )
        .unwrap();
    stmt.query_map(rusqlite::params![path.to_str().unwrap(), detector], |r| {
        let cols = [r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?];
        let [a, b, c, d] = roost::storage::schema::box_from_columns(cols).unwrap();
        Ok([a, b, c, d, r.get(4)?])
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn db(storage: &Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(storage.join("metadata.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db
}

/// The same model outputs on acoupi's topic (`acoupiTopic`), validated by acoupi 0.8.0's own
/// `ModelOutput`: the recording's `created_on` is its row's start within 1 ms, the ids are the
/// rows' ids.
fn acoupi_takes_the_model_outputs(
    subscriber: &mosquitto::Subscriber,
    r: &Roost,
    conn: &rusqlite::Connection,
) {
    let log = r.path("roost.log");
    let got = subscriber.wait_until(
        "a model output on acoupi's topic",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).unwrap_or_default(),
        |m| {
            m.iter()
                .any(|m| m.topic == "acoupi/meadow" && m.json().get("name_model").is_some())
        },
    );
    let Some(python) = acoupi::acoupi_python() else {
        eprintln!(
            "acoupi 0.8.0 is not installed: its ModelOutput model not checked (bash .ci/setup)"
        );
        return;
    };
    let mut items = Vec::new();
    // acoupi's one topic carries its heartbeats too: a model output has `name_model`.
    for m in got.iter().filter(|m| m.topic == "acoupi/meadow") {
        let body = m.json();
        if body.get("name_model").is_none() {
            continue;
        }
        let id: uuid::Uuid = body["id"].as_str().unwrap().parse().unwrap();
        let (recording_id, start): (uuid::Uuid, String) = conn
            .query_row(
                "SELECT m.recording_id, r.datetime
                 FROM model_output m JOIN recording r ON r.id = m.recording_id WHERE m.id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let start = roost::storage::parse_db_datetime(&start).unwrap();
        let kinds = acoupi::kinds_in_db(conn, &body);
        items.push(
            serde_json::json!({"kind": "model_output", "json": body, "expect": {
            "start": start.to_string().replace('Z', "+00:00"), "id": id.to_string(),
            "recording_id": recording_id.to_string(), "deployment": "curate-e2e", "kinds": kinds}}),
        );
    }
    let verdicts = acoupi::validate(&python, &items);
    assert!(
        verdicts.len() == items.len() && verdicts.iter().all(|v| v == "ok"),
        "{verdicts:?} {items:#?}"
    );
}

/// acoupi 0.8.0's own store reads metadata.db while roost runs (deployment, recordings by
/// path and id against the files on disk, model outputs, detections, tags, a time window and
/// its summary), and roost goes on registering rows in it after acoupi's store opened it.
fn acoupis_store_reads_it_and_roost_goes_on(
    r: &Roost,
    storage: &Path,
    conn: &rusqlite::Connection,
) {
    let Some(python) = acoupi::acoupi_python() else {
        eprintln!("acoupi 0.8.0 is not installed: its store not tried (bash .ci/setup)");
        return;
    };
    // Every file on disk is found (checked inside); some of the analysed ones the detection
    // rule has deleted by now.
    let found = acoupi::acoupi_store_agrees(&python, storage, "curate-e2e");
    assert!(found >= 2, "{found}");
    let rows = || -> i64 {
        conn.query_row("SELECT count(*) FROM recording", [], |r| r.get(0))
            .unwrap()
    };
    let before = rows();
    let s = r.wait_for(
        "two more rows after acoupi's store",
        Duration::from_secs(30),
        |s| {
            rows() >= before + 2
                && component(s, "recorder")["output"]["rowsOwed"].as_u64() == Some(0)
        },
    );
    assert_eq!(
        component(&s, "recorder")["output"]["error"],
        Value::Null,
        "{s:#}"
    );
    let user_version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(user_version, 1, "acoupi's");
}

fn curator_output(s: &Value) -> &Value {
    &component(s, "curator")["output"]
}

/// The built-in detector finds every in-band burst of the fed signal (start and end within
/// 50 ms, a frequency box around 3 kHz narrower than the band), nothing in the noise and
/// nothing for the 7 kHz burst outside its band; each file is analysed once; the detection
/// rule keeps the files; the model outputs reach a real broker as acoupi-style messages.
#[test]
fn band_energy_finds_the_fed_events_and_they_are_kept_and_sent() {
    if !mosquitto::have_or_skip(
        &["mosquitto", "mosquitto_passwd", "openssl"],
        "band_energy_finds_the_fed_events_and_they_are_kept_and_sent",
    ) {
        return;
    }
    let broker = mosquitto::Broker::start();
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let pass = r.path("mqtt-password");
    std::fs::write(&pass, format!("{}\n", mosquitto::ROOST_USER.1)).unwrap();
    let extra = format!(
        "  detectors:\n    - {{name: birds, kind: bandEnergy, lowHz: 2000, highHz: 5000, thresholdDb: 12, minDuration: 100ms, sendMinScore: 0.1}}\n  connect:\n    deviceId: meadow\n    mqtt: {{url: \"mqtt://127.0.0.1:{}\", username: {}, passwordFile: {}, homeAssistant: false, acoupiTopic: acoupi}}\n",
        broker.port,
        mosquitto::ROOST_USER.0,
        pass.display()
    );
    let yaml = recorder_deployment("curate-e2e", &storage, &extra)
        .replace("duration: 1s", "duration: 4s")
        .replace(
            "storage: {path:",
            "storage: {keep: [{detection: {minScore: 0.3, detector: birds}}], path:",
        );
    std::fs::write(&r.file, &yaml).unwrap();
    let subscriber =
        mosquitto::Subscriber::start(broker.port, &["roost/meadow/detections", "acoupi/meadow"]);
    let _feed = r.start_recording_with(&["--signal", "events"]);
    // Four: the first file, cut short at the next file boundary and now analysed too (it was
    // made before the curator first opened metadata.db), holds few whole bursts.
    let s = r.wait_for("four files analysed", Duration::from_secs(60), |s| {
        curator_output(s)["detectors"][0]["analysed"].as_u64() >= Some(4)
    });
    assert_eq!(component(&s, "curator")["status"], "Running", "{s:#}");
    let out = curator_output(&s);
    assert!(
        out["detectors"][0]["detectionsLastHour"].as_u64() > Some(0),
        "{out:#}"
    );
    let conn = db(&storage);
    let files: Vec<PathBuf> = conn
        // Files still there: one without an in-band burst (the short first file, say) is
        // deleted by the detection rule, its row's path NULL.
        .prepare("SELECT r.path FROM recording r JOIN roost_analysis a ON a.recording_id = r.id WHERE a.detector = 'birds' AND a.outcome = 'done' AND r.path IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0).map(PathBuf::from))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(files.len() >= 3);
    let mut checked = 0;
    for file in &files {
        let (truth, length) = bursts(file);
        let found = detections(&conn, file, "birds");
        for b in &truth {
            let whole = b.start > 0.06 && b.end < length - 0.06 && b.end - b.start > 0.15;
            let in_band = (2000.0..5000.0).contains(&b.hz);
            if in_band && whole {
                let hit = found
                    .iter()
                    .find(|d| (d[0] - b.start).abs() <= 0.05 && (d[2] - b.end).abs() <= 0.05);
                let hit = hit.unwrap_or_else(|| {
                    panic!("{}: burst {b:?} not found in {found:?}", file.display())
                });
                assert!(
                    hit[1] <= b.hz && b.hz <= hit[3] && hit[3] - hit[1] < 3000.0,
                    "box {hit:?} for {b:?}"
                );
                checked += 1;
            }
        }
        for d in &found {
            let overlaps_in_band = truth.iter().any(|b| {
                (2000.0..5000.0).contains(&b.hz) && d[0] < b.end + 0.05 && d[2] > b.start - 0.05
            });
            assert!(
                overlaps_in_band,
                "{}: detection {d:?} where no in-band burst sounds ({truth:?})",
                file.display()
            );
        }
        let outputs: i64 = conn
            .query_row("SELECT count(*) FROM model_output m JOIN recording r ON r.id = m.recording_id WHERE r.path = ?1 AND m.model_name = 'birds'", [file.to_str().unwrap()], |r| r.get(0))
            .unwrap();
        assert_eq!(outputs, 1, "{} analysed once", file.display());
    }
    assert!(
        checked >= 3,
        "at least three whole bursts checked, {checked}"
    );
    let tags: i64 = conn
        .query_row("SELECT count(*) FROM predicted_tag WHERE key = 'event' AND value = 'sound' AND detection_id IS NOT NULL", [], |r| r.get(0))
        .unwrap();
    assert!(tags >= 3);
    // Kept by the detection rule: every analysed file is still there and decided.
    r.wait_for("decided", Duration::from_secs(20), |_| {
        conn.query_row(
            "SELECT count(*) FROM roost_keep WHERE kept_by LIKE 'keep[0]:detection'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            >= 3
    });
    assert!(files.iter().all(|f| f.exists()));
    // The model outputs at a real subscriber, in acoupi's model-output JSON.
    let log = r.path("roost.log");
    let got = subscriber.wait_until(
        "a model output message",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).unwrap_or_default(),
        |m| !m.is_empty(),
    );
    let message = got
        .iter()
        .find(|m| m.topic == "roost/meadow/detections")
        .map(|m| m.json())
        .unwrap_or_else(|| got[0].json());
    assert_eq!(message["name_model"], "birds", "{message:#}");
    assert_eq!(message["recording"]["deployment"]["name"], "curate-e2e");
    let d = &message["detections"][0];
    assert_eq!(
        d["location"]["coordinates"].as_array().unwrap().len(),
        4,
        "{message:#}"
    );
    assert_eq!(d["tags"][0]["tag"]["value"], "sound");
    acoupi_takes_the_model_outputs(&subscriber, &r, &conn);
    acoupis_store_reads_it_and_roost_goes_on(&r, &storage, &conn);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    // The detector never cost the recorder a sample.
    let s = r.status().unwrap();
    assert_eq!(
        component(&s, "recorder")["output"]["samplesDropped"],
        0,
        "{s:#}"
    );
    assert_eq!(r.stop(), Some(0));
}

/// An external detector (a script printing a fixed detection list) analyses every recording
/// exactly once although the curator and roost itself are killed with SIGKILL mid-queue; a
/// recording it fails on is marked failed with its code and does not hold the queue.
#[test]
fn every_recording_is_analysed_exactly_once_across_kill_9() {
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let script = r.path("detector.sh");
    let calls = r.path("calls.log");
    let first = r.path("first-done");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -e {first} ] || {{ touch {first}; echo broken >&2; exit 3; }}\nsleep 0.3\necho \"$1\" >> {calls}\nprintf '{{\"detections\": [{{\"location\": [0.0, 1000, 0.05, 2000], \"detection_score\": 0.9, \"tags\": [{{\"key\": \"species\", \"value\": \"Testus testus\", \"confidence_score\": 0.9}}]}}]}}'\n",
            first = first.display(),
            calls = calls.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    // A second detector, slower, whose runs this test kills with SIGKILL: retried, never lost.
    let slow = r.path("slow-detector.sh");
    std::fs::write(&slow, "#!/bin/sh\nsleep 0.4\nprintf '{}'\n").unwrap();
    Command::new("chmod").arg("+x").arg(&slow).status().unwrap();
    let extra = format!(
        "  detectors:\n    - {{name: ext, kind: command, command: [\"{}\"], timeout: 10s, retries: 0}}\n    - {{name: slow, kind: command, command: [\"{}\"], timeout: 10s, retries: 5, maxBacklog: 100}}\n",
        script.display(),
        slow.display()
    );
    std::fs::write(&r.file, recorder_deployment("once", &storage, &extra)).unwrap();
    let _feed = r.start_recording();
    let s = r.wait_for("some analysed", Duration::from_secs(60), |s| {
        curator_output(s)["detectors"][0]["analysed"].as_u64() >= Some(3)
    });
    let failure = &curator_output(&s)["detectors"][0];
    assert_eq!(failure["failed"], 1, "{failure:#}");
    let curator = common::pid_of(&s, "curator");
    Command::new("kill")
        .args(["-9", &curator.to_string()])
        .status()
        .unwrap();
    r.wait_for("curator back", Duration::from_secs(60), |s| {
        common::pid_of(s, "curator") != curator
            && curator_output(s)["detectors"][0]["analysed"].as_u64() >= Some(6)
    });
    // kill -9 of the detector itself, mid-run, three times.
    for _ in 0..3 {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let running = Command::new("pgrep")
                .args(["-f", slow.to_str().unwrap()])
                .output()
                .unwrap();
            let pids = String::from_utf8_lossy(&running.stdout).trim().to_string();
            if !pids.is_empty() {
                Command::new("kill")
                    .arg("-9")
                    .args(pids.split_whitespace())
                    .status()
                    .unwrap();
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the slow detector never ran"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    let pid = r.pid();
    r.kill9();
    let conf = r.path("asound.conf");
    r.start_with(
        &r.file.clone(),
        &[("ALSA_CONFIG_PATH", conf.to_str().unwrap())],
    );
    r.wait_for("after roost's restart", Duration::from_secs(60), |s| {
        s["reconciler"]["pid"].as_u64() != Some(u64::from(pid))
            && curator_output(s)["detectors"][0]["analysed"].as_u64() >= Some(10)
    });
    let s = r.status().unwrap();
    assert_eq!(
        component(&s, "recorder")["output"]["samplesDropped"],
        0,
        "{s:#}"
    );
    assert_eq!(r.stop(), Some(0));
    let conn = db(&storage);
    let twice: i64 = conn
        .query_row("SELECT count(*) FROM (SELECT recording_id FROM model_output GROUP BY recording_id, model_name HAVING count(*) > 1)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(twice, 0, "no recording has two outputs of one detector");
    let done: i64 = conn
        .query_row(
            "SELECT count(*) FROM roost_analysis WHERE outcome = 'done'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let outputs: i64 = conn
        .query_row("SELECT count(*) FROM model_output", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        done, outputs,
        "every finished analysis has exactly its one output"
    );
    let failed: Vec<(String, String)> = conn
        .prepare("SELECT outcome, error_code FROM roost_analysis WHERE outcome != 'done'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        failed,
        vec![("failed".to_string(), "DEP_E602".to_string())],
        "only the first run of ext failed; every killed run of slow was retried"
    );
    let retried: i64 = conn
        .query_row("SELECT count(*) FROM roost_analysis WHERE detector = 'slow' AND outcome = 'done' AND attempts > 1", [], |r| r.get(0))
        .unwrap();
    assert!(
        retried >= 1,
        "a run killed mid-way was retried and finished"
    );
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

/// roost recording 1 s files of `feed_args`'s signal into a storage whose `spec.storage` gains
/// `storage_fields` (`keep: [...]`, `maxAge: 6s`), once metadata.db is there: roost, the
/// storage, the file's text, the feeder and metadata.db.
fn recording_with(
    name: &str,
    storage_fields: &str,
) -> (Roost, PathBuf, String, common::Feed, rusqlite::Connection) {
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let yaml = recorder_deployment(name, &storage, "").replace(
        "storage: {path:",
        &format!("storage: {{{storage_fields}, path:"),
    );
    std::fs::write(&r.file, &yaml).unwrap();
    let feed = r.start_recording();
    r.wait_for("metadata.db", Duration::from_secs(30), |_| {
        storage.join("metadata.db").exists()
    });
    let conn = db(&storage);
    (r, storage, yaml, feed, conn)
}

/// `every: 1m` keeps exactly one file per minute (the one holding its start, or the first after
/// a start no file held: the first file, a split under load) and deletes the others
/// (their rows stay, path cleared, deleted_by keep); `roost plan` on rules that keep nothing
/// warns DEP_E614 and says what would go, changing nothing.
#[test]
fn keep_rules_keep_and_delete_exactly_the_expected_files() {
    let (mut r, storage, yaml, _feed, conn) = recording_with("keep", "keep: [{every: 1m}]");
    let minute_files = |conn: &rusqlite::Connection| -> i64 {
        conn.query_row(
            "SELECT count(*) FROM roost_keep WHERE kept_by IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0)
    };
    r.wait_for("a minute's start kept and 5 files after it decided", Duration::from_secs(100), |_| {
        minute_files(&conn) >= 1
            && conn
                .query_row("SELECT count(*) FROM roost_keep k JOIN recording r ON r.id = k.recording_id WHERE r.datetime > (SELECT min(r2.datetime) FROM roost_keep k2 JOIN recording r2 ON r2.id = k2.recording_id WHERE k2.kept_by IS NOT NULL)", [], |r| r.get::<_, i64>(0))
                .unwrap_or(0)
                >= 5
    });
    // roost plan with rules that can keep nothing: a warning and a preview, nothing changed.
    let dry = r.path("dry.yaml");
    std::fs::write(
        &dry,
        yaml.replace(
            "keep: [{every: 1m}]",
            "keep: [{detection: {minScore: 0.5}}]",
        ),
    )
    .unwrap();
    let present_before: i64 = conn
        .query_row(
            "SELECT count(*) FROM recording WHERE path IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let plan = Command::new(common::ROOST)
        .args(["plan", "--file"])
        .arg(&dry)
        .arg("--state-dir")
        .arg(&r.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("DEP_E614") && text.contains("would be deleted"),
        "{text}"
    );
    assert!(
        conn.query_row(
            "SELECT count(*) FROM recording WHERE path IS NOT NULL",
            [],
            |r| r.get::<_, i64>(0)
        )
        .unwrap()
            >= present_before,
        "plan changed nothing"
    );
    assert_eq!(r.stop(), Some(0));

    type Row = (
        String,
        f64,
        Option<String>,
        Option<String>,
        Option<String>,
        bool,
    );
    let rows: Vec<Row> = conn
        .prepare("SELECT r.datetime, r.duration_s, r.path, r.deleted_by, k.kept_by, k.recording_id IS NOT NULL FROM recording r LEFT JOIN roost_keep k ON k.recording_id = r.id ORDER BY r.datetime")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // The file kept for a minute holds its start, or is the first after a start that no file
    // held (a gap: the first file, a split at dropped samples under load). UTC is local here.
    // Whole microseconds, as the rows and the rule count.
    let minute: i64 = 60_000_000;
    let mut previous_end: Option<i64> = None;
    let mut decided = 0;
    for (datetime, duration_s, path, deleted_by, kept_by, is_decided) in &rows {
        let civil: jiff::civil::DateTime = datetime.parse().unwrap();
        let start = civil
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_microsecond();
        let end = start + (duration_s * 1e6).round() as i64;
        let from = previous_end.unwrap_or(start - minute);
        let next_minute = (from + minute - 1).div_euclid(minute) * minute;
        let holds_minute = next_minute < end.max(start + 1);
        previous_end = Some(end);
        if !is_decided {
            continue;
        }
        decided += 1;
        assert_eq!(
            kept_by.is_some(),
            holds_minute,
            "{datetime}: kept_by {kept_by:?}"
        );
        match holds_minute {
            true => assert!(
                path.as_ref().is_some_and(|p| Path::new(p).exists()) && deleted_by.is_none()
            ),
            false => {
                assert_eq!(path, &None, "{datetime}");
                assert_eq!(deleted_by.as_deref(), Some("keep"));
            }
        }
    }
    assert!(decided >= 6, "{rows:?}");
    let on_disk = std::fs::read_dir(storage.join("recordings")).is_ok();
    assert!(on_disk);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

/// (path, deleted_by) of every recording row, oldest first.
fn recording_rows(conn: &rusqlite::Connection) -> Vec<(Option<PathBuf>, Option<String>)> {
    conn.prepare("SELECT path, deleted_by FROM recording ORDER BY datetime")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get::<_, Option<String>>(0)?.map(PathBuf::from), r.get(1)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn deleted_by(s: &Value, rule: &str) -> u64 {
    curator_output(s)["storage"]["deletedByRule"][rule]
        .as_u64()
        .unwrap_or(0)
}

/// The two oldest recordings present, protected: the first by a `.keep` marker, the second by
/// its row's `protected` flag. Waits for them.
fn protect_the_first_two(r: &Roost, conn: &rusqlite::Connection) -> Vec<(uuid::Uuid, PathBuf)> {
    let first_two = || -> Vec<(uuid::Uuid, PathBuf)> {
        conn.prepare(
            "SELECT id, path FROM recording WHERE path IS NOT NULL ORDER BY datetime LIMIT 2",
        )
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok((r.get(0)?, PathBuf::from(r.get::<_, String>(1)?)))
            })?
            .collect()
        })
        .unwrap_or_default()
    };
    r.wait_for("two recordings", Duration::from_secs(30), |_| {
        first_two().len() == 2
    });
    let kept = first_two();
    std::fs::write(roost::storage::keep_marker(&kept[0].1), b"").unwrap();
    conn.execute(
        "UPDATE recording SET protected = 1 WHERE id = ?1",
        [&kept[1].0],
    )
    .unwrap();
    kept
}

/// Every row agrees with the disk: a present path is a file, a cleared one says its rule.
fn rows_agree_with_files(conn: &rusqlite::Connection, rules: &[&str]) {
    for (path, by) in recording_rows(conn) {
        match path {
            Some(p) => assert!(p.is_file() && by.is_none(), "{p:?} {by:?}"),
            None => assert!(rules.contains(&by.as_deref().unwrap_or("")), "{by:?}"),
        }
    }
}

/// `maxAge` deletes the recordings older than it, oldest first, marking each row (path cleared,
/// deleted_by maxAge), but never a file protected by a `.keep` marker or by the row's
/// `protected` flag; then, the file changed to `maxUsage`, the present recordings stay within
/// the limit plus the files that may have arrived since the last round.
#[test]
fn retention_deletes_by_age_and_usage_but_never_a_protected_file() {
    let (mut r, _storage, yaml, feed, conn) = recording_with("retention", "maxAge: 1h");
    // Protected while nothing is old enough to go, then the age lowered.
    let kept = protect_the_first_two(&r, &conn);
    r.replace_atomically(&yaml.replace("maxAge: 1h", "maxAge: 6s"));
    let s = r.wait_for("four deleted by maxAge", Duration::from_secs(60), |s| {
        deleted_by(s, "maxAge") >= 4
    });
    assert_eq!(component(&s, "curator")["status"], "Running", "{s:#}");
    assert_eq!(r.stop(), Some(0));
    drop(feed);
    let by_age = recording_rows(&conn)
        .into_iter()
        .filter(|(_, by)| by.as_deref() == Some("maxAge"))
        .count();
    assert!(by_age >= 4, "{by_age}");
    rows_agree_with_files(&conn, &["maxAge"]);

    // maxUsage instead: three 1 s files' worth (36 KiB on disk each at 16 kHz).
    let file = 36 * 1024;
    let limit = 3 * file;
    std::fs::write(
        &r.file,
        yaml.replace("maxAge: 1h", &format!("maxUsage: {}KiB", limit / 1024)),
    )
    .unwrap();
    let _feed = r.start_recording();
    r.wait_for("deleted by maxUsage", Duration::from_secs(60), |s| {
        deleted_by(s, "maxUsage") >= 2
    });
    assert_eq!(r.stop(), Some(0));
    rows_agree_with_files(&conn, &["maxAge", "maxUsage"]);
    let present: u64 = recording_rows(&conn)
        .iter()
        .filter_map(|(p, _)| p.as_ref())
        .map(|p| roost::storage::disk_bytes(p))
        .sum();
    // The protected files count in the usage; files that landed after the last round add.
    assert!(
        present <= limit + 3 * file,
        "{present} bytes present, limit {limit}"
    );
    for (_, path) in &kept {
        assert!(path.is_file(), "protected {} was deleted", path.display());
    }
}

/// Recordings past `maxAge` whose detection messages wait in the outbox (the broker is down)
/// are held, counted in `heldForRetention`, their files and paths intact; once the broker is
/// back and the messages delivered, the same recordings go by `maxAge`.
#[test]
fn retention_waits_for_the_messages_about_a_recording_to_leave() {
    if !mosquitto::have_or_skip(
        &["mosquitto", "mosquitto_passwd", "openssl"],
        "retention_waits_for_the_messages_about_a_recording_to_leave",
    ) {
        return;
    }
    let mut broker = mosquitto::Broker::start();
    broker.stop();
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let pass = r.path("mqtt-password");
    std::fs::write(&pass, format!("{}\n", mosquitto::ROOST_USER.1)).unwrap();
    let extra = format!(
        "  detectors:\n    - {{name: birds, kind: bandEnergy, lowHz: 2000, highHz: 5000, sendMinScore: 0.1}}\n  connect:\n    deviceId: held\n    mqtt: {{url: \"mqtt://127.0.0.1:{}\", username: {}, passwordFile: {}, homeAssistant: false}}\n",
        broker.port,
        mosquitto::ROOST_USER.0,
        pass.display()
    );
    let yaml = recorder_deployment("retention-outbox", &storage, &extra)
        .replace("duration: 1s", "duration: 2s")
        .replace("storage: {path:", "storage: {maxAge: 3s, path:");
    std::fs::write(&r.file, &yaml).unwrap();
    let _feed = r.start_recording_with(&["--signal", "events"]);
    // Read-only, so the test never makes the outbox before the connector does.
    let outbox_file = r.state.join("outbox.db");
    let waiting = || -> Vec<String> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let Ok(outbox) = rusqlite::Connection::open_with_flags(&outbox_file, flags) else {
            return Vec::new();
        };
        outbox.busy_timeout(Duration::from_secs(10)).unwrap();
        outbox
            .prepare("SELECT DISTINCT recording_id FROM message WHERE recording_id IS NOT NULL")
            .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
            .unwrap_or_default()
    };
    let s = r.wait_for(
        "recordings held for their messages",
        Duration::from_secs(90),
        |s| {
            curator_output(s)["storage"]["heldForRetention"].as_u64() >= Some(2)
                && waiting().len() >= 2
        },
    );
    let held = waiting();
    assert!(held.len() >= 2, "{held:?} {s:#}");
    let conn = db(&storage);
    let path_of = |id: &str| -> (Option<String>, Option<String>) {
        conn.query_row(
            "SELECT path, deleted_by FROM recording WHERE id = ?1",
            [id.parse::<uuid::Uuid>().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    for id in &held {
        let (path, by) = path_of(id);
        let path = path.unwrap_or_else(|| panic!("{id} deleted ({by:?}) with a message waiting"));
        assert!(Path::new(&path).is_file());
    }

    broker.start_again();
    r.wait_for(
        "messages delivered and the held recordings gone",
        Duration::from_secs(90),
        |_| {
            held.iter()
                .all(|id| path_of(id).1.as_deref() == Some("maxAge"))
        },
    );
    assert_eq!(r.stop(), Some(0));
}
