//! The parent side of a spawn: plan → clone (or fork) → pid, and, once
//! the child is reaped, what became of it.
//!
//! Owns: the detached clone (`clone(CLONE_VM | CLONE_CHILD_CLEARTID)`,
//! one slot per child on its way to exec: stack, plan, connection bytes,
//! report word, a reference to its image), the `clone(CLONE_VM |
//! CLONE_VFORK)` call on a stack mapped once, and `fork()` with its report
//! word in a page shared with the child; learning whether `execve`
//! happened, and if not, which step failed and why.
//! Must not: decide whether to spawn (policy does), log (the loop does),
//! or wait for a child that someone else can stop (see [`spawn`]).
//!
//! Why clone: `fork()` copies doorman's page tables and then faults pages
//! back in copy-on-write, per connection; `CLONE_VM` shares doorman's
//! memory until the child's `execve`, as glibc's `posix_spawn` does,
//! without its reset of every signal disposition. Why detached: with
//! `CLONE_VFORK` doorman sleeps until the child has exec'd, a context
//! switch out and back per connection, and the next connection waits;
//! without it doorman accepts the next one while the child execs on the
//! other CPU. Measured in the README's Performance section.

pub mod child;
pub mod image;
pub mod sandbox;
pub mod seccomp;

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::Pid;

pub use child::Stage;
use child::{ChildPlan, SIGSET_SIZE};
use image::{Launch, Own};

/// Why a handler did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnError {
    /// `None`: doorman could not even clone or fork.
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
    /// vfork for a connection that arrives while no handler runs and whose
    /// handler keeps doorman's credentials, the detached clone otherwise
    /// (falling back to fork when [`MAX_SLOTS`] children are still on
    /// their way to exec): the default. See [`spawn`].
    Auto,
    /// The detached clone, always (fork when every slot is held):
    /// `DOORMAN_SPAWN=clone` (tests use it to pin the fast path).
    Clone,
    /// `clone(CLONE_VM | CLONE_VFORK)` on the child stack, falling back to
    /// fork for a while on a saturated machine (see [`spawn_vfork`]), and
    /// never for a handler that changes credentials:
    /// `DOORMAN_SPAWN=vfork`, for comparison.
    Vfork,
    /// `fork()`: `DOORMAN_SPAWN=fork`, for comparison (the benchmark runs
    /// it) and as the fallback of the others.
    Fork,
}

/// The child's stack: `exec_child` uses well under 4 KiB (its largest
/// local is a 256-byte fd array); this leaves room for libc's wrappers.
const CHILD_STACK: usize = 64 * 1024;
/// A guard page below it, so that an overflow faults (killing only the
/// child) instead of writing into doorman's memory.
const GUARD: usize = 4096;

/// The method in use, chosen once from `DOORMAN_SPAWN` (read at the first
/// spawn: `fork`, `clone`, `vfork`, anything else or nothing: auto).
pub fn method() -> Method {
    static METHOD: OnceLock<Method> = OnceLock::new();
    *METHOD.get_or_init(|| match std::env::var_os("DOORMAN_SPAWN") {
        Some(v) if v == "fork" => Method::Fork,
        Some(v) if v == "clone" && child::sys::RAW => Method::Clone,
        Some(v) if v == "vfork" => Method::Vfork,
        _ if child::sys::RAW => Method::Auto,
        _ => Method::Vfork,
    })
}

/// Whether handlers get a session of their own (`setsid`) or only a
/// process group (`setpgid`), decided once: a session when doorman has a
/// controlling terminal (started from a shell), which handlers must not
/// share; otherwise (a daemon, a service, a container) a process group,
/// which keeps handlers apart from doorman just as well and away from any
/// terminal (not being session leaders, they cannot acquire one), and
/// costs the kernel less: with scheduler autogroups (on by default) each
/// new session makes a new scheduling group, which measured here added a
/// time slice of latency per connection on a busy machine.
pub fn new_session() -> bool {
    static SESSION: OnceLock<bool> = OnceLock::new();
    *SESSION.get_or_init(|| {
        // SAFETY: opening a path with flags; the fd, if any, is closed.
        let fd = unsafe {
            libc::open(
                c"/dev/tty".as_ptr(),
                libc::O_RDONLY | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd >= 0 {
            // SAFETY: the fd we just opened.
            unsafe { libc::close(fd) };
        }
        fd >= 0
    })
}

/// The top of the vfork child stack (16-byte aligned), mapped at the
/// first spawn; `None` if it could not be mapped (then doorman forks).
fn child_stack_top() -> Option<usize> {
    static TOP: OnceLock<Option<usize>> = OnceLock::new();
    *TOP.get_or_init(map_stack)
}

/// Maps a child stack with a guard page below it; returns its top.
fn map_stack() -> Option<usize> {
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
    // Never unmapped: a stack lives as long as the process.
    Some((base as usize + len) & !15)
}

/// Every signal blocked in doorman while it makes a `CLONE_VM` child, so
/// that the child is born with all of them blocked (it empties its mask
/// right before `execve`): before Linux 5.16 a core-dumping signal that
/// reached a process sharing doorman's memory killed doorman too. Dropping
/// it restores doorman's mask (its trapped signals stay blocked).
struct AllBlocked(u64);

impl AllBlocked {
    fn new() -> AllBlocked {
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: rt_sigprocmask on this thread with two 8-byte sets we
        // own (the kernel ignores SIGKILL and SIGSTOP in it).
        let _ = unsafe {
            child::sys::call4(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as usize,
                &all as *const u64 as usize,
                &mut old as *mut u64 as usize,
                SIGSET_SIZE,
            )
        };
        AllBlocked(old)
    }
}

impl Drop for AllBlocked {
    fn drop(&mut self) {
        // SAFETY: as in `new`, putting back the mask saved there.
        let _ = unsafe {
            child::sys::call4(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as usize,
                &self.0 as *const u64 as usize,
                0,
                SIGSET_SIZE,
            )
        };
    }
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

/// Starts the launch's handler. `alone`: no other handler is running.
///
/// `Ok(pid)`: the child exists. Whether it then exec'd is learnt when it
/// is reaped ([`reaped`]): a child that fails before `execve` stores the
/// step and errno in its report word and exits 127. `Err`: no handler to
/// track (the clone or fork itself failed, or a vfork child failed, whose
/// exit is reaped later as that of an unknown child).
///
/// doorman never waits here for a child that someone else could stop: a
/// handler that changes credentials can be signalled by its user from the
/// moment it has switched, and a `SIGSTOP` before its `execve` would
/// leave a vfork parent suspended for good. Such handlers are started
/// with the detached clone (or fork); vfork is used only for a handler
/// that keeps doorman's own credentials, which only doorman's user (who
/// can stop doorman anyway) can signal. No path reads a pipe or waits for
/// a slot: when every slot is held, fork does not wait for any of them.
///
/// The default uses vfork when `alone` and the detached clone otherwise.
/// Measured side by side (3 interleaved rounds of 3,000 connections): a
/// lone connection is served sooner with vfork (c=1: 2,199 conn/s against
/// 2,000 detached), since doorman has nothing else to do meanwhile and
/// the child starts where doorman ran; with connections in flight the
/// detached clone wins (c=8: 4,328 against 3,951 with vfork alone; c=64:
/// 4,987 against 4,007), as doorman accepts the next one while the child
/// execs.
///
/// `conn`: doorman's copy of the connection the launch hands over, which
/// doorman closes: at once, or, for a detached child born sharing
/// doorman's fd table (see [`share_base`]), once that child has a copy of
/// its own (it says so with a `SIGCHLD`; [`settle`] closes it).
pub fn spawn(
    launch: &mut Launch<'_>,
    alone: bool,
    conn: Option<OwnedFd>,
) -> Result<Pid, SpawnError> {
    let stoppable = launch.image().switches_user();
    let mut conn = conn;
    let r = match method() {
        Method::Fork => spawn_fork(launch),
        Method::Vfork if !stoppable => spawn_vfork(launch).unwrap_or_else(|| spawn_fork(launch)),
        // A saturated machine: the detached clone, which suspends doorman
        // for no child, rather than fork, which costs doorman ~3x the CPU
        // of a clone (page tables copied, copy-on-write faults after).
        Method::Auto if alone && !stoppable => match spawn_vfork(launch) {
            Some(r) => r,
            None => detached_or_fork(launch, &mut conn),
        },
        Method::Vfork | Method::Auto | Method::Clone => detached_or_fork(launch, &mut conn),
    };
    drop(conn);
    r
}

/// The detached clone, or fork when every slot's child is still on its
/// way to exec (a saturated machine, or children stopped before their
/// exec): fork waits for none of them.
fn detached_or_fork(
    launch: &mut Launch<'_>,
    conn: &mut Option<OwnedFd>,
) -> Result<Pid, SpawnError> {
    match spawn_detached(launch, conn) {
        Some(r) => r,
        None => spawn_fork(launch),
    }
}

/// The fd below which a child sharing doorman's fd table takes its copy
/// (`ChildPlan::share_below`), or 0: share only when doorman keeps its
/// listeners lifted ([`crate::listen::high_base`]) and every fd of the
/// plan is below them. Then the clone copies no fd table and the child
/// copies only doorman's low fds; otherwise (few listeners, or a `wait`
/// listener handed over) the child is born with a copy of all of them.
fn share_base(plan: &ChildPlan) -> libc::c_int {
    let base = crate::listen::high_base();
    let low = plan
        .std
        .iter()
        .chain(plan.listen.iter().take(plan.nlisten))
        .all(|&fd| fd < base);
    if base > 0 && low {
        base
    } else {
        0
    }
}

/// doorman's pid, which a detached child sharing its fd table tells.
fn own_pid() -> libc::pid_t {
    static PID: OnceLock<libc::pid_t> = OnceLock::new();
    *PID.get_or_init(|| std::process::id() as libc::pid_t)
}

/// Connections doorman still holds for detached children that share its
/// fd table and have not yet taken their copy.
static HELD: AtomicU32 = AtomicU32::new(0);

/// Closes doorman's copy of each connection whose child has its own fd
/// table by now (or has exec'd or exited). Cheap when none is held; the
/// loop calls it each turn (a child that took its copy sends `SIGCHLD`,
/// which wakes the loop).
pub fn settle() {
    if HELD.load(Ordering::Relaxed) == 0 {
        return;
    }
    SLOTS.with(|cell| {
        for s in cell.borrow_mut().iter_mut() {
            s.settle();
        }
    })
}

/// At most this many detached children on their way to exec at once.
pub const MAX_SLOTS: usize = 64;

/// What one detached child uses until it has exec'd: a stack, its plan
/// and connection bytes, and two words in doorman's memory. Boxed, so
/// that nothing the child points to moves.
struct Slot {
    /// Set to 1 before the clone; the kernel stores 0 there (and wakes a
    /// futex waiter) when the child execs or exits
    /// (`CLONE_CHILD_CLEARTID`): from then on the child no longer uses
    /// doorman's memory.
    busy: AtomicU32,
    /// The child's failure (see [`child::encode`]); 0: none. A failure
    /// keeps the slot until [`reaped`] has collected it.
    report: AtomicU64,
    /// The child this slot was last used for (0: collected).
    pid: i32,
    /// The top of this slot's stack.
    stack: usize,
    plan: Option<ChildPlan>,
    /// Set by a child born sharing doorman's fd table once it has a copy
    /// of its own; until then doorman holds the connection (`held`).
    unshared: AtomicU32,
    held: Option<OwnedFd>,
    /// The connection's bytes and, while the child may read it, the
    /// image its plan points into (a reload may drop its service
    /// meanwhile: the slot keeps it alive).
    own: Own,
}

impl Slot {
    fn free(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0 && self.report.load(Ordering::Acquire) == 0
    }

    /// Lets go of the held connection once the child no longer needs
    /// doorman's copy: it has its own table, or it exec'd or exited.
    fn settle(&mut self) {
        if self.held.is_some()
            && (self.unshared.load(Ordering::Acquire) != 0
                || self.busy.load(Ordering::Acquire) == 0)
        {
            self.held = None;
            HELD.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

thread_local! {
    /// The slots made so far (doorman spawns from its one thread). Boxed:
    /// a push may move the vector while children use other slots, whose
    /// words and buffers must stay where the children see them.
    #[allow(clippy::vec_box)]
    static SLOTS: RefCell<Vec<Box<Slot>>> = const { RefCell::new(Vec::new()) };
}

/// The detached clone: `clone(CLONE_VM | CLONE_CHILD_CLEARTID)`. The
/// child runs in doorman's memory on a stack of its own while doorman goes
/// on at once (no CLONE_VFORK: doorman is never suspended, not even on a
/// machine too busy to run the child right away, nor by a child stopped
/// before its exec). `None`: no slot is free (or no stack could be
/// mapped, or this architecture has no raw system calls).
///
/// With `conn` and doorman's listeners lifted, the child is born sharing
/// doorman's fd table (`CLONE_FILES`: no copy at the clone) and takes its
/// own copy of the low fds as its first step; until it has, doorman keeps
/// the connection open in the slot (`conn` is taken).
fn spawn_detached(
    launch: &mut Launch<'_>,
    conn: &mut Option<OwnedFd>,
) -> Option<Result<Pid, SpawnError>> {
    if !child::sys::RAW {
        return None;
    }
    SLOTS.with(|cell| {
        let mut slots = cell.borrow_mut();
        let i = match slots.iter().position(|s| s.free()) {
            Some(i) => i,
            None if slots.len() < MAX_SLOTS => {
                slots.push(Box::new(Slot {
                    busy: AtomicU32::new(0),
                    report: AtomicU64::new(0),
                    pid: 0,
                    stack: map_stack()?,
                    plan: None,
                    unshared: AtomicU32::new(0),
                    held: None,
                    own: Own::default(),
                }));
                slots.len() - 1
            }
            None => return None,
        };
        let slot = &mut *slots[i];
        slot.settle();
        let mut plan = launch.plan_detached(slot.report.as_ptr(), &mut slot.own);
        let mut flags = libc::CLONE_VM | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD;
        if conn.is_some() {
            plan.share_below = share_base(&plan);
        }
        if plan.share_below > 0 {
            flags |= libc::CLONE_FILES;
            slot.unshared.store(0, Ordering::Release);
            plan.unshared = slot.unshared.as_ptr();
            plan.tell = own_pid();
        }
        let plan: *const ChildPlan = slot.plan.insert(plan);
        slot.busy.store(1, Ordering::Release);
        let blocked = AllBlocked::new();
        // SAFETY: doorman is single-threaded, so no other thread holds a
        // lock or can touch the memory the child shares (CLONE_VM). The
        // child runs only `child_entry` → `exec_child`, which makes raw
        // system calls (no errno, no libc state: `child::sys`) on memory
        // this slot owns (`plan`, `own`) or the image owns (kept alive by
        // `own` until the slot is reused or collected), and writes only its
        // own stack (this slot's, used by no other child until `busy` is
        // 0), the `LISTEN_PID` digits in `own`, and `report`. None of it is
        // touched by doorman until the kernel has cleared `busy` (the child
        // exec'd or exited). No signal handler can run in the child (see
        // `spawn_clone`), and every signal is blocked in it from birth.
        // SIGCHLD as the exit signal makes it an ordinary child for
        // `waitpid`.
        let pid = unsafe {
            libc::clone(
                child_entry,
                slot.stack as *mut libc::c_void,
                flags,
                plan.cast_mut().cast(),
                std::ptr::null_mut::<libc::pid_t>(),
                std::ptr::null_mut::<libc::c_void>(),
                slot.busy.as_ptr(),
            )
        };
        let errno = Errno::last();
        drop(blocked);
        if pid < 0 {
            slot.busy.store(0, Ordering::Release);
            slot.own.release();
            return Some(Err(SpawnError { stage: None, errno }));
        }
        slot.pid = pid;
        if flags & libc::CLONE_FILES != 0 {
            // The child may still need doorman's copy of the connection
            // (its table is doorman's until its first step): kept here
            // until `settle` sees it has its own.
            slot.held = conn.take();
            HELD.fetch_add(1, Ordering::Relaxed);
        }
        Some(Ok(Pid::from_raw(pid)))
    })
}

/// Report words shared with forked children: a page mapped `MAP_SHARED`
/// before the fork is the same memory in both processes, so a forked
/// child reports its failure the way a cloned one does, and doorman reads
/// it when it reaps the child, never waiting on a pipe. One word per
/// forked handler still running; pages of 512 words, made as needed and
/// kept.
#[derive(Default)]
struct Shared {
    pages: Vec<usize>,
    free: Vec<u32>,
    by_pid: HashMap<i32, u32>,
}

const WORDS_PER_PAGE: usize = 4096 / 8;

impl Shared {
    fn word(&self, i: u32) -> *mut u64 {
        let page = self.pages[i as usize / WORDS_PER_PAGE];
        (page as *mut u64).wrapping_add(i as usize % WORDS_PER_PAGE)
    }

    /// A free word, set to 0; `None` if no page could be mapped.
    fn take(&mut self) -> Option<u32> {
        if self.free.is_empty() {
            // SAFETY: a shared anonymous mapping at an address the kernel
            // picks; nothing else refers to it.
            let page = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if page == libc::MAP_FAILED {
                return None;
            }
            let first = (self.pages.len() * WORDS_PER_PAGE) as u32;
            self.pages.push(page as usize);
            self.free
                .extend((first..first + WORDS_PER_PAGE as u32).rev());
        }
        let i = self.free.pop()?;
        // SAFETY: a word of a page we mapped, used by no child (it is free).
        unsafe { std::ptr::write_volatile(self.word(i), 0) };
        Some(i)
    }

    /// The report of forked child `pid`, if it was one; its word is free
    /// again.
    fn collect(&mut self, pid: i32) -> Option<u64> {
        let i = self.by_pid.remove(&pid)?;
        // SAFETY: the child has exited (it is being reaped), so nothing
        // writes the word any more; a volatile read, as the write was done
        // in another process.
        let v = unsafe { std::ptr::read_volatile(self.word(i)) };
        self.free.push(i);
        Some(v)
    }
}

thread_local! {
    static SHARED: RefCell<Shared> = RefCell::new(Shared::default());
}

/// What became of child `pid`, to be asked when it is reaped: why it
/// exited without exec'ing (`Some`), or nothing (it exec'd, or it is not
/// a child this module started). Frees what the child held.
pub fn reaped(pid: Pid) -> Option<SpawnError> {
    let p = pid.as_raw();
    let from_slot = SLOTS.with(|cell| {
        let mut slots = cell.borrow_mut();
        let mut found = None;
        for s in slots.iter_mut() {
            if s.busy.load(Ordering::Acquire) != 0 {
                continue;
            }
            if s.pid == p {
                s.pid = 0;
                found = Some(s.report.swap(0, Ordering::AcqRel));
            }
            // Every child that used a free slot is done with its image.
            if s.report.load(Ordering::Acquire) == 0 {
                s.own.release();
            }
        }
        found
    });
    let report = match from_slot {
        Some(r) => r,
        None => SHARED.with(|s| s.borrow_mut().collect(p))?,
    };
    let (stage, errno) = child::decode(report)?;
    Some(SpawnError {
        stage,
        errno: Errno::from_raw(errno),
    })
}

/// The detached-clone slots made so far, and how many of them are held
/// (a child on its way to exec, or a failure not yet collected).
pub fn slots() -> (usize, usize) {
    SLOTS.with(|cell| {
        let slots = cell.borrow();
        (slots.len(), slots.iter().filter(|s| !s.free()).count())
    })
}

/// Gives back the pages of the idle slots' stacks and the images only
/// they still held (the loop is idle).
pub fn trim() {
    SLOTS.with(|cell| {
        for s in cell.borrow_mut().iter_mut().filter(|s| s.free()) {
            s.own.release();
            let len = CHILD_STACK;
            // SAFETY: the stack of a slot no child uses (`busy` is 0): its
            // contents are dead; the pages come back zeroed when used.
            unsafe {
                libc::madvise(
                    (s.stack - len) as *mut libc::c_void,
                    len,
                    libc::MADV_DONTNEED,
                );
            }
        }
    })
}

/// `clone(CLONE_VM | CLONE_VFORK)`, with one exception measured on a saturated
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
/// `None`: such a spawn (or no stack could be mapped); the caller makes
/// it: fork for the pinned vfork method, the detached clone for the
/// default (measured at c=1 on this VM, whose clones often looked slow: a
/// default that fell back to fork for half its spawns cost the daemon
/// 150-295 µs per connection against 85-170 µs for the detached clone).
fn spawn_vfork(launch: &mut Launch<'_>) -> Option<Result<Pid, SpawnError>> {
    let top = child_stack_top()?;
    let left = FORK_LEFT.load(Ordering::Relaxed);
    if left > 0 {
        FORK_LEFT.store(left - 1, Ordering::Relaxed);
        return None;
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
    Some(r)
}

/// The clone child's entry point, on the child stack.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildPlan` on `spawn_clone`'s frame, which
    // stays alive and unchanged while the parent is suspended
    // (CLONE_VFORK), or in a detached child's slot, which doorman leaves
    // alone until the child has exec'd or exited; see `exec_child` for
    // the rest of the contract.
    unsafe { child::exec_child(&*(arg as *const ChildPlan)) }
}

fn spawn_clone(launch: &mut Launch<'_>, top: usize) -> Result<Pid, SpawnError> {
    let mut slot: u64 = 0;
    let mut plan = launch.plan(&mut slot);
    // Sharing doorman's fd table is safe here for any plan `share_base`
    // allows, connection or not: doorman is suspended until the child has
    // exec'd or exited, so no fd of its changes meanwhile.
    plan.share_below = share_base(&plan);
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    if plan.share_below > 0 {
        flags |= libc::CLONE_FILES;
    }
    // No signal handler can run in the child, which shares doorman's
    // memory: doorman installs none (its signals come through a signalfd
    // and stay blocked), and every signal is blocked in the child from
    // birth until right before its execve. Only the Rust runtime's
    // SIGSEGV/SIGBUS handler exists, for synchronous faults, which end the
    // child either way.
    let blocked = AllBlocked::new();
    let pid = {
        // SAFETY: doorman is single-threaded, so no other thread holds a
        // lock or can touch the memory the child shares (CLONE_VM). The
        // child runs only `child_entry` → `exec_child`, which makes raw
        // system calls on memory prepared above (`plan` and what it points
        // into, kept alive and unchanged on this frame, which is suspended
        // until the child has exec'd or exited: CLONE_VFORK), writes only
        // its own stack (the mapping from `child_stack_top`, used by one
        // child at a time since we are suspended meanwhile), the report
        // slot and the `LISTEN_PID` digits, and never returns. It keeps
        // doorman's credentials (see `spawn`), so only doorman's own user
        // could stop it before its exec. SIGCHLD as the exit signal makes
        // it an ordinary child for `waitpid`.
        unsafe {
            libc::clone(
                child_entry,
                top as *mut libc::c_void,
                flags,
                (&plan as *const ChildPlan).cast_mut().cast(),
            )
        }
    };
    let errno = Errno::last();
    drop(blocked);
    if pid < 0 {
        return Err(SpawnError { stage: None, errno });
    }
    let pid = Pid::from_raw(pid);
    // SAFETY: the child wrote the slot (or not) before its exec or exit,
    // and the kernel woke us after that; a volatile read, as the write was
    // done behind the compiler's back.
    let report = unsafe { std::ptr::read_volatile(&slot) };
    match child::decode(report) {
        None => Ok(pid),
        // The child is exiting with 127; the loop reaps it like any child
        // it does not know (no waiting here).
        Some((stage, errno)) => Err(SpawnError {
            stage,
            errno: Errno::from_raw(errno),
        }),
    }
}

/// `fork()`, with the report word in a shared page (see [`Shared`]):
/// returns as soon as the child exists.
fn spawn_fork(launch: &mut Launch<'_>) -> Result<Pid, SpawnError> {
    let no_stage = |errno| SpawnError { stage: None, errno };
    let Some((idx, word)) = SHARED.with(|s| {
        let mut s = s.borrow_mut();
        s.take().map(|i| (i, s.word(i)))
    }) else {
        return Err(no_stage(Errno::ENOMEM));
    };
    let plan = launch.plan(word);
    let pid = {
        // SAFETY: doorman is single-threaded (no thread is ever started),
        // so the child is a faithful copy in which no lock is held. The
        // child runs only `exec_child`, which makes raw system calls on
        // memory prepared above (`plan` and what it points into, alive on
        // this stack frame, and the shared report word) and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: we are the freshly forked child; see `exec_child`.
            unsafe { child::exec_child(&plan) }
        }
        pid
    };
    SHARED.with(|s| {
        let mut s = s.borrow_mut();
        if pid < 0 {
            s.free.push(idx);
        } else {
            s.by_pid.insert(pid, idx);
        }
    });
    if pid < 0 {
        return Err(no_stage(Errno::last()));
    }
    Ok(Pid::from_raw(pid))
}
