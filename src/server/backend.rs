//! On-demand backends: an ordinary server (one that binds its own port
//! and never exits) started on the first connection, clients held until a
//! connect to it succeeds, bytes relayed both ways with `splice(2)`, and
//! the server stopped when idle.
//!
//! Part of the loop's state (`super::Server`). Must not: block (every
//! socket is non-blocking, the readiness probe is a non-blocking connect
//! polled with a back-off deadline), or wait for the backend process
//! (its exit comes through `reap`).

use std::collections::VecDeque;

use nix::sys::socket::{AddressFamily, SockFlag, SockType as NixType, UnixAddr};

use super::*;
use crate::config::{Backend, ProxyVersion};

/// Tokens of relays: `RELAY_BASE + 2 * slot + side` (0 client, 1 backend).
pub(super) const RELAY_BASE: usize = 1 << 44;
/// Tokens of readiness probes: `PROBE_BASE + service`.
pub(super) const PROBE_BASE: usize = 1 << 45;
/// Tokens of `ready=notify` sockets: `NOTIFY_BASE + service`.
pub(super) const NOTIFY_BASE: usize = 1 << 46;
/// The first gap between two readiness probes; it doubles up to
/// [`PROBE_MAX`]. A probe is a refused connect (~10 µs): at most every
/// 10 ms, a 40 s start costs 4,000 of them (~40 ms of CPU) and its first
/// client waits at most 10 ms more than the start itself (with 100 ms a
/// 30 ms start cost up to 32 ms more).
const PROBE_FIRST: Duration = Duration::from_millis(2);
const PROBE_MAX: Duration = Duration::from_millis(10);
/// After a failed start, the next waits this long, doubling per failure
/// in a row up to [`RETRY_MAX`]; a start that gets ready starts over.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Bytes a pipe holds per direction (the default pipe size).
const PIPE_CAP: usize = 64 * 1024;
/// What a pipe grows to once a transfer fills it: fewer, larger splices
/// (1 GiB through a relay: 1,139 MiB/s with 64 KiB, 1,810 MiB/s with
/// 1 MiB). Only a bulk transfer pays for it; the pages are the sockets'
/// own, referenced, not copied. 1 MiB is `fs.pipe-max-size`'s default.
const PIPE_BULK: usize = 1024 * 1024;
/// The buffer per direction where splice is not possible.
const COPY_CAP: usize = 64 * 1024;
/// Bytes one relay moves per turn before the others get theirs.
const RELAY_TURN: usize = 1024 * 1024;

/// Where a backend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Stopped,
    /// Started, not yet accepting connections.
    Starting,
    Ready,
    /// Told to stop (idle, a failed start, a reload); its exit not yet
    /// reaped.
    Stopping,
}

impl State {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Stopping => "stopping",
        }
    }
}

/// A client accepted while the backend starts.
struct HeldClient {
    fd: OwnedFd,
    source: Option<IpAddr>,
    peer: Peer,
    shown: String,
}

/// The run-time state of one service's backend.
pub(super) struct BackendRt {
    pub(super) state: State,
    pub(super) pid: Option<i32>,
    /// When the process was started, and when it got ready.
    started: Option<Instant>,
    /// The readiness probe's connection in progress, and when the next
    /// one is due (with the gap after it).
    probe: Option<OwnedFd>,
    next_probe: Option<Instant>,
    gap: Duration,
    start_deadline: Option<Instant>,
    idle_at: Option<Instant>,
    retry_at: Option<Instant>,
    /// Failed starts in a row.
    failures: u32,
    held: VecDeque<HeldClient>,
    /// Relays open now.
    pub(super) relays: u32,
    pub(super) last_ready_ms: Option<u64>,
    /// `ready=notify`: the datagram socket named in the process's
    /// `NOTIFY_SOCKET` (one per start), and whether `READY=1` came.
    notify: Option<OwnedFd>,
    notified: bool,
}

impl BackendRt {
    pub(super) fn new(b: &Backend) -> BackendRt {
        BackendRt {
            state: if b.start {
                State::Stopped
            } else {
                State::Ready
            },
            pid: None,
            started: None,
            probe: None,
            next_probe: None,
            gap: PROBE_FIRST,
            start_deadline: None,
            idle_at: None,
            retry_at: None,
            failures: 0,
            held: VecDeque::new(),
            relays: 0,
            last_ready_ms: None,
            notify: None,
            notified: false,
        }
    }

    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    /// The earliest deadline due (a probe, the start timeout, the idle
    /// stop, the retry after a failure; the kill after a stop's grace is
    /// the child's own deadline).
    pub(super) fn deadline(&self) -> Option<Instant> {
        [
            self.next_probe,
            self.start_deadline,
            self.idle_at,
            self.retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// One direction of a relay: a pipe (`splice`) or, where splice is not
/// possible, a buffer.
#[derive(Default)]
struct Dir {
    pipe: Option<(OwnedFd, OwnedFd)>,
    buf: Vec<u8>,
    /// Bytes in the pipe (or buffer) not yet written out.
    queued: usize,
    copy: bool,
    /// What the pipe (or buffer) holds at most.
    cap: usize,
    /// The pipe has grown to `PIPE_BULK` (or was refused).
    grown: bool,
    eof: bool,
    shut: bool,
    bytes: u64,
}

impl Dir {
    /// A pipe that filled grows to `PIPE_BULK` (once; where the kernel
    /// refuses, for an unprivileged user over `fs.pipe-user-pages-soft`,
    /// it stays as it is).
    fn grow(&mut self) {
        self.grown = true;
        let Some((_, w)) = self.pipe.as_ref() else {
            return;
        };
        // SAFETY: fcntl on a pipe this relay owns.
        let got =
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BULK as libc::c_int) };
        if got > 0 {
            self.cap = got as usize;
        }
    }
}

/// How a relay ended, or that it goes on.
enum End {
    /// A side reset: the other gets a reset too.
    Reset(&'static str),
    Error(Errno),
}

/// One client relayed to its backend.
pub(super) struct Relay {
    pub(super) service: usize,
    client: OwnedFd,
    backend: OwnedFd,
    /// Client to backend, backend to client.
    up: Dir,
    down: Dir,
    /// A PROXY header still to send to the backend.
    pre: Vec<u8>,
    source: Option<IpAddr>,
    shown: String,
    started: Instant,
}

/// `splice(2)` without blocking on the pipe (the sockets are non-blocking
/// themselves).
fn splice(from: RawFd, to: RawFd, len: usize) -> Result<usize, Errno> {
    // SAFETY: splice between two fds we own, with no offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(Errno::last())
    } else {
        Ok(n as usize)
    }
}

fn wouldblock(e: Errno) -> bool {
    e == Errno::EAGAIN || e == Errno::EWOULDBLOCK
}

fn peer_gone(e: Errno) -> bool {
    matches!(e, Errno::ECONNRESET | Errno::EPIPE | Errno::ENOTCONN)
}

/// Moves what `src` has to `dst` through `d`, at most `budget` bytes.
/// Stops where either side would block; propagates an end of input as a
/// `shutdown(SHUT_WR)` once everything before it is written.
fn pump(src: RawFd, dst: RawFd, d: &mut Dir, budget: &mut usize) -> Result<(), End> {
    loop {
        let mut moved = false;
        if !d.eof && d.queued < d.cap && *budget > 0 {
            let r = if d.copy {
                if d.buf.len() < d.cap {
                    d.buf.resize(d.cap, 0);
                }
                let at = d.queued;
                nix::unistd::read(src, &mut d.buf[at..])
            } else {
                let (_, w) = d.pipe.as_ref().expect("pipe");
                splice(src, w.as_raw_fd(), d.cap - d.queued)
            };
            match r {
                Ok(0) => d.eof = true,
                Ok(n) => {
                    d.queued += n;
                    moved = true;
                    if d.queued == d.cap && !d.copy && !d.grown {
                        d.grow();
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EINVAL) if !d.copy && d.queued == 0 => {
                    // This pair cannot splice: copy instead.
                    d.copy = true;
                    d.cap = COPY_CAP;
                    continue;
                }
                Err(e) if wouldblock(e) => {}
                Err(e) if peer_gone(e) => return Err(End::Reset("reset")),
                Err(e) => return Err(End::Error(e)),
            }
        }
        if d.queued > 0 {
            let r = if d.copy {
                socket::send(dst, &d.buf[..d.queued], socket::MsgFlags::MSG_NOSIGNAL)
            } else {
                let (r, _) = d.pipe.as_ref().expect("pipe");
                splice(r.as_raw_fd(), dst, d.queued)
            };
            match r {
                Ok(n) => {
                    if d.copy {
                        d.buf.copy_within(n..d.queued, 0);
                    }
                    d.queued -= n;
                    d.bytes += n as u64;
                    *budget = budget.saturating_sub(n);
                    moved = moved || n > 0;
                }
                Err(Errno::EINTR) => continue,
                Err(e) if wouldblock(e) => {}
                Err(e) if peer_gone(e) => return Err(End::Reset("reset")),
                Err(e) => return Err(End::Error(e)),
            }
        }
        if d.eof && d.queued == 0 && !d.shut {
            let _ = socket::shutdown(dst, socket::Shutdown::Write);
            d.shut = true;
        }
        if !moved || *budget == 0 {
            return Ok(());
        }
    }
}

/// A non-blocking stream socket connecting to `target`: `Ok(true)` when
/// connected at once, `Ok(false)` while in progress.
fn connect(target: &Address) -> Result<(OwnedFd, bool), Errno> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let (fd, r) = match target {
        Address::Inet(a) => {
            let fam = if a.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket::socket(fam, NixType::Stream, flags, None)?;
            let r = socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(*a));
            (fd, r)
        }
        Address::Unix(p) => {
            let ua = UnixAddr::new(p.as_path())?;
            let fd = socket::socket(AddressFamily::Unix, NixType::Stream, flags, None)?;
            let r = socket::connect(fd.as_raw_fd(), &ua);
            (fd, r)
        }
    };
    match r {
        Ok(()) => Ok((fd, true)),
        Err(Errno::EINPROGRESS) => Ok((fd, false)),
        // A unix listener whose backlog is full: not ready yet.
        Err(Errno::EAGAIN) => Err(Errno::ECONNREFUSED),
        Err(e) => Err(e),
    }
}

/// A PROXY header naming `peer` for the backend.
fn proxy_header(v: ProxyVersion, peer: &Peer) -> Vec<u8> {
    let Peer::Tcp { remote, local, .. } = peer else {
        return match v {
            ProxyVersion::V2 => {
                let mut h = crate::proxy::V2_SIG.to_vec();
                h.extend_from_slice(&[0x20, 0x00, 0, 0]);
                h
            }
            _ => b"PROXY UNKNOWN\r\n".to_vec(),
        };
    };
    match v {
        ProxyVersion::V2 => {
            let mut h = crate::proxy::V2_SIG.to_vec();
            match (remote, local) {
                (SocketAddr::V4(r), SocketAddr::V4(l)) => {
                    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
                    h.extend_from_slice(&r.ip().octets());
                    h.extend_from_slice(&l.ip().octets());
                    h.extend_from_slice(&r.port().to_be_bytes());
                    h.extend_from_slice(&l.port().to_be_bytes());
                }
                _ => {
                    let v6 = |a: &SocketAddr| match a.ip() {
                        IpAddr::V4(x) => x.to_ipv6_mapped().octets(),
                        IpAddr::V6(x) => x.octets(),
                    };
                    h.extend_from_slice(&[0x21, 0x21, 0, 36]);
                    h.extend_from_slice(&v6(remote));
                    h.extend_from_slice(&v6(local));
                    h.extend_from_slice(&remote.port().to_be_bytes());
                    h.extend_from_slice(&local.port().to_be_bytes());
                }
            }
            h
        }
        _ => {
            let fam = if remote.is_ipv4() && local.is_ipv4() {
                "TCP4"
            } else {
                "TCP6"
            };
            let ip = |a: &SocketAddr| match (fam, a.ip()) {
                ("TCP6", IpAddr::V4(x)) => x.to_ipv6_mapped().to_string(),
                (_, ip) => ip.to_string(),
            };
            format!(
                "PROXY {fam} {} {} {} {}\r\n",
                ip(remote),
                ip(local),
                remote.port(),
                local.port()
            )
            .into_bytes()
        }
    }
}

/// Peak and current resident memory of `pid` in kB, from /proc.
fn memory_kb(pid: i32) -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (None, None);
    };
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// A backend's `NOTIFY_SOCKET`: an abstract datagram socket (nothing to
/// create or remove, reachable from a unit's mount namespace) that
/// passes the sender's credentials; its name, without the `@`.
fn notify_socket(s: usize) -> Result<(OwnedFd, String), Errno> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "doorman/backend/{}/{s}/{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let fd = socket::socket(
        AddressFamily::Unix,
        NixType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new_abstract(name.as_bytes())?)?;
    socket::setsockopt(&fd, sockopt::PassCred, &true)?;
    Ok((fd, name))
}

fn retry_gap(failures: u32) -> Duration {
    RETRY_FIRST
        .checked_mul(1 << failures.saturating_sub(1).min(10))
        .unwrap_or(RETRY_MAX)
        .min(RETRY_MAX)
}

impl Server {
    /// An admitted client of a backend service: relayed at once when the
    /// backend is ready, else held (and the backend started).
    pub(super) fn backend_client(
        &mut self,
        s: usize,
        conn: OwnedFd,
        peer: Peer,
        source: Option<IpAddr>,
        shown: String,
        now: Instant,
    ) {
        self.served_since_trim = true;
        let _ = set_nonblocking(conn.as_raw_fd(), true);
        let rt = &mut self.services[s];
        let Some(b) = rt.backend.as_mut() else {
            rt.counters.release(source);
            return;
        };
        if b.state == State::Ready {
            b.idle_at = None;
            return self.relay_open(s, conn, peer, source, shown, None, now);
        }
        b.held.push_back(HeldClient {
            fd: conn,
            source,
            peer,
            shown,
        });
        let (state, retry) = (b.state, b.retry_at);
        if state == State::Stopped && retry.is_none() {
            self.backend_start(s, now);
        }
        if self.services[s].full() {
            self.sync(s);
        }
    }

    /// Starts the backend process and the readiness probes.
    fn backend_start(&mut self, s: usize, now: Instant) {
        let devnull = self.devnull.as_raw_fd();
        // The backend counts as one of the service's instances while it
        // runs (given back when it exits, or here if it cannot start).
        let rt = &mut self.services[s];
        let _ = rt
            .counters
            .admit(&crate::config::Limits::default(), None, now, None);
        let wants_notify = rt.svc.backend.as_ref().is_some_and(|c| c.notify);
        let (notify, env) = if wants_notify {
            match notify_socket(s) {
                Ok((fd, name)) => {
                    let mut env = b"NOTIFY_SOCKET=@".to_vec();
                    env.extend_from_slice(name.as_bytes());
                    (Some(fd), env)
                }
                Err(e) => {
                    error!("{}: the backend's NOTIFY_SOCKET: {}", rt.label, e.desc());
                    (None, Vec::new())
                }
            }
        } else {
            (None, Vec::new())
        };
        let started = if wants_notify && notify.is_none() {
            rt.counters.release(None);
            None
        } else {
            let handed = Handed::Kept {
                socket: devnull,
                listen: &[],
            };
            self.start_handler(s, handed, &Peer::Listener, "-", None, now, &env)
        };
        let rt = &mut self.services[s];
        let Some(b) = rt.backend.as_mut() else {
            return;
        };
        let Some(pid) = started else {
            // Logged and counted by start_handler.
            b.failures += 1;
            b.retry_at = Some(now + retry_gap(b.failures));
            return self.backend_drop_held(s, "the backend could not start");
        };
        b.state = State::Starting;
        b.pid = Some(pid.as_raw());
        b.started = Some(now);
        b.gap = PROBE_FIRST;
        // With ready=notify the probes start at READY=1.
        b.notified = false;
        b.next_probe = notify.is_none().then_some(now);
        if let Some(fd) = notify {
            let raw = fd.as_raw_fd();
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&raw),
                Token(NOTIFY_BASE + s),
                Interest::READABLE,
            ) {
                error!("register notify socket: {e}");
            }
            b.notify = Some(fd);
        }
        let timeout = rt
            .svc
            .backend
            .as_ref()
            .map_or(crate::config::DEFAULT_START_TIMEOUT, |c| c.start_timeout);
        b.start_deadline = Some(now + timeout);
        self.metrics.service(&rt.label).backend_starts += 1;
        emit(
            Level::Info,
            "backend-start",
            &[
                ("service", V::S(&rt.label)),
                ("pid", V::N(pid.as_raw().into())),
                ("held", V::N(b.held.len() as i64)),
            ],
        );
        self.track(pid, s, None, "backend".to_string(), now, None, None);
        if let Some(c) = self.children.get_mut(pid.as_raw()) {
            c.backend = true;
        }
        self.backend_probe(s, now);
    }

    /// Tries a connect to the backend (when one is due).
    fn backend_probe(&mut self, s: usize, now: Instant) {
        let Some(rt) = self.services.get_mut(s) else {
            return;
        };
        let Some(target) = rt.svc.backend.as_ref().map(|c| c.target.clone()) else {
            return;
        };
        let Some(b) = rt.backend.as_mut() else {
            return;
        };
        if b.state != State::Starting || b.probe.is_some() || (b.notify.is_some() && !b.notified) {
            return;
        }
        b.next_probe = None;
        match connect(&target) {
            Ok((fd, true)) => self.backend_ready(s, Some(fd), now),
            Ok((fd, false)) => {
                let raw = fd.as_raw_fd();
                b.probe = Some(fd);
                if let Err(e) = self.poll.registry().register(
                    &mut SourceFd(&raw),
                    Token(PROBE_BASE + s),
                    Interest::WRITABLE,
                ) {
                    error!("register backend probe: {e}");
                }
            }
            Err(_) => {
                b.next_probe = Some(now + b.gap);
                b.gap = (b.gap * 2).min(PROBE_MAX);
            }
        }
    }

    /// Datagrams on a backend's notify socket: `READY=1` from the
    /// process or one in its process group starts the probes at once;
    /// `STATUS=` is logged at debug; anything else, or from anyone else,
    /// is ignored.
    pub(super) fn notify_event(&mut self, s: usize) {
        let now = Instant::now();
        let Some(rt) = self.services.get_mut(s) else {
            return;
        };
        let Some(b) = rt.backend.as_mut() else {
            return;
        };
        let (Some(fd), Some(pid)) = (b.notify.as_ref(), b.pid) else {
            return;
        };
        let mut ready = false;
        loop {
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!(libc::ucred);
            let Ok(msg) = socket::recvmsg::<()>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                socket::MsgFlags::MSG_DONTWAIT,
            ) else {
                break;
            };
            let sender = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    socket::ControlMessageOwned::ScmCredentials(c) => Some(c.pid()),
                    _ => None,
                })
            });
            let len = msg.bytes;
            let ours = sender.is_some_and(|p| {
                p == pid
                    || nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(p)))
                        .is_ok_and(|g| g.as_raw() == pid)
            });
            let text = String::from_utf8_lossy(&buf[..len]);
            if !ours {
                debug!(
                    "{}: NOTIFY_SOCKET: ignored a message from pid {} (not the backend's)",
                    rt.label,
                    sender.map_or("-".to_string(), |p| p.to_string())
                );
                continue;
            }
            for line in text.lines() {
                if line == "READY=1" {
                    ready = true;
                } else if let Some(st) = line.strip_prefix("STATUS=") {
                    debug!("{}: backend status: {st}", rt.label);
                }
            }
        }
        if ready && !b.notified {
            b.notified = true;
            if b.state == State::Starting {
                b.gap = PROBE_FIRST;
                self.backend_probe(s, now);
            }
        }
    }

    /// The probe's connect finished: ready, or try again later.
    pub(super) fn probe_event(&mut self, s: usize) {
        let now = Instant::now();
        let Some(b) = self.services.get_mut(s).and_then(|rt| rt.backend.as_mut()) else {
            return;
        };
        let Some(fd) = b.probe.take() else {
            return;
        };
        let raw = fd.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        match socket::getsockopt(&fd, sockopt::SocketError) {
            Ok(0) => self.backend_ready(s, Some(fd), now),
            _ => {
                b.next_probe = Some(now + b.gap);
                b.gap = (b.gap * 2).min(PROBE_MAX);
            }
        }
    }

    /// The backend accepts connections: the held clients are relayed (the
    /// first on the probe's connection).
    fn backend_ready(&mut self, s: usize, first: Option<OwnedFd>, now: Instant) {
        let rt = &mut self.services[s];
        let Some(b) = rt.backend.as_mut() else {
            return;
        };
        b.state = State::Ready;
        b.failures = 0;
        b.next_probe = None;
        b.start_deadline = None;
        let ms = b
            .started
            .map_or(0, |t| now.saturating_duration_since(t).as_millis() as u64);
        b.last_ready_ms = Some(ms);
        let held: Vec<HeldClient> = b.held.drain(..).collect();
        emit(
            Level::Info,
            "backend-ready",
            &[
                ("service", V::S(&rt.label)),
                (
                    "pid",
                    V::O(b.pid.map_or("-".to_string(), |p| p.to_string())),
                ),
                ("after_ms", V::N(ms as i64)),
                ("held", V::N(held.len() as i64)),
            ],
        );
        let mut first = first;
        for h in held {
            self.relay_open(s, h.fd, h.peer, h.source, h.shown, first.take(), now);
        }
        drop(first);
        self.backend_maybe_idle(s, now);
        self.sync(s);
    }

    /// Relays `client` to the backend, on `backend` if a connection is
    /// already made.
    #[allow(clippy::too_many_arguments)]
    fn relay_open(
        &mut self,
        s: usize,
        client: OwnedFd,
        peer: Peer,
        source: Option<IpAddr>,
        shown: String,
        backend: Option<OwnedFd>,
        now: Instant,
    ) {
        let rt = &mut self.services[s];
        let Some(cfg) = rt.svc.backend.as_ref() else {
            return;
        };
        let backend = match backend {
            Some(fd) => fd,
            None => match connect(&cfg.target) {
                Ok((fd, _)) => fd,
                Err(e) => {
                    warn!(
                        "{}: connect to the backend at {}: {} (peer={shown}): closed",
                        rt.label,
                        cfg.target,
                        e.desc()
                    );
                    rt.counters.release(source);
                    return;
                }
            },
        };
        let pre = cfg
            .send_proxy
            .map(|v| proxy_header(v, &peer))
            .unwrap_or_default();
        let pipes = || -> Option<(Dir, Dir)> {
            let mk = || {
                let (r, w) = nix::unistd::pipe2(
                    nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
                )
                .ok()?;
                Some(Dir {
                    pipe: Some((r, w)),
                    cap: PIPE_CAP,
                    ..Dir::default()
                })
            };
            Some((mk()?, mk()?))
        };
        let (up, down) = pipes().unwrap_or_else(|| {
            let copy = || Dir {
                copy: true,
                cap: COPY_CAP,
                ..Dir::default()
            };
            (copy(), copy())
        });
        if let Some(b) = rt.backend.as_mut() {
            b.relays += 1;
            b.idle_at = None;
        }
        let label = rt.label.clone();
        let m = self.metrics.service(&label);
        m.proxied += 1;
        log_accept_backend(&label, &shown);
        let (c, k) = (client.as_raw_fd(), backend.as_raw_fd());
        let slot = self.relays.insert(Relay {
            service: s,
            client,
            backend,
            up,
            down,
            pre,
            source,
            shown,
            started: now,
        });
        let both = Interest::READABLE | Interest::WRITABLE;
        for (fd, side) in [(c, 0), (k, 1)] {
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&fd),
                Token(RELAY_BASE + 2 * slot + side),
                both,
            ) {
                error!("register relay: {e}");
                return self.relay_close(slot, "error", false);
            }
        }
        self.relay_event(slot);
    }

    /// One side of a relay is ready (or its turn came again).
    pub(super) fn relay_event(&mut self, slot: usize) {
        let Some(r) = self.relays.get_mut(slot) else {
            return;
        };
        let (c, k) = (r.client.as_raw_fd(), r.backend.as_raw_fd());
        if !r.pre.is_empty() {
            match socket::send(k, &r.pre, socket::MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => {
                    r.pre.drain(..n);
                }
                Err(e) if wouldblock(e) || e == Errno::EINTR => {}
                Err(_) => return self.relay_close(slot, "backend-refused", true),
            }
            if !r.pre.is_empty() {
                return;
            }
        }
        let mut budget = RELAY_TURN;
        let r1 = pump(c, k, &mut r.up, &mut budget);
        let r2 = if r1.is_ok() {
            pump(k, c, &mut r.down, &mut budget)
        } else {
            Ok(())
        };
        match r1.and(r2) {
            Err(End::Reset(why)) => self.relay_close(slot, why, true),
            Err(End::Error(e)) => {
                debug!("relay: {}", e.desc());
                self.relay_close(slot, "error", true)
            }
            Ok(()) if r.up.shut && r.down.shut => self.relay_close(slot, "done", false),
            Ok(()) => {
                if budget == 0 && !self.relay_again.contains(&slot) {
                    self.relay_again.push(slot);
                }
            }
        }
    }

    /// Ends a relay (resetting both sides when one reset), logs it with
    /// the bytes each way.
    fn relay_close(&mut self, slot: usize, why: &str, reset: bool) {
        let Some(r) = self.relays.remove(slot) else {
            return;
        };
        for fd in [&r.client, &r.backend] {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
            if reset {
                let _ = socket::setsockopt(
                    fd,
                    sockopt::Linger,
                    &libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                );
            }
        }
        let now = Instant::now();
        let d = now.saturating_duration_since(r.started);
        let s = r.service;
        if let Some(rt) = self.services.get_mut(s) {
            rt.counters.release(r.source);
            if let Some(b) = rt.backend.as_mut() {
                b.relays = b.relays.saturating_sub(1);
            }
            emit(
                Level::Info,
                "end",
                &[
                    ("service", V::S(&rt.label)),
                    ("peer", V::S(&r.shown)),
                    ("received", V::N(r.up.bytes as i64)),
                    ("sent", V::N(r.down.bytes as i64)),
                    ("why", V::S(why)),
                    ("duration_ms", V::N(d.as_millis() as i64)),
                ],
            );
            let label = rt.label.clone();
            let m = self.metrics.service(&label);
            m.bytes_up += r.up.bytes;
            m.bytes_down += r.down.bytes;
            m.observe(d);
            self.backend_maybe_idle(s, now);
            self.sync(s);
        }
    }

    /// Relays whose turn ran out: their next share.
    pub(super) fn relay_again_turn(&mut self) {
        for slot in std::mem::take(&mut self.relay_again) {
            self.relay_event(slot);
        }
    }

    /// No relay open and nothing held: the idle stop is armed.
    fn backend_maybe_idle(&mut self, s: usize, now: Instant) {
        let Some(rt) = self.services.get_mut(s) else {
            return;
        };
        let Some(idle) = rt.svc.backend.as_ref().and_then(|c| c.idle_stop) else {
            return;
        };
        let Some(b) = rt.backend.as_mut() else {
            return;
        };
        if b.state == State::Ready && b.pid.is_some() && b.relays == 0 && b.held.is_empty() {
            b.idle_at = Some(now + idle);
        }
    }

    /// Closes every held client (a start that failed or timed out).
    fn backend_drop_held(&mut self, s: usize, why: &str) {
        let Some(rt) = self.services.get_mut(s) else {
            return;
        };
        let Some(b) = rt.backend.as_mut() else {
            return;
        };
        let held: Vec<HeldClient> = b.held.drain(..).collect();
        if !held.is_empty() {
            warn!("{}: {why}: {} held clients closed", rt.label, held.len());
        }
        for h in held {
            rt.counters.release(h.source);
            debug!("{}: held client {} closed", rt.label, h.shown);
        }
        self.sync(s);
    }

    /// Sends the backend its stop signal (process group); SIGKILL follows
    /// after the grace period.
    fn backend_stop(&mut self, s: usize, now: Instant) {
        let Some(b) = self.services.get_mut(s).and_then(|rt| rt.backend.as_mut()) else {
            return;
        };
        let Some(pid) = b.pid else {
            return;
        };
        b.state = State::Stopping;
        b.idle_at = None;
        b.next_probe = None;
        b.start_deadline = None;
        if let Some(fd) = b.probe.take() {
            let raw = fd.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
        self.stop_child(pid, now);
    }

    /// Backend deadlines that have come: probes, start timeouts, idle
    /// stops, kills after the grace, retries.
    pub(super) fn expire_backends(&mut self, now: Instant) {
        for k in 0..self.timed.backends.len() {
            let s = self.timed.backends[k];
            let Some(b) = self.services[s].backend.as_mut() else {
                continue;
            };
            if !b.deadline().is_some_and(|t| t <= now) {
                continue;
            }
            if b.retry_at.is_some_and(|t| t <= now) {
                b.retry_at = None;
                if b.state == State::Stopped && !b.held.is_empty() {
                    self.backend_start(s, now);
                }
                continue;
            }
            let Some(b) = self.services[s].backend.as_mut() else {
                continue;
            };
            if b.start_deadline.is_some_and(|t| t <= now) {
                b.start_deadline = None;
                b.failures += 1;
                b.retry_at = Some(now + retry_gap(b.failures));
                let after = b
                    .started
                    .map_or(0, |t| now.saturating_duration_since(t).as_millis() as i64);
                let pid = b.pid.map_or("-".to_string(), |p| p.to_string());
                let label = self.services[s].label.clone();
                emit(
                    Level::Warn,
                    "backend-timeout",
                    &[
                        ("service", V::S(&label)),
                        ("pid", V::O(pid)),
                        ("after_ms", V::N(after)),
                        ("why", V::S("not accepting connections")),
                    ],
                );
                self.metrics.service(&label).backend_failures += 1;
                self.backend_stop(s, now);
                self.backend_drop_held(s, "the backend did not get ready in time");
                continue;
            }
            if b.next_probe.is_some_and(|t| t <= now) {
                self.backend_probe(s, now);
                continue;
            }
            if b.idle_at.is_some_and(|t| t <= now) {
                b.idle_at = None;
                let pid = b.pid.unwrap_or(0);
                let ran = b
                    .started
                    .map_or(0, |t| now.saturating_duration_since(t).as_millis() as i64);
                let (peak, rss) = memory_kb(pid);
                let label = self.services[s].label.clone();
                let idle = self.services[s]
                    .svc
                    .backend
                    .as_ref()
                    .and_then(|c| c.idle_stop)
                    .unwrap_or_default();
                emit(
                    Level::Info,
                    "idle-stop",
                    &[
                        ("service", V::S(&label)),
                        ("pid", V::N(pid.into())),
                        ("idle_ms", V::N(idle.as_millis() as i64)),
                        ("ran_ms", V::N(ran)),
                        (
                            "peak_rss_kb",
                            V::O(peak.map_or("-".to_string(), |v| v.to_string())),
                        ),
                        (
                            "rss_kb",
                            V::O(rss.map_or("-".to_string(), |v| v.to_string())),
                        ),
                    ],
                );
                self.metrics.service(&label).backend_idle_stops += 1;
                self.backend_stop(s, now);
            }
        }
    }

    /// The backend process has exited (reaped): stopped; a start that
    /// had not got ready failed; clients waiting meanwhile get a fresh
    /// start.
    pub(super) fn backend_exited(&mut self, s: usize, exit: &Exit, now: Instant) {
        let Some(rt) = self.services.get_mut(s) else {
            return;
        };
        rt.counters.release(None);
        let label = rt.label.clone();
        let Some(b) = rt.backend.as_mut() else {
            return;
        };
        if b.pid != Some(exit.pid.as_raw()) {
            return;
        }
        let was = b.state;
        b.pid = None;
        b.state = State::Stopped;
        b.idle_at = None;
        b.next_probe = None;
        b.start_deadline = None;
        for fd in [b.probe.take(), b.notify.take()].into_iter().flatten() {
            let raw = fd.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
        if was == State::Starting {
            b.failures += 1;
            b.retry_at = Some(now + retry_gap(b.failures));
            emit(
                Level::Warn,
                "backend-failed",
                &[
                    ("service", V::S(&label)),
                    ("pid", V::N(exit.pid.as_raw().into())),
                    ("after_ms", V::N(exit.duration.as_millis() as i64)),
                    ("how", V::O(exit.outcome.to_string())),
                    (
                        "retry_in_ms",
                        V::N(retry_gap(b.failures).as_millis() as i64),
                    ),
                ],
            );
            self.metrics.service(&label).backend_failures += 1;
            self.backend_drop_held(s, "the backend exited before it was ready");
        } else if !b.held.is_empty() && b.retry_at.is_none() {
            // Clients came while it stopped: a fresh start.
            self.backend_start(s, now);
        }
        self.sync(s);
    }

    /// Reload: relays follow their service; a backend whose service is
    /// gone or changed is stopped (its relays run on).
    pub(super) fn relays_remap(&mut self, old_to_new: &[Option<usize>]) {
        for (_, r) in self.relays.iter_mut() {
            r.service = old_to_new
                .get(r.service)
                .copied()
                .flatten()
                .unwrap_or(usize::MAX);
        }
    }

    /// After a swap: probes and notify sockets registered under their
    /// service's new index.
    pub(super) fn probes_reregister(&mut self) {
        for s in 0..self.services.len() {
            let Some(b) = self.services[s].backend.as_ref() else {
                continue;
            };
            let socks = [
                (b.notify.as_ref(), NOTIFY_BASE, Interest::READABLE),
                (b.probe.as_ref(), PROBE_BASE, Interest::WRITABLE),
            ];
            for (fd, base, interest) in socks {
                if let Some(fd) = fd {
                    let raw = fd.as_raw_fd();
                    let _ = self.poll.registry().reregister(
                        &mut SourceFd(&raw),
                        Token(base + s),
                        interest,
                    );
                }
            }
        }
    }

    pub(super) fn backend_retire(&mut self, b: &mut BackendRt, label: &str) {
        let now = Instant::now();
        for h in b.held.drain(..) {
            debug!("{label}: held client {} closed (reload)", h.shown);
        }
        if let Some(fd) = b.probe.take() {
            let raw = fd.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
        if let Some(pid) = b.pid {
            info!("{label}: backend pid={pid} stopped: its service changed");
            self.stop_child(pid, now);
        }
    }
}

fn log_accept_backend(label: &str, shown: &str) {
    emit(
        Level::Info,
        "accept",
        &[
            ("service", V::S(label)),
            ("peer", V::S(shown)),
            ("proxied", V::S("yes")),
        ],
    );
}
