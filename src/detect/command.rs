//! A detector that is an external command: run once per recording, the WAV's absolute path as
//! its last argument, its findings read as JSON from stdout. The command runs in its own process
//! group, and that group is killed when the command exits, times out or prints too much: nothing
//! it started outlives its run. This module owns running and reading one command; it never
//! decides which recordings to analyse, when to retry, or what findings mean.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use super::findings::Findings;
use crate::errors::{self, ErrorCode};

/// More than this on stdout is refused and the command killed: findings are a few KiB.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// How much of the end of stderr is kept for the error message.
pub const STDERR_TAIL_BYTES: usize = 2048;
/// How long a command killed with SIGKILL may take to be reaped before roost stops waiting.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// A detector that runs a command once per recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandDetector {
    /// The program and its first arguments; the recording's path is appended.
    pub command: Vec<String>,
    /// How long one run may take before the command's process group is killed.
    pub timeout: Duration,
}

/// Why a command detector gave no findings for a recording.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program does not exist, is not on PATH or is not executable.
    #[error("detector command {program:?} not found or not executable")]
    NotFound {
        /// The command's first element.
        program: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The command exited with a non-zero status or was killed by a signal it did not get from
    /// roost.
    #[error("detector command {program:?} {}{}", describe_exit(*code, *signal), describe_tail(stderr_tail))]
    Exited {
        /// The command's first element.
        program: String,
        /// Its exit status, if it exited.
        code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// The last [`STDERR_TAIL_BYTES`] of its stderr, trimmed (lossy UTF-8).
        stderr_tail: String,
    },
    /// The command did not finish (exit and close its stdout) within its timeout; its process
    /// group was killed.
    #[error("detector command {program:?} did not finish within {after:?}; it was killed")]
    TimedOut {
        /// The command's first element.
        program: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The command succeeded but its stdout is not the findings JSON, or the findings are out
    /// of range for the recording.
    #[error("detector command {program:?} printed output that is not roost's findings JSON: {why}")]
    BadOutput {
        /// The command's first element.
        program: String,
        /// What is wrong: the parser's message with line and column, or the JSON path of the
        /// value out of range.
        why: String,
    },
    /// The command printed more than [`MAX_OUTPUT_BYTES`] on stdout; it was killed.
    #[error(
        "detector command {program:?} printed more than {limit} bytes on stdout; it was killed"
    )]
    TooLarge {
        /// The command's first element.
        program: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// Roost could not start the command or read its output (descriptors or processes
    /// exhausted, a pipe that failed, a recording path that cannot be made absolute).
    #[error("cannot run detector command {program:?}: {what}")]
    Io {
        /// The command's first element.
        program: String,
        /// What roost was doing.
        what: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal.map(Signal::try_from)) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(Ok(signal))) => format!("was killed by signal {signal}"),
        (None, Some(Err(_))) => format!("was killed by signal {}", signal.unwrap_or_default()),
        (None, None) => "ended without an exit status".to_string(),
    }
}

fn describe_tail(tail: &str) -> String {
    if tail.is_empty() {
        "; it printed nothing on stderr".to_string()
    } else {
        format!("; its stderr ends with: {tail:?}")
    }
}

impl CommandError {
    /// The catalogue entry for this failure.
    pub fn code(&self) -> &'static ErrorCode {
        match self {
            Self::NotFound { .. } => &errors::DETECTOR_NOT_FOUND,
            Self::Exited { .. } => &errors::DETECTOR_FAILED,
            Self::TimedOut { .. } => &errors::DETECTOR_TIMED_OUT,
            Self::BadOutput { .. } | Self::TooLarge { .. } => &errors::DETECTOR_BAD_OUTPUT,
            Self::Io { .. } => &errors::DETECTOR_NOT_RUN,
        }
    }

    /// Whether running the same command on the same recording again may help: a timeout, a
    /// crash or a lack of resources may pass; a missing program or output in the wrong shape
    /// stays until someone changes the detector.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Exited { .. } | Self::TimedOut { .. } | Self::Io { .. } => true,
            Self::NotFound { .. } | Self::BadOutput { .. } | Self::TooLarge { .. } => false,
        }
    }
}

impl CommandDetector {
    /// Runs the command on `wav` and returns its validated findings. Blocking: call it from a
    /// worker thread. The command gets the recording's absolute path as its last argument and
    /// in `ROOST_RECORDING`, with `ROOST_SAMPLE_RATE` (Hz) and `ROOST_DURATION_S` (seconds);
    /// stdin is empty. It must exit 0 and close stdout within the timeout. Stdout is read up to
    /// [`MAX_OUTPUT_BYTES`]; stderr only keeps its last [`STDERR_TAIL_BYTES`]. Whatever the
    /// outcome, the command's process group is killed with SIGKILL before this returns and the
    /// command is reaped.
    pub fn run(
        &self,
        wav: &Path,
        duration_s: f64,
        sample_rate: u32,
    ) -> Result<Findings, CommandError> {
        let program = self.command.first().cloned().unwrap_or_default();
        let io = |what| {
            let program = program.clone();
            move |source| CommandError::Io {
                program,
                what,
                source,
            }
        };
        let wav =
            std::path::absolute(wav).map_err(io("cannot make the recording's path absolute"))?;
        // A missing recording is roost's problem, not the detector's failure.
        std::fs::metadata(&wav).map_err(io("cannot find the recording"))?;
        // What the kernel would refuse to run is refused here (ENOEXEC): with the signal mask
        // reset before exec, std runs the command through execvp, which would otherwise run a
        // file without `#!` as a shell script.
        if let Err(source) = runnable(&program) {
            return Err(CommandError::NotFound { program, source });
        }
        let marker = run_marker();
        let mut command = std::process::Command::new(&program);
        command
            .env(RUN_MARKER_VAR, &marker)
            .args(self.command.iter().skip(1))
            .arg(&wav)
            .env("ROOST_RECORDING", &wav)
            .env("ROOST_SAMPLE_RATE", sample_rate.to_string())
            .env("ROOST_DURATION_S", duration_s.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own group, so that a timeout kills what it started too (a shell's children, a
        // Python multiprocessing pool).
        command.process_group(0);
        unblock_signals_in_child(&mut command);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(source) if self.command.is_empty() || is_not_executable(&source) => {
                return Err(CommandError::NotFound { program, source });
            }
            Err(source) => return Err(io("cannot start it")(source)),
        };
        let ended = Running::watch(child)
            .map_err(io("cannot watch it"))
            .and_then(|running| (running.wait(self.timeout)).map_err(io("cannot read its output")));
        // What left the group (setsid, a daemon) goes too: nothing outlives its run.
        kill_escaped(&marker);
        let ended = ended?;
        match ended.outcome {
            Outcome::Succeeded(stdout) => read_findings(&stdout, duration_s, sample_rate)
                .map_err(|why| CommandError::BadOutput { program, why }),
            Outcome::Failed(status) => Err(CommandError::Exited {
                program,
                code: status.code(),
                signal: status.signal(),
                // A model's error output may carry its endpoint's credentials.
                stderr_tail: crate::redact::text(&ended.stderr_tail).into_owned(),
            }),
            Outcome::TimedOut => Err(CommandError::TimedOut {
                program,
                after: self.timeout,
            }),
            Outcome::TooLarge => Err(CommandError::TooLarge {
                program,
                limit: MAX_OUTPUT_BYTES,
            }),
            Outcome::StdoutFailed(source) => Err(io("cannot read its stdout")(source)),
        }
    }
}

/// Whether the kernel would run `program` (found on PATH when it has no `/`): an ELF binary
/// or a file starting with `#!`; anything else is ENOEXEC. A program not found is left to the
/// spawn, which says so.
fn runnable(program: &str) -> std::io::Result<()> {
    let path_var = std::env::var("PATH").unwrap_or_default();
    let Ok(path) = crate::runtime::process::resolve_program(program, &path_var, None) else {
        return Ok(());
    };
    let mut head = [0u8; 4];
    // A file roost may execute but not read is left to the spawn too.
    let Ok(n) = std::fs::File::open(&path).and_then(|mut f| std::io::Read::read(&mut f, &mut head))
    else {
        return Ok(());
    };
    match &head[..n] {
        [0x7f, b'E', b'L', b'F'] | [b'#', b'!', ..] => Ok(()),
        _ => Err(std::io::Error::from_raw_os_error(nix::libc::ENOEXEC)),
    }
}

/// The command starts with no signal blocked: the curator blocks SIGTERM and SIGINT in its
/// threads (one thread waits for them), and a child inherits the mask of the thread that
/// forks it, so a detector would never see SIGTERM (nor run its `trap`) when roost stops.
fn unblock_signals_in_child(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; the closure
    // makes exactly one, pthread_sigmask (through nix), and allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            nix::sys::signal::SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
}

/// The environment variable every process of one detector run inherits, so that a
/// descendant that left the run's process group (`setsid`) is still found and killed.
pub const RUN_MARKER_VAR: &str = "ROOST_DETECTOR_RUN";

/// A value of [`RUN_MARKER_VAR`] unique to one run: this process and a counter.
fn run_marker() -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{n}", std::process::id())
}

/// SIGKILL to every process still carrying the run's marker.
fn kill_escaped(marker: &str) {
    let needle = format!("{RUN_MARKER_VAR}={marker}");
    for pid in crate::procscan::with_env(&needle, false) {
        tracing::warn!(pid, "a detector left a process outside its group; killed");
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// ENOENT, EACCES and ENOEXEC: there is no program to run, whatever roost does.
fn is_not_executable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(nix::libc::ENOEXEC)
}

/// Parses and validates what the command printed; the error says where and what.
fn read_findings(stdout: &[u8], duration_s: f64, sample_rate: u32) -> Result<Findings, String> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Err("it printed nothing on stdout".to_string());
    }
    let findings: Findings = serde_json::from_slice(stdout).map_err(|e| e.to_string())?;
    findings.validate(duration_s, sample_rate)?;
    Ok(findings)
}

/// What ended a run, classified once the process group is gone.
enum Outcome {
    /// Exited 0 and closed stdout in time: what it printed.
    Succeeded(Vec<u8>),
    /// Exited non-zero or by a signal of its own, in time.
    Failed(ExitStatus),
    /// Printed more than [`MAX_OUTPUT_BYTES`].
    TooLarge,
    /// Reading stdout failed.
    StdoutFailed(std::io::Error),
    /// Still running, or still holding stdout open, at the deadline.
    TimedOut,
}

/// A finished run: its outcome and the end of its stderr.
struct Ended {
    outcome: Outcome,
    stderr_tail: String,
}

/// What the watcher threads report.
enum Event {
    /// Stdout reached its end (everything read), or its reading stopped.
    Stdout(Stdout),
    /// Stderr reached its end.
    StderrClosed,
    /// The command (the group's leader) exited and is a zombie, not yet reaped: its pid, which
    /// is the group's id, cannot be reused until roost reaps it.
    LeaderExited,
}

enum Stdout {
    Complete(Vec<u8>),
    TooLarge,
    Failed(std::io::Error),
}

/// A started command and the threads that read its pipes and wait for its exit.
struct Running {
    child: Child,
    group: Pid,
    events: Receiver<Event>,
    stderr: Arc<Mutex<Tail>>,
}

impl Running {
    /// Starts one thread per pipe and one waiting for the exit, all reporting to one channel,
    /// so that the caller waits on the channel with the timeout and never polls.
    fn watch(mut child: Child) -> std::io::Result<Self> {
        let group = Pid::from_raw(child.id() as i32);
        let (tx, events) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(Tail::default()));
        let pipes = (child.stdout.take(), child.stderr.take());
        let started = match pipes {
            (Some(stdout), Some(stderr_pipe)) => {
                spawn_watchers(group, stdout, stderr_pipe, tx, &stderr)
            }
            _ => Err(std::io::Error::other("the command's pipes are missing")),
        };
        let mut running = Self {
            child,
            group,
            events,
            stderr,
        };
        if let Err(e) = started {
            running.kill_and_reap();
            return Err(e);
        }
        Ok(running)
    }

    /// Waits until the command has exited and (on success) closed stdout, or (on failure)
    /// closed stderr, or the timeout; then kills the group and reaps the command.
    fn wait(mut self, timeout: Duration) -> std::io::Result<Ended> {
        let deadline = Instant::now() + timeout;
        let mut stdout = None;
        let mut stderr_closed = false;
        let mut exit: Option<ExitStatus> = None;
        loop {
            let done = match (&stdout, exit) {
                (Some(Stdout::TooLarge | Stdout::Failed(_)), _) => true,
                (Some(Stdout::Complete(_)), Some(status)) if status.success() => true,
                (_, Some(status)) => !status.success() && stderr_closed,
                (_, None) => false,
            };
            if done {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Stdout(read)) => stdout = Some(read),
                Ok(Event::StderrClosed) => stderr_closed = true,
                Ok(Event::LeaderExited) => {
                    // What it left running in its group goes with it (and closes the pipes
                    // such leftovers may hold). Safe: the unreaped leader keeps the group's id.
                    let _ = killpg(self.group, Signal::SIGKILL);
                    exit = Some(self.child.wait()?);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        if exit.is_none() {
            self.kill_and_reap();
        }
        let outcome = match (stdout, exit) {
            (Some(Stdout::TooLarge), _) => Outcome::TooLarge,
            (Some(Stdout::Failed(e)), _) => Outcome::StdoutFailed(e),
            (_, Some(status)) if !status.success() => Outcome::Failed(status),
            (Some(Stdout::Complete(bytes)), Some(_)) => Outcome::Succeeded(bytes),
            (None, _) | (_, None) => Outcome::TimedOut,
        };
        let stderr_tail = self.stderr.lock().map(|t| t.text()).unwrap_or_default();
        Ok(Ended {
            outcome,
            stderr_tail,
        })
    }

    /// SIGKILL to the whole group, then reaps the leader once the exit waiter has seen it
    /// exit: reaping before its `waitid` could leave it waiting on a reused pid.
    fn kill_and_reap(&mut self) {
        let _ = killpg(self.group, Signal::SIGKILL);
        if wait_for_exit(&self.events, KILL_GRACE) {
            let _ = self.child.wait();
            return;
        }
        // Stuck in the kernel (uninterruptible I/O): reaped whenever it ends, without holding
        // up the caller.
        let pid = self.child.id();
        tracing::warn!(pid, "detector command did not exit within 5 s of SIGKILL");
        let _ = std::thread::Builder::new()
            .name("detector-reap".into())
            .spawn(move || {
                let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
            });
    }
}

/// Waits up to `grace` for the leader's exit among the remaining events.
fn wait_for_exit(events: &Receiver<Event>, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::LeaderExited) => return true,
            Ok(_) => continue,
            Err(RecvTimeoutError::Timeout) => return false,
            // Every watcher is gone, the exit waiter included: it has exited.
            Err(RecvTimeoutError::Disconnected) => return true,
        }
    }
}

fn spawn_watchers(
    group: Pid,
    stdout: ChildStdout,
    stderr: ChildStderr,
    tx: Sender<Event>,
    tail: &Arc<Mutex<Tail>>,
) -> std::io::Result<()> {
    let thread = |name: &str| std::thread::Builder::new().name(format!("detector-{name}"));
    let exit_tx = tx.clone();
    thread("exit").spawn(move || {
        // WNOWAIT: learn of the exit without reaping, so that the group can still be killed
        // by its id; roost reaps after.
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        while waitid(Id::Pid(group), flags) == Err(nix::errno::Errno::EINTR) {}
        let _ = exit_tx.send(Event::LeaderExited);
    })?;
    let stdout_tx = tx.clone();
    thread("stdout").spawn(move || {
        let mut stdout = stdout;
        let read = read_limited(&mut stdout);
        // Told before the pipe closes: a command that dies of SIGPIPE once roost stops
        // reading is then seen to have printed too much, not to have failed.
        let _ = stdout_tx.send(Event::Stdout(read));
        drop(stdout);
    })?;
    let tail = Arc::clone(tail);
    thread("stderr").spawn(move || {
        read_tail(stderr, &tail);
        let _ = tx.send(Event::StderrClosed);
    })?;
    Ok(())
}

/// Reads to the end, or stops after [`MAX_OUTPUT_BYTES`].
fn read_limited(stdout: &mut ChildStdout) -> Stdout {
    let mut bytes = Vec::new();
    match stdout
        .take(MAX_OUTPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
    {
        Ok(_) if bytes.len() > MAX_OUTPUT_BYTES => Stdout::TooLarge,
        Ok(_) => Stdout::Complete(bytes),
        Err(e) => Stdout::Failed(e),
    }
}

fn read_tail(mut stderr: ChildStderr, tail: &Mutex<Tail>) {
    let mut buffer = [0u8; 4096];
    loop {
        match stderr.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                if let Ok(mut tail) = tail.lock() {
                    tail.push(&buffer[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The last [`STDERR_TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        // Trimmed in batches, not per read: the front is moved once per tail's length.
        if self.0.len() > 2 * STDERR_TAIL_BYTES {
            self.0.drain(..self.0.len() - STDERR_TAIL_BYTES);
        }
    }

    fn text(&self) -> String {
        let start = self.0.len().saturating_sub(STDERR_TAIL_BYTES);
        String::from_utf8_lossy(&self.0[start..]).trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_end() {
        let mut tail = Tail::default();
        for i in 0..1000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let text = tail.text();
        assert!(text.ends_with("line 999"), "{text}");
        assert!(text.len() <= STDERR_TAIL_BYTES);
        assert!(!text.contains("line 1\n"));
    }

    #[test]
    fn every_failure_has_a_code_and_a_retry_answer() {
        let io = || std::io::Error::other("x");
        let p = || "det".to_string();
        let table = [
            (
                CommandError::NotFound {
                    program: p(),
                    source: io(),
                },
                "DEP_E601",
                false,
            ),
            (
                CommandError::Exited {
                    program: p(),
                    code: Some(3),
                    signal: None,
                    stderr_tail: "boom".into(),
                },
                "DEP_E602",
                true,
            ),
            (
                CommandError::TimedOut {
                    program: p(),
                    after: Duration::from_secs(1),
                },
                "DEP_E603",
                true,
            ),
            (
                CommandError::BadOutput {
                    program: p(),
                    why: "x".into(),
                },
                "DEP_E604",
                false,
            ),
            (
                CommandError::TooLarge {
                    program: p(),
                    limit: 1,
                },
                "DEP_E604",
                false,
            ),
            (
                CommandError::Io {
                    program: p(),
                    what: "x",
                    source: io(),
                },
                "DEP_E605",
                true,
            ),
        ];
        for (error, code, retryable) in table {
            assert_eq!(error.code().code, code, "{error}");
            assert_eq!(error.retryable(), retryable, "{error}");
            assert!(crate::errors::lookup(code).is_some());
        }
    }

    #[test]
    fn exits_are_described_in_words() {
        assert_eq!(describe_exit(Some(3), None), "exited with status 3");
        assert_eq!(describe_exit(None, Some(9)), "was killed by signal SIGKILL");
        assert_eq!(describe_tail(""), "; it printed nothing on stderr");
        assert_eq!(describe_tail("a\nb"), "; its stderr ends with: \"a\\nb\"");
    }
}
