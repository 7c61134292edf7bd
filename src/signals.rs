//! Signals as a mio source: a `signalfd`, drained into [`Signal`] values.
//!
//! Owns: which signals doorman traps (blocked for the whole life of the
//! process and read from a signalfd: no signal handler ever runs in
//! doorman), and which signal dispositions a handler must have reset (those
//! doorman inherited as ignored, and SIGPIPE which the Rust runtime
//! ignores).
//! Must not: act on signals; the loop does, after draining them all.
//!
//! Why a signalfd rather than handlers writing to a self-pipe: a handler
//! costs a signal frame, a `sendto` and an `rt_sigreturn` per SIGCHLD, and
//! it could run in a `CLONE_VM` spawn child, which shares doorman's memory
//! until its execve; with no handler installed, the spawn path needs no
//! signal blocking around the clone either (two `rt_sigprocmask` fewer per
//! connection). Blocked signals are queued, not discarded, even where the
//! default action is to ignore them (SIGCHLD).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use libc::c_int;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::signal::{SigSet, SigmaskHow, Signal as NixSignal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals doorman traps.
const TRAPPED: [NixSignal; 5] = [
    NixSignal::SIGCHLD,
    NixSignal::SIGHUP,
    NixSignal::SIGTERM,
    NixSignal::SIGINT,
    NixSignal::SIGUSR1,
];

/// What a drained signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Child,
    Reload,
    Stop,
    Dump,
}

/// The trapped signals, registered with the loop.
pub struct Trap {
    fd: SignalFd,
}

impl Trap {
    /// Blocks the trapped signals and opens the signalfd. Call before
    /// anything else can fail or fork. Every child doorman starts empties
    /// its signal mask before exec (spawn's child, and std's `Command`).
    pub fn install() -> std::io::Result<Trap> {
        let mut set = SigSet::empty();
        for s in TRAPPED {
            set.add(s);
        }
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Trap { fd })
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fd.as_fd().as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Everything pending, each kind at most once, in a fixed order:
    /// children first (frees capacity), stop last.
    pub fn drain(&mut self) -> Vec<Signal> {
        let mut seen = [false; 4];
        let fd: BorrowedFd<'_> = self.fd.as_fd();
        // SAFETY: signalfd_siginfo is plain data; zeroes are a valid value.
        let mut buf: [libc::signalfd_siginfo; 16] = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: reading into a buffer we own, of the length given.
            let n = unsafe {
                libc::read(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    std::mem::size_of_val(&buf),
                )
            };
            if n < 0 {
                if nix::errno::Errno::last() == nix::errno::Errno::EINTR {
                    continue;
                }
                break; // EAGAIN: nothing (more) pending
            }
            let got = n as usize / size;
            for si in &buf[..got] {
                let i = match si.ssi_signo as c_int {
                    libc::SIGCHLD => 0,
                    libc::SIGHUP => 1,
                    libc::SIGUSR1 => 2,
                    libc::SIGTERM | libc::SIGINT => 3,
                    _ => continue,
                };
                seen[i] = true;
            }
            // A short read emptied the queue (the fd is edge-triggered in
            // mio: what is left unread would not wake us again).
            if got < buf.len() {
                break;
            }
        }
        [Signal::Child, Signal::Reload, Signal::Dump, Signal::Stop]
            .into_iter()
            .zip(seen)
            .filter_map(|(s, on)| on.then_some(s))
            .collect()
    }
}

/// Signals a spawned child resets to their default disposition: SIGPIPE
/// (ignored by the Rust runtime) and every signal doorman inherited as
/// ignored (a shell's `&` ignores SIGINT and SIGQUIT, `nohup` SIGHUP),
/// from 1 to 64: real-time ones, SIGRTMAX and the two the C library keeps
/// for itself (32, 33) included, which is why the kernel is asked directly
/// (glibc's `sigaction` refuses 32 and 33). execve would keep them
/// ignored. doorman installs no signal handler, so every other signal
/// already has its default disposition, and the child makes a handful of
/// `rt_sigaction` calls, not one per signal. Read once at start-up.
pub fn to_reset_in_children() -> Vec<c_int> {
    let mut out = vec![libc::SIGPIPE];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || out.contains(&sig) {
            continue;
        }
        if disposition(sig) == Some(libc::SIG_IGN) {
            out.push(sig);
        }
    }
    out
}

/// The handler word of signal `sig`'s disposition, as the kernel has it.
fn disposition(sig: c_int) -> Option<libc::sighandler_t> {
    let mut old = crate::spawn::child::KernelSigaction { words: [0; 8] };
    // SAFETY: rt_sigaction with a null new action (a query) into a
    // buffer larger than the kernel's struct sigaction, whose first word
    // is the handler on every architecture.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<libc::c_void>(),
            &mut old as *mut crate::spawn::child::KernelSigaction,
            crate::spawn::child::SIGSET_SIZE,
        )
    };
    (r == 0).then_some(old.words[0] as libc::sighandler_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_signals_beyond_glibcs_range_are_reset() {
        // Ignore 32 (glibc's own) and SIGRTMAX the way a parent process
        // could have, straight through the kernel; both must be reset.
        let ign = crate::spawn::child::KernelSigaction {
            words: [libc::SIG_IGN, 0, 0, 0, 0, 0, 0, 0],
        };
        let mut saved = Vec::new();
        for sig in [32, 64] {
            let mut old = crate::spawn::child::KernelSigaction { words: [0; 8] };
            // SAFETY: rt_sigaction installing SIG_IGN (no handler code)
            // and saving the old action into a buffer we own.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &ign as *const crate::spawn::child::KernelSigaction,
                    &mut old as *mut crate::spawn::child::KernelSigaction,
                    crate::spawn::child::SIGSET_SIZE,
                )
            };
            assert_eq!(r, 0);
            saved.push((sig, old));
        }
        let reset = to_reset_in_children();
        for (sig, old) in saved {
            // SAFETY: putting back the action saved above.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &old as *const crate::spawn::child::KernelSigaction,
                    std::ptr::null_mut::<libc::c_void>(),
                    crate::spawn::child::SIGSET_SIZE,
                )
            };
        }
        assert!(reset.contains(&32), "{reset:?}");
        assert!(reset.contains(&64), "{reset:?}");
        assert!(reset.contains(&libc::SIGPIPE));
    }
}
