//! The low-space verdict, pure: whether a file may be started given the free space, the
//! storage's `minFreeSpace` and `onLowSpace`, and how much of it fits on a nearly full disk.

use crate::spec::recorder::{ByteSize, OnLowSpace, human_bytes};
use crate::storage::DB_RESERVE_BYTES;

use super::wav::RESERVE_EXTRA;

/// Whether a file of some size may be started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The file and minFreeSpace fit.
    Room,
    /// Below minFreeSpace with `deleteOldest`: ask the registrar to free `wanted_free` bytes; the
    /// file goes ahead until it says it cannot help.
    MakeRoom {
        /// Free bytes wanted: minFreeSpace plus the file.
        wanted_free: u64,
    },
    /// Below minFreeSpace with `stop` or `discardNew`: the file is not recorded (DEP_E302).
    Refuse(String),
}

/// The verdict for a file of `file_bytes` with `free` bytes free.
pub fn verdict(free: u64, min_free: ByteSize, on_low: OnLowSpace, file_bytes: u64) -> Verdict {
    let wanted_free = min_free.bytes().saturating_add(file_bytes);
    if free >= wanted_free {
        return Verdict::Room;
    }
    match on_low {
        OnLowSpace::DeleteOldest => Verdict::MakeRoom { wanted_free },
        OnLowSpace::Stop => Verdict::Refuse(low_space_message(
            free,
            min_free,
            "onLowSpace: stop; recording paused until there is space",
        )),
        OnLowSpace::DiscardNew => Verdict::Refuse(low_space_message(
            free,
            min_free,
            "onLowSpace: discardNew; this file is discarded",
        )),
    }
}

/// DEP_E302's message: the free space, the limit, and what `onLowSpace` does about it.
pub fn low_space_message(free: u64, min_free: ByteSize, what: &str) -> String {
    format!(
        "free space {} is below minFreeSpace {min_free}; {what}",
        human_bytes(free)
    )
}

/// Frames of a file wanting `wanted` frames that fit in `free` bytes, keeping metadata.db's
/// reserve and the WAV header's; `None` when less than a second fits and the file wanted more
/// (the disk is full: DEP_E303). A file cut short is still recorded and registered.
pub fn frames_that_fit(free: u64, wanted: u64, bytes_per_frame: u64, rate: u32) -> Option<u64> {
    let room = free.saturating_sub(DB_RESERVE_BYTES + RESERVE_EXTRA) / bytes_per_frame.max(1);
    let frames = wanted.min(room);
    (frames >= u64::from(rate) || frames == wanted).then_some(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// (free MiB, minFreeSpace MiB, onLowSpace, file MiB) -> verdict.
    #[test]
    fn the_verdict_follows_min_free_space_and_on_low_space() {
        let cases = [
            (1000, 500, OnLowSpace::Stop, 10, None),
            (510, 500, OnLowSpace::DiscardNew, 10, None),
            (
                509,
                500,
                OnLowSpace::DeleteOldest,
                10,
                Some("make room 510"),
            ),
            (509, 500, OnLowSpace::Stop, 10, Some("stop")),
            (100, 500, OnLowSpace::DiscardNew, 10, Some("discardNew")),
            (0, 0, OnLowSpace::Stop, 1, Some("stop")),
            (5, 0, OnLowSpace::Stop, 1, None),
        ];
        for (free, min, on_low, file, want) in cases {
            let got = verdict(free * MIB, ByteSize(min * MIB), on_low, file * MIB);
            let got = match &got {
                Verdict::Room => None,
                Verdict::MakeRoom { wanted_free } => {
                    Some(format!("make room {}", wanted_free / MIB))
                }
                Verdict::Refuse(m) => {
                    assert!(m.starts_with("free space "), "{m}");
                    Some(
                        if m.contains("stop;") {
                            "stop"
                        } else {
                            "discardNew"
                        }
                        .to_string(),
                    )
                }
            };
            assert_eq!(
                got.as_deref(),
                want,
                "{free} MiB free, {min} MiB min, {on_low:?}"
            );
        }
    }

    /// (free bytes, frames wanted) -> frames recorded, at 48 kHz mono 16-bit (2 bytes a frame).
    #[test]
    fn a_nearly_full_disk_takes_what_fits_or_nothing_below_a_second() {
        let reserve = DB_RESERVE_BYTES + RESERVE_EXTRA;
        let cases = [
            (reserve + 2 * 2_880_000, 2_880_000, Some(2_880_000)),
            (reserve + 2 * 96_000, 2_880_000, Some(96_000)),
            (reserve + 2 * 48_000, 2_880_000, Some(48_000)),
            (reserve + 2 * 47_999, 2_880_000, None),
            (reserve, 2_880_000, None),
            (0, 2_880_000, None),
            // A file shorter than a second (the end of a window) that fits is recorded.
            (reserve + 2 * 100, 100, Some(100)),
        ];
        for (free, wanted, want) in cases {
            assert_eq!(
                frames_that_fit(free, wanted, 2, 48_000),
                want,
                "{free} B free"
            );
        }
    }
}
