//! The built-ins unprivileged, end to end, with real users made here (`useradd`): the recorder,
//! the curator (a real detector that prints credentials on stderr) and the page (with a
//! password) run as the built-ins' user under the process runtime and under a real
//! `systemd --user` (units confined and scored by `systemd-analyze security`); a second local
//! user cannot read recordings, metadata.db, status, reports or secrets; a third, in the
//! built-ins' group, can read recordings and status; no planted secret reaches status.json,
//! a report or the page. Needs root (useradd, chown); skips with a message otherwise.

mod common;
#[path = "support/systemd_sandbox.rs"]
mod sandbox;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Credentials a detector prints on stderr: none may leave the device's own log.
const SECRETS: &[&str] = &[
    "hunter2",
    "APIKEY123456",
    "eyJzdWIiOiIxIn0",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
];
const PAGE_PASSWORD: &str = "meadow lark 7";

/// A local user made for one test, removed with its group when dropped.
struct User {
    name: String,
    uid: u32,
}

impl User {
    fn new(prefix: &str, group: Option<&str>) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
        let _ = Command::new("userdel").arg(&name).output();
        let mut cmd = Command::new("useradd");
        cmd.args(["--system", "--user-group", "--no-create-home", "--shell"])
            .arg("/usr/sbin/nologin");
        if let Some(g) = group {
            cmd.args(["--groups", g]);
        }
        let out = cmd.arg(&name).output().expect("useradd");
        assert!(out.status.success(), "useradd {name}: {out:?}");
        let uid = nix::unistd::User::from_name(&name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        Self { name, uid }
    }

    /// Whether this user can read `path` (really: `runuser ... cat`).
    fn can_read(&self, path: &Path) -> bool {
        Command::new("runuser")
            .args(["-u", &self.name, "--", "cat"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// Everything one test's device holds, in a folder under /srv (not /tmp or /root: systemd's
/// PrivateTmp= and ProtectHome= hide those from the confined built-ins).
struct Device {
    base: PathBuf,
    roost: PathBuf,
    file: PathBuf,
    state: PathBuf,
    storage: PathBuf,
    conf: PathBuf,
    port: u16,
    child: Option<Child>,
    _feed: Feed,
}

impl Device {
    fn new(name: &str, builtins: &User) -> Self {
        let base = PathBuf::from(format!("/srv/roost-sandbox-tests/{}", unique(name)));
        std::fs::create_dir_all(&base).unwrap();
        for dir in [Path::new("/srv/roost-sandbox-tests"), &base] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        // The binary where the built-ins' user may run it (the build folder may be under /root).
        let roost = base.join("roost");
        std::fs::copy(ROOST, &roost).unwrap();
        std::fs::set_permissions(&roost, std::fs::Permissions::from_mode(0o755)).unwrap();
        let detector = base.join("leaky.sh");
        std::fs::write(
            &detector,
            "#!/bin/sh\n\
             echo \"uid=$(id -u) $(grep NoNewPrivs /proc/self/status | tr -d '\\t')\" >&2\n\
             echo 'POST https://alice:hunter2@models.example.org/v1?api_key=APIKEY123456 failed' >&2\n\
             echo 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl' >&2\n\
             echo 'token ghp_0123456789abcdefghijABCDEFGHIJ012345 refused' >&2\n\
             exit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&detector, std::fs::Permissions::from_mode(0o755)).unwrap();
        let password = base.join("page-password");
        std::fs::write(&password, format!("{PAGE_PASSWORD}\n")).unwrap();
        let group = nix::unistd::Group::from_name(&builtins.name)
            .unwrap()
            .unwrap();
        std::os::unix::fs::chown(&password, Some(0), Some(group.gid.as_raw())).unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o640)).unwrap();

        // The run-time folder on a RAM file system both roost and the units see (as systemd's
        // RuntimeDirectory= gives it on a device; /run here is on disk and /tmp is private to
        // the units): mounted before the test's manager starts, so its namespace has it too.
        let runtime = base.join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755,size=16m", "tmpfs"])
            .arg(&runtime)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        let (state, storage) = (base.join("state"), base.join("storage"));
        let port = free_port();
        let file = base.join("deployment.yaml");
        let extra = format!(
            "  detectors:\n    - {{name: energy, kind: bandEnergy, lowHz: 500, highHz: 4000, thresholdDb: 12, minDuration: 100ms}}\n    - {{name: leaky, kind: command, command: [\"{}\"], retries: 0}}\n  page: {{listen: \"127.0.0.1:{port}\", passwordFile: {}}}\n",
            detector.display(),
            password.display()
        );
        // A component of the file with credentials on its command line and in its environment,
        // failing with them on stderr: none of it may reach status, reports or the page.
        let leaky_component = "  components:\n    - name: uploader\n      command: [\"/bin/sh\", \"-c\", \"echo POST https://alice:hunter2@x.example/ >&2; sleep 1; exit 3\", \"--password=hunter2\"]\n      env: {API_TOKEN: ghp_0123456789abcdefghijABCDEFGHIJ012345}\n";
        let yaml = recorder_deployment(name, &storage, &extra)
            .replace("  components: []\n", leaky_component);
        std::fs::write(&file, yaml).unwrap();

        let (fifo, conf) = (base.join("mic.fifo"), base.join("asound.conf"));
        let feed = start_feed(&fifo, &conf, &[]);
        // Test equipment, not the device's: the built-ins' user reads the test signal.
        for p in [&fifo, &conf] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        Self {
            base,
            roost,
            file,
            state,
            storage,
            conf,
            port,
            child: None,
            _feed: feed,
        }
    }

    /// Starts `roost run` with `args` (its runtime) and `envs`, the built-ins as `builtins`, the
    /// run-time folder on this device's RAM folder, its log in `roost.log`.
    fn start(&mut self, args: &[&str], envs: &[(&str, &std::ffi::OsStr)], builtins: &User) {
        let child = Command::new(&self.roost)
            .arg("run")
            .args(args)
            .arg("--file")
            .arg(&self.file)
            .arg("--state-dir")
            .arg(&self.state)
            .envs(envs.iter().copied())
            .env("ROOST_USER", &builtins.name)
            .env("RUNTIME_DIRECTORY", self.base.join("runtime"))
            .env("ROOST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(self.base.join("roost.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.state.join("status.json")).ok()?).ok()
    }

    /// Waits until `pred` holds for status.json.
    fn wait_for(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.status()
                && pred(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {:#}\nroost log:\n{}",
                self.status().unwrap_or_default(),
                std::fs::read_to_string(self.base.join("roost.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Recordings under storage/recordings.
    fn recordings(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut pending = vec![self.storage.join("recordings")];
        while let Some(dir) = pending.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    pending.push(p);
                } else if p.extension().is_some_and(|x| x == "wav") {
                    out.push(p);
                }
            }
        }
        out
    }

    /// One GET with an optional `Authorization` header: status code and body.
    fn get(&self, path: &str, authorization: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        (code, body.unwrap_or_default())
    }

    fn wait_for_page(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the page did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.base.join("runtime"))
            .status();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn basic(password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("anyone:{password}"))
    )
}

/// `Uid:` (real) and `NoNewPrivs:` of a process, from /proc.
fn identity_of(pid: u64) -> (u32, bool, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(|w| w.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    (
        field("Uid:")[0],
        field("NoNewPrivs:") == [1],
        field("Groups:"),
    )
}

fn root_or_skip() -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Command::new("useradd").arg("--help").output().is_ok()
        && Command::new("runuser").arg("--help").output().is_ok();
    if !ok {
        eprintln!("skipped: needs root, useradd and runuser");
    }
    ok
}

/// What both runtimes must show once recordings were made and analysed.
fn assert_confined_and_private(dev: &Device, builtins: &User) {
    let attacker = User::new("ratk", None);
    let reader = User::new("rrdr", Some(&builtins.name));
    let s = dev.wait_for(
        "recordings analysed by both detectors",
        Duration::from_secs(90),
        |s| {
            let d = &component(s, "curator")["output"]["detectors"];
            d[0]["analysed"].as_u64() >= Some(2) && d[1]["failed"].as_u64() >= Some(1)
        },
    );
    // Each built-in runs as the built-ins' user, without new privileges; the recorder in audio.
    let audio = nix::unistd::Group::from_name("audio")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    for name in ["recorder", "curator", "page"] {
        let (uid, nnp, groups) = identity_of(pid_of(&s, name));
        assert_eq!(uid, builtins.uid, "{name} runs as {uid}");
        assert!(nnp, "{name} may gain privileges");
        if name == "recorder" {
            assert!(groups.contains(&audio), "recorder groups {groups:?}");
        }
    }

    let recordings = dev.recordings();
    assert!(!recordings.is_empty());
    let run = std::fs::canonicalize(dev.state.join("run")).unwrap();
    let private = [
        recordings[0].clone(),
        dev.storage.join("metadata.db"),
        dev.state.join("status.json"),
        run.join("curator-report.json"),
        run.join("recorder-report.json"),
        dev.base.join("page-password"),
    ];
    for path in &private {
        assert!(path.exists(), "{} missing", path.display());
        assert!(
            !attacker.can_read(path),
            "another user reads {}",
            path.display()
        );
        let mode = std::fs::metadata(path).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "{} is mode {mode:o}", path.display());
    }
    for dir in [&dev.storage, &dev.state, &run] {
        let m = std::fs::metadata(dir).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o7777),
            (builtins.uid, 0o2750),
            "{}",
            dir.display()
        );
    }
    // A person in the built-ins' group reads recordings and status (docs/SECURITY.md).
    for path in [&recordings[0], &dev.state.join("status.json")] {
        assert!(
            reader.can_read(path),
            "the group cannot read {}",
            path.display()
        );
    }

    // The detector ran as the user too, and what it printed arrives without its credentials.
    let report = std::fs::read_to_string(run.join("curator-report.json")).unwrap();
    assert!(
        report.contains(&format!("uid={}", builtins.uid)) && report.contains("NoNewPrivs:1"),
        "{report}"
    );
    assert!(report.contains("<redacted>"), "{report}");
    let status = std::fs::read_to_string(dev.state.join("status.json")).unwrap();

    // The page: a password, the view and never status.json.
    dev.wait_for_page();
    assert_eq!(dev.get("/", None).0, 401);
    assert_eq!(dev.get("/api/view.json", Some(&basic("wrong"))).0, 401);
    let (code, view) = dev.get("/api/view.json", Some(&basic(PAGE_PASSWORD)));
    assert_eq!(code, 200, "{view}");
    let (code, page) = dev.get("/", Some(&basic(PAGE_PASSWORD)));
    assert_eq!(code, 200);
    assert_eq!(dev.get("/status.json", Some(&basic(PAGE_PASSWORD))).0, 404);
    let texts = [
        report,
        status,
        view.clone(),
        page,
        browsed(dev),
        curled(dev),
    ];
    for text in &texts {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
    }
    assert!(
        !view.contains("51.76") && !view.contains("-1.26"),
        "the site's location: {view}"
    );
}

/// The page's view as curl gets it with the password (and 401 without, and with a wrong one).
fn curled(dev: &Device) -> String {
    let url = format!("http://127.0.0.1:{}/api/view.json", dev.port);
    let code = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .arg(&url)
            .output()
            .expect("curl (Debian package curl)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code(&[]), "401");
    assert_eq!(code(&["-u", "anyone:not it"]), "401");
    assert_eq!(code(&["-u", &format!("anyone:{PAGE_PASSWORD}")]), "200");
    let out = Command::new("curl")
        .args(["-s", "-u", &format!("anyone:{PAGE_PASSWORD}")])
        .arg(&url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page after its scripts ran in headless Chromium, logged in with the password in the
/// URL; without it the browser gets the refusal.
fn browsed(dev: &Device) -> String {
    let profile = dev.base.join("profile");
    let dump = |url: &str| {
        let out = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--virtual-time-budget=5000", "--dump-dom", url])
            .output()
            .expect("chromium (Debian package chromium)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = dump(&format!("http://127.0.0.1:{}/", dev.port));
    // Chromium shows nothing of a page that asks for a password it was not given.
    assert!(
        !refused.contains("uploader") && !refused.contains("recorder"),
        "{refused}"
    );
    let user = PAGE_PASSWORD.replace(' ', "%20");
    let page = dump(&format!("http://anyone:{user}@127.0.0.1:{}/", dev.port));
    assert!(
        page.contains("uploader") && page.contains("recorder"),
        "{page}"
    );
    page
}

#[test]
fn built_ins_run_unprivileged_under_the_process_runtime() {
    if !root_or_skip() {
        return;
    }
    let builtins = User::new("rsbp", None);
    let mut dev = Device::new("sbproc", &builtins);
    let conf = dev.conf.clone();
    dev.start(
        &["--runtime", "process"],
        &[("ALSA_CONFIG_PATH", conf.as_os_str())],
        &builtins,
    );
    assert_confined_and_private(&dev, &builtins);
}

#[tokio::test(flavor = "current_thread")]
async fn built_ins_run_confined_under_systemd_and_score_ok() {
    if !root_or_skip() {
        return;
    }
    let builtins = User::new("rsbs", None);
    let mut dev = Device::new("sbunit", &builtins);
    let sb = sandbox::Sandbox::start().await;
    // Units get the manager's environment, not roost's: the test's ALSA file plugin.
    let conf = format!("ALSA_CONFIG_PATH={}", dev.conf.display());
    assert!(sb.systemctl(&["set-environment", &conf]).status.success());
    let (bus, xdg) = (sb.bus_address(), sb.dir().join("xdg"));
    let (config, home) = (sb.dir().join("config"), sb.dir().join("home"));
    dev.start(
        &["--runtime", "systemd", "--user"],
        &[
            ("DBUS_SESSION_BUS_ADDRESS", bus.as_ref()),
            ("XDG_RUNTIME_DIR", xdg.as_os_str()),
            ("XDG_CONFIG_HOME", config.as_os_str()),
            ("HOME", home.as_os_str()),
        ],
        &builtins,
    );
    assert_confined_and_private(&dev, &builtins);

    // Each built-in's unit, scored by systemd itself.
    for name in ["recorder", "curator", "page"] {
        let unit = format!("roost-sbunit-{name}.service");
        let text =
            std::fs::read_to_string(sb.dir().join("config/systemd/user").join(&unit)).unwrap();
        assert!(text.contains(&format!("User={}", builtins.name)), "{text}");
        let mut cmd = Command::new("systemd-analyze");
        cmd.args(["security", "--user", &unit])
            .env("XDG_RUNTIME_DIR", sb.dir().join("xdg"))
            .env("DBUS_SESSION_BUS_ADDRESS", sb.bus_address());
        let (score, said) = exposure(&mut cmd, &unit);
        eprintln!("figure: systemd-analyze security {unit}: {score}");
        assert!(score <= 4.0, "{unit} exposure {score}:\n{said}");
    }
}

/// Every built-in's unit as roost writes it for the system manager (the package's case, user
/// `roost`), scored offline by `systemd-analyze security`: each at most 4.0 ("OK"); the
/// connector too, which the tests above do not start (it needs a broker).
#[test]
fn every_built_in_unit_scores_ok_offline() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no systemd-analyze");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}  connect:\n    deviceId: dev-1\n    mqtt: {{url: \"mqtt://127.0.0.1:1883\"}}\n  detectors:\n    - {{name: energy, kind: bandEnergy, lowHz: 500, highHz: 4000, thresholdDb: 12, minDuration: 100ms}}\n  page: {{listen: \"10.42.0.1:8080\", passwordFile: /etc/roost/page-password}}\n",
        recorder_deployment("scored", &dir.path().join("storage"), "")
            .replace("  components: []\n", "")
    ) + "  components: []\n";
    let d = roost::spec::parse_str(Path::new("d.yaml"), &yaml).unwrap();
    let builtins = roost::builtin::Builtins::standard(
        Path::new("/usr/bin/roost"),
        Path::new("/var/lib/roost"),
    );
    let runs = builtins.runs(&d);
    assert_eq!(runs.len(), 4, "recorder, curator, connect, page");
    let opts = roost::runtime::systemd::unit::UnitOptions {
        wanted_by: "multi-user.target",
        restart_steps: false,
        privileged: true,
        deployment_slice: false,
    };
    // Before issue 21 every unit was written unconfined: the first, scored for comparison.
    let mut unconfined = runs[0].clone();
    unconfined.confinement = None;
    unconfined.name = "unconfined".try_into().unwrap();
    for mut run in std::iter::once(unconfined).chain(runs) {
        if let Some(c) = run.confinement.as_mut() {
            c.user = Some("roost".into());
        }
        let unit = format!("roost-scored-{}.service", run.name);
        let path = dir.path().join(&unit);
        let text =
            roost::runtime::systemd::unit::render(&run, &opts, &dir.path().join("env")).unwrap();
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new("systemd-analyze");
        cmd.args(["security", "--offline=true"]).arg(&path);
        let (score, said) = exposure(&mut cmd, &unit);
        eprintln!("figure: systemd-analyze security --offline {unit}: {score}");
        if run.confinement.is_none() {
            assert!(score > 9.0, "unconfined scores {score}");
            continue;
        }
        assert!(score <= 4.0, "{unit} exposure {score}:\n{said}");
    }
}

/// The overall exposure `systemd-analyze security` gives `unit`, and all it said.
fn exposure(cmd: &mut Command, unit: &str) -> (f64, String) {
    let out = cmd.output().expect("systemd-analyze");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let score = said.lines().find_map(|l| {
        let (_, rest) = l.split_once("Overall exposure level for ")?;
        rest.split_once(": ")?
            .1
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    match score {
        Some(score) => (score, said),
        None => panic!(
            "no exposure for {unit}: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
