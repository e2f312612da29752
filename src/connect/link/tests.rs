//! The link's rules on explicit instants and on tokio's paused clock, with a recording
//! publisher instead of a broker.

use std::cell::RefCell;
use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use super::*;
use crate::connect::outbox::Sink;

/// Takes publishes until `accept` of them, then refuses (a full request queue).
struct Recording {
    accept: usize,
    topics: RefCell<Vec<String>>,
}

impl Recording {
    fn taking(accept: usize) -> Self {
        Self {
            accept,
            topics: RefCell::new(Vec::new()),
        }
    }
}

impl Publisher for Recording {
    fn publish(&self, topic: String, _retain: bool, _payload: Vec<u8>) -> bool {
        let mut topics = self.topics.borrow_mut();
        if topics.len() >= self.accept {
            return false;
        }
        topics.push(topic);
        true
    }
}

fn messages(seqs: impl IntoIterator<Item = i64>) -> Vec<Message> {
    (seqs.into_iter())
        .map(|seq| Message {
            seq,
            sink: Sink::Mqtt,
            topic: format!("t/{seq}"),
            payload: vec![b'x'; seq as usize % 7],
            retain: false,
            created_at: Timestamp::UNIX_EPOCH,
        })
        .collect()
}

fn connected(window: usize) -> Link {
    let mut link = Link::new(window, STALL_AFTER);
    link.session_started();
    link.connected();
    link
}

#[test]
fn nothing_is_handed_over_before_the_broker_acknowledges_the_connect() {
    let mut link = Link::new(10, STALL_AFTER);
    link.session_started();
    assert_eq!(link.room(), 0);
    let p = Recording::taking(100);
    assert!(link.fill(messages(1..=3), &p, |_| false).is_empty());
    assert!(p.topics.borrow().is_empty());
    link.connected();
    assert_eq!(link.room(), 10);
}

/// (window, publishes the session takes, messages offered) -> handed over, cursor after.
#[test]
fn the_window_and_a_full_session_queue_bound_what_is_handed_over() {
    let cases = [
        (3, 100, 5, 3, 3),
        (100, 2, 5, 2, 2),
        (10, 10, 4, 4, 4),
        (0, 10, 4, 0, 0),
    ];
    for (window, accept, offered, handed, cursor) in cases {
        let mut link = connected(window);
        let p = Recording::taking(accept);
        link.fill(messages(1..=offered), &p, |_| false);
        assert_eq!(
            p.topics.borrow().len(),
            handed,
            "window {window}, accept {accept}"
        );
        assert_eq!(link.cursor(), cursor, "window {window}, accept {accept}");
    }
}

#[test]
fn messages_too_large_are_passed_over_and_given_back_to_acknowledge() {
    let mut link = connected(10);
    let p = Recording::taking(100);
    let let_go = link.fill(messages(1..=6), &p, |m| m.seq % 3 == 0);
    assert_eq!(let_go, [3, 6]);
    assert_eq!(*p.topics.borrow(), ["t/1", "t/2", "t/4", "t/5"]);
    assert_eq!(link.cursor(), 6);
}

#[test]
fn acknowledgements_free_the_window_and_name_what_they_acknowledged() {
    let t0 = Instant::now();
    let mut link = connected(2);
    let p = Recording::taking(100);
    link.fill(messages([10, 11]), &p, |_| false);
    link.written(1, t0);
    link.written(2, t0);
    assert_eq!(link.room(), 0);
    assert_eq!(link.acknowledged(2, t0), Some(Publish::Queued(11)));
    // A duplicate PUBACK (a resent one) acknowledges nothing more.
    assert_eq!(link.acknowledged(2, t0), None);
    assert_eq!(link.room(), 1);
    assert_eq!(link.acknowledged(1, t0), Some(Publish::Queued(10)));
    assert_eq!(link.room(), 2);
}

#[test]
fn the_availability_waits_for_no_acknowledgement() {
    let t0 = Instant::now();
    let mut link = connected(5);
    link.handed(Publish::Direct);
    link.written(1, t0);
    assert_eq!(link.in_flight(), 0);
    assert_eq!(link.stall_deadline(), None);
}

/// Publishes waiting with no acknowledgement stall the link after `stall_after`; any
/// acknowledgement starts the clock again for what still waits.
#[test]
fn the_stall_clock_runs_from_the_oldest_wait_and_restarts_on_progress() {
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    let mut link = connected(10);
    let p = Recording::taking(100);
    link.fill(messages(1..=3), &p, |_| false);
    link.written(1, s(0));
    link.written(2, s(4));
    assert_eq!(link.stall_deadline(), Some(s(10)));
    link.acknowledged(1, s(6));
    assert_eq!(link.stall_deadline(), Some(s(16)));
    link.acknowledged(2, s(7));
    assert_eq!(link.stall_deadline(), None);
    assert_eq!(
        Link::stall_after_for(Duration::from_secs(30)),
        Duration::from_secs(60)
    );
    assert_eq!(Link::stall_after_for(Duration::from_secs(2)), STALL_AFTER);
}

#[test]
fn failures_back_off_doubling_to_a_minute_and_a_connect_starts_over() {
    let t0 = Instant::now();
    let mut link = connected(10);
    let mut waits = Vec::new();
    for _ in 0..9 {
        link.failed(t0);
        waits.push(link.retry_at().unwrap() - t0);
        link.session_started();
        assert_eq!(link.retry_at(), None);
    }
    let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    link.connected();
    link.failed(t0);
    assert_eq!(link.retry_at(), Some(t0 + FIRST_BACKOFF));
    // A session that could not even start (no TLS settings) backs off alike.
    link.not_started(t0);
    assert_eq!(link.retry_at(), Some(t0 + Duration::from_secs(2)));
}

#[test]
fn a_new_session_sends_again_what_the_last_one_had_in_flight() {
    let t0 = Instant::now();
    let mut link = connected(10);
    let p = Recording::taking(100);
    link.fill(messages(1..=4), &p, |_| false);
    link.written(1, t0);
    link.failed(t0);
    assert_eq!((link.in_flight(), link.room()), (0, 0));
    link.session_started();
    link.connected();
    assert_eq!(link.cursor(), 0, "read from the outbox's start again");
    let again = Recording::taking(100);
    link.fill(messages(1..=4), &again, |_| false);
    assert_eq!(again.topics.borrow().len(), 4);
}

/// On tokio's paused clock: a broker that acknowledges nothing is found stalled exactly
/// `stall_after` after the first write, and the retry comes a back-off later.
#[tokio::test(start_paused = true)]
async fn a_silent_broker_stalls_the_link_on_time() {
    let mut link = connected(10);
    let p = Recording::taking(100);
    link.fill(messages(1..=2), &p, |_| false);
    let written = Instant::now();
    link.written(1, written);
    tokio::time::sleep(Duration::from_secs(3)).await;
    link.written(2, Instant::now());
    tokio::time::sleep_until(link.stall_deadline().unwrap()).await;
    assert_eq!(Instant::now() - written, STALL_AFTER);
    link.failed(Instant::now());
    let stalled = Instant::now();
    tokio::time::sleep_until(link.retry_at().unwrap()).await;
    assert_eq!(Instant::now() - stalled, FIRST_BACKOFF);
}
