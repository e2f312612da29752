//! The sd_notify protocol, without libsystemd: one datagram per state change to the socket
//! named by `$NOTIFY_SOCKET`, and the watchdog interval from `$WATCHDOG_USEC`. This module only
//! reads the environment; it never changes it (the variables stay visible to children, which
//! is harmless because roost's components run as their own units or with their own environment).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Sends `state` (e.g. `"READY=1"`, `"WATCHDOG=1"`, `"STATUS=..."`) to the service manager.
/// Returns `Ok(false)` when roost was not started by a manager that listens (`$NOTIFY_SOCKET`
/// unset), `Ok(true)` when the datagram was sent.
pub fn sd_notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => notify_socket(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notify socket `socket`: a path, or an abstract name written `@name`.
pub fn notify_socket(socket: &OsStr, state: &str) -> io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sender.send_to_addr(state.as_bytes(), &addr)?
    } else {
        sender.send_to(state.as_bytes(), socket)?
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to the notify socket",
        ));
    }
    Ok(())
}

/// How often the manager expects `WATCHDOG=1`, when it asked for it: `$WATCHDOG_USEC`, provided
/// `$WATCHDOG_PID` is unset or names this process. Send at half this interval.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid {
        Some(p) if p.trim().parse::<u32>().ok() != Some(me) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// Whether the loop makes progress, shared with the watchdog task: the task feeds systemd's
/// watchdog while the loop waits for a trigger or has made progress recently, and stops when
/// the loop is stuck inside one turn, so that systemd restarts a hung roost.
#[derive(Clone, Debug, Default)]
pub struct Liveness(Arc<Mutex<Option<tokio::time::Instant>>>);

impl Liveness {
    /// The loop starts a turn, or made progress within one (an action done).
    pub fn busy(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
    }

    /// The loop waits for its next trigger.
    pub fn idle(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether the loop is idle or made progress less than `limit` ago.
    pub fn alive(&self, limit: Duration) -> bool {
        let busy_since = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        busy_since.is_none_or(|t| t.elapsed() < limit)
    }
}

/// Feeds the watchdog from its own task every half of `watchdog` (`WatchdogSec`), on absolute
/// deadlines (a late tick is followed by the next one a full period later, never by a burst),
/// as long as `liveness` says the loop is alive; `feed` sends `WATCHDOG=1`.
pub fn spawn_watchdog(
    watchdog: Duration,
    liveness: Liveness,
    feed: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let period = watchdog / 2;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        loop {
            ticks.tick().await;
            if liveness.alive(watchdog) {
                feed();
            } else {
                tracing::error!("the reconcile loop is stuck; no longer feeding the watchdog");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_needs_a_positive_interval_for_this_process() {
        assert_eq!(
            watchdog_from(Some("3000000"), None, 7),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            watchdog_from(Some("3000000"), Some("7"), 7),
            Some(Duration::from_secs(3))
        );
        assert_eq!(watchdog_from(Some("3000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_from(None, Some("7"), 7), None);
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        notify_socket(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("roost-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        notify_socket(OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    /// Under a busy loop (a trigger every 100 ms) the watchdog is fed every 2 s for
    /// WatchdogSec=4s; once the loop is stuck in one turn, feeding stops after 4 s.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_fed_on_cadence_until_the_loop_is_stuck() {
        let fed = Arc::new(Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        let liveness = Liveness::default();
        let log = fed.clone();
        spawn_watchdog(Duration::from_secs(4), liveness.clone(), move || {
            log.lock()
                .unwrap()
                .push(start.elapsed().as_millis() as u64 / 1000)
        });
        let mut busy = tokio::time::interval(Duration::from_millis(100));
        while start.elapsed() < Duration::from_secs(19) {
            busy.tick().await;
            liveness.busy();
            tokio::task::yield_now().await;
            liveness.idle();
        }
        // Stuck inside a turn from 19 s on: fed at 20 s and 22 s (within 4 s), not after.
        liveness.busy();
        tokio::time::sleep(Duration::from_secs(12)).await;
        let fed = fed.lock().unwrap().clone();
        assert_eq!(fed, vec![2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]);
    }
}
