//! Roost's own log on stderr, for every command (the recorder included). It owns one rule: no
//! write to a log may ever end a process. A recorder started by a roost that was later killed
//! with SIGKILL has a stderr pipe nobody reads; every log line then meets EPIPE, and
//! tracing-subscriber reports a failed write with `eprintln!`, which panics on that same broken
//! stderr (an abort in the release profile). So the writer here drops what it cannot write and
//! says it wrote it.

use std::io::{self, Write};

/// A writer that never fails: a write that errors (EPIPE, EBADF, ENOSPC behind a redirect) is
/// dropped and reported as done, so that the caller neither retries nor panics.
#[derive(Debug)]
pub struct LossyWriter<W>(pub W);

impl<W: Write> Write for LossyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A log line lost is better than a recorder lost.
        Ok(self.0.write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// For the commands whose output goes to a person or a pipe (`roost explain | head -1`): a
/// reader that closes the pipe early ends the process quietly, as `cat` and `ls` end (SIGPIPE's
/// default), where `println!` would panic on EPIPE. Never for the long-running commands: a peer
/// that closes a pipe or a socket must not end a supervisor or a recorder. Call before any
/// thread starts.
#[allow(unsafe_code)]
pub fn quiet_on_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: restores a signal's default disposition; no handler runs, no thread exists yet.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Stderr behind a [`LossyWriter`]; as a function it is a `MakeWriter` for tracing-subscriber.
pub fn stderr() -> LossyWriter<io::Stderr> {
    LossyWriter(io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe whose reader is gone.
    struct BrokenPipe;

    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn writes_to_a_broken_pipe_count_as_done() {
        let mut w = LossyWriter(BrokenPipe);
        assert_eq!(w.write(b"a line\n").unwrap(), 7);
        w.write_all(b"another line\n").unwrap();
        w.flush().unwrap();
        writeln!(w, "formatted {}", 3).unwrap();
    }
}
