//! The curator under faults, end to end on the real binary: a detector failing on every
//! recording, one slower than the recorder, one hanging to its timeout (each seen in status
//! with its code while keep decisions and retention go on), and a page visitor on a small card
//! whose spectrograms never cost a recording.

mod common;
#[path = "recorder_common/mod.rs"]
mod recorder_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Roost, component, recorder_deployment};
use serde_json::Value;

fn db(storage: &Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(storage.join("metadata.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

/// roost recording 1 s files with `detectors` (YAML flow list) and `storage_fields` added to
/// `spec.storage`, once metadata.db is there.
fn recording_with(
    name: &str,
    detectors: &str,
    storage_fields: &str,
) -> (
    Roost,
    std::path::PathBuf,
    common::Feed,
    rusqlite::Connection,
) {
    let mut r = Roost::new("");
    let storage = r.path("storage");
    let yaml = recorder_deployment(name, &storage, &format!("  detectors: {detectors}\n")).replace(
        "storage: {path:",
        &format!("storage: {{{storage_fields}, path:"),
    );
    std::fs::write(&r.file, &yaml).unwrap();
    let feed = r.start_recording();
    r.wait_for("metadata.db", Duration::from_secs(30), |_| {
        storage.join("metadata.db").exists()
    });
    let conn = db(&storage);
    (r, storage, feed, conn)
}

/// The curator's entry in status.json's `errors`.
fn curator_entry(s: &Value) -> Option<&Value> {
    s["errors"]
        .as_array()?
        .iter()
        .find(|e| e["component"] == "curator")
}

fn curator_error(s: &Value) -> Option<String> {
    curator_entry(s)?["code"].as_str().map(str::to_string)
}

/// A detector failing on every recording: after three in a row the curator is in error with
/// the detector's code, reason `DetectorFailing` and the end of its stderr, in status.json and
/// in `roost status` (which exits non-zero); the recordings are kept (analysisFailed) and
/// decided, not left undecided.
#[test]
fn a_detector_failing_on_every_recording_is_an_error_on_every_channel() {
    let detectors = r#"[{name: birdnet, kind: command, retries: 0, command: ["sh", "-c", "echo 'cannot load model /opt/birdnet/model.tflite' >&2; exit 3", "sh"]}]"#;
    let (mut r, _storage, _feed, conn) =
        recording_with("failing", detectors, "keep: [{every: 1m}]");
    let s = r.wait_for("the curator in error", Duration::from_secs(60), |s| {
        curator_error(s).as_deref() == Some("DEP_E602")
    });
    let curator = component(&s, "curator");
    assert_eq!(curator["status"], "Error", "{curator:#}");
    assert_eq!(curator["reason"], "DetectorFailing", "{curator:#}");
    let message = curator_entry(&s).unwrap()["message"].as_str().unwrap();
    assert!(
        message.contains("birdnet failed on its last")
            && message.contains("cannot load model /opt/birdnet/model.tflite"),
        "{message}"
    );
    assert!(
        s["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["code"] == "DEP_E602"),
        "{s:#}"
    );
    let status = Command::new(common::ROOST)
        .args(["status", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("DEP_E602"), "{text}");
    assert!(text.contains("cannot load model"), "{text}");
    assert_ne!(status.status.code(), Some(0), "{text}");
    // Decisions go on: each failed recording is kept as analysisFailed.
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM roost_keep WHERE kept_by = 'analysisFailed'"
        ) >= 3
    );
    assert_eq!(r.stop(), Some(0));
}

/// A detector slower than the recorder (1.5 s per 1 s file) and one that hangs to its
/// timeout: the backlog is reported with its size and oldest start and raises DEP_E611 past
/// maxBacklog; keep decisions and retention of what was analysed go on meanwhile.
#[test]
fn a_slow_or_hanging_detector_is_seen_and_never_freezes_keep_or_retention() {
    let detectors = r#"[{name: slow, kind: command, maxBacklog: 3, command: ["sh", "-c", "sleep 1.5; echo '{\"detections\": []}'", "sh"]}]"#;
    let (mut r, _storage, _feed, conn) =
        recording_with("slow", detectors, "keep: [{always: true}], maxAge: 4s");
    let s = r.wait_for("DEP_E611 with the backlog", Duration::from_secs(60), |s| {
        curator_error(s).as_deref() == Some("DEP_E611")
    });
    let figures = &component(&s, "curator")["output"]["detectors"][0];
    assert!(figures["backlog"].as_u64().unwrap() > 3, "{figures:#}");
    assert!(figures["backlogOldest"].is_string(), "{figures:#}");
    assert_eq!(component(&s, "curator")["reason"], "DetectorBehind");
    // While behind, what was analysed is decided and, past maxAge, deleted.
    r.wait_for("retention while behind", Duration::from_secs(60), |_| {
        count(
            &conn,
            "SELECT count(*) FROM recording WHERE deleted_by = 'maxAge'",
        ) >= 2
            && count(&conn, "SELECT count(*) FROM roost_keep") >= 4
    });
    // Never a recording that was not analysed.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM recording r WHERE r.deleted_by = 'maxAge' AND NOT EXISTS
             (SELECT 1 FROM roost_analysis a WHERE a.recording_id = r.id AND a.outcome = 'done')"
        ),
        0
    );
    assert_eq!(r.stop(), Some(0));

    // A detector that hangs on every file until its 2 s timeout: DEP_E603 after three in a
    // row; the recordings are kept (analysisFailed) and decided.
    let hanging = r#"[{name: hang, kind: command, retries: 0, timeout: 2s, command: ["sh", "-c", "sleep 1000", "sh"]}]"#;
    let (mut r, _storage, _feed, conn) = recording_with("hanging", hanging, "keep: [{every: 1m}]");
    let s = r.wait_for("DEP_E603", Duration::from_secs(60), |s| {
        curator_error(s).as_deref() == Some("DEP_E603")
    });
    assert_eq!(component(&s, "curator")["reason"], "DetectorFailing");
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM roost_keep WHERE kept_by = 'analysisFailed'"
        ) >= 3
    );
    assert_eq!(r.stop(), Some(0));
}

/// The status code of a GET on the page (raw HTTP/1.0, as a phone's browser would send).
fn http_status(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the page does not listen on {port}: {e}"),
        }
    };
    write!(stream, "GET {path} HTTP/1.0\r\nHost: roost\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let head = String::from_utf8_lossy(&answer[..answer.len().min(32)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"))
}

/// Every `*.png` under `dir`.
fn pictures_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "png") {
                out.push(p);
            }
        }
    }
    out
}

/// A page visitor opening every spectrogram on a small card (state folder and storage on one
/// tmpfs, `onLowSpace: deleteOldest`): no picture is written to the card, so none takes a
/// recording's place; with a RAM run-time folder the pictures go there, bounded.
#[test]
fn a_page_visitor_never_costs_a_recording_on_a_small_card() {
    if !recorder_common::root_or_skip("a_page_visitor_never_costs_a_recording_on_a_small_card") {
        return;
    }
    let mut r = Roost::new("");
    let card = r.path("card");
    std::fs::create_dir_all(&card).unwrap();
    let _card = recorder_common::Tmpfs::mount(&card, "16m").expect("mount a tmpfs card");
    r.state = card.join("state");
    let storage = card.join("roost");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = recorder_deployment(
        "page",
        &storage,
        &format!("  page: {{listen: \"127.0.0.1:{port}\"}}\n"),
    )
    .replace(
        "minFreeSpace: 0, onLowSpace: stop",
        "minFreeSpace: 4MiB, onLowSpace: deleteOldest",
    );
    std::fs::write(&r.file, &yaml).unwrap();
    let _feed = r.start_recording();
    let conn = {
        r.wait_for("recordings", Duration::from_secs(30), |_| {
            storage.join("metadata.db").exists()
        });
        db(&storage)
    };
    r.wait_for("ten recordings", Duration::from_secs(40), |_| {
        count(
            &conn,
            "SELECT count(*) FROM recording WHERE path IS NOT NULL",
        ) >= 10
    });
    // The visitor: every recording's spectrogram, twice.
    let names: Vec<String> = conn
        .prepare("SELECT path FROM recording WHERE path IS NOT NULL")
        .unwrap()
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(|p| {
            Path::new(&p.unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for _ in 0..2 {
        for name in &names {
            let code = http_status(port, &format!("/spectrogram.png?file={name}"));
            assert!(code == 200 || code == 404, "{name}: {code}");
        }
    }
    assert_eq!(
        pictures_under(&card),
        Vec::<std::path::PathBuf>::new(),
        "no picture on the card"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM recording WHERE deleted_by = 'onLowSpace'"
        ),
        0
    );
    assert_eq!(r.stop(), Some(0));
}

/// Live processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .collect()
}

/// A detector that leaves a process behind in a session of its own with an empty environment
/// (`env -i setsid`, as a daemonising model server may): the curator, the subreaper of what
/// its detectors start, kills it when the run ends; nothing outlives the runs.
#[test]
fn nothing_a_detector_starts_outlives_its_run() {
    let detectors = r#"[{name: leaky, kind: command, command: ["sh", "-c", "env -i setsid sleep 3011.7 < /dev/null > /dev/null 2>&1 & echo '{\"detections\": []}'", "sh"]}]"#;
    let (mut r, _storage, _feed, conn) =
        recording_with("leaky", detectors, "keep: [{always: true}]");
    r.wait_for("five analysed", Duration::from_secs(60), |_| {
        count(
            &conn,
            "SELECT count(*) FROM roost_analysis WHERE detector = 'leaky' AND outcome = 'done'",
        ) >= 5
    });
    let alive = processes_with("sleep 3011.7");
    assert!(alive.len() <= 1, "left behind: {alive:?}");
    assert_eq!(r.stop(), Some(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_with("sleep 3011.7").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(processes_with("sleep 3011.7"), Vec::<u32>::new());
}
