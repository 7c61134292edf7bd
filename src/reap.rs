//! The children table and reaping.
//!
//! Owns: which handler pid belongs to which service and peer, since when;
//! collecting every exited child with `waitpid(-1, WNOHANG)` until none is
//! left (orphans re-parented to doorman included).
//! Must not: decide what an exit means for admission (the loop tells policy).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::Pid;

/// One running handler.
#[derive(Clone, Debug)]
pub struct Child {
    /// Index of the service (`usize::MAX` once a reload removed it).
    pub service: usize,
    /// The service's label when the handler started, for its exit line.
    pub label: String,
    /// The source key counted by policy, if the source is tracked.
    pub source: Option<IpAddr>,
    /// `addr:port` of the peer, for log lines.
    pub peer: String,
    pub started: Instant,
    /// For a `wait` service: the listeners it holds.
    pub wait: Option<WaitHold>,
    /// When the handler's time (`timeout`) is up, or after the stop
    /// signal, when SIGKILL follows.
    pub deadline: Option<Instant>,
    /// The stop signal was sent because the handler ran over its time.
    pub timed_out: bool,
    /// The UDP session (`dgram nowait`) this handler serves.
    pub session: Option<usize>,
    /// An on-demand backend's process (`proxy-to=`), not a handler.
    pub backend: bool,
}

/// The listeners a `wait` handler holds, and what woke it.
#[derive(Clone, Debug)]
pub struct WaitHold {
    /// Every listener handed over (all of the service's with `LISTEN_FDS`).
    pub listeners: Vec<usize>,
    /// The one that was readable.
    pub woke: usize,
    /// How much was queued on it at the start, to tell a handler that
    /// serves from one that exits without consuming anything.
    pub queued: Option<u64>,
}

impl WaitHold {
    /// Follows listeners to their new indices after a reload; listeners
    /// that were closed are dropped.
    pub fn remap(&mut self, old_to_new: &[Option<usize>]) {
        let map = |i: usize| old_to_new.get(i).copied().flatten();
        self.listeners = self.listeners.iter().filter_map(|&i| map(i)).collect();
        self.woke = map(self.woke).unwrap_or(usize::MAX);
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(i32, bool),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Outcome::Exited(c) => write!(f, "status={c}"),
            Outcome::Signaled(s, core) => {
                write!(
                    f,
                    "signal={}{}",
                    signal_name(s),
                    if core { " core=yes" } else { "" }
                )
            }
        }
    }
}

impl Outcome {
    /// Decodes a `waitpid` status word; `None` for a stopped or continued
    /// child (not an end). Every signal number is kept as it is, real-time
    /// ones (32 to 64) included: a typed signal enum cannot hold those.
    pub fn from_status(status: libc::c_int) -> Option<Outcome> {
        if libc::WIFEXITED(status) {
            Some(Outcome::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Outcome::Signaled(
                libc::WTERMSIG(status),
                libc::WCOREDUMP(status),
            ))
        } else {
            None
        }
    }
}

/// A signal's name as `kill -l` prints it: `SIGTERM`, `SIGRTMIN`,
/// `SIGRTMIN+2`, `SIGRTMAX-1`, `SIGRTMAX`; `SIG32` for the two the C
/// library keeps for itself; the number for anything else.
pub fn signal_name(sig: i32) -> String {
    if let Ok(s) = nix::sys::signal::Signal::try_from(sig) {
        return s.as_str().to_string();
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&sig) {
        let mid = min + (max - min) / 2;
        return match sig {
            s if s == min => "SIGRTMIN".to_string(),
            s if s == max => "SIGRTMAX".to_string(),
            s if s <= mid => format!("SIGRTMIN+{}", s - min),
            s => format!("SIGRTMAX-{}", max - s),
        };
    }
    if (32..min).contains(&sig) {
        return format!("SIG{sig}");
    }
    sig.to_string()
}

/// A reaped child: its record (if it was a handler of ours), how it ended
/// and how long it ran.
#[derive(Debug)]
pub struct Exit {
    pub pid: Pid,
    pub child: Option<Child>,
    pub outcome: Outcome,
    pub duration: Duration,
}

/// The table of running handlers.
#[derive(Debug, Default)]
pub struct Children {
    table: HashMap<i32, Child>,
}

impl Children {
    /// Applies `f` to every record (reload: services and listeners moved).
    pub fn remap(&mut self, mut f: impl FnMut(&mut Child)) {
        for c in self.table.values_mut() {
            f(c);
        }
    }

    pub fn insert(&mut self, pid: Pid, child: Child) {
        self.table.insert(pid.as_raw(), child);
    }

    pub fn get_mut(&mut self, pid: i32) -> Option<&mut Child> {
        self.table.get_mut(&pid)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Pid, &Child)> {
        self.table.iter().map(|(p, c)| (Pid::from_raw(*p), c))
    }

    /// Reaps every exited child, ours or re-parented, without blocking,
    /// until the kernel says there is none left to reap (`0`: the others
    /// still run; `ECHILD`: no child at all). The status word is decoded
    /// here, not by a typed wrapper, so that a death by a real-time signal
    /// is reaped and reported like any other.
    pub fn reap_all(&mut self, now: Instant) -> Vec<Exit> {
        let mut out = Vec::new();
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid with WNOHANG and a status word we own.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r == 0 {
                break; // children left, none exited
            }
            if r < 0 {
                match Errno::last() {
                    Errno::EINTR => continue,
                    Errno::ECHILD => break,
                    e => {
                        log::error!("waitpid: {}", e.desc());
                        break;
                    }
                }
            }
            let pid = Pid::from_raw(r);
            let Some(outcome) = Outcome::from_status(status) else {
                continue; // stopped or continued: not an end
            };
            let child = self.table.remove(&pid.as_raw());
            let duration = child
                .as_ref()
                .map_or(Duration::ZERO, |c| now.duration_since(c.started));
            out.push(Exit {
                pid,
                child,
                outcome,
                duration,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_word_is_decoded() {
        // exit(3): status in bits 8-15.
        assert_eq!(Outcome::from_status(3 << 8), Some(Outcome::Exited(3)));
        // Killed by SIGTERM (15), and by SIGSEGV with a core (0x80).
        assert_eq!(Outcome::from_status(15), Some(Outcome::Signaled(15, false)));
        assert_eq!(
            Outcome::from_status(11 | 0x80),
            Some(Outcome::Signaled(11, true))
        );
        // Real-time signals, which nix's WaitStatus refuses with EINVAL.
        for sig in [32, 34, 36, 50, 63, 64] {
            assert_eq!(
                Outcome::from_status(sig),
                Some(Outcome::Signaled(sig, false)),
                "signal {sig}"
            );
        }
        // Stopped (0x7f) and continued (0xffff) are not ends.
        assert_eq!(Outcome::from_status((19 << 8) | 0x7f), None);
        assert_eq!(Outcome::from_status(0xffff), None);
        assert_eq!(libc::SIGRTMIN(), 34, "glibc keeps 32 and 33");
        assert_eq!(
            Outcome::from_status(34).unwrap().to_string(),
            "signal=SIGRTMIN"
        );
        assert_eq!(
            Outcome::from_status(64).unwrap().to_string(),
            "signal=SIGRTMAX"
        );
        assert_eq!(signal_name(36), "SIGRTMIN+2");
        assert_eq!(signal_name(63), "SIGRTMAX-1");
        assert_eq!(signal_name(49), "SIGRTMIN+15");
        assert_eq!(signal_name(50), "SIGRTMAX-14");
        assert_eq!(signal_name(32), "SIG32");
        assert_eq!(signal_name(15), "SIGTERM");
    }
}
