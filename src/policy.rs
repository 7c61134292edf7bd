//! Pure admission decisions: access lists, instances, per-source counts
//! and token buckets, rate windows, crash loops, and the refusal log gate.
//!
//! Owns: the counters of one service and the rules that turn them, a
//! connection's source and a time passed in, into a [`Decision`].
//! Must not: do I/O or read the clock itself; the loop performs the
//! decision and logs it. Every map here is bounded.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::config::acl::{self, Cidr};
use crate::config::{Access, Limits};

#[cfg(test)]
mod props;

/// Per-source entries kept at most; past it idle entries are dropped, and
/// if every entry has a handler running the new source is not tracked.
pub const SOURCE_MAX: usize = 4096;
/// Refusals are logged at most once per source per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Sources remembered by the log gate.
const LOG_GATE_MAX: usize = 1024;

/// Why a connection was refused or a service paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `max` spawns within `interval` (inetd's "looping", systemd's
    /// trigger limit): the service pauses after the last one.
    Rate { max: u32, interval: Duration },
    /// `max` connections or wake-ups of one socket within `interval`
    /// (systemd's poll limit): that socket is not watched for a while.
    Poll { max: u32, interval: Duration },
    /// The source's token bucket is empty.
    SourceRate { rate: u32, interval: Duration },
    /// The source already has `max` handlers running.
    SourceInstances { max: u32 },
    /// The service has `max` handlers running and refuses rather than queues.
    Instances { max: u32 },
    /// The access list refuses the client.
    Denied,
    /// The service is paused (rate or crash loop) and refuses meanwhile.
    Paused,
    /// `max` handlers failed soon after starting within `window`.
    Crash { max: u32, window: Duration },
    /// Not from a trusted proxy, or no valid PROXY header.
    Proxy,
    /// A UDP request to an internal service from a privileged port, an
    /// internal service's port or a broadcast address (loop protection).
    Loop,
}

impl Reason {
    /// The short name used as a metrics label and in logs.
    pub fn key(&self) -> &'static str {
        match self {
            Reason::Rate { .. } => "rate",
            Reason::Poll { .. } => "poll",
            Reason::SourceRate { .. } => "per-source-rate",
            Reason::SourceInstances { .. } => "per-source-instances",
            Reason::Instances { .. } => "instances",
            Reason::Denied => "access",
            Reason::Paused => "paused",
            Reason::Crash { .. } => "crash-loop",
            Reason::Proxy => "proxy",
            Reason::Loop => "loop",
        }
    }

    /// Whether a per-source limit refused (its fate is `on-source`).
    pub fn per_source(&self) -> bool {
        matches!(
            self,
            Reason::SourceRate { .. } | Reason::SourceInstances { .. }
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rate { max, interval } => write!(
                f,
                "rate: {max} connections in {}s (looping?)",
                interval.as_secs_f64()
            ),
            Reason::Poll { max, interval } => write!(
                f,
                "poll: {max} connections on this socket in {}s",
                interval.as_secs_f64()
            ),
            Reason::SourceRate { rate, interval } => write!(
                f,
                "per-source-rate: over {rate} connections per {}s from this source",
                interval.as_secs_f64()
            ),
            Reason::SourceInstances { max } => write!(
                f,
                "per-source-instances: {max} handlers already running for this source"
            ),
            Reason::Instances { max } => {
                write!(f, "instances: {max} handlers already running")
            }
            Reason::Denied => write!(f, "access: refused by the access list"),
            Reason::Paused => write!(f, "paused: the service is paused"),
            Reason::Crash { max, window } => write!(
                f,
                "crash-loop: {max} handlers failed soon after starting within {}s",
                window.as_secs_f64()
            ),
            Reason::Proxy => write!(f, "proxy: not a trusted proxy"),
            Reason::Loop => write!(
                f,
                "loop: from a privileged port, an internal service's port or a broadcast address"
            ),
        }
    }
}

/// What to do with an accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Spawn the handler (the admission is already counted): the source
    /// key to release when it exits, if the source is tracked; and, when
    /// this admission reached the service's rate limit or its socket's
    /// poll limit, the pause that follows it (until the instant given).
    /// No connection is refused for a rate: the limit is reached by an
    /// admitted one, and the next ones wait in the kernel's backlog.
    Admit(Option<IpAddr>, Option<(Reason, Instant)>),
    /// Refuse this connection; the service goes on.
    Refuse(Reason),
}

/// A count of events since a start: one per socket for the poll limit,
/// one per service for the rate limit.
pub type Window = Option<(Instant, u32)>;

/// The key a source is counted under: its address cut to the service's
/// prefix (IPv4-mapped IPv6 counts as IPv4).
pub fn source_key(ip: IpAddr, limits: &Limits) -> IpAddr {
    let ip = ip.to_canonical();
    let len = if ip.is_ipv4() {
        limits.prefix4
    } else {
        limits.prefix6
    };
    acl::mask(ip, len)
}

/// Whether the access list lets `ip` in: the longest matching prefix of
/// either list decides, allow winning a tie (as systemd: allow beats
/// deny); no match is allowed only when the allow list is empty.
pub fn allowed(access: &Access, ip: IpAddr) -> bool {
    let best = |list: &[Cidr]| {
        list.iter()
            .filter(|c| c.contains(ip))
            .map(|c| i16::from(c.len))
            .max()
    };
    match (best(&access.allow), best(&access.deny)) {
        (Some(a), Some(d)) => a >= d,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (None, None) => access.allow.is_empty(),
    }
}

/// Whether a unix-socket peer with these credentials may connect.
pub fn allowed_unix(access: &Access, uid: u32, gid: u32) -> bool {
    (access.uids.is_empty() && access.gids.is_empty())
        || access.uids.contains(&uid)
        || access.gids.contains(&gid)
}

#[derive(Clone, Copy, Debug)]
struct Source {
    running: u32,
    /// Tokens left at `stamp` (only with a bucket).
    tokens: f64,
    stamp: Instant,
}

/// The counters of one service.
#[derive(Debug, Default)]
pub struct Counters {
    running: u32,
    /// Connections from a trusted proxy whose header has not arrived:
    /// instances too (each holds one of doorman's descriptors).
    pending: u32,
    /// The rest, made at the service's first connection: of 10,000
    /// services the idle ones cost 8 bytes each here, not 200.
    rest: Option<Box<Rest>>,
}

/// What [`Counters`] keeps once the service has been used.
#[derive(Debug, Default)]
struct Rest {
    window: Window,
    /// The poll count of connections that came on no socket of the
    /// service's own (tcpmux).
    poll_window: Window,
    sources: HashMap<IpAddr, Source>,
    /// Start-up failures within the crash window, oldest first, with how
    /// each ended.
    failures: VecDeque<(Instant, String)>,
    /// Crash-loop pauses in a row with no success between them.
    crash_level: u32,
    /// Rate pauses in a row, and when the last one ends.
    rate_level: u32,
    rate_resumes: Option<Instant>,
    gate: LogGate,
}

/// The first pause of a limit that escalates: a few seconds, so that a
/// burst costs a well-behaved client at most that much.
pub const FIRST_PAUSE: Duration = Duration::from_secs(5);

/// The pause after `level` pauses in a row: [`FIRST_PAUSE`] doubled
/// `level` times, never more than `cap` (and `cap` itself when it is
/// shorter than the first step).
pub fn escalated(level: u32, cap: Duration) -> Duration {
    FIRST_PAUSE
        .checked_mul(1u32 << level.min(20))
        .unwrap_or(cap)
        .min(cap)
}

/// Whether an end counted as a failure could be its client's doing: a
/// failing exit status other than 126 and 127 (cannot execute, not
/// found). Crash signals and exec failures are the handler's alone.
fn ambiguous(how: &str) -> bool {
    how.starts_with("status=") && !matches!(how, "status=126" | "status=127")
}

impl Counters {
    /// Handlers running now.
    pub fn running(&self) -> u32 {
        self.running
    }

    /// PROXY headers being waited for now.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// A PROXY header is being waited for (`true`), or no longer.
    pub fn set_pending(&mut self, started: bool) {
        if started {
            self.pending += 1;
        } else {
            self.pending = self.pending.saturating_sub(1);
        }
    }

    /// True when the instance limit is reached (pending PROXY reads
    /// count).
    pub fn at_capacity(&self, limits: &Limits) -> bool {
        limits
            .max_instances
            .is_some_and(|m| self.running + self.pending >= m)
    }

    /// Decides about one accepted connection from `source` (already a
    /// [`source_key`]) at `now`, and counts it when admitted, in the
    /// service's counts and in `poll`, the count of the socket it came on.
    pub fn admit(
        &mut self,
        limits: &Limits,
        source: Option<IpAddr>,
        now: Instant,
        poll: Option<&mut Window>,
    ) -> Decision {
        if let Some(max) = limits.max_instances {
            if self.running + self.pending >= max {
                return Decision::Refuse(Reason::Instances { max });
            }
        }
        let r = self.rest.get_or_insert_with(Box::default);
        let per_source = limits.max_per_source.is_some() || limits.source_rate.is_some();
        if let (Some(ip), true) = (source, per_source) {
            if let Some(s) = r.sources.get_mut(&ip) {
                if let Some(max) = limits.max_per_source {
                    if s.running >= max {
                        return Decision::Refuse(Reason::SourceInstances { max });
                    }
                }
                if let Some(b) = limits.source_rate {
                    s.tokens = refill(s.tokens, s.stamp, now, b);
                    s.stamp = now;
                    if s.tokens < 1.0 {
                        return Decision::Refuse(Reason::SourceRate {
                            rate: b.rate,
                            interval: b.interval,
                        });
                    }
                }
            }
        }
        // The poll limit of the socket it came on (the service's own
        // count for a connection handed over by tcpmux), then the
        // service's rate limit: each counts this admission, and the one
        // reached last decides the pause that follows (the service's
        // covers its sockets').
        let mut then = None;
        let poll = poll.unwrap_or(&mut r.poll_window);
        let pairs: [(Option<crate::config::Rate>, &mut Window, bool); 2] = [
            (limits.poll, poll, true),
            (limits.rate, &mut r.window, false),
        ];
        for (rate, window, is_poll) in pairs {
            let Some(rate) = rate.filter(|r| r.max > 0) else {
                continue;
            };
            let (start, count) = match *window {
                Some((start, count)) if now.duration_since(start) < rate.interval => (start, count),
                _ => (now, 0),
            };
            if count + 1 >= rate.max {
                *window = None;
                let (max, interval) = (rate.max, rate.interval);
                let (reason, pause) = if is_poll {
                    (Reason::Poll { max, interval }, rate.pause)
                } else if limits.rate_fixed {
                    (Reason::Rate { max, interval }, rate.pause)
                } else {
                    // Reached again within an interval of the last pause's
                    // end: the excess repeats, the pause doubles.
                    let again = r
                        .rate_resumes
                        .is_some_and(|t| now.saturating_duration_since(t) < interval);
                    r.rate_level = if again { r.rate_level + 1 } else { 0 };
                    let p = escalated(r.rate_level, rate.pause);
                    r.rate_resumes = Some(now + p);
                    (Reason::Rate { max, interval }, p)
                };
                then = Some((reason, now + pause));
            } else {
                *window = Some((start, count + 1));
            }
        }
        self.running += 1;
        let tracked = match (source, per_source) {
            (Some(ip), true) => self.count_source(ip, limits, now).then_some(ip),
            _ => None,
        };
        Decision::Admit(tracked, then)
    }

    /// Counts one admission for `ip`; false when the table is full of
    /// sources with handlers running (the source goes untracked).
    fn count_source(&mut self, ip: IpAddr, limits: &Limits, now: Instant) -> bool {
        let r = self.rest.get_or_insert_with(Box::default);
        if !r.sources.contains_key(&ip) && r.sources.len() >= SOURCE_MAX {
            // An idle source whose bucket is full again is the same as a
            // new one: forget those first, then any idle one.
            r.sources.retain(|_, s| {
                s.running > 0
                    || limits
                        .source_rate
                        .is_some_and(|b| refill(s.tokens, s.stamp, now, b) < f64::from(b.burst))
            });
            if r.sources.len() >= SOURCE_MAX {
                r.sources.retain(|_, s| s.running > 0);
            }
            if r.sources.len() >= SOURCE_MAX {
                return false;
            }
        }
        let burst = limits.source_rate.map_or(0.0, |b| f64::from(b.burst));
        let s = r.sources.entry(ip).or_insert(Source {
            running: 0,
            tokens: burst,
            stamp: now,
        });
        s.running += 1;
        if limits.source_rate.is_some() {
            s.tokens -= 1.0;
        }
        true
    }

    /// A handler admitted for `source` (as [`Decision::Admit`] returned
    /// it) has exited or failed to start.
    pub fn release(&mut self, source: Option<IpAddr>) {
        self.running = self.running.saturating_sub(1);
        if let (Some(ip), Some(r)) = (source, &mut self.rest) {
            if let Some(s) = r.sources.get_mut(&ip) {
                s.running = s.running.saturating_sub(1);
            }
        }
    }

    /// A handler ended after `lived`, `how` (`status=1`, `signal=SIGSEGV`,
    /// an exec error): counts it toward the crash-loop limit when it
    /// `failed` (was at fault) soon after starting; one that `succeeded`
    /// ends the escalation. Returns the end of the pause when the limit is
    /// reached, and which failures caused it.
    pub fn ended(
        &mut self,
        limits: &Limits,
        failed: bool,
        succeeded: bool,
        lived: Duration,
        how: &str,
        now: Instant,
    ) -> Option<(Reason, Instant, String)> {
        let r = self.rest.get_or_insert_with(Box::default);
        if succeeded {
            r.crash_level = 0;
            // A handler that has just served a client is not broken: the
            // failing statuses before it were its clients' doing as likely
            // as its own (a client that resets makes a write fail).
            r.failures.retain(|(_, how)| !ambiguous(how));
        }
        let crash = limits.crash?;
        if !failed || lived > crash.lifetime || crash.max == 0 {
            return None;
        }
        while r
            .failures
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= crash.window)
        {
            r.failures.pop_front();
        }
        r.failures.push_back((now, how.to_string()));
        if r.failures.len() >= crash.max as usize {
            // "status=1 x9, signal=SIGSEGV x1", most frequent first.
            let mut kinds: Vec<(String, usize)> = Vec::new();
            for (_, k) in r.failures.drain(..) {
                match kinds.iter_mut().find(|(x, _)| *x == k) {
                    Some((_, n)) => *n += 1,
                    None => kinds.push((k, 1)),
                }
            }
            kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
            let which = kinds
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let pause = escalated(r.crash_level, crash.pause);
            r.crash_level += 1;
            return Some((
                Reason::Crash {
                    max: crash.max,
                    window: crash.window,
                },
                now + pause,
                which,
            ));
        }
        None
    }

    /// Whether to log a refusal of `source` now: `Some(n)` with the number
    /// of refusals not logged since the last line, `None` to stay quiet.
    pub fn should_log(&mut self, source: Option<IpAddr>, now: Instant) -> Option<u64> {
        self.rest
            .get_or_insert_with(Box::default)
            .gate
            .check(source, now)
    }

    /// Number of sources tracked (bounded; for tests and the state dump).
    pub fn sources_tracked(&self) -> usize {
        self.rest.as_ref().map_or(0, |r| r.sources.len())
    }
}

/// Tokens in a bucket that held `tokens` at `stamp`, at `now`.
fn refill(tokens: f64, stamp: Instant, now: Instant, b: crate::config::Bucket) -> f64 {
    let dt = now.saturating_duration_since(stamp).as_secs_f64();
    let per_sec = f64::from(b.rate) / b.interval.as_secs_f64().max(1e-9);
    (tokens + dt * per_sec).min(f64::from(b.burst))
}

/// Refusal logging, once per source per [`LOG_INTERVAL`], bounded.
#[derive(Debug, Default)]
struct LogGate {
    seen: HashMap<IpAddr, (Instant, u64)>,
}

impl LogGate {
    fn check(&mut self, source: Option<IpAddr>, now: Instant) -> Option<u64> {
        let key = source.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if let Some((last, quiet)) = self.seen.get_mut(&key) {
            if now.saturating_duration_since(*last) < LOG_INTERVAL {
                *quiet += 1;
                return None;
            }
            let n = *quiet;
            *last = now;
            *quiet = 0;
            return Some(n);
        }
        if self.seen.len() >= LOG_GATE_MAX {
            self.seen
                .retain(|_, (t, _)| now.saturating_duration_since(*t) < LOG_INTERVAL);
            if self.seen.len() >= LOG_GATE_MAX {
                self.seen.clear();
            }
        }
        self.seen.insert(key, (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bucket, Crash, Rate};

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn admitted(d: Decision) -> bool {
        matches!(d, Decision::Admit(..))
    }

    #[test]
    fn instances() {
        let l = Limits {
            max_instances: Some(2),
            ..Limits::default()
        };
        let mut c = Counters::default();
        let t = Instant::now();
        assert!(admitted(c.admit(&l, ip("10.0.0.1"), t, None)));
        assert!(!c.at_capacity(&l));
        assert!(admitted(c.admit(&l, ip("10.0.0.1"), t, None)));
        assert!(c.at_capacity(&l));
        assert_eq!(
            c.admit(&l, ip("10.0.0.1"), t, None),
            Decision::Refuse(Reason::Instances { max: 2 })
        );
        c.release(None);
        assert!(!c.at_capacity(&l));
        assert!(!c.at_capacity(&Limits::default()));
    }

    #[test]
    fn rate_pauses_then_window_restarts() {
        let rate = Rate {
            max: 5,
            interval: Duration::from_secs(60),
            pause: Duration::from_secs(600),
        };
        let l = Limits {
            rate: Some(rate),
            ..Limits::default()
        };
        let mut c = Counters::default();
        let t0 = Instant::now();
        // The first four are admitted; the fifth too, and it reaches the
        // limit: the pause follows it (no connection is refused for it).
        for i in 0..4 {
            let d = c.admit(&l, None, t0 + Duration::from_secs(i), None);
            assert_eq!(d, Decision::Admit(None, None));
        }
        let t = t0 + Duration::from_secs(10);
        assert_eq!(
            c.admit(&l, None, t, None),
            Decision::Admit(
                None,
                Some((
                    Reason::Rate {
                        max: 5,
                        interval: Duration::from_secs(60)
                    },
                    t + FIRST_PAUSE
                ))
            )
        );
        // After the pause a fresh window starts.
        let d = c.admit(&l, None, t + FIRST_PAUSE, None);
        assert_eq!(d, Decision::Admit(None, None));
        // The excess repeating within an interval of the pause's end: each
        // pause doubles, up to the configured 600 s.
        let mut at = t + FIRST_PAUSE;
        let mut pauses = Vec::new();
        for _ in 0..9 {
            for _ in 0..3 {
                c.admit(&l, None, at, None);
            }
            let Decision::Admit(_, Some((_, until))) = c.admit(&l, None, at, None) else {
                panic!("limit not reached");
            };
            pauses.push((until - at).as_secs());
            at = until;
            // The first of the next round starts a window.
            c.admit(&l, None, at, None);
        }
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 600, 600, 600]);
        // A whole interval without the excess: back to the first step.
        let later = at + Duration::from_secs(61);
        for _ in 0..4 {
            c.admit(&l, None, later, None);
        }
        let Decision::Admit(_, Some((_, until))) = c.admit(&l, None, later, None) else {
            panic!("limit not reached");
        };
        assert_eq!(until - later, FIRST_PAUSE);
        // rate-pause=fixed: BSD inetd's whole pause every time.
        let fixed = Limits {
            rate_fixed: true,
            ..l
        };
        let mut c = Counters::default();
        for _ in 0..4 {
            c.admit(&fixed, None, t0, None);
        }
        let Decision::Admit(_, Some((_, until))) = c.admit(&fixed, None, t0, None) else {
            panic!("limit not reached");
        };
        assert_eq!(until - t0, Duration::from_secs(600));
        // A window that has elapsed restarts the count.
        let mut c = Counters::default();
        for _ in 0..4 {
            c.admit(&l, None, t0, None);
        }
        let d = c.admit(&l, None, t0 + Duration::from_secs(60), None);
        assert_eq!(d, Decision::Admit(None, None));
    }

    #[test]
    fn poll_limit_counts_per_socket() {
        let poll = Rate {
            max: 3,
            interval: Duration::from_secs(2),
            pause: Duration::from_secs(2),
        };
        let l = Limits {
            poll: Some(poll),
            ..Limits::default()
        };
        let mut c = Counters::default();
        let t = Instant::now();
        let (mut a, mut b): (Window, Window) = (None, None);
        for _ in 0..2 {
            assert_eq!(
                c.admit(&l, None, t, Some(&mut a)),
                Decision::Admit(None, None)
            );
            assert_eq!(
                c.admit(&l, None, t, Some(&mut b)),
                Decision::Admit(None, None)
            );
        }
        let reached = Decision::Admit(
            None,
            Some((
                Reason::Poll {
                    max: 3,
                    interval: Duration::from_secs(2),
                },
                t + Duration::from_secs(2),
            )),
        );
        assert_eq!(c.admit(&l, None, t, Some(&mut a)), reached);
        assert_eq!(c.admit(&l, None, t, Some(&mut b)), reached);
    }

    #[test]
    fn per_source_instances_and_bucket() {
        let l = Limits {
            max_per_source: Some(1),
            source_rate: Some(Bucket {
                rate: 1,
                interval: Duration::from_secs(10),
                burst: 3,
            }),
            ..Limits::default()
        };
        let mut c = Counters::default();
        let t = Instant::now();
        let a = ip("10.0.0.1");
        assert_eq!(c.admit(&l, a, t, None), Decision::Admit(a, None));
        assert_eq!(
            c.admit(&l, a, t, None),
            Decision::Refuse(Reason::SourceInstances { max: 1 })
        );
        assert!(admitted(c.admit(&l, ip("10.0.0.2"), t, None)));
        c.release(a);
        assert!(admitted(c.admit(&l, a, t, None)));
        c.release(a);
        assert!(admitted(c.admit(&l, a, t, None)));
        c.release(a);
        // The burst of 3 is spent: refused until a token refills.
        let refused = Decision::Refuse(Reason::SourceRate {
            rate: 1,
            interval: Duration::from_secs(10),
        });
        assert_eq!(c.admit(&l, a, t, None), refused);
        assert_eq!(c.admit(&l, a, t + Duration::from_secs(9), None), refused);
        assert!(admitted(c.admit(&l, a, t + Duration::from_secs(10), None)));
        c.release(a);
        assert_eq!(c.admit(&l, a, t + Duration::from_secs(11), None), refused);
        // A long rest refills to the burst, never beyond it.
        let later = t + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(admitted(c.admit(&l, a, later, None)));
            c.release(a);
        }
        assert_eq!(c.admit(&l, a, later, None), refused);
        assert_eq!(c.running(), 1);
    }

    #[test]
    fn ipv6_sources_grouped_by_prefix() {
        let l = Limits::default();
        let k = |s: &str| source_key(s.parse().unwrap(), &l);
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::2"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
        let l48 = Limits {
            prefix6: 48,
            prefix4: 24,
            ..Limits::default()
        };
        let k = |s: &str| source_key(s.parse().unwrap(), &l48);
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("10.0.0.1"), k("10.0.0.2"));
    }

    #[test]
    fn sources_stay_bounded() {
        let l = Limits {
            source_rate: Some(Bucket {
                rate: 100,
                interval: Duration::from_secs(60),
                burst: 100,
            }),
            ..Limits::default()
        };
        let mut c = Counters::default();
        let t = Instant::now();
        for i in 0..20_000u32 {
            let a = Some(IpAddr::from(i.to_be_bytes()));
            if let Decision::Admit(k, _) = c.admit(&l, a, t, None) {
                c.release(k);
            }
            assert!(c.sources_tracked() <= SOURCE_MAX);
        }
        // Sources with handlers running are never forgotten: past the
        // bound a new source is admitted untracked.
        let mut c = Counters::default();
        for i in 0..SOURCE_MAX as u32 {
            c.admit(&l, Some(IpAddr::from(i.to_be_bytes())), t, None);
        }
        assert_eq!(
            c.admit(&l, ip("200.0.0.1"), t, None),
            Decision::Admit(None, None)
        );
        assert_eq!(c.sources_tracked(), SOURCE_MAX);
    }

    #[test]
    fn crash_loop_counts_quick_failures_only() {
        let l = Limits {
            crash: Some(Crash {
                max: 3,
                window: Duration::from_secs(10),
                lifetime: Duration::from_secs(2),
                pause: Duration::from_secs(30),
            }),
            ..Limits::default()
        };
        let mut c = Counters::default();
        let t = Instant::now();
        let quick = Duration::from_millis(5);
        // Healthy handlers, however many, never pause.
        for i in 0..1000 {
            assert_eq!(
                c.ended(
                    &l,
                    false,
                    true,
                    quick,
                    "status=0",
                    t + Duration::from_millis(i)
                ),
                None
            );
        }
        // Failures after a long life do not count either.
        for _ in 0..10 {
            assert_eq!(
                c.ended(&l, true, false, Duration::from_secs(3), "status=1", t),
                None
            );
        }
        assert_eq!(c.ended(&l, true, false, quick, "status=1", t), None);
        assert_eq!(
            c.ended(
                &l,
                true,
                false,
                quick,
                "signal=SIGSEGV",
                t + Duration::from_secs(1)
            ),
            None
        );
        // The first failure has left the window: still two.
        let t2 = t + Duration::from_secs(10);
        assert_eq!(c.ended(&l, true, false, quick, "status=1", t2), None);
        let t3 = t2 + Duration::from_millis(500);
        let p = c.ended(&l, true, false, quick, "status=1", t3);
        // The first pause is short, and says which failures caused it.
        assert_eq!(
            p,
            Some((
                Reason::Crash {
                    max: 3,
                    window: Duration::from_secs(10)
                },
                t3 + FIRST_PAUSE,
                "status=1 x2, signal=SIGSEGV x1".to_string()
            ))
        );
        // Counting starts over after a pause; while failures go on, each
        // pause doubles, up to the configured one.
        let mut at = t3 + FIRST_PAUSE;
        let mut pauses = Vec::new();
        for _ in 0..4 {
            for _ in 0..2 {
                assert_eq!(c.ended(&l, true, false, quick, "status=1", at), None);
            }
            let (_, until, _) = c.ended(&l, true, false, quick, "status=1", at).unwrap();
            pauses.push(until - at);
            at = until;
        }
        assert_eq!(pauses, [10, 20, 30, 30].map(Duration::from_secs));
        // A handler that succeeds ends the escalation.
        assert_eq!(c.ended(&l, false, true, quick, "status=0", at), None);
        for _ in 0..2 {
            c.ended(&l, true, false, quick, "status=1", at);
        }
        let (_, until, _) = c.ended(&l, true, false, quick, "status=1", at).unwrap();
        assert_eq!(until - at, FIRST_PAUSE);
        let off = Limits {
            crash: None,
            ..Limits::default()
        };
        for _ in 0..100 {
            assert_eq!(c.ended(&off, true, false, quick, "status=1", t), None);
        }
    }

    #[test]
    fn a_success_clears_failing_statuses_but_not_crashes() {
        let l = Limits {
            crash: Some(Crash {
                max: 3,
                window: Duration::from_secs(10),
                lifetime: Duration::from_secs(2),
                pause: Duration::from_secs(30),
            }),
            ..Limits::default()
        };
        let (t, quick) = (Instant::now(), Duration::from_millis(10));
        let mut c = Counters::default();
        // Two clients reset mid-answer (status=1), one is served: the
        // handler works, and two more resets do not pause it.
        for how in ["status=1", "status=1"] {
            assert_eq!(c.ended(&l, true, false, quick, how, t), None);
        }
        assert_eq!(c.ended(&l, false, true, quick, "status=0", t), None);
        for how in ["status=1", "status=1"] {
            assert_eq!(c.ended(&l, true, false, quick, how, t), None);
        }
        // A crash signal or "not found" stays counted across a success.
        let mut c = Counters::default();
        c.ended(&l, true, false, quick, "signal=SIGSEGV", t);
        c.ended(&l, true, false, quick, "status=127", t);
        c.ended(&l, false, true, quick, "status=0", t);
        assert!(c
            .ended(&l, true, false, quick, "signal=SIGSEGV", t)
            .is_some());
    }

    #[test]
    fn access_lists() {
        let cidrs = |w: &[&str]| acl::parse_list(w.iter().copied()).unwrap();
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        // Empty: everyone.
        assert!(allowed(&Access::default(), a("1.2.3.4")));
        // Allow only: the rest are refused.
        let only = Access {
            allow: cidrs(&["10.0.0.0/8"]),
            ..Access::default()
        };
        assert!(allowed(&only, a("10.1.1.1")));
        assert!(allowed(&only, a("::ffff:10.1.1.1")), "mapped v4");
        assert!(!allowed(&only, a("11.1.1.1")));
        assert!(!allowed(&only, a("::1")));
        // Deny only: the rest are allowed.
        let deny = Access {
            deny: cidrs(&["10.0.0.0/8"]),
            ..Access::default()
        };
        assert!(!allowed(&deny, a("10.1.1.1")));
        assert!(allowed(&deny, a("11.1.1.1")));
        // systemd's usual pair: allow a prefix, deny any.
        let sd = Access {
            allow: cidrs(&["localhost"]),
            deny: cidrs(&["any"]),
            ..Access::default()
        };
        assert!(allowed(&sd, a("127.0.0.1")));
        assert!(allowed(&sd, a("::1")));
        assert!(!allowed(&sd, a("192.168.1.1")));
        // The more specific prefix wins, whichever list it is in.
        let nested = Access {
            allow: cidrs(&["10.0.0.0/8", "10.1.2.3"]),
            deny: cidrs(&["10.1.0.0/16"]),
            ..Access::default()
        };
        assert!(allowed(&nested, a("10.2.0.1")));
        assert!(!allowed(&nested, a("10.1.0.1")));
        assert!(allowed(&nested, a("10.1.2.3")));
        // A tie goes to allow (systemd: allow beats deny).
        let tie = Access {
            allow: cidrs(&["10.0.0.1"]),
            deny: cidrs(&["10.0.0.1"]),
            ..Access::default()
        };
        assert!(allowed(&tie, a("10.0.0.1")));
    }

    #[test]
    fn unix_ids() {
        assert!(allowed_unix(&Access::default(), 1000, 1000));
        let u = Access {
            uids: vec![0],
            gids: vec![50],
            ..Access::default()
        };
        assert!(allowed_unix(&u, 0, 1000));
        assert!(allowed_unix(&u, 1000, 50));
        assert!(!allowed_unix(&u, 1000, 1000));
    }

    #[test]
    fn log_gate_once_per_source_per_interval() {
        let mut c = Counters::default();
        let t = Instant::now();
        assert_eq!(c.should_log(ip("10.0.0.1"), t), Some(0));
        for _ in 0..5 {
            assert_eq!(c.should_log(ip("10.0.0.1"), t), None);
        }
        assert_eq!(c.should_log(ip("10.0.0.2"), t), Some(0));
        assert_eq!(c.should_log(ip("10.0.0.1"), t + LOG_INTERVAL), Some(5));
        for i in 0..10_000u32 {
            c.should_log(Some(IpAddr::from(i.to_be_bytes())), t);
            assert!(c.rest.as_ref().map_or(0, |r| r.gate.seen.len()) <= LOG_GATE_MAX);
        }
    }
}
