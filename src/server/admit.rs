//! Admission and refusal: accepting a batch from a listener, who is at
//! the other end, the policy decision and what it leads to (a handler, an
//! internal service, a PROXY read, a refusal with its fate, a pause), and
//! the global cap.
//!
//! Part of the loop's state (`super::Server`). Must not: spawn by itself
//! (`children.rs` starts handlers) or block.

use super::*;

impl Server {
    /// Accepts up to a batch of connections from listener `li`.
    pub(super) fn accept_batch(&mut self, li: usize) {
        for _ in 0..ACCEPT_BATCH {
            let s = self.listeners[li].service;
            if !self.listeners[li].registered {
                return;
            }
            let lfd = self.listeners[li].fd.as_raw_fd();
            // Accepted blocking (handlers expect it) and close-on-exec (no
            // other handler may inherit it).
            match listen::accept(lfd) {
                Ok((conn, remote)) => {
                    if self.emfile_warned {
                        self.emfile_warned = false;
                        info!("accept: file descriptors available again");
                    }
                    self.serve(li, s, conn, remote);
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO | Errno::EPERM) => continue,
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    if !self.emfile_warned {
                        self.emfile_warned = true;
                        warn!(
                            "{}: accept: {} (pausing accepts for {} ms)",
                            self.services[s].label,
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
                    warn!("{}: accept: {}", self.services[s].label, e.desc());
                    return;
                }
            }
        }
        self.queue(li);
    }

    /// Who is at the other end of an accepted connection: the hand-over's
    /// peer, the source policy counts, and how logs show it.
    pub(super) fn peer_of(
        &self,
        li: usize,
        conn: &OwnedFd,
        remote: Option<SocketAddr>,
    ) -> Option<(Peer, Option<IpAddr>, String)> {
        let l = &self.listeners[li];
        match &l.local {
            Address::Inet(bound) => {
                let remote = match remote {
                    Some(r) => r,
                    None => socket::getpeername::<SockaddrStorage>(conn.as_raw_fd())
                        .ok()
                        .and_then(|ss| storage_to_std(&ss))?,
                };
                let local = if l.wildcard {
                    listen::local_addr(conn.as_raw_fd()).unwrap_or(*bound)
                } else {
                    *bound
                };
                let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
                Some((
                    Peer::Tcp {
                        remote,
                        local,
                        proxy: None,
                    },
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
    pub(super) fn serve(&mut self, li: usize, s: usize, conn: OwnedFd, remote: Option<SocketAddr>) {
        let now = Instant::now();
        let Some((peer, source, shown)) = self.peer_of(li, &conn, remote) else {
            debug!(
                "{}: connection gone before it could be served",
                self.services[s].label
            );
            return;
        };
        // Behind a trusted proxy: read its header first (without
        // blocking), then serve the client it names.
        if let (Some(p), Peer::Tcp { remote, .. }) = (&self.services[s].svc.proxy, &peer) {
            let remote = *remote;
            if p.trusted.iter().any(|c| c.contains(remote.ip())) {
                return self.proxy_start(li, s, conn, peer, shown, now);
            }
            if !p.optional {
                let key = source.map(|ip| policy::source_key(ip, &self.services[s].svc.limits));
                return self.refuse(s, conn, Reason::Proxy, key, &shown, now);
            }
        }
        self.serve_peer(Some(li), s, conn, peer, source, shown, now);
    }

    /// A connection whose client is known: access, limits, then the
    /// handler (or an internal service, or a tcpmux service). `li`: the
    /// listener it came on (none for one tcpmux handed over).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn serve_peer(
        &mut self,
        li: Option<usize>,
        s: usize,
        conn: OwnedFd,
        peer: Peer,
        source: Option<IpAddr>,
        shown: String,
        now: Instant,
    ) {
        // A client that has already left (reset its connection) starts
        // nothing: its handler could only fail. A half-closed one is
        // served: `nc -N host 13 </dev/null` waits for daytime's answer.
        if let Peer::Tcp { .. } = peer {
            if listen::tcp_state(conn.as_raw_fd()) == Some(listen::TCP_CLOSE) {
                self.metrics
                    .service(&self.services[s].label)
                    .dead_on_arrival += 1;
                debug!(
                    "{}: connection from {shown} reset before it was served: closed",
                    self.services[s].label
                );
                return;
            }
        }
        let rt = &self.services[s];
        let allowed = match &peer {
            Peer::Tcp { remote, .. } | Peer::Udp { remote, .. } => {
                policy::allowed(&rt.svc.access, remote.ip())
            }
            Peer::Unix { uid, gid, .. } => policy::allowed_unix(&rt.svc.access, *uid, *gid),
            Peer::Listener => true,
        };
        let key = source.map(|ip| policy::source_key(ip, &rt.svc.limits));
        if !allowed {
            return self.refuse(s, conn, Reason::Denied, key, &shown, now);
        }
        if rt.paused_until.is_some() || self.global_full {
            // Paused with a fate other than queue (or accepted in the same
            // batch that reached a limit).
            return self.refuse(s, conn, Reason::Paused, key, &shown, now);
        }
        let rt = &mut self.services[s];
        let poll = li
            .and_then(|l| self.listeners.get_mut(l))
            .map(|l| &mut l.poll);
        let (tracked, then) = match rt.counters.admit(&rt.svc.limits, key, now, poll) {
            Decision::Admit(tracked, then) => (tracked, then),
            Decision::Refuse(reason) => return self.refuse(s, conn, reason, key, &shown, now),
        };
        // A rate or poll limit reached by this admission pauses what comes
        // next (the kernel's backlog holds it); this connection is served.
        if let Some((reason, until)) = then {
            self.limit_reached(s, li, reason, until, &shown, now);
        }
        if self.services[s].backend.is_some() {
            self.metrics.service(&self.services[s].label).accepted += 1;
            return self.backend_client(s, conn, peer, tracked, shown, now);
        }
        if let Some(kind) = self.services[s].svc.internal() {
            self.metrics.service(&self.services[s].label).accepted += 1;
            return self.inside_open(s, kind, conn, peer, tracked, shown, now);
        }
        self.metrics.service(&self.services[s].label).accepted += 1;
        // doorman keeps no copy once the child has its own (see
        // `spawn::spawn`): a child stopped before its exec would hold it
        // open (see `at_fault`).
        let started = self.start_handler(s, Handed::Conn(conn), &peer, &shown, tracked, now, b"");
        let Some(pid) = started else {
            return;
        };
        log_accept(&self.services[s].label, &shown, &peer, pid);
        self.track(pid, s, tracked, shown, now, None, None);
        if self.services[s].full() {
            self.sync(s);
        }
    }

    /// Refuses one accepted connection with the fate its service gives
    /// this reason: counted always, logged once per source per interval.
    pub(super) fn refuse(
        &mut self,
        s: usize,
        conn: OwnedFd,
        reason: Reason,
        key: Option<IpAddr>,
        shown: &str,
        now: Instant,
    ) {
        let rt = &mut self.services[s];
        let r = &rt.svc.refusal;
        let fate = match reason {
            Reason::Denied | Reason::Proxy => r.deny,
            _ if reason.per_source() => r.source,
            Reason::Instances { .. } => r.full,
            _ => r.paused,
        };
        // An accepted connection cannot be put back in the queue.
        let fate = if fate == Fate::Queue {
            Fate::Close
        } else {
            fate
        };
        perform(conn, fate, &r.message);
        self.count_refusal(
            s,
            reason.key(),
            reason.to_string(),
            key,
            shown,
            fate.as_str(),
            now,
        );
    }

    /// Counts a refusal (metrics, always) and logs it at most once per
    /// source per interval, with the number left unlogged since.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn count_refusal(
        &mut self,
        s: usize,
        key_name: &'static str,
        reason: String,
        key: Option<IpAddr>,
        shown: &str,
        fate: &str,
        now: Instant,
    ) {
        let Some(rt) = self.services.get_mut(s) else {
            return;
        };
        *self
            .metrics
            .service(&rt.label)
            .refused
            .entry(key_name)
            .or_default() += 1;
        if let Some(quiet) = rt.counters.should_log(key, now) {
            let mut fields = vec![
                ("service", V::S(&rt.label)),
                ("peer", V::S(shown)),
                ("reason", V::O(reason)),
                ("fate", V::S(fate)),
            ];
            if quiet > 0 {
                fields.push(("unlogged", V::N(quiet as i64)));
            }
            emit(Level::Info, "refuse", &fields);
        }
    }

    /// Counts a handler's end (or failure to start) toward its service's
    /// crash-loop limit, pausing the service when it is reached.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn crash_check(
        &mut self,
        s: usize,
        failed: bool,
        succeeded: bool,
        lived: Duration,
        how: &str,
        now: Instant,
    ) {
        let Some(rt) = self.services.get_mut(s) else {
            return;
        };
        if let Some((reason, until, which)) =
            rt.counters
                .ended(&rt.svc.limits, failed, succeeded, lived, how, now)
        {
            if rt.paused_until.is_none() {
                self.pause(
                    s,
                    reason.key(),
                    format!("{reason} ({which})"),
                    "-",
                    until,
                    now,
                );
            }
        }
    }

    /// `--max-children`: unwatch every listener while the total is reached,
    /// watch them again when it is not.
    pub(super) fn check_global(&mut self) {
        let full = self
            .opts
            .max_children
            .is_some_and(|m| self.children.len() >= m as usize);
        if full != self.global_full {
            self.global_full = full;
            if full {
                emit(
                    Level::Warn,
                    "full",
                    &[(
                        "max_children",
                        V::N(i64::from(self.opts.max_children.unwrap_or(0))),
                    )],
                );
            } else {
                info!("below --max-children again: serving");
            }
            for i in 0..self.services.len() {
                self.sync(i);
            }
        }
    }

    /// Asks policy about a wake-up of wait listener `li`: `None` if not
    /// admitted, else the pause that is to follow the wake-up, if a limit
    /// was reached (counted).
    #[allow(clippy::type_complexity)]
    pub(super) fn admit_wake(
        &mut self,
        li: usize,
        now: Instant,
    ) -> Option<Option<(Reason, Instant)>> {
        let s = self.listeners[li].service;
        let rt = &mut self.services[s];
        let poll = Some(&mut self.listeners[li].poll);
        match rt.counters.admit(&rt.svc.limits, None, now, poll) {
            Decision::Admit(_, then) => {
                self.metrics.service(&rt.label).accepted += 1;
                Some(then)
            }
            Decision::Refuse(reason) => {
                debug!("{}: not woken: {reason}", rt.label);
                None
            }
        }
    }

    /// An admission reached a limit: the service pauses (its rate), or,
    /// for a poll limit, the socket it came on is not watched until
    /// `until` (systemd's poll limit is per socket); clients wait in the
    /// kernel's backlog meanwhile.
    pub(super) fn limit_reached(
        &mut self,
        s: usize,
        li: Option<usize>,
        reason: Reason,
        until: Instant,
        shown: &str,
        now: Instant,
    ) {
        match (reason, li) {
            (Reason::Poll { .. }, Some(li)) => self.pause_listener(li, reason, until, now),
            _ => {
                if self.services[s].paused_until.is_none() {
                    self.pause(s, reason.key(), reason.to_string(), shown, until, now);
                }
            }
        }
    }

    /// Stops watching listener `li` until `until` (a poll limit).
    fn pause_listener(&mut self, li: usize, reason: Reason, until: Instant, now: Instant) {
        let l = &mut self.listeners[li];
        if l.paused_until.is_some() {
            return;
        }
        l.paused_until = Some(until);
        let s = l.service;
        self.timed_listener(li);
        let rt = &self.services[s];
        *self
            .metrics
            .service(&rt.label)
            .refused
            .entry(reason.key())
            .or_default() += 1;
        emit(
            Level::Warn,
            "pause",
            &[
                ("service", V::S(&rt.label)),
                ("addr", V::O(self.listeners[li].local.to_string())),
                (
                    "for",
                    V::O(format!(
                        "{}ms",
                        until.saturating_duration_since(now).as_millis()
                    )),
                ),
                ("reason", V::O(reason.to_string())),
                ("fate", V::S("queue")),
            ],
        );
        self.sync(s);
    }

    pub(super) fn pause(
        &mut self,
        s: usize,
        key: &'static str,
        reason: String,
        shown: &str,
        until: Instant,
        now: Instant,
    ) {
        let rt = &mut self.services[s];
        *self
            .metrics
            .service(&rt.label)
            .refused
            .entry(key)
            .or_default() += 1;
        emit(
            Level::Warn,
            "pause",
            &[
                ("service", V::S(&rt.label)),
                ("peer", V::S(shown)),
                (
                    "for",
                    V::O(format!(
                        "{}s",
                        until.saturating_duration_since(now).as_secs()
                    )),
                ),
                ("reason", V::O(reason)),
            ],
        );
        rt.paused_until = Some(until);
        self.timed_service(s);
        self.sync(s);
    }
}

/// Carries out a refusal on an accepted connection. Never blocks: the
/// message goes out in one non-blocking send (it is small enough for any
/// socket buffer); what the client sent is read away first (non-blocking)
/// so that closing does not turn into a reset that could discard it.
pub(super) fn perform(conn: OwnedFd, fate: Fate, message: &[u8]) {
    let fd = conn.as_raw_fd();
    match fate {
        Fate::Queue | Fate::Close => {}
        Fate::Reset => {
            let _ = socket::setsockopt(
                &conn,
                sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
        }
        Fate::Message => {
            let flags = socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_NOSIGNAL;
            let mut sink = [0u8; 512];
            for _ in 0..8 {
                match socket::recv(fd, &mut sink, socket::MsgFlags::MSG_DONTWAIT) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            let _ = socket::send(fd, &message[..message.len().min(MAX_MESSAGE)], flags);
            let _ = socket::shutdown(fd, socket::Shutdown::Write);
        }
    }
    drop(conn);
}
