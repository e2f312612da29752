//! acoupi 0.8.0's own code for the tests: its Python (the virtual environment `.ci/setup`
//! makes at `target/acoupi-venv`, or `ROOST_ACOUPI_PYTHON`) and a validator that runs roost's
//! messages through acoupi's pydantic models (`acoupi.data.ModelOutput`,
//! `acoupi.tasks.heartbeat.Heartbeat`).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// acoupi's Python, or `None` (the test says so and skips).
pub fn acoupi_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("ROOST_ACOUPI_PYTHON").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/acoupi-venv/bin/python")),
        Some(PathBuf::from("/opt/acoupi-venv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import acoupi.data, acoupi.tasks.heartbeat"])
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Validates each `{"kind", "json", "expect"}` line with acoupi's models; returns one line of
/// verdict per input (`ok` or the error).
const VALIDATE: &str = r#"
import json, sys, datetime
from acoupi.data import ModelOutput
from acoupi.tasks.heartbeat import Heartbeat
for line in sys.stdin:
    item = json.loads(line)
    try:
        if item["kind"] == "heartbeat":
            hb = Heartbeat.model_validate_json(json.dumps(item["json"]))
            assert hb.device_id == item["expect"]["device_id"], hb.device_id
            assert len(hb.metrics) == item["expect"]["metrics"], hb.metrics
            assert hb.status == item["expect"]["status"], hb.status
        else:
            mo = ModelOutput.model_validate_json(json.dumps(item["json"]))
            e = item["expect"]
            start = datetime.datetime.fromisoformat(e["start"])
            gap = abs((mo.recording.created_on - start).total_seconds())
            assert gap < 0.001, f"recording.created_on {mo.recording.created_on} vs {start}"
            assert mo.created_on.tzinfo is not None
            assert str(mo.id) == e["id"], (str(mo.id), e["id"])
            assert str(mo.recording.id) == e["recording_id"]
            assert mo.recording.deployment.name == e["deployment"]
            kinds = sorted(d.prediction_type.value for d in mo.detections)
            assert kinds == e["kinds"], kinds
            for d in mo.detections:
                if d.location is not None:
                    assert d.location.coordinates[2] > d.location.coordinates[0]
        print("ok", flush=True)
    except Exception as err:
        print("FAIL", repr(err).replace("\n", " "), flush=True)
"#;

pub fn validate(python: &Path, items: &[Value]) -> Vec<String> {
    let mut child = Command::new(python)
        .args(["-c", VALIDATE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for item in items {
        writeln!(stdin, "{item}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `prediction_type` metadata.db holds for each detection a model-output message lists
/// (by id), sorted: what the message must say of them.
pub fn kinds_in_db(conn: &rusqlite::Connection, body: &Value) -> Vec<String> {
    let mut kinds: Vec<String> = body["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let id: uuid::Uuid = d["id"].as_str().unwrap().parse().unwrap();
            conn.query_row(
                "SELECT prediction_type FROM detection WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        })
        .collect();
    kinds.sort();
    kinds
}
