//! The parent side of a spawn: plan → fork → read the error pipe → pid.
//!
//! Owns: the close-on-exec error pipe and the `fork()` call; learning from
//! the child whether `execve` happened, and if not, which step failed and
//! why (reaping such a child at once).
//! Must not: decide whether to spawn (policy does), or log (the loop does).

pub mod child;
pub mod image;

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

pub use child::Stage;
use image::Launch;

/// Why a handler did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnError {
    /// `None`: doorman could not even fork (or make the pipe).
    pub stage: Option<Stage>,
    pub errno: Errno,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.stage {
            Some(s) => write!(f, "{}: {}", s.as_str(), self.errno.desc()),
            None => write!(f, "fork: {}", self.errno.desc()),
        }
    }
}

/// Forks and execs the launch's handler. Returns once the child has
/// exec'd (the error pipe closed with nothing in it) or failed (reaped
/// here, before returning).
pub fn spawn(launch: &mut Launch<'_>) -> Result<Pid, SpawnError> {
    let no_stage = |errno| SpawnError { stage: None, errno };
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(no_stage)?;
    let plan = launch.plan(wr.as_raw_fd());
    // SAFETY: doorman is single-threaded (no thread is ever started), so
    // the child is a faithful copy in which no lock is held. The child runs
    // only `exec_child`, which makes raw system calls on memory prepared
    // above (`plan` and what it points into, alive on this stack frame) and
    // never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(no_stage(Errno::last()));
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child; see `exec_child`.
        unsafe { child::exec_child(&plan) }
    }
    drop(wr);
    let pid = Pid::from_raw(pid);
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(rd.as_raw_fd(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if got == 0 {
        return Ok(pid);
    }
    // The child failed before exec and is exiting with 127: reap it now,
    // so that it never shows up as a connection's handler.
    while let Err(Errno::EINTR) = waitpid(pid, None) {}
    let stage = Stage::from_byte(buf[0]);
    let errno = if got == buf.len() {
        Errno::from_raw(i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]))
    } else {
        Errno::EIO
    };
    Err(SpawnError { stage, errno })
}
