//! `roost serve` as a real process on a real socket, against a state folder prepared here: a
//! status.json, the recorder's configuration, a storage with metadata.db (written through
//! roost's own storage code) and a WAV of a 1 kHz tone. Raw HTTP/1.0 requests, so the test
//! sees exactly what a phone's browser would.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: String,
    /// The run-time folder's base on a RAM file system (as systemd's `RuntimeDirectory=`).
    _runtime: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on now (the kernel's choice, released at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(state: &Path) -> Server {
    let addr = format!("127.0.0.1:{}", free_port());
    let runtime = tempfile::tempdir_in("/dev/shm").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["serve", "--listen", &addr, "--state-dir"])
        .arg(state)
        .env("RUNTIME_DIRECTORY", runtime.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "roost serve did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        addr,
        _runtime: runtime,
    }
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn request(addr: &str, method: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

/// The state folder and the name of its one recording under recordings/; its status says it
/// was written by the roost process `writer` (a live one: the page judges a dead writer).
fn prepare(state: &Path, writer: u32) -> String {
    let storage = state.join("storage");
    let config = serde_json::json!({
        "deployment": "meadow-test",
        "storage": {"path": storage, "minFreeSpace": "0", "onLowSpace": "stop"},
        "recorder": {"device": "default", "sampleRate": 48000, "channels": 1,
                     "sampleFormat": "i16", "duration": "2s"},
    });
    std::fs::write(
        state.join("recorder-config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let config: roost::recorder::RecordConfig = serde_json::from_value(config).unwrap();
    let mut db = roost::storage::Storage::open(&storage, &config.storage).unwrap();
    let start: jiff::Timestamp = "2026-11-30T01:00:00Z".parse().unwrap();
    let deployment = db.start_deployment("meadow-test", None, start).unwrap();
    let name = "2026/11/30/20261130T010000.000Z.wav";
    let wav: PathBuf = db.recordings_dir().join(name);
    std::fs::create_dir_all(wav.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for n in 0..96_000 {
        let s = 0.5 * (std::f32::consts::TAU * 1000.0 * n as f32 / 48_000.0).sin();
        w.write_sample((s * i16::MAX as f32) as i16).unwrap();
    }
    w.finalize().unwrap();
    db.register(
        &roost::storage::NewRecording {
            path: wav.clone(),
            datetime: start,
            duration_s: 2.0,
            samplerate_hz: 48_000,
            audio_channels: 1,
        },
        &deployment,
    )
    .unwrap();
    std::fs::write(state.join("passwd.wav"), b"root:x:0:0").unwrap();
    let status = serde_json::json!({
        "apiVersion": "roost/v1", "kind": "DeploymentStatus", "deployment": "meadow-test",
        "generation": 1, "observedGeneration": 1, "phase": "Succeeded", "status": "Error",
        "components": [
            {"name": "recorder", "status": "Running", "restartCount": 0,
             "output": {"state": "recording", "lastFile": wav, "lastFileAt": "2026-11-30T01:00:02Z",
                        "samplesDropped": 0, "clockSynchronized": true}},
            {"name": "uploader", "status": "Error", "reason": "CrashLoopBackOff", "restartCount": 4}
        ],
        "errors": [{"code": "DEP_E163", "component": "uploader",
                    "message": format!("uploader keeps exiting: /opt/{}/upload.py", "long-unbroken-folder-name".repeat(12)),
                    "action": "Read its log <roost logs uploader>."}],
        "reconciler": {"pid": writer, "version": "0.1.0", "runtime": "process"},
        "updatedAt": "2026-11-30T01:00:03Z"
    });
    std::fs::write(
        state.join("status.json"),
        serde_json::to_vec_pretty(&status).unwrap(),
    )
    .unwrap();
    name.to_string()
}

#[test]
fn the_page_its_data_and_spectrograms_are_served_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let server = start(&state);
    let name = prepare(&state, server.child.id());
    let addr = server.addr.as_str();

    let page = request(addr, "GET", "/");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text();
    assert!(
        html.contains("Recording. Last file finished"),
        "headline missing: {html}"
    );
    assert!(html.contains("DEP_E163") && html.contains("&lt;roost logs uploader&gt;"));
    assert!(html.contains("keeps crashing"), "the component in words");
    assert!(html.contains(&format!("/spectrogram.png?file={name}")));
    assert!(!html.contains("http://") && !html.contains("https://"));

    // status.json stays on the device (paths, commands, schedule): the page serves its view.
    let status = request(addr, "GET", "/status.json");
    assert_eq!(status.status, 404);
    assert!(
        status.text().contains("/api/view.json"),
        "{}",
        status.text()
    );

    let view = request(addr, "GET", "/api/view.json");
    assert_eq!(view.status, 200);
    let view: serde_json::Value = serde_json::from_slice(&view.body).unwrap();
    assert_eq!(view["lastRecording"], name.as_str());
    assert_eq!(view["recordings"][0]["name"], name.as_str());
    // In the deployment's time zone (UTC here), as roost status says times.
    assert_eq!(view["recordings"][0]["datetime"], "Mon 30 Nov 01:00:00 UTC");
    assert_eq!(view["deployment"], "meadow-test");
    assert_eq!(view["errors"][0]["code"], "DEP_E163");

    let png = request(addr, "GET", "/spectrogram.png");
    assert_eq!(png.status, 200, "{}", png.text());
    assert_eq!(png.header("content-type").unwrap(), "image/png");
    assert_eq!(&png.body[..8], b"\x89PNG\r\n\x1a\n");
    // Cached in the run-time folder (RAM), never in the state folder beside the recordings.
    let cached = state.join("run/cache/spectrograms/20261130T010000.000Z.png");
    assert_eq!(std::fs::read(cached).unwrap(), png.body);
    assert!(!state.join("cache").exists());
    let by_name = request(addr, "GET", &format!("/spectrogram.png?file={name}"));
    assert_eq!(by_name.body, png.body);

    let head = request(addr, "HEAD", "/");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    for method in ["POST", "PUT", "DELETE"] {
        let refused = request(addr, method, "/status.json");
        assert_eq!(refused.status, 405, "{method}");
        assert_eq!(refused.header("allow").unwrap(), "GET, HEAD");
    }
    for url in [
        "/spectrogram.png?file=../../etc/passwd",
        "/spectrogram.png?file=..%2F..%2Fpasswd.wav",
        "/spectrogram.png?file=/etc/passwd",
        "/spectrogram.png?file=nothing.wav",
        "/../status.json",
    ] {
        let answer = request(addr, "GET", url);
        assert!(
            answer.status == 400 || answer.status == 404,
            "{url}: {}",
            answer.status
        );
        assert!(!answer.text().contains("root:"), "{url}");
    }

    // Keep rules delete the last file (row marked, file gone): the page never points at it.
    let storage = state.join("storage");
    let conn = rusqlite::Connection::open(storage.join("metadata.db")).unwrap();
    conn.execute(
        "UPDATE recording SET path = NULL, deleted_by = 'keep', deleted_on = '2026-11-30T01:01:00Z'",
        [],
    )
    .unwrap();
    std::fs::remove_file(storage.join("recordings").join(&name)).unwrap();
    let view = request(addr, "GET", "/api/view.json");
    let view: serde_json::Value = serde_json::from_slice(&view.body).unwrap();
    assert_eq!(view["lastRecording"], serde_json::Value::Null, "{view:#}");
    assert_eq!(request(addr, "GET", "/spectrogram.png").status, 404);
    let page = request(addr, "GET", "/").text();
    assert!(
        page.contains("<img id=\"spec\" alt=\"no recording yet\""),
        "{page}"
    );
}

#[test]
fn idle_and_oversized_clients_do_not_stop_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let server = start(&state);
    prepare(&state, server.child.id());
    let addr = server.addr.as_str();

    // Slowloris: 20 connections that send nothing, and one that never ends its head.
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut dribbling = TcpStream::connect(addr).unwrap();
    dribbling.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let page = request(addr, "GET", "/");
    assert_eq!(page.status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the page took {:?} behind idle connections",
        asked.elapsed()
    );

    let long_url = format!("/{}", "a".repeat(4096));
    assert_eq!(request(addr, "GET", &long_url).status, 414);
    let mut huge = TcpStream::connect(addr).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(huge, "GET / HTTP/1.1\r\n").unwrap();
    for n in 0..200 {
        // The server may answer and close before all of it is sent.
        if write!(huge, "X-Filler-{n}: {}\r\n", "b".repeat(100)).is_err() {
            break;
        }
    }
    let mut raw = Vec::new();
    let _ = huge.read_to_end(&mut raw);
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&raw)
    );

    // A client that never finishes its head is closed after the deadline (5 s).
    dribbling
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let closed_at = Instant::now();
    let _ = dribbling.read_to_end(&mut rest);
    assert!(closed_at.elapsed() < Duration::from_secs(8));
    assert!(rest.is_empty());
    drop(idle);
}

/// A flood of slow clients holding more connections than the page serves at once (100 that
/// send half a head and wait, from the same address as the technician's phone) never keeps
/// the technician waiting: a new connection takes the place of the oldest, and the page
/// answers at once (before any slow client's 5 s head deadline could free a slot).
#[test]
fn a_flood_of_slow_clients_never_keeps_the_technician_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let server = start(&state);
    prepare(&state, server.child.id());
    let addr = server.addr.as_str();
    let crowd: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            let _ = c.write_all(b"GET / HTTP/1.1\r\nX-Slow: ");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let asked = Instant::now();
        let page = request(addr, "GET", "/api/view.json");
        assert_eq!(page.status, 200);
        assert!(
            asked.elapsed() < Duration::from_secs(4),
            "the technician waited {:?} behind the crowd",
            asked.elapsed()
        );
    }
    drop(crowd);
}

#[test]
fn an_address_in_use_is_named_in_the_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["serve", "--listen", &addr, "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// `spec.page` makes `roost run` start the page as its built-in component `page`: the page
/// answers on the address the file gives and shows what status.json says; removing `spec.page`
/// from the file stops it.
#[path = "common/mod.rs"]
mod common;

#[test]
fn spec_page_runs_the_page_as_a_component_of_roost_run() {
    let port = free_port();
    let page = format!("  page: {{listen: \"127.0.0.1:{port}\"}}\n");
    let tag = common::unique("page");
    let mut r = common::Roost::new(&common::deployment(
        "field",
        &page,
        &common::sleeper("a", &tag),
    ));
    r.start();
    let s = r.wait_succeeded(1);
    let component = s["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "page")
        .cloned();
    assert_eq!(
        component.as_ref().map(|c| c["status"].clone()),
        Some("Running".into()),
        "{s:#}"
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the page never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = request(&addr, "GET", "/");
    assert_eq!(answer.status, 200);
    let html = String::from_utf8_lossy(&answer.body);
    assert!(
        html.contains("Running (no recorder in this deployment)."),
        "{html}"
    );
    assert_eq!(request(&addr, "POST", "/").status, 405);
    // Off again: the component goes away and the address is free.
    r.replace_atomically(&common::deployment(
        "field",
        "",
        &common::sleeper("a", &tag),
    ));
    r.wait_for("page removed", Duration::from_secs(20), |s| {
        s["components"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["name"] != "page"))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the page still answers on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    r.stop();
}

/// The page in a real headless browser (Debian's chromium): after its scripts ran, the DOM shows
/// the state and the last file, and the spectrogram image decoded at its expected size (the
/// page notes `naturalWidth x naturalHeight` when it loads); a phone-sized screenshot is kept
/// as a test artifact in `target/page-screenshot.png`.
#[test]
fn the_page_renders_in_a_headless_browser() {
    let Some(browser) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("skipped: no chromium (Debian package chromium) on this machine");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let name = prepare(dir.path(), server.child.id());
    let url = format!("http://{}/", server.addr);
    let profile = dir.path().join("profile");
    let common = [
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--no-first-run".into(),
        format!("--user-data-dir={}", profile.display()),
        "--virtual-time-budget=5000".into(),
        "--window-size=412,915".into(),
    ];
    let dom = Command::new(browser)
        .args(&common)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let file = Path::new(&name)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(html.contains(&file), "the last file {file} in\n{html}");
    // At phone width nothing scrolls sideways, long paths in messages included.
    assert!(
        html.contains("data-fits=\"true\""),
        "the page is wider than 412 px:\n{html}"
    );
    let size = html
        .split("data-size=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string();
    let (w, h) = size.split_once('x').unwrap_or(("0", "0"));
    assert!(
        w.parse::<u32>().unwrap_or(0) > 0 && h.parse::<u32>().unwrap_or(0) == 512,
        "image size {size:?}"
    );
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/page-screenshot.png");
    let out = Command::new(browser)
        .args(&common)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    drop(server);
}

/// What a raw exchange on a fresh connection brings back (empty when the server closed it).
fn raw_exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may answer and close before all of it is sent.
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// Every spelling of a way out of the storage that a client might try, towards `secret`
/// (a file beside the storage) and `leak.wav` (a symbolic link to it inside `recordings/`).
fn traversal_targets(secret: &Path) -> Vec<String> {
    let abs = secret.display().to_string();
    let enc = abs.replace('/', "%2F");
    let mut targets: Vec<String> = [
        "../secret.wav",
        "../../secret.wav",
        "..%2Fsecret.wav",
        "..%2F..%2Fsecret.wav",
        "%2e%2e%2fsecret.wav",
        "%2E%2E/%2E%2E/secret.wav",
        "%252e%252e%252fsecret.wav",
        "....//secret.wav",
        "..\\secret.wav",
        "..%5Csecret.wav",
        "2026/../../secret.wav",
        "./../secret.wav",
        "leak.wav",
        "secret.wav%00.wav",
        "%c0%ae%c0%ae/secret.wav",
    ]
    .iter()
    .map(|t| format!("/spectrogram.png?file={t}"))
    .collect();
    targets.extend([
        format!("/spectrogram.png?file={abs}"),
        format!("/spectrogram.png?file={enc}"),
        format!("/spectrogram.png?file=a&file={abs}"),
        format!("/{abs}"),
        format!("/..{abs}"),
        "/../secret.wav".into(),
        "/status.json/../../secret.wav".into(),
        "/%2e%2e/secret.wav".into(),
        "//secret.wav".into(),
    ]);
    targets
}

/// A recording device with its page on, attacked while it records: idle and dribbling
/// connections, oversized heads, long targets, garbage, every spelling of a traversal, and
/// spectrogram renders from several clients at once. No answer carries a byte of a file outside
/// the storage, the page still answers, its JSON matches the published schemas, and the recorder
/// drops no sample.
#[test]
fn hostile_clients_neither_read_outside_the_storage_nor_stall_recording() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut r = common::Roost::new("");
    let storage = r.path("storage");
    let page = format!("  page: {{listen: \"{addr}\"}}\n");
    std::fs::write(
        &r.file,
        common::recorder_deployment("page-attack", &storage, &page),
    )
    .unwrap();
    let secret = r.path("secret.wav");
    std::fs::write(&secret, b"SENTINEL-outside-the-storage").unwrap();
    let _feed = r.start_recording();
    r.wait_for("recording with the page on", Duration::from_secs(60), |s| {
        let rec = common::component(s, "recorder");
        rec["output"]["filesWritten"].as_u64() >= Some(2)
            && common::component(s, "page")["status"] == "Running"
    });
    std::os::unix::fs::symlink(&secret, storage.join("recordings/leak.wav")).unwrap();
    while TcpStream::connect(&addr).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }

    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let renders: Vec<_> = (0..3)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let view = request(&addr, "GET", "/api/view.json");
                    let view: serde_json::Value = serde_json::from_slice(&view.body).unwrap();
                    for rec in view["recordings"].as_array().unwrap().iter().take(4) {
                        let url =
                            format!("/spectrogram.png?file={}", rec["name"].as_str().unwrap());
                        assert_eq!(request(&addr, "GET", &url).status, 200, "{url}");
                    }
                }
            })
        })
        .collect();
    for target in traversal_targets(&secret) {
        for method in ["GET", "HEAD"] {
            let answer = raw_exchange(
                &addr,
                format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
            let text = String::from_utf8_lossy(&answer);
            assert!(!text.contains("SENTINEL"), "{target} leaked: {text}");
            assert!(
                text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 404"),
                "{method} {target}: {text}"
            );
        }
    }
    let garbage: [&[u8]; 5] = [
        b"\x00\x01\x02\xff\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\n",
    ];
    for bytes in garbage {
        let text = String::from_utf8_lossy(&raw_exchange(&addr, bytes)).into_owned();
        assert!(!text.contains("SENTINEL"), "{text}");
    }
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(3000));
    assert!(
        String::from_utf8_lossy(&raw_exchange(&addr, long.as_bytes())).starts_with("HTTP/1.1 414")
    );
    let mut huge = b"GET / HTTP/1.1\r\n".to_vec();
    huge.extend(format!("X-Big: {}\r\n\r\n", "b".repeat(20_000)).bytes());
    assert!(String::from_utf8_lossy(&raw_exchange(&addr, &huge)).starts_with("HTTP/1.1 431"));
    let body = b"POST /status.json HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    assert!(String::from_utf8_lossy(&raw_exchange(&addr, body)).starts_with("HTTP/1.1 405"));
    for handle in renders {
        handle.join().unwrap();
    }
    let asked = Instant::now();
    assert_eq!(request(&addr, "GET", "/").status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    drop(idle);

    let answer = request(&addr, "GET", "/api/view.json");
    assert_eq!(answer.status, 200);
    assert_valid(&answer.body, "view");
    assert_valid(
        &std::fs::read(r.state.join("status.json")).unwrap(),
        "status",
    );
    // Files kept coming during the attack, and none of their samples was dropped.
    let before = common::component(&r.status().unwrap(), "recorder")["output"]["filesWritten"]
        .as_u64()
        .unwrap();
    let s = r.wait_for("files after the attack", Duration::from_secs(20), |s| {
        common::component(s, "recorder")["output"]["filesWritten"].as_u64() > Some(before + 1)
    });
    let rec = common::component(&s, "recorder");
    assert_eq!(rec["status"], "Running", "{s:#}");
    assert_eq!(rec["output"]["samplesDropped"], 0, "{s:#}");
    r.stop();
}

/// Checks `json` against `schemas/<kind>.schema.json` with Python's jsonschema (Debian's
/// python3-jsonschema), a validator that is not roost's own.
fn assert_valid(json: &[u8], kind: &str) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{kind}.schema.json"));
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|python| {
            Command::new(python)
                .args(["-c", "import jsonschema"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("a python3 with jsonschema: install python3-jsonschema (bash .ci/setup does)");
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema.Draft202012Validator(schema).validate(json.load(sys.stdin))",
        ])
        .arg(&schema)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(json).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{kind}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(json)
    );
}
