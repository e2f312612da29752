//! The link is judged by delivery, not by being connected: a broker that accepts the
//! connection and answers pings but never acknowledges a publish (a small fake in Python on a
//! localhost socket), and a status too large to carry (a real Mosquitto), which must never
//! block the messages behind it.

mod common;
#[path = "support/mosquitto.rs"]
mod mosquitto;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Roost, component, deployment, sleeper, unique};
use serde_json::Value;

/// An MQTT 3.1.1 "broker" that answers CONNECT, PINGREQ and SUBSCRIBE, and never PUBACK.
const SILENT_BROKER: &str = r#"
import socket, sys, threading
def serve(c):
    buf = b""
    def read(n):
        nonlocal buf
        while len(buf) < n:
            d = c.recv(65536)
            if not d: raise EOFError
            buf += d
        out, buf = buf[:n], buf[n:]
        return out
    try:
        while True:
            head = read(1)[0]
            mult, length = 1, 0
            while True:
                b = read(1)[0]
                length += (b & 127) * mult
                mult *= 128
                if b < 128: break
            body = read(length)
            kind = head >> 4
            if kind == 1: c.sendall(bytes([0x20, 2, 0, 0]))
            elif kind == 12: c.sendall(bytes([0xD0, 0]))
            elif kind == 8: c.sendall(bytes([0x90, 3, body[0], body[1], 1]))
            elif kind == 14: return
    except Exception:
        return
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

struct Fake(Child);
impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connect_output(s: &Value) -> &Value {
    &component(s, "connect")["output"]
}

fn has_warning(s: &Value, code: &str, text: &str) -> bool {
    connect_output(s)["warnings"].as_array().is_some_and(|w| {
        w.iter()
            .any(|w| w["code"] == code && w["message"].as_str().is_some_and(|m| m.contains(text)))
    })
}

/// A broker that never acknowledges: within twice the keep-alive the link is reported down
/// with why (not `connected: true` for ever), the connector connects again with back-off, and
/// once messages waited longer than warnAfter, DEP_E501 says nothing is delivered; the
/// deployment stays Running (a link fault is a warning).
#[test]
fn a_broker_that_never_acknowledges_is_a_link_down() {
    if !mosquitto::have_or_skip(
        &["python3"],
        "a_broker_that_never_acknowledges_is_a_link_down",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("silent_broker.py");
    std::fs::write(&script, SILENT_BROKER).unwrap();
    let port = mosquitto::free_port();
    let _fake = Fake(
        Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut r = Roost::new("");
    let spec = format!(
        "  connect:\n    deviceId: silent\n    heartbeat: {{interval: 10s}}\n    outbox: {{warnAfter: 15s}}\n    mqtt: {{url: \"mqtt://127.0.0.1:{port}\", keepAlive: 5s, homeAssistant: false}}\n"
    );
    std::fs::write(
        &r.file,
        deployment("silent", &spec, &sleeper("sleeper", &unique("silent"))),
    )
    .unwrap();
    r.start();
    let started = Instant::now();
    let s = r.wait_for("the link judged down", Duration::from_secs(40), |s| {
        connect_output(s)["mqtt"]["lastError"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("acknowledged none of"))
    });
    eprintln!("figure: no PUBACK -> link down in {:?}", started.elapsed());
    assert_eq!(s["status"], "Running", "{s:#}");
    let s = r.wait_for(
        "DEP_E501 for undelivered messages",
        Duration::from_secs(40),
        |s| has_warning(s, "DEP_E501", ""),
    );
    assert_eq!(s["status"], "Running", "a link fault is a warning: {s:#}");
    assert_eq!(connect_output(&s)["mqtt"]["delivered"], 0);
    assert_eq!(r.stop(), Some(0));
}

/// Every retained message on `topic` of the broker, as (topic, payload).
fn retained(broker: &mosquitto::Broker, topic: &str) -> Vec<(String, String)> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-u", mosquitto::WATCHER.0, "-P", mosquitto::WATCHER.1])
        .args(["-v", "-t", topic, "--retained-only", "-W", "2"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect()
}

/// A status far over the size roost sends (120 components whose 3,000-character program
/// paths are missing: every error message carries its path) reaches the broker summarised
/// (outputs left out, messages cut), marked `summarised`, and heartbeats behind it are
/// delivered: nothing is blocked, the device stays online.
#[test]
fn a_status_too_large_is_summarised_and_blocks_nothing() {
    let test = "a_status_too_large_is_summarised_and_blocks_nothing";
    if !mosquitto::have_or_skip(
        &[
            "mosquitto",
            "mosquitto_passwd",
            "mosquitto_sub",
            "openssl",
            "setpriv",
        ],
        test,
    ) {
        return;
    }
    let broker = mosquitto::Broker::start();
    let mut r = Roost::new("");
    let pass = r.path("mqtt-password");
    std::fs::write(&pass, format!("{}\n", mosquitto::ROOST_USER.1)).unwrap();
    let long = format!("/opt/{}", "very-long-folder-name/".repeat(136));
    let components: String = (0..120)
        .map(|i| format!("    - name: c{i}\n      command: [\"{long}program-{i}\"]\n"))
        .collect();
    let spec = format!(
        "  connect:\n    deviceId: big\n    heartbeat: {{interval: 10s}}\n    mqtt: {{url: \"mqtt://127.0.0.1:{}\", username: {}, passwordFile: {}, keepAlive: 5s, homeAssistant: false}}\n",
        broker.port,
        mosquitto::ROOST_USER.0,
        pass.display()
    );
    std::fs::write(&r.file, deployment("big", &spec, &components)).unwrap();
    r.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, heartbeat) = loop {
        let got = retained(&broker, "roost/big/#");
        let find = |t: &str| {
            got.iter()
                .find(|(topic, _)| topic == t)
                .map(|(_, p)| serde_json::from_str::<Value>(p).unwrap())
        };
        if let (Some(s), Some(h)) = (find("roost/big/status"), find("roost/big/heartbeat"))
            && s["errors"].as_array().is_some_and(|e| e.len() >= 50)
        {
            break (s, h);
        }
        assert!(
            Instant::now() < deadline,
            "{got:?}\nstatus: {:#}\nlog: {}",
            r.status().unwrap_or_default(),
            std::fs::read_to_string(r.path("roost.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(status["summarised"], true, "{status:#}");
    assert!(status.to_string().len() <= 256 * 1024);
    assert!(
        status["errors"][0]["message"]
            .as_str()
            .unwrap()
            .ends_with('…')
    );
    assert_eq!(heartbeat["deviceId"], "big");
    let avail = retained(&broker, "roost/big/availability");
    assert_eq!(avail.first().map(|(_, p)| p.as_str()), Some("online"));
    let s = r.status().unwrap();
    assert!(
        connect_output(&s)["mqtt"]["connected"] == true,
        "{:#}",
        connect_output(&s)
    );
    assert_eq!(r.stop(), Some(0));
}
