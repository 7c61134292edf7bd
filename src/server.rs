//! The event loop: the only `loop {}` in doorman.
//!
//! Owns: dispatch by token, accepting until `WouldBlock` (in fair batches),
//! waking `wait` services (handing over the listening socket, unplugging it
//! until the handler exits), performing policy decisions, registering and
//! deregistering listeners, deadlines (rate pauses, the `EMFILE` back-off,
//! datagram re-arming), the spin guard, and shutdown.
//! Must not: fork itself (spawn does) or parse text (config does).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal as NixSignal};
use nix::sys::socket::{self, sockopt, SockaddrStorage};

use crate::config::inetd::DEFAULT_RATE;
use crate::config::{Address, Handler, Loaded, Mode, Service, SockType};
use crate::error::Error;
use crate::listen::{self, storage_to_std, UnlinkOnDrop};
use crate::policy::{Counters, Decision};
use crate::reap::{Child, Children, Exit, Outcome, WaitHold};
use crate::signals::{self, Signal, Trap};
use crate::spawn::image::{BaseEnv, Image, Launch, Peer};
use crate::spawn::{self};

const SIGNAL_TOKEN: Token = Token(usize::MAX);
/// Connections accepted from one listener before the others get a turn.
const ACCEPT_BATCH: usize = 32;
/// How long accepting pauses after `EMFILE`/`ENFILE`.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);
/// A dgram `wait` service allowed more than one instance watches its
/// socket again this long after starting one (the new instance has had
/// time to read the datagram that woke it).
const DGRAM_REARM: Duration = Duration::from_millis(250);
/// The spin guard: a `wait` handler that exits within this time, leaving
/// its socket readable and its queue no shorter ...
const SPIN_LIFETIME: Duration = Duration::from_secs(2);
/// ... this many times in a row pauses its service (looping protection).
pub const SPIN_LIMIT: u32 = 5;

/// Run-time options from the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Write `READY\n` here once every socket is bound, then close it.
    pub ready_fd: Option<RawFd>,
    /// On SIGTERM/SIGINT, SIGTERM every handler's process group and wait
    /// up to `stop_timeout` (then SIGKILL) before exiting.
    pub stop_children: bool,
    pub stop_timeout: Duration,
}

struct ServiceRt {
    svc: Service,
    image: Image,
    counters: Counters,
    paused_until: Option<Instant>,
    listeners: Vec<usize>,
}

/// The state of a `wait` listener.
#[derive(Default)]
struct WaitState {
    /// Handlers holding this socket now.
    running: u32,
    /// Consecutive handlers that exited at once leaving the socket unread.
    spins: u32,
    /// A dgram listener with room for another instance is watched again
    /// at this time.
    rearm_at: Option<Instant>,
}

struct ListenerRt {
    fd: OwnedFd,
    local: Address,
    sock_type: SockType,
    /// Bound to a wildcard IP address: the connection's local address must
    /// be asked of the kernel.
    wildcard: bool,
    service: usize,
    registered: bool,
    wait: WaitState,
    _unlink: Option<UnlinkOnDrop>,
}

impl ListenerRt {
    fn inet(&self) -> bool {
        matches!(self.local, Address::Inet(_))
    }
}

/// The daemon's whole state.
pub struct Server {
    poll: Poll,
    trap: Trap,
    services: Vec<ServiceRt>,
    listeners: Vec<ListenerRt>,
    children: Children,
    base_env: BaseEnv,
    devnull: OwnedFd,
    emfile_until: Option<Instant>,
    /// The `EMFILE` warning was logged and no accept has succeeded since:
    /// one line per episode, not one per back-off.
    emfile_warned: bool,
    /// Listeners whose batch ran out before `WouldBlock`, or that were just
    /// registered again: served on the next turn of the loop.
    backlog: Vec<usize>,
    opts: Options,
}

impl Server {
    /// Binds every service's endpoints. Any bind failure is fatal here
    /// (start-up), naming service, address and config line.
    pub fn start(loaded: Loaded, trap: Trap, opts: Options) -> Result<Server, Error> {
        let poll = Poll::new().map_err(|e| Error::system("epoll_create", io_errno(&e)))?;
        let devnull = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::system("open /dev/null", e))?;
        // SAFETY: `open` just returned this fd and nothing else owns it.
        let devnull = unsafe { OwnedFd::from_raw_fd(devnull) };
        let reset = signals::to_reset_in_children();
        let mut server = Server {
            poll,
            trap,
            services: Vec::new(),
            listeners: Vec::new(),
            children: Children::default(),
            base_env: BaseEnv::capture(),
            devnull,
            emfile_until: None,
            emfile_warned: false,
            backlog: Vec::new(),
            opts,
        };
        for svc in loaded.services {
            let idx = server.services.len();
            let mut listeners = Vec::new();
            let mode = match svc.mode {
                Mode::Accept => "nowait",
                Mode::Wait => "wait",
            };
            for ep in &svc.endpoints {
                let nonblocking = svc.mode == Mode::Accept;
                let bound = listen::bind(ep, nonblocking).or_else(|(what, errno)| {
                    // A dual-stack "any" socket on a host without IPv6:
                    // IPv4 alone serves the same clients.
                    match ep.addr {
                        Address::Inet(SocketAddr::V6(a))
                            if a.ip().is_unspecified()
                                && !ep.v6only
                                && listen::is_family_unsupported(errno) =>
                        {
                            warn!(
                                "{}: {what}: {}; using 0.0.0.0 instead",
                                svc.label(),
                                errno.desc()
                            );
                            let mut v4 = ep.clone();
                            v4.addr = Address::Inet(SocketAddr::new(
                                std::net::Ipv4Addr::UNSPECIFIED.into(),
                                a.port(),
                            ));
                            listen::bind(&v4, nonblocking)
                        }
                        _ => Err((what, errno)),
                    }
                });
                match bound {
                    Ok(b) => {
                        info!(
                            "listen service={} addr={} type={} proto={} mode={mode} handover={}",
                            svc.label(),
                            b.local,
                            ep.sock_type.as_str(),
                            ep.proto(),
                            svc.handover.name()
                        );
                        listeners.push(server.listeners.len());
                        server.listeners.push(ListenerRt {
                            fd: b.fd,
                            wildcard: matches!(b.local, Address::Inet(a) if a.ip().is_unspecified()),
                            local: b.local,
                            sock_type: ep.sock_type,
                            service: idx,
                            registered: false,
                            wait: WaitState::default(),
                            _unlink: b.unlink,
                        });
                    }
                    Err((what, errno)) if ep.optional && listen::is_family_unsupported(errno) => {
                        warn!(
                            "{}: {what}: {} (skipped: no support for this address family) ({})",
                            svc.label(),
                            errno.desc(),
                            svc.origin
                        );
                    }
                    Err((what, errno)) => {
                        return Err(Error::Bind(format!(
                            "{}: {what}: {} ({})",
                            svc.label(),
                            errno.desc(),
                            svc.origin
                        )));
                    }
                }
            }
            let image = Image::new(&svc, &server.base_env, &reset);
            server.services.push(ServiceRt {
                svc,
                image,
                counters: Counters::default(),
                paused_until: None,
                listeners,
            });
        }
        server
            .trap
            .register(server.poll.registry(), SIGNAL_TOKEN)
            .map_err(|e| Error::system("register signals", io_errno(&e)))?;
        for i in 0..server.services.len() {
            server.sync(i);
        }
        info!(
            "ready services={} listeners={}",
            server.services.len(),
            server.listeners.len()
        );
        if let Some(fd) = server.opts.ready_fd {
            // SAFETY: the caller handed us this fd to write readiness to
            // and close; nothing else in doorman uses it.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            if let Err(e) = f.write_all(b"READY\n") {
                warn!("--ready-fd {fd}: {e}");
            }
        }
        Ok(server)
    }

    /// Serves until SIGTERM/SIGINT. Returns the exit status.
    pub fn run(mut self) -> u8 {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let timeout = if self.backlog.is_empty() {
                self.next_deadline()
                    .map(|d| d.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    error!("epoll_wait: {e}");
                }
                continue;
            }
            // Signals first: reaping frees capacity before we accept.
            if events.iter().any(|e| e.token() == SIGNAL_TOKEN) {
                for sig in self.trap.drain() {
                    match sig {
                        Signal::Child => self.reap(),
                        Signal::Reload => warn!(
                            "SIGHUP: reloading is not supported by this version; configuration unchanged"
                        ),
                        Signal::Dump => self.dump(),
                        Signal::Stop => return self.stop(),
                    }
                }
            }
            let mut ready: Vec<usize> = std::mem::take(&mut self.backlog);
            for ev in events.iter() {
                if ev.token() != SIGNAL_TOKEN && !ready.contains(&ev.token().0) {
                    ready.push(ev.token().0);
                }
            }
            for l in ready {
                if l >= self.listeners.len() || !self.listeners[l].registered {
                    continue;
                }
                match self.services[self.listeners[l].service].svc.mode {
                    Mode::Accept => self.accept_batch(l),
                    Mode::Wait => self.wake(l),
                }
            }
            self.expire(Instant::now());
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter_map(|s| s.paused_until)
            .chain(self.listeners.iter().filter_map(|l| l.wait.rearm_at))
            .chain(self.emfile_until)
            .min()
    }

    /// Ends rate pauses, the `EMFILE` back-off and re-arm delays whose
    /// time has come.
    fn expire(&mut self, now: Instant) {
        if self.emfile_until.is_some_and(|t| t <= now) {
            self.emfile_until = None;
            debug!("accept: retrying after file descriptor back-off");
            for i in 0..self.services.len() {
                self.sync(i);
            }
        }
        for i in 0..self.services.len() {
            if self.services[i].paused_until.is_some_and(|t| t <= now) {
                self.services[i].paused_until = None;
                info!("resume service={}", self.services[i].svc.label());
                self.sync(i);
            }
        }
        for li in 0..self.listeners.len() {
            if self.listeners[li].wait.rearm_at.is_some_and(|t| t <= now) {
                self.listeners[li].wait.rearm_at = None;
                self.sync(self.listeners[li].service);
            }
        }
    }

    /// Whether listener `li` should be watched now.
    fn wanted(&self, li: usize) -> bool {
        let l = &self.listeners[li];
        let rt = &self.services[l.service];
        if rt.paused_until.is_some()
            || self.emfile_until.is_some()
            || rt.counters.at_capacity(&rt.svc.limits)
        {
            return false;
        }
        match rt.svc.mode {
            Mode::Accept => true,
            // A wait socket belongs to its handler while one runs; a dgram
            // one may be shared by up to max-child instances.
            Mode::Wait => {
                l.wait.running == 0
                    || (l.sock_type == SockType::Dgram
                        && l.wait.rearm_at.is_none()
                        && l.wait.running < rt.svc.limits.max_instances.unwrap_or(1))
            }
        }
    }

    /// Registers or deregisters a service's listeners to match its state.
    /// A listener that becomes watched is served at once (on the next turn)
    /// rather than waiting for a fresh edge.
    fn sync(&mut self, s: usize) {
        for li in self.services[s].listeners.clone() {
            let want = self.wanted(li);
            let l = &mut self.listeners[li];
            if l.registered == want {
                continue;
            }
            let raw = l.fd.as_raw_fd();
            let r = if want {
                self.poll
                    .registry()
                    .register(&mut SourceFd(&raw), Token(li), Interest::READABLE)
            } else {
                self.poll.registry().deregister(&mut SourceFd(&raw))
            };
            match r {
                Ok(()) => {
                    l.registered = want;
                    if want && !self.backlog.contains(&li) {
                        self.backlog.push(li);
                    }
                }
                Err(e) => error!(
                    "{}: {} {}: {e}",
                    self.services[s].svc.label(),
                    if want { "register" } else { "deregister" },
                    l.local
                ),
            }
        }
    }

    /// Accepts up to a batch of connections from listener `li`.
    fn accept_batch(&mut self, li: usize) {
        for _ in 0..ACCEPT_BATCH {
            let s = self.listeners[li].service;
            if !self.listeners[li].registered {
                return;
            }
            let lfd = self.listeners[li].fd.as_raw_fd();
            // Accepted blocking (handlers expect it) and close-on-exec (no
            // other handler may inherit it).
            match socket::accept4(lfd, socket::SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => {
                    // SAFETY: accept4 just returned this fd; we own it.
                    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
                    if self.emfile_warned {
                        self.emfile_warned = false;
                        info!("accept: file descriptors available again");
                    }
                    self.serve(li, s, conn);
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO | Errno::EPERM) => continue,
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    if !self.emfile_warned {
                        self.emfile_warned = true;
                        warn!(
                            "{}: accept: {} (pausing accepts for {} ms)",
                            self.services[s].svc.label(),
                            e.desc(),
                            EMFILE_BACKOFF.as_millis()
                        );
                    }
                    self.emfile_until = Some(Instant::now() + EMFILE_BACKOFF);
                    for i in 0..self.services.len() {
                        self.sync(i);
                    }
                    return;
                }
                Err(e) => {
                    warn!("{}: accept: {}", self.services[s].svc.label(), e.desc());
                    return;
                }
            }
        }
        if !self.backlog.contains(&li) {
            self.backlog.push(li);
        }
    }

    /// Who is at the other end of an accepted connection: the hand-over's
    /// peer, the source policy counts, and how logs show it.
    fn peer_of(&self, li: usize, conn: &OwnedFd) -> Option<(Peer, Option<IpAddr>, String)> {
        let l = &self.listeners[li];
        match &l.local {
            Address::Inet(bound) => {
                let remote = socket::getpeername::<SockaddrStorage>(conn.as_raw_fd())
                    .ok()
                    .and_then(|ss| storage_to_std(&ss))?;
                let local = if l.wildcard {
                    listen::local_addr(conn.as_raw_fd()).unwrap_or(*bound)
                } else {
                    *bound
                };
                let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
                Some((
                    Peer::Tcp { remote, local },
                    Some(remote.ip()),
                    remote.to_string(),
                ))
            }
            Address::Unix(path) => {
                let cred = socket::getsockopt(conn, sockopt::PeerCredentials).ok()?;
                let shown = format!("uid:{}/pid:{}", cred.uid(), cred.pid());
                let peer = Peer::Unix {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    pid: cred.pid(),
                    path: path.clone(),
                };
                Some((peer, None, shown))
            }
        }
    }

    /// One accepted connection: decide, then spawn or refuse.
    fn serve(&mut self, li: usize, s: usize, conn: OwnedFd) {
        let now = Instant::now();
        let Some((peer, source, shown)) = self.peer_of(li, &conn) else {
            debug!(
                "{}: connection gone before it could be served",
                self.services[s].svc.label()
            );
            return;
        };
        if !self.admit(s, source, &shown, now) {
            return;
        }
        let rt = &mut self.services[s];
        let fd = conn.as_raw_fd();
        let mut launch = Launch::new(&rt.image, fd, &[fd], &peer, self.devnull.as_raw_fd());
        match spawn::spawn(&mut launch) {
            Ok(pid) => {
                info!("accept service={} peer={shown} pid={pid}", rt.svc.label());
                self.children.insert(
                    pid,
                    Child {
                        service: s,
                        source,
                        peer: shown,
                        started: now,
                        wait: None,
                    },
                );
            }
            Err(e) => {
                log_spawn_error(&rt.svc, &e, &shown);
                rt.counters.release(source);
            }
        }
        drop(conn);
        if self.services[s]
            .counters
            .at_capacity(&self.services[s].svc.limits)
        {
            self.sync(s);
        }
    }

    /// Asks policy about a connection or a wake-up; performs a refusal or
    /// pause. True when admitted (and counted).
    fn admit(&mut self, s: usize, source: Option<IpAddr>, shown: &str, now: Instant) -> bool {
        let rt = &mut self.services[s];
        match rt.counters.admit(&rt.svc.limits, source, now) {
            Decision::Admit => true,
            Decision::Refuse(reason) => {
                info!(
                    "refuse service={} peer={shown} reason={reason}",
                    rt.svc.label()
                );
                false
            }
            Decision::Pause(reason, until) => {
                self.pause(s, reason.to_string(), shown, until, now);
                false
            }
        }
    }

    fn pause(&mut self, s: usize, reason: String, shown: &str, until: Instant, now: Instant) {
        let rt = &mut self.services[s];
        warn!(
            "pause service={} peer={shown} reason={reason} for={}s",
            rt.svc.label(),
            until.saturating_duration_since(now).as_secs()
        );
        rt.paused_until = Some(until);
        self.sync(s);
    }

    /// A `wait` listener is readable: hand it to a new instance and stop
    /// watching it until that instance exits.
    fn wake(&mut self, li: usize) {
        let lfd = self.listeners[li].fd.as_raw_fd();
        if !listen::readable_now(lfd) {
            return; // spurious, or a running dgram instance took it
        }
        let s = self.listeners[li].service;
        let now = Instant::now();
        if !self.admit(s, None, "-", now) {
            return;
        }
        let l = &self.listeners[li];
        let queued = listen::queued(lfd, l.sock_type, l.inet());
        let rt = &mut self.services[s];
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
        let mut launch = Launch::new(
            &rt.image,
            lfd,
            &fds,
            &Peer::Listener,
            self.devnull.as_raw_fd(),
        );
        match spawn::spawn(&mut launch) {
            Ok(pid) => {
                info!("wake service={} addr={} pid={pid}", rt.svc.label(), l.local);
                let allows_more = l.sock_type == SockType::Dgram
                    && rt.svc.limits.max_instances.is_some_and(|m| m > 1);
                for &g in &group {
                    let w = &mut self.listeners[g].wait;
                    w.running += 1;
                    if allows_more {
                        w.rearm_at = Some(now + DGRAM_REARM);
                    }
                }
                self.children.insert(
                    pid,
                    Child {
                        service: s,
                        source: None,
                        peer: "-".into(),
                        started: now,
                        wait: Some(WaitHold {
                            listeners: group,
                            woke: li,
                            queued,
                        }),
                    },
                );
            }
            Err(e) => {
                log_spawn_error(&rt.svc, &e, "-");
                rt.counters.release(None);
            }
        }
        self.sync(s);
    }

    /// Reaps every exited child, logs it and frees its counts.
    fn reap(&mut self) {
        let now = Instant::now();
        for exit in self.children.reap_all(now) {
            let Some(child) = &exit.child else {
                debug!("reaped orphan pid={} {}", exit.pid, exit.outcome);
                continue;
            };
            let s = child.service;
            let Some(rt) = self.services.get_mut(s) else {
                continue;
            };
            info!(
                "exit service={} pid={} {} duration={}ms",
                rt.svc.label(),
                exit.pid,
                exit.outcome,
                exit.duration.as_millis()
            );
            rt.counters.release(child.source);
            if let Some(hold) = &child.wait {
                self.wait_exited(hold, &exit, now);
            }
            self.sync(s);
        }
    }

    /// The spin guard. A wait handler that exits at once leaving its socket
    /// readable and its queue no shorter (or, where the kernel does not
    /// tell the queue, exiting with a failure) made no progress; after
    /// [`SPIN_LIMIT`] in a row the service pauses like a looping one.
    fn wait_exited(&mut self, hold: &WaitHold, exit: &Exit, now: Instant) {
        for &g in &hold.listeners {
            if let Some(l) = self.listeners.get_mut(g) {
                l.wait.running = l.wait.running.saturating_sub(1);
            }
        }
        let before = hold.queued;
        let Some(l) = self.listeners.get_mut(hold.woke) else {
            return; // stopping: the listeners are closed
        };
        let fd = l.fd.as_raw_fd();
        let after = listen::queued(fd, l.sock_type, l.inet());
        let no_progress = match (before, after) {
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
            self.pause(s, reason, "-", now + pause, now);
        }
    }

    /// SIGUSR1: one line per service and per running handler.
    fn dump(&self) {
        let now = Instant::now();
        for rt in &self.services {
            let addrs: Vec<String> = rt
                .listeners
                .iter()
                .map(|&l| self.listeners[l].local.to_string())
                .collect();
            let busy = rt
                .listeners
                .iter()
                .any(|&l| self.listeners[l].wait.running > 0);
            let state = match rt.paused_until {
                Some(t) => format!("paused for {}s", t.saturating_duration_since(now).as_secs()),
                None if rt.counters.at_capacity(&rt.svc.limits) => "full".to_string(),
                None if busy => "busy(wait)".to_string(),
                None => "listening".to_string(),
            };
            info!(
                "state service={} addrs={} state={state} running={} sources={}",
                rt.svc.label(),
                addrs.join(","),
                rt.counters.running(),
                rt.counters.sources_tracked()
            );
        }
        for (pid, c) in self.children.iter() {
            info!(
                "state child pid={pid} service={} peer={} age={}ms",
                self.services
                    .get(c.service)
                    .map_or("?".into(), |s| s.svc.label()),
                c.peer,
                now.duration_since(c.started).as_millis()
            );
        }
    }

    /// SIGTERM/SIGINT: close every listener (removing unix socket files),
    /// optionally stop handlers, exit 0.
    fn stop(mut self) -> u8 {
        info!("stop: closing {} listeners", self.listeners.len());
        for rt in &mut self.services {
            rt.listeners.clear();
        }
        self.backlog.clear();
        self.listeners.clear(); // closes every listening socket
        if !self.opts.stop_children || self.children.is_empty() {
            if !self.children.is_empty() {
                info!("stop: leaving {} handlers running", self.children.len());
            }
            return 0;
        }
        // Each handler as its service says (systemd KillSignal=,
        // KillMode=, TimeoutStopSec=); the longest timeout bounds the wait.
        let mut timeout = Duration::ZERO;
        let mut signalled = 0;
        for (pid, c) in self.children.iter() {
            let Some(rt) = self.services.get(c.service) else {
                continue;
            };
            let spec = rt.svc.stop;
            let Ok(sig) = NixSignal::try_from(spec.signal) else {
                continue;
            };
            match spec.group {
                None => continue,
                Some(true) => drop(killpg(pid, sig)),
                Some(false) => drop(nix::sys::signal::kill(pid, sig)),
            }
            signalled += 1;
            timeout = timeout.max(spec.timeout.unwrap_or(self.opts.stop_timeout));
        }
        info!(
            "stop: signalled {signalled} of {} handlers, waiting up to {}s",
            self.children.len(),
            timeout.as_secs()
        );
        let deadline = Instant::now() + timeout;
        let mut events = Events::with_capacity(16);
        while self.children.iter().any(|(_, c)| {
            self.services
                .get(c.service)
                .is_some_and(|s| s.svc.stop.group.is_some())
        }) {
            let now = Instant::now();
            if now >= deadline {
                let left: Vec<nix::unistd::Pid> = self
                    .children
                    .iter()
                    .filter(|(_, c)| {
                        self.services
                            .get(c.service)
                            .is_some_and(|s| s.svc.stop.group.is_some())
                    })
                    .map(|(p, _)| p)
                    .collect();
                for pid in left {
                    warn!("stop: pid={pid} still running, sending SIGKILL");
                    let _ = killpg(pid, NixSignal::SIGKILL);
                    let _ = nix::sys::signal::kill(pid, NixSignal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(pid, None);
                }
                break;
            }
            let _ = self.poll.poll(&mut events, Some(deadline - now));
            let _ = self.trap.drain();
            self.reap();
        }
        0
    }
}

/// `svc/proto: exec /path: No such file or directory (peer=...)`.
fn log_spawn_error(svc: &Service, e: &spawn::SpawnError, shown: &str) {
    let Handler::Exec { program, .. } = &svc.handler;
    error!(
        "{}: {} {}: {} (peer={shown})",
        svc.label(),
        e.stage.map_or("fork", |st| st.as_str()),
        program.display(),
        e.errno.desc()
    );
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}
