//! What wakes the loop besides the runtime and its own timer: the desired-state file, the
//! built-ins' output files, SIGHUP. Each source runs in its own task so that no trigger is lost
//! when another branch of the loop's select wins; at most one trigger waits per channel.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc::{Receiver, Sender, channel};

use super::ReconcileError;
use crate::plan::gate::Links;
use crate::watch::FileWatcher;

/// The loop's trigger channels. A closed channel (its sender dropped) is simply never ready.
pub struct Triggers {
    /// The desired-state file changed (debounced).
    pub file: Receiver<()>,
    /// A built-in's output changed (its health may have).
    pub outputs: Receiver<()>,
    /// SIGHUP: re-read the file even if its content looks unchanged.
    pub hangup: Receiver<()>,
    /// The device's word on this deployment (`roost run --dir`): dependencies, bindings, a
    /// file gone. `None` for a single file.
    pub links: Option<tokio::sync::watch::Receiver<Links>>,
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
            links: None,
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
            links: None,
        };
        (triggers, [file_tx, outputs_tx, hangup_tx])
    }
}

/// Triggers of one deployment of a folder (`roost run --dir`): its file's changes, SIGHUP and
/// its built-ins' reports come from the device's coordinator (one watch of the folder, one of
/// every report, for all deployments).
pub fn of_deployment(
    file: Receiver<()>,
    hangup: Receiver<()>,
    outputs: Receiver<()>,
    links: tokio::sync::watch::Receiver<Links>,
) -> Triggers {
    Triggers {
        file,
        outputs,
        hangup,
        links: Some(links),
    }
}

/// The next word of the device on this deployment; never ready without a device (or once the
/// device is gone).
pub(super) async fn next_links(links: &mut Option<tokio::sync::watch::Receiver<Links>>) -> Links {
    let Some(rx) = links else {
        return std::future::pending().await;
    };
    match rx.changed().await {
        Ok(()) => rx.borrow_and_update().clone(),
        Err(_) => std::future::pending().await,
    }
}

/// The device's word waiting to be taken, without waiting for one: a file change and new
/// links may arrive together, and a round must not plan the file with the old links.
pub(super) fn pending_links(
    links: &mut Option<tokio::sync::watch::Receiver<Links>>,
) -> Option<Links> {
    let rx = links.as_mut()?;
    rx.has_changed()
        .unwrap_or(false)
        .then(|| rx.borrow_and_update().clone())
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
