//! `roost serve`: a read-only web page for a person on site with a phone on the device's
//! hotspot. It shows what `roost status` says, each component and problem, and spectrograms of
//! the recordings; it serves the view it renders (`/api/view.json`), never status.json itself
//! (which names paths, commands and the schedule a stranger has no need of), and may ask for a
//! password ([`auth`]). It owns the HTTP answers ([`respond`] is a
//! pure function of the request and the state folder) and the spectrogram cache under
//! `<state>/cache/spectrograms/`; it must never change the device: only GET and HEAD are
//! answered, and the only file it writes is that cache.

pub mod auth;
pub mod files;
pub mod http;
pub mod spectrogram;
pub mod view;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use files::RecordingName;

/// Why the page cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address cannot be listened on (in use, not this machine's, or a privileged port).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

/// An answer: status code, content type and body (HEAD gets the same without the body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// Whether a browser may keep it (a spectrogram of a finished file never changes).
    pub immutable: bool,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            content_type,
            immutable: false,
            body: body.into(),
        }
    }

    pub(crate) fn text(status: u16, message: impl Into<String>) -> Self {
        let mut body = message.into();
        body.push('\n');
        Self {
            status,
            content_type: TEXT,
            immutable: false,
            body: body.into_bytes(),
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// What was asked, classified before anything is read.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Page,
    /// status.json is not served (see the module's documentation).
    StatusJson,
    ViewJson,
    /// `None`: the last recording.
    Spectrogram(Option<RecordingName>),
    BadName(String),
    NotFound,
    MethodNotAllowed,
}

fn route(method: &str, url: &str) -> Route {
    if method != "GET" && method != "HEAD" {
        return Route::MethodNotAllowed;
    }
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    match path {
        "/" | "/index.html" => Route::Page,
        "/status.json" => Route::StatusJson,
        "/api/view.json" => Route::ViewJson,
        "/spectrogram.png" => match query_param(query, "file") {
            None => Route::Spectrogram(None),
            Some(Err(())) => Route::BadName(query.to_string()),
            Some(Ok(name)) => match RecordingName::try_from(name.as_str()) {
                Ok(name) => Route::Spectrogram(Some(name)),
                Err(e) => Route::BadName(e.to_string()),
            },
        },
        _ => Route::NotFound,
    }
}

/// The answer to `method url` from the state folder at `state_dir`, at `now`.
pub fn respond(method: &str, url: &str, state_dir: &Path, now: Timestamp) -> Response {
    match route(method, url) {
        Route::MethodNotAllowed => Response::text(405, "read-only: only GET and HEAD"),
        Route::NotFound => Response::text(404, "not found"),
        Route::BadName(why) => Response::text(400, why),
        Route::Page => Response {
            content_type: "text/html; charset=utf-8",
            ..Response::ok("", view::page(&view::gather(state_dir, now)))
        },
        Route::ViewJson => {
            let body = serde_json::to_vec(&view::gather(state_dir, now)).unwrap_or_default();
            Response::ok(JSON, body)
        }
        Route::StatusJson => Response::text(
            404,
            "status.json stays on the device: the page serves what it shows at /api/view.json",
        ),
        Route::Spectrogram(name) => spectrogram_of(name, state_dir, now),
    }
}

fn spectrogram_of(name: Option<RecordingName>, state_dir: &Path, now: Timestamp) -> Response {
    let Some(storage) = view::storage_of(state_dir) else {
        return Response::text(404, "no recorder configuration in the state folder");
    };
    // Rendering is the page's one costly work: the energy policy pauses it first (the status
    // itself, which a technician on site needs most then, is still served).
    if power_saving(state_dir) {
        return Response::text(
            503,
            "spectrograms are paused to save power (DEP_E906, spec.power.saving); they come back with power",
        );
    }
    let name = match name {
        Some(name) => Some(name),
        None => view::gather(state_dir, now)
            .last_recording
            .and_then(|n| RecordingName::try_from(n.as_str()).ok()),
    };
    let recordings_dir = storage.join(crate::storage::RECORDINGS_DIR);
    // Listed in metadata.db first, then inside recordings/ once links are resolved.
    let Some(wav) = name
        .filter(|n| n.listed(&storage))
        .and_then(|n| n.resolve(&recordings_dir))
    else {
        return Response::text(404, "no such recording");
    };
    let cache = spectrogram::Cache::new(cache_dir(state_dir), recordings_dir.clone());
    match spectrogram::cached(&wav, &cache) {
        Ok(png) => Response {
            immutable: true,
            ..Response::ok("image/png", png)
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot render a spectrogram");
            Response::text(500, e.to_string())
        }
    }
}

/// Whether the recorder says the energy policy pauses work (its output in status.json).
fn power_saving(state_dir: &Path) -> bool {
    let path = crate::state_dir::StateDir::new(state_dir.into()).device_status();
    let Ok(doc) = crate::status::read(&path) else {
        return false;
    };
    let out: Option<crate::recorder::RecorderOutput> =
        doc.output_as(crate::spec::recorder::RECORDER_COMPONENT);
    out.and_then(|o| o.power)
        .is_some_and(|p| p.saving >= crate::spec::power::SavingLevel::Reduce)
}

/// `<state>/run/cache/spectrograms`: in the run-time folder, on a RAM file system when the
/// device has one, never beside the recordings.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    crate::fsutil::run_dir(state_dir)
        .join("cache")
        .join("spectrograms")
}

/// Removes the pictures older roosts cached in `<state>/cache/spectrograms` (derived files on
/// the card, competing with recordings): their `.png` files only, then the folders if empty.
fn remove_old_cache(state_dir: &Path) {
    let old = state_dir.join("cache").join("spectrograms");
    for entry in std::fs::read_dir(&old).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "png") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(&old);
    let _ = std::fs::remove_dir(state_dir.join("cache"));
}

/// The decoded value of `key` in a query string; `Err` when its escapes are not UTF-8.
fn query_param(query: &str, key: &str) -> Option<Result<String, ()>> {
    let value = query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)?
        .1;
    Some(percent_decode(value))
}

fn percent_decode(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3).ok_or(())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// Serves the page on `listen` until the process is stopped (it holds no state to save, so
/// SIGTERM's default ending is right). The transport and its limits are in [`http`].
///
/// # Errors
/// [`ServeError::Bind`] when the address cannot be listened on.
pub fn run(
    listen: SocketAddr,
    state_dir: &Path,
    password_file: Option<PathBuf>,
) -> Result<(), ServeError> {
    let bind_err = |source| ServeError::Bind {
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    // Derived files only; gone is fine.
    remove_old_cache(state_dir);
    let _ = crate::fsutil::prepare_run_dir(state_dir);
    if let Some(file) = &password_file
        && let Err(why) = auth::read_password(file)
    {
        // Served anyway (it fails closed): the file may be fixed while it runs.
        tracing::warn!(%why, "the page's password file cannot be read: nobody gets in until it can");
    }
    tracing::info!(address = %local, state_dir = %state_dir.display(), password = password_file.is_some(), "serving the read-only page");
    http::serve(listener, state_dir, password_file).map_err(bind_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified() {
        assert_eq!(route("GET", "/"), Route::Page);
        assert_eq!(route("HEAD", "/status.json"), Route::StatusJson);
        assert_eq!(route("GET", "/api/view.json?x=1"), Route::ViewJson);
        assert_eq!(route("GET", "/spectrogram.png"), Route::Spectrogram(None));
        assert_eq!(
            route("GET", "/spectrogram.png?file=2026%2F11%2Fa.wav"),
            Route::Spectrogram(Some(RecordingName::try_from("2026/11/a.wav").unwrap()))
        );
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            assert_eq!(route(method, "/"), Route::MethodNotAllowed);
        }
        assert_eq!(route("GET", "/etc/passwd"), Route::NotFound);
    }

    #[test]
    fn traversal_is_refused_before_any_file_is_read() {
        for url in [
            "/spectrogram.png?file=../../etc/passwd",
            "/spectrogram.png?file=..%2F..%2Fetc%2Fpasswd.wav",
            "/spectrogram.png?file=%2Fetc%2Fpasswd.wav",
            "/spectrogram.png?file=%2e%2e/x.wav",
            "/spectrogram.png?file=%ff.wav",
            "/spectrogram.png?file=%zz",
        ] {
            assert!(matches!(route("GET", url), Route::BadName(_)), "{url}");
        }
        let dir = tempfile::tempdir().unwrap();
        let r = respond(
            "GET",
            "/spectrogram.png?file=../../etc/passwd",
            dir.path(),
            Timestamp::now(),
        );
        assert_eq!(r.status, 400);
    }

    #[test]
    fn an_empty_state_folder_still_gets_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let page = respond("GET", "/", dir.path(), now);
        assert_eq!(page.status, 200);
        assert!(String::from_utf8(page.body).unwrap().contains("No status"));
        assert_eq!(respond("GET", "/status.json", dir.path(), now).status, 404);
        assert_eq!(
            respond("GET", "/spectrogram.png", dir.path(), now).status,
            404
        );
        assert_eq!(respond("POST", "/", dir.path(), now).status, 405);
    }

    fn write_wav(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for n in 0..16_000 {
            w.write_sample(((n % 40) * 500) as i16).unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn only_recordings_listed_in_metadata_db_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let storage = state.join("storage");
        let config = serde_json::json!({
            "deployment": "unit",
            "storage": {"path": storage, "minFreeSpace": "0", "onLowSpace": "stop"},
            "recorder": {"device": "default", "sampleRate": 8000, "channels": 1,
                         "sampleFormat": "i16", "duration": "2s"},
        });
        std::fs::write(
            <crate::recorder::RecordConfig as crate::component::ConfigFile>::path(state),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        let config: crate::recorder::RecordConfig = serde_json::from_value(config).unwrap();
        let mut db = crate::storage::Storage::open(&storage, &config.storage).unwrap();
        let start: Timestamp = "2026-11-30T01:00:00Z".parse().unwrap();
        let deployment = db.start_deployment("unit", None, start).unwrap();
        let listed = db.recordings_dir().join("2026/listed.wav");
        let unlisted = db.recordings_dir().join("2026/unlisted.wav");
        write_wav(&listed);
        write_wav(&unlisted);
        db.register(
            &crate::storage::NewRecording {
                path: listed,
                datetime: start,
                duration_s: 2.0,
                samplerate_hz: 8_000,
                audio_channels: 1,
            },
            &deployment,
        )
        .unwrap();
        let now = Timestamp::now();
        let get = |name: &str| {
            respond("GET", &format!("/spectrogram.png?file={name}"), state, now).status
        };
        assert_eq!(get("2026/listed.wav"), 200);
        assert_eq!(get("2026/unlisted.wav"), 404);
        assert!(!cache_dir(state).join("unlisted.png").exists());
    }
}
