//! The wall clock the loop hands to decision code, behind a trait so that the loop can be
//! tested in-process on tokio's paused clock. Decision code never reads a clock itself: it
//! takes `now` as a parameter.

use jiff::{SignedDuration, Timestamp};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync {
    /// The current time (UTC).
    fn now(&self) -> Timestamp;
}

/// The system's real-time clock (what roost runs on).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Wall time that moves with tokio's clock from a fixed start, so that tests on a paused
/// clock (`tokio::time::advance`, auto-advance) see back-offs and deadlines expire.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    start_wall: Timestamp,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `start_wall` now and moves on with tokio's clock.
    pub fn starting_at(start_wall: Timestamp) -> Self {
        Self {
            start_wall,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = SignedDuration::try_from(self.start.elapsed()).unwrap_or(SignedDuration::MAX);
        self.start_wall
            .saturating_add(elapsed)
            .unwrap_or(self.start_wall)
    }
}
