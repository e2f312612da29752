//! End-to-end tests of the built-in component `connect` on real parts: the real `roost run`
//! (process runtime) starting the real `roost connect`, a real Mosquitto broker per test (plain
//! and TLS listeners, a password file, a test CA made with openssl), real MQTT clients
//! (rumqttc in the test, `mosquitto_sub`), a small real HTTP server on a localhost socket, the
//! real SQLite outbox, and the Prometheus text file read by the `prometheus_client` parser.
//! Every wait polls with a deadline; every child dies with its test.

#[path = "support/acoupi.rs"]
mod acoupi;
mod common;
#[path = "support/mosquitto.rs"]
mod mosquitto;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Roost, component, deployment, pid_of, sleeper, unique};
use mosquitto::{Broker, ROOST_USER, Received, Subscriber, TestCa, WATCHER};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn broker_or_skip(test: &str) -> bool {
    mosquitto::have_or_skip(
        &["mosquitto", "mosquitto_passwd", "openssl", "setpriv"],
        test,
    )
}

/// A roost whose deployment has `connect` (the YAML of `spec.connect`'s fields, indented by
/// 4) and a sleeper; the file is written, roost not started.
fn roost_with(name: &str, connect: impl FnOnce(&Roost) -> String) -> Roost {
    let r = Roost::new("");
    let spec = format!("  connect:\n{}", connect(&r));
    std::fs::write(
        &r.file,
        deployment(name, &spec, &sleeper("sleeper", &unique(name))),
    )
    .unwrap();
    r
}

/// A file in the test's folder holding `content`; its absolute path.
fn secret(r: &Roost, name: &str, content: &str) -> PathBuf {
    let path = r.path(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// `mqtt:` of spec.connect for the plain listener, as roost's user with `password`.
fn plain_mqtt(r: &Roost, broker: &Broker, password: &str, extra: &str) -> String {
    let pass = secret(r, "mqtt-password", &format!("{password}\n"));
    format!(
        "    mqtt: {{url: \"mqtt://127.0.0.1:{}\", username: {}, passwordFile: {}, keepAlive: 5s{extra}}}\n",
        broker.port,
        ROOST_USER.0,
        pass.display()
    )
}

fn connect_output(s: &Value) -> &Value {
    &component(s, "connect")["output"]
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// roost's and the connector's logs, for failure messages.
fn logs(r: &Roost) -> String {
    format!(
        "roost log tail:\n{}\nconnect log tail:\n{}",
        tail(&r.path("roost.log"), 30),
        tail(&r.state.join("logs").join("connect.log"), 30)
    )
}

/// Waits until status.json satisfies `pred`; panics with it and both logs.
fn wait_status(r: &Roost, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = r.status()
            && pred(&s)
        {
            return s;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}\nstatus: {:#}\n{}",
                r.status().unwrap_or(Value::Null),
                logs(r)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn has_connect(s: &Value) -> bool {
    s["components"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == "connect"))
}

fn mqtt_connected(s: &Value) -> bool {
    has_connect(s) && connect_output(s)["mqtt"]["connected"] == true
}

fn succeeded(s: &Value, generation: u64) -> bool {
    s["observedGeneration"] == generation && s["phase"] == "Succeeded" && s["status"] == "Running"
}

fn sigkill(pid: u64) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// `(millis, counter)` of a message id `<deviceId>-<millis>-<counter>`: within one run of the
/// connector the counter grows, and a later run starts at a later millisecond.
fn id_order(message_id: &str) -> (u64, u64) {
    let mut parts = message_id.rsplitn(3, '-');
    let counter = parts.next().and_then(|p| p.parse().ok());
    let millis = parts.next().and_then(|p| p.parse().ok());
    match (millis, counter) {
        (Some(m), Some(c)) => (m, c),
        _ => panic!("message id {message_id:?} is not <deviceId>-<millis>-<counter>"),
    }
}

/// The messages in order of first appearance, checking that a repeated message id always
/// carries the same payload (a resend) and that the ids of first appearances strictly grow.
fn first_appearances(bodies: &[Value]) -> Vec<Value> {
    let mut seen: std::collections::HashMap<String, Value> = Default::default();
    let mut out: Vec<Value> = Vec::new();
    for body in bodies {
        let id = body["messageId"].as_str().expect("messageId").to_string();
        if let Some(before) = seen.get(&id) {
            assert_eq!(before, body, "a resend of {id} must be the same message");
            continue;
        }
        if let Some(last) = out.last() {
            let last_id = last["messageId"].as_str().unwrap();
            assert!(
                id_order(last_id) < id_order(&id),
                "{id} arrived after {last_id}: out of order"
            );
        }
        seen.insert(id, body.clone());
        out.push(body.clone());
    }
    out
}

/// Status messages of the MQTT sink waiting in the outbox, in outbox order.
fn queued_statuses(state: &Path) -> Vec<Value> {
    let path = state.join("outbox.db");
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare(
        "SELECT payload FROM message WHERE sink = 'mqtt' AND topic LIKE '%/status' ORDER BY seq",
    ) else {
        return Vec::new();
    };
    stmt.query_map([], |row| row.get::<_, Vec<u8>>(0))
        .map(|rows| {
            rows.filter_map(Result::ok)
                .map(|p| serde_json::from_slice(&p).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_queued(r: &Roost, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let queued = queued_statuses(&r.state);
        if pred(&queued) {
            return queued;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what} in the outbox: {:#?}\n{}",
                queued
                    .iter()
                    .map(|q| (
                        q["messageId"].clone(),
                        q["generation"].clone(),
                        q["phase"].clone()
                    ))
                    .collect::<Vec<_>>(),
                logs(r)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Retained messages under `filter` read by a late `mosquitto_sub` over TLS, until `pred`
/// holds: (topic, payload) pairs.
fn retained_over_tls(
    broker: &Broker,
    filter: &str,
    pred: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.tls_port.to_string()])
            .arg("--cafile")
            .arg(&broker.ca.cert)
            .args(["-u", WATCHER.0, "-P", WATCHER.1, "-t", filter])
            .args(["--retained-only", "-v", "-W", "1"])
            .output()
            .unwrap();
        let got: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, p)| (t.to_string(), p.to_string()))
            .collect();
        if pred(&got) {
            return got;
        }
        if Instant::now() > deadline {
            panic!(
                "mosquitto_sub never saw what was expected; got {got:#?}\nstderr: {}\nbroker log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                broker.log()
            );
        }
    }
}

fn payload_on<'a>(msgs: &'a [(String, String)], topic: &str) -> Option<&'a str> {
    msgs.iter()
        .rev()
        .find(|(t, _)| t == topic)
        .map(|(_, p)| p.as_str())
}

#[test]
fn a_late_subscriber_sees_the_retained_status_and_online_over_tls() {
    let test = "a_late_subscriber_sees_the_retained_status_and_online_over_tls";
    if !broker_or_skip(test) || !mosquitto::have_or_skip(&["mosquitto_sub"], test) {
        return;
    }
    let broker = Broker::start();
    let mut r = roost_with("late", |r| {
        let pass = secret(r, "mqtt-password", &format!("{}\n", ROOST_USER.1));
        format!(
            "    deviceId: meadow-01\n    mqtt: {{url: \"mqtts://127.0.0.1:{}\", username: {}, passwordFile: {}, caFile: {}, keepAlive: 5s}}\n",
            broker.tls_port,
            ROOST_USER.0,
            pass.display(),
            broker.ca.cert.display()
        )
    });
    r.start();
    let s = wait_status(&r, "Succeeded and connected over TLS", WAIT, |s| {
        succeeded(s, 1) && mqtt_connected(s)
    });
    assert_eq!(connect_output(&s)["deviceId"], "meadow-01");
    assert_eq!(
        connect_output(&s)["mqtt"]["lastError"],
        Value::Null,
        "{s:#}"
    );

    // Subscribed only now: what it sees is what the broker kept.
    let retained = retained_over_tls(&broker, "roost/meadow-01/#", |m| {
        payload_on(m, "roost/meadow-01/status")
            .is_some_and(|p| serde_json::from_str::<Value>(p).unwrap()["phase"] == "Succeeded")
            && payload_on(m, "roost/meadow-01/availability").is_some()
    });
    assert_eq!(
        payload_on(&retained, "roost/meadow-01/availability"),
        Some("online")
    );
    let status: Value =
        serde_json::from_str(payload_on(&retained, "roost/meadow-01/status").unwrap()).unwrap();
    assert_eq!(status["deviceId"], "meadow-01");
    assert!(
        status["messageId"]
            .as_str()
            .is_some_and(|id| id.starts_with("meadow-01-")),
        "{status:#}"
    );
    assert_eq!(status["phase"], "Succeeded");
    assert_eq!(status["status"], "Running");
    assert_eq!(status["generation"], 1);
    assert_eq!(status["deployment"], "late");
    assert_eq!(component(&status, "sleeper")["status"], "Running");
    assert_eq!(r.stop(), Some(0));
}

#[test]
fn the_last_will_says_offline_when_the_connector_is_killed() {
    if !broker_or_skip("the_last_will_says_offline_when_the_connector_is_killed") {
        return;
    }
    let broker = Broker::start();
    let mut r = roost_with("will", |r| {
        format!(
            "    deviceId: meadow-02\n{}",
            plain_mqtt(r, &broker, ROOST_USER.1, "")
        )
    });
    r.start();
    let s = wait_status(&r, "connected", WAIT, |s| {
        succeeded(s, 1) && mqtt_connected(s)
    });
    let topic = "roost/meadow-02/availability";
    let sub = Subscriber::start(broker.port, &[topic]);
    sub.wait_until(
        "retained online",
        WAIT,
        || logs(&r),
        |m| m.first().is_some_and(|m| m.retain && m.payload == "online"),
    );

    // roost held still, so that it cannot start the connector again before the will is read.
    let roost_pid = r.pid() as i32;
    kill(Pid::from_raw(roost_pid), Signal::SIGSTOP).unwrap();
    let connector = pid_of(&s, "connect");
    let killed_at = Instant::now();
    sigkill(connector);
    let keep_alive = Duration::from_secs(5);
    let limit = keep_alive.mul_f64(1.5) + Duration::from_secs(3);
    let got = sub.wait_until(
        "offline",
        limit,
        || logs(&r),
        |m| m.iter().any(|m| m.payload == "offline"),
    );
    let offline = got.iter().find(|m| m.payload == "offline").unwrap();
    assert!(offline.at - killed_at <= limit);
    let late = Subscriber::start(broker.port, &[topic]);
    let kept = late.wait_until(
        "the retained availability",
        WAIT,
        || logs(&r),
        |m| !m.is_empty(),
    );
    assert!(kept[0].retain);
    assert_eq!(kept[0].payload, "offline", "the will is retained");

    kill(Pid::from_raw(roost_pid), Signal::SIGCONT).unwrap();
    // roost starts the connector again, which says online again.
    sub.wait_until(
        "online again",
        WAIT,
        || logs(&r),
        |m| m.last().is_some_and(|m| m.payload == "online"),
    );
    let s = wait_status(&r, "a new connector", WAIT, |s| {
        mqtt_connected(s) && pid_of(s, "connect") != connector
    });
    assert_eq!(component(&s, "connect")["restartCount"], 1, "{s:#}");
    assert_eq!(s["status"], "Running");
    assert_eq!(r.stop(), Some(0));
}

#[test]
fn heartbeats_arrive_in_roost_and_acoupi_form() {
    if !broker_or_skip("heartbeats_arrive_in_roost_and_acoupi_form") {
        return;
    }
    let broker = Broker::start();
    let sub = Subscriber::start(
        broker.port,
        &["roost/meadow-03/heartbeat", "acoupi/meadow-03"],
    );
    let mut r = roost_with("beat", |r| {
        format!(
            "    deviceId: meadow-03\n    heartbeat: {{interval: 10s}}\n{}",
            plain_mqtt(r, &broker, ROOST_USER.1, ", acoupiTopic: acoupi")
        )
    });
    r.start();
    // One heartbeat when the connector starts, the next one interval later.
    let got = sub.wait_until(
        "two heartbeats of each kind",
        Duration::from_secs(30),
        || logs(&r),
        |m| {
            let n = |t: &str| m.iter().filter(|m| m.topic == t).count();
            n("roost/meadow-03/heartbeat") >= 2 && n("acoupi/meadow-03") >= 2
        },
    );
    let beats: Vec<Value> = got
        .iter()
        .filter(|m| m.topic == "roost/meadow-03/heartbeat")
        .map(Received::json)
        .collect();
    for beat in &beats {
        assert_eq!(beat["deviceId"], "meadow-03");
        assert_eq!(beat["intervalSeconds"], 10);
        assert_eq!(beat["deployment"], "beat");
        assert!(
            beat["messageId"]
                .as_str()
                .unwrap()
                .starts_with("meadow-03-")
        );
        assert!(beat["metrics"].get("outboxDepth").is_some(), "{beat:#}");
    }
    let sent_at = |v: &Value, key: &str| -> jiff::Timestamp {
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing: {v:#}"))
            .parse()
            .unwrap()
    };
    let gap = sent_at(&beats[1], "sentAt").duration_since(sent_at(&beats[0], "sentAt"));
    assert!(
        gap >= jiff::SignedDuration::from_secs(9) && gap <= jiff::SignedDuration::from_secs(13),
        "heartbeats {gap:?} apart, interval 10s"
    );
    let acoupi: Vec<Value> = got
        .iter()
        .filter(|m| m.topic == "acoupi/meadow-03")
        .map(Received::json)
        .collect();
    for beat in &acoupi {
        let keys: Vec<&str> = beat
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(
            keys,
            ["device_id", "metrics", "roost", "sent_on", "status"],
            "{beat:#}"
        );
        assert_eq!(beat["device_id"], "meadow-03");
        let _ = sent_at(beat, "sent_on");
        assert!(beat["metrics"].is_array());
    }
    // By the second beat the deployment has long converged.
    assert_eq!(acoupi[1]["status"], "OK", "{:#}", acoupi[1]);
    assert_eq!(acoupi[1]["roost"]["phase"], "Succeeded");
    // acoupi's own Heartbeat model takes what came through the broker.
    if let Some(python) = acoupi::acoupi_python() {
        let items: Vec<Value> = acoupi
            .iter()
            .map(|b| {
                let metrics = b["metrics"].as_array().map_or(0, Vec::len);
                serde_json::json!({"kind": "heartbeat", "json": b, "expect": {
                    "device_id": "meadow-03", "metrics": metrics, "status": b["status"]}})
            })
            .collect();
        let verdicts = acoupi::validate(&python, &items);
        assert!(
            verdicts.len() == items.len() && verdicts.iter().all(|v| v == "ok"),
            "{verdicts:?}"
        );
    } else {
        eprintln!(
            "acoupi 0.8.0 is not installed: its Heartbeat model not checked (bash .ci/setup)"
        );
    }
    assert_eq!(beats[1]["metrics"]["phase"], "Succeeded");
    assert_eq!(r.stop(), Some(0));
}

#[test]
fn home_assistant_discovery_is_retained_and_sent_again_when_home_assistant_starts() {
    if !broker_or_skip(
        "home_assistant_discovery_is_retained_and_sent_again_when_home_assistant_starts",
    ) {
        return;
    }
    let broker = Broker::start();
    let mut r = roost_with("ha", |r| {
        format!(
            "    deviceId: meadow-04\n{}",
            plain_mqtt(r, &broker, ROOST_USER.1, "")
        )
    });
    r.start();
    wait_status(&r, "connected", WAIT, |s| {
        succeeded(s, 1) && mqtt_connected(s)
    });
    let config_topic = "homeassistant/device/meadow-04/config";
    let sub = Subscriber::start(
        broker.port,
        &[
            config_topic,
            "roost/meadow-04/state/+",
            "roost/meadow-04/availability",
        ],
    );
    let got = sub.wait_until(
        "discovery and states",
        WAIT,
        || logs(&r),
        |m| {
            let last = |t: &str| {
                m.iter()
                    .rev()
                    .find(|m| m.topic == t)
                    .map(|m| m.payload.clone())
            };
            m.iter().any(|m| m.topic == config_topic)
                && last("roost/meadow-04/state/phase").as_deref() == Some("Succeeded")
        },
    );
    let configs: Vec<&Received> = got.iter().filter(|m| m.topic == config_topic).collect();
    assert_eq!(configs.len(), 1, "one retained config");
    assert!(configs[0].retain);
    let config = configs[0].json();
    assert_eq!(config["dev"]["ids"][0], "roost_meadow-04");
    assert_eq!(config["avty_t"], "roost/meadow-04/availability");
    let cmps = config["cmps"].as_object().expect("cmps");
    for entity in ["status", "phase", "problem", "error_codes", "outbox_depth"] {
        let c = &cmps[entity];
        assert_eq!(
            c["stat_t"],
            format!("roost/meadow-04/state/{entity}"),
            "{c:#}"
        );
        assert_eq!(c["uniq_id"], format!("meadow-04_{entity}"));
    }
    assert_eq!(cmps["problem"]["p"], "binary_sensor");
    let state = |t: &str| {
        got.iter()
            .rev()
            .find(|m| m.topic == format!("roost/meadow-04/state/{t}"))
            .map(|m| m.payload.clone())
    };
    assert_eq!(state("status").as_deref(), Some("Running"));
    assert_eq!(state("problem").as_deref(), Some("OFF"));
    assert_eq!(state("error_codes").as_deref(), Some("none"));

    // Home Assistant restarted: roost publishes its discovery again.
    sub.publish("homeassistant/status", "online");
    let got = sub.wait_until(
        "discovery again",
        WAIT,
        || logs(&r),
        |m| m.iter().filter(|m| m.topic == config_topic).count() >= 2,
    );
    let configs: Vec<&Received> = got.iter().filter(|m| m.topic == config_topic).collect();
    assert_eq!(configs.len(), 2, "published once more, not more");
    assert_eq!(configs[1].json(), config);

    // A clean stop says offline.
    assert_eq!(r.stop(), Some(0));
    sub.wait_until(
        "offline on a clean stop",
        WAIT,
        || broker.log(),
        |m| {
            m.iter()
                .rev()
                .find(|m| m.topic == "roost/meadow-04/availability")
                .is_some_and(|m| m.payload == "offline")
        },
    );
}

#[test]
fn the_outbox_keeps_every_status_through_a_broker_outage_and_a_killed_roost() {
    if !broker_or_skip("the_outbox_keeps_every_status_through_a_broker_outage_and_a_killed_roost") {
        return;
    }
    let mut broker = Broker::start();
    let tag = unique("outbox");
    let mut spec = String::new();
    let mut r = roost_with("outbox", |r| {
        spec = format!(
            "  connect:\n    deviceId: meadow-05\n    mqtt: {{url: \"mqtt://127.0.0.1:{}\", username: {}, passwordFile: {}, keepAlive: 5s, homeAssistant: false}}\n",
            broker.port,
            ROOST_USER.0,
            secret(r, "mqtt-password", ROOST_USER.1).display()
        );
        spec.trim_start_matches("  connect:\n").to_string()
    });
    let components = |names: &[&str]| -> String {
        names
            .iter()
            .map(|n| sleeper(n, &format!("{tag}-{n}")))
            .collect()
    };
    let write = |r: &Roost, names: &[&str]| {
        r.replace_atomically(&deployment("outbox", &spec, &components(names)))
    };
    write(&r, &["a"]);
    r.start();
    wait_status(&r, "connected", WAIT, |s| {
        succeeded(s, 1) && mqtt_connected(s)
    });
    wait_queued(&r, "gen 1 delivered", |q| q.is_empty());

    broker.stop();
    wait_status(&r, "the link down", WAIT, |s| {
        has_connect(s) && connect_output(s)["mqtt"]["connected"] == false
    });
    write(&r, &["a", "b"]);
    wait_status(&r, "generation 2", WAIT, |s| succeeded(s, 2));
    wait_queued(&r, "generation 2 Succeeded", |q| {
        q.iter()
            .any(|m| m["generation"] == 2 && m["phase"] == "Succeeded")
    });
    write(&r, &["b"]);
    wait_status(&r, "generation 3", WAIT, |s| succeeded(s, 3));
    wait_queued(&r, "generation 3 Succeeded", |q| {
        q.iter()
            .any(|m| m["generation"] == 3 && m["phase"] == "Succeeded")
    });

    // roost and its connector die outright; a change is written while they are gone.
    let connector = pid_of(&r.status().unwrap(), "connect");
    r.kill9();
    sigkill(connector);
    write(&r, &["a", "b", "c"]);
    r.start();
    let pid = r.pid() as u64;
    wait_status(&r, "generation 4 by the new roost", WAIT, |s| {
        s["reconciler"]["pid"] == pid && succeeded(s, 4)
    });
    wait_queued(&r, "generation 4 Succeeded", |q| {
        q.iter()
            .any(|m| m["generation"] == 4 && m["phase"] == "Succeeded")
    });
    write(&r, &["c"]);
    wait_status(&r, "generation 5", WAIT, |s| succeeded(s, 5));
    let queued = wait_queued(&r, "generation 5 Succeeded", |q| {
        q.iter()
            .any(|m| m["generation"] == 5 && m["phase"] == "Succeeded")
    });
    let queued_gens: Vec<u64> = queued
        .iter()
        .map(|m| m["generation"].as_u64().unwrap())
        .collect();
    for generation in 2..=5 {
        assert!(queued_gens.contains(&generation), "queued: {queued_gens:?}");
    }
    // status.json shows them waiting.
    wait_status(
        &r,
        "the queue in status.json",
        Duration::from_secs(5),
        |s| connect_output(s)["outbox"]["depth"].as_u64() >= Some(queued.len() as u64),
    );

    // The broker returns with roost's user locked out until the test's client listens, so that
    // nothing is delivered before it subscribed (clean session: it sees only live messages).
    broker.set_users(&[WATCHER]);
    broker.start_again();
    let sub = Subscriber::start(broker.port, &["roost/+/status"]);
    broker.set_users(&[ROOST_USER, WATCHER]);
    broker.reload();
    let last_id = queued.last().unwrap()["messageId"].clone();
    let got = sub.wait_until(
        "every queued status",
        Duration::from_secs(40),
        || logs(&r),
        |m| m.iter().any(|m| m.json()["messageId"] == last_id),
    );
    wait_queued(&r, "the outbox emptied by PUBACKs", |q| q.is_empty());
    let s = wait_status(
        &r,
        "status.json showing the outbox empty",
        Duration::from_secs(5),
        |s| connect_output(s)["outbox"]["depth"] == 0,
    );
    assert!(connect_output(&s)["mqtt"]["delivered"].as_u64() >= Some(queued.len() as u64));

    assert!(
        got.iter()
            .all(|m| m.topic == "roost/meadow-05/status" && !m.retain)
    );
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    let delivered = first_appearances(&bodies);
    let delivered_ids: Vec<&Value> = delivered.iter().map(|m| &m["messageId"]).collect();
    let queued_ids: Vec<&Value> = queued.iter().map(|m| &m["messageId"]).collect();
    assert_eq!(
        &delivered_ids[..queued_ids.len()],
        &queued_ids[..],
        "delivered in outbox order"
    );
    let gens: Vec<u64> = delivered
        .iter()
        .map(|m| m["generation"].as_u64().unwrap())
        .collect();
    assert!(
        gens.windows(2).all(|w| w[0] <= w[1]),
        "generations {gens:?}"
    );
    // Every generation written during the outage, and the status each one settled in.
    for generation in 2..=5 {
        assert!(
            delivered
                .iter()
                .any(|m| m["generation"] == generation && m["phase"] == "Succeeded"),
            "generation {generation} Succeeded missing: {gens:?}"
        );
    }
    assert_eq!(delivered.last().unwrap()["phase"], "Succeeded");
    assert_eq!(r.stop(), Some(0));
}

#[test]
fn refused_credentials_are_a_warning_never_an_error_of_the_deployment() {
    if !broker_or_skip("refused_credentials_are_a_warning_never_an_error_of_the_deployment") {
        return;
    }
    let broker = Broker::start();
    let mut r = roost_with("creds", |r| {
        format!(
            "    deviceId: meadow-06\n{}",
            plain_mqtt(r, &broker, "not-the-password", "")
        )
    });
    r.start();
    let s = wait_status(&r, "DEP_E502", WAIT, |s| {
        has_connect(s) && connect_output(s)["mqtt"]["lastError"]["code"] == "DEP_E502"
    });
    assert_link_fault_is_a_warning(&s, "DEP_E502");
    assert_eq!(r.stop(), Some(0));
}

#[test]
fn an_untrusted_broker_certificate_is_a_warning() {
    if !broker_or_skip("an_untrusted_broker_certificate_is_a_warning") {
        return;
    }
    let broker = Broker::start();
    let mut r = roost_with("untrusted", |r| {
        let other = TestCa::create(r.dir.path(), "other-ca");
        let pass = secret(r, "mqtt-password", ROOST_USER.1);
        format!(
            "    deviceId: meadow-07\n    mqtt: {{url: \"mqtts://127.0.0.1:{}\", username: {}, passwordFile: {}, caFile: {}, keepAlive: 5s}}\n",
            broker.tls_port,
            ROOST_USER.0,
            pass.display(),
            other.cert.display()
        )
    });
    r.start();
    let s = wait_status(&r, "DEP_E503", WAIT, |s| {
        has_connect(s) && connect_output(s)["mqtt"]["lastError"]["code"] == "DEP_E503"
    });
    assert_link_fault_is_a_warning(&s, "DEP_E503");
    assert_eq!(r.stop(), Some(0));
}

fn assert_link_fault_is_a_warning(s: &Value, code: &str) {
    let output = connect_output(s);
    assert_eq!(output["mqtt"]["connected"], false);
    assert!(
        output["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["code"] == code)),
        "{output:#}"
    );
    assert_eq!(component(s, "sleeper")["status"], "Running");
    assert_eq!(component(s, "connect")["status"], "Running");
    assert_eq!(s["status"], "Running", "{s:#}");
    assert_eq!(s["phase"], "Succeeded");
    assert_eq!(s["errors"], serde_json::json!([]), "{s:#}");
}

/// One request the test's HTTP server received, and what it answered.
#[derive(Clone, Debug)]
struct Posted {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    answered: u16,
}

impl Posted {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A small HTTP/1.1 server on a localhost port that records each request and answers 500 while
/// `failing` is set, 204 otherwise. Stops accepting when dropped.
struct Endpoint {
    port: u16,
    posted: Arc<Mutex<Vec<Posted>>>,
    failing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Endpoint {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let posted = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, f, s) = (posted.clone(), failing.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (p, f) = (p.clone(), f.clone());
                        stream.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || serve(stream, &p, &f));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            port,
            posted,
            failing,
            stop,
        }
    }

    fn posted(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }

    fn wait(&self, what: &str, r: &Roost, cond: impl Fn(&[Posted]) -> bool) -> Vec<Posted> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.posted();
            if cond(&got) {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; posted: {got:#?}\n{}",
                    logs(r)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Serves the requests of one (keep-alive) connection.
fn serve(stream: std::net::TcpStream, posted: &Mutex<Vec<Posted>>, failing: &AtomicBool) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_string(), v.trim().to_string()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answered = if failing.load(Ordering::SeqCst) {
            500
        } else {
            204
        };
        posted.lock().unwrap().push(Posted {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            answered,
        });
        let reason = if answered == 500 {
            "Internal Server Error"
        } else {
            "No Content"
        };
        let response = format!("HTTP/1.1 {answered} {reason}\r\nContent-Length: 0\r\n\r\n");
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn http_messages_are_retried_and_delivered_in_order_with_the_headers() {
    let endpoint = Endpoint::start();
    let mut spec = String::new();
    let tag = unique("http");
    let mut r = roost_with("http", |r| {
        let headers = secret(
            r,
            "http-headers",
            "# the token lives here, not in deployment.yaml\nAuthorization: Bearer t0ken-123\nX-Roost-Site: meadow\n",
        );
        spec = format!(
            "  connect:\n    deviceId: meadow-08\n    http: {{url: \"http://127.0.0.1:{}/ingest\", headersFile: {}, timeout: 2s}}\n",
            endpoint.port,
            headers.display()
        );
        spec.trim_start_matches("  connect:\n").to_string()
    });
    r.start();
    // While the endpoint fails, the status says so; the change below waits in the outbox.
    wait_status(&r, "DEP_E504", WAIT, |s| {
        has_connect(s) && connect_output(s)["http"]["lastError"]["code"] == "DEP_E504"
    });
    r.replace_atomically(&deployment(
        "http",
        &spec,
        &(sleeper("sleeper", &format!("{tag}-1")) + &sleeper("second", &format!("{tag}-2"))),
    ));
    let s = wait_status(&r, "generation 2", WAIT, |s| succeeded(s, 2));
    let http = &connect_output(&s)["http"];
    assert_eq!(http["connected"], false);
    assert_eq!(http["lastError"]["code"], "DEP_E504", "{s:#}");
    assert_eq!(
        s["status"], "Running",
        "a failing endpoint is no error of the deployment"
    );
    endpoint.wait("a retry", &r, |p| p.len() >= 2);

    endpoint.failing.store(false, Ordering::SeqCst);
    let posted = endpoint.wait("generation 2 Succeeded delivered", &r, |p| {
        p.iter().any(|p| {
            let v: Value = serde_json::from_str(&p.body).unwrap_or_default();
            p.answered == 204 && v["generation"] == 2 && v["phase"] == "Succeeded"
        })
    });
    wait_status(&r, "the endpoint healthy again", WAIT, |s| {
        connect_output(s)["http"]["connected"] == true
            && connect_output(s)["http"]["lastError"] == Value::Null
    });

    for p in &posted {
        assert_eq!((p.method.as_str(), p.path.as_str()), ("POST", "/ingest"));
        assert_eq!(p.header("authorization"), Some("Bearer t0ken-123"));
        assert_eq!(p.header("x-roost-site"), Some("meadow"));
        assert_eq!(p.header("content-type"), Some("application/json"));
    }
    let bodies = |answered: u16| -> Vec<Value> {
        posted
            .iter()
            .filter(|p| p.answered == answered)
            .map(|p| serde_json::from_str(&p.body).unwrap())
            .collect()
    };
    let (failed, delivered) = (bodies(500), bodies(204));
    assert!(failed.len() >= 2, "{failed:#?}");
    // The message that failed is the one retried, and delivered first.
    assert!(
        failed.iter().all(|f| f == &failed[0]),
        "one message retried: {failed:#?}"
    );
    assert_eq!(delivered[0], failed[0]);
    let delivered = first_appearances(&delivered);
    let gens: Vec<u64> = delivered
        .iter()
        .filter_map(|m| m["generation"].as_u64())
        .collect();
    assert!(
        gens.windows(2).all(|w| w[0] <= w[1]),
        "generations {gens:?}"
    );
    assert!(gens.contains(&1) && gens.contains(&2), "{gens:?}");
    assert!(
        delivered
            .iter()
            .any(|m| m["metrics"].is_object() && m["deviceId"] == "meadow-08"),
        "the heartbeat goes to HTTP too: {delivered:#?}"
    );
    assert_eq!(r.stop(), Some(0));
}

/// A Python that has the `prometheus_client` package (Debian's python3-prometheus-client goes
/// with /usr/bin/python3).
fn python_with_prometheus_client() -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import prometheus_client.parser"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

const PARSE_PROM: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

#[test]
fn the_prometheus_text_file_parses_and_says_the_phase() {
    let Some(python) = python_with_prometheus_client() else {
        eprintln!(
            "skipping the_prometheus_text_file_parses_and_says_the_phase: python3-prometheus-client is not installed (bash .ci/setup installs it)"
        );
        return;
    };
    let mut textfile = PathBuf::new();
    let mut r = roost_with("prom", |r| {
        std::fs::create_dir_all(r.path("node")).unwrap();
        textfile = r.path("node").join("roost.prom");
        format!(
            "    deviceId: meadow-09\n    prometheus: {{textfile: {}}}\n",
            textfile.display()
        )
    });
    r.start();
    wait_status(&r, "Succeeded", WAIT, |s| succeeded(s, 1));
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&textfile)
        .unwrap_or_default()
        .contains("phase=\"Succeeded\"} 1")
    {
        assert!(
            Instant::now() < deadline,
            "no Succeeded in {}:\n{}",
            textfile.display(),
            logs(&r)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(python)
        .args(["-c", PARSE_PROM])
        .arg(&textfile)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the parser refused the file: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&textfile).unwrap()
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let sample = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .map(|s| s["value"].as_f64().unwrap())
    };
    let device = ("device", "meadow-09");
    assert_eq!(
        sample("roost_phase", &[device, ("phase", "Succeeded")]),
        Some(1.0)
    );
    for other in ["InProgress", "Provisioning", "FailedToStart", "Stopped"] {
        assert_eq!(
            sample("roost_phase", &[device, ("phase", other)]),
            Some(0.0),
            "{other}"
        );
    }
    assert_eq!(
        sample("roost_status", &[device, ("status", "Running")]),
        Some(1.0)
    );
    assert_eq!(
        sample("roost_component_up", &[device, ("component", "sleeper")]),
        Some(1.0)
    );
    let outbox = samples
        .iter()
        .find(|s| s["name"] == "roost_outbox_messages")
        .unwrap_or_else(|| panic!("no roost_outbox_messages in {samples:#?}"));
    assert_eq!(outbox["type"], "gauge");
    assert!(outbox["value"].as_f64().unwrap() >= 0.0);
    assert_eq!(r.stop(), Some(0));
}
