//! Reload: the configuration read again and swapped in by bind key.
//!
//! Part of the loop's state (`super::Server`): owns the swap that keeps
//! sockets whose bind key is unchanged, binds new ones, closes the rest,
//! and moves counters, pauses, children and held wait sockets to the
//! service that takes a socket over. Must not: parse text (config does).

use super::*;

impl Server {
    /// Installs `services`: every endpoint whose bind key an existing
    /// listener has keeps that socket (no moment without a listener, no
    /// queued connection lost); the others are bound; listeners no service
    /// wants are closed. Counters, pauses, children and held wait sockets
    /// follow the service that takes over a listener. At start-up
    /// (`fatal`) a bind failure is an error; on reload it leaves that
    /// service out and the rest goes on.
    pub(super) fn swap(&mut self, services: Vec<Service>, fatal: bool) -> Result<usize, Error> {
        let mut left_out = 0;
        let endpoints = services.iter().map(|s| s.endpoints.len()).sum();
        listen::plan_fds(endpoints);
        let mut old_listeners: Vec<Option<ListenerRt>> = std::mem::take(&mut self.listeners)
            .into_iter()
            .map(Some)
            .collect();
        let old_services = std::mem::take(&mut self.services);
        let mut old_to_new_listener: Vec<Option<usize>> = vec![None; old_listeners.len()];
        let mut old_to_new_service: Vec<Option<usize>> = vec![None; old_services.len()];
        let mut new_listeners: Vec<ListenerRt> = Vec::with_capacity(endpoints);
        let mut new_services: Vec<ServiceRt> = Vec::with_capacity(services.len());
        // The old sockets by bind key: a reload of 10,000 services finds
        // each kept socket in one look-up, not a scan of all of them.
        // (The first socket of a key, then `same_key` chains the others:
        // no list per key.)
        let mut by_key: crate::fasthash::FastMap<_, usize> =
            crate::fasthash::FastMap::with_capacity_and_hasher(
                old_listeners.len(),
                Default::default(),
            );
        let mut same_key = vec![usize::MAX; old_listeners.len()];
        for (j, l) in old_listeners.iter().enumerate().rev() {
            if let Some(l) = l {
                if let Some(first) = by_key.insert(l.key.clone(), j) {
                    same_key[j] = first;
                }
            }
        }
        // Thousands of new sockets are born above the lift base rather
        // than moved there one by one.
        let fresh = services
            .iter()
            .flat_map(|s| &s.endpoints)
            .filter(|ep| !by_key.contains_key(&ep.bind_key()))
            .count();
        let lifting = listen::lifting(fresh);
        // One `listen` line per new socket: written in blocks.
        let gathering = (fresh > 64).then(events::gather);
        let mut taken: Vec<(usize, ListenerRt)> = Vec::new();
        'svc: for svc in services {
            let idx = new_services.len();
            let label = svc.label();
            let mut mine: Vec<usize> = Vec::with_capacity(svc.endpoints.len());
            let mut fresh: Vec<(listen::Bound, &Endpoint)> = Vec::new();
            taken.clear();
            for ep in &svc.endpoints {
                let key = ep.bind_key();
                let mut kept = by_key.get(&key).copied();
                while let Some(j) = kept.filter(|&j| old_listeners[j].is_none()) {
                    kept = Some(same_key[j]).filter(|&n| n != usize::MAX);
                }
                let opened = match kept {
                    // A kept socket gets what changed re-applied.
                    Some(j) => {
                        let mut l = old_listeners[j].take().expect("present");
                        // The endpoint as the socket's last service had it
                        // (the listener keeps no copy of its own).
                        let was = old_services
                            .get(l.service)
                            .and_then(|o| o.svc.endpoints.iter().find(|e| e.bind_key() == key))
                            .unwrap_or(ep);
                        let r = listen::reapply(&l.fd, was, ep, l.node)
                            .map(|()| keep_file(&mut l, ep))
                            .map_err(|(what, errno)| {
                                format!("{label}: {what}: {} ({})", errno.desc(), svc.origin)
                            });
                        taken.push((j, l));
                        r.map(|()| None)
                    }
                    None => open_endpoint(&svc, ep),
                };
                match opened {
                    Ok(Some(b)) => fresh.push((b, ep)),
                    Ok(None) => {}
                    Err(m) if fatal => {
                        // Put back what was taken so that nothing leaks.
                        for (j, l) in taken.drain(..) {
                            old_listeners[j] = Some(l);
                        }
                        return Err(Error::Bind(m));
                    }
                    Err(m) => {
                        error!("reload: {m}; service left out");
                        left_out += 1;
                        for (j, l) in taken.drain(..) {
                            old_listeners[j] = Some(l);
                        }
                        continue 'svc;
                    }
                }
            }
            let nonblocking = loop_owned(&svc);
            for (j, mut l) in taken.drain(..) {
                if l.nonblocking != nonblocking {
                    let _ = set_nonblocking(l.fd.as_raw_fd(), nonblocking);
                    l.nonblocking = nonblocking;
                }
                if l.service < old_to_new_service.len() {
                    old_to_new_service[l.service].get_or_insert(idx);
                }
                l.service = idx;
                old_to_new_listener[j] = Some(new_listeners.len());
                mine.push(new_listeners.len());
                new_listeners.push(l);
            }
            for (b, ep) in fresh {
                let (key, sock_type) = (ep.bind_key(), ep.sock_type);
                emit(
                    Level::Info,
                    "listen",
                    &[
                        ("service", V::S(&label)),
                        ("addr", V::O(b.local.to_string())),
                        ("type", V::S(sock_type.as_str())),
                        ("proto", V::S(ep.proto())),
                        ("mode", V::S(mode_name(svc.mode))),
                        ("handover", V::O(svc.handover.name())),
                    ],
                );
                mine.push(new_listeners.len());
                new_listeners.push(ListenerRt {
                    fd: b.fd,
                    wildcard: matches!(b.local, Address::Inet(a) if a.ip().is_unspecified()),
                    key,
                    local: b.local,
                    sock_type,
                    nonblocking,
                    service: idx,
                    registered: false,
                    seen: false,
                    queued: false,
                    wait: WaitState::default(),
                    poll: None,
                    paused_until: None,
                    node: b.node,
                    _unlink: b.unlink,
                });
            }
            mine.sort_unstable();
            new_services.push(ServiceRt {
                svc,
                label,
                image: None,
                counters: Counters::default(),
                paused_until: None,
                listeners: mine,
                fd_share: 0,
                backend: None,
            });
        }
        // Counters and pauses follow the service that took over a socket.
        // (Children on their way to exec keep the old images they read
        // alive themselves: nothing waits for them here.)
        let mut old_labels: Vec<String> = Vec::with_capacity(old_services.len());
        let mut retired = Vec::new();
        for (mut old, n) in old_services.into_iter().zip(&old_to_new_service) {
            old_labels.push(std::mem::take(&mut old.label));
            let kept = match n {
                Some(n) => {
                    new_services[*n].counters = old.counters;
                    new_services[*n].paused_until = old.paused_until;
                    // A backend runs on if its service line is unchanged.
                    let same = new_services[*n].svc.backend == old.svc.backend
                        && new_services[*n].svc.handler == old.svc.handler
                        && new_services[*n].svc.creds == old.svc.creds;
                    if same {
                        new_services[*n].backend = old.backend.take();
                    }
                    same
                }
                None => false,
            };
            if !kept {
                if let Some(b) = old.backend.take() {
                    retired.push((b, old_labels.last().cloned().unwrap_or_default()));
                }
            }
        }
        for rt in &mut new_services {
            if rt.backend.is_none() {
                rt.backend = rt
                    .svc
                    .backend
                    .as_ref()
                    .map(|c| Box::new(backend::BackendRt::new(c)));
            }
        }
        // Listeners nobody wants: out of the loop, then closed.
        for l in old_listeners.into_iter().flatten() {
            if l.registered {
                let raw = l.fd.as_raw_fd();
                let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
            }
            emit(
                Level::Info,
                "close",
                &[
                    (
                        "service",
                        V::S(old_labels.get(l.service).map_or("-", String::as_str)),
                    ),
                    ("addr", V::O(l.local.to_string())),
                ],
            );
        }
        // Tokens are listener indices: a kept socket whose index changed is
        // registered again under its new one (edge-triggered, the kernel
        // then reports it again if it is readable: nothing is missed). One
        // at the same index keeps its registration: a reload that changes
        // one line of 10,000 touches that line's socket, not every one.
        let mut old_index = vec![usize::MAX; new_listeners.len()];
        for (j, n) in old_to_new_listener.iter().enumerate() {
            if let Some(n) = *n {
                old_index[n] = j;
            }
        }
        for (i, l) in new_listeners.iter().enumerate() {
            if l.registered && old_index[i] != i {
                let raw = l.fd.as_raw_fd();
                if let Err(e) = self.poll.registry().reregister(
                    &mut SourceFd(&raw),
                    Token(i),
                    Interest::READABLE,
                ) {
                    error!("re-register {}: {e}", l.local);
                }
            }
        }
        self.children.remap(|c: &mut Child| {
            c.service = old_to_new_service
                .get(c.service)
                .copied()
                .flatten()
                .unwrap_or(usize::MAX);
            if let Some(w) = &mut c.wait {
                w.remap(&old_to_new_listener);
            }
        });
        for h in &mut self.held {
            h.hold.remap(&old_to_new_listener);
        }
        self.inside_remap(&old_to_new_service);
        self.relays_remap(&old_to_new_service);
        self.sessions_remap(&old_to_new_listener);
        self.services = new_services;
        drop(lifting);
        drop(gathering);
        self.listeners = new_listeners;
        self.listeners.shrink_to_fit();
        self.set_loop_ports();
        self.set_fd_shares();
        self.index_timed();
        self.probes_reregister();
        for (mut b, label) in retired {
            self.backend_retire(&mut b, &label);
        }
        // Listeners waiting for their next turn keep it, under their new
        // index.
        let backlog = std::mem::take(&mut self.backlog);
        for l in &mut self.listeners {
            l.queued = false;
        }
        for j in backlog {
            if let Some(Some(n)) = old_to_new_listener.get(j) {
                self.queue(*n);
            }
        }
        // The services live on as copies made now, when the load's raw
        // services, the resolver's work and the old configuration are all
        // freed. The loaded ones' pieces were made among those: kept, they
        // pinned a free chunk of 161 or 289 bytes between nearly every two
        // services (glibc's malloc_info at 10,000 services: 4.2 MB, RSS at
        // ready 13.9 MiB, 18.8 after three reloads). Each copy fills the
        // holes the last original left: 9.8 MiB at ready, 12.5 after three
        // reloads. (A clone is exact too: no spare capacity from pushes.)
        for rt in &mut self.services {
            rt.svc = rt.svc.clone();
        }
        for i in 0..self.services.len() {
            self.sync(i);
        }
        Ok(left_out)
    }

    /// Shares out the descriptors doorman may hold for clients: its fd
    /// limit less the listeners and a reserve ([`FD_RESERVE`], for
    /// accepts and handler start-up), split evenly between the services
    /// whose tables hold client descriptors (internal connections,
    /// pending PROXY reads, UDP sessions). No service can then take the
    /// descriptors another needs to accept. A limit the configuration
    /// sets above its share is cut, with a warning.
    pub(super) fn set_fd_shares(&mut self) {
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        let reserve = FD_RESERVE.min(limit / 2);
        let budget = limit.saturating_sub(reserve + self.listeners.len() as u64);
        let holders = self.services.iter().filter(|rt| rt.holds_fds()).count() as u64;
        let share = (budget / holders.max(1)).clamp(1, u64::from(u32::MAX)) as u32;
        for rt in &mut self.services {
            rt.fd_share = share;
            if let Some(max) = rt.svc.limits.max_instances.filter(|&m| m > share) {
                if rt.holds_fds() && rt.svc.proxy.is_none() {
                    warn!(
                        "{}: at most {share} connections held at once, not {max}: \
                         the fd limit ({limit}) is shared by {holders} such services ({})",
                        rt.label, rt.svc.origin
                    );
                }
            }
        }
    }

    /// SIGHUP: read the configuration again; swap only if all of it is good.
    pub(super) fn reload(&mut self) {
        let t = Instant::now();
        if let Some(n) = &self.notify {
            n.send(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}",
                notify::monotonic_usec()
            ));
        }
        match config::load(&self.opts.sources) {
            Err(errors) => {
                for e in &errors {
                    error!("reload: {e}");
                }
                emit(
                    Level::Warn,
                    "reload",
                    &[
                        ("result", V::S("failed")),
                        ("errors", V::N(errors.len() as i64)),
                        ("kept", V::S("old-configuration")),
                        ("took", V::O(events::took(t))),
                    ],
                );
            }
            Ok(loaded) => {
                for w in &loaded.warnings {
                    warn!("{w}");
                }
                let left_out = self.swap(loaded.services, false).unwrap_or(0);
                self.loaded = true;
                emit(
                    if left_out == 0 {
                        Level::Info
                    } else {
                        Level::Warn
                    },
                    "reload",
                    &[
                        ("result", V::S(if left_out == 0 { "ok" } else { "partial" })),
                        ("left_out", V::N(left_out as i64)),
                        ("services", V::N(self.services.len() as i64)),
                        ("listeners", V::N(self.listeners.len() as i64)),
                        ("took", V::O(events::took(t))),
                    ],
                );
            }
        }
        self.notify_status("READY=1");
    }
}

/// A kept unix socket file is removed at exit, or kept, as the reloaded
/// configuration now says (`RemoveOnStop=`).
fn keep_file(l: &mut ListenerRt, ep: &Endpoint) {
    let Address::Unix(path) = &ep.addr else {
        return;
    };
    if listen::abstract_name(path).is_some() {
        return;
    }
    match (ep.opts.keep_on_stop, l._unlink.take()) {
        (false, None) => l._unlink = Some(UnlinkOnDrop(path.clone())),
        (true, Some(u)) => u.disarm(),
        (_, u) => l._unlink = u,
    }
}
