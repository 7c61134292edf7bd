//! What the loop serves without a handler process: internal services
//! (TCP connections and UDP requests), connections waiting for their
//! PROXY header, and the relays of per-peer UDP sessions.
//!
//! Part of the loop's state (`super::Server`): owns the three tables, the
//! deadlines of their entries, and moving their bytes without ever
//! blocking: every socket here is non-blocking, every buffer bounded,
//! every loop bounded (work left over is taken up on the next turn).
//! Must not: parse protocols (`internal`, `proxy` do) or fork except
//! through `spawn`.

use std::collections::HashMap;
use std::time::SystemTime;

use super::*;
use crate::config::Internal;
use crate::internal::{self as proto, Request};
use crate::proxy::{self, Header};

/// Tokens of internal connections, pending PROXY reads and UDP sessions.
pub(super) const INSIDE_BASE: usize = 1 << 41;
pub(super) const PENDING_BASE: usize = 1 << 42;
pub(super) const SESSION_BASE: usize = 1 << 43;

/// UDP sessions of one `dgram nowait` service at once, unless its
/// `max-child=` says otherwise (each is a handler process; sources can be
/// spoofed).
pub(super) const UDP_SESSIONS: u32 = 64;
/// UDP sessions at once from one /24 (IPv4) or /64 (IPv6), unless the
/// service's `max-child-per-ip=` says otherwise.
pub(super) const UDP_SESSIONS_PER_NET: u32 = 16;
/// An internal connection with no traffic either way for this long is
/// closed (a chargen client that never reads costs one socket, no more).
pub(super) const INSIDE_IDLE: Duration = Duration::from_secs(60);
/// Internal connections per service when no instance limit is set.
pub(super) const INSIDE_MAX: u32 = 1024;
/// An echo connection holds at most this much not yet sent back.
const ECHO_BUF: usize = 4096;
/// Bytes moved for one connection per turn before others get theirs.
const TURN_BYTES: usize = 256 * 1024;
/// The PROXY header must arrive within this time.
pub(super) const PROXY_TIMEOUT: Duration = Duration::from_secs(5);
/// PROXY headers waited for at once per service (fewer when its share of
/// descriptors is smaller): a proxy that connects and says nothing holds
/// no more; the next clients wait in the backlog.
pub(super) const PROXY_PENDING: u32 = 64;

/// A tcpmux request line must arrive within this time.
const TCPMUX_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams handled per readable socket per turn.
const DGRAM_BATCH: usize = 64;
/// The largest datagram relayed or answered.
const DGRAM_MAX: usize = 65536;

/// A table with stable indices.
pub(super) struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    pub(super) fn insert(&mut self, t: T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.items[i] = Some(t);
                i
            }
            None => {
                self.items.push(Some(t));
                self.items.len() - 1
            }
        }
    }

    pub(super) fn remove(&mut self, i: usize) -> Option<T> {
        let t = self.items.get_mut(i)?.take();
        if t.is_some() {
            self.free.push(i);
        }
        t
    }

    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }

    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)?.as_ref()
    }

    pub(super) fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i, t.as_ref()?)))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.items
            .iter_mut()
            .enumerate()
            .filter_map(|(i, t)| Some((i, t.as_mut()?)))
    }

    pub(super) fn indices(&self) -> Vec<usize> {
        (0..self.items.len())
            .filter(|&i| self.items[i].is_some())
            .collect()
    }
}

/// One TCP connection to an internal service.
pub(super) struct InsideConn {
    fd: OwnedFd,
    pub(super) service: usize,
    kind: Internal,
    source: Option<IpAddr>,
    peer: Peer,
    shown: String,
    started: Instant,
    last: Instant,
    /// The end of the service's `timeout`, if it has one.
    limit: Option<Instant>,
    /// echo: received, not yet sent back.
    buf: Vec<u8>,
    /// chargen: bytes sent so far (the pattern's position).
    sent: u64,
    received: u64,
    read_eof: bool,
}

impl InsideConn {
    fn deadline(&self) -> Instant {
        let idle = if self.kind == Internal::Tcpmux {
            self.started + TCPMUX_TIMEOUT
        } else {
            self.last + INSIDE_IDLE
        };
        self.limit.map_or(idle, |l| l.min(idle))
    }
}

/// A connection from a trusted proxy whose header has not arrived yet.
pub(super) struct Pending {
    fd: OwnedFd,
    pub(super) service: usize,
    /// The listener it came on (its poll count).
    listener: usize,
    peer: Peer,
    shown: String,
    deadline: Instant,
}

/// A UDP peer's session: doorman's end of the datagram socket pair whose
/// other end the handler has, the listener its datagrams arrive on.
pub(super) struct Session {
    fd: OwnedFd,
    pub(super) listener: usize,
    peer: SocketAddr,
    /// Its handler.
    pid: i32,
    /// The last datagram either way.
    last: Instant,
    /// The service's `session-idle`.
    idle: Option<Duration>,
    /// Idle: its handler was told to stop; new datagrams from the peer
    /// start a new session.
    ending: bool,
}

/// How a connection's turn ended.
enum Turn {
    /// Waiting for the socket (the next edge wakes it).
    Wait,
    /// Its share of this turn is used up: go on next turn.
    Again,
    /// Finished (or failed): close it, saying why.
    Close(&'static str),
}

/// The tables and scratch space of this module, part of `Server`.
#[derive(Default)]
pub(super) struct Inside {
    pub(super) conns: Slab<InsideConn>,
    pub(super) pending: Slab<Pending>,
    pub(super) sessions: Slab<Session>,
    pub(super) by_peer: HashMap<(usize, SocketAddr), usize>,
    /// Deadlines by token, earliest first; an entry is checked against
    /// its entry's current deadline when it comes due.
    pub(super) timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Internal connections to drive again on the next turn.
    pub(super) again: Vec<usize>,
    /// UDP requests from these ports are refused (loop protection): the
    /// well-known ports of internal services and the ports internal UDP
    /// services listen on. Set at each swap.
    pub(super) loop_ports: Vec<u16>,
    scratch: Vec<u8>,
}

impl Inside {
    fn scratch(&mut self) -> &mut Vec<u8> {
        if self.scratch.len() < DGRAM_MAX {
            self.scratch.resize(DGRAM_MAX, 0);
        }
        &mut self.scratch
    }

    /// The current deadline of the entry behind `token`, if it is alive.
    fn deadline_of(&self, token: usize) -> Option<Instant> {
        if (PENDING_BASE..SESSION_BASE).contains(&token) {
            self.pending.get(token - PENDING_BASE).map(|p| p.deadline)
        } else if (INSIDE_BASE..PENDING_BASE).contains(&token) {
            self.conns.get(token - INSIDE_BASE).map(|c| c.deadline())
        } else if token >= SESSION_BASE {
            self.sessions
                .get(token - SESSION_BASE)
                .filter(|s| !s.ending)
                .and_then(|s| s.idle.map(|i| s.last + i))
        } else {
            None
        }
    }

    /// The earliest live deadline, dropping entries of closed ones.
    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, tok))) = self.timers.peek() {
            match self.deadline_of(tok) {
                None => {
                    self.timers.pop();
                }
                Some(_) => return Some(t),
            }
        }
        None
    }
}

/// What one read of a datagram socket gave.
enum Got {
    Datagram(usize, SocketAddr),
    /// Nothing usable this time (interrupted, or not an IP sender).
    Skip,
    /// Nothing more to read now (or the socket failed).
    Done,
}

/// Reads one datagram into `buf`: its length and sender, IPv4-mapped
/// senders as IPv4.
fn recv_datagram(fd: RawFd, buf: &mut [u8]) -> Got {
    match socket::recvfrom::<SockaddrStorage>(fd, buf) {
        Ok((n, Some(from))) => match storage_to_std(&from) {
            Some(a) => Got::Datagram(n, SocketAddr::new(a.ip().to_canonical(), a.port())),
            None => Got::Skip,
        },
        Ok((_, None)) | Err(Errno::EINTR) => Got::Skip,
        Err(_) => Got::Done,
    }
}

fn is_wouldblock(e: Errno) -> bool {
    e == Errno::EAGAIN || e == Errno::EWOULDBLOCK
}

const SEND: socket::MsgFlags = socket::MsgFlags::MSG_DONTWAIT.union(socket::MsgFlags::MSG_NOSIGNAL);

impl Server {
    /// Starts serving an admitted connection to an internal service.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn inside_open(
        &mut self,
        s: usize,
        kind: Internal,
        conn: OwnedFd,
        peer: Peer,
        tracked: Option<IpAddr>,
        shown: String,
        now: Instant,
    ) {
        self.served_since_trim = true;
        let cap = self.services[s].inside_cap();
        let rt = &mut self.services[s];
        if rt.counters.running() > cap {
            rt.counters.release(tracked);
            return self.refuse(
                s,
                conn,
                Reason::Instances { max: cap },
                tracked,
                &shown,
                now,
            );
        }
        emit(
            Level::Info,
            "accept",
            &[
                ("service", V::S(&rt.label)),
                ("peer", V::S(&shown)),
                ("local", V::O(peer.local())),
                ("internal", V::S(kind.as_str())),
            ],
        );
        let fd = conn.as_raw_fd();
        let _ = set_nonblocking(fd, true);
        // daytime and time say one thing and close: no table entry.
        if matches!(kind, Internal::Daytime | Internal::Time) {
            let wall = SystemTime::now();
            let msg = match kind {
                Internal::Daytime => proto::daytime(wall),
                _ => proto::rfc868_time(wall).to_vec(),
            };
            let n = socket::send(fd, &msg, SEND).unwrap_or(0);
            let _ = socket::shutdown(fd, socket::Shutdown::Write);
            rt.counters.release(tracked);
            drop(conn);
            self.inside_ended_at(s, &shown, now, now, 0, n as u64, "done");
            return;
        }
        let limit = rt.svc.exec.runtime_max.map(|t| now + t);
        let c = InsideConn {
            fd: conn,
            service: s,
            kind,
            source: tracked,
            peer,
            shown,
            started: now,
            last: now,
            limit,
            buf: Vec::new(),
            sent: 0,
            received: 0,
            read_eof: false,
        };
        let deadline = c.deadline();
        let slot = self.inside.conns.insert(c);
        let token = INSIDE_BASE + slot;
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            error!("register internal connection: {e}");
            return self.inside_close(slot, "error");
        }
        self.inside.timers.push(Reverse((deadline, token)));
        if self.services[s].full() {
            // Its share is used: the next clients wait in the backlog.
            self.sync(s);
        }
        self.inside_event(slot);
    }

    /// An internal connection's socket is ready (or its turn came again).
    pub(super) fn inside_event(&mut self, slot: usize) {
        let Some(c) = self.inside.conns.get_mut(slot) else {
            return;
        };
        let turn = match c.kind {
            Internal::Echo => echo(c),
            Internal::Discard => discard(c),
            Internal::Chargen => chargen(c),
            Internal::Tcpmux => return self.tcpmux_event(slot),
            Internal::Daytime | Internal::Time => Turn::Close("done"),
        };
        match turn {
            Turn::Wait => {}
            Turn::Again => {
                if !self.inside.again.contains(&slot) {
                    self.inside.again.push(slot);
                }
            }
            Turn::Close(why) => self.inside_close(slot, why),
        }
    }

    fn inside_close(&mut self, slot: usize, why: &'static str) {
        let Some(c) = self.inside.conns.remove(slot) else {
            return;
        };
        let raw = c.fd.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        if let Some(rt) = self.services.get_mut(c.service) {
            rt.counters.release(c.source);
        }
        let now = Instant::now();
        let (received, sent) = (c.received, c.sent);
        let (s, shown, started) = (c.service, c.shown, c.started);
        drop(c.fd);
        self.inside_ended_at(s, &shown, started, now, received, sent, why);
        // A service that was full is watched again (sync changes nothing
        // otherwise).
        self.sync(s);
    }

    #[allow(clippy::too_many_arguments)]
    fn inside_ended_at(
        &mut self,
        s: usize,
        shown: &str,
        started: Instant,
        now: Instant,
        rx: u64,
        tx: u64,
        why: &str,
    ) {
        let Some(rt) = self.services.get(s) else {
            return;
        };
        let d = now.saturating_duration_since(started);
        emit(
            Level::Info,
            "end",
            &[
                ("service", V::S(&rt.label)),
                ("peer", V::S(shown)),
                ("received", V::N(rx as i64)),
                ("sent", V::N(tx as i64)),
                ("why", V::S(why)),
                ("duration_ms", V::N(d.as_millis() as i64)),
            ],
        );
        self.metrics.service(&rt.label).observe(d);
    }

    /// tcpmux: read the request line (peeking, so that nothing after it is
    /// lost), then answer or hand the connection to the service named.
    fn tcpmux_event(&mut self, slot: usize) {
        let Some(c) = self.inside.conns.get_mut(slot) else {
            return;
        };
        let fd = c.fd.as_raw_fd();
        let mut buf = [0u8; proto::TCPMUX_MAX];
        let n = match socket::recv(
            fd,
            &mut buf,
            socket::MsgFlags::MSG_PEEK | socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return self.inside_close(slot, "eof"),
            Ok(n) => n,
            Err(e) if is_wouldblock(e) => return,
            Err(_) => return self.inside_close(slot, "error"),
        };
        let (req, used) = proto::tcpmux_request(&buf[..n]);
        match req {
            Request::Incomplete => {}
            Request::Bad => {
                let _ = socket::send(fd, b"-Bad request\r\n", SEND);
                self.inside_close(slot, "bad-request");
            }
            Request::Help => {
                let mut names: Vec<&str> = self
                    .services
                    .iter()
                    .filter_map(|rt| rt.svc.tcpmux.as_deref().map(|(n, _)| n.as_str()))
                    .collect();
                names.sort_unstable();
                let mut out = String::new();
                for n in names {
                    out.push_str(n);
                    out.push_str("\r\n");
                }
                let _ = socket::recv(fd, &mut buf[..used], socket::MsgFlags::MSG_DONTWAIT);
                let sent = socket::send(fd, out.as_bytes(), SEND).unwrap_or(0);
                c.sent += sent as u64;
                self.inside_close(slot, "help");
            }
            Request::Service(name) => {
                let target = self.services.iter().position(|rt| {
                    rt.svc
                        .tcpmux
                        .as_deref()
                        .is_some_and(|(n, _)| n.eq_ignore_ascii_case(&name))
                });
                let _ = socket::recv(fd, &mut buf[..used], socket::MsgFlags::MSG_DONTWAIT);
                let Some(t) = target else {
                    let _ = socket::send(fd, b"-Service not available\r\n", SEND);
                    return self.inside_close(slot, "unknown-service");
                };
                // Hand over: out of the table (tcpmux's count freed), then
                // served as a connection to the named service.
                let c = self.inside.conns.remove(slot).expect("present");
                let raw = c.fd.as_raw_fd();
                let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
                if let Some(rt) = self.services.get_mut(c.service) {
                    rt.counters.release(c.source);
                }
                let _ = set_nonblocking(raw, false);
                if self.services[t]
                    .svc
                    .tcpmux
                    .as_deref()
                    .is_some_and(|(_, plus)| *plus)
                {
                    let _ = socket::send(raw, b"+Go\r\n", SEND);
                }
                let source = match &c.peer {
                    Peer::Tcp { remote, .. } => Some(remote.ip()),
                    _ => None,
                };
                self.inside_ended_at(
                    c.service,
                    &c.shown,
                    c.started,
                    Instant::now(),
                    used as u64,
                    0,
                    "handed-over",
                );
                self.serve_peer(None, t, c.fd, c.peer, source, c.shown, Instant::now());
            }
        }
    }

    /// A readable internal UDP service: answer each request (bounded per
    /// turn), refusing the ones that could start a loop.
    pub(super) fn inside_dgram(&mut self, li: usize) {
        let s = self.listeners[li].service;
        let Some(kind) = self.services[s].svc.internal() else {
            return;
        };
        let lfd = self.listeners[li].fd.as_raw_fd();
        let now = Instant::now();
        for _ in 0..DGRAM_BATCH {
            let (n, from) = match recv_datagram(lfd, self.inside.scratch()) {
                Got::Datagram(n, from) => (n, from),
                Got::Skip => continue,
                Got::Done => return,
            };
            let shown = from.to_string();
            let ip = from.ip();
            let rt = &mut self.services[s];
            let key = Some(policy::source_key(ip, &rt.svc.limits));
            let broadcast = match ip {
                IpAddr::V4(a) => a.is_broadcast() || a.is_multicast() || a.is_unspecified(),
                IpAddr::V6(a) => a.is_multicast() || a.is_unspecified(),
            };
            let reason =
                if from.port() < 1024 || self.inside.loop_ports.contains(&from.port()) || broadcast
                {
                    Some(Reason::Loop)
                } else if !policy::allowed(&rt.svc.access, ip) {
                    Some(Reason::Denied)
                } else if rt.paused_until.is_some() {
                    Some(Reason::Paused)
                } else {
                    match rt.counters.admit(&rt.svc.limits, key, now, None) {
                        Decision::Admit(k, then) => {
                            rt.counters.release(k);
                            if let Some((r, until)) = then {
                                self.limit_reached(s, None, r, until, &shown, now);
                            }
                            None
                        }
                        Decision::Refuse(r) => Some(r),
                    }
                };
            if let Some(r) = reason {
                self.count_refusal(s, r.key(), r.to_string(), key, &shown, "drop", now);
                continue;
            }
            let rt = &mut self.services[s];
            self.metrics.service(&rt.label).accepted += 1;
            let wall = SystemTime::now();
            let reply: Option<Vec<u8>> = match kind {
                Internal::Echo => None,
                Internal::Discard | Internal::Tcpmux => continue,
                Internal::Daytime => Some(proto::daytime(wall)),
                Internal::Time => Some(proto::rfc868_time(wall).to_vec()),
                Internal::Chargen => {
                    // RFC 864: a datagram of 0 to 512 characters; never
                    // more than the request had, so that a spoofed source
                    // cannot use it to amplify a flood.
                    let len = n.min(512);
                    let mut out = vec![0u8; len];
                    proto::chargen_fill(0, &mut out);
                    Some(out)
                }
            };
            let dest = SockaddrStorage::from(from);
            let data: &[u8] = match &reply {
                Some(r) => r,
                None => &self.inside.scratch[..n],
            };
            let _ = socket::sendto(lfd, data, &dest, SEND);
            debug!("{}: {} bytes from {shown}", self.services[s].label, n);
        }
        // More may be waiting: take them up on the next turn.
        self.queue(li);
    }

    /// A connection from a trusted proxy: wait (bounded) for its header.
    pub(super) fn proxy_start(
        &mut self,
        li: usize,
        s: usize,
        conn: OwnedFd,
        peer: Peer,
        shown: String,
        now: Instant,
    ) {
        let rt = &mut self.services[s];
        if rt.full() {
            // Accepted in the batch that filled it.
            let max = rt
                .svc
                .limits
                .max_instances
                .unwrap_or(PROXY_PENDING.min(rt.fd_share));
            return self.refuse(s, conn, Reason::Instances { max }, None, &shown, now);
        }
        rt.counters.set_pending(true);
        let fd = conn.as_raw_fd();
        let _ = set_nonblocking(fd, true);
        let slot = self.inside.pending.insert(Pending {
            fd: conn,
            service: s,
            listener: li,
            peer,
            shown,
            deadline: now + PROXY_TIMEOUT,
        });
        let token = PENDING_BASE + slot;
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
        {
            error!("register PROXY connection: {e}");
            return self.proxy_drop(slot, None);
        }
        self.inside
            .timers
            .push(Reverse((now + PROXY_TIMEOUT, token)));
        if self.services[s].full() {
            self.sync(s);
        }
        self.proxy_event(slot);
    }

    /// Bytes from a proxy: a whole header serves the client it names; a
    /// wrong one closes the connection with a log line.
    pub(super) fn proxy_event(&mut self, slot: usize) {
        let Some(p) = self.inside.pending.get_mut(slot) else {
            return;
        };
        let fd = p.fd.as_raw_fd();
        let s = p.service;
        let version = match self.services.get(s).and_then(|rt| rt.svc.proxy.as_ref()) {
            Some(spec) => spec.version,
            None => return self.proxy_drop(slot, None),
        };
        let mut buf = [0u8; proxy::MAX];
        let n = match socket::recv(
            fd,
            &mut buf,
            socket::MsgFlags::MSG_PEEK | socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => {
                debug!(
                    "{}: the proxy closed before its header",
                    self.services[s].label
                );
                return self.proxy_drop(slot, None);
            }
            Ok(n) => n,
            Err(e) if is_wouldblock(e) => return,
            Err(_) => return self.proxy_drop(slot, None),
        };
        match proxy::parse(&buf[..n], version) {
            Ok(Header::Incomplete) => {}
            Err(m) => self.proxy_drop(slot, Some(m)),
            Ok(Header::Done { len, addrs }) => {
                // Take the header off; the handler gets what follows.
                let got = socket::recv(fd, &mut buf[..len], socket::MsgFlags::MSG_DONTWAIT);
                let p = self.inside.pending.remove(slot).expect("present");
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                self.services[s].counters.set_pending(false);
                self.sync(s);
                if got != Ok(len) {
                    return;
                }
                let _ = set_nonblocking(fd, false);
                let (peer, shown) = match (p.peer, addrs) {
                    (Peer::Tcp { remote, .. }, Some((src, dst))) => {
                        let src = SocketAddr::new(src.ip().to_canonical(), src.port());
                        let shown = format!("{src}");
                        debug!("{}: {shown} via proxy {remote}", self.services[s].label);
                        (
                            Peer::Tcp {
                                remote: src,
                                local: dst,
                                proxy: Some(remote),
                            },
                            shown,
                        )
                    }
                    // LOCAL / UNKNOWN: the socket's own addresses, still
                    // marked as having come through the proxy.
                    (Peer::Tcp { remote, local, .. }, None) => (
                        Peer::Tcp {
                            remote,
                            local,
                            proxy: Some(remote),
                        },
                        p.shown,
                    ),
                    (peer, _) => (peer, p.shown),
                };
                let source = match &peer {
                    Peer::Tcp { remote, .. } => Some(remote.ip()),
                    _ => None,
                };
                self.serve_peer(
                    Some(p.listener),
                    s,
                    p.fd,
                    peer,
                    source,
                    shown,
                    Instant::now(),
                );
            }
        }
    }

    /// Closes a pending PROXY connection; a bad header is logged (once per
    /// proxy per interval) and counted.
    fn proxy_drop(&mut self, slot: usize, why: Option<String>) {
        let Some(p) = self.inside.pending.remove(slot) else {
            return;
        };
        let raw = p.fd.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        if let Some(rt) = self.services.get_mut(p.service) {
            rt.counters.set_pending(false);
            self.sync(p.service);
        }
        // Read away what was peeked, so that closing is a FIN, not a reset.
        let mut sink = [0u8; proxy::MAX];
        let _ = socket::recv(raw, &mut sink, socket::MsgFlags::MSG_DONTWAIT);
        let Some(why) = why else { return };
        let key = match &p.peer {
            Peer::Tcp { remote, .. } => Some(remote.ip()),
            _ => None,
        };
        let reason = format!("proxy: {why}");
        self.count_refusal(
            p.service,
            "proxy",
            reason,
            key,
            &p.shown,
            "close",
            Instant::now(),
        );
    }

    /// Datagrams on a `dgram nowait` (per-peer session) listener: each
    /// goes to its peer's handler; a new peer gets a handler of its own.
    pub(super) fn session_dgram(&mut self, li: usize) {
        let lfd = self.listeners[li].fd.as_raw_fd();
        let s = self.listeners[li].service;
        let local = match &self.listeners[li].local {
            Address::Inet(a) => *a,
            Address::Unix(_) => return,
        };
        for _ in 0..DGRAM_BATCH {
            let (n, from) = match recv_datagram(lfd, self.inside.scratch()) {
                Got::Datagram(n, from) => (n, from),
                Got::Skip => continue,
                Got::Done => return,
            };
            if let Some(&slot) = self.inside.by_peer.get(&(li, from)) {
                if let Some(sess) = self.inside.sessions.get_mut(slot) {
                    sess.last = Instant::now();
                    if let Err(e) =
                        socket::send(sess.fd.as_raw_fd(), &self.inside.scratch[..n], SEND)
                    {
                        debug!("session {from}: datagram dropped: {}", e.desc());
                    }
                }
                continue;
            }
            self.session_open(li, s, local, from, n);
        }
        self.queue(li);
    }

    /// A datagram from a peer with no session: admit it, then start a
    /// handler on a datagram socket pair that already holds it.
    fn session_open(&mut self, li: usize, s: usize, local: SocketAddr, from: SocketAddr, n: usize) {
        let now = Instant::now();
        let shown = from.to_string();
        // UDP sources can be spoofed: unless the service sets its own
        // limits, at most UDP_SESSIONS sessions, and UDP_SESSIONS_PER_NET
        // per /24 (IPv4) or /64 (IPv6).
        let net = |ip: IpAddr| {
            let ip = ip.to_canonical();
            crate::config::acl::mask(ip, if ip.is_ipv4() { 24 } else { 64 })
        };
        let (mut total, mut same_net) = (0u32, 0u32);
        for (_, x) in self.inside.sessions.iter() {
            if self
                .listeners
                .get(x.listener)
                .is_some_and(|l| l.service == s)
            {
                total += 1;
                if net(x.peer.ip()) == net(from.ip()) {
                    same_net += 1;
                }
            }
        }
        let rt = &mut self.services[s];
        let key = Some(policy::source_key(from.ip(), &rt.svc.limits));
        let limits = &rt.svc.limits;
        let refused = if !policy::allowed(&rt.svc.access, from.ip()) {
            Some(Reason::Denied)
        } else if limits.max_instances.is_none() && total >= UDP_SESSIONS.min(rt.fd_share) {
            Some(Reason::Instances {
                max: UDP_SESSIONS.min(rt.fd_share),
            })
        } else if total >= rt.fd_share {
            Some(Reason::Instances { max: rt.fd_share })
        } else if limits.max_per_source.is_none() && same_net >= UDP_SESSIONS_PER_NET {
            Some(Reason::SourceInstances {
                max: UDP_SESSIONS_PER_NET,
            })
        } else if rt.paused_until.is_some() || self.global_full {
            Some(Reason::Paused)
        } else {
            match rt.counters.admit(&rt.svc.limits, key, now, None) {
                Decision::Admit(k, then) => {
                    if let Some((r, until)) = then {
                        self.limit_reached(s, None, r, until, &shown, now);
                    }
                    self.session_spawn(li, s, local, from, n, k, shown, now);
                    return;
                }
                Decision::Refuse(r) => Some(r),
            }
        };
        if let Some(r) = refused {
            self.count_refusal(s, r.key(), r.to_string(), key, &shown, "drop", now);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn session_spawn(
        &mut self,
        li: usize,
        s: usize,
        local: SocketAddr,
        from: SocketAddr,
        n: usize,
        tracked: Option<IpAddr>,
        shown: String,
        now: Instant,
    ) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType as NixType};
        let pair = socketpair(
            AddressFamily::Unix,
            NixType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        );
        let (ours, theirs) = match pair {
            Ok(p) => p,
            Err(e) => {
                warn!("{}: socketpair: {}", self.services[s].label, e.desc());
                self.services[s].counters.release(tracked);
                return;
            }
        };
        let _ = set_nonblocking(ours.as_raw_fd(), true);
        // The first datagram is waiting on the handler's end when it starts.
        let _ = socket::send(ours.as_raw_fd(), &self.inside.scratch[..n], SEND);
        let peer = Peer::Udp {
            remote: from,
            local,
        };
        self.metrics.service(&self.services[s].label).accepted += 1;
        let started = self.start_handler(s, Handed::Conn(theirs), &peer, &shown, tracked, now, b"");
        let Some(pid) = started else {
            return;
        };
        log_accept(&self.services[s].label, &shown, &peer, pid);
        let ours_raw = ours.as_raw_fd();
        let idle = self.services[s].svc.limits.session_idle;
        let slot = self.inside.sessions.insert(Session {
            fd: ours,
            listener: li,
            peer: from,
            pid: pid.as_raw(),
            last: now,
            idle,
            ending: false,
        });
        if let Some(i) = idle {
            self.inside
                .timers
                .push(Reverse((now + i, SESSION_BASE + slot)));
        }
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&ours_raw),
            Token(SESSION_BASE + slot),
            Interest::READABLE,
        ) {
            error!("register session: {e}");
        }
        self.inside.by_peer.insert((li, from), slot);
        self.track(pid, s, tracked, shown, now, None, Some(slot));
    }

    /// The handler wrote datagrams: send each to its peer from the
    /// service's socket.
    pub(super) fn session_event(&mut self, slot: usize) {
        let Some(sess) = self.inside.sessions.get_mut(slot) else {
            return;
        };
        sess.last = Instant::now();
        let (fd, li, peer) = (sess.fd.as_raw_fd(), sess.listener, sess.peer);
        let Some(l) = self.listeners.get(li) else {
            return;
        };
        let lfd = l.fd.as_raw_fd();
        let dest = SockaddrStorage::from(peer);
        for _ in 0..DGRAM_BATCH {
            let buf = self.inside.scratch();
            match socket::recv(fd, buf, socket::MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    let _ = socket::sendto(lfd, &self.inside.scratch[..n], &dest, SEND);
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
        // More to send: the next turn (no edge will come for it).
        let raw = fd;
        let _ = self.poll.registry().reregister(
            &mut SourceFd(&raw),
            Token(SESSION_BASE + slot),
            Interest::READABLE,
        );
    }

    /// A session's handler has exited: the peer is free for a new one.
    pub(super) fn session_end(&mut self, slot: usize) {
        if let Some(sess) = self.inside.sessions.remove(slot) {
            let raw = sess.fd.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
            let key = (sess.listener, sess.peer);
            if self.inside.by_peer.get(&key) == Some(&slot) {
                self.inside.by_peer.remove(&key);
            }
        }
    }

    /// A session idle for its service's `session-idle` (sources can be
    /// forged, and a session holds a process and a descriptor): its handler gets the service's
    /// stop signal (process group), then SIGKILL after the grace period
    /// (through the handler's deadline); the peer's next datagram starts a
    /// new session. The session stays counted until the handler exits.
    fn session_idle(&mut self, slot: usize, now: Instant) {
        let Some(sess) = self.inside.sessions.get_mut(slot) else {
            return;
        };
        sess.ending = true;
        let (key, pid) = ((sess.listener, sess.peer), sess.pid);
        let idle = now.saturating_duration_since(sess.last);
        if self.inside.by_peer.get(&key) == Some(&slot) {
            self.inside.by_peer.remove(&key);
        }
        let Some((sig, grace)) = self.stop_child(pid, now) else {
            return;
        };
        let Some(c) = self.children.get_mut(pid) else {
            return;
        };
        emit(
            Level::Info,
            "idle",
            &[
                ("service", V::S(&c.label)),
                ("pid", V::N(pid.into())),
                ("peer", V::S(&c.peer)),
                ("idle_ms", V::N(idle.as_millis() as i64)),
                ("signal", V::S(sig.as_str())),
                ("kill_in_ms", V::N(grace.as_millis() as i64)),
            ],
        );
    }

    /// Internal connections and PROXY reads past their deadline.
    pub(super) fn expire_inside(&mut self, now: Instant) {
        while let Some(&Reverse((t, tok))) = self.inside.timers.peek() {
            if t > now {
                break;
            }
            self.inside.timers.pop();
            let Some(current) = self.inside.deadline_of(tok) else {
                continue;
            };
            if current > now {
                self.inside.timers.push(Reverse((current, tok)));
                continue;
            }
            if tok >= SESSION_BASE {
                self.session_idle(tok - SESSION_BASE, now);
            } else if tok >= PENDING_BASE {
                let slot = tok - PENDING_BASE;
                self.proxy_drop(
                    slot,
                    Some(format!("no header within {}s", PROXY_TIMEOUT.as_secs())),
                );
            } else {
                self.inside_close(tok - INSIDE_BASE, "timeout");
            }
        }
    }

    /// Connections whose turn ran out: their next share.
    pub(super) fn inside_again(&mut self) {
        for slot in std::mem::take(&mut self.inside.again) {
            self.inside_event(slot);
        }
    }

    /// The ports an internal UDP service must not answer (at each swap).
    pub(super) fn set_loop_ports(&mut self) {
        let mut ports: Vec<u16> = self
            .services
            .iter()
            .filter_map(|rt| rt.svc.internal())
            .map(Internal::port)
            .chain(self.listeners.iter().filter_map(|l| {
                match (
                    &l.local,
                    self.services[l.service].svc.internal(),
                    l.sock_type,
                ) {
                    (Address::Inet(a), Some(_), SockType::Dgram) => Some(a.port()),
                    _ => None,
                }
            }))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        self.inside.loop_ports = ports;
    }

    /// Reload: entries follow their service to its new index; those of
    /// removed services are closed.
    pub(super) fn inside_remap(&mut self, old_to_new: &[Option<usize>]) {
        let map = |i: usize| old_to_new.get(i).copied().flatten();
        let mut gone = Vec::new();
        for (i, c) in self.inside.conns.iter_mut() {
            match map(c.service) {
                Some(n) => c.service = n,
                None => gone.push(i),
            }
        }
        for i in gone {
            self.inside_close(i, "reload");
        }
        let mut gone = Vec::new();
        for (i, p) in self.inside.pending.iter_mut() {
            match map(p.service) {
                Some(n) => p.service = n,
                None => gone.push(i),
            }
        }
        for i in gone {
            self.proxy_drop(i, None);
        }
    }

    /// Reload: sessions follow their listener; those whose listener is
    /// gone stop relaying (their handlers run on until they exit).
    pub(super) fn sessions_remap(&mut self, old_to_new_listener: &[Option<usize>]) {
        let mut by_peer = HashMap::new();
        for i in self.inside.sessions.indices() {
            let sess = self.inside.sessions.get_mut(i).expect("index");
            match old_to_new_listener.get(sess.listener).copied().flatten() {
                Some(n) => {
                    sess.listener = n;
                    if !sess.ending {
                        by_peer.insert((n, sess.peer), i);
                    }
                }
                None => sess.listener = usize::MAX,
            }
        }
        self.inside.by_peer = by_peer;
        for i in self.inside.pending.indices() {
            let p = self.inside.pending.get_mut(i).expect("index");
            p.listener = old_to_new_listener
                .get(p.listener)
                .copied()
                .flatten()
                .unwrap_or(usize::MAX);
        }
    }
}

/// echo: send back what arrives, holding at most [`ECHO_BUF`] bytes (the
/// client that does not read stops being read).
fn echo(c: &mut InsideConn) -> Turn {
    let fd = c.fd.as_raw_fd();
    let mut moved = 0;
    loop {
        let mut progress = false;
        if !c.buf.is_empty() {
            match socket::send(fd, &c.buf, SEND) {
                Ok(n) => {
                    c.buf.drain(..n);
                    c.sent += n as u64;
                    moved += n;
                    progress = n > 0;
                }
                Err(e) if is_wouldblock(e) => {}
                Err(_) => return Turn::Close("error"),
            }
        }
        if !c.read_eof && c.buf.len() < ECHO_BUF {
            let mut tmp = [0u8; ECHO_BUF];
            let room = ECHO_BUF - c.buf.len();
            match socket::recv(fd, &mut tmp[..room], socket::MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    c.read_eof = true;
                    progress = true;
                }
                Ok(n) => {
                    c.buf.extend_from_slice(&tmp[..n]);
                    c.received += n as u64;
                    moved += n;
                    progress = true;
                }
                Err(e) if is_wouldblock(e) => {}
                Err(_) => return Turn::Close("error"),
            }
        }
        if progress {
            c.last = Instant::now();
        }
        if c.read_eof && c.buf.is_empty() {
            return Turn::Close("eof");
        }
        if !progress {
            if c.buf.capacity() > ECHO_BUF && c.buf.is_empty() {
                c.buf = Vec::new();
            }
            return Turn::Wait;
        }
        if moved >= TURN_BYTES {
            return Turn::Again;
        }
    }
}

/// discard: read and drop until EOF.
fn discard(c: &mut InsideConn) -> Turn {
    let fd = c.fd.as_raw_fd();
    let mut tmp = [0u8; 8192];
    let mut moved = 0;
    loop {
        match socket::recv(fd, &mut tmp, socket::MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Turn::Close("eof"),
            Ok(n) => {
                c.received += n as u64;
                c.last = Instant::now();
                moved += n;
                if moved >= TURN_BYTES {
                    return Turn::Again;
                }
            }
            Err(e) if is_wouldblock(e) => return Turn::Wait,
            Err(_) => return Turn::Close("error"),
        }
    }
}

/// chargen: write the pattern as fast as the client reads it; what the
/// client sends is read and dropped, its EOF ends the connection.
fn chargen(c: &mut InsideConn) -> Turn {
    let fd = c.fd.as_raw_fd();
    let mut out = [0u8; 4096];
    let mut moved = 0;
    loop {
        let mut progress = false;
        proto::chargen_fill(c.sent, &mut out);
        match socket::send(fd, &out, SEND) {
            Ok(n) => {
                c.sent += n as u64;
                moved += n;
                progress = n > 0;
            }
            Err(e) if is_wouldblock(e) => {}
            Err(_) => return Turn::Close("error"),
        }
        let mut sink = [0u8; 1024];
        match socket::recv(fd, &mut sink, socket::MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Turn::Close("eof"),
            Ok(n) => {
                c.received += n as u64;
                progress = true;
            }
            Err(e) if is_wouldblock(e) => {}
            Err(_) => return Turn::Close("error"),
        }
        if progress {
            c.last = Instant::now();
        } else {
            return Turn::Wait;
        }
        if moved >= TURN_BYTES {
            return Turn::Again;
        }
    }
}
