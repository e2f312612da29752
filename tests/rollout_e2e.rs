//! Desired state over the broker, end to end: a real Mosquitto with a password and an ACL per
//! device (Mosquitto `pattern` lines), real `roost run` processes as devices (their own state
//! folders, light components), `roost fleet rollout` as the controller, Debian's `minisign`
//! making the keys and checking signatures on the other side.

mod common;
#[path = "support/faketime.rs"]
mod faketime;
use faketime::faketime_lib;
#[path = "support/mosquitto.rs"]
mod mosquitto;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{deployment, sleeper};
use mosquitto::{Broker, have_or_skip};
use serde_json::Value;

const ROOST: &str = env!("CARGO_BIN_EXE_roost");
const ADMIN: (&str, &str) = ("fleet-admin", "s3cret-admin");

/// Each device reads only its own desired topic and writes only its own topics; the fleet's
/// owners read and write everything under the prefix.
const ACL: &str = "user fleet-admin\ntopic readwrite roost/#\n\n\
pattern read roost/%u/desired\n\
pattern write roost/%u/desired/report\n\
pattern write roost/%u/status\n\
pattern write roost/%u/availability\n\
pattern write roost/%u/heartbeat\n";

struct Fleet {
    root: tempfile::TempDir,
    broker: Broker,
    keys: PathBuf,
    secret_key: PathBuf,
    admin_password: PathBuf,
}

impl Fleet {
    fn start(devices: &[&str], test: &str) -> Option<Self> {
        if !have_or_skip(&["mosquitto_passwd", "minisign", "mosquitto_pub"], test) {
            return None;
        }
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "skipping {test}: needs root (each device gets a mount namespace of its own)"
            );
            return None;
        }
        let mut users: Vec<(String, String)> = devices
            .iter()
            .map(|d| (d.to_string(), format!("pw-{d}")))
            .collect();
        users.push((ADMIN.0.into(), ADMIN.1.into()));
        let users_ref: Vec<(&str, &str)> = users
            .iter()
            .map(|(u, p)| (u.as_str(), p.as_str()))
            .collect();
        let broker = Broker::start_with(&users_ref, Some(ACL));
        let root = tempfile::tempdir().unwrap();
        let keys = root.path().join("trusted-keys");
        std::fs::create_dir(&keys).unwrap();
        let secret_key = root.path().join("fleet.key");
        let public = keys.join("fleet.pub");
        run_ok(
            Command::new("minisign")
                .args(["-G", "-W", "-p"])
                .arg(&public)
                .arg("-s")
                .arg(&secret_key),
        );
        let admin_password = root.path().join("admin-password");
        std::fs::write(&admin_password, ADMIN.1).unwrap();
        Some(Self {
            root,
            broker,
            keys,
            secret_key,
            admin_password,
        })
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.broker.port)
    }

    /// Where every device finds its own files: each device runs in a mount namespace of its
    /// own with its `<id>/etc` folder bound here (as each Pi has its own /etc), so one
    /// deployment file serves the whole fleet: the device's id comes from ROOST_DEVICE_ID, its
    /// broker user is its id, its password and storage are under this path.
    fn device_etc(&self) -> PathBuf {
        self.root.path().join("device-etc")
    }

    fn device(&self, id: &str, labels: &str) -> Device {
        let dir = self.root.path().join(id);
        let etc = dir.join("etc");
        std::fs::create_dir_all(etc.join("storage")).unwrap();
        std::fs::create_dir_all(self.device_etc()).unwrap();
        std::fs::write(etc.join("mqtt-password"), format!("pw-{id}")).unwrap();
        let connect = format!(
            "  connect:\n    mqtt: {{url: \"{}\", passwordFile: {}/mqtt-password, keepAlive: 5s, homeAssistant: false}}\n    desired: {{trustedKeys: {}, gate: 5s}}\n    labels: {{{labels}}}\n",
            self.url(),
            self.device_etc().display(),
            self.keys.display()
        );
        Device {
            id: id.into(),
            file: dir.join("deployment.yaml"),
            dir: false,
            state: dir.join("state"),
            connect,
            env: vec![("ROOST_DEVICE_ID".into(), PathBuf::from(id))],
            etc: Some((etc, self.device_etc())),
            child: None,
            _feed: None,
        }
    }

    /// The storage every recorder of the fleet names (its own, in its namespace).
    fn storage(&self) -> PathBuf {
        self.device_etc().join("storage")
    }

    /// `roost fleet rollout` with the fleet's broker, credentials and key, and `args`.
    fn rollout(&self, args: &[&str]) -> Output {
        let out = Command::new(ROOST)
            .args([
                "fleet",
                "rollout",
                "--broker",
                &self.url(),
                "--username",
                ADMIN.0,
                "--password-file",
            ])
            .arg(&self.admin_password)
            .arg("--key")
            .arg(&self.secret_key)
            .args(args)
            .output()
            .unwrap();
        eprintln!(
            "rollout {args:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `roost fleet rollout` started in the background (its stdout piped, for `--json`).
    fn spawn_rollout(&self, args: &[&str]) -> Child {
        Command::new(ROOST)
            .args([
                "fleet",
                "rollout",
                "--broker",
                &self.url(),
                "--username",
                ADMIN.0,
                "--password-file",
            ])
            .arg(&self.admin_password)
            .arg("--key")
            .arg(&self.secret_key)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Publishes `payload` retained on `topic` as `user` (mosquitto_pub).
    fn publish_as(&self, user: (&str, &str), topic: &str, payload: &Path) {
        run_ok(
            Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.broker.port.to_string(),
                    "-u",
                    user.0,
                    "-P",
                    user.1,
                    "-q",
                    "1",
                    "-r",
                    "-t",
                    topic,
                    "-f",
                ])
                .arg(payload),
        );
    }

    /// The retained message on `topic`, read as the fleet's owner.
    fn retained(&self, topic: &str) -> Vec<u8> {
        let out = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.broker.port.to_string(),
                "-u",
                ADMIN.0,
                "-P",
                ADMIN.1,
                "-C",
                "1",
                "-W",
                "5",
                "-t",
                topic,
            ])
            .output()
            .unwrap();
        let mut bytes = out.stdout;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        bytes
    }
}

struct Device {
    id: String,
    /// The deployment file (`--file`), or the folder (`--dir`) when `dir` is set.
    file: PathBuf,
    dir: bool,
    state: PathBuf,
    connect: String,
    env: Vec<(String, PathBuf)>,
    /// The device's own folder and where it is bound in its mount namespace.
    etc: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
    _feed: Option<common::Feed>,
}

impl Device {
    fn yaml(&self, components: &str) -> String {
        deployment(&self.id, &self.connect, components)
    }

    /// A deployment that records from ALSA `pcm` into `storage` (16 kHz mono, 1 s files) with
    /// `extra` recorder lines (indented by 4), the device's connect section and `components`.
    fn recorder_yaml(&self, storage: &Path, pcm: &str, extra: &str, components: &str) -> String {
        format!(
            "apiVersion: roost/v1\nkind: Deployment\nmetadata:\n  name: {}\nspec:\n  location: {{latitude: 51.76, longitude: -1.26}}\n  backoff: {{initial: 0s, max: 1s, resetAfter: 10m}}\n  storage: {{path: {}, minFreeSpace: 0, onLowSpace: stop}}\n  recorder:\n    device: {pcm}\n    sampleRate: 16000\n    channels: 1\n    sampleFormat: i16\n    duration: 1s\n    timezone: UTC\n{extra}{}  components:\n{components}",
            self.id,
            storage.display(),
            self.connect
        )
    }

    /// Starts the device's microphone: `roost feed` writing a FIFO through ALSA's file plugin.
    fn with_microphone(&mut self) {
        let base = self.file.parent().unwrap().to_path_buf();
        let conf = base.join("asound.conf");
        self._feed = Some(common::start_feed(&base.join("mic.fifo"), &conf, &[]));
        self.env.push(("ALSA_CONFIG_PATH".into(), conf));
    }

    /// Makes the device a `roost run --dir` device whose folder holds `files`.
    fn start_dir(&mut self, files: &[(&str, String)]) {
        let folder = self.file.parent().unwrap().join("deployments");
        std::fs::create_dir_all(&folder).unwrap();
        for (name, text) in files {
            std::fs::write(folder.join(name), text).unwrap();
        }
        self.file = folder;
        self.dir = true;
        self.run();
    }

    fn start_text(&mut self, text: &str) {
        std::fs::write(&self.file, text).unwrap();
        self.run();
    }

    fn start(&mut self, components: &str) {
        std::fs::write(&self.file, self.yaml(components)).unwrap();
        self.run();
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.state.with_extension("log")).unwrap();
        let (own, shared) = self.etc.clone().expect("a device has its folder");
        let script = format!(
            "mount --bind {} {} && exec \"$@\"",
            own.display(),
            shared.display()
        );
        let child = Command::new("setpriv")
            .args([
                "--pdeathsig",
                "KILL",
                "unshare",
                "--mount",
                "--propagation",
                "private",
            ])
            .args([
                "sh",
                "-c",
                &script,
                "sh",
                ROOST,
                "run",
                "--runtime",
                "process",
            ])
            .arg(if self.dir { "--dir" } else { "--file" })
            .arg(&self.file)
            .arg("--state-dir")
            .arg(&self.state)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_os_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.with_extension("log")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        std::fs::read(self.state.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits (at most `secs`) until status.json's `remote` satisfies `cond`; returns it.
    fn wait_remote(&self, secs: u64, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let remote = self.status()["remote"].clone();
            if cond(&remote) {
                return remote;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never {what}; remote: {remote:#}\nlog:\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.status()["status"] != "Running" || self.status()["remote"].is_null() {
            assert!(
                Instant::now() < deadline,
                "{} never Running with a remote report: {:#}\n{}",
                self.id,
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Device {
    /// SIGTERM, so roost stops what it started (a SIGKILLed roost leaves its components to
    /// the next one); SIGKILL after 10 s.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn components(tag: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| sleeper(n, &format!("{tag}-{n}-{}", std::process::id())))
        .collect()
}

fn broken(tag: &str) -> String {
    components(tag, &["a"])
        + "    - name: missing\n      command: [\"/nonexistent/roost-test-program\"]\n      restartPolicy: Always\n"
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The fleet view's row of `id`.
fn fleet_row(fleet: &Fleet, id: &str) -> Value {
    let out = Command::new(ROOST)
        .args([
            "fleet",
            "--broker",
            &fleet.url(),
            "--username",
            ADMIN.0,
            "--password-file",
        ])
        .arg(&fleet.admin_password)
        .arg("--json")
        .output()
        .unwrap();
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["deviceId"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn twenty_devices_take_a_rollout_in_batches_and_a_bad_microphone_reverts_by_itself_and_halts() {
    // 18 devices with light components, 2 recording through ALSA's file plugin.
    let light: Vec<String> = (1..=18).map(|i| format!("d{i:02}")).collect();
    let mut ids: Vec<&str> = light.iter().map(String::as_str).collect();
    ids.extend(["rec1", "rec2"]);
    let Some(fleet) = Fleet::start(&ids, "rollout batches") else {
        return;
    };
    let mut devices: Vec<Device> = light
        .iter()
        .map(|id| fleet.device(id, "kind: light"))
        .collect();
    for d in &mut devices {
        d.start(&components("v0", &["a"]));
    }
    let mut recorders: Vec<Device> = ["rec1", "rec2"]
        .iter()
        .map(|id| fleet.device(id, "kind: recorder"))
        .collect();
    for r in &mut recorders {
        r.with_microphone();
        let storage = fleet.storage();
        let text = r.recorder_yaml(&storage, "default", "", "    []\n");
        r.start_text(&text.replace("components:\n    []\n", "components: []\n"));
    }
    for d in devices.iter().chain(&recorders) {
        d.wait_running();
    }
    // A file naming one device is never sent to several: each would take that id.
    let one = fleet.root.path().join("one.yaml");
    let named = devices[0]
        .yaml(&components("v1", &["a"]))
        .replace("  connect:\n", "  connect:\n    deviceId: d01\n");
    std::fs::write(&one, named).unwrap();
    let out = fleet.rollout(&[
        "--file",
        one.to_str().unwrap(),
        "--select",
        "kind=light",
        "--gate",
        "5s",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.connect.deviceId"));
    // Version 1 to the 18 light devices in three batches (1, 10%, 100%) through a 5 s gate.
    let v1 = fleet.root.path().join("v1.yaml");
    std::fs::write(&v1, devices[0].yaml(&components("v1", &["a", "b"]))).unwrap();
    let out = fleet.rollout(&[
        "--file",
        v1.to_str().unwrap(),
        "--select",
        "kind=light",
        "--gate",
        "5s",
        "--timeout",
        "30s",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:#}\n{}",
        devices[0].status(),
        devices[0].log()
    );
    let record = json(&out);
    assert_eq!(
        (record["state"].as_str(), record["version"].as_u64()),
        (Some("done"), Some(1))
    );
    let sizes: Vec<usize> = record["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_array().unwrap().len())
        .collect();
    assert_eq!(
        sizes,
        vec![1, 1, 16],
        "cumulative: 1 device, then 10% (2) in all, then all"
    );
    assert!(
        record.get("files").is_none(),
        "the files stay off the terminal"
    );
    for d in &devices {
        let r = d.wait_remote(10, "passed v1", |r| r["state"] == "passed");
        assert_eq!(
            (r["appliedVersion"].as_u64(), r["appliedBy"].as_str()),
            (Some(1), Some("remote"))
        );
        // Applied like a local edit: the file is the new version, under its own name.
        assert!(
            std::fs::read_to_string(&d.file).unwrap().contains("v1-b"),
            "{}",
            d.id
        );
        assert_eq!(record["devices"][&d.id]["state"], "passed");
    }
    for r in &recorders {
        assert!(record["devices"].get(&r.id).is_none(), "not kind=light");
        assert!(r.status()["remote"].get("appliedVersion").is_none());
    }
    // What roost signed verifies with Debian's minisign.
    let message: Value = serde_json::from_slice(&fleet.retained("roost/d03/desired")).unwrap();
    let doc = fleet.root.path().join("doc.json");
    std::fs::write(&doc, message["document"].as_str().unwrap()).unwrap();
    std::fs::write(
        doc.with_extension("json.minisig"),
        message["signature"].as_str().unwrap(),
    )
    .unwrap();
    run_ok(
        Command::new("minisign")
            .arg("-Vm")
            .arg(&doc)
            .arg("-p")
            .arg(fleet.keys.join("fleet.pub")),
    );

    // A version whose microphone does not exist: the first recorder reverts by itself within
    // its gate, the rollout halts after that batch, the second recorder never gets it.
    let first = &recorders[0];
    let storage = fleet.storage();
    let bad = first.recorder_yaml(
        &storage,
        "no-such-microphone",
        "",
        &components("v2", &["a"]),
    );
    let v2 = fleet.root.path().join("v2.yaml");
    std::fs::write(&v2, bad).unwrap();
    let out = fleet.rollout(&[
        "--file",
        v2.to_str().unwrap(),
        "--select",
        "kind=recorder",
        "--batches",
        "1,100%",
        "--gate",
        "10s",
        "--timeout",
        "30s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "halted");
    let record = json(&out);
    assert_eq!(
        (record["state"].as_str(), record["version"].as_u64()),
        (Some("halted"), Some(2))
    );
    let reason = record["devices"]["rec1"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("reverted") && reason.contains("DEP_E311"),
        "{reason}"
    );
    assert_eq!(record["devices"]["rec2"]["state"], "queued");
    let r = first.wait_remote(10, "reverted", |r| r["state"] == "reverted");
    assert_eq!(r["reverted"]["version"], 2);
    assert_eq!(
        r["appliedBy"], "local",
        "the files before v2 were the local ones"
    );
    assert!(
        std::fs::read_to_string(&first.file)
            .unwrap()
            .contains("device: default"),
        "the files before v2 are back"
    );
    // Recording again on the files it had.
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.status()["status"] != "Running" {
        assert!(Instant::now() < deadline, "{:#}", first.status());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        recorders[1].status()["remote"]
            .get("desiredVersion")
            .is_none()
    );
    // The fleet view shows the revert and the codes.
    let row = fleet_row(&fleet, "rec1");
    assert_eq!(
        (row["remoteState"].as_str(), row["desiredVersion"].as_u64()),
        (Some("reverted"), Some(2))
    );
    assert_eq!(row["reverted"]["codes"][0], "DEP_E311", "{row:#}");
    assert_eq!(fleet_row(&fleet, "d07")["appliedVersion"], 1);
    // A version reverted is never applied again: the broker delivers the retained v2 again
    // after a restart, and it stays reverted.
    let mut first = recorders.remove(0);
    first.kill();
    first.run();
    first.wait_running();
    std::thread::sleep(Duration::from_secs(2));
    let r = first.wait_remote(10, "still reverted", |r| r["state"] == "reverted");
    assert!(
        std::fs::read_to_string(&first.file)
            .unwrap()
            .contains("device: default"),
        "{r:#}"
    );
}

#[test]
fn every_refusal_is_said_with_its_code_and_nothing_is_applied() {
    let ids = ["r01", "r02"];
    let Some(fleet) = Fleet::start(&ids, "rollout refusals") else {
        return;
    };
    let mut d = fleet.device("r01", "site: east");
    d.start(&components("r0", &["a"]));
    d.wait_running();
    let original = std::fs::read_to_string(&d.file).unwrap();
    let dir = fleet.root.path();
    let topic = "roost/r01/desired";
    assert!(original.contains("r0-a"));
    // A document signed with Debian's minisign (not roost) is taken: interoperable both ways.
    let good_doc = serde_json::json!({"device": "r01", "version": 5, "files": {"deployment.yaml": d.yaml(&components("r5", &["a"]))}});
    let message = |doc: &Value, key: &Path, name: &str| -> PathBuf {
        let text = doc.to_string();
        let f = dir.join(format!("{name}.json"));
        std::fs::write(&f, &text).unwrap();
        run_ok(
            Command::new("minisign")
                .args(["-S", "-s"])
                .arg(key)
                .arg("-m")
                .arg(&f),
        );
        let sig = std::fs::read_to_string(f.with_extension("json.minisig")).unwrap();
        let env =
            serde_json::json!({"kind": "roost.desired/v1", "document": text, "signature": sig});
        let p = dir.join(format!("{name}.msg"));
        std::fs::write(&p, env.to_string()).unwrap();
        p
    };
    let good = message(&good_doc, &fleet.secret_key, "good");
    fleet.publish_as(ADMIN, topic, &good);
    let r = d.wait_remote(15, "passed v5", |r| r["state"] == "passed");
    assert_eq!(r["appliedVersion"], 5);
    let applied = std::fs::read_to_string(&d.file).unwrap();
    assert!(applied.contains("r5-a"));
    let original = applied;
    let check = |d: &Device, payload: &Path, code: &str| -> Value {
        // A new refusal: the one before may have had the same code.
        let before = d.status()["remote"]["refused"]["reason"].clone();
        fleet.publish_as(ADMIN, topic, payload);
        let r = d.wait_remote(10, code, |r| {
            r["state"] == "refused"
                && r["refused"]["code"] == code
                && r["refused"]["reason"] != before
        });
        assert_eq!(
            std::fs::read_to_string(&d.file).unwrap(),
            original,
            "{code}: nothing applied"
        );
        assert_eq!(r["appliedVersion"], 5, "{code}");
        r
    };
    // Altered after signing.
    let mut env: Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    let doc6 = serde_json::json!({"device": "r01", "version": 6, "files": {"deployment.yaml": d.yaml(&components("r6", &["a"]))}});
    let signed6: Value =
        serde_json::from_slice(&std::fs::read(message(&doc6, &fleet.secret_key, "six")).unwrap())
            .unwrap();
    env["document"] = Value::String(
        signed6["document"]
            .as_str()
            .unwrap()
            .replace("r6-a", "r6-x"),
    );
    env["signature"] = signed6["signature"].clone();
    let altered = dir.join("altered.msg");
    std::fs::write(&altered, env.to_string()).unwrap();
    check(&d, &altered, "DEP_E801");
    // Not signed at all.
    let unsigned = dir.join("unsigned.msg");
    std::fs::write(
        &unsigned,
        serde_json::json!({"kind": "roost.desired/v1", "document": doc6.to_string()}).to_string(),
    )
    .unwrap();
    check(&d, &unsigned, "DEP_E801");
    // Signed by a key the device does not trust.
    let other_key = dir.join("other.key");
    run_ok(
        Command::new("minisign")
            .args(["-G", "-W", "-p"])
            .arg(dir.join("other.pub"))
            .arg("-s")
            .arg(&other_key),
    );
    let r = check(&d, &message(&doc6, &other_key, "untrusted"), "DEP_E802");
    assert!(
        r["refused"]["reason"]
            .as_str()
            .unwrap()
            .contains("not among the trusted keys")
    );
    // Another device's message published on this device's topic.
    let theirs = serde_json::json!({"device": "r02", "version": 6, "files": {"deployment.yaml": d.yaml(&components("r6", &["a"]))}});
    check(
        &d,
        &message(&theirs, &fleet.secret_key, "theirs"),
        "DEP_E803",
    );
    // A replay of an older version, as the broker's retained store could hold it.
    let old = serde_json::json!({"device": "r01", "version": 3, "files": {"deployment.yaml": d.yaml(&components("r3", &["a"]))}});
    let r = check(&d, &message(&old, &fleet.secret_key, "old"), "DEP_E804");
    assert_eq!(r["refused"]["version"], 3);
    // Over 1 MiB.
    let big = dir.join("big.msg");
    std::fs::write(&big, vec![b' '; (1 << 20) + 10]).unwrap();
    check(&d, &big, "DEP_E805");
    // A deployment that does not validate: the file's line and column come back.
    let bad_yaml = format!("{}  bogusField: 1\n", d.yaml(&components("r6", &["a"])));
    let invalid =
        serde_json::json!({"device": "r01", "version": 6, "files": {"deployment.yaml": bad_yaml}});
    let r = check(
        &d,
        &message(&invalid, &fleet.secret_key, "invalid"),
        "DEP_E806",
    );
    let spec_error = &r["refused"]["specError"];
    assert_eq!(spec_error["file"], "deployment.yaml", "{r:#}");
    assert!(spec_error["line"].as_u64().is_some(), "{r:#}");
    // A file name that leads out of the folder, even signed.
    let escape = serde_json::json!({"device": "r01", "version": 6, "files": {"../../escaped.yaml": d.yaml(&components("r6", &["a"]))}});
    let r = check(
        &d,
        &message(&escape, &fleet.secret_key, "escape"),
        "DEP_E806",
    );
    assert!(
        r["refused"]["reason"]
            .as_str()
            .unwrap()
            .contains("not a deployment file name"),
        "{r:#}"
    );
    assert!(!fleet.root.path().join("escaped.yaml").exists());
    // A file that would make this device another one (a fleet-wide file naming one device).
    let impostor = d
        .yaml(&components("r6", &["a"]))
        .replace("  connect:\n", "  connect:\n    deviceId: r02\n");
    let impostor =
        serde_json::json!({"device": "r01", "version": 6, "files": {"deployment.yaml": impostor}});
    let r = check(
        &d,
        &message(&impostor, &fleet.secret_key, "impostor"),
        "DEP_E806",
    );
    assert!(
        r["refused"]["reason"]
            .as_str()
            .unwrap()
            .contains("deviceId"),
        "{r:#}"
    );
    // Not JSON.
    let junk = dir.join("junk.msg");
    std::fs::write(&junk, "hello").unwrap();
    check(&d, &junk, "DEP_E808");
    // Published with another device's credentials: the broker's ACL drops it, so the device
    // never sees it (its last refusal stays the one above).
    let newer = serde_json::json!({"device": "r01", "version": 9, "files": {"deployment.yaml": d.yaml(&components("r9", &["a"]))}});
    let newer = message(&newer, &fleet.secret_key, "newer");
    run_ok(
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &fleet.broker.port.to_string(),
                "-u",
                "r02",
                "-P",
                "pw-r02",
                "-q",
                "1",
                "-r",
                "-t",
                topic,
                "-f",
            ])
            .arg(&newer),
    );
    std::thread::sleep(Duration::from_secs(2));
    let r = d.status()["remote"].clone();
    assert_eq!(
        (r["refused"]["code"].as_str(), r["appliedVersion"].as_u64()),
        (Some("DEP_E808"), Some(5))
    );
    // The highest version survives a restart: the replay is still refused afterwards.
    d.kill();
    d.run();
    d.wait_running();
    check(
        &d,
        &message(&old, &fleet.secret_key, "old-again"),
        "DEP_E804",
    );
    // A local edit since is said as such.
    std::fs::write(&d.file, d.yaml(&components("local", &["a"]))).unwrap();
    let r = d.wait_remote(10, "local", |r| r["appliedBy"] == "local");
    assert!(r.get("appliedVersion").is_none(), "{r:#}");
    // A bad local edit (a typo on site) keeps the link: the fix can come from the broker.
    let typo = d
        .yaml(&components("typo", &["a"]))
        .replace("  components:", "  bogusField: 1\n  components:");
    std::fs::write(&d.file, typo).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.status()["specError"].is_null() {
        assert!(Instant::now() < deadline, "{:#}", d.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    let fix = serde_json::json!({"device": "r01", "version": 10, "files": {"deployment.yaml": d.yaml(&components("r10", &["a"]))}});
    fleet.publish_as(ADMIN, topic, &message(&fix, &fleet.secret_key, "fix"));
    let r = d.wait_remote(20, "v10 passed", |r| {
        r["state"] == "passed" && r["appliedVersion"] == 10
    });
    assert_eq!(r["appliedBy"], "remote");
    assert!(d.status()["specError"].is_null());
}

#[test]
fn the_controller_resumes_and_the_gate_decides_across_a_device_restart() {
    let ids = ["s01", "s02", "s03"];
    let Some(fleet) = Fleet::start(&ids, "rollout resume") else {
        return;
    };
    let mut devices: Vec<Device> = ids
        .iter()
        .map(|id| fleet.device(id, "site: west"))
        .collect();
    for d in &mut devices {
        d.start(&components("s0", &["a"]));
    }
    for d in &devices {
        d.wait_running();
    }
    // A bad version with a 20 s gate; the controller is killed once the first device took it.
    let v = fleet.root.path().join("bad.yaml");
    std::fs::write(&v, devices[0].yaml(&broken("s1"))).unwrap();
    let mut controller = fleet.spawn_rollout(&[
        "--file",
        v.to_str().unwrap(),
        "--devices",
        "s01,s02,s03",
        "--batches",
        "1,100%",
        "--gate",
        "20s",
        "--max-failed",
        "1",
        "--json",
    ]);
    devices[0].wait_remote(15, "gating", |r| r["state"] == "gating");
    controller.kill().unwrap();
    controller.wait().unwrap();
    // The device restarts in the middle of its gate: the gate still decides (reverts).
    devices[0].kill();
    devices[0].run();
    let r = devices[0].wait_remote(40, "reverted after its restart", |r| {
        r["state"] == "reverted"
    });
    assert_eq!(r["reverted"]["version"], 1);
    // The rollout's record is on the broker, signed by the rollout's key.
    let record: Value = serde_json::from_slice(&fleet.retained("roost/_rollouts/+")).unwrap();
    assert_eq!(record["kind"], "roost.rollout/v1");
    let progress: Value = serde_json::from_str(record["document"].as_str().unwrap()).unwrap();
    let id = progress["id"].as_str().unwrap().to_string();
    // A record someone else altered on the broker is not carried on.
    let mut forged = record.clone();
    forged["document"] = Value::String(
        record["document"]
            .as_str()
            .unwrap()
            .replace("\"maxFailed\":1", "\"maxFailed\":9"),
    );
    let forged_file = fleet.root.path().join("forged.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let topic = format!("roost/_rollouts/{id}");
    fleet.publish_as(ADMIN, &topic, &forged_file);
    let out = fleet.rollout(&["--resume", &id, "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed by this key"));
    let original = fleet.root.path().join("record.json");
    std::fs::write(&original, record.to_string()).unwrap();
    fleet.publish_as(ADMIN, &topic, &original);
    let out = fleet.rollout(&["--resume", &id, "--timeout", "60s", "--json"]);
    let record = json(&out);
    // One failure is allowed: the second batch goes out, and reverts too: halted.
    assert_eq!(record["state"], "halted", "{record:#}");
    assert_eq!(out.status.code(), Some(1));
    for d in &devices {
        let r = d.wait_remote(40, "reverted", |r| r["state"] == "reverted");
        assert_eq!(r["reverted"]["version"], 1, "{}", d.id);
        assert!(std::fs::read_to_string(&d.file).unwrap().contains("s0-a"));
    }
}

#[test]
fn a_folder_device_takes_every_file_of_a_version_and_reverts_them_all() {
    let Some(fleet) = Fleet::start(&["g01"], "rollout --dir") else {
        return;
    };
    let mut d = fleet.device("g01", "kind: folder");
    let extra = deployment("extra", "", &components("g0-extra", &["x"]));
    d.start_dir(&[
        ("site.yaml", d.yaml(&components("g0", &["a"]))),
        ("extra.yaml", extra),
    ]);
    d.wait_running();
    // Version 1: site.yaml changed, monitor.yaml new, extra.yaml gone.
    let v1 = fleet.root.path().join("v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("site.yaml"), d.yaml(&components("g1", &["a", "b"]))).unwrap();
    std::fs::write(
        v1.join("monitor.yaml"),
        deployment("monitor", "", &components("g1-mon", &["m"])),
    )
    .unwrap();
    std::fs::write(v1.join("notes.txt"), "not a deployment file").unwrap();
    let out = fleet.rollout(&[
        "--dir",
        v1.to_str().unwrap(),
        "--devices",
        "g01",
        "--gate",
        "5s",
        "--timeout",
        "30s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", d.log());
    let names = |d: &Device| -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(&d.file)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&d), vec!["monitor.yaml", "site.yaml"]);
    // A file gone stays in force for its 10 s grace, then its deployment goes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = d.status();
        let names: Vec<&str> = (s["deployments"].as_array().into_iter().flatten())
            .filter_map(|e| e["deployment"].as_str())
            .collect();
        if names == ["g01", "monitor"] {
            break s;
        }
        assert!(Instant::now() < deadline, "{s:#}");
        std::thread::sleep(Duration::from_millis(200));
    };

    assert_eq!(s["remote"]["appliedVersion"], 1);
    // Version 2 breaks the monitor: every file of version 1 comes back.
    std::fs::write(
        v1.join("monitor.yaml"),
        deployment("monitor", "", &broken("g2-mon")),
    )
    .unwrap();
    let out = fleet.rollout(&[
        "--dir",
        v1.to_str().unwrap(),
        "--devices",
        "g01",
        "--gate",
        "5s",
        "--timeout",
        "30s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let r = d.wait_remote(10, "reverted", |r| r["state"] == "reverted");
    assert_eq!(
        (
            r["appliedVersion"].as_u64(),
            r["reverted"]["version"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(names(&d), vec!["monitor.yaml", "site.yaml"]);
    assert!(
        std::fs::read_to_string(d.file.join("monitor.yaml"))
            .unwrap()
            .contains("g1-mon")
    );
}

#[test]
fn a_rollout_carries_on_when_the_broker_restarts_between_batches() {
    let ids = ["b01", "b02", "b03"];
    let Some(mut fleet) = Fleet::start(&ids, "rollout broker restart") else {
        return;
    };
    let mut devices: Vec<Device> = ids
        .iter()
        .map(|id| fleet.device(id, "kind: light"))
        .collect();
    for d in &mut devices {
        d.start(&components("b0", &["a"]));
    }
    for d in &devices {
        d.wait_running();
    }
    let v1 = fleet.root.path().join("v1.yaml");
    std::fs::write(&v1, devices[0].yaml(&components("b1", &["a", "b"]))).unwrap();
    let mut controller = fleet.spawn_rollout(&[
        "--file",
        v1.to_str().unwrap(),
        "--devices",
        "b01,b02,b03",
        "--batches",
        "1,2,3",
        "--gate",
        "5s",
        "--timeout",
        "60s",
        "--json",
    ]);
    // The first batch passes; the broker goes away (nothing kept: persistence false) and comes
    // back while the second batch is under way.
    devices[0].wait_remote(20, "passed", |r| r["state"] == "passed");
    devices[1].wait_remote(20, "v1 received", |r| r["desiredVersion"] == 1);
    fleet.broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    fleet.broker.start_again();
    let deadline = Instant::now() + Duration::from_secs(90);
    while controller.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the rollout never ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = controller.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = json(&out);
    assert_eq!(record["state"], "done");
    for d in &devices {
        let r = d.wait_remote(10, "passed", |r| r["state"] == "passed");
        assert_eq!(r["appliedVersion"], 1, "{}", d.id);
    }
}

/// A time of day for the schedule that falls on `at` to the second: sunrise or sunset with an
/// offset in seconds (a clock time has minutes only).
fn solar_time_of(at: jiff::Timestamp) -> String {
    use roost::spec::recorder::SunEvent;
    let date = at.to_zoned(jiff::tz::TimeZone::UTC).date();
    for (name, event) in [("sunrise", SunEvent::Sunrise), ("sunset", SunEvent::Sunset)] {
        let Some(sun) = roost::schedule::sun_event(date, 51.76, -1.26, event) else {
            continue;
        };
        let offset = at.as_second() - sun.as_second();
        if offset.abs() < 12 * 3600 {
            let sign = if offset < 0 { '-' } else { '+' };
            return format!("{name}{sign}{}s", offset.abs());
        }
    }
    panic!("no solar time within 12 h of {at}");
}

#[test]
fn a_deferred_version_waits_for_the_recording_window_to_close() {
    let Some(fleet) = Fleet::start(&["w01"], "rollout windowClosed") else {
        return;
    };
    // Not across midnight: the window below must open and close on one day.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    if now.hour() == 23 && now.minute() >= 58 {
        std::thread::sleep(Duration::from_secs(150));
    }
    let now = jiff::Timestamp::now();
    let start = now - jiff::SignedDuration::from_mins(10);
    let start = start.to_zoned(jiff::tz::TimeZone::UTC);
    let start = match start.date() == now.to_zoned(jiff::tz::TimeZone::UTC).date() {
        true => format!("\"{:02}:{:02}\"", start.hour(), start.minute()),
        false => "\"00:00\"".to_string(),
    };
    let window_end = now + jiff::SignedDuration::from_secs(25);
    let windows = format!(
        "    windows: [{{start: {start}, end: \"{}\"}}]\n",
        solar_time_of(window_end)
    );
    let mut d = fleet.device("w01", "kind: recorder");
    d.with_microphone();
    let storage = fleet.storage();
    let v0 = d.recorder_yaml(&storage, "default", &windows, &components("w0", &["a"]));
    d.start_text(&v0);
    d.wait_running();
    let v1 = fleet.root.path().join("v1.yaml");
    std::fs::write(
        &v1,
        d.recorder_yaml(
            &storage,
            "default",
            &windows,
            &components("w1", &["a", "b"]),
        ),
    )
    .unwrap();
    let controller = fleet.spawn_rollout(&[
        "--file",
        v1.to_str().unwrap(),
        "--devices",
        "w01",
        "--apply",
        "windowClosed",
        "--max-wait",
        "5m",
        "--gate",
        "5s",
        "--timeout",
        "60s",
        "--json",
    ]);
    d.wait_remote(15, "waiting", |r| r["state"] == "waiting");
    assert_eq!(
        std::fs::read_to_string(&d.file).unwrap(),
        v0,
        "nothing applied inside the window"
    );
    d.wait_remote(60, "gating", |r| {
        r["state"] == "gating" || r["state"] == "passed"
    });
    let applied_at = jiff::Timestamp::now();
    // The window's end is sunrise/sunset plus whole seconds: within a second of `window_end`.
    let earliest = window_end - jiff::SignedDuration::from_secs(2);
    assert!(
        applied_at >= earliest,
        "applied at {applied_at}, before the window's end {window_end}"
    );
    assert!(std::fs::read_to_string(&d.file).unwrap().contains("w1-b"));
    let out = controller.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["devices"]["w01"]["state"], "passed");
}

#[test]
fn a_wall_clock_step_during_the_gate_neither_ends_it_early_nor_fails_it() {
    if !Path::new(&faketime_lib()).exists() {
        eprintln!(
            "skipping the clock step test: libfaketime is not installed (bash .ci/setup installs faketime)"
        );
        return;
    }
    let Some(fleet) = Fleet::start(&["t01"], "rollout clock step") else {
        return;
    };
    let mut d = fleet.device("t01", "kind: light");
    // The wall clock of the device's processes moves as the offset file says (an NTP step);
    // the monotonic and boot clocks are left alone, as NTP leaves them.
    let offset = fleet.root.path().join("offset");
    set_offset(&offset, "+0s");
    let lib = faketime_lib();
    for (k, v) in [
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
    ] {
        d.env.push((k.into(), PathBuf::from(v)));
    }
    d.env
        .push(("FAKETIME_TIMESTAMP_FILE".into(), offset.clone()));
    d.start(&components("t0", &["a"]));
    d.wait_running();
    for (version, step) in [(1, "-2h"), (2, "+3h")] {
        let file = fleet.root.path().join(format!("v{version}.yaml"));
        std::fs::write(
            &file,
            d.yaml(&components(&format!("t{version}"), &["a", "b"])),
        )
        .unwrap();
        let mut controller = fleet.spawn_rollout(&[
            "--file",
            file.to_str().unwrap(),
            "--devices",
            "t01",
            "--gate",
            "10s",
            "--timeout",
            "60s",
            "--json",
        ]);
        d.wait_remote(15, "gating", |r| {
            r["state"] == "gating" && r["desiredVersion"] == version
        });
        let opened = Instant::now();
        set_offset(&offset, step);
        let r = d.wait_remote(40, "passed", |r| {
            r["state"] == "passed" && r["appliedVersion"] == version
        });
        let took = opened.elapsed();
        assert!(
            took >= Duration::from_secs(7),
            "v{version}: the gate ended {took:?} after a {step} step"
        );
        assert!(r.get("reverted").is_none(), "{r:#}");
        assert_eq!(controller.wait().unwrap().code(), Some(0));
    }
}

#[test]
fn roost_check_says_when_a_device_would_trust_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(keys.join("notes.pub"), "not a key\n").unwrap();
    let connect = format!(
        "  connect:\n    mqtt: {{url: \"mqtt://127.0.0.1:1\", homeAssistant: false}}\n    desired: {{trustedKeys: {}}}\n",
        keys.display()
    );
    let file = dir.path().join("deployment.yaml");
    std::fs::write(
        &file,
        deployment("site", &connect, &components("k", &["a"])),
    )
    .unwrap();
    let run = || {
        let out = Command::new(ROOST)
            .args(["check", "--file"])
            .arg(&file)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let text = run();
    assert!(
        text.contains("DEP_E802") && text.contains("holds no minisign public key"),
        "{text}"
    );
    assert!(text.contains("notes.pub"), "{text}");
    // With a key there, nothing is said about it.
    if have_or_skip(&["minisign"], "roost check trusted keys") {
        std::fs::remove_file(keys.join("notes.pub")).unwrap();
        run_ok(
            Command::new("minisign")
                .args(["-G", "-W", "-p"])
                .arg(keys.join("fleet.pub"))
                .arg("-s")
                .arg(dir.path().join("k.key")),
        );
        let text = run();
        assert!(!text.contains("DEP_E802"), "{text}");
    }
}

/// Writes libfaketime's offset file whole (temp file, rename), as an NTP step is one instant: a
/// process reading it at every clock call must never see it empty or half written.
fn set_offset(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
