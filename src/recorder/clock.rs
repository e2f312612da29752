//! Whether the wall clock is synchronised, as the kernel knows it: NTP daemons (systemd-timesyncd,
//! chrony, ntpd) and GPS time services clear the kernel's "unsynchronised" status when they
//! discipline the clock, and a board without a real-time clock boots with it set. Read-only: this
//! module never changes the clock.

/// `Some(true)` when the kernel says the wall clock is synchronised, `Some(false)` when it says
/// not, `None` when it cannot be asked (not Linux, or the call failed).
pub fn synchronized() -> Option<bool> {
    read_state().map(|(state, status)| is_synchronized(state, status))
}

/// The kernel's answer: `state` is adjtimex's return value, `status` its `STA_*` bits.
pub fn is_synchronized(state: i32, status: i32) -> bool {
    state != nix::libc::TIME_ERROR && status & nix::libc::STA_UNSYNC == 0
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn read_state() -> Option<(i32, i32)> {
    // SAFETY: adjtimex with `modes == 0` only reads the kernel's clock state into the zeroed
    // struct we own; no privilege is needed and nothing is changed. No safe wrapper exists in
    // nix, and timedated's D-Bus property (the other source) needs a bus and systemd.
    let mut tx: nix::libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { nix::libc::adjtimex(&mut tx) };
    (state >= 0).then_some((state, tx.status))
}

#[cfg(not(target_os = "linux"))]
fn read_state() -> Option<(i32, i32)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::libc::{STA_PLL, STA_UNSYNC, TIME_ERROR, TIME_OK};

    #[test]
    fn unsync_bit_or_time_error_mean_not_synchronised() {
        assert!(is_synchronized(TIME_OK, STA_PLL));
        assert!(!is_synchronized(TIME_OK, STA_PLL | STA_UNSYNC));
        assert!(!is_synchronized(TIME_ERROR, 0));
        assert!(synchronized().is_some(), "adjtimex answers on Linux");
    }
}
