//! A real Mosquitto broker per test, on free localhost ports: a plain listener and a TLS one
//! (a test CA and a server certificate for 127.0.0.1/localhost made with the openssl CLI), a
//! password file made with `mosquitto_passwd -b`, `persistence false`. It can be stopped and
//! started again on the same ports, and its password file changed and reloaded (SIGHUP).
//! `Subscriber` is a real MQTT client (rumqttc) that records what the broker delivers.
//!
//! Children die with the test: Drop kills the broker, and `setpriv --pdeathsig KILL` takes it
//! along if the test process itself is killed.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The user roost connects as, and its password.
pub const ROOST_USER: (&str, &str) = ("roost", "s3cret-roost");
/// The user the test's own clients connect as.
pub const WATCHER: (&str, &str) = ("watcher", "s3cret-watcher");

/// True when every program in `programs` is installed; otherwise prints why `test` is skipped.
pub fn have_or_skip(programs: &[&str], test: &str) -> bool {
    for program in programs {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!("skipping {test}: {program} is not installed (bash .ci/setup installs it)");
            return false;
        }
    }
    true
}

/// A port nobody listens on now (the broker binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority made with the openssl CLI: `<name>.pem` and `<name>.key` in `dir`.
pub struct TestCa {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn create(dir: &Path, name: &str) -> Self {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={name}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        Self { cert, key }
    }

    /// A server certificate for 127.0.0.1 and localhost signed by this CA: (cert, key).
    pub fn server_cert(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        let csr = dir.join(format!("{name}.csr"));
        let ext = dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", "2"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&self.cert)
            .arg("-CAkey")
            .arg(&self.key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert));
        (cert, key)
    }
}

/// A Mosquitto broker: plain listener on `port`, TLS listener on `tls_port`, anonymous clients
/// refused.
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub tls_port: u16,
    pub ca: TestCa,
    pub passwd: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Broker {
    /// Writes the configuration, the PKI and the password file (both users), and starts it.
    pub fn start() -> Self {
        Self::start_with(&[ROOST_USER, WATCHER], None)
    }

    /// [`Broker::start`] with exactly `users` and, when given, an ACL file of `acl`'s lines.
    pub fn start_with(users: &[(&str, &str)], acl: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let acl_line = match acl {
            Some(text) => {
                let path = dir.path().join("acl");
                std::fs::write(&path, text).unwrap();
                format!("acl_file {}\n", path.display())
            }
            None => String::new(),
        };
        let ca = TestCa::create(dir.path(), "test-ca");
        let (cert, key) = ca.server_cert(dir.path(), "server");
        let passwd = dir.path().join("passwd");
        let port = free_port();
        let tls_port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\npersistence false\nper_listener_settings false\nallow_anonymous false\n\
                 password_file {passwd}\n{acl_line}log_dest stderr\nlog_type all\n\
                 listener {port} 127.0.0.1\n\
                 listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
                passwd = passwd.display(),
                ca = ca.cert.display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let mut broker = Self {
            dir,
            port,
            tls_port,
            ca,
            passwd,
            conf,
            child: None,
            starts: 0,
        };
        broker.set_users(users);
        broker.start_again();
        broker
    }

    /// Writes the password file with exactly `users`; `reload` makes a running broker read it.
    pub fn set_users(&self, users: &[(&str, &str)]) {
        let _ = std::fs::remove_file(&self.passwd);
        std::fs::write(&self.passwd, "").unwrap();
        for (user, password) in users {
            run(Command::new("mosquitto_passwd")
                .arg("-b")
                .arg(&self.passwd)
                .args([user, password]));
        }
    }

    /// SIGHUP: Mosquitto reads its password file again; clients already connected stay.
    pub fn reload(&self) {
        let child = self.child.as_ref().expect("broker running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        // Mosquitto handles the signal in its main loop; it logs the reload.
        self.wait_log("Reloading config", self.starts);
    }

    /// Starts the broker (again) on the same ports and waits until both listeners accept.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker runs already");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).unwrap();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "mosquitto", "-c"])
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [self.port, self.tls_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not listen on {port}:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops the broker (SIGKILL: nothing is saved, clients see their connection drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("mosquitto-{start}.log"))
    }

    /// The log of every start so far.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| std::fs::read_to_string(self.log_path(i)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    fn wait_log(&self, needle: &str, start: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(self.log_path(start))
            .unwrap_or_default()
            .contains(needle)
        {
            assert!(
                Instant::now() < deadline,
                "mosquitto never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message as a subscriber received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.topic, self.payload))
    }
}

/// A real MQTT client (rumqttc, clean session) subscribed to some topics; it records every
/// message in arrival order and can publish.
pub struct Subscriber {
    client: rumqttc::Client,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Subscriber {
    /// Connects as the watcher to the plain listener, subscribes to `filters` (QoS 1) and
    /// returns once the broker acknowledged the subscription.
    pub fn start(port: u16, filters: &[&str]) -> Self {
        let id = format!("watcher-{}-{}", std::process::id(), free_port());
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        options.set_credentials(WATCHER.0, WATCHER.1);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = rumqttc::Client::new(options, 64);
        for filter in filters {
            client
                .subscribe(*filter, rumqttc::QoS::AtLeastOnce)
                .unwrap();
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
        let sink = received.clone();
        let wanted = filters.len();
        std::thread::spawn(move || {
            let mut acks = 0;
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        acks += 1;
                        if acks == wanted {
                            let _ = subscribed_tx.send(Ok(()));
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Received {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                            at: Instant::now(),
                        });
                    }
                    Ok(_) => {}
                    // One session only: a dropped subscription would miss messages unseen.
                    Err(e) => {
                        let _ = subscribed_tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        match subscribed.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the test's MQTT client failed: {e}"),
            Err(_) => panic!("the test's MQTT client got no SUBACK within 10 s"),
        }
        Self { client, received }
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// What was received on `topic`, in order.
    pub fn on(&self, topic: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// Waits until `cond` holds for what was received; panics with it (and `context`) otherwise.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        context: impl Fn() -> String,
        cond: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if cond(&got) {
                return got;
            }
            if Instant::now() > deadline {
                let lines: Vec<String> = got
                    .iter()
                    .map(|m| format!("  {} retain={} {}", m.topic, m.retain, m.payload))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; received:\n{}\n{}",
                    lines.join("\n"),
                    context()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publishes `payload` on `topic` (QoS 1, not retained).
    pub fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.as_bytes())
            .unwrap();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}
