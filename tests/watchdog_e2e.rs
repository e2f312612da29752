//! The systemd watchdog seen from the manager's side: `roost run` with `NOTIFY_SOCKET` pointing
//! at a datagram socket this test reads and `WATCHDOG_USEC=4000000`, while the desired-state
//! file is rewritten with the same content every 0.1 s (each write wakes the loop). The field
//! report: no `WATCHDOG=1` for 14 s, so systemd would have killed roost every 4 s.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Roost, deployment, sleeper, unique};

#[test]
fn wake_ups_every_half_second_never_starve_the_watchdog() {
    let yaml = deployment("watchdog", "", &sleeper("idle", &unique("wd")));
    let mut roost = Roost::new(&yaml);
    let socket_path = roost.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let file = roost.file.clone();
    roost.start_with(
        &file,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "4000000"),
        ],
    );
    let start = Instant::now();
    let mut last_rewrite = Instant::now();
    let mut pings = Vec::new();
    let mut ready = false;
    let mut buf = [0u8; 256];
    while start.elapsed() < Duration::from_secs(12) {
        if last_rewrite.elapsed() >= Duration::from_millis(100) {
            std::fs::write(&file, &yaml).unwrap();
            last_rewrite = Instant::now();
        }
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            ready |= text.contains("READY=1");
            if text.contains("WATCHDOG=1") {
                pings.push(start.elapsed());
            }
        }
    }
    roost.stop();
    assert!(ready, "READY=1 was sent");
    let mut gaps: Vec<f64> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    gaps.insert(0, pings.first().map_or(99.0, |p| p.as_secs_f64()));
    let worst = gaps.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "figure: {} WATCHDOG=1 in 12 s, longest gap {worst:.2} s (WatchdogSec 4 s)",
        pings.len()
    );
    // Within WatchdogSec, with room for a loaded machine: systemd kills at 4 s.
    assert!(pings.len() >= 4, "{pings:?}");
    assert!(worst < 3.5, "gaps {gaps:?}");
}
