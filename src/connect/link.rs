//! The MQTT link's rules, without a broker: what is in flight, when publishes count as
//! stalled, when to connect again (back-off), which acknowledgements to commit. Every function
//! takes the instant it judges at; the session (rumqttc) sits behind [`Publisher`]. Tested on
//! explicit instants and on tokio's paused clock; the real-broker tests stay end to end.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::outbox::Message;

/// The least time publishes may wait for an acknowledgement, none arriving, before the
/// session is judged broken (else twice the keep-alive: a live broker answers a ping within
/// one).
pub const STALL_AFTER: Duration = Duration::from_secs(10);
/// First pause before connecting again; doubled after each failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause between two connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where publishes go: the session's client. `publish` hands one over without waiting and
/// says whether the session took it (its queue may be full).
pub trait Publisher {
    /// Hands a QoS 1 publish to the session.
    fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> bool;
}

/// What a publish handed to the session carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Publish {
    /// A queued message: deleted from the outbox on its PUBACK.
    Queued(i64),
    /// Home Assistant's discovery config: remembered as sent on its PUBACK.
    Discovery(String),
    /// The availability: sent on each connect, nothing to note.
    Direct,
}

/// The MQTT link across sessions.
#[derive(Debug)]
pub struct Link {
    /// Most publishes handed over and not acknowledged.
    window: usize,
    stall_after: Duration,
    connected: bool,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// Last outbox position handed to the session.
    cursor: i64,
    /// Publishes handed over and not yet written, in order.
    pending: VecDeque<Publish>,
    /// Packet id -> what it carries, for publishes awaiting their PUBACK.
    in_flight: HashMap<u16, Publish>,
    /// Since when publishes wait for an acknowledgement without any arriving: a broker that
    /// accepts the connection but acknowledges nothing is a link down, not an up one.
    waiting_since: Option<Instant>,
}

impl Link {
    /// A link keeping at most `window` publishes in flight, stalled after `stall_after`.
    pub fn new(window: usize, stall_after: Duration) -> Self {
        Self {
            window,
            stall_after,
            connected: false,
            backoff: FIRST_BACKOFF,
            retry_at: None,
            cursor: 0,
            pending: VecDeque::new(),
            in_flight: HashMap::new(),
            waiting_since: None,
        }
    }

    /// The stall time for a session with keep-alive `keep_alive`.
    pub fn stall_after_for(keep_alive: Duration) -> Duration {
        (keep_alive * 2).max(STALL_AFTER)
    }

    /// Whether the broker acknowledged the current session's connect.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Publishes awaiting their acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// How long publishes may wait with no acknowledgement at all.
    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// When the publishes in flight count as stalled, if any wait.
    pub fn stall_deadline(&self) -> Option<Instant> {
        self.waiting_since.map(|t| t + self.stall_after)
    }

    /// When to connect again after a failure, if one is due.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Last outbox position handed to the session.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// Connect at `now` (the first attempt at start).
    pub fn retry_now(&mut self, now: Instant) {
        self.retry_at = Some(now);
    }

    /// A new session was started: nothing of the last one is pending or in flight.
    pub fn session_started(&mut self) {
        self.retry_at = None;
        self.forget_session();
    }

    /// Connecting could not even begin (no TLS settings, say): try again after the back-off.
    pub fn not_started(&mut self, now: Instant) {
        self.schedule_retry(now);
    }

    /// The broker acknowledged the connect: the back-off starts over and the outbox is read
    /// from its start (what the last session had in flight is sent again: at least once).
    pub fn connected(&mut self) {
        self.connected = true;
        self.backoff = FIRST_BACKOFF;
        self.cursor = 0;
    }

    /// The session ended, failed or stalled at `now`: down, nothing in flight, a retry after
    /// the back-off (doubled for the next failure, at most [`MAX_BACKOFF`]).
    pub fn failed(&mut self, now: Instant) {
        self.connected = false;
        self.forget_session();
        self.schedule_retry(now);
    }

    /// Room for more publishes in the window (none while not connected).
    pub fn room(&self) -> usize {
        if !self.connected {
            return 0;
        }
        self.window
            .saturating_sub(self.pending.len() + self.in_flight.len())
    }

    /// Hands queued messages to `publisher`, in order, until the window is full or the
    /// session refuses one. Messages `too_large` says no session can carry are passed over;
    /// returns their positions, to be acknowledged as let go.
    pub fn fill(
        &mut self,
        batch: Vec<Message>,
        publisher: &impl Publisher,
        mut too_large: impl FnMut(&Message) -> bool,
    ) -> Vec<i64> {
        let mut let_go = Vec::new();
        for msg in batch {
            if too_large(&msg) {
                let_go.push(msg.seq);
                self.passed(msg.seq);
                continue;
            }
            if self.room() == 0 || !publisher.publish(msg.topic, msg.retain, msg.payload) {
                break;
            }
            self.handed(Publish::Queued(msg.seq));
        }
        let_go
    }

    /// A publish was handed to the session; `seq` moves the outbox cursor.
    pub fn handed(&mut self, publish: Publish) {
        if let Publish::Queued(seq) = publish {
            self.cursor = seq;
        }
        self.pending.push_back(publish);
    }

    /// A message the session will never carry (too large) was passed over at `seq`.
    pub fn passed(&mut self, seq: i64) {
        self.cursor = seq;
    }

    /// The session wrote the oldest pending publish with packet id `pkid` at `now`: it waits
    /// for its PUBACK (the availability waits for nothing).
    pub fn written(&mut self, pkid: u16, now: Instant) {
        match self.pending.pop_front() {
            Some(Publish::Direct) | None => {}
            Some(publish) => {
                self.in_flight.insert(pkid, publish);
                self.waiting_since.get_or_insert(now);
            }
        }
    }

    /// The PUBACK of `pkid` arrived at `now`: what it acknowledged (a duplicate or unknown id:
    /// nothing). Progress restarts the stall clock for what still waits.
    pub fn acknowledged(&mut self, pkid: u16, now: Instant) -> Option<Publish> {
        let done = self.in_flight.remove(&pkid);
        self.waiting_since = (!self.in_flight.is_empty()).then_some(now);
        done
    }

    fn forget_session(&mut self) {
        self.pending.clear();
        self.in_flight.clear();
        self.waiting_since = None;
    }

    fn schedule_retry(&mut self, now: Instant) {
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests;
