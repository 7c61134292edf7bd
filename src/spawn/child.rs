//! The only code that runs between the spawn (`clone(CLONE_VM |
//! CLONE_VFORK)`, or `fork()`) and `execve()`.
//!
//! # The child contract
//!
//! 1. **Prepared in the parent:** the program path, NULL-terminated argv and
//!    envp pointer arrays, the `LISTEN_PID=` entry with a fixed-width digit
//!    slot, the supplementary group list (from `getgrouplist`, never
//!    `initgroups` here), the fd moves as a fixed array, the list of signals
//!    to reset, and where to report a failure: a slot in the parent's memory
//!    (clone) or a close-on-exec error pipe (fork). See [`super::image`].
//! 2. **Allowed here:** raw system calls through `libc` only: `sigprocmask`,
//!    `sigaction`, `setsid`, `dup2`, `fcntl`, `setrlimit`, `setpriority`,
//!    `umask`, `setgroups` → `setgid` → `setuid` (in that order, as raw
//!    `syscall`s: glibc's wrappers may broadcast to the parent's threads,
//!    whose list the clone child shares) and their verification with
//!    `getuid` and friends, `chdir`, `getpid`, `write`, `execve`, `_exit`.
//!    Nothing else: no allocation, no logging, no locks, no `CString::new`,
//!    no `format!`, no `nix::unistd::execve` (it allocates). With
//!    `CLONE_VM` the child runs in doorman's memory on a stack of its own:
//!    the only memory it writes is that stack, the `LISTEN_PID` digit slot
//!    and the report slot, and errno (doorman's, shared: the parent reads
//!    no errno it did not just set itself after the clone).
//! 3. **Fd rule:** fds 0-2 are placed first (their sources are all ≥ 3, or
//!    fd 2 itself for "doorman's stderr"); then the `LISTEN_FDS` sockets go
//!    to 3, 4, ...: a source already inside that range is first copied
//!    above it, so that no placement overwrites a socket still to be
//!    placed; a socket already at its place has `FD_CLOEXEC` cleared
//!    explicitly (`dup2` to itself would leave it set). The error pipe is
//!    moved above the range first. Sockets are handed blocking.
//! 4. **Failure path:** store the stage and errno in the report slot (or
//!    write one stage byte and the 4 errno bytes to the pipe), then
//!    `_exit(127)`.
//! 5. **Never return:** [`exec_child`] is `-> !`; a child that returned
//!    would become a second doorman running the event loop.
//! 6. **Signals:** doorman installs no signal handler (its trapped signals
//!    stay blocked and are read from a signalfd), so none can run in the
//!    child, which shares its memory. The child resets to `SIG_DFL` the
//!    signals doorman ignores (SIGPIPE, and what it inherited ignored),
//!    then empties the mask it inherited. Nothing else: every other
//!    disposition is already the default.
//! 7. **Why each call is safe here:** `sigprocmask`, `sigaction`, `setsid`,
//!    `dup2`, `fcntl`, `umask`, `setgid`, `setuid`, `getuid` & co.,
//!    `chdir`, `getpid`, `write`, `execve` and `_exit` are on POSIX's list
//!    of async-signal-safe functions (signal-safety(7)); `setrlimit`,
//!    `setpriority` and `setgroups` are not listed but are, in glibc, thin
//!    wrappers around one system call that touch no lock and no heap; and
//!    the three credential calls are made as raw `syscall`s (point 2), so
//!    no glibc state is involved at all. Reading `errno` reads a
//!    thread-local. The same list, call by call, is in doorman(8), CHILD
//!    CONTRACT.

use std::os::fd::RawFd;

use libc::{c_char, c_int, gid_t, pid_t, uid_t};

/// Which step failed, as sent on the error pipe (the first byte).
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
    /// Whether to call `setgroups` (only root may).
    pub set_groups: bool,
}

/// Everything the child needs, as raw pointers into memory the parent
/// prepared and keeps alive across the fork. Plain data: no destructor
/// runs in the child.
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
    /// Signals whose disposition is reset to `SIG_DFL`.
    pub reset_signals: [c_int; MAX_SIGNALS],
    pub nsignals: usize,
    /// The digit slot of the `LISTEN_PID=` entry: (start, width). The child
    /// writes its pid there, then a NUL.
    pub listen_pid_slot: Option<(*mut u8, usize)>,
    pub creds: Option<RawCreds>,
    /// Where a failure is reported.
    pub report: Report,
}

/// Where the child reports the step that failed and its errno.
#[derive(Clone, Copy)]
pub enum Report {
    /// A slot in the parent's memory (the child shares it: `CLONE_VM`).
    /// The parent reads it once the clone has returned, i.e. once the
    /// child has exec'd or exited; 0 means it exec'd.
    Slot(*mut u64),
    /// The write end of a close-on-exec pipe (after `fork()`).
    Pipe(RawFd),
}

/// A failure as stored in the report slot: stage in the high half, errno
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
/// Only async-signal-safe calls: a store into the parent-prepared slot (or
/// `write`) and `_exit`. A `Slot` pointer must be valid for writes.
unsafe fn fail(report: Report, stage: Stage, errno: c_int) -> ! {
    match report {
        // A volatile store: the compiler must not drop it as dead before
        // `_exit`; the parent reads it only after the kernel has woken it
        // (the vfork completion), which orders the two.
        Report::Slot(slot) => std::ptr::write_volatile(slot, encode(stage, errno)),
        Report::Pipe(fd) => {
            let e = errno.to_ne_bytes();
            let msg = [stage as u8, e[0], e[1], e[2], e[3]];
            // A short or failed write leaves the parent reading 0 bytes,
            // which it can tell apart from success by the exit status 127
            // when it reaps.
            let _ = libc::write(fd, msg.as_ptr().cast(), msg.len());
        }
    }
    libc::_exit(127)
}

fn errno() -> c_int {
    // SAFETY: `__errno_location` returns the calling thread's errno slot,
    // valid for the life of the thread; reading it is async-signal-safe.
    unsafe { *libc::__errno_location() }
}

/// Writes `pid` in decimal into `slot` (of `width` bytes) followed by a NUL.
/// No allocation: digits are produced right to left on the stack.
///
/// # Safety
/// `slot` must point to at least `width + 1` writable bytes.
pub unsafe fn write_pid(slot: *mut u8, width: usize, pid: pid_t) {
    let mut buf = [0u8; 20];
    let mut n = pid.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    let digits = &buf[i..];
    let len = digits.len().min(width);
    for (k, d) in digits[..len].iter().enumerate() {
        *slot.add(k) = *d;
    }
    *slot.add(len) = 0;
}

/// Turns the child into the handler. Never returns.
///
/// # Safety
/// Must be called only in a child just created by `clone(CLONE_VM |
/// CLONE_VFORK)` (on a stack of its own) or `fork()`, from a
/// single-threaded parent that has no signal handler installed (see
/// `crate::signals`), with a `plan` whose
/// pointers all point into memory the parent prepared (valid,
/// NUL-terminated where C expects it) and keeps unchanged until the child
/// has exec'd or exited.
pub unsafe fn exec_child(plan: &ChildPlan) -> ! {
    // Dispositions first, while doorman's trapped signals are still
    // blocked: those it ignores (SIGPIPE, and anything ignored when doorman
    // started; execve would keep them ignored).
    for &sig in &plan.reset_signals[..plan.nsignals] {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            fail(plan.report, Stage::Signals, errno());
        }
    }
    // Then the handler's mask: empty.
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
        fail(plan.report, Stage::Signals, errno());
    }

    // A session (and process group) of its own, so that the handler is
    // not in doorman's and can be signalled as a group.
    if libc::setsid() < 0 {
        fail(plan.report, Stage::Setsid, errno());
    }

    let n = plan.nlisten as c_int;
    let top = 3 + n;
    // An error pipe must survive the placements below.
    let mut report = plan.report;
    if let Report::Pipe(fd) = report {
        if fd < top {
            let moved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, top);
            if moved < 0 {
                fail(report, Stage::Dup2, errno());
            }
            report = Report::Pipe(moved);
        }
    }

    for (dst, &src) in plan.std.iter().enumerate() {
        let dst = dst as c_int;
        if src != dst && libc::dup2(src, dst) < 0 {
            fail(report, Stage::Dup2, errno());
        }
    }

    let mut src = [0 as RawFd; MAX_LISTEN];
    src[..plan.nlisten].copy_from_slice(&plan.listen[..plan.nlisten]);
    for (i, s) in src[..plan.nlisten].iter_mut().enumerate() {
        if *s >= 3 && *s < top && *s != 3 + i as c_int {
            *s = libc::fcntl(*s, libc::F_DUPFD_CLOEXEC, top);
            if *s < 0 {
                fail(report, Stage::Dup2, errno());
            }
        }
    }
    for (i, &s) in src[..plan.nlisten].iter().enumerate() {
        let dst = 3 + i as c_int;
        if s == dst {
            if libc::fcntl(dst, libc::F_SETFD, 0) < 0 {
                fail(report, Stage::Cloexec, errno());
            }
        } else if libc::dup2(s, dst) < 0 {
            fail(report, Stage::Dup2, errno());
        }
    }

    // Limits and priority before dropping privileges (raising either may
    // need root); the umask any time.
    for &(res, soft, hard) in &plan.rlimits[..plan.nrlimits] {
        let rl = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        if libc::setrlimit(res as libc::__rlimit_resource_t, &rl) != 0 {
            fail(report, Stage::Rlimit, errno());
        }
    }
    if let Some(nice) = plan.nice {
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
            fail(report, Stage::Nice, errno());
        }
    }
    if let Some(mask) = plan.umask {
        libc::umask(mask);
    }

    if let Some(c) = plan.creds {
        // Raw system calls: they change this task's credentials only,
        // which is all the child is. glibc's wrappers would consult the
        // thread list it shares with doorman under CLONE_VM.
        if c.set_groups && libc::syscall(libc::SYS_setgroups, c.ngroups, c.groups) != 0 {
            fail(report, Stage::Setgroups, errno());
        }
        if libc::syscall(libc::SYS_setgid, c.gid) != 0 {
            fail(report, Stage::Setgid, errno());
        }
        if libc::syscall(libc::SYS_setuid, c.uid) != 0 {
            fail(report, Stage::Setuid, errno());
        }
        // Verify: all ids are the target ones, and a dropped root cannot
        // come back.
        if libc::getuid() != c.uid
            || libc::geteuid() != c.uid
            || libc::getgid() != c.gid
            || libc::getegid() != c.gid
            || (c.uid != 0 && libc::syscall(libc::SYS_setuid, 0) == 0)
        {
            fail(report, Stage::VerifyCreds, libc::EPERM);
        }
    }

    if !plan.cwd.is_null() && libc::chdir(plan.cwd) != 0 {
        fail(report, Stage::Chdir, errno());
    }

    if let Some((slot, width)) = plan.listen_pid_slot {
        write_pid(slot, width, libc::getpid());
    }

    libc::execve(plan.path, plan.argv, plan.envp);
    fail(report, Stage::Exec, errno())
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
