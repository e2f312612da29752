//! `roost fleet` against a real Mosquitto broker started by the test on a free localhost port:
//! retained messages published with `mosquitto_pub -r`, and real `roost run` processes whose
//! connector's last will the broker publishes when one of them is killed.

mod recorder_common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use recorder_common::have_or_skip;
use serde_json::Value;

const ROOST: &str = env!("CARGO_BIN_EXE_roost");

/// The broker binary: on PATH, or in /usr/sbin (not on a user's PATH on Debian).
fn mosquitto_or_skip(test: &str) -> Option<PathBuf> {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.exists() {
        return Some(sbin);
    }
    have_or_skip("mosquitto", test).then(|| PathBuf::from("mosquitto"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto broker on 127.0.0.1, anonymous, without persistence; killed on drop.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(binary: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("mosquitto.log")).unwrap())
            .spawn()
            .unwrap();
        let broker = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn publish_retained(&self, topic: &str, payload: &str) {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-q",
                "1",
                "-r",
            ])
            .args(["-t", topic, "-m", payload])
            .status()
            .unwrap();
        assert!(status.success(), "mosquitto_pub -t {topic}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fleet(url: &str, extra: &[&str]) -> Output {
    Command::new(ROOST)
        .args(["fleet", "--broker", url, "--wait", "1s"])
        .args(extra)
        .output()
        .unwrap()
}

fn fleet_json(url: &str, extra: &[&str]) -> (Vec<Value>, i32) {
    let out = fleet(url, &[&["--json"][..], extra].concat());
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (rows.as_array().unwrap().clone(), out.status.code().unwrap())
}

fn ago(seconds: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(seconds)).to_string()
}

fn status_doc(device: &str) -> String {
    serde_json::json!({
        "messageId": "1", "deviceId": device, "deployment": "dawn-chorus",
        "phase": "Succeeded", "status": "Running", "errors": [], "updatedAt": ago(30),
        "components": [{"name": "recorder", "status": "Running",
                        "output": {"lastFileAt": ago(12)}}],
    })
    .to_string()
}

fn heartbeat(device: &str, sent_ago: i64) -> String {
    serde_json::json!({
        "messageId": "2", "deviceId": device, "deployment": "dawn-chorus",
        "sentAt": ago(sent_ago), "intervalSeconds": 10,
        "metrics": {"phase": "Succeeded", "status": "Running", "errorCodes": []},
    })
    .to_string()
}

fn publish_device(broker: &Broker, prefix: &str, device: &str, availability: &str, hb_ago: i64) {
    broker.publish_retained(&format!("{prefix}/{device}/status"), &status_doc(device));
    broker.publish_retained(&format!("{prefix}/{device}/availability"), availability);
    broker.publish_retained(
        &format!("{prefix}/{device}/heartbeat"),
        &heartbeat(device, hb_ago),
    );
}

fn by_id<'a>(rows: &'a [Value], id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["deviceId"] == id)
        .unwrap_or_else(|| panic!("{id} not in {rows:#?}"))
}

#[test]
fn fleet_shows_offline_and_silent_devices_as_dep_e151() {
    let Some(mosquitto) = mosquitto_or_skip("fleet_shows_offline_and_silent_devices_as_dep_e151")
    else {
        return;
    };
    if !have_or_skip(
        "mosquitto_pub",
        "fleet_shows_offline_and_silent_devices_as_dep_e151",
    ) {
        return;
    }
    let broker = Broker::start(&mosquitto);
    publish_device(&broker, "roost", "dev-a", "online", 3);
    publish_device(&broker, "roost", "dev-b", "offline", 3);
    publish_device(&broker, "roost", "dev-c", "online", 3600);

    let (rows, code) = fleet_json(&broker.url(), &[]);
    assert_eq!(code, 1, "{rows:#?}");
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dev-a", "dev-b", "dev-c"]);

    let a = by_id(&rows, "dev-a");
    assert_eq!(a["problem"], Value::Null, "{a:#}");
    assert_eq!(a["availability"], "online");
    assert_eq!(a["status"], "Running");
    assert_eq!(a["phase"], "Succeeded");
    assert_eq!(a["deployment"], "dawn-chorus");
    assert_eq!(a["errorCodes"], serde_json::json!([]));
    let age = a["lastRecordingAgeSeconds"].as_u64().unwrap();
    assert!((12..60).contains(&age), "{a:#}");
    assert!(a["lastSeen"].as_str().is_some(), "{a:#}");

    let b = by_id(&rows, "dev-b");
    assert_eq!(b["availability"], "offline");
    assert_eq!(b["problem"]["code"], "DEP_E151", "{b:#}");
    assert!(
        b["problem"]["message"]
            .as_str()
            .unwrap()
            .contains("offline")
    );
    assert!(!b["problem"]["action"].as_str().unwrap().is_empty());

    let c = by_id(&rows, "dev-c");
    assert_eq!(c["availability"], "online");
    assert_eq!(c["problem"]["code"], "DEP_E151", "{c:#}");
    assert!(
        c["problem"]["message"]
            .as_str()
            .unwrap()
            .contains("heartbeat")
    );

    let out = fleet(&broker.url(), &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("DEVICE"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("dev-")).count(),
        5,
        "{text}"
    );
    for bad in ["dev-b", "dev-c"] {
        assert!(
            text.contains(&format!(
                "\n{bad} DEP_E151: device offline or not reachable: "
            )),
            "{text}"
        );
    }
    assert!(!text.contains("dev-a DEP_E151"), "{text}");
    assert!(text.contains("Recommended action: "), "{text}");

    // A fleet where every device is reachable and Running exits 0.
    publish_device(&broker, "healthy", "dev-x", "online", 1);
    let (rows, code) = fleet_json(&broker.url(), &["--prefix", "healthy"]);
    assert_eq!((rows.len(), code), (1, 0), "{rows:#?}");
}

#[test]
fn a_broker_that_cannot_be_reached_is_exit_2_with_dep_e501() {
    let url = format!("mqtt://127.0.0.1:{}", free_port());
    let out = fleet(&url, &["--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("DEP_E501") && stderr.contains(&url),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// A `roost run` on a folder of its own, stopped (SIGTERM, then SIGKILL) on drop.
struct RoostRun {
    child: Child,
    state: PathBuf,
}

impl RoostRun {
    fn start(dir: &Path, device: &str, broker_url: &str) -> Self {
        Self::start_with(dir, device, broker_url, "")
    }

    /// With `extra` lines of spec (indented by 2).
    fn start_with(dir: &Path, device: &str, broker_url: &str, extra: &str) -> Self {
        let folder = dir.join(device);
        std::fs::create_dir_all(&folder).unwrap();
        let file = folder.join("deployment.yaml");
        std::fs::write(
            &file,
            format!(
                "apiVersion: roost/v1
kind: Deployment
metadata:
  name: fleet-{device}
spec:
  components:
    - name: idle
      command: [\"/bin/sleep\", \"3600\"]
  connect:
    deviceId: {device}
    heartbeat: {{interval: 10s}}
    mqtt:
      url: {broker_url}
      keepAlive: 5s
      homeAssistant: false
{extra}"
            ),
        )
        .unwrap();
        let state = folder.join("state");
        let child = Command::new(ROOST)
            .args(["run", "--runtime", "process", "--file"])
            .arg(&file)
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(folder.join("roost.log")).unwrap())
            .spawn()
            .unwrap();
        Self { child, state }
    }

    /// The pid of each running component, by name, from status.json.
    fn component_pids(&self) -> Vec<(String, i32)> {
        let Some(status) = std::fs::read(self.state.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            return vec![];
        };
        let components = status["components"].as_array().cloned().unwrap_or_default();
        components
            .iter()
            .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["pid"].as_i64()? as i32)))
            .collect()
    }
}

/// Components of a killed roost, which nobody stops any more: SIGKILLed on drop.
struct Orphans(Vec<i32>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for RoostRun {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `roost fleet --json` until `pred` holds for its rows; panics with the last rows.
fn wait_for_fleet(url: &str, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let (rows, _) = fleet_json(url, &[]);
        if pred(&rows) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {rows:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_killed_roost_shows_offline_once_the_broker_publishes_its_last_will() {
    let test = "a_killed_roost_shows_offline_once_the_broker_publishes_its_last_will";
    let Some(mosquitto) = mosquitto_or_skip(test) else {
        return;
    };
    let broker = Broker::start(&mosquitto);
    let dir = tempfile::tempdir().unwrap();
    let mut runs: Vec<RoostRun> = ["dev-a", "dev-b", "dev-c"]
        .iter()
        .map(|d| RoostRun::start(dir.path(), d, &broker.url()))
        .collect();

    let online = |rows: &[Value]| {
        rows.len() == 3
            && rows
                .iter()
                .all(|r| r["availability"] == "online" && r["problem"].is_null())
    };
    wait_for_fleet(
        &broker.url(),
        "three devices online",
        Duration::from_secs(60),
        online,
    );
    let pids = runs[1].component_pids();
    let connect_pid = pids
        .iter()
        .find(|(name, _)| name == "connect")
        .map(|&(_, pid)| pid)
        .unwrap_or_else(|| panic!("no connect pid in dev-b's status.json: {pids:?}"));
    let _orphans = Orphans(pids.iter().map(|&(_, pid)| pid).collect());

    // No DISCONNECT: the broker publishes the last will when the connection drops (or, on a
    // link that just goes silent, after 1.5 x keepAlive).
    let _ = runs[1].child.kill();
    let _ = runs[1].child.wait();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(connect_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_for_fleet(
        &broker.url(),
        "dev-b offline, the others online",
        Duration::from_secs(30),
        |rows| {
            rows.len() == 3
                && by_id(rows, "dev-b")["availability"] == "offline"
                && by_id(rows, "dev-b")["problem"]["code"] == "DEP_E151"
                && ["dev-a", "dev-c"]
                    .iter()
                    .all(|d| by_id(rows, d)["problem"].is_null())
        },
    );
    let out = fleet(&broker.url(), &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("\ndev-b DEP_E151: "), "{text}");
    runs.clear();
}

/// The page's view (`/api/view.json`) on `port`.
fn page_view(port: u16) -> Option<Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET /api/view.json HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let body = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    serde_json::from_slice(&answer[body..]).ok()
}

/// roost killed with SIGKILL while its components live on (the connector, the page, the
/// sleeper): within 30 s every view says roost is not running, and what still runs: the
/// broker's retained status (so `roost fleet`) is Unknown with DEP_E402 while the device stays
/// online, the page's view is Unknown with DEP_E402, and `roost status` says NOT RUNNING and
/// exits 1.
#[test]
fn a_roost_killed_alone_is_seen_on_every_channel() {
    let test = "a_roost_killed_alone_is_seen_on_every_channel";
    let Some(mosquitto) = mosquitto_or_skip(test) else {
        return;
    };
    let broker = Broker::start(&mosquitto);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut run = RoostRun::start_with(
        dir.path(),
        "dev-k",
        &broker.url(),
        &format!("  page: {{listen: \"127.0.0.1:{port}\"}}\n"),
    );
    wait_for_fleet(
        &broker.url(),
        "online and Running",
        Duration::from_secs(60),
        |rows| {
            rows.len() == 1 && rows[0]["status"] == "Running" && rows[0]["availability"] == "online"
        },
    );
    let pids = run.component_pids();
    assert!(pids.len() >= 3, "{pids:?}");
    let _orphans = Orphans(pids.iter().map(|&(_, pid)| pid).collect());
    let killed = Instant::now();
    let _ = run.child.kill();
    let _ = run.child.wait();
    wait_for_fleet(
        &broker.url(),
        "DEP_E402 on the broker",
        Duration::from_secs(30),
        |rows| {
            rows.len() == 1
                && rows[0]["status"] == "Unknown"
                && rows[0]["availability"] == "online"
                && rows[0]["errorCodes"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c == "DEP_E402"))
        },
    );
    eprintln!(
        "figure: roost killed -> DEP_E402 on the broker in {:?}",
        killed.elapsed()
    );
    let view = page_view(port).expect("the page still answers");
    assert_eq!(view["status"], "Unknown", "{view:#}");
    assert_eq!(view["errors"][0]["code"], "DEP_E402", "{view:#}");
    assert!(
        view["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("still running without supervision: "),
        "{view:#}"
    );
    assert!(
        view["headline"]
            .as_str()
            .unwrap()
            .starts_with("NOT RUNNING: roost stopped unexpectedly"),
        "{view:#}"
    );
    let status = Command::new(ROOST)
        .args(["status", "--state-dir"])
        .arg(&run.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.starts_with("NOT RUNNING: roost stopped unexpectedly"),
        "{text}"
    );
    assert!(text.contains("DEP_E402"), "{text}");
    assert_eq!(status.status.code(), Some(1), "{text}");
}
