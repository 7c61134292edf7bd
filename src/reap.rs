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
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
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
                let name = nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str())
                    .unwrap_or("?");
                write!(f, "signal={name}{}", if core { " core=yes" } else { "" })
            }
        }
    }
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

    /// Reaps every exited child, ours or re-parented, without blocking.
    pub fn reap_all(&mut self, now: Instant) -> Vec<Exit> {
        let mut out = Vec::new();
        loop {
            let (pid, outcome) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Outcome::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, core)) => {
                    (pid, Outcome::Signaled(sig as i32, core))
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue, // stopped/continued: not an exit
                Err(Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: no children at all
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
