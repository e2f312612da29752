//! What wakes the loop besides the runtime and its own timer: the desired-state file, the
//! built-ins' output files, SIGHUP. Each source runs in its own task so that no trigger is lost
//! when another branch of the loop's select wins; at most one trigger waits per channel.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc::{Receiver, Sender, channel};

use super::ReconcileError;
use crate::watch::FileWatcher;

/// The loop's trigger channels. A closed channel (its sender dropped) is simply never ready.
pub struct Triggers {
    /// The desired-state file changed (debounced).
    pub file: Receiver<()>,
    /// A built-in's output changed (its health may have).
    pub outputs: Receiver<()>,
    /// SIGHUP: re-read the file even if its content looks unchanged.
    pub hangup: Receiver<()>,
}

impl Triggers {
    /// Real triggers: inotify watches on `file` and on each of `outputs`, and SIGHUP.
    pub fn watching(file: &Path, outputs: &[PathBuf]) -> Result<Self, ReconcileError> {
        let (file_tx, file_rx) = channel(1);
        forward(FileWatcher::new(file)?, file_tx);
        let (outputs_tx, outputs_rx) = channel(1);
        for path in outputs {
            forward(FileWatcher::new(path)?, outputs_tx.clone());
        }
        let (hangup_tx, hangup) = channel(1);
        forward_hangups(hangup_tx)?;
        Ok(Self {
            file: file_rx,
            outputs: outputs_rx,
            hangup,
        })
    }

    /// Whether a file change or SIGHUP waits to be taken: the desired state in force may be
    /// superseded. Looks only; takes nothing.
    pub fn desired_news_waiting(&self) -> bool {
        !self.file.is_empty() || !self.hangup.is_empty()
    }

    /// Triggers fed by hand (tests): the senders for file, outputs and hangup.
    pub fn manual() -> (Self, [Sender<()>; 3]) {
        let (file_tx, file) = channel(1);
        let (outputs_tx, outputs) = channel(1);
        let (hangup_tx, hangup) = channel(1);
        let triggers = Self {
            file,
            outputs,
            hangup,
        };
        (triggers, [file_tx, outputs_tx, hangup_tx])
    }
}

/// Debounces a watcher in its own task.
fn forward(mut watcher: FileWatcher, tx: Sender<()>) {
    tokio::spawn(async move {
        loop {
            watcher.changed().await;
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
}

fn forward_hangups(tx: Sender<()>) -> Result<(), ReconcileError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).map_err(ReconcileError::Signal)?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
