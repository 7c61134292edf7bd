//! Property tests of the admission counters (issue 9): a fake clock and
//! random sequences of connect, exit and time-advance events, driven the
//! way the event loop drives [`Counters`], with the invariants checked
//! after every event:
//! - the instances running never exceed `max_instances`, nor a source's
//!   its `max_per_source`, and match the handlers alive;
//! - when every handler has exited, every per-source count is zero;
//! - a pause ends at the deadline the decision gave, which is the
//!   configured pause from the moment it was decided, and the service is
//!   served again from then on;
//! - a source's bucket never holds more than its burst (nor less than
//!   nothing), and the source table never grows past [`SOURCE_MAX`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{source_key, Counters, Decision, Reason, Window, SOURCE_MAX};
use crate::config::fuzz_tests::cases;
use crate::config::{Bucket, Crash, Limits, Rate};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn rate() -> impl Strategy<Value = Rate> {
    (1u32..8, 1u64..5000, 1u64..20_000).prop_map(|(max, i, p)| Rate {
        max,
        interval: ms(i),
        pause: ms(p),
    })
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        prop::option::of(1u32..6),
        prop::option::of(rate()),
        prop::option::of((1u32..6, 1u64..5000, 1u32..6)),
        prop::option::of(1u32..4),
        prop::option::of(rate()),
        0u8..=32,
        0u8..=128,
        prop::option::of((1u32..5, 1u64..5000, 0u64..3000, 1u64..20_000)),
    )
        .prop_map(
            |(inst, rate, bucket, per_src, poll, p4, p6, crash)| Limits {
                max_instances: inst,
                rate,
                source_rate: bucket.map(|(rate, i, burst)| Bucket {
                    rate,
                    interval: ms(i),
                    burst,
                }),
                max_per_source: per_src,
                poll,
                prefix4: p4,
                prefix6: p6,
                rate_fixed: false,
                session_idle: None,
                crash: crash.map(|(max, w, l, p)| Crash {
                    max,
                    window: ms(w),
                    lifetime: ms(l),
                    pause: ms(p),
                }),
            },
        )
}

/// A few sources that collide under prefixes, in both families, IPv4
/// also as IPv4-mapped IPv6; `None` is a unix peer.
fn source() -> impl Strategy<Value = Option<IpAddr>> {
    prop_oneof![
        1 => Just(None),
        4 => (0u8..4).prop_map(|i| Some(IpAddr::V4(Ipv4Addr::new(10, 0, i / 2, i)))),
        2 => (0u8..4).prop_map(|i| Some(IpAddr::V6(Ipv4Addr::new(10, 0, i / 2, i).to_ipv6_mapped()))),
        2 => (0u16..4).prop_map(|i| Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, i / 2, i, 0, 0, 1)))),
    ]
}

#[derive(Clone, Debug)]
enum Event {
    Connect(Option<IpAddr>),
    /// The handler at this index (modulo those alive) exits, failed or not.
    Exit(usize, bool),
    Advance(Duration),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        5 => source().prop_map(Event::Connect),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, f)| Event::Exit(i, f)),
        3 => (0u64..3000).prop_map(|d| Event::Advance(ms(d))),
    ]
}

/// The event loop's part, reduced to what the counters see: handlers
/// alive, the pause deadline, the clock.
struct Driver {
    limits: Limits,
    c: Counters,
    now: Instant,
    paused_until: Option<Instant>,
    /// The socket's poll count.
    poll: Window,
    alive: Vec<(Option<IpAddr>, Instant)>,
    pauses: usize,
    resumes: usize,
    /// Check the invariants every this many events (1: every event).
    check_every: usize,
    events: usize,
}

impl Driver {
    fn new(limits: Limits) -> Driver {
        Driver {
            limits,
            c: Counters::default(),
            now: Instant::now(),
            paused_until: None,
            poll: None,
            alive: Vec::new(),
            pauses: 0,
            resumes: 0,
            check_every: 1,
            events: 0,
        }
    }

    /// A pause until `until`, at most `pause` (escalating pauses start
    /// shorter).
    fn pause(&mut self, until: Instant, pause: Duration) -> Result<(), TestCaseError> {
        prop_assert!(
            until <= self.now + pause,
            "deadline is longer than the configured pause"
        );
        prop_assert!(until > self.now);
        // The loop keeps the first pause when one is running.
        if self.paused_until.is_none() {
            self.paused_until = Some(until);
            self.pauses += 1;
        }
        Ok(())
    }

    fn step(&mut self, e: &Event) -> Result<(), TestCaseError> {
        match e {
            Event::Connect(ip) => {
                if self.paused_until.is_some() {
                    return Ok(()); // not served while paused (queued or refused)
                }
                let key = ip.map(|ip| source_key(ip, &self.limits));
                match self
                    .c
                    .admit(&self.limits, key, self.now, Some(&mut self.poll))
                {
                    Decision::Admit(tracked, then) => {
                        prop_assert!(tracked.is_none() || tracked == key);
                        self.alive.push((tracked, self.now));
                        if let Some((r, until)) = then {
                            let (Reason::Rate { max, interval } | Reason::Poll { max, interval }) =
                                r
                            else {
                                return Err(TestCaseError::fail(format!("pause for {r:?}")));
                            };
                            let rate = [self.limits.poll, self.limits.rate]
                                .into_iter()
                                .flatten()
                                .find(|x| x.max == max && x.interval == interval)
                                .expect("a configured rate");
                            self.pause(until, rate.pause)?;
                        }
                    }
                    Decision::Refuse(r) => {
                        let pausing = matches!(
                            r,
                            Reason::Rate { .. } | Reason::Poll { .. } | Reason::Crash { .. }
                        );
                        prop_assert!(!pausing, "refused, not paused, for {:?}", r);
                    }
                }
            }
            Event::Exit(i, failed) => {
                if self.alive.is_empty() {
                    return Ok(());
                }
                let (key, start) = self.alive.remove(i % self.alive.len());
                self.c.release(key);
                let lived = self.now.duration_since(start);
                let how = if *failed { "status=1" } else { "status=0" };
                if let Some((r, until, _)) =
                    self.c
                        .ended(&self.limits, *failed, !*failed, lived, how, self.now)
                {
                    let crash = self
                        .limits
                        .crash
                        .expect("crash pause without a crash limit");
                    prop_assert!(*failed && lived <= crash.lifetime, "{r:?}");
                    self.pause(until, crash.pause)?;
                }
            }
            Event::Advance(d) => {
                let target = self.now + *d;
                // The loop wakes at the pause deadline, whatever comes after.
                if let Some(t) = self.paused_until.filter(|t| *t <= target) {
                    self.now = t;
                    self.paused_until = None;
                    self.resumes += 1;
                }
                self.now = target;
            }
        }
        self.events += 1;
        if self.events % self.check_every == 0 {
            self.check()?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let l = &self.limits;
        prop_assert_eq!(self.c.running() as usize, self.alive.len());
        if let Some(m) = l.max_instances {
            prop_assert!(self.c.running() <= m, "{} > {m}", self.c.running());
        }
        prop_assert!(self.c.sources_tracked() <= SOURCE_MAX);
        for (ip, s) in self.c.rest.iter().flat_map(|r| r.sources.iter()) {
            let alive = self.alive.iter().filter(|(k, _)| *k == Some(*ip)).count();
            prop_assert_eq!(s.running as usize, alive, "source {}", ip);
            if let Some(m) = l.max_per_source {
                prop_assert!(s.running <= m, "source {ip}: {} > {m}", s.running);
            }
            if let Some(b) = l.source_rate {
                prop_assert!(
                    s.tokens <= f64::from(b.burst) + 1e-9,
                    "{} > {}",
                    s.tokens,
                    b.burst
                );
                prop_assert!(s.tokens >= -1e-9, "{}", s.tokens);
            }
        }
        Ok(())
    }

    /// Every handler exits; then nothing may be left counted.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        while !self.alive.is_empty() {
            self.step(&Event::Exit(0, false))?;
        }
        self.check()?;
        prop_assert_eq!(self.c.running(), 0);
        for (ip, s) in self.c.rest.iter().flat_map(|r| r.sources.iter()) {
            prop_assert_eq!(s.running, 0, "source {} still counted", ip);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn counters_keep_their_invariants(
        limits in limits(),
        events in prop::collection::vec(event(), 0..200),
    ) {
        let mut d = Driver::new(limits);
        for e in &events {
            d.step(e)?;
        }
        d.drain()?;
        // A pause always ends: past the longest pause, the service is
        // served again, and a fresh source with room is admitted.
        d.step(&Event::Advance(ms(40_000)))?;
        prop_assert!(d.paused_until.is_none());
        prop_assert_eq!(d.pauses, d.resumes);
        let fresh = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77)));
        let key = fresh.map(|ip| source_key(ip, &d.limits));
        match d.c.admit(&d.limits, key, d.now, None) {
            Decision::Admit(..) => {}
            other => prop_assert!(false, "after every pause ended and every handler exited: {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(cases(8))]

    /// Many distinct sources: the table stays bounded, counts stay exact.
    #[test]
    fn source_table_stays_bounded(
        n in (SOURCE_MAX + 1)..(SOURCE_MAX + 600),
        keep in 0usize..50,
    ) {
        let limits = Limits {
            max_per_source: Some(2),
            crash: None,
            ..Limits::default()
        };
        let mut d = Driver::new(limits);
        d.check_every = 997;
        for i in 0..n {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
            d.step(&Event::Connect(Some(ip)))?;
            if i >= keep {
                d.step(&Event::Exit(0, false))?;
            }
        }
        d.drain()?;
    }
}
