//! Roost's own exit, learned as an event (a pidfd becomes readable when the process ends), so
//! that the connector, which outlives a roost killed with SIGKILL, tells the broker within
//! seconds that nothing supervises the device any more. No polling, no signal from roost.

use tokio::sync::mpsc;

/// Follows one roost process at a time (the pid status.json names).
pub struct RoostWatch {
    pid: Option<u32>,
    tx: mpsc::UnboundedSender<u32>,
    exits: mpsc::UnboundedReceiver<u32>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Default for RoostWatch {
    fn default() -> Self {
        let (tx, exits) = mpsc::unbounded_channel();
        Self {
            pid: None,
            tx,
            exits,
            task: None,
        }
    }
}

impl RoostWatch {
    /// Follows `pid` when it is not the one followed already (a restarted roost adopted us).
    /// Must be called inside a tokio runtime.
    pub fn follow(&mut self, pid: u32) {
        if self.pid == Some(pid) {
            return;
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.pid = Some(pid);
        let tx = self.tx.clone();
        self.task = Some(tokio::spawn(async move {
            if wait_exit(pid).await {
                let _ = tx.send(pid);
            }
        }));
    }

    /// The pid of a followed roost that has exited; pending until one does.
    pub async fn exited(&mut self) -> Option<u32> {
        self.exits.recv().await
    }
}

/// Waits until `pid` has exited: true when it has (or was already gone), false when it cannot
/// be followed (no pidfd on this kernel): the judgement at every other wake-up still checks it.
async fn wait_exit(pid: u32) -> bool {
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    let fd = match pidfd_open(p, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return true,
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot follow roost's process; its exit is seen at the next status change or heartbeat");
            return false;
        }
    };
    let interest = tokio::io::Interest::READABLE;
    // Deprecated as unsound for descriptors that can change under it (tokio #8587); an
    // OwnedFd moved into it cannot.
    #[allow(deprecated)]
    let registered = tokio::io::unix::AsyncFd::with_interest(fd, interest);
    match registered {
        Ok(fd) => fd.readable().await.is_ok(),
        Err(_) => false,
    }
}
