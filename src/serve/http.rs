//! The page's HTTP transport: hyper's HTTP/1 server on a one-thread tokio runtime, with the
//! limits that keep a slow or hostile client from holding the page (see docs/PAGE.md).
//! Answers come from [`super::respond`], a plain function run on a blocking thread so a
//! spectrogram render never stalls the accept loop.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use jiff::Timestamp;

use super::Response;

/// Connections served at once. One more evicts the oldest: a crowd of slow clients (or one
/// greedy client) holding every slot cannot keep the technician's phone waiting.
pub const MAX_CONNECTIONS: usize = 64;
/// A client has this long from connecting to the end of its request head.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// The longest a connection may live, answer included (a client that reads its answer a byte
/// at a time is cut off here).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// The largest request head read, in bytes (hyper's smallest allowed buffer); more gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// The longest request target, in bytes; longer gets 414.
pub const MAX_TARGET_BYTES: usize = 2 * 1024;

const CSP: &str = "default-src 'none'; img-src 'self'; connect-src 'self'; \
                   style-src 'unsafe-inline'; script-src 'unsafe-inline'";

/// Serves `listener` until the process ends, answering with `respond(method, target, state)`.
///
/// # Errors
/// The runtime cannot be built or the listener cannot be registered with it.
pub fn serve(
    listener: std::net::TcpListener,
    state_dir: &Path,
    password_file: Option<PathBuf>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Renders and file reads: two at once at most, so many clients cost bounded memory.
        .max_blocking_threads(2)
        .build()?;
    let site = Arc::new(Site {
        state_dir: state_dir.to_path_buf(),
        password_file,
        wrong: tokio::sync::Mutex::new(()),
    });
    runtime.block_on(accept_loop(listener, site))
}

/// What every answer needs: the state folder and the password, if one is asked.
struct Site {
    state_dir: PathBuf,
    password_file: Option<PathBuf>,
    /// Held while a wrong password waits out its delay: guesses are answered one at a time.
    wrong: tokio::sync::Mutex<()>,
}

/// The connections being served, oldest first, each with what ends it.
#[derive(Default)]
struct Live {
    next: u64,
    connections: std::collections::VecDeque<(u64, tokio::task::AbortHandle)>,
}

impl Live {
    /// Makes room for one more: the oldest connection ends when all slots are taken (a
    /// request that is answered takes milliseconds; one still there is the slowest).
    fn make_room(&mut self) {
        while self.connections.len() >= MAX_CONNECTIONS {
            if let Some((_, oldest)) = self.connections.pop_front() {
                oldest.abort();
            }
        }
    }

    fn ended(&mut self, id: u64) {
        self.connections.retain(|(i, _)| *i != id);
    }
}

async fn accept_loop(listener: std::net::TcpListener, site: Arc<Site>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let live = Arc::new(std::sync::Mutex::new(Live::default()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: go on after a pause.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let site = site.clone();
        let mut guard = live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.make_room();
        let id = guard.next;
        guard.next += 1;
        let done = live.clone();
        let task = tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, site.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_DEADLINE)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // A client gone or too slow is not an error of ours.
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
            done.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .ended(id);
        });
        guard.connections.push_back((id, task.abort_handle()));
    }
}

async fn answer(
    request: Request<Incoming>,
    site: Arc<Site>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let target = request.uri().to_string();
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let verdict = super::auth::judge(site.password_file.as_deref(), authorization.as_deref());
    let response = if verdict != super::auth::Verdict::Allowed {
        refused(verdict, &site).await
    } else if target.len() > MAX_TARGET_BYTES {
        Response::text(414, "request target too long")
    } else {
        let (m, t, dir): (String, String, PathBuf) =
            (method.to_string(), target.clone(), site.state_dir.clone());
        tokio::task::spawn_blocking(move || super::respond(&m, &t, &dir, Timestamp::now()))
            .await
            .unwrap_or_else(|_| Response::text(500, "the answer failed"))
    };
    tracing::debug!(%method, %target, status = response.status, "request");
    let ask = response.status == 401;
    let mut reply = to_hyper(response, method == Method::HEAD);
    if ask {
        reply.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(super::auth::CHALLENGE),
        );
    }
    Ok(reply)
}

/// The answer to a request without the right password.
async fn refused(verdict: super::auth::Verdict, site: &Site) -> Response {
    use super::auth::Verdict;
    match verdict {
        Verdict::Unavailable(why) => {
            tracing::warn!(%why, "the page's password file cannot be read");
            Response::text(503, "the page's password cannot be read on the device")
        }
        Verdict::Wrong => {
            let _one_at_a_time = site.wrong.lock().await;
            tokio::time::sleep(super::auth::WRONG_PASSWORD_DELAY).await;
            Response::text(401, "wrong password")
        }
        Verdict::Ask | Verdict::Allowed => Response::text(401, "this page asks for a password"),
    }
}

fn to_hyper(response: Response, head: bool) -> hyper::Response<Full<Bytes>> {
    let cache = match response.immutable {
        true => "max-age=86400",
        false => "no-store",
    };
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let allow = response.status == 405;
    let length = response.body.len();
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(response.body)
    };
    let mut reply = hyper::Response::new(Full::new(body));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    // Nothing but this device's own page, even if a recording's name were hostile.
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    if allow {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if head {
        headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    reply
}
