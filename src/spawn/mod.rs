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

/// The child's stack: `exec_child` needs a few KiB; this leaves room.
const CHILD_STACK: usize = 64 * 1024;

/// The clone child's entry point.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildPlan` the parent keeps alive while it is
    // suspended (CLONE_VFORK); see `exec_child`.
    unsafe { child::exec_child(&*(arg as *const child::ChildPlan)) }
}

/// Forks and execs the launch's handler. Returns once the child has
/// exec'd (the error pipe closed with nothing in it) or failed (reaped
/// here, before returning).
pub fn spawn(launch: &mut Launch<'_>) -> Result<Pid, SpawnError> {
    let no_stage = |errno| SpawnError { stage: None, errno };
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(no_stage)?;
    let plan = launch.plan(wr.as_raw_fd());
    // The child gets a stack of its own and shares doorman's memory until
    // it execs (CLONE_VM | CLONE_VFORK, as posix_spawn does): no page
    // tables are copied, which is most of what fork() costs the daemon.
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the top of a buffer we own, aligned down to 16 bytes as the
    // ABI wants; the buffer outlives the child's use of it (CLONE_VFORK
    // suspends us until the child has exec'd or exited).
    let top = unsafe {
        let end = stack.as_mut_ptr().add(stack.len());
        end.sub(end as usize % 16)
    };
    // Every signal blocked around the clone, so that no handler of
    // doorman's runs in the child before `exec_child` has reset them.
    // SAFETY: sigset_t is plain data; all zeroes is a valid (empty) value.
    let (mut all, mut old): (libc::sigset_t, libc::sigset_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: sigfillset/sigprocmask on sets we own.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: doorman is single-threaded, so no lock can be held by another
    // thread. The child runs only `child_entry` → `exec_child`, which makes
    // raw system calls on memory prepared above (`plan` and what it points
    // into, alive on this stack frame, which is suspended meanwhile), uses
    // only its own stack, and ends in execve or _exit. Its syscalls may
    // leave errno changed for us, which nothing here reads afterwards
    // without a fresh failing call.
    let pid = unsafe {
        libc::clone(
            child_entry,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&plan as *const child::ChildPlan).cast_mut().cast(),
        )
    };
    let clone_errno = Errno::last();
    // SAFETY: restoring the mask saved above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    if pid < 0 {
        return Err(no_stage(clone_errno));
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
