//! The recorder's rules about time, pure: which wall-clock instant a frame was captured at, how
//! fast samples arrive against the monotonic clock, when the stream is re-anchored on the wall
//! clock, and when two files overlap. Every function takes the instant it judges at ([`Now`]);
//! nothing here reads a clock, so the rules are table-tested on any architecture without
//! libfaketime.
//!
//! A stream's frame 0 gets a wall-clock time once (the anchor) and every later frame is
//! `anchor + index / sampleRate`: files of a continuous recording are contiguous. The monotonic
//! clock (no step moves it) tells input far off real time (a file, an unpaced FIFO) from a wall
//! clock that moved (an NTP step, a drifting sound card).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jiff::Timestamp;

/// Nanoseconds per second, as the timeline's arithmetic uses them.
const NS: i128 = 1_000_000_000;
/// Sample time and wall time further apart than this, between files, re-anchor the stream.
const FOLLOW_WALL_AFTER_NS: i128 = NS;
/// Samples this far ahead of the monotonic clock (or 1/500 of the time since the anchor, if
/// more) are not real time: a sound card's buffer or a start-up backlog is under a second.
const FAST_LEAD_NS: i128 = 2 * NS;
/// Time since the anchor needed before the pace can be told at all.
const PACE_KNOWN_AFTER_NS: i128 = 2 * NS;
/// Input that was too fast counts as real time again once sample and monotonic time agree
/// within this.
const BACK_IN_STEP_NS: i128 = 200_000_000;

/// One instant as the recorder sees it: the wall clock (steps with NTP, the user, a board
/// without an RTC) and the monotonic clock (time since the process's first look, never steps).
/// Read once per chunk of samples and handed down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// The wall clock.
    pub wall: Timestamp,
    /// Monotonic time since an origin fixed at the process's first read.
    pub mono: Duration,
}

impl Now {
    /// Reads both clocks.
    pub fn read() -> Self {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        Self {
            wall: Timestamp::now(),
            mono: origin.elapsed(),
        }
    }

    /// Monotonic time from `earlier` to this instant (zero if `earlier` is later).
    pub fn since(&self, earlier: Duration) -> Duration {
        self.mono.saturating_sub(earlier)
    }
}

/// How samples arrive, judged against the monotonic clock since the anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// At the sample rate, within what sound cards do.
    RealTime,
    /// Far faster than the sample rate: a source at its end, a misconfigured device.
    Fast,
    /// Too little time since the anchor to tell.
    Unknown,
}

/// Whether samples are recorded or discarded for not being real time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// Samples are recorded.
    Recording,
    /// Samples arrive far faster than real time and are discarded (DEP_E315) until they do not.
    Discarding {
        /// Monotonic time since this stream (not only an earlier one) showed it; `None` while
        /// the stream has not yet.
        seen_on_stream_at: Option<Duration>,
    },
}

/// What a look at the pace while discarding says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Too early to tell; nothing changes.
    Wait,
    /// Still far off real time: the pace is judged again over a new window.
    StillOff,
    /// Real time again: re-anchor on the wall clock and record.
    Resume,
}

/// Where one stream's frames sit on the wall clock.
#[derive(Clone, Debug)]
pub struct Timeline {
    rate: u32,
    /// Wall-clock nanoseconds of frame 0 of the current stream.
    anchor_ns: Option<i128>,
    /// When the pace window began (monotonic) and the frames captured then (dropped included:
    /// they arrived too).
    window_mono: Duration,
    window_captured: u64,
    /// Frame index just past the newest captured frame, and when it was seen.
    captured_end_index: u64,
    captured_end_at: Timestamp,
}

impl Timeline {
    /// A timeline for `rate` frames per second (at least 1), not yet anchored.
    pub fn new(rate: u32, now: Now) -> Self {
        Self {
            rate: rate.max(1),
            anchor_ns: None,
            window_mono: now.mono,
            window_captured: 0,
            captured_end_index: 0,
            captured_end_at: now.wall,
        }
    }

    /// A new stream: not anchored until its first samples are read.
    pub fn reset(&mut self) {
        self.anchor_ns = None;
    }

    /// Whether the stream's frame 0 has its wall-clock time.
    pub fn is_anchored(&self) -> bool {
        self.anchor_ns.is_some()
    }

    /// Frame 0 gets the time it was captured at, judged from `queued` frames waiting behind
    /// it; `captured` is the device's frame count now (the pace window starts here).
    pub fn anchor(&mut self, now: Now, queued: u64, captured: u64) {
        self.anchor_ns = Some(now.wall.as_nanosecond() - self.span_ns(queued));
        self.restart_pace_window(now, captured);
    }

    /// The frames captured up to `end_index` were seen at `at` (for the drift check).
    pub fn note_captured(&mut self, end_index: u64, at: Timestamp) {
        (self.captured_end_index, self.captured_end_at) = (end_index, at);
    }

    /// Wall-clock time of frame `index` (from `wall` when not anchored).
    pub fn time_of(&self, index: u64, wall: Timestamp) -> Timestamp {
        let ns = self.anchor_or(wall) + self.span_ns(index);
        Timestamp::from_nanosecond(ns).unwrap_or(Timestamp::MAX)
    }

    /// The first frame index at or after instant `t` (0 before frame 0; `u64::MAX` for
    /// `Timestamp::MAX`).
    pub fn index_of(&self, t: Timestamp, wall: Timestamp) -> u64 {
        if t == Timestamp::MAX {
            return u64::MAX;
        }
        let num = (t.as_nanosecond() - self.anchor_or(wall)) * i128::from(self.rate);
        if num <= 0 {
            return 0;
        }
        u64::try_from((num + NS - 1) / NS).unwrap_or(u64::MAX)
    }

    /// Sample time minus monotonic time since the pace window began, and that monotonic time
    /// (nanoseconds both).
    pub fn sample_lead(&self, now: Now, captured: u64) -> (i128, i128) {
        let monotonic = now.since(self.window_mono).as_nanos() as i128;
        let sampled = self.span_ns(captured.saturating_sub(self.window_captured));
        (sampled - monotonic, monotonic)
    }

    /// A real sound card keeps time with the monotonic clock within a fraction of a per mille.
    pub fn pace(&self, now: Now, captured: u64) -> Pace {
        let (lead, monotonic) = self.sample_lead(now, captured);
        if lead > (monotonic / 500).max(FAST_LEAD_NS) {
            Pace::Fast
        } else if monotonic < PACE_KNOWN_AFTER_NS {
            Pace::Unknown
        } else {
            Pace::RealTime
        }
    }

    /// Seconds of samples and of monotonic time in the pace window (for messages).
    pub fn window_seconds(&self, now: Now, captured: u64) -> (u64, f64) {
        let samples = captured.saturating_sub(self.window_captured) / u64::from(self.rate);
        (samples, now.since(self.window_mono).as_secs_f64())
    }

    /// Judges the pace anew from here.
    pub fn restart_pace_window(&mut self, now: Now, captured: u64) {
        (self.window_mono, self.window_captured) = (now.mono, captured);
    }

    /// While discarding input that was too fast: whether it is real time again.
    pub fn recovery(&self, now: Now, captured: u64) -> Recovery {
        match self.pace(now, captured) {
            Pace::Unknown => Recovery::Wait,
            Pace::Fast => Recovery::StillOff,
            Pace::RealTime if self.sample_lead(now, captured).0.abs() > BACK_IN_STEP_NS => {
                Recovery::StillOff
            }
            Pace::RealTime => Recovery::Resume,
        }
    }

    /// Wall-clock nanoseconds of frame `index`, judged from the newest captured frame.
    fn wall_of_index(&self, index: u64) -> i128 {
        let behind = self.span_ns(self.captured_end_index.saturating_sub(index));
        self.captured_end_at.as_nanosecond() - behind
    }

    /// Puts frame `index` at its wall-clock time (judged from the newest captured frame).
    pub fn re_anchor(&mut self, index: u64, now: Now, captured: u64) {
        self.anchor_ns = Some(self.wall_of_index(index) - self.span_ns(index));
        self.restart_pace_window(now, captured);
    }

    /// Between files: the drift (sample time minus wall time at `index`, nanoseconds) when the
    /// stream should be re-anchored: sample time and the wall clock a second or more apart
    /// beyond what the samples' lead on the monotonic clock explains (a drifting sound card, a
    /// stepped wall clock). Samples arriving ahead of real time (a burst, a backlog, a capture
    /// thread catching up after it was starved) run ahead of the wall clock by their lead and
    /// keep their time; a stream behind it lost frames, and the wall clock is right then.
    pub fn drift_to_follow(&self, index: u64, now: Now, captured: u64) -> Option<i128> {
        let anchor = self.anchor_ns?;
        let drift = anchor + self.span_ns(index) - self.wall_of_index(index);
        let (lead, _) = self.sample_lead(now, captured);
        let unexplained = drift - lead.max(0);
        (unexplained.abs() >= FOLLOW_WALL_AFTER_NS).then_some(drift)
    }

    fn anchor_or(&self, wall: Timestamp) -> i128 {
        self.anchor_ns.unwrap_or_else(|| wall.as_nanosecond())
    }

    fn span_ns(&self, frames: u64) -> i128 {
        i128::from(frames) * NS / i128::from(self.rate)
    }
}

/// Seconds by which a file starting at `start` overlaps an earlier file ending at
/// `earlier_end`; `None` when it does not. Both instants come from sample counts rounded to
/// nanoseconds separately (and the earlier end from metadata.db at microseconds), so they may
/// differ by up to one sample and a microsecond without any overlap.
pub fn overlap_s(earlier_end: Timestamp, start: Timestamp, rate: u32) -> Option<f64> {
    let overlap = earlier_end.duration_since(start).as_secs_f64();
    let one_sample = 1.0 / f64::from(rate.max(1)) + 1e-6;
    (overlap > one_sample).then_some(overlap)
}

#[cfg(test)]
mod tests;
