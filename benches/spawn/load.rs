//! The load generator: one thread, one epoll (mio), non-blocking sockets,
//! exactly `c` connections in flight. Each connection: connect → optional
//! request (then shutdown of the write side) → read to EOF → close. The
//! latency runs from connect to EOF. Refused, reset, timed-out and short
//! (wrong reply) connections are counted apart. Bounded: every connection
//! has a deadline, and so has the whole run.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub ok: usize,
    pub refused: usize,
    pub reset: usize,
    pub timeout: usize,
    pub short: usize,
    pub other: usize,
    /// Latencies of the successful connections, sorted.
    pub lat: Vec<Duration>,
    pub elapsed: Duration,
}

impl Stats {
    pub fn errors(&self) -> usize {
        self.refused + self.reset + self.timeout + self.short + self.other
    }

    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.lat.len() - 1) as f64 * q).round() as usize;
        self.lat[i]
    }

    pub fn summary(&self) -> String {
        format!(
            "{:.0} conn/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; ok {} refused {} reset {} timeout {} short {} other {}",
            self.rate(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.9)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0)),
            self.ok,
            self.refused,
            self.reset,
            self.timeout,
            self.short,
            self.other
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How each connection behaves.
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a> {
    /// Sent once connected, followed by a shutdown of the write side.
    pub request: Option<&'a [u8]>,
    /// The whole reply expected before EOF.
    pub expect: &'a [u8],
    /// Per-connection deadline.
    pub timeout: Duration,
}

struct Conn {
    stream: TcpStream,
    start: Instant,
    connected: bool,
    got: usize,
    matches: bool,
}

enum End {
    Ok,
    Refused,
    Reset,
    Short,
    Other,
}

/// Runs `n` connections to `addr`, `c` at a time.
pub fn run(addr: SocketAddr, n: usize, c: usize, plan: Plan<'_>) -> Stats {
    let mut poll = Poll::new().expect("epoll");
    let mut events = Events::with_capacity(c.max(16));
    let mut slots: Vec<Option<Conn>> = (0..c).map(|_| None).collect();
    let mut st = Stats {
        lat: Vec::with_capacity(n),
        ..Stats::default()
    };
    let mut started = 0;
    let mut done = 0;
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    // The whole run is bounded: every connection times out by itself, so
    // this is only a backstop.
    let run_deadline = t0 + plan.timeout * 2 + Duration::from_secs(n as u64);

    let open = |slot: usize, slots: &mut Vec<Option<Conn>>, poll: &Poll, st: &mut Stats| -> bool {
        match TcpStream::connect(addr) {
            Ok(mut stream) => {
                poll.registry()
                    .register(
                        &mut stream,
                        Token(slot),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .expect("register");
                slots[slot] = Some(Conn {
                    stream,
                    start: Instant::now(),
                    connected: false,
                    got: 0,
                    matches: true,
                });
                true
            }
            Err(e) => {
                match e.kind() {
                    ErrorKind::ConnectionRefused => st.refused += 1,
                    _ => st.other += 1,
                }
                false
            }
        }
    };

    while done < n && Instant::now() < run_deadline {
        for slot in 0..c {
            while slots[slot].is_none() && started < n {
                started += 1;
                if !open(slot, &mut slots, &poll, &mut st) {
                    done += 1;
                }
            }
        }
        if done >= n {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .or_else(|e| {
                if e.kind() == ErrorKind::Interrupted {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .expect("epoll_wait");
        for ev in events.iter() {
            let slot = ev.token().0;
            let Some(conn) = slots[slot].as_mut() else {
                continue;
            };
            let end = step(conn, &plan, &mut buf);
            if let Some(end) = end {
                let conn = slots[slot].take().unwrap();
                match end {
                    End::Ok => {
                        st.ok += 1;
                        st.lat.push(conn.start.elapsed());
                    }
                    End::Refused => st.refused += 1,
                    End::Reset => st.reset += 1,
                    End::Short => st.short += 1,
                    End::Other => st.other += 1,
                }
                done += 1;
                // Dropping the stream closes it (and deregisters it).
            }
        }
        let now = Instant::now();
        for slot in slots.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|c| now.duration_since(c.start) > plan.timeout)
            {
                slot.take();
                st.timeout += 1;
                done += 1;
            }
        }
    }
    // Anything still open at the backstop counts as timed out.
    let open_left = slots.iter().filter(|s| s.is_some()).count();
    st.timeout += open_left + (n - started);
    st.elapsed = t0.elapsed();
    st.lat.sort();
    st
}

/// Advances one connection after an event; `Some` when it has ended.
fn step(conn: &mut Conn, plan: &Plan<'_>, buf: &mut [u8]) -> Option<End> {
    if !conn.connected {
        match conn.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Some(classify(&e)),
            Ok(None) => {}
        }
        match conn.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotConnected => return None,
            Err(e) => return Some(classify(&e)),
        }
        conn.connected = true;
        if let Some(req) = plan.request {
            // A short request fits the socket buffer at once.
            match conn.stream.write(req) {
                Ok(k) if k == req.len() => {}
                Ok(_) => return Some(End::Other),
                Err(e) => return Some(classify(&e)),
            }
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
    }
    loop {
        match conn.stream.read(buf) {
            Ok(0) => {
                let whole = conn.got == plan.expect.len() && conn.matches;
                return Some(if whole { End::Ok } else { End::Short });
            }
            Ok(k) => {
                let from = conn.got;
                conn.got += k;
                if conn.got > plan.expect.len() || plan.expect[from..conn.got] != buf[..k] {
                    conn.matches = false;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Some(classify(&e)),
        }
    }
}

fn classify(e: &std::io::Error) -> End {
    match e.kind() {
        ErrorKind::ConnectionRefused => End::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            End::Reset
        }
        _ => End::Other,
    }
}

/// The in-process server with no spawn at all: accepts, writes the reply,
/// closes, on `threads` threads. What the network path alone costs, and
/// the check that this generator is not the bottleneck.
pub struct NoSpawn {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl NoSpawn {
    pub fn start(reply: &'static [u8], threads: usize) -> NoSpawn {
        use std::sync::atomic::{AtomicBool, Ordering};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let l = l.try_clone().unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    for s in l.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        if let Ok(mut s) = s {
                            let _ = s.write_all(reply);
                        }
                    }
                })
            })
            .collect();
        NoSpawn {
            addr,
            stop,
            threads,
        }
    }
}

impl Drop for NoSpawn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // One connection per thread wakes each accept so it sees `stop`.
        for _ in 0..self.threads.len() {
            let _ = std::net::TcpStream::connect(self.addr);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
