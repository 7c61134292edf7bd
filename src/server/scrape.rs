//! The metrics endpoint: scrapes accepted and answered from the loop,
//! never blocking it.
//!
//! Part of the loop's state (`super::Server`): owns the scrape
//! connections and their time-outs. Must not: keep anything per peer.

use super::*;

impl Server {
    /// The metrics socket is readable: take the scrapes.
    pub(super) fn accept_scrapes(&mut self) {
        loop {
            let Some(l) = &self.metrics_listener else {
                return;
            };
            match l.accept() {
                Ok((stream, _)) => {
                    let slot = match self.scrapes.iter().position(Option::is_none) {
                        Some(i) => i,
                        None if self.scrapes.len() < MAX_SCRAPES => {
                            self.scrapes.push(None);
                            self.scrapes.len() - 1
                        }
                        None => continue, // too many at once: closed
                    };
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let raw = stream.as_raw_fd();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut SourceFd(&raw),
                            Token(SCRAPE_BASE + slot),
                            Interest::READABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    self.scrapes[slot] = Some(Scrape {
                        stream,
                        request: Vec::new(),
                        reply: None,
                        deadline: Instant::now() + SCRAPE_TIMEOUT,
                    });
                    self.serve_scrape(slot);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("metrics: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Reads a scrape's request, then writes the answer, without blocking.
    pub(super) fn serve_scrape(&mut self, slot: usize) {
        let Some(Some(sc)) = self.scrapes.get_mut(slot) else {
            return;
        };
        if sc.reply.is_none() {
            let mut buf = [0u8; 2048];
            loop {
                match sc.stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        sc.request.extend_from_slice(&buf[..n]);
                        if sc.request.len() >= metrics::MAX_REQUEST {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.close_scrape(slot);
                        return;
                    }
                }
            }
            let done = sc.request.windows(4).any(|w| w == b"\r\n\r\n")
                || sc.request.windows(2).any(|w| w == b"\n\n")
                || sc.request.len() >= metrics::MAX_REQUEST;
            if !done {
                return;
            }
            let body = self.render_metrics();
            let Some(Some(sc)) = self.scrapes.get_mut(slot) else {
                return;
            };
            sc.reply = Some((metrics::http_response(&sc.request, &body), 0));
        }
        let Some(Some(sc)) = self.scrapes.get_mut(slot) else {
            return;
        };
        let (out, off) = sc.reply.as_mut().expect("set above");
        while *off < out.len() {
            match sc.stream.write(&out[*off..]) {
                Ok(n) => *off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let raw = sc.stream.as_raw_fd();
                    let _ = self.poll.registry().reregister(
                        &mut SourceFd(&raw),
                        Token(SCRAPE_BASE + slot),
                        Interest::WRITABLE,
                    );
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close_scrape(slot);
    }

    pub(super) fn close_scrape(&mut self, slot: usize) {
        if let Some(sc) = self.scrapes.get_mut(slot).and_then(Option::take) {
            let raw = sc.stream.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
    }

    pub(super) fn render_metrics(&self) -> String {
        let mut gauges = BTreeMap::new();
        for rt in &self.services {
            gauges.insert(
                rt.label.clone(),
                Gauges {
                    running: rt.counters.running().into(),
                    paused: rt.paused_until.is_some(),
                },
            );
        }
        let (fds, rss) = metrics::self_usage();
        self.metrics.render(&gauges, fds, rss)
    }
}
