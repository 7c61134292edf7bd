//! The parent side of a spawn: plan → clone (or fork) → learn whether the
//! child exec'd → pid.
//!
//! Owns: the `clone(CLONE_VM | CLONE_VFORK)` call on a small stack of the
//! child's own (mapped once), and the
//! `fork()` fallback with its close-on-exec error pipe; learning from the
//! child whether `execve` happened, and if not, which step failed and why
//! (reaping such a child at once).
//! Must not: decide whether to spawn (policy does), or log (the loop does).
//!
//! Why clone: `fork()` copies doorman's page tables and then faults pages
//! back in copy-on-write, per connection; `clone(CLONE_VM | CLONE_VFORK)`
//! shares doorman's memory until the child's `execve`, as glibc's
//! `posix_spawn` does, without its reset of every signal disposition.
//! Measured in the README's Performance section.

pub mod child;
pub mod image;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

pub use child::Stage;
use child::{ChildPlan, Report};
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

/// How handlers are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Clone, falling back to fork for a while on a saturated machine
    /// (see [`spawn`]): the default.
    Auto,
    /// `clone(CLONE_VM | CLONE_VFORK)` on the child stack, always:
    /// `DOORMAN_SPAWN=clone` (tests use it to pin the fast path).
    Clone,
    /// `fork()` and an error pipe: `DOORMAN_SPAWN=fork`, for comparison
    /// (the benchmark runs both) and as a fallback should the child
    /// stack not be mapped.
    Fork,
}

/// The child's stack: `exec_child` uses well under 4 KiB (its largest
/// local is a 256-byte fd array); this leaves room for libc's wrappers.
const CHILD_STACK: usize = 64 * 1024;
/// A guard page below it, so that an overflow faults (killing only the
/// child) instead of writing into doorman's memory.
const GUARD: usize = 4096;

/// The method in use, chosen once from `DOORMAN_SPAWN` (read at the first
/// spawn: `fork`, `clone`, anything else or nothing: auto).
pub fn method() -> Method {
    static METHOD: OnceLock<Method> = OnceLock::new();
    *METHOD.get_or_init(|| match std::env::var_os("DOORMAN_SPAWN") {
        Some(v) if v == "fork" => Method::Fork,
        Some(v) if v == "clone" => Method::Clone,
        _ => Method::Auto,
    })
}

/// The top of the child stack (16-byte aligned), mapped at the first
/// spawn; `None` if it could not be mapped (then doorman forks).
fn child_stack_top() -> Option<usize> {
    static TOP: OnceLock<Option<usize>> = OnceLock::new();
    *TOP.get_or_init(|| {
        let len = GUARD + CHILD_STACK;
        // SAFETY: an anonymous private mapping at an address the kernel
        // picks; nothing else refers to it. Pages are only committed when
        // the child touches them (a few KiB of RSS).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the lowest page of the mapping we just made.
        if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } != 0 {
            return None;
        }
        // Never unmapped: one stack for the life of the process.
        Some((base as usize + len) & !15)
    })
}

/// A clone that kept doorman suspended longer than this means the child
/// had to wait for a CPU before it could exec. (A clone spawn suspends
/// doorman for 50-200 µs on an idle machine here.)
const SLOW_CLONE: Duration = Duration::from_micros(500);
/// Clones judged together: a single slow one is noise (another process
/// had the CPU for a moment); half of them slow is a saturated machine.
const WINDOW: u32 = 16;
/// Spawns made by fork after the first slow window; each slow window in a
/// row doubles it, up to `MAX_FORK_RUN`, so that on a machine saturated
/// for long the clone probes cost little; a fast window resets it.
const FORK_RUN: u32 = 256;
const MAX_FORK_RUN: u32 = 16 * 1024;

/// Clones in the current window, and how many of them were slow.
static CLONES: AtomicU32 = AtomicU32::new(0);
static SLOW: AtomicU32 = AtomicU32::new(0);
/// Spawns left to make by fork before clone is tried again.
static FORK_LEFT: AtomicU32 = AtomicU32::new(0);
/// The length of the next fork run.
static NEXT_RUN: AtomicU32 = AtomicU32::new(FORK_RUN);

/// Starts the launch's handler. Returns once the child has exec'd or
/// failed (then it is reaped here, before returning).
///
/// Clone is the default, with one exception measured on a saturated
/// 2-core machine: the clone child is a new task, which the scheduler
/// queues behind the running ones for up to a time slice (new tasks start
/// with a vruntime debit), and doorman, suspended until the child's
/// execve, waited 6.5 ms (median) per spawn, capping it near 150 conn/s,
/// where fork returned in 92 µs and left the queued children to run in
/// parallel. So when half the clones of a window of `WINDOW` suspended
/// doorman longer than `SLOW_CLONE`, the next spawns use fork (`FORK_RUN`
/// of them, doubling while it lasts); then clone is tried again. A window
/// ends as soon as its verdict is known. (Relaxed atomics: doorman is
/// single-threaded; they are statics only to need no `&mut` state.)
pub fn spawn(launch: &mut Launch<'_>) -> Result<Pid, SpawnError> {
    let top = match (method(), child_stack_top()) {
        (Method::Auto, Some(top)) => top,
        (Method::Clone, Some(top)) => return spawn_clone(launch, top),
        _ => return spawn_fork(launch),
    };
    let left = FORK_LEFT.load(Ordering::Relaxed);
    if left > 0 {
        FORK_LEFT.store(left - 1, Ordering::Relaxed);
        return spawn_fork(launch);
    }
    // Instant::now reads the vDSO clock: no system call.
    let t0 = Instant::now();
    let r = spawn_clone(launch, top);
    let slow = SLOW.load(Ordering::Relaxed) + u32::from(t0.elapsed() > SLOW_CLONE);
    let clones = CLONES.load(Ordering::Relaxed) + 1;
    if slow * 2 >= WINDOW {
        // Saturated: fork for a while, longer each time in a row.
        let run = NEXT_RUN.load(Ordering::Relaxed);
        FORK_LEFT.store(run, Ordering::Relaxed);
        NEXT_RUN.store((run * 2).min(MAX_FORK_RUN), Ordering::Relaxed);
        CLONES.store(0, Ordering::Relaxed);
        SLOW.store(0, Ordering::Relaxed);
    } else if (clones - slow) * 2 > WINDOW {
        // Clones are fast: a new window, and a short first fork run.
        NEXT_RUN.store(FORK_RUN, Ordering::Relaxed);
        CLONES.store(0, Ordering::Relaxed);
        SLOW.store(0, Ordering::Relaxed);
    } else {
        CLONES.store(clones, Ordering::Relaxed);
        SLOW.store(slow, Ordering::Relaxed);
    }
    r
}

/// The clone child's entry point, on the child stack.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildPlan` on `spawn_clone`'s frame, which
    // stays alive and unchanged while the parent is suspended
    // (CLONE_VFORK); see `exec_child` for the rest of the contract.
    unsafe { child::exec_child(&*(arg as *const ChildPlan)) }
}

fn spawn_clone(launch: &mut Launch<'_>, top: usize) -> Result<Pid, SpawnError> {
    let mut slot: u64 = 0;
    let plan = launch.plan(Report::Slot(&mut slot));
    // No signal handler can run in the child, which shares doorman's
    // memory: doorman installs none (its signals come through a signalfd
    // and stay blocked; the child inherits that mask and empties it only
    // after resetting the ignored dispositions). Only the Rust runtime's
    // SIGSEGV/SIGBUS handler exists, for synchronous faults, which end the
    // child either way.
    let pid = {
        // SAFETY: doorman is single-threaded, so no other thread holds a
        // lock or can touch the memory the child shares (CLONE_VM). The
        // child runs only `child_entry` → `exec_child`, which makes raw
        // system calls on memory prepared above (`plan` and what it points
        // into, kept alive and unchanged on this frame, which is suspended
        // until the child has exec'd or exited: CLONE_VFORK), writes only
        // its own stack (the mapping from `child_stack_top`, used by one
        // child at a time since we are suspended meanwhile), the report
        // slot, the `LISTEN_PID` digits and errno, and never returns.
        // SIGCHLD as the exit signal makes it an ordinary child for
        // `waitpid`.
        unsafe {
            libc::clone(
                child_entry,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&plan as *const ChildPlan).cast_mut().cast(),
            )
        }
    };
    if pid < 0 {
        return Err(SpawnError {
            stage: None,
            errno: Errno::last(),
        });
    }
    let pid = Pid::from_raw(pid);
    // SAFETY: the child wrote the slot (or not) before its exec or exit,
    // and the kernel woke us after that; a volatile read, as the write was
    // done behind the compiler's back.
    let report = unsafe { std::ptr::read_volatile(&slot) };
    match child::decode(report) {
        None => Ok(pid),
        Some((stage, errno)) => {
            reap_failed(pid);
            Err(SpawnError {
                stage,
                errno: Errno::from_raw(errno),
            })
        }
    }
}

fn spawn_fork(launch: &mut Launch<'_>) -> Result<Pid, SpawnError> {
    let no_stage = |errno| SpawnError { stage: None, errno };
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(no_stage)?;
    let plan = launch.plan(Report::Pipe(wr.as_raw_fd()));
    let pid = {
        // SAFETY: doorman is single-threaded (no thread is ever started),
        // so the child is a faithful copy in which no lock is held. The
        // child runs only `exec_child`, which makes raw system calls on
        // memory prepared above (`plan` and what it points into, alive on
        // this stack frame) and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: we are the freshly forked child; see `exec_child`.
            unsafe { child::exec_child(&plan) }
        }
        pid
    };
    if pid < 0 {
        return Err(no_stage(Errno::last()));
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
    reap_failed(pid);
    let stage = Stage::from_byte(buf[0]);
    let errno = if got == buf.len() {
        Errno::from_raw(i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]))
    } else {
        Errno::EIO
    };
    Err(SpawnError { stage, errno })
}

/// The child failed before exec and is exiting with 127: reap it now, so
/// that it never shows up as a connection's handler.
fn reap_failed(pid: Pid) {
    while let Err(Errno::EINTR) = waitpid(pid, None) {}
}
