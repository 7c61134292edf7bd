//! Signals as a mio source: signal-hook's self-pipe, drained into
//! [`Signal`] values.
//!
//! Owns: which signals doorman traps, and which signal dispositions a
//! handler must have reset (those doorman inherited as ignored, and SIGPIPE
//! which the Rust runtime ignores).
//! Must not: act on signals; the loop does, after draining them all.

use libc::c_int;
use mio::{Interest, Registry, Token};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

/// The signals doorman catches (with signal-hook's handler).
const TRAPPED: [c_int; 5] = [SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGUSR1];

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
    signals: Signals,
}

impl Trap {
    /// Installs the handlers. Call before anything else can fail or fork.
    pub fn install() -> std::io::Result<Trap> {
        let signals = Signals::new(TRAPPED)?;
        Ok(Trap { signals })
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(&mut self.signals, token, Interest::READABLE)
    }

    /// Everything pending, each kind at most once, in a fixed order:
    /// children first (frees capacity), stop last.
    pub fn drain(&mut self) -> Vec<Signal> {
        let mut seen = [false; 4];
        for sig in self.signals.pending() {
            let i = match sig {
                SIGCHLD => 0,
                SIGHUP => 1,
                SIGUSR1 => 2,
                SIGTERM | SIGINT => 3,
                _ => continue,
            };
            seen[i] = true;
        }
        [Signal::Child, Signal::Reload, Signal::Dump, Signal::Stop]
            .into_iter()
            .zip(seen)
            .filter_map(|(s, on)| on.then_some(s))
            .collect()
    }
}

/// Signals a spawned child resets to their default disposition before it
/// unblocks signals: the ones doorman traps (the child runs in doorman's
/// memory until execve, so doorman's handlers must never run there),
/// SIGPIPE (ignored by the Rust runtime) and every signal doorman
/// inherited as ignored (a shell's `&` ignores SIGINT and SIGQUIT, `nohup`
/// SIGHUP). Every other signal already has its default disposition, so
/// the child makes a handful of `rt_sigaction` calls, not one per signal.
/// Read once at start-up, before any handler is installed.
pub fn to_reset_in_children() -> Vec<c_int> {
    let mut out = TRAPPED.to_vec();
    out.push(libc::SIGPIPE);
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || out.contains(&sig) {
            continue;
        }
        // SAFETY: querying (null new action) a valid signal number's
        // disposition into a zeroed struct we own.
        let ignored = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
        };
        if ignored {
            out.push(sig);
        }
    }
    out
}
