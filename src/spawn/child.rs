//! The only code that runs between the spawn (the detached
//! `clone(CLONE_VM | CLONE_CHILD_CLEARTID)`, `clone(CLONE_VM |
//! CLONE_VFORK)`, or `fork()`) and `execve()`.
//!
//! # The child contract
//!
//! 1. **Prepared in the parent:** the program path, NULL-terminated argv and
//!    envp pointer arrays, the `LISTEN_PID=` entry with a fixed-width digit
//!    slot, the supplementary group list (from `getgrouplist`, never
//!    `initgroups` here), the fd moves as a fixed array, the list of signals
//!    to reset, every count checked against its array's length, and where
//!    to report a failure: a word in the parent's memory (clone) or in a
//!    page shared with it (`MAP_SHARED`, fork). See [`super::image`].
//! 2. **Allowed here:** system calls made directly ([`sys`]: an inline
//!    `syscall`/`svc` instruction on x86-64 and AArch64), in this order:
//!    `close_range` (a child born sharing doorman's fd table takes its
//!    copy of the low fds; `unshare` before Linux 5.9; a detached one
//!    then sets its slot's `unshared` word and sends doorman `SIGCHLD`),
//!    `rt_sigaction`, `setpgid` (or `setsid`), `fcntl`, `dup3`,
//!    `prlimit64`, `setpriority`, `umask`, `setgroups` → `setgid` →
//!    `setuid`, `prctl(PR_CAP_AMBIENT_CLEAR_ALL)` and `capset` (a handler
//!    that is not root keeps no capability), the verification with
//!    `getuid` and friends, `chdir`, `getpid`, `rt_sigprocmask` (the mask
//!    emptied as the very last step) and `execve`, and on failure `exit`.
//!    Not through the C library: its wrappers write `errno`, a thread-local
//!    of doorman's own thread, which the detached child shares while
//!    doorman runs (and its credential wrappers consult the thread list,
//!    which a `CLONE_VM` child shares too). Nothing else: no allocation,
//!    no logging, no locks, no `CString::new`, no `format!`, no
//!    `nix::unistd::execve` (it allocates), no indexing or slicing that
//!    could panic (every loop is bounded by `take`).
//! 3. **Memory:** with `CLONE_VM` the child runs in doorman's memory on a
//!    stack of its own. The only memory it writes is that stack, the
//!    `LISTEN_PID` digits, the report word and (a detached child sharing
//!    doorman's fd table) the `unshared` word; the detached child's are
//!    its own (a slot in [`super`]) until the kernel clears the slot's
//!    `busy` word at its exec or exit, and doorman neither reuses them nor
//!    frees what the plan points into: the slot holds a reference to the
//!    image, so a reload can drop its old services at once.
//! 4. **Fd rule:** fds 0-2 are placed first (their sources are all ≥ 3, or
//!    fd 2 itself for "doorman's stderr"); then the `LISTEN_FDS` sockets go
//!    to 3, 4, ...: a source already inside that range is first copied
//!    above it, so that no placement overwrites a socket still to be
//!    placed; a socket already at its place has `FD_CLOEXEC` cleared
//!    explicitly (`dup3` to itself is refused). Sockets are handed
//!    blocking. (The child has a copy of doorman's fd table: born with
//!    one, or, with `CLONE_FILES`, taken as its first step, of the fds
//!    below doorman's lifted listeners, where every fd of its plan is.)
//! 5. **Failure path:** store the stage and errno in the report word, then
//!    `exit(127)`. doorman reads the word when it reaps the child (at once
//!    for vfork, whose parent is suspended until then); it never waits for
//!    a child to report.
//! 6. **Never return:** [`exec_child`] is `-> !`; a child that returned
//!    would become a second doorman running the event loop.
//! 7. **Signals:** doorman installs no signal handler (its trapped signals
//!    stay blocked and are read from a signalfd), so none can run in the
//!    child, which shares its memory. A `CLONE_VM` child is born with every
//!    signal blocked (doorman blocks them all around the clone): before
//!    Linux 5.16 a core-dumping signal delivered to a process sharing
//!    doorman's memory killed doorman too. The child resets to `SIG_DFL`
//!    the signals doorman ignores (SIGPIPE, and what it inherited ignored,
//!    1 to 64), and empties its mask right before `execve`. Nothing else:
//!    every other disposition is already the default. (The kernel gives a
//!    detached `CLONE_VM` child no alternate signal stack and no rseq
//!    area, so it shares neither with doorman.)
//! 8. **Why this is safe:** every step is one system call on memory
//!    prepared before the clone and not touched by doorman until the child
//!    is gone from it; no library state is read or written. The same
//!    list, call by call, is in doorman(8), CHILD CONTRACT.

use std::os::fd::RawFd;

use libc::{c_char, c_int, c_long, gid_t, pid_t, uid_t};

/// System calls made without the C library: the result, or the errno as
/// a value. Nothing is written to `errno`, which is a thread-local of the
/// thread that made the clone: a child that runs alongside doorman in its
/// memory (the detached clone) must not write it.
pub mod sys {
    use libc::c_long;

    /// Whether this architecture has the raw system calls below (elsewhere
    /// they go through `libc::syscall`, which writes errno, and the
    /// detached clone is not used).
    pub const RAW: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

    /// One system call with up to six arguments.
    ///
    /// # Safety
    /// The arguments must be valid for system call `n`, as for `syscall(2)`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub unsafe fn call(n: c_long, a: [usize; 6]) -> Result<usize, i32> {
        let ret: isize;
        // SAFETY: the x86-64 system call convention: number in rax,
        // arguments in rdi, rsi, rdx, r10, r8, r9; the kernel clobbers rcx
        // and r11 and returns in rax. No stack is used.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a[0],
                in("rsi") a[1],
                in("rdx") a[2],
                in("r10") a[3],
                in("r8") a[4],
                in("r9") a[5],
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        decode(ret)
    }

    /// One system call with up to six arguments.
    ///
    /// # Safety
    /// The arguments must be valid for system call `n`, as for `syscall(2)`.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    pub unsafe fn call(n: c_long, a: [usize; 6]) -> Result<usize, i32> {
        let ret: isize;
        // SAFETY: the AArch64 system call convention: number in x8,
        // arguments in x0-x5, result in x0. No stack is used.
        unsafe {
            core::arch::asm!(
                "svc 0",
                in("x8") n,
                inlateout("x0") a[0] as isize => ret,
                in("x1") a[1],
                in("x2") a[2],
                in("x3") a[3],
                in("x4") a[4],
                in("x5") a[5],
                options(nostack)
            );
        }
        decode(ret)
    }

    /// Elsewhere: the C library's `syscall`, which sets errno on failure.
    ///
    /// # Safety
    /// The arguments must be valid for system call `n`, as for `syscall(2)`.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub unsafe fn call(n: c_long, a: [usize; 6]) -> Result<usize, i32> {
        // SAFETY: as the caller promised.
        let r = unsafe { libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]) };
        if r == -1 {
            Err(unsafe { *libc::__errno_location() })
        } else {
            Ok(r as usize)
        }
    }

    /// The kernel returns -errno for errors: -4095..=-1.
    #[allow(dead_code)]
    fn decode(ret: isize) -> Result<usize, i32> {
        if (-4095..0).contains(&ret) {
            Err(-ret as i32)
        } else {
            Ok(ret as usize)
        }
    }

    /// Shorthands by argument count.
    ///
    /// # Safety
    /// As [`call`].
    #[inline(always)]
    pub unsafe fn call0(n: c_long) -> Result<usize, i32> {
        unsafe { call(n, [0; 6]) }
    }
    /// # Safety
    /// As [`call`].
    #[inline(always)]
    pub unsafe fn call1(n: c_long, a: usize) -> Result<usize, i32> {
        unsafe { call(n, [a, 0, 0, 0, 0, 0]) }
    }
    /// # Safety
    /// As [`call`].
    #[inline(always)]
    pub unsafe fn call2(n: c_long, a: usize, b: usize) -> Result<usize, i32> {
        unsafe { call(n, [a, b, 0, 0, 0, 0]) }
    }
    /// # Safety
    /// As [`call`].
    #[inline(always)]
    pub unsafe fn call3(n: c_long, a: usize, b: usize, c: usize) -> Result<usize, i32> {
        unsafe { call(n, [a, b, c, 0, 0, 0]) }
    }
    /// # Safety
    /// As [`call`].
    #[inline(always)]
    pub unsafe fn call4(n: c_long, a: usize, b: usize, c: usize, d: usize) -> Result<usize, i32> {
        unsafe { call(n, [a, b, c, d, 0, 0]) }
    }
}

/// The kernel's `struct sigaction` for `rt_sigaction` with `SIG_DFL`: all
/// zero (handler, flags, restorer, mask), and larger than any
/// architecture's layout of it.
#[repr(C)]
pub struct KernelSigaction {
    pub words: [usize; 8],
}

/// The kernel's signal set: 64 signals, one bit each (signal n is bit n-1).
pub const SIGSET_SIZE: usize = 8;

/// Which step failed (the stage half of the report word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Signals = 1,
    Setsid = 2,
    Dup2 = 3,
    Cloexec = 4,
    Setgroups = 5,
    Setgid = 6,
    Setuid = 7,
    VerifyCreds = 8,
    Exec = 9,
    Rlimit = 10,
    Nice = 11,
    Chdir = 12,
    Setpgid = 13,
    Caps = 14,
    Unshare = 15,
}

impl Stage {
    pub fn from_byte(b: u8) -> Option<Stage> {
        Some(match b {
            1 => Stage::Signals,
            2 => Stage::Setsid,
            3 => Stage::Dup2,
            4 => Stage::Cloexec,
            5 => Stage::Setgroups,
            6 => Stage::Setgid,
            7 => Stage::Setuid,
            8 => Stage::VerifyCreds,
            9 => Stage::Exec,
            10 => Stage::Rlimit,
            11 => Stage::Nice,
            12 => Stage::Chdir,
            13 => Stage::Setpgid,
            14 => Stage::Caps,
            15 => Stage::Unshare,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Signals => "reset signals",
            Stage::Setsid => "setsid",
            Stage::Dup2 => "dup2",
            Stage::Cloexec => "clear close-on-exec",
            Stage::Setgroups => "setgroups",
            Stage::Setgid => "setgid",
            Stage::Setuid => "setuid",
            Stage::VerifyCreds => "verify credentials",
            Stage::Exec => "exec",
            Stage::Rlimit => "setrlimit",
            Stage::Nice => "setpriority",
            Stage::Chdir => "chdir",
            Stage::Setpgid => "setpgid",
            Stage::Caps => "drop capabilities",
            Stage::Unshare => "unshare fd table",
        }
    }
}

/// At most this many sockets handed with `LISTEN_FDS` (fds 3 and up).
pub const MAX_LISTEN: usize = 64;
/// At most this many resource limits.
pub const MAX_RLIMITS: usize = 16;
/// At most this many signals reset to their default disposition.
pub const MAX_SIGNALS: usize = 64;

/// Credentials to switch to, as plain numbers and a pointer to the group list.
#[derive(Clone, Copy)]
pub struct RawCreds {
    pub uid: uid_t,
    pub gid: gid_t,
    pub groups: *const gid_t,
    pub ngroups: usize,
    /// Whether to call `setgroups` (root, or `CAP_SETGID`, may).
    pub set_groups: bool,
}

/// Everything the child needs, as raw pointers into memory the parent
/// prepared and keeps alive across the spawn. Plain data: no destructor
/// runs in the child. The counts are at most their arrays' lengths
/// ([`ChildPlan::checked`]); the child reads no further either way.
pub struct ChildPlan {
    pub path: *const c_char,
    pub argv: *const *const c_char,
    pub envp: *const *const c_char,
    /// Sources of fds 0, 1 and 2 (2 itself means "leave doorman's stderr").
    pub std: [RawFd; 3],
    /// Sockets placed at 3, 4, ... (`LISTEN_FDS`).
    pub listen: [RawFd; MAX_LISTEN],
    pub nlisten: usize,
    /// (resource, soft, hard) for `setrlimit`.
    pub rlimits: [(c_int, u64, u64); MAX_RLIMITS],
    pub nrlimits: usize,
    /// `umask` to set, if any.
    pub umask: Option<libc::mode_t>,
    /// `nice` value to set, if any.
    pub nice: Option<c_int>,
    /// Directory to change to (NUL-terminated), or null.
    pub cwd: *const c_char,
    /// A session of its own (`setsid`) rather than a process group of its
    /// own (`setpgid`): see [`super::new_session`].
    pub new_session: bool,
    /// Signals whose disposition is reset to `SIG_DFL`.
    pub reset_signals: [c_int; MAX_SIGNALS],
    pub nsignals: usize,
    /// The digit slot of the `LISTEN_PID=` entry: (start, width). The child
    /// writes its pid there, then a NUL.
    pub listen_pid_slot: Option<(*mut u8, usize)>,
    pub creds: Option<RawCreds>,
    /// Where a failure is reported: a word the parent reads when it reaps
    /// the child (in its memory for a `CLONE_VM` child, in a page shared
    /// with it after `fork()`).
    pub report: *mut u64,
    /// 0: the child was born with a copy of doorman's fd table. Otherwise
    /// it shares doorman's (`CLONE_FILES`) and its first step takes a copy
    /// of only the fds below this one (`close_range(N, ~0,
    /// CLOSE_RANGE_UNSHARE)`), where every fd of the plan is.
    pub share_below: c_int,
    /// A detached child sharing doorman's table: where it stores 1 once
    /// it has its copy, and the process it then sends `SIGCHLD` so that
    /// doorman closes its own copy of the connection (null and 0: none).
    pub unshared: *mut u32,
    pub tell: pid_t,
}

impl ChildPlan {
    /// The plan with every count clamped to its array's length: what the
    /// parent hands the child (checked here, before the spawn, so that
    /// nothing in the child depends on it).
    pub fn checked(mut self) -> ChildPlan {
        self.nlisten = self.nlisten.min(MAX_LISTEN);
        self.nrlimits = self.nrlimits.min(MAX_RLIMITS);
        self.nsignals = self.nsignals.min(MAX_SIGNALS);
        self
    }
}

/// A failure as stored in the report word: stage in the high half, errno
/// in the low half. Never 0 (stages start at 1).
pub fn encode(stage: Stage, errno: c_int) -> u64 {
    (stage as u64) << 32 | errno as u32 as u64
}

/// The inverse of [`encode`]: `None` for 0 (no failure).
pub fn decode(v: u64) -> Option<(Option<Stage>, c_int)> {
    (v != 0).then(|| (Stage::from_byte((v >> 32) as u8), v as u32 as c_int))
}

/// Reports `stage` and `errno` and exits 127.
///
/// # Safety
/// Only a store into the parent-prepared word and `exit`. `report` must be
/// valid for writes.
unsafe fn fail(report: *mut u64, stage: Stage, errno: c_int) -> ! {
    // A volatile store: the compiler must not drop it as dead before the
    // exit; the parent reads it only after the kernel has told it the child
    // is gone (the vfork completion, or the child's exit status), which
    // orders the two.
    std::ptr::write_volatile(report, encode(stage, errno));
    exit(127)
}

/// `_exit` as one system call (this process only: the child is no thread).
unsafe fn exit(status: c_int) -> ! {
    // exit does not return; should it, try again rather than run on (no
    // abort: a core-dumping signal must not reach a process sharing
    // doorman's memory).
    loop {
        let _ = sys::call1(libc::SYS_exit, status as usize);
    }
}

/// The value of an `Ok`, or the failure reported.
#[inline(always)]
unsafe fn check(r: Result<usize, i32>, report: *mut u64, stage: Stage) -> usize {
    match r {
        Ok(v) => v,
        Err(e) => fail(report, stage, e),
    }
}

/// `dup2(src, dst)` for `src != dst` (dup3: AArch64 has no dup2).
unsafe fn dup_to(src: RawFd, dst: RawFd) -> Result<usize, i32> {
    sys::call3(libc::SYS_dup3, src as usize, dst as usize, 0)
}

/// Writes `pid` in decimal into `slot` (of `width` bytes) followed by a NUL.
/// No allocation: digits are produced right to left on the stack, and no
/// step can panic.
///
/// # Safety
/// `slot` must point to at least `width + 1` writable bytes.
pub unsafe fn write_pid(slot: *mut u8, width: usize, pid: pid_t) {
    let mut buf = [0u8; 20];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    for b in buf.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    let mut k = 0;
    for d in buf.iter().skip(buf.len() - len).take(width) {
        *slot.add(k) = *d;
        k += 1;
    }
    *slot.add(k) = 0;
}

/// The `capset` header, version 3 (two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

/// One 32-bit half of the three capability sets.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `close_range`'s flag: unshare the fd table first (Linux 5.9).
const CLOSE_RANGE_UNSHARE: usize = 1 << 1;

/// `_LINUX_CAPABILITY_VERSION_3`.
pub const CAP_VERSION_3: u32 = 0x2008_0522;

/// Turns the child into the handler. Never returns.
///
/// # Safety
/// Must be called only in a child just created by `clone(CLONE_VM |
/// CLONE_CHILD_CLEARTID)` or `clone(CLONE_VM | CLONE_VFORK)` (on a stack
/// of its own, with every signal blocked) or `fork()`, from a
/// single-threaded parent that has no signal handler installed (see
/// `crate::signals`), with a `plan` whose pointers all point into memory
/// the parent prepared (valid, NUL-terminated where C expects it) and
/// keeps unchanged until the child has exec'd or exited.
pub unsafe fn exec_child(plan: &ChildPlan) -> ! {
    let report = plan.report;
    // A child born sharing doorman's fd table takes its own copy first,
    // of the low fds only (the listeners doorman keeps above
    // `share_below` are neither copied nor closed at exec); before Linux
    // 5.9 (no close_range) a copy of all of them.
    if plan.share_below > 0 {
        if sys::call3(
            libc::SYS_close_range,
            plan.share_below as usize,
            u32::MAX as usize,
            CLOSE_RANGE_UNSHARE,
        )
        .is_err()
        {
            check(
                sys::call1(libc::SYS_unshare, libc::CLONE_FILES as usize),
                report,
                Stage::Unshare,
            );
        }
        if !plan.unshared.is_null() {
            // A volatile store: doorman reads it from its own thread.
            std::ptr::write_volatile(plan.unshared, 1);
            let _ = sys::call2(libc::SYS_kill, plan.tell as usize, libc::SIGCHLD as usize);
        }
    }
    // Dispositions first: those doorman ignores (SIGPIPE, and anything
    // ignored when doorman started; execve would keep them ignored).
    let dfl = KernelSigaction { words: [0; 8] };
    for &sig in plan.reset_signals.iter().take(plan.nsignals) {
        check(
            sys::call4(
                libc::SYS_rt_sigaction,
                sig as usize,
                &dfl as *const KernelSigaction as usize,
                0,
                SIGSET_SIZE,
            ),
            report,
            Stage::Signals,
        );
    }

    // A process group of its own, so that the handler is not in doorman's
    // and can be signalled as a group; a session too when doorman has a
    // controlling terminal, which the handler must not share.
    if plan.new_session {
        check(sys::call0(libc::SYS_setsid), report, Stage::Setsid);
    } else {
        check(sys::call2(libc::SYS_setpgid, 0, 0), report, Stage::Setpgid);
    }

    let n = plan.nlisten.min(MAX_LISTEN);
    let top = 3 + n as c_int;
    let fcntl = |fd: RawFd, cmd: c_int, arg: c_int| {
        sys::call3(libc::SYS_fcntl, fd as usize, cmd as usize, arg as usize)
    };

    for (dst, &src) in plan.std.iter().enumerate() {
        let dst = dst as c_int;
        if src != dst {
            check(dup_to(src, dst), report, Stage::Dup2);
        }
    }

    let mut src = [0 as RawFd; MAX_LISTEN];
    for (d, s) in src.iter_mut().zip(plan.listen.iter()).take(n) {
        *d = *s;
    }
    for (i, s) in src.iter_mut().enumerate().take(n) {
        if *s >= 3 && *s < top && *s != 3 + i as c_int {
            *s = check(fcntl(*s, libc::F_DUPFD_CLOEXEC, top), report, Stage::Dup2) as RawFd;
        }
    }
    for (i, &s) in src.iter().enumerate().take(n) {
        let dst = 3 + i as c_int;
        if s == dst {
            check(fcntl(dst, libc::F_SETFD, 0), report, Stage::Cloexec);
        } else {
            check(dup_to(s, dst), report, Stage::Dup2);
        }
    }

    // Limits and priority before dropping privileges (raising either may
    // need root); the umask any time.
    for &(res, soft, hard) in plan.rlimits.iter().take(plan.nrlimits) {
        let rl = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        check(
            sys::call4(
                libc::SYS_prlimit64,
                0,
                res as usize,
                &rl as *const libc::rlimit as usize,
                0,
            ),
            report,
            Stage::Rlimit,
        );
    }
    if let Some(nice) = plan.nice {
        check(
            sys::call3(
                libc::SYS_setpriority,
                libc::PRIO_PROCESS as usize,
                0,
                nice as isize as usize,
            ),
            report,
            Stage::Nice,
        );
    }
    if let Some(mask) = plan.umask {
        let _ = sys::call1(libc::SYS_umask, mask as usize);
    }

    if let Some(c) = plan.creds {
        // Raw system calls: they change this task's credentials only,
        // which is all the child is. glibc's wrappers would consult the
        // thread list it shares with doorman under CLONE_VM.
        if c.set_groups {
            check(
                sys::call2(libc::SYS_setgroups, c.ngroups, c.groups as usize),
                report,
                Stage::Setgroups,
            );
        }
        check(
            sys::call1(libc::SYS_setgid, c.gid as usize),
            report,
            Stage::Setgid,
        );
        check(
            sys::call1(libc::SYS_setuid, c.uid as usize),
            report,
            Stage::Setuid,
        );
        if c.uid != 0 {
            // A handler that is not root keeps no capability: the kernel
            // clears them on root's setuid, but not for a doorman that runs
            // as a user with CAP_SETUID/CAP_SETGID (nor under inherited
            // securebits), and ambient ones would survive the execve.
            // Kernels before 4.3 have no ambient set: nothing to clear.
            let _ = sys::call4(
                libc::SYS_prctl,
                libc::PR_CAP_AMBIENT as usize,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as usize,
                0,
                0,
            );
            let hdr = CapHeader {
                version: CAP_VERSION_3,
                pid: 0,
            };
            let none = [CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            check(
                sys::call2(
                    libc::SYS_capset,
                    &hdr as *const CapHeader as usize,
                    none.as_ptr() as usize,
                ),
                report,
                Stage::Caps,
            );
        }
        // Verify: all ids are the target ones, and a dropped root cannot
        // come back.
        let id = |n: c_long| sys::call0(n).unwrap_or(usize::MAX);
        if id(libc::SYS_getuid) != c.uid as usize
            || id(libc::SYS_geteuid) != c.uid as usize
            || id(libc::SYS_getgid) != c.gid as usize
            || id(libc::SYS_getegid) != c.gid as usize
            || (c.uid != 0 && sys::call1(libc::SYS_setuid, 0).is_ok())
        {
            fail(report, Stage::VerifyCreds, libc::EPERM);
        }
    }

    if !plan.cwd.is_null() {
        check(
            sys::call1(libc::SYS_chdir, plan.cwd as usize),
            report,
            Stage::Chdir,
        );
    }

    if let Some((slot, width)) = plan.listen_pid_slot {
        let pid = sys::call0(libc::SYS_getpid).unwrap_or(0) as pid_t;
        write_pid(slot, width, pid);
    }

    // The handler's mask: empty, as the last step before execve (which
    // keeps it), so that no signal reaches this process while it still
    // shares doorman's memory.
    let empty: u64 = 0;
    check(
        sys::call4(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            &empty as *const u64 as usize,
            0,
            SIGSET_SIZE,
        ),
        report,
        Stage::Signals,
    );
    let e = match sys::call3(
        libc::SYS_execve,
        plan.path as usize,
        plan.argv as usize,
        plan.envp as usize,
    ) {
        Err(e) => e,
        Ok(_) => libc::EINVAL,
    };
    fail(report, Stage::Exec, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_roundtrip() {
        assert_eq!(decode(0), None);
        let v = encode(Stage::Exec, libc::ENOENT);
        assert_eq!(decode(v), Some((Some(Stage::Exec), libc::ENOENT)));
        let v = encode(Stage::Chdir, libc::EACCES);
        assert_eq!(decode(v), Some((Some(Stage::Chdir), libc::EACCES)));
    }

    #[test]
    fn pid_digits() {
        let mut buf = [b'x'; 21];
        // SAFETY: the buffer has width + 1 bytes.
        unsafe { write_pid(buf.as_mut_ptr(), 20, 4194304) };
        assert_eq!(&buf[..8], b"4194304\0");
        // SAFETY: as above.
        unsafe { write_pid(buf.as_mut_ptr(), 20, 7) };
        assert_eq!(&buf[..2], b"7\0");
    }
}
