//! The event loop: the only `loop {}` in doorman.
//!
//! Owns: dispatch by token, accepting until `WouldBlock` (in fair batches),
//! waking `wait` services (handing over the listening socket, unplugging it
//! until the handler and everything in its process group are gone), performing
//! policy decisions, registering and deregistering listeners, deadlines
//! (rate pauses, the `EMFILE` back-off, datagram re-arming, scrape
//! time-outs), the spin guard, reload (keep sockets by bind key), the
//! metrics endpoint, readiness notification and shutdown.
//! Admission and refusal live in `admit.rs`, starting, waking and
//! reaping handlers in `children.rs`, in-loop work without a process in
//! `inside.rs`, reload in `reload.rs`, the metrics endpoint in `scrape.rs`.
//! Must not: fork itself (spawn does) or parse text (config does).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn, Level};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal as NixSignal};
use nix::sys::socket::{self, sockopt, SockaddrStorage};

use crate::config::inetd::DEFAULT_RATE;
use crate::config::{
    self, Address, Endpoint, Fate, Handler, Loaded, Mode, Service, SockType, Sources,
    DEFAULT_GRACE, MAX_MESSAGE,
};
use crate::error::Error;
use crate::events::{self, emit, V};
use crate::footprint::Footprint;
use crate::listen::{self, storage_to_std, UnlinkOnDrop};
use crate::metrics::{self, Gauges, Metrics};
use crate::notify::{self, Notify};
use crate::policy::{self, Counters, Decision, Reason};
use crate::reap::{Child, Children, Exit, Outcome, WaitHold};
use crate::signals::{self, Signal, Trap};
use crate::spawn::image::{BaseEnv, Image, Launch, Peer};
use crate::spawn::{self};

mod admit;
mod backend;
mod children;
mod inside;
mod reload;
mod scrape;

/// Traffic pulls code and data pages back in; they are given back when the
/// loop goes idle with no handler running, at least this long after the
/// previous time (a steady stream pays for it once per interval, not per
/// connection).
const TRIM_AFTER: Duration = Duration::from_secs(10);
const SIGNAL_TOKEN: Token = Token(usize::MAX);
const METRICS_TOKEN: Token = Token(usize::MAX - 1);
/// Scrape connections use tokens from here up.
const SCRAPE_BASE: usize = 1 << 40;
/// At most this many scrapes at once; more are closed at once.
const MAX_SCRAPES: usize = 16;
/// A scrape must be done within this time.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections accepted from one listener before the others get a turn.
const ACCEPT_BATCH: usize = 32;
/// How long accepting pauses after `EMFILE`/`ENFILE`.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);
/// A dgram `wait` service allowed more than one instance watches its
/// socket again this long after starting one.
const DGRAM_REARM: Duration = Duration::from_millis(250);
/// The spin guard: a `wait` handler that exits within this time, leaving
/// its socket readable and its queue no shorter ...
const SPIN_LIFETIME: Duration = Duration::from_secs(2);
/// ... this many times in a row pauses its service (looping protection).
pub const SPIN_LIMIT: u32 = 5;

/// What SIGTERM/SIGINT do to running handlers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStop {
    /// Leave them running (classic inetd).
    Leave,
    /// Signal each as its service says (SIGTERM to its process group by
    /// default), wait up to the timeout, then SIGKILL.
    Term,
}

/// Run-time options from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// Write `READY\n` here once every socket is bound, then close it.
    pub ready_fd: Option<RawFd>,
    pub on_stop: OnStop,
    pub stop_timeout: Duration,
    /// Serve Prometheus metrics here.
    pub metrics: Option<SocketAddr>,
    /// What to read again on SIGHUP.
    pub sources: Sources,
    /// At most this many handlers over all services (`--max-children`).
    pub max_children: Option<u32>,
}

struct ServiceRt {
    svc: Service,
    label: String,
    /// What a spawn of this service needs, made at its first spawn: a
    /// service nobody connects to costs no argv, envp or credentials.
    /// (Shared with detached children on their way to exec, which keep it
    /// alive past a reload that drops this service.)
    image: Option<std::rc::Rc<Image>>,
    counters: Counters,
    paused_until: Option<Instant>,
    listeners: Vec<usize>,
    /// How many of doorman's descriptors this service's own tables
    /// (internal connections, pending PROXY reads, UDP sessions) may
    /// hold: its share of the fd limit (see `set_fd_shares`).
    fd_share: u32,
    /// Its on-demand backend's state (`proxy-to=`).
    /// Boxed: most services have none (176 bytes each otherwise).
    backend: Option<Box<backend::BackendRt>>,
}

impl ServiceRt {
    /// How many internal connections may be open at once.
    fn inside_cap(&self) -> u32 {
        self.svc
            .limits
            .max_instances
            .unwrap_or(inside::INSIDE_MAX)
            .min(self.fd_share)
    }

    /// True when the service takes no connection now: its instance limit,
    /// or its share of descriptors, is reached.
    fn full(&self) -> bool {
        let c = &self.counters;
        c.at_capacity(&self.svc.limits)
            || (self.svc.internal().is_some_and(holds_fds) && c.running() >= self.inside_cap())
            || (self.svc.proxy.is_some() && c.pending() >= inside::PROXY_PENDING.min(self.fd_share))
            || self.backend.as_ref().is_some_and(|b| {
                let cap = self.svc.backend.as_ref().map_or(0, |c| c.max_held) as usize;
                // Each relay holds six descriptors (two sockets, two pipes).
                b.held() >= cap || (b.held() + 6 * b.relays as usize) >= self.fd_share as usize
            })
    }

    /// Whether the service keeps descriptors of clients in doorman.
    fn holds_fds(&self) -> bool {
        self.svc.internal().is_some_and(holds_fds)
            || self.svc.proxy.is_some()
            || self.svc.backend.is_some()
            || (self.svc.mode == Mode::Accept
                && self.svc.internal().is_none()
                && self
                    .svc
                    .endpoints
                    .iter()
                    .any(|e| e.sock_type == SockType::Dgram))
    }
}

/// Internal services that keep a connection open in the loop (daytime
/// and time answer and close at once).
fn holds_fds(k: crate::config::Internal) -> bool {
    use crate::config::Internal;
    !matches!(k, Internal::Daytime | Internal::Time)
}

/// Descriptors kept out of every service's share: accepts, handler
/// start-up (report pipes, socket pairs), scrapes, reloads.
const FD_RESERVE: u64 = 64;

/// A service's spawn image, made on first use. (A function of the two
/// fields, so that the rest of the service can be borrowed meanwhile.)
fn image_of<'a>(
    image: &'a mut Option<std::rc::Rc<Image>>,
    svc: &Service,
    base: &BaseEnv,
    reset_signals: &[libc::c_int],
) -> &'a std::rc::Rc<Image> {
    image.get_or_insert_with(|| std::rc::Rc::new(Image::new(svc, base, reset_signals)))
}

/// The state of a `wait` listener.
#[derive(Default)]
struct WaitState {
    /// Handlers (or process groups they left behind) holding this socket now.
    running: u32,
    /// Consecutive handlers that exited at once leaving the socket unread.
    spins: u32,
    /// A dgram listener with room for another instance is watched again
    /// at this time.
    rearm_at: Option<Instant>,
}

struct ListenerRt {
    fd: OwnedFd,
    /// The endpoint as configured: what identifies it across reloads.
    key: (SockType, Address, bool),
    local: Address,
    sock_type: SockType,
    nonblocking: bool,
    /// Bound to a wildcard IP address: the connection's local address must
    /// be asked of the kernel.
    wildcard: bool,
    service: usize,
    registered: bool,
    /// Registered with the poll at least once.
    seen: bool,
    /// In `backlog` (or this turn's ready list) already: a flag, not a
    /// search of the list (after a reload of 10,000 services the list
    /// holds them all).
    queued: bool,
    wait: WaitState,
    /// Wake-ups admitted from this socket (systemd's poll limit counts per
    /// socket), and the end of the pause its limit caused.
    poll: policy::Window,
    paused_until: Option<Instant>,
    /// A unix socket file's inode, as bound.
    node: Option<listen::Node>,
    _unlink: Option<UnlinkOnDrop>,
}

impl ListenerRt {
    fn inet(&self) -> bool {
        matches!(self.local, Address::Inet(_))
    }
}

/// A wait handler that exited while processes of its process group still
/// run (it daemonized): its listeners stay handed over until they are gone.
struct Held {
    /// The handler's process group (its pid).
    group: i32,
    hold: WaitHold,
}

/// One scrape of the metrics endpoint in progress.
struct Scrape {
    stream: std::net::TcpStream,
    request: Vec<u8>,
    reply: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

/// The daemon's whole state.
pub struct Server {
    poll: Poll,
    trap: Trap,
    services: Vec<ServiceRt>,
    listeners: Vec<ListenerRt>,
    children: Children,
    held: Vec<Held>,
    base_env: BaseEnv,
    reset_signals: Vec<libc::c_int>,
    devnull: OwnedFd,
    emfile_until: Option<Instant>,
    /// The `EMFILE` warning was logged and no accept has succeeded since.
    emfile_warned: bool,
    /// Listeners to serve on the next turn of the loop (batch ran out, or
    /// just registered again).
    backlog: Vec<usize>,
    metrics: Metrics,
    metrics_listener: Option<std::net::TcpListener>,
    scrapes: Vec<Option<Scrape>>,
    notify: Option<Notify>,
    /// Handler deadlines (`timeout`), earliest first; entries whose child
    /// is gone or has a newer deadline are dropped when they surface.
    timeouts: BinaryHeap<Reverse<(Instant, i32)>>,
    /// The services and listeners that may hold a deadline of their own
    /// (a pause, a re-arm delay, a backend's timers): the loop's turn
    /// looks at these, not at every service, so that its cost does not
    /// grow with the configuration. Rebuilt by each load; an entry whose
    /// deadlines have all gone is dropped when it is next looked at.
    timed: Timed,
    footprint: Footprint,
    /// A configuration was loaded since the last give-back.
    loaded: bool,
    /// A handler was started or an internal connection opened since the
    /// last give-back, at `trim_last`.
    served_since_trim: bool,
    trim_last: Instant,
    /// `--max-children` was reached: every listener is unwatched.
    global_full: bool,
    /// Internal connections, pending PROXY reads, UDP sessions.
    inside: inside::Inside,
    /// Clients relayed to on-demand backends, and those to drive again
    /// on the next turn.
    relays: inside::Slab<backend::Relay>,
    relay_again: Vec<usize>,
    opts: Options,
}

/// What a handler is given: a connection doorman hands over (its copy
/// is closed by the spawn), or fds doorman keeps (a `wait` listener and
/// its group for `LISTEN_FDS`, /dev/null for a backend).
pub(super) enum Handed<'a> {
    Conn(OwnedFd),
    Kept { socket: RawFd, listen: &'a [RawFd] },
}

/// Binds one endpoint, falling back from a dual-stack "any" socket to
/// IPv4 on hosts without IPv6. `Ok(None)`: an optional endpoint skipped.
/// Listeners the loop reads or accepts from itself are non-blocking; a
/// `wait` listener is the handler's and stays blocking.
fn loop_owned(svc: &Service) -> bool {
    svc.mode == Mode::Accept || svc.internal().is_some()
}

fn open_endpoint(svc: &Service, ep: &Endpoint) -> Result<Option<listen::Bound>, String> {
    let nonblocking = loop_owned(svc);
    let bound = listen::bind(ep, nonblocking).or_else(|(what, errno)| match ep.addr {
        Address::Inet(SocketAddr::V6(a))
            if a.ip().is_unspecified() && !ep.v6only && listen::is_family_unsupported(errno) =>
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
    });
    match bound {
        Ok(b) => Ok(Some(b)),
        Err((what, errno)) if ep.optional && listen::is_family_unsupported(errno) => {
            warn!(
                "{}: {what}: {} (skipped: no support for this address family) ({})",
                svc.label(),
                errno.desc(),
                svc.origin
            );
            Ok(None)
        }
        Err((what, errno)) => Err(format!(
            "{}: {what}: {} ({})",
            svc.label(),
            errno.desc(),
            svc.origin
        )),
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Accept => "nowait",
        Mode::Wait => "wait",
    }
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
        let metrics_listener = match opts.metrics {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .map_err(|e| Error::Bind(format!("--metrics {addr}: bind: {e}")))?;
                l.set_nonblocking(true)
                    .map_err(|e| Error::system("metrics socket", io_errno(&e)))?;
                Some(l)
            }
            None => None,
        };
        let mut server = Server {
            poll,
            trap,
            services: Vec::new(),
            listeners: Vec::new(),
            children: Children::default(),
            held: Vec::new(),
            base_env: BaseEnv::capture(),
            reset_signals: signals::to_reset_in_children(),
            devnull,
            emfile_until: None,
            emfile_warned: false,
            backlog: Vec::new(),
            metrics: Metrics::default(),
            metrics_listener,
            scrapes: Vec::new(),
            notify: Notify::from_env(),
            timeouts: BinaryHeap::new(),
            timed: Timed::default(),
            global_full: false,
            footprint: Footprint::new(),
            loaded: true,
            served_since_trim: false,
            trim_last: Instant::now(),
            inside: inside::Inside::default(),
            relays: inside::Slab::default(),
            relay_again: Vec::new(),
            opts,
        };
        server.swap(loaded.services, true)?;
        server
            .trap
            .register(server.poll.registry(), SIGNAL_TOKEN)
            .map_err(|e| Error::system("register signals", io_errno(&e)))?;
        if let Some(l) = &server.metrics_listener {
            let raw = l.as_raw_fd();
            server
                .poll
                .registry()
                .register(&mut SourceFd(&raw), METRICS_TOKEN, Interest::READABLE)
                .map_err(|e| Error::system("register metrics socket", io_errno(&e)))?;
            emit(
                Level::Info,
                "metrics",
                &[(
                    "addr",
                    V::O(l.local_addr().map(|a| a.to_string()).unwrap_or_default()),
                )],
            );
        }
        // A subreaper gets the orphans of double-forking handlers, so that
        // they are reaped and a wait service is held until they are gone.
        // (As PID 1 doorman gets them anyway.)
        if std::process::id() != 1 {
            // SAFETY: prctl with PR_SET_CHILD_SUBREAPER and an integer flag.
            if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
                debug!("prctl(PR_SET_CHILD_SUBREAPER): {}", Errno::last().desc());
            }
        }
        Ok(server)
    }

    /// Says the daemon is ready (log, `--ready-fd`, `READY=1`): after
    /// [`Server::start`] and the pidfile, so that whoever is told finds
    /// the pidfile in place.
    pub fn announce_ready(&mut self) {
        let server = self;
        emit(
            Level::Info,
            "ready",
            &[
                ("services", V::N(server.services.len() as i64)),
                ("listeners", V::N(server.listeners.len() as i64)),
                ("took", V::O(events::took(events::started()))),
            ],
        );
        if let Some(fd) = server.opts.ready_fd.take() {
            // SAFETY: the caller handed us this fd to write readiness to
            // and close; nothing else in doorman uses it.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            if let Err(e) = f.write_all(b"READY\n") {
                warn!("--ready-fd {fd}: {e}");
            }
        }
        server.notify_status("READY=1");
    }

    /// Gives back free heap and the file pages the daemon mapped
    /// ([`Footprint::release`]).
    fn release_memory(&mut self, now: Instant) {
        self.loaded = false;
        self.served_since_trim = false;
        self.trim_last = now;
        spawn::trim();
        self.footprint.release();
    }

    fn notify_status(&self, first: &str) {
        if let Some(n) = &self.notify {
            n.send(&format!(
                "{first}\nSTATUS=serving {} services on {} sockets, {} handlers running",
                self.services.len(),
                self.listeners.len(),
                self.children.len()
            ));
        }
    }

    /// Serves until SIGTERM/SIGINT. Returns the exit status.
    pub fn run(mut self: Box<Self>) -> u8 {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            // Connections kept for children that now have their own copy.
            spawn::settle();
            self.prune_timeouts();
            let inside_next = self.inside.next_deadline();
            let timeout = if self.backlog.is_empty()
                && self.inside.again.is_empty()
                && self.relay_again.is_empty()
            {
                self.next_deadline()
                    .into_iter()
                    .chain(inside_next)
                    .min()
                    .map(|d| d.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            if timeout.is_none()
                && (self.loaded
                    || (self.served_since_trim
                        && self.children.is_empty()
                        && now.saturating_duration_since(self.trim_last) >= TRIM_AFTER))
            {
                // Nothing to do until the next event: what start-up, a
                // reload or the traffic since the last time touched and
                // freed is given back, right before the wait (anything
                // run between the two would map pages back in).
                self.release_memory(now);
            }
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
                        Signal::Reload => self.reload(),
                        Signal::Dump => self.dump(),
                        Signal::Stop => return self.stop(),
                    }
                }
            }
            let mut ready: Vec<usize> = std::mem::take(&mut self.backlog);
            for ev in events.iter() {
                let t = ev.token();
                if t == SIGNAL_TOKEN {
                    continue;
                }
                if t == METRICS_TOKEN {
                    self.accept_scrapes();
                } else if t.0 >= backend::NOTIFY_BASE {
                    self.notify_event(t.0 - backend::NOTIFY_BASE);
                } else if t.0 >= backend::PROBE_BASE {
                    self.probe_event(t.0 - backend::PROBE_BASE);
                } else if t.0 >= backend::RELAY_BASE {
                    self.relay_event((t.0 - backend::RELAY_BASE) / 2);
                } else if t.0 >= inside::SESSION_BASE {
                    self.session_event(t.0 - inside::SESSION_BASE);
                } else if t.0 >= inside::PENDING_BASE {
                    self.proxy_event(t.0 - inside::PENDING_BASE);
                } else if t.0 >= inside::INSIDE_BASE {
                    self.inside_event(t.0 - inside::INSIDE_BASE);
                } else if t.0 >= SCRAPE_BASE {
                    self.serve_scrape(t.0 - SCRAPE_BASE);
                } else {
                    // After a reload a token of this batch may name another
                    // listener than it did: serving that one finds nothing
                    // to accept, and the one that moved was registered
                    // again, which reports it again if it is readable.
                    if let Some(l) = self.listeners.get_mut(t.0) {
                        if !l.queued {
                            l.queued = true;
                            ready.push(t.0);
                        }
                    }
                }
            }
            for l in ready {
                if l >= self.listeners.len() {
                    continue;
                }
                self.listeners[l].queued = false;
                if !self.listeners[l].registered {
                    continue;
                }
                let svc = &self.services[self.listeners[l].service].svc;
                let dgram = self.listeners[l].sock_type == SockType::Dgram;
                match (svc.mode, dgram) {
                    _ if svc.internal().is_some() && dgram => self.inside_dgram(l),
                    (Mode::Accept, true) => self.session_dgram(l),
                    (Mode::Accept, false) => self.accept_batch(l),
                    (Mode::Wait, _) => self.wake(l),
                }
            }
            self.inside_again();
            self.relay_again_turn();
            self.expire(Instant::now());
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let (services, listeners) = (&self.services, &self.listeners);
        self.timed
            .paused
            .retain(|&s| services.get(s).is_some_and(|rt| rt.paused_until.is_some()));
        self.timed.listeners.retain(|&li| {
            listeners
                .get(li)
                .is_some_and(|l| l.paused_until.is_some() || l.wait.rearm_at.is_some())
        });
        let paused = self
            .timed
            .paused
            .iter()
            .filter_map(|&s| services[s].paused_until);
        let listener = self.timed.listeners.iter().flat_map(|&li| {
            let l = &listeners[li];
            [l.wait.rearm_at, l.paused_until].into_iter().flatten()
        });
        let backends = self.timed.backends.iter().filter_map(|&s| {
            services
                .get(s)
                .and_then(|rt| rt.backend.as_ref())
                .and_then(|b| b.deadline())
        });
        paused
            .chain(listener)
            .chain(backends)
            .chain(self.scrapes.iter().flatten().map(|s| s.deadline))
            .chain(self.emfile_until)
            .chain(self.timeouts.peek().map(|Reverse((t, _))| *t))
            .min()
    }

    /// Notes that service `s` is paused now (see [`Timed`]).
    fn timed_service(&mut self, s: usize) {
        if !self.timed.paused.contains(&s) {
            self.timed.paused.push(s);
        }
    }

    /// Notes that listener `li` has a pause or re-arm delay now.
    fn timed_listener(&mut self, li: usize) {
        if !self.timed.listeners.contains(&li) {
            self.timed.listeners.push(li);
        }
    }

    /// Rebuilds [`Timed`] for a new set of services and listeners (a load).
    fn index_timed(&mut self) {
        self.timed.paused = (0..self.services.len())
            .filter(|&s| self.services[s].paused_until.is_some())
            .collect();
        self.timed.backends = (0..self.services.len())
            .filter(|&s| self.services[s].backend.is_some())
            .collect();
        self.timed.listeners = (0..self.listeners.len())
            .filter(|&li| {
                let l = &self.listeners[li];
                l.paused_until.is_some() || l.wait.rearm_at.is_some()
            })
            .collect();
    }

    /// Ends rate pauses, the `EMFILE` back-off, re-arm delays and slow
    /// scrapes whose time has come.
    fn expire(&mut self, now: Instant) {
        self.expire_timeouts(now);
        self.expire_inside(now);
        self.expire_backends(now);
        if self.emfile_until.is_some_and(|t| t <= now) {
            self.emfile_until = None;
            debug!("accept: retrying after file descriptor back-off");
            for i in 0..self.services.len() {
                self.sync(i);
            }
        }
        for k in 0..self.timed.paused.len() {
            let i = self.timed.paused[k];
            if self.services[i].paused_until.is_some_and(|t| t <= now) {
                self.services[i].paused_until = None;
                emit(
                    Level::Info,
                    "resume",
                    &[("service", V::S(&self.services[i].label))],
                );
                self.sync(i);
            }
        }
        for k in 0..self.timed.listeners.len() {
            let li = self.timed.listeners[k];
            if self.listeners[li].wait.rearm_at.is_some_and(|t| t <= now) {
                self.listeners[li].wait.rearm_at = None;
                self.sync(self.listeners[li].service);
            }
            if self.listeners[li].paused_until.is_some_and(|t| t <= now) {
                self.listeners[li].paused_until = None;
                emit(
                    Level::Info,
                    "resume",
                    &[
                        (
                            "service",
                            V::S(&self.services[self.listeners[li].service].label),
                        ),
                        ("addr", V::O(self.listeners[li].local.to_string())),
                    ],
                );
                self.sync(self.listeners[li].service);
            }
        }
        for i in 0..self.scrapes.len() {
            if self.scrapes[i].as_ref().is_some_and(|s| s.deadline <= now) {
                self.close_scrape(i);
            }
        }
    }

    /// Whether listener `li` should be watched now.
    fn wanted(&self, li: usize) -> bool {
        let l = &self.listeners[li];
        let rt = &self.services[l.service];
        // Datagram services served in the loop (internal ones, per-peer
        // sessions) are always read: existing sessions' datagrams arrive
        // there too; new peers over a limit are dropped one by one.
        if l.sock_type == SockType::Dgram
            && (rt.svc.internal().is_some() || rt.svc.mode == Mode::Accept)
        {
            return !(rt.paused_until.is_some() && rt.svc.internal().is_some());
        }
        // A poll limit: this socket's clients wait in the backlog.
        if self.emfile_until.is_some() || self.global_full || l.paused_until.is_some() {
            return false;
        }
        let full = rt.full();
        match rt.svc.mode {
            // Over a limit whose fate is not `queue`, the listener stays
            // watched and each client gets its fate.
            Mode::Accept => {
                !(rt.paused_until.is_some() && rt.svc.refusal.paused == Fate::Queue
                    || full && rt.svc.refusal.full == Fate::Queue)
            }
            Mode::Wait if rt.paused_until.is_some() || full => false,
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
        let n = self.services.get(s).map_or(0, |rt| rt.listeners.len());
        for k in 0..n {
            let li = self.services[s].listeners[k];
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
                    // Registered again (after a pause or a full spell):
                    // served on the next turn, as before. A socket's first
                    // registration is not queued: nothing can have been
                    // missed, and start-up then makes no accept per
                    // listener.
                    if want && l.seen {
                        self.queue(li);
                    } else if want {
                        self.listeners[li].seen = true;
                    }
                }
                Err(e) => error!(
                    "{}: {} {}: {e}",
                    self.services[s].label,
                    if want { "register" } else { "deregister" },
                    l.local
                ),
            }
        }
    }

    /// Serves listener `li` on the next turn of the loop (once).
    pub(super) fn queue(&mut self, li: usize) {
        if let Some(l) = self.listeners.get_mut(li) {
            if !l.queued {
                l.queued = true;
                self.backlog.push(li);
            }
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
                Some(t) => format!("paused-for-{}s", t.saturating_duration_since(now).as_secs()),
                None if rt.full() => "full".to_string(),
                None if busy => "busy(wait)".to_string(),
                None => "listening".to_string(),
            };
            let m = self.metrics.services.get(&rt.label);
            emit(
                Level::Info,
                "state",
                &[
                    ("service", V::S(&rt.label)),
                    ("addrs", V::O(addrs.join(","))),
                    ("mode", V::S(mode_name(rt.svc.mode))),
                    ("state", V::O(state)),
                    ("running", V::N(rt.counters.running().into())),
                    ("accepted", V::N(m.map_or(0, |m| m.accepted) as i64)),
                    ("sources", V::N(rt.counters.sources_tracked() as i64)),
                ],
            );
            if let Some(b) = &rt.backend {
                let m = self.metrics.services.get(&rt.label);
                let n = |f: fn(&metrics::ServiceMetrics) -> u64| V::N(m.map_or(0, f) as i64);
                emit(
                    Level::Info,
                    "state",
                    &[
                        ("service", V::S(&rt.label)),
                        ("backend", V::S(b.state.as_str())),
                        (
                            "pid",
                            V::O(b.pid.map_or("-".to_string(), |p| p.to_string())),
                        ),
                        ("held", V::N(b.held() as i64)),
                        ("relays", V::N(b.relays.into())),
                        ("starts", n(|m| m.backend_starts)),
                        (
                            "last_ready_ms",
                            V::O(b.last_ready_ms.map_or("-".to_string(), |v| v.to_string())),
                        ),
                        ("proxied", n(|m| m.proxied)),
                        ("bytes_up", n(|m| m.bytes_up)),
                        ("bytes_down", n(|m| m.bytes_down)),
                        ("idle_stops", n(|m| m.backend_idle_stops)),
                    ],
                );
            }
        }
        emit(
            Level::Info,
            "state",
            &[
                ("internal_connections", V::N(self.inside.conns.len() as i64)),
                ("proxy_pending", V::N(self.inside.pending.len() as i64)),
                ("udp_sessions", V::N(self.inside.sessions.len() as i64)),
                ("spawn_slots", V::N(spawn::slots().0 as i64)),
                ("spawn_slots_held", V::N(spawn::slots().1 as i64)),
            ],
        );
        for (pid, c) in self.children.iter() {
            emit(
                Level::Info,
                "state",
                &[
                    ("child", V::N(pid.as_raw().into())),
                    ("service", V::S(&c.label)),
                    ("peer", V::S(&c.peer)),
                    (
                        "age",
                        V::O(format!("{}ms", now.duration_since(c.started).as_millis())),
                    ),
                ],
            );
        }
    }

    /// SIGTERM/SIGINT: close every listener (removing unix socket files),
    /// then leave or stop the handlers, exit 0.
    fn stop(mut self) -> u8 {
        if let Some(n) = &self.notify {
            n.send("STOPPING=1");
        }
        emit(
            Level::Info,
            "stop",
            &[
                ("listeners", V::N(self.listeners.len() as i64)),
                ("handlers", V::N(self.children.len() as i64)),
            ],
        );
        for rt in &mut self.services {
            rt.listeners.clear();
        }
        self.backlog.clear();
        self.listeners.clear(); // closes every listening socket
        self.metrics_listener = None;
        // Handlers are left to finish (inetd's way) unless asked; a
        // backend is always stopped: nobody relays to it any more, and it
        // would hold its port against the next doorman's start.
        let leave = self.opts.on_stop == OnStop::Leave;
        let backends = self.children.iter().filter(|(_, c)| c.backend).count();
        if leave && self.children.len() > backends {
            info!(
                "stop: leaving {} handlers running",
                self.children.len() - backends
            );
        }
        if self.children.is_empty() || (leave && backends == 0) {
            return 0;
        }
        // Each handler as its service says (systemd KillSignal=,
        // KillMode=, TimeoutStopSec=); the longest timeout bounds the wait.
        let mut timeout = Duration::ZERO;
        let mut signalled = 0;
        let stoppable = |c: &Child, services: &[ServiceRt]| {
            (!leave || c.backend)
                && services
                    .get(c.service)
                    .map_or(Some(true), |s| s.svc.stop.group)
                    .is_some()
        };
        for (pid, c) in self.children.iter() {
            if leave && !c.backend {
                continue;
            }
            let spec = self
                .services
                .get(c.service)
                .map(|s| s.svc.stop)
                .unwrap_or_default();
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
        while self
            .children
            .iter()
            .any(|(_, c)| stoppable(c, &self.services))
        {
            let now = Instant::now();
            if now >= deadline {
                let left: Vec<nix::unistd::Pid> = self
                    .children
                    .iter()
                    .filter(|(_, c)| stoppable(c, &self.services))
                    .map(|(p, _)| p)
                    .collect();
                for pid in left {
                    warn!(
                        "stop: pid={pid} still running after {}s, sending SIGKILL",
                        timeout.as_secs()
                    );
                    let _ = killpg(pid, NixSignal::SIGKILL);
                    let _ = nix::sys::signal::kill(pid, NixSignal::SIGKILL);
                }
                // SIGKILL cannot be ignored: wait (boundedly) for the reaps.
                let hard = Instant::now() + Duration::from_secs(5);
                while self
                    .children
                    .iter()
                    .any(|(_, c)| stoppable(c, &self.services))
                    && Instant::now() < hard
                {
                    let _ = self
                        .poll
                        .poll(&mut events, Some(Duration::from_millis(100)));
                    let _ = self.trap.drain();
                    self.reap();
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

fn set_nonblocking(fd: RawFd, on: bool) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags)).map(drop)
}

/// One `accept` line: service, client, local address, handler pid.
pub(super) fn log_accept(label: &str, shown: &str, peer: &Peer, pid: nix::unistd::Pid) {
    if !events::enabled(Level::Info) {
        return;
    }
    emit(
        Level::Info,
        "accept",
        &[
            ("service", V::S(label)),
            ("peer", V::S(shown)),
            ("local", V::O(peer.local())),
            ("pid", V::N(pid.as_raw().into())),
        ],
    );
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

/// See [`Server::timed`]: indices into the services and listeners, few
/// (what is paused now, and the services with a backend). A pause or
/// re-arm delay is noted where it is set; entries are never stale in the
/// other direction (a deadline without its entry), since every setter
/// notes it.
#[derive(Default)]
struct Timed {
    paused: Vec<usize>,
    listeners: Vec<usize>,
    backends: Vec<usize>,
}
