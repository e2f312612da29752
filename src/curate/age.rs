//! How long a recording has really existed on this device, whatever the wall clock says. A Pi
//! without a real-time clock boots in the past and is set by NTP minutes later; a clock can be
//! stepped ahead and back. The difference of two wall-clock readings is then no age, and
//! `maxAge` must never delete by it. This room owns the device clock: seconds of real elapsed
//! time, counted with `CLOCK_BOOTTIME` (which no clock step moves) and carried across reboots
//! in metadata.db's `roost_clock` row. Pure rules take their readings as parameters; only
//! [`Reading::now`] touches the system. It never decides what is deleted (retention does).
//!
//! ```text
//! same boot:   device = stored.device + (boottime - stored.boottime)
//! new boot:    device = stored.device + (now - stored reading), by the wall clock, only when
//!                       it was synchronised at both readings; else + nothing (ages run slow,
//!                       never fast). Never this boot's uptime: a card moved into a device
//!                       that has been up for weeks has not existed those weeks.
//! recording:   made   = device at first sight - its wall-clock age then, clamped to
//!                       0 ..= its duration + FIRST_SIGHT_SLACK (a wall age beyond that is a
//!                       clock set or stepped since, or a curator that was down: not trusted)
//! age          = device now - made   (never more than it really existed)
//! ```

use jiff::Timestamp;

/// How late after its end the curator normally first sees a recording (s): a wall-clock age
/// beyond the recording's duration plus this is not believed.
pub const FIRST_SIGHT_SLACK_S: f64 = 30.0;
/// How far apart (s) a recording's wall-clock age and its real age may be before it is
/// counted as one whose clock disagrees.
pub const DISAGREE_AFTER_S: f64 = 600.0;
/// The device clock is written to metadata.db when it moved this far (s) since it was last
/// written: a power cut loses at most this much age (ages then run slow, never fast).
pub const PERSIST_EVERY_S: f64 = 600.0;

/// One reading of the system's clocks.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// `/proc/sys/kernel/random/boot_id`: which boot this is.
    pub boot_id: String,
    /// `CLOCK_BOOTTIME`, s: real time since this boot, suspend included, never stepped.
    pub boottime_s: f64,
    /// The wall clock.
    pub wall: Timestamp,
    /// Whether the kernel says the wall clock is synchronised.
    pub wall_synced: bool,
}

pub use crate::storage::curation::Anchor;

impl Reading {
    /// The system's clocks now. A kernel without a boot id gives an empty one (every reading
    /// then looks like the same boot, which is right within one run).
    pub fn now() -> Self {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let boottime_s = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
            .unwrap_or(0.0);
        Self {
            boot_id,
            boottime_s,
            wall: Timestamp::now(),
            wall_synced: crate::recorder::clock::synchronized().unwrap_or(false),
        }
    }
}

/// The device clock at `now`, from the last stored anchor (`None`: the first reading ever,
/// which starts the clock at 0).
pub fn advance(stored: Option<&Anchor>, now: &Reading) -> Anchor {
    let device_s = match stored {
        None => 0.0,
        Some(a) if a.boot_id == now.boot_id => {
            a.device_s + (now.boottime_s - a.boottime_s).max(0.0)
        }
        Some(a) => a.device_s + since_synchronised(a, now),
    };
    Anchor {
        boot_id: now.boot_id.clone(),
        boottime_s: now.boottime_s,
        device_s,
        wall: now.wall,
        wall_synced: now.wall_synced,
    }
}

/// Seconds between the stored reading (another boot's) and now, only when both wall readings
/// are synchronised (two synchronised readings are on one true timeline); otherwise 0.
fn since_synchronised(stored: &Anchor, now: &Reading) -> f64 {
    if !(stored.wall_synced && now.wall_synced) {
        return 0.0;
    }
    now.wall.duration_since(stored.wall).as_secs_f64().max(0.0)
}

/// When a recording that started at `start` (wall clock) and lasts `duration_s` was made, in
/// device seconds, judged at its first sight (`device_now`, `wall_now`).
pub fn made_at(device_now: f64, wall_now: Timestamp, start: Timestamp, duration_s: f64) -> f64 {
    let longest = if duration_s.is_finite() && duration_s > 0.0 {
        duration_s.min(crate::storage::MAX_DURATION_S) + FIRST_SIGHT_SLACK_S
    } else {
        FIRST_SIGHT_SLACK_S
    };
    let wall_age = wall_now.duration_since(start).as_secs_f64();
    device_now - wall_age.clamp(0.0, longest)
}

/// Whether a recording's wall-clock age and its real age disagree (a clock set or stepped
/// since it was made, or first seen long after it was made).
pub fn disagrees(wall_now: Timestamp, start: Timestamp, real_age_s: f64) -> bool {
    let wall_age = wall_now.duration_since(start).as_secs_f64();
    (wall_age - real_age_s).abs() > DISAGREE_AFTER_S
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn reading(boot: &str, boottime_s: f64, wall: &str, synced: bool) -> Reading {
        Reading {
            boot_id: boot.into(),
            boottime_s,
            wall: t(wall),
            wall_synced: synced,
        }
    }

    #[test]
    fn within_a_boot_only_real_time_counts_whatever_the_wall_clock_does() {
        let first = advance(None, &reading("a", 100.0, "2000-01-01T00:00:00Z", false));
        assert_eq!(first.device_s, 0.0);
        // NTP sets the clock 26 years ahead 80 s later: 80 s passed, not 26 years.
        let set = advance(
            Some(&first),
            &reading("a", 180.0, "2026-12-06T08:00:00Z", true),
        );
        assert_eq!(set.device_s, 80.0);
        // Stepped back by a day 10 s later: still 10 s.
        let back = advance(
            Some(&set),
            &reading("a", 190.0, "2026-12-05T08:00:10Z", true),
        );
        assert_eq!(back.device_s, 90.0);
    }

    #[test]
    fn across_a_reboot_time_off_counts_only_between_synchronised_readings() {
        let before = Anchor {
            boot_id: "a".into(),
            boottime_s: 5000.0,
            device_s: 1000.0,
            wall: t("2026-06-01T12:00:00Z"),
            wall_synced: true,
        };
        // Back an hour later (wall), 60 s after boot, clock synchronised: 3600 s.
        let synced = advance(
            Some(&before),
            &reading("b", 60.0, "2026-06-01T13:00:00Z", true),
        );
        assert_eq!(synced.device_s, 1000.0 + 3600.0);
        // Not synchronised (booted in 2000 without a real-time clock): nothing is added, and
        // from here on real time counts.
        let unsynced = advance(
            Some(&before),
            &reading("b", 60.0, "2000-01-01T00:01:00Z", false),
        );
        assert_eq!(unsynced.device_s, 1000.0);
        let later = advance(
            Some(&unsynced),
            &reading("b", 90.0, "2026-06-01T13:00:30Z", true),
        );
        assert_eq!(later.device_s, 1030.0);
        // A synchronised clock behind the stored one never takes time away.
        let behind = advance(
            Some(&before),
            &reading("b", 60.0, "2026-05-01T00:00:00Z", true),
        );
        assert_eq!(behind.device_s, 1000.0);
        // A card moved into a device that has been up for 45 days, clocks not synchronised:
        // its recordings did not exist those 45 days.
        let moved = advance(
            Some(&before),
            &reading("c", 45.0 * 86_400.0, "2026-06-01T12:05:00Z", false),
        );
        assert_eq!(moved.device_s, 1000.0);
    }

    #[test]
    fn a_recording_is_made_no_earlier_than_its_duration_and_slack_before_first_sight() {
        let now = t("2026-06-01T12:00:00Z");
        // Seen 5 s after its 60 s: made 65 s ago.
        assert_eq!(made_at(1000.0, now, t("2026-06-01T11:58:55Z"), 60.0), 935.0);
        // Its time 26 years back (made before NTP set the clock): at most 90 s ago.
        assert_eq!(made_at(1000.0, now, t("2000-01-01T00:00:00Z"), 60.0), 910.0);
        // In the future (made while the clock was ahead): now.
        assert_eq!(
            made_at(1000.0, now, t("2026-06-02T13:00:00Z"), 60.0),
            1000.0
        );
        // A duration that is no number: the slack only.
        assert_eq!(
            made_at(1000.0, now, t("2000-01-01T00:00:00Z"), f64::INFINITY),
            970.0
        );
        assert_eq!(
            made_at(1000.0, now, t("2000-01-01T00:00:00Z"), f64::NAN),
            970.0
        );
    }

    #[test]
    fn disagreement_is_more_than_ten_minutes_either_way() {
        let now = t("2026-06-01T12:00:00Z");
        assert!(!disagrees(now, t("2026-06-01T11:00:00Z"), 3600.0));
        assert!(!disagrees(now, t("2026-06-01T11:00:00Z"), 3100.0));
        assert!(disagrees(now, t("2000-01-01T00:00:00Z"), 100.0));
        assert!(disagrees(now, t("2026-06-02T12:00:00Z"), 100.0));
    }
}
