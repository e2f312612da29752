//! The embedded process runtime: each component is a child of roost in its own process group.
//! Exits are noticed through SIGCHLD (tokio's child reaping), never by polling. Output goes to
//! size-capped, rotated log files. The pids of running children are written to
//! `processes.json` so that a roost killed with SIGKILL can clean up after itself when it
//! starts again: no orphan or duplicate component survives a restart of roost.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{
    ComponentRun, ExitInfo, Observation, ObservedComponent, ObservedState, Runtime, RuntimeError,
    RuntimeEvent,
};

/// Default cap of one log file before it is rotated to `NAME.log.1`.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 1024 * 1024;
/// Rotated files kept per component besides the current one.
const LOG_ROTATIONS: u32 = 2;

struct Child {
    pid: u32,
    /// Kernel start time, read once at spawn: tells this child from a later process that
    /// reuses its pid.
    start_ticks: u64,
    spec_hash: String,
    /// Its `ROOST_COMPONENT_ID`.
    marker: String,
    stop_timeout: std::time::Duration,
    since: Timestamp,
    /// When it was spawned: a scan of marked processes made before knows nothing of its own.
    spawned: std::time::Instant,
    exit: watch::Receiver<Option<ExitInfo>>,
    /// Set while roost stops it: its exit is expected, and the rest of its group gets the
    /// remainder of the stop timeout instead of an immediate SIGKILL.
    stopping: Arc<AtomicBool>,
}

/// The embedded process runtime: every component is a child process of roost in its own process
/// group, with its output in rotated files under `<state-dir>/logs`.
pub struct ProcessRuntime {
    /// Tells this state folder's components from others' in `ROOST_COMPONENT_ID`.
    instance: String,
    logs_dir: PathBuf,
    pids_file: PathBuf,
    log_max_bytes: u64,
    children: BTreeMap<String, Child>,
    exited: BTreeMap<String, (String, ExitInfo)>,
    exit_tx: mpsc::UnboundedSender<(String, u32, ExitInfo)>,
    exit_rx: mpsc::UnboundedReceiver<(String, u32, ExitInfo)>,
    /// Every marked process (pid, marker) as last scanned, and when: stopping 300 components
    /// reads every process's environment once, not 300 times.
    marker_scan: Option<(std::time::Instant, Vec<(u32, String)>)>,
}

/// What `processes.json` records of each child.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChildRecord {
    /// The child's process id.
    pub pid: u32,
    /// Kernel start time (clock ticks since boot) to tell the child from a reused pid.
    pub start_ticks: u64,
    /// Hash of the spec the child was started from.
    pub spec_hash: String,
    /// Its stop timeout in milliseconds (absent in files of older roosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout_ms: Option<u64>,
}

impl ProcessRuntime {
    /// Creates the runtime and kills whatever a previous roost left running.
    pub fn new(state_dir: &Path) -> Result<Self, RuntimeError> {
        let logs_dir = crate::state_dir::StateDir::new(state_dir.to_path_buf()).logs();
        std::fs::create_dir_all(&logs_dir)
            .map_err(|e| RuntimeError::io(format!("cannot create {}", logs_dir.display()), e))?;
        let pids_file = state_dir.join("processes.json");
        let killed = kill_leftovers(&pids_file) + kill_marked_leftovers(&instance_of(state_dir));
        if killed > 0 {
            tracing::info!(
                killed,
                "stopped components left running by a previous roost"
            );
        }
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let log_max_bytes = std::env::var("ROOST_LOG_MAX_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_LOG_MAX_BYTES);
        let rt = Self {
            instance: instance_of(state_dir),
            logs_dir,
            pids_file,
            log_max_bytes,
            children: BTreeMap::new(),
            exited: BTreeMap::new(),
            exit_tx,
            exit_rx,
            marker_scan: None,
        };
        rt.save_pids();
        Ok(rt)
    }

    /// Reads what a running roost holds, without touching it (for `roost plan`).
    pub fn observe_offline(state_dir: &Path) -> Observation {
        read_records(&state_dir.join("processes.json"))
            .into_iter()
            .filter(|(_, r)| proc_start_ticks(r.pid) == Some(r.start_ticks))
            .map(|(name, r)| {
                let obs = ObservedComponent {
                    state: ObservedState::Running {
                        pid: Some(r.pid),
                        since: Timestamp::UNIX_EPOCH,
                    },
                    spec_hash: Some(r.spec_hash),
                    runtime_restarts: 0,
                    stop_timeout: r.stop_timeout_ms.map(std::time::Duration::from_millis),
                };
                (name, obs)
            })
            .collect()
    }

    fn save_pids(&self) {
        let records: BTreeMap<&str, ChildRecord> = self
            .children
            .iter()
            .map(|(name, c)| {
                let rec = ChildRecord {
                    pid: c.pid,
                    start_ticks: c.start_ticks,
                    spec_hash: c.spec_hash.clone(),
                    stop_timeout_ms: Some(c.stop_timeout.as_millis() as u64),
                };
                (name.as_str(), rec)
            })
            .collect();
        let bytes = serde_json::to_vec(&records).expect("records serialize");
        // No fsync: this file only matters while the machine stays up (after a power cut no
        // child survives), and the rename alone keeps it whole.
        let result = crate::fsutil::replace_quietly(&self.pids_file, &bytes);
        if let Err(e) = result {
            tracing::warn!(error = %e, path = %self.pids_file.display(), "cannot record child pids");
        }
    }

    /// SIGTERM to the whole group, then up to `timeout` for the main process and everything
    /// else in its group to exit, then SIGKILL to what is left.
    async fn stop_child(&mut self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        self.exited.remove(name);
        let Some(child) = self.children.get_mut(name) else {
            return Ok(());
        };
        child.stopping.store(true, Ordering::SeqCst);
        let (pid, start_ticks) = (child.pid, child.start_ticks);
        let marker = child.marker.clone();
        let pgid = Pid::from_raw(pid as i32);
        let mut exit = child.exit.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        if exit.borrow().is_none() {
            let _ = killpg(pgid, Signal::SIGTERM);
        }
        // Detached descendants (setsid) are outside the group: they get SIGTERM too. Found once
        // (reading every process's environment is not for a 20 ms poll), looked for again at
        // the SIGKILL below. The group had its SIGTERM: a second one would run a component's
        // TERM handler twice (a shell trap that takes 3 s makes the stop take 6).
        let spawned = child.spawned;
        let detached: Vec<u32> = (self.marked_recently(&marker, spawned).into_iter())
            .filter(|p| state_group_start(*p).is_some_and(|(_, group, _)| group != pid))
            .collect();
        signal_pids(&detached, Signal::SIGTERM);
        let leftovers =
            |pid, ticks| group_members_since(pid, ticks) || detached.iter().any(|p| alive(*p));
        let _ = tokio::time::timeout_at(deadline, exit.wait_for(|e| e.is_some())).await;
        // The main process may be a wrapper (sh -c ...): its group gets the rest of the timeout.
        // Group members usually follow the leader within a millisecond: look again soon, then
        // less often (bounded by the stop timeout).
        let mut pause = Duration::from_millis(1);
        let mut left = leftovers(pid, start_ticks);
        while left && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
            left = leftovers(pid, start_ticks);
        }
        if exit.borrow().is_none() || left {
            tracing::warn!(
                component = name,
                ?timeout,
                "did not stop in time; sending SIGKILL"
            );
            let _ = killpg(pgid, Signal::SIGKILL);
            signal_marked(&marker, Signal::SIGKILL);
            if tokio::time::timeout(Duration::from_secs(5), exit.wait_for(|e| e.is_some()))
                .await
                .is_err()
            {
                return Err(RuntimeError::Component {
                    name: name.to_string(),
                    message: format!("process {pgid} did not exit after SIGKILL"),
                });
            }
        }
        self.children.remove(name);
        self.save_pids();
        Ok(())
    }
}

impl ProcessRuntime {
    /// Reaps the child in a task of its own; its exit goes to the returned watch (for a stop
    /// waiting on it) and to the runtime's events.
    fn wait_for_exit(
        &self,
        mut child: tokio::process::Child,
        pid: u32,
        name: &str,
        marker: &str,
        stopping: Arc<AtomicBool>,
    ) -> watch::Receiver<Option<ExitInfo>> {
        let (exit_watch_tx, exit_watch_rx) = watch::channel(None);
        let events = self.exit_tx.clone();
        let event_name = name.to_string();
        let marker = marker.to_string();
        tokio::spawn(async move {
            let status = child.wait().await;
            let exit = ExitInfo {
                code: status.as_ref().ok().and_then(|s| s.code()),
                signal: status
                    .as_ref()
                    .ok()
                    .and_then(std::os::unix::process::ExitStatusExt::signal),
                at: Timestamp::now(),
            };
            // What a crashed component left behind in its group goes with it, so it never
            // leaves a duplicate beside its replacement. (A stop handles the group itself.)
            if !stopping.load(Ordering::SeqCst) {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                signal_marked(&marker, Signal::SIGKILL);
            }
            let _ = exit_watch_tx.send(Some(exit));
            let _ = events.send((event_name, pid, exit));
        });
        exit_watch_rx
    }
}

/// PATH as the component sees it: its own, else roost's.
fn path_of(run: &ComponentRun) -> String {
    run.env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default()
}

/// The component's command: its own process group, output piped to its log, marked.
fn command(run: &ComponentRun, program: &Path, marker: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg0(run.command.program())
        .args(run.command.args())
        .envs(&run.env)
        // Inherited by everything the component starts, detached (setsid) or not: what
        // has it is stopped with the component.
        .env(MARKER_VAR, marker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = &run.working_dir {
        cmd.current_dir(dir);
    }
    cmd
}

/// What the process runtime can do of `run`'s confinement: its user (looked up now, taken in
/// the child before exec) and `PR_SET_NO_NEW_PRIVS`. The file-system and network sandbox need
/// systemd; under this runtime the component sees what its user may see.
fn confine(cmd: &mut tokio::process::Command, run: &ComponentRun) -> Result<(), RuntimeError> {
    let Some(c) = &run.confinement else {
        return Ok(());
    };
    let identity = match &c.user {
        Some(user) => {
            let id = crate::sandbox::Identity::of(user, c.audio).map_err(|e| {
                RuntimeError::Component {
                    name: run.name.to_string(),
                    message: e.to_string(),
                }
            })?;
            // Already that user (roost not root): nothing to take.
            (id.uid != nix::unistd::geteuid().as_raw()).then_some(id)
        }
        None => None,
    };
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // (setgroups, setgid, setuid, prctl); the identity was resolved before the fork, so nothing
    // allocates or takes a lock there.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            if let Some(id) = &identity {
                id.take()?;
            }
            crate::sandbox::no_new_privileges()
        });
    }
    Ok(())
}

/// Why a spawn failed, in the words roost reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpawnFailure {
    /// Missing or not executable (ENOENT, EACCES).
    NotExecutable,
    /// EMFILE or ENFILE.
    OutOfDescriptors,
    Other,
}

impl SpawnFailure {
    fn classify(e: &std::io::Error) -> Self {
        let descriptors = matches!(
            e.raw_os_error(),
            Some(nix::libc::EMFILE | nix::libc::ENFILE)
        );
        match (e.kind(), descriptors) {
            (std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied, _) => {
                Self::NotExecutable
            }
            (_, true) => Self::OutOfDescriptors,
            (_, false) => Self::Other,
        }
    }
}

fn spawn_error(run: &ComponentRun, e: std::io::Error) -> RuntimeError {
    match SpawnFailure::classify(&e) {
        SpawnFailure::NotExecutable => RuntimeError::ExecutableNotFound {
            program: run.command.program().to_string(),
            reason: e.to_string(),
        },
        SpawnFailure::OutOfDescriptors => RuntimeError::OutOfDescriptors {
            name: run.name.to_string(),
            reason: e.to_string(),
        },
        SpawnFailure::Other => RuntimeError::Component {
            name: run.name.to_string(),
            message: format!("cannot start: {e}"),
        },
    }
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn restarts_itself(&self) -> bool {
        false
    }

    async fn observe(&mut self, _deployment: &str) -> Result<Observation, RuntimeError> {
        let mut out = Observation::new();
        for (name, c) in &self.children {
            let state = ObservedState::Running {
                pid: Some(c.pid),
                since: c.since,
            };
            out.insert(
                name.clone(),
                ObservedComponent {
                    state,
                    spec_hash: Some(c.spec_hash.clone()),
                    runtime_restarts: 0,
                    stop_timeout: Some(c.stop_timeout),
                },
            );
        }
        for (name, (hash, exit)) in &self.exited {
            let state = ObservedState::Exited { exit: *exit };
            out.insert(
                name.clone(),
                ObservedComponent {
                    state,
                    spec_hash: Some(hash.clone()),
                    runtime_restarts: 0,
                    stop_timeout: None,
                },
            );
        }
        Ok(out)
    }

    async fn start(&mut self, run: &ComponentRun) -> Result<(), RuntimeError> {
        let name = run.name.to_string();
        // Never two instances: one still running is stopped first, by its own stop timeout.
        if let Some(timeout) = self.children.get(&name).map(|c| c.stop_timeout) {
            self.stop_child(&name, timeout).await?;
        }
        let program = resolve_program(
            run.command.program(),
            &path_of(run),
            run.working_dir.as_deref(),
        )?;
        let marker = format!("{}/{name}", self.instance);
        let mut cmd = command(run, &program, &marker);
        confine(&mut cmd, run)?;
        if let Some(dir) = &run.working_dir
            && !dir.is_dir()
        {
            return Err(RuntimeError::Component {
                name: name.clone(),
                message: format!("workingDir {} is not a folder", dir.display()),
            });
        }
        // Opened before the spawn: a child must never run without being tracked.
        let log = Arc::new(Mutex::new(LogFile::open(
            &self.logs_dir,
            &name,
            self.log_max_bytes,
        )?));
        let mut child = cmd.spawn().map_err(|e| spawn_error(run, e))?;
        let pid = child.id().unwrap_or(0);
        let start_ticks = proc_start_ticks(pid).unwrap_or(0);
        if let Some(out) = child.stdout.take().and_then(|p| p.into_owned_fd().ok()) {
            tokio::spawn(pump(out, log.clone()));
        }
        if let Some(err) = child.stderr.take().and_then(|p| p.into_owned_fd().ok()) {
            tokio::spawn(pump(err, log));
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let exit = self.wait_for_exit(child, pid, &name, &marker, stopping.clone());
        self.exited.remove(&name);
        self.children.insert(
            name,
            Child {
                pid,
                start_ticks,
                spec_hash: run.spec_hash.clone(),
                marker,
                stop_timeout: run.stop_timeout,
                since: Timestamp::now(),
                spawned: std::time::Instant::now(),
                exit,
                stopping,
            },
        );
        self.save_pids();
        Ok(())
    }

    async fn stop(
        &mut self,
        _deployment: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        self.stop_child(name, timeout).await
    }

    async fn remove(
        &mut self,
        _deployment: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        self.stop_child(name, timeout).await?;
        self.exited.remove(name);
        Ok(())
    }

    async fn next_event(&mut self) -> RuntimeEvent {
        loop {
            let Some((name, pid, exit)) = self.exit_rx.recv().await else {
                return std::future::pending().await;
            };
            // Exits of children roost is stopping, or of an older instance, are not news.
            let current = self
                .children
                .get(&name)
                .is_some_and(|c| c.pid == pid && !c.stopping.load(Ordering::SeqCst));
            if !current {
                continue;
            }
            if let Some(c) = self.children.remove(&name) {
                self.exited.insert(name.clone(), (c.spec_hash, exit));
            }
            self.save_pids();
            return RuntimeEvent::Exited { name, exit };
        }
    }
}

/// Finds the program as execvp would, so a missing one is reported before anything is forked.
pub fn resolve_program(
    program: &str,
    path_var: &str,
    working_dir: Option<&Path>,
) -> Result<PathBuf, RuntimeError> {
    let not_found = |reason: String| RuntimeError::ExecutableNotFound {
        program: program.to_string(),
        reason,
    };
    let candidates: Vec<PathBuf> = if program.contains('/') {
        let p = PathBuf::from(program);
        vec![match working_dir {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        }]
    } else {
        path_var
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(program))
            .collect()
    };
    let mut last = "not found on PATH".to_string();
    for c in candidates {
        match std::fs::metadata(&c) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(c),
            Ok(m) if m.is_file() => last = format!("{} is not executable", c.display()),
            Ok(_) => last = format!("{} is not a file", c.display()),
            // The program is named by the error already; when it was a relative name found
            // through workingDir, say where it was looked for.
            Err(e) if program.contains('/') && c.as_os_str() == program => last = e.to_string(),
            Err(e) if program.contains('/') => last = format!("{} ({e})", c.display()),
            Err(_) => {}
        }
    }
    Err(not_found(last))
}

/// Copies a component's output pipe into its log file. The read buffer lives on the stack only
/// while the pipe has data, never in the waiting task: 250 quiet components hold no buffers
/// (8 KiB each for stdout and stderr was 4 MiB of roost's memory).
async fn pump(from: std::os::fd::OwnedFd, log: Arc<Mutex<LogFile>>) {
    // tokio hands the pipe back in blocking mode: a read would then stop the whole loop.
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(&from, FcntlArg::F_GETFL).map(OFlag::from_bits_truncate);
    if flags
        .and_then(|f| fcntl(&from, FcntlArg::F_SETFL(f | OFlag::O_NONBLOCK)))
        .is_err()
    {
        return;
    }
    // Deprecated as unsound for descriptors that can change under it (tokio #8587); an
    // OwnedFd moved into it cannot.
    #[allow(deprecated)]
    let Ok(pipe) = tokio::io::unix::AsyncFd::new(from) else {
        return;
    };
    loop {
        let Ok(mut ready) = pipe.readable().await else {
            return;
        };
        let mut buf = [0u8; 8192];
        match ready.try_io(|fd| nix::unistd::read(fd, &mut buf).map_err(std::io::Error::from)) {
            Err(_would_block) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if let Ok(mut log) = log.lock() {
                    log.write(&buf[..n]);
                }
            }
        }
    }
}

/// A component's log file, rotated to `.1`, `.2` when it exceeds its cap.
struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    max: u64,
}

impl LogFile {
    fn open(dir: &Path, name: &str, max: u64) -> Result<Self, RuntimeError> {
        let path = dir.join(format!("{name}.log"));
        // The logs folder may be writable by the built-ins' user: never follow a link planted
        // there (roost, root, would append to whatever it names).
        let file = std::os::unix::fs::OpenOptionsExt::custom_flags(
            std::fs::OpenOptions::new().create(true).append(true),
            nix::libc::O_NOFOLLOW,
        )
        .open(&path)
        .map_err(|e| RuntimeError::io(format!("cannot open log {}", path.display()), e))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path,
            file,
            size,
            max,
        })
    }

    /// Appends `bytes`, rotating so that no file grows past the cap; splits at a line end
    /// where one fits.
    fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.max.saturating_sub(self.size) as usize;
            let take = if bytes.len() <= room {
                bytes.len()
            } else if let Some(nl) = bytes[..room].iter().rposition(|b| *b == b'\n') {
                nl + 1
            } else if self.size == 0 {
                room.max(1) // a line longer than the cap is split
            } else {
                0 // no line end fits: start a fresh file rather than split a line
            };
            if take == 0 {
                if !self.rotate() {
                    // Folder gone or disk read-only: write past the cap rather than loop, so
                    // logs never stall the supervisor.
                    let _ = self.file.write_all(bytes);
                    return;
                }
                continue;
            }
            if self.file.write_all(&bytes[..take]).is_err() {
                return;
            }
            self.size += take as u64;
            bytes = &bytes[take..];
        }
    }

    /// Shifts `NAME.log` to `NAME.log.1` (and so on) and opens a fresh file; false when that
    /// could not be done.
    fn rotate(&mut self) -> bool {
        for i in (1..LOG_ROTATIONS).rev() {
            let _ = std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
        }
        let _ = std::fs::rename(&self.path, rotated(&self.path, 1));
        match std::os::unix::fs::OpenOptionsExt::custom_flags(
            std::fs::OpenOptions::new().create(true).append(true),
            nix::libc::O_NOFOLLOW,
        )
        .open(&self.path)
        {
            Ok(f) => {
                self.file = f;
                self.size = 0;
                true
            }
            Err(_) => false,
        }
    }
}

/// The `i`-th rotated copy of log file `path`: `NAME.log.i`, 1 being the newest.
pub fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

fn read_records(path: &Path) -> BTreeMap<String, ChildRecord> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot.
fn proc_start_ticks(pid: u32) -> Option<u64> {
    proc_stat_fields(pid).and_then(|f| f.get(19).and_then(|s| s.parse().ok()))
}

/// The fields of /proc/PID/stat after the command name (field 3 onwards).
fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    crate::procscan::stat_fields(pid)
}

/// Kills the process groups a previous roost recorded, when they are still the same processes.
fn kill_leftovers(pids_file: &Path) -> usize {
    let mut killed = 0;
    for (name, rec) in read_records(pids_file) {
        let same_process = proc_start_ticks(rec.pid) == Some(rec.start_ticks);
        // The leader may be gone while others of its group live on; pgids are not reused while
        // a group exists, and members started after the leader.
        let group_alive = same_process || group_members_since(rec.pid, rec.start_ticks);
        if !group_alive {
            continue;
        }
        tracing::info!(component = %name, pid = rec.pid, "stopping leftover component process group");
        let pgid = Pid::from_raw(rec.pid as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while group_members_since(rec.pid, rec.start_ticks) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        killed += 1;
    }
    killed
}

/// Environment variable that marks every process a component started.
pub const MARKER_VAR: &str = "ROOST_COMPONENT_ID";

/// A short stable id of a state folder (FNV-1a of its path).
fn instance_of(state_dir: &Path) -> String {
    let hash = state_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// Live processes whose environment holds `ROOST_COMPONENT_ID=marker` (other users' processes
/// cannot be read, and cannot be ours).
/// How long a scan of marked processes is reused by the next stops (a descendant detached in
/// that window is found by the SIGKILL stage's own scan).
const MARKER_SCAN_REUSE: std::time::Duration = std::time::Duration::from_secs(2);

impl ProcessRuntime {
    /// Processes marked with `marker`, from a scan at most [`MARKER_SCAN_REUSE`] old and made
    /// after `not_before` (the instance's spawn: an older scan never saw its processes).
    fn marked_recently(&mut self, marker: &str, not_before: std::time::Instant) -> Vec<u32> {
        let fresh = self
            .marker_scan
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < MARKER_SCAN_REUSE && *at > not_before);
        if !fresh {
            self.marker_scan = Some((std::time::Instant::now(), scan_markers()));
        }
        let (_, scan) = self.marker_scan.as_ref().expect("just scanned");
        scan.iter()
            .filter(|(pid, m)| m == marker && alive(*pid))
            .map(|(pid, _)| *pid)
            .collect()
    }
}

/// Every live process carrying `ROOST_COMPONENT_ID`, with its value.
fn scan_markers() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let prefix = format!("{MARKER_VAR}=");
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let var = env
                .split(|b| *b == 0)
                .find(|v| v.starts_with(prefix.as_bytes()))?;
            Some((
                pid,
                String::from_utf8_lossy(&var[prefix.len()..]).into_owned(),
            ))
        })
        .collect()
}

fn marked(marker: &str) -> Vec<u32> {
    marked_where(&format!("{MARKER_VAR}={marker}"), false)
}

/// Live processes with a `ROOST_COMPONENT_ID` equal to `needle`'s value, or (with `prefix`)
/// starting with it.
fn marked_where(needle: &str, prefix: bool) -> Vec<u32> {
    crate::procscan::with_env(needle, prefix)
}

fn alive(pid: u32) -> bool {
    crate::procscan::alive(pid)
}

fn signal_pids(pids: &[u32], signal: Signal) {
    for pid in pids {
        let _ = nix::sys::signal::kill(Pid::from_raw(*pid as i32), signal);
    }
}

fn signal_marked(marker: &str, signal: Signal) {
    signal_pids(&marked(marker), signal);
}

/// Processes a previous roost on this state folder left behind that are outside the process
/// groups it recorded (detached with setsid): SIGTERM, up to 3 s, SIGKILL.
fn kill_marked_leftovers(instance: &str) -> usize {
    let needle = format!("{MARKER_VAR}={instance}/");
    let pids = marked_where(&needle, true);
    if pids.is_empty() {
        return 0;
    }
    signal_pids(&pids, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|p| alive(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    signal_pids(&marked_where(&needle, true), Signal::SIGKILL);
    pids.len()
}

fn group_members_since(pgid: u32, start_ticks: u64) -> bool {
    // An empty group is the common case: one kill(-pgid, 0) says so without reading /proc.
    if killpg(Pid::from_raw(pgid as i32), None) == Err(nix::errno::Errno::ESRCH) {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(state_group_start)
        // Zombies (state Z) are gone already, only not reaped (by init, for orphans).
        .any(|(state, group, start)| group == pgid && state != b'Z' && start >= start_ticks)
}

/// State, process group and start time of `pid` from `/proc/PID/stat`, without allocating:
/// group scans read every process's stat.
fn state_group_start(pid: u32) -> Option<(u8, u32, u64)> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.iter().rposition(|b| *b == b')')?;
    let mut fields = stat[close + 1..]
        .split(|b| *b == b' ')
        .filter(|f| !f.is_empty());
    // Fields after the command: 0 state, 2 pgrp, 19 starttime.
    let state = *fields.next()?.first()?;
    let group = std::str::from_utf8(fields.nth(1)?).ok()?.parse().ok()?;
    let start = std::str::from_utf8(fields.nth(16)?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((state, group, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocation-free reader agrees with the plain one on a live process.
    #[test]
    fn stat_fields_are_read_without_allocating() {
        let me = std::process::id();
        let fields = proc_stat_fields(me).unwrap();
        let (state, group, start) = state_group_start(me).unwrap();
        assert_eq!(state, fields[0].as_bytes()[0]);
        assert_eq!(group.to_string(), fields[2]);
        assert_eq!(start.to_string(), fields[19]);
    }

    fn shell(name: &str, script: &str, stop_timeout: Duration) -> ComponentRun {
        ComponentRun {
            deployment: "d".into(),
            name: name.try_into().unwrap(),
            spec_hash: "h".into(),
            command: vec!["/bin/sh".to_string(), "-c".into(), script.into()]
                .try_into()
                .unwrap(),
            env: Default::default(),
            working_dir: None,
            restart_policy: crate::spec::RestartPolicy::Always,
            backoff: Default::default(),
            stop_timeout,
            confinement: None,
        }
    }

    /// A stop signals each process of the component once: a SIGTERM handler that takes 300 ms
    /// runs once and the stop takes 300 ms, not 600 (its group had SIGTERM already; only
    /// processes outside the group get it by their mark).
    #[tokio::test]
    async fn a_stop_terminates_each_process_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut rt = ProcessRuntime::new(dir.path()).unwrap();
        let terms = dir.path().join("terms");
        let ready = dir.path().join("ready");
        let script = format!(
            "trap 'echo TERM >> {}; sleep 0.3; exit 0' TERM; touch {}; sleep 1000 & wait",
            terms.display(),
            ready.display()
        );
        rt.start(&shell("c", &script, Duration::from_secs(5)))
            .await
            .unwrap();
        while !ready.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t0 = std::time::Instant::now();
        rt.stop("d", "c", Duration::from_secs(5)).await.unwrap();
        let took = t0.elapsed();
        assert_eq!(std::fs::read_to_string(&terms).unwrap(), "TERM\n");
        assert!(took < Duration::from_millis(550), "took {took:?}");
    }

    /// A stop right after a restart looks for the new instance's detached processes afresh:
    /// the scan made by the stop before (under 2 s old) never saw them.
    #[tokio::test]
    async fn a_stop_after_a_restart_finds_the_new_instances_detached_processes() {
        let dir = tempfile::tempdir().unwrap();
        let mut rt = ProcessRuntime::new(dir.path()).unwrap();
        let quick = Duration::from_secs(2);
        rt.start(&shell("c", "sleep 1000 & wait", quick))
            .await
            .unwrap();
        rt.stop("d", "c", quick).await.unwrap();
        let pid_file = dir.path().join("detached");
        let script = format!(
            "setsid sleep 1000 & echo $! > {}.tmp; mv {0}.tmp {0}; sleep 1000 & wait",
            pid_file.display()
        );
        rt.start(&shell("c", &script, quick)).await.unwrap();
        while !pid_file.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let detached: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(detached));
        rt.stop("d", "c", quick).await.unwrap();
        assert!(
            !alive(detached),
            "the detached process went with its instance"
        );
    }

    #[test]
    fn spawn_failures_are_classified() {
        let os = std::io::Error::from_raw_os_error;
        assert_eq!(
            SpawnFailure::classify(&os(nix::libc::ENOENT)),
            SpawnFailure::NotExecutable
        );
        assert_eq!(
            SpawnFailure::classify(&os(nix::libc::EACCES)),
            SpawnFailure::NotExecutable
        );
        assert_eq!(
            SpawnFailure::classify(&os(nix::libc::EMFILE)),
            SpawnFailure::OutOfDescriptors
        );
        assert_eq!(
            SpawnFailure::classify(&os(nix::libc::ENFILE)),
            SpawnFailure::OutOfDescriptors
        );
        assert_eq!(
            SpawnFailure::classify(&os(nix::libc::E2BIG)),
            SpawnFailure::Other
        );
    }

    #[test]
    fn resolves_like_execvp() {
        assert!(resolve_program("sh", "/nonexistent:/bin:/usr/bin", None).is_ok());
        let err = resolve_program("no-such-program-xyz", "/bin:/usr/bin", None).unwrap_err();
        assert!(matches!(err, RuntimeError::ExecutableNotFound { .. }));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve_program(plain.to_str().unwrap(), "", None).unwrap_err();
        assert!(err.to_string().contains("not executable"), "{err}");
    }

    #[test]
    fn a_log_that_cannot_rotate_never_stalls() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let mut log = LogFile::open(&logs, "c", 4).unwrap();
        std::fs::remove_dir_all(&logs).unwrap();
        log.write(b"0123\n");
        log.write(b"456\n789\n"); // must return although the folder is gone
    }

    #[test]
    fn logs_rotate_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(dir.path(), "c", 10).unwrap();
        log.write(b"0123456789");
        log.write(b"abc");
        assert_eq!(std::fs::read(dir.path().join("c.log")).unwrap(), b"abc");
        assert_eq!(
            std::fs::read(dir.path().join("c.log.1")).unwrap(),
            b"0123456789"
        );
    }
}
