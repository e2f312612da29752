//! Status publishers: each new status document is handed here once, and every publisher gets it
//! on a thread of its own: `status.json` (the first publisher), later MQTT, HTTP, a Prometheus
//! text file. Handing a document over never blocks the loop; a publisher that is slow or fails
//! delays neither the loop nor the others, skips documents superseded meanwhile (only the
//! newest matters), and retries the newest after a failure. Idle publishers sleep on a condvar:
//! no polling.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::status::{self, StatusDoc};

/// After a failure, the newest document is tried again this much later (or when a newer one
/// arrives).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Somewhere status documents go.
pub trait StatusPublisher: Send + 'static {
    /// A short name for logs (`status.json`, `mqtt` ...).
    fn name(&self) -> &'static str;
    /// Publishes one document; an error is logged and the newest document retried later.
    fn publish(&mut self, doc: &StatusDoc) -> Result<(), String>;
}

/// The `status.json` writer: temp file, fsync, rename, fsync the folder.
pub struct StatusFile {
    /// `<state-dir>/status.json`.
    pub path: PathBuf,
}

/// The device's `status.json` under `roost run --dir`: as [`StatusFile`], for documents whose
/// every part was redacted when it arrived (redacting 50 deployments on every write was the
/// slowest step of an edit).
pub struct RedactedStatusFile {
    /// `<state-dir>/status.json`.
    pub path: PathBuf,
}

impl StatusPublisher for RedactedStatusFile {
    fn name(&self) -> &'static str {
        "status.json"
    }
    fn publish(&mut self, doc: &StatusDoc) -> Result<(), String> {
        let written = status::write_redacted(&self.path, doc).map_err(|e| crate::errors::chain(&e));
        note_write_error(&self.path, &written);
        written
    }
}

/// Said where readers look (the run-time folder, RAM when it can be): a status that cannot be
/// written is out of date, and they say why instead of showing it as now.
fn note_write_error(path: &std::path::Path, written: &Result<(), String>) {
    if let Some(state_dir) = path.parent() {
        crate::status_seen::note_write_error(state_dir, written.as_ref().err().map(String::as_str));
    }
}

impl StatusPublisher for StatusFile {
    fn name(&self) -> &'static str {
        "status.json"
    }
    fn publish(&mut self, doc: &StatusDoc) -> Result<(), String> {
        let written = status::write(&self.path, doc).map_err(|e| crate::errors::chain(&e));
        note_write_error(&self.path, &written);
        written
    }
}

/// The newest document for one publisher, and how far it got.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

#[derive(Default)]
struct SlotState {
    latest: Option<Arc<StatusDoc>>,
    /// Sequence number of `latest`, and of the newest document published.
    latest_seq: u64,
    done_seq: u64,
    closed: bool,
}

/// Hands documents to every publisher.
pub struct Publishers {
    slots: Vec<Arc<Slot>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    seq: u64,
}

impl Publishers {
    /// Starts one thread per publisher.
    pub fn new(publishers: Vec<Box<dyn StatusPublisher>>) -> Self {
        let mut slots = Vec::new();
        let mut threads = Vec::new();
        for publisher in publishers {
            let slot = Arc::new(Slot::default());
            let theirs = slot.clone();
            let name = format!("roost-publish-{}", publisher.name());
            if let Ok(t) = std::thread::Builder::new()
                .name(name)
                .spawn(move || run(publisher, &theirs))
            {
                slots.push(slot);
                threads.push(t);
            }
        }
        Self {
            slots,
            threads,
            seq: 0,
        }
    }

    /// Hands `doc` to every publisher; returns at once.
    pub fn publish(&mut self, doc: StatusDoc) {
        self.seq += 1;
        let doc = Arc::new(doc);
        for slot in &self.slots {
            let mut s = lock(slot);
            s.latest = Some(doc.clone());
            s.latest_seq = self.seq;
            slot.changed.notify_all();
        }
    }

    /// Waits up to `timeout` until every publisher has published the newest document (at
    /// shutdown, before READY=1); false when one has not.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        self.slots.iter().all(|slot| {
            let mut s = lock(slot);
            while s.done_seq < s.latest_seq {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return false;
                }
                s = slot
                    .changed
                    .wait_timeout(s, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            true
        })
    }
}

impl Drop for Publishers {
    /// Lets each thread finish what it holds and end; never waits for a stuck one (`flush`
    /// first when the last document matters).
    fn drop(&mut self) {
        for slot in &self.slots {
            lock(slot).closed = true;
            slot.changed.notify_all();
        }
        self.threads.clear();
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, SlotState> {
    slot.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One publisher's thread: publish the newest document, skip superseded ones, retry failures.
fn run(mut publisher: Box<dyn StatusPublisher>, slot: &Slot) {
    let mut failed = false;
    loop {
        let (doc, seq) = {
            let mut s = lock(slot);
            loop {
                if s.closed && (s.done_seq >= s.latest_seq || failed) {
                    return;
                }
                if s.latest_seq > s.done_seq && !failed {
                    break;
                }
                let wait = if failed {
                    RETRY_AFTER_FAILURE
                } else {
                    Duration::from_secs(3600)
                };
                let before = s.latest_seq;
                s = slot
                    .changed
                    .wait_timeout(s, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
                // A newer document or the retry time ends a failure's pause.
                if failed && (s.latest_seq != before || s.latest_seq > s.done_seq) {
                    failed = false;
                }
            }
            match s.latest.clone() {
                Some(doc) => (doc, s.latest_seq),
                None => continue,
            }
        };
        match publisher.publish(&doc) {
            Ok(()) => {
                let mut s = lock(slot);
                s.done_seq = s.done_seq.max(seq);
                slot.changed.notify_all();
                failed = false;
            }
            Err(e) => {
                tracing::error!(publisher = publisher.name(), error = %e, "cannot publish the status; retrying");
                failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A recording fake: counts publishes, can be slow or failing.
    struct Fake {
        seen: Arc<Mutex<Vec<u64>>>,
        delay: Duration,
        failures_left: Arc<AtomicUsize>,
    }

    impl StatusPublisher for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn publish(&mut self, doc: &StatusDoc) -> Result<(), String> {
            std::thread::sleep(self.delay);
            if self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("down".into());
            }
            self.seen.lock().unwrap().push(doc.generation);
            Ok(())
        }
    }

    fn doc(generation: u64) -> StatusDoc {
        let mut d: StatusDoc = serde_json::from_value(serde_json::json!({
            "apiVersion": "roost/v1", "kind": "DeploymentStatus", "generation": 0,
            "observedGeneration": 0, "phase": "Succeeded", "status": "Running",
            "reconciler": {"pid": 1, "version": "0", "runtime": "process"},
            "updatedAt": "2026-11-29T00:00:00Z"
        }))
        .unwrap();
        d.generation = generation;
        d
    }

    #[test]
    fn a_slow_publisher_delays_nobody_and_gets_the_newest_document() {
        let slow_seen = Arc::new(Mutex::new(Vec::new()));
        let fast_seen = Arc::new(Mutex::new(Vec::new()));
        let mut p = Publishers::new(vec![
            Box::new(Fake {
                seen: slow_seen.clone(),
                delay: Duration::from_millis(300),
                failures_left: Arc::new(AtomicUsize::new(0)),
            }),
            Box::new(Fake {
                seen: fast_seen.clone(),
                delay: Duration::ZERO,
                failures_left: Arc::new(AtomicUsize::new(0)),
            }),
        ]);
        let start = std::time::Instant::now();
        for g in 1..=20 {
            p.publish(doc(g));
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "handing over never blocks"
        );
        assert!(p.flush(Duration::from_secs(5)));
        let slow = slow_seen.lock().unwrap().clone();
        assert_eq!(slow.last(), Some(&20));
        assert!(
            slow.len() < 20,
            "superseded documents are skipped: {slow:?}"
        );
        assert_eq!(fast_seen.lock().unwrap().last(), Some(&20));
    }

    #[test]
    fn a_failing_publisher_retries_the_newest_document() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut p = Publishers::new(vec![Box::new(Fake {
            seen: seen.clone(),
            delay: Duration::ZERO,
            failures_left: Arc::new(AtomicUsize::new(1)),
        })]);
        p.publish(doc(1));
        std::thread::sleep(Duration::from_millis(50));
        // A newer document ends the pause at once.
        p.publish(doc(2));
        assert!(p.flush(Duration::from_secs(2)));
        assert_eq!(seen.lock().unwrap().clone(), vec![2]);
    }
}

/// The loop's side of the in-process link with the desired state over the broker
/// (`crate::remote::device`): each new status document goes to it, and its report comes back
/// into the status (`remote`). Channels, not files: no inotify instance, no disk write.
#[derive(Clone, Debug)]
pub struct RemoteLink {
    /// Each document the loop (or the device) publishes.
    pub docs: tokio::sync::watch::Sender<Option<std::sync::Arc<StatusDoc>>>,
    /// The remote task's report.
    pub report: tokio::sync::watch::Receiver<Option<crate::status::RemoteStatus>>,
}

/// The remote task's side of [`RemoteLink`].
#[derive(Debug)]
pub struct RemoteSide {
    /// Documents as the loop publishes them.
    pub docs: tokio::sync::watch::Receiver<Option<std::sync::Arc<StatusDoc>>>,
    /// Where the task says where it stands.
    pub report: tokio::sync::watch::Sender<Option<crate::status::RemoteStatus>>,
}

/// A linked pair.
pub fn remote_link() -> (RemoteLink, RemoteSide) {
    let (docs_tx, docs_rx) = tokio::sync::watch::channel(None);
    let (report_tx, report_rx) = tokio::sync::watch::channel(None);
    (
        RemoteLink {
            docs: docs_tx,
            report: report_rx,
        },
        RemoteSide {
            docs: docs_rx,
            report: report_tx,
        },
    )
}

impl RemoteLink {
    /// The report now (redacted: refusal reasons may quote a file).
    pub fn current(&self) -> Option<crate::status::RemoteStatus> {
        self.report.borrow().as_ref().map(crate::redact::typed)
    }

    /// Resolves when the report changed (never once the task is gone).
    pub async fn changed(link: Option<&mut Self>) {
        match link {
            Some(l) => {
                if l.report.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}
