//! Logs never end the recorder: `roost record` whose stderr (and stdout) is a pipe nobody reads
//! any more, as after a SIGKILL of the roost that started it, keeps recording, logs into the
//! broken pipe (EPIPE), and still stops cleanly with its last file registered. Real binary, real
//! ALSA (file plugin over a paced FIFO), real SQLite.

mod recorder_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use recorder_common::{BIN, KillOnDrop, PacedFeeder, Rig, terminate};
use roost::recorder::RecorderState;
use serde_json::json;

const LONG: Duration = Duration::from_secs(40);

#[test]
fn a_recorder_whose_log_reader_is_gone_keeps_recording_and_stops_cleanly() {
    let rate = 16_000;
    let rig = Rig::new(rate, json!({}), json!({}));
    let feeder = PacedFeeder::start(&rig.fifo, rate, rig.period);
    let mut child = Command::new(BIN)
        .args(["record", "--config"])
        .arg(&rig.config)
        .arg("--state-dir")
        .arg(&rig.state)
        .env("ALSA_CONFIG_PATH", &rig.asound)
        .env("ROOST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading ends before the recorder logs anything: every log line meets EPIPE.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let mut child = KillOnDrop(child);

    rig.wait_report("a file written", LONG, |r| r.files_written >= 1);
    // Silence makes the recorder log the device loss (a warning) into the broken pipe.
    feeder.stall();
    rig.wait_report("the device loss reported", LONG, |r| {
        r.state == RecorderState::DeviceUnavailable
    });
    assert_eq!(child.0.try_wait().unwrap(), None, "the recorder died");

    let status = terminate(&mut child.0);
    assert!(status.success(), "{status:?}");
    let report = rig.report().unwrap();
    assert_eq!(report.state, RecorderState::Stopped);
    let last = report.last_file.expect("a last file");
    let conn = rusqlite::Connection::open(rig.storage.join("metadata.db")).unwrap();
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM recording WHERE path = ?1",
            [last.to_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 1, "the last file {} has its row", last.display());
    drop(feeder);
    rig.assert_consistent();
}
