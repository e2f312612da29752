//! `roost serve`: a read-only web page for a person on site with a phone on the device's
//! hotspot. It shows what `roost status` says, each component and problem, and spectrograms of
//! the recordings, and serves status.json as it is. It owns the HTTP answers ([`respond`] is a
//! pure function of the request and the state folder) and the spectrogram cache under
//! `<state>/cache/spectrograms/`; it must never change the device: only GET and HEAD are
//! answered, and the only file it writes is that cache.

pub mod files;
pub mod spectrogram;
pub mod view;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use files::RecordingName;

/// Threads answering requests: one slow spectrogram render does not hold up the page.
const WORKERS: usize = 2;

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

    fn text(status: u16, message: impl Into<String>) -> Self {
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
        Route::StatusJson => {
            let path = crate::state_dir::StateDir::new(state_dir.into()).status();
            // The bytes as they are, so fields newer than this binary are not lost.
            match std::fs::read(&path) {
                Ok(bytes) => Response::ok(JSON, bytes),
                Err(_) => Response::text(404, "no status.json: roost has not run here"),
            }
        }
        Route::Spectrogram(name) => spectrogram_of(name, state_dir, now),
    }
}

fn spectrogram_of(name: Option<RecordingName>, state_dir: &Path, now: Timestamp) -> Response {
    let Some(storage) = view::storage_of(state_dir) else {
        return Response::text(404, "no recorder configuration in the state folder");
    };
    let name = match name {
        Some(name) => Some(name),
        None => view::gather(state_dir, now)
            .last_recording
            .and_then(|n| RecordingName::try_from(n.as_str()).ok()),
    };
    let recordings_dir = storage.join(crate::storage::RECORDINGS_DIR);
    let Some(wav) = name.and_then(|n| n.resolve(&recordings_dir)) else {
        return Response::text(404, "no such recording");
    };
    match spectrogram::cached(&wav, &cache_dir(state_dir)) {
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

/// `<state>/cache/spectrograms`.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cache").join("spectrograms")
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
/// SIGTERM's default ending is right).
pub fn run(listen: SocketAddr, state_dir: &Path) -> Result<(), ServeError> {
    let bind_err = |source| ServeError::Bind {
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    // tiny_http: small, synchronous and maintained; a page for one person at a time needs no
    // async runtime, and the reconciler's tokio runtime stays out of this process.
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| bind_err(std::io::Error::other(e)))?;
    tracing::info!(address = %local, state_dir = %state_dir.display(), "serving the read-only page");
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                while let Ok(request) = server.recv() {
                    answer(request, state_dir);
                }
            });
        }
    });
    Ok(())
}

fn answer(request: tiny_http::Request, state_dir: &Path) {
    let method = request.method().as_str().to_string();
    let response = respond(&method, request.url(), state_dir, Timestamp::now());
    tracing::debug!(%method, url = request.url(), status = response.status, "request");
    let header = |name: &str, value: &str| {
        tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
    };
    let cache = match response.immutable {
        true => "max-age=86400",
        false => "no-store",
    };
    let headers = [
        header("Content-Type", response.content_type),
        header("Cache-Control", cache),
        // Nothing but this device's own page, even if a recording's name were hostile.
        header(
            "Content-Security-Policy",
            "default-src 'none'; img-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
        ),
        (response.status == 405)
            .then(|| header("Allow", "GET, HEAD"))
            .flatten(),
    ];
    let mut reply = tiny_http::Response::from_data(response.body).with_status_code(response.status);
    for h in headers.into_iter().flatten() {
        reply.add_header(h);
    }
    // tiny_http leaves the body out for HEAD. A client gone away is not an error of ours.
    let _ = request.respond(reply);
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
}
