//! Pure admission decisions: instances, per-source counts, rate windows.
//!
//! Owns: the counters of one service and the rules that turn them, a
//! connection's source and a time passed in, into a [`Decision`].
//! Must not: do I/O or read the clock itself; the loop performs the
//! decision and logs it.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Per-source entries kept before idle ones are pruned.
const SOURCE_PRUNE_AT: usize = 1024;
/// Hard bound on per-source entries: past it, unknown sources are not
/// tracked for the per-minute rate (their concurrent count still is).
const SOURCE_MAX: usize = 65536;
const MINUTE: Duration = Duration::from_secs(60);

/// Why a connection was refused or a service paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// More than `max` spawns within `interval` (inetd's "looping").
    Rate { max: u32, interval: Duration },
    /// The source made more than `max` connections within a minute.
    SourceRate { max: u32 },
    /// The source already has `max` handlers running.
    SourceInstances { max: u32 },
}

impl Reason {
    /// The short name used as a metrics label.
    pub fn key(&self) -> &'static str {
        match self {
            Reason::Rate { .. } => "rate",
            Reason::SourceRate { .. } => "per-source-rate",
            Reason::SourceInstances { .. } => "per-source-instances",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rate { max, interval } => write!(
                f,
                "rate: more than {max} connections in {}s (looping?)",
                interval.as_secs_f64()
            ),
            Reason::SourceRate { max } => write!(
                f,
                "per-source-rate: more than {max} connections per minute from this source"
            ),
            Reason::SourceInstances { max } => {
                write!(
                    f,
                    "per-source-instances: {max} handlers already running for this source"
                )
            }
        }
    }
}

/// What to do with an accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Spawn the handler (the admission is already counted).
    Admit,
    /// Close this connection; the service goes on.
    Refuse(Reason),
    /// Close this connection and stop accepting until the instant given.
    Pause(Reason, Instant),
}

#[derive(Clone, Copy, Debug)]
struct Source {
    running: u32,
    window_start: Instant,
    window_count: u32,
}

/// The counters of one service.
#[derive(Debug, Default)]
pub struct Counters {
    running: u32,
    window: Option<(Instant, u32)>,
    poll_window: Option<(Instant, u32)>,
    sources: HashMap<IpAddr, Source>,
}

impl Counters {
    /// Handlers running now.
    pub fn running(&self) -> u32 {
        self.running
    }

    /// True when the instance limit is reached: stop accepting (clients
    /// wait in the kernel backlog) until a handler exits.
    pub fn at_capacity(&self, limits: &Limits) -> bool {
        limits.max_instances.is_some_and(|m| self.running >= m)
    }

    /// Decides about one accepted connection from `source` at `now`, and
    /// counts it when admitted.
    pub fn admit(&mut self, limits: &Limits, source: Option<IpAddr>, now: Instant) -> Decision {
        if let Some(ip) = source {
            if let Some(max) = limits.max_per_source {
                if self.sources.get(&ip).is_some_and(|s| s.running >= max) {
                    return Decision::Refuse(Reason::SourceInstances { max });
                }
            }
            if let Some(max) = limits.per_source_per_minute {
                if let Some(s) = self.sources.get_mut(&ip) {
                    if now.duration_since(s.window_start) >= MINUTE {
                        s.window_start = now;
                        s.window_count = 0;
                    }
                    if s.window_count >= max {
                        return Decision::Refuse(Reason::SourceRate { max });
                    }
                }
            }
        }
        for (rate, window) in [
            (limits.poll, &mut self.poll_window),
            (limits.rate, &mut self.window),
        ] {
            let Some(rate) = rate else { continue };
            let (start, count) = match *window {
                Some((start, count)) if now.duration_since(start) < rate.interval => (start, count),
                _ => (now, 0),
            };
            if count >= rate.max {
                *window = None;
                return Decision::Pause(
                    Reason::Rate {
                        max: rate.max,
                        interval: rate.interval,
                    },
                    now + rate.pause,
                );
            }
            *window = Some((start, count + 1));
        }
        self.running += 1;
        if let Some(ip) = source {
            if limits.max_per_source.is_some() || limits.per_source_per_minute.is_some() {
                self.count_source(ip, now);
            }
        }
        Decision::Admit
    }

    fn count_source(&mut self, ip: IpAddr, now: Instant) {
        if self.sources.len() >= SOURCE_PRUNE_AT && !self.sources.contains_key(&ip) {
            self.sources
                .retain(|_, s| s.running > 0 || now.duration_since(s.window_start) < MINUTE);
            if self.sources.len() >= SOURCE_MAX {
                return;
            }
        }
        let s = self.sources.entry(ip).or_insert(Source {
            running: 0,
            window_start: now,
            window_count: 0,
        });
        s.running += 1;
        s.window_count += 1;
    }

    /// A handler admitted for `source` has exited (or failed to start).
    pub fn release(&mut self, source: Option<IpAddr>) {
        self.running = self.running.saturating_sub(1);
        if let Some(ip) = source {
            if let Some(s) = self.sources.get_mut(&ip) {
                s.running = s.running.saturating_sub(1);
            }
        }
    }

    /// Number of sources tracked (bounded; for tests and the state dump).
    pub fn sources_tracked(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn instances() {
        let l = Limits {
            max_instances: Some(2),
            ..Limits::default()
        };
        let mut c = Counters::default();
        let t = Instant::now();
        assert_eq!(c.admit(&l, ip("10.0.0.1"), t), Decision::Admit);
        assert!(!c.at_capacity(&l));
        assert_eq!(c.admit(&l, ip("10.0.0.1"), t), Decision::Admit);
        assert!(c.at_capacity(&l));
        c.release(ip("10.0.0.1"));
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
        for i in 0..5 {
            assert_eq!(
                c.admit(&l, None, t0 + Duration::from_secs(i)),
                Decision::Admit
            );
        }
        let t = t0 + Duration::from_secs(10);
        assert_eq!(
            c.admit(&l, None, t),
            Decision::Pause(
                Reason::Rate {
                    max: 5,
                    interval: Duration::from_secs(60)
                },
                t + Duration::from_secs(600)
            )
        );
        // After the pause a fresh window starts.
        assert_eq!(
            c.admit(&l, None, t + Duration::from_secs(600)),
            Decision::Admit
        );
        // A window that has elapsed restarts the count.
        let mut c = Counters::default();
        for _ in 0..5 {
            c.admit(&l, None, t0);
        }
        assert_eq!(
            c.admit(&l, None, t0 + Duration::from_secs(60)),
            Decision::Admit
        );
    }

    #[test]
    fn per_source() {
        let l = Limits {
            max_per_source: Some(1),
            per_source_per_minute: Some(3),
            ..Limits::default()
        };
        let mut c = Counters::default();
        let t = Instant::now();
        assert_eq!(c.admit(&l, ip("10.0.0.1"), t), Decision::Admit);
        assert_eq!(
            c.admit(&l, ip("10.0.0.1"), t),
            Decision::Refuse(Reason::SourceInstances { max: 1 })
        );
        assert_eq!(c.admit(&l, ip("10.0.0.2"), t), Decision::Admit);
        c.release(ip("10.0.0.1"));
        assert_eq!(c.admit(&l, ip("10.0.0.1"), t), Decision::Admit);
        c.release(ip("10.0.0.1"));
        assert_eq!(c.admit(&l, ip("10.0.0.1"), t), Decision::Admit);
        c.release(ip("10.0.0.1"));
        assert_eq!(
            c.admit(&l, ip("10.0.0.1"), t),
            Decision::Refuse(Reason::SourceRate { max: 3 })
        );
        assert_eq!(c.admit(&l, ip("10.0.0.1"), t + MINUTE), Decision::Admit);
        assert_eq!(c.running(), 2);
    }

    #[test]
    fn sources_stay_bounded() {
        let l = Limits {
            per_source_per_minute: Some(100),
            ..Limits::default()
        };
        let mut c = Counters::default();
        let t = Instant::now();
        for i in 0..5000u32 {
            let a = IpAddr::from(i.to_be_bytes());
            c.admit(&l, Some(a), t);
            c.release(Some(a));
        }
        let later = t + MINUTE;
        c.admit(&l, ip("10.9.9.9"), later);
        assert!(
            c.sources_tracked() <= SOURCE_PRUNE_AT,
            "{}",
            c.sources_tracked()
        );
    }
}
