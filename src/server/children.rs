//! Children: starting a handler, waking a `wait` service, reaping and
//! what an exit means (counts given back, crash-loop accounting, a wait
//! socket watched again, the spin guard), and handler deadlines.
//!
//! Part of the loop's state (`super::Server`). Must not: wait for a
//! child (`waitpid` with `WNOHANG` only, through `reap`), or decide
//! admission (`admit.rs`).

use super::*;

impl Server {
    /// Drops deadlines of handlers that have exited (or were given a new
    /// one), so that no stale deadline wakes an idle doorman.
    pub(super) fn prune_timeouts(&mut self) {
        while let Some(&Reverse((t, pid))) = self.timeouts.peek() {
            if self
                .children
                .get_mut(pid)
                .is_some_and(|c| c.deadline == Some(t))
            {
                break;
            }
            self.timeouts.pop();
        }
    }

    /// Sends child `pid` its service's stop signal (process group and
    /// pid) and arms SIGKILL after the grace period, through its deadline
    /// (see `expire_timeouts`). Its end is then never counted as a
    /// failure. Returns the signal and the grace, `None` for no such child.
    pub(super) fn stop_child(&mut self, pid: i32, now: Instant) -> Option<(NixSignal, Duration)> {
        let c = self.children.get_mut(pid)?;
        let (signal, grace) =
            self.services
                .get(c.service)
                .map_or((libc::SIGTERM, DEFAULT_GRACE), |rt| {
                    (
                        rt.svc.stop.signal,
                        rt.svc.stop.timeout.unwrap_or(DEFAULT_GRACE),
                    )
                });
        let sig = NixSignal::try_from(signal).unwrap_or(NixSignal::SIGTERM);
        c.timed_out = true;
        c.deadline = Some(now + grace);
        self.timeouts.push(Reverse((now + grace, pid)));
        let p = nix::unistd::Pid::from_raw(pid);
        let _ = killpg(p, sig);
        let _ = nix::sys::signal::kill(p, sig);
        Some((sig, grace))
    }

    /// Handlers over their time get their stop signal (process group),
    /// then SIGKILL once the grace period is over.
    pub(super) fn expire_timeouts(&mut self, now: Instant) {
        while let Some(&Reverse((t, pid))) = self.timeouts.peek() {
            if t > now {
                break;
            }
            self.timeouts.pop();
            let Some(c) = self.children.get_mut(pid) else {
                continue;
            };
            if c.deadline != Some(t) {
                continue;
            }
            let (signal, grace) = self
                .services
                .get(c.service)
                .map(|rt| {
                    (
                        rt.svc.stop.signal,
                        rt.svc.stop.timeout.unwrap_or(DEFAULT_GRACE),
                    )
                })
                .unwrap_or((libc::SIGTERM, DEFAULT_GRACE));
            let p = nix::unistd::Pid::from_raw(pid);
            let age = now.duration_since(c.started);
            // First the stop signal and a grace period, then SIGKILL.
            let (sig, next) = if c.timed_out {
                (NixSignal::SIGKILL, None)
            } else {
                let sig = NixSignal::try_from(signal).unwrap_or(NixSignal::SIGTERM);
                (sig, Some(now + grace))
            };
            c.timed_out = true;
            c.deadline = next;
            if let Some(t) = next {
                self.timeouts.push(Reverse((t, pid)));
            }
            let _ = killpg(p, sig);
            let _ = nix::sys::signal::kill(p, sig);
            let mut fields = vec![
                ("service", V::S(&c.label)),
                ("pid", V::N(pid.into())),
                ("peer", V::S(&c.peer)),
                ("after_ms", V::N(age.as_millis() as i64)),
                ("signal", V::S(sig.as_str())),
            ];
            if next.is_some() {
                fields.push(("kill_in_ms", V::N(grace.as_millis() as i64)));
            }
            emit(Level::Warn, "timeout", &fields);
        }
    }

    /// A handler has started: its deadline (the service's `timeout`), its
    /// record in the children table, and the global cap.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn track(
        &mut self,
        pid: nix::unistd::Pid,
        s: usize,
        source: Option<IpAddr>,
        peer: String,
        now: Instant,
        wait: Option<WaitHold>,
        session: Option<usize>,
    ) {
        self.served_since_trim = true;
        let rt = &self.services[s];
        let deadline = rt.svc.exec.runtime_max.map(|t| now + t);
        if let Some(t) = deadline {
            self.timeouts.push(Reverse((t, pid.as_raw())));
        }
        self.children.insert(
            pid,
            Child {
                service: s,
                label: rt.label.clone(),
                source,
                peer,
                started: now,
                wait,
                deadline,
                timed_out: false,
                session,
                backend: false,
            },
        );
        self.check_global();
    }

    /// Starts a handler of service `s` on what is `handed` to it, for `peer` (`shown` in logs), admitted under
    /// `tracked`. A failure is dealt with here, as every hand-over treats
    /// it: counted, logged, the admission given back and counted towards
    /// the crash-loop limit; then `None`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_handler(
        &mut self,
        s: usize,
        handed: Handed<'_>,
        peer: &Peer,
        shown: &str,
        tracked: Option<IpAddr>,
        now: Instant,
        extra_env: &[u8],
    ) -> Option<nix::unistd::Pid> {
        let alone = self.children.is_empty();
        let rt = &mut self.services[s];
        let image = image_of(&mut rt.image, &rt.svc, &self.base_env, &self.reset_signals);
        // What a unit needs before each start: its environment file, its
        // sandbox, its directories. Without them the start fails, logged,
        // as under systemd, and counts towards the crash-loop guard.
        let unmet = image
            .broken
            .clone()
            .or_else(|| rt.svc.unit.as_ref().and_then(|u| u.env_missing.clone()))
            .or_else(|| make_dirs(&rt.svc).err());
        if let Some(why) = unmet {
            error!("{}: cannot start: {why} (peer={shown})", rt.svc.label());
            self.metrics.service(&rt.label).spawn_failures += 1;
            rt.counters.release(tracked);
            self.crash_check(s, true, false, Duration::ZERO, &why, now);
            return None;
        }
        // A connection goes to fds 0-2, or to fd 3 with LISTEN_FDS.
        let one;
        let (conn, socket, listen) = match handed {
            Handed::Conn(c) => {
                one = [c.as_raw_fd()];
                (Some(c), one[0], &one[..])
            }
            Handed::Kept { socket, listen } => (None, socket, listen),
        };
        let mut launch = Launch::new(
            image,
            socket,
            listen,
            peer,
            self.devnull.as_raw_fd(),
            extra_env,
        );
        let result = spawn::spawn(&mut launch, alone, conn);
        drop(launch);
        let m = self.metrics.service(&rt.label);
        match result {
            Ok(pid) => {
                m.spawned += 1;
                Some(pid)
            }
            Err(e) => {
                m.spawn_failures += 1;
                log_spawn_error(&rt.svc, &e, shown);
                rt.counters.release(tracked);
                self.crash_check(s, true, false, Duration::ZERO, &e.to_string(), now);
                None
            }
        }
    }

    /// A `wait` listener is readable: hand it to a new instance and stop
    /// watching it until that instance exits.
    pub(super) fn wake(&mut self, li: usize) {
        let lfd = self.listeners[li].fd.as_raw_fd();
        if !listen::readable_now(lfd) {
            return; // spurious, or a running dgram instance took it
        }
        let s = self.listeners[li].service;
        let now = Instant::now();
        let Some(then) = self.admit_wake(li, now) else {
            return;
        };
        let l = &self.listeners[li];
        let queued = listen::queued(lfd, l.sock_type, l.inet());
        let rt = &self.services[s];
        // With LISTEN_FDS the handler gets all of the service's sockets, in
        // configuration order (systemd Accept=no); otherwise just this one.
        let group: Vec<usize> = if rt.svc.handover.listen_fds {
            rt.listeners.clone()
        } else {
            vec![li]
        };
        let fds: Vec<RawFd> = group
            .iter()
            .map(|&g| self.listeners[g].fd.as_raw_fd())
            .collect();
        let handed = Handed::Kept {
            socket: lfd,
            listen: &fds,
        };
        if let Some(pid) = self.start_handler(s, handed, &Peer::Listener, "-", None, now, b"") {
            let rt = &self.services[s];
            let l = &self.listeners[li];
            emit(
                Level::Info,
                "wake",
                &[
                    ("service", V::S(&rt.label)),
                    ("addr", V::O(l.local.to_string())),
                    ("pid", V::N(pid.as_raw().into())),
                ],
            );
            let allows_more = l.sock_type == SockType::Dgram
                && rt.svc.limits.max_instances.is_some_and(|m| m > 1);
            for &g in &group {
                let w = &mut self.listeners[g].wait;
                w.running += 1;
                if allows_more {
                    w.rearm_at = Some(now + DGRAM_REARM);
                    self.timed_listener(g);
                }
            }
            let hold = WaitHold {
                listeners: group,
                woke: li,
                queued,
            };
            self.track(pid, s, None, "-".into(), now, Some(hold), None);
        }
        if let Some((reason, until)) = then {
            self.limit_reached(s, Some(li), reason, until, "-", now);
        }
        self.sync(s);
    }

    /// Reaps every exited child, logs it and frees its counts.
    pub(super) fn reap(&mut self) {
        let now = Instant::now();
        for exit in self.children.reap_all(now) {
            let Some(child) = &exit.child else {
                // Not a handler's (an orphan re-parented to doorman, or a
                // vfork child that failed and was logged then).
                let _ = spawn::reaped(exit.pid);
                debug!("reaped orphan pid={} {}", exit.pid, exit.outcome);
                continue;
            };
            let s = child.service;
            if child.backend {
                if let Some(e) = spawn::reaped(exit.pid) {
                    match self.services.get(s) {
                        Some(rt) => log_spawn_error(&rt.svc, &e, "backend"),
                        None => error!("{}: {e} (backend)", child.label),
                    }
                } else {
                    log_exit(&child.label, &exit);
                }
                self.backend_exited(s, &exit, now);
                continue;
            }
            // A child that could not exec reports why only now (see
            // `spawn::spawn`): it is a spawn failure, not an exit.
            let failed_spawn = spawn::reaped(exit.pid);
            if let Some(e) = &failed_spawn {
                let m = self.metrics.service(&child.label);
                m.spawned = m.spawned.saturating_sub(1);
                m.spawn_failures += 1;
                match self.services.get(s) {
                    Some(rt) => log_spawn_error(&rt.svc, e, &child.peer),
                    None => error!("{}: {e} (peer={})", child.label, child.peer),
                }
            } else {
                if events::enabled(Level::Info) {
                    log_exit(&child.label, &exit);
                }
                let m = self.metrics.service(&child.label);
                match exit.outcome {
                    Outcome::Exited(0) => m.exits_success += 1,
                    Outcome::Exited(_) => m.exits_failure += 1,
                    Outcome::Signaled(..) => m.exits_signal += 1,
                }
                m.observe(exit.duration);
            }
            if let Some(rt) = self.services.get_mut(s) {
                rt.counters.release(child.source);
                if rt.counters.running() == 0 {
                    remove_dirs(&rt.svc);
                }
            }
            if let Some(slot) = child.session {
                self.session_end(slot);
            }
            if let Some(e) = failed_spawn {
                self.crash_check(s, true, false, Duration::ZERO, &e.to_string(), now);
            } else if !child.timed_out {
                let failed = match self.services.get(s) {
                    Some(rt) => at_fault(&rt.svc, exit.outcome),
                    None => false,
                };
                let succeeded = exit.outcome == Outcome::Exited(0)
                    || self
                        .services
                        .get(s)
                        .and_then(|rt| rt.svc.unit.as_deref())
                        .is_some_and(|u| unit_success(u, exit.outcome));
                self.crash_check(
                    s,
                    failed,
                    succeeded,
                    exit.duration,
                    &exit.outcome.to_string(),
                    now,
                );
            }
            if let Some(hold) = &child.wait {
                // A handler that daemonized leaves processes in its group
                // holding the socket: keep it handed over until they exit.
                if group_alive(exit.pid.as_raw()) {
                    debug!(
                        "pid={} exited; its process group still runs, the socket stays handed over",
                        exit.pid
                    );
                    self.held.push(Held {
                        group: exit.pid.as_raw(),
                        hold: hold.clone(),
                    });
                } else {
                    self.wait_exited(hold, Some(&exit), now);
                }
            }
            self.sync(s);
        }
        self.check_global();
        // Sessions left behind by daemonizing wait handlers.
        let mut i = 0;
        while i < self.held.len() {
            if group_alive(self.held[i].group) {
                i += 1;
                continue;
            }
            let h = self.held.remove(i);
            self.wait_exited(&h.hold, None, now);
            if let Some(&l) = h.hold.listeners.first() {
                if let Some(s) = self.listeners.get(l).map(|l| l.service) {
                    self.sync(s);
                }
            }
        }
    }

    /// Frees a wait handler's listeners, and applies the spin guard: a
    /// handler that exited at once leaving its socket readable and its
    /// queue no shorter (or, where the kernel does not tell the queue,
    /// exiting with a failure) made no progress; after [`SPIN_LIMIT`] in a
    /// row the service pauses like a looping one.
    pub(super) fn wait_exited(&mut self, hold: &WaitHold, exit: Option<&Exit>, now: Instant) {
        for &g in &hold.listeners {
            if let Some(l) = self.listeners.get_mut(g) {
                l.wait.running = l.wait.running.saturating_sub(1);
            }
        }
        let Some(exit) = exit else { return };
        let Some(l) = self.listeners.get_mut(hold.woke) else {
            return; // stopping, or removed by a reload
        };
        let fd = l.fd.as_raw_fd();
        let after = listen::queued(fd, l.sock_type, l.inet());
        let no_progress = match (hold.queued, after) {
            (Some(b), Some(a)) => a >= b,
            _ => exit.outcome != Outcome::Exited(0),
        };
        if exit.duration < SPIN_LIFETIME && no_progress && listen::readable_now(fd) {
            l.wait.spins += 1;
        } else {
            l.wait.spins = 0;
        }
        if l.wait.spins >= SPIN_LIMIT {
            l.wait.spins = 0;
            let s = l.service;
            let pause = self.services[s]
                .svc
                .limits
                .rate
                .unwrap_or(DEFAULT_RATE)
                .pause;
            let reason = format!(
                "spin: the wait handler exited {SPIN_LIMIT} times in a row within {}s leaving its socket unread ({})",
                SPIN_LIFETIME.as_secs(),
                exit.outcome
            );
            self.pause(s, "spin", reason, "-", now + pause, now);
        }
    }
}

/// Whether a handler's end counts against it for the crash-loop guard:
/// what the handler is to blame for. Counted: exit status 126 or 127 (the
/// shell's "cannot execute" and "not found"), death by SIGSEGV, SIGBUS,
/// SIGILL, SIGABRT, SIGFPE or SIGSYS, and any other failing status.
/// Not counted: success (a unit's `SuccessExitStatus=` and `-` prefix
/// included), death by any other signal (SIGPIPE: its client went away;
/// SIGTERM, SIGKILL: somebody stopped it). A client that reset its
/// connection before it was accepted started no handler at all (see
/// `admit.rs`). Exec failures are counted where they are reported.
///
/// A success clears the failing statuses counted before it (see
/// `policy::Counters::ended`): a handler that serves clients is not broken.
///
/// Not done: telling a failure caused by a client that reset its
/// connection while it was served from a broken handler's. After the
/// handler's exit the kernel cannot say (a handler that exits without
/// reading sends the reset itself), and a copy of the connection kept in
/// doorman to look at would be inherited by every child forked
/// meanwhile, where one stopped before its exec would hold other
/// clients' connections open.
pub(super) fn at_fault(svc: &Service, outcome: Outcome) -> bool {
    if let Some(u) = svc.unit.as_deref() {
        if unit_success(u, outcome) {
            return false;
        }
    }
    match outcome {
        Outcome::Exited(c) => c != 0,
        Outcome::Signaled(sig, _) => [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGABRT,
            libc::SIGFPE,
            libc::SIGSYS,
        ]
        .contains(&sig),
    }
}

/// Whether a unit's handler ended well: status 0, the `-` prefix, its
/// `SuccessExitStatus=`, or one of the signals systemd.service(5) counts
/// as a clean end (SIGHUP, SIGINT, SIGTERM, SIGPIPE).
pub(super) fn unit_success(u: &crate::config::UnitExec, outcome: Outcome) -> bool {
    match outcome {
        _ if u.ignore_failure => true,
        Outcome::Exited(0) => true,
        Outcome::Exited(c) => u.success_status.contains(&c),
        Outcome::Signaled(sig, _) => {
            [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGPIPE].contains(&sig)
                || u.success_signals.contains(&sig)
        }
    }
}

/// A unit's directories (`RuntimeDirectory=` & co), made before a start
/// if missing, with the unit's mode, owned by its user (the
/// configuration directory by root), as systemd.exec(5) says.
pub(super) fn make_dirs(svc: &Service) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let Some(u) = svc.unit.as_deref() else {
        return Ok(());
    };
    let root = nix::unistd::geteuid().is_root();
    for d in &u.dirs {
        let p = &d.path;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(d.mode)
            .create(p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let meta = std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !meta.is_dir() {
            return Err(format!("{}: not a directory", p.display()));
        }
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(d.mode))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        if root && d.var != "CONFIGURATION_DIRECTORY" {
            if let Some(c) = &svc.creds {
                nix::unistd::fchownat(
                    None,
                    p,
                    Some(nix::unistd::Uid::from_raw(c.uid)),
                    Some(nix::unistd::Gid::from_raw(c.gid)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| format!("{}: chown: {e}", p.display()))?;
            }
        }
    }
    Ok(())
}

/// Removes the directories that go when the last handler has exited
/// (`RuntimeDirectory=`, unless `RuntimeDirectoryPreserve=`).
pub(super) fn remove_dirs(svc: &Service) {
    let Some(u) = svc.unit.as_deref() else { return };
    for d in u.dirs.iter().filter(|d| d.remove) {
        match std::fs::remove_dir_all(&d.path) {
            Ok(()) => debug!("{}: removed {}", svc.label(), d.path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("{}: remove {}: {e}", svc.label(), d.path.display()),
        }
    }
}

/// Whether any process other than zombies belongs to process group `pgid`
/// (a handler's: it leads one, whose id is its pid).
pub(super) fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp session ...
        if f.len() > 2 && f[2].parse() == Ok(pgid) && f[0] != "Z" && f[0] != "X" {
            return true;
        }
    }
    false
}

/// `exit service=... pid=... status=N|signal=NAME [core=yes] duration=...`.
pub(super) fn log_exit(label: &str, exit: &Exit) {
    let mut fields = vec![
        ("service", V::S(label)),
        ("pid", V::N(exit.pid.as_raw().into())),
    ];
    match exit.outcome {
        Outcome::Exited(c) => fields.push(("status", V::N(c.into()))),
        Outcome::Signaled(sig, core) => {
            fields.push(("signal", V::O(crate::reap::signal_name(sig))));
            if core {
                fields.push(("core", V::S("yes")));
            }
        }
    }
    fields.push(("duration_ms", V::N(exit.duration.as_millis() as i64)));
    emit(Level::Info, "exit", &fields);
}

/// `svc/proto: exec /path: No such file or directory (peer=...)`.
pub(super) fn log_spawn_error(svc: &Service, e: &spawn::SpawnError, shown: &str) {
    let program = match &svc.handler {
        Handler::Exec { program, .. } => program.display().to_string(),
        Handler::Internal(i) => format!("internal:{}", i.as_str()),
    };
    error!(
        "{}: {} {program}: {} (peer={shown})",
        svc.label(),
        e.stage.map_or("fork", |st| st.as_str()),
        e.errno.desc()
    );
}
