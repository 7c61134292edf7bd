//! Counters kept per service label (so they survive reloads) and their
//! Prometheus text exposition, served by doorman itself from the loop.
//!
//! Owns: the numbers (accepted, refused by reason, spawned, spawn
//! failures, exits by outcome, handler duration histogram) and the text
//! format; the tiny non-blocking HTTP exchange of one scrape.
//! Must not: block, or keep anything per peer (memory stays bounded).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Histogram buckets for handler durations, in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0];

/// The counters of one service.
#[derive(Clone, Debug, Default)]
pub struct ServiceMetrics {
    pub accepted: u64,
    pub refused: BTreeMap<&'static str, u64>,
    pub spawned: u64,
    pub spawn_failures: u64,
    /// Connections the peer had reset or closed without a word before
    /// they were accepted: closed, nothing started.
    pub dead_on_arrival: u64,
    pub exits_success: u64,
    pub exits_failure: u64,
    pub exits_signal: u64,
    /// On-demand backends: starts, starts that failed (exited or timed
    /// out before ready), idle stops, connections relayed, bytes each way.
    pub backend_starts: u64,
    pub backend_failures: u64,
    pub backend_idle_stops: u64,
    pub proxied: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    buckets: [u64; BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
}

impl ServiceMetrics {
    /// A handler ended after `d`.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i] += 1;
            }
        }
        self.duration_sum += s;
        self.duration_count += 1;
    }
}

/// Per-service gauges, read from the live state at scrape time.
pub struct Gauges {
    pub running: u64,
    pub paused: bool,
}

/// Reads one counter of a service.
type Field = fn(&ServiceMetrics) -> u64;

/// Everything doorman counts, by service label.
#[derive(Debug, Default)]
pub struct Metrics {
    pub services: BTreeMap<String, ServiceMetrics>,
}

impl Metrics {
    pub fn service(&mut self, label: &str) -> &mut ServiceMetrics {
        if !self.services.contains_key(label) {
            self.services
                .insert(label.to_string(), ServiceMetrics::default());
        }
        self.services.get_mut(label).expect("just inserted")
    }

    /// The exposition text (Prometheus text format 0.0.4).
    pub fn render(&self, gauges: &BTreeMap<String, Gauges>, fds: u64, rss: u64) -> String {
        let mut o = String::new();
        let lbl = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut o,
            "doorman_accepted_total",
            "counter",
            "Connections accepted (or wait-mode wake-ups) and admitted.",
        );
        for (s, m) in &self.services {
            let _ = writeln!(
                o,
                "doorman_accepted_total{{service=\"{}\"}} {}",
                lbl(s),
                m.accepted
            );
        }
        family(
            &mut o,
            "doorman_refused_total",
            "counter",
            "Connections refused, by reason.",
        );
        for (s, m) in &self.services {
            for (r, n) in &m.refused {
                let _ = writeln!(
                    o,
                    "doorman_refused_total{{service=\"{}\",reason=\"{r}\"}} {n}",
                    lbl(s)
                );
            }
        }
        family(
            &mut o,
            "doorman_spawned_total",
            "counter",
            "Handlers started.",
        );
        for (s, m) in &self.services {
            let _ = writeln!(
                o,
                "doorman_spawned_total{{service=\"{}\"}} {}",
                lbl(s),
                m.spawned
            );
        }
        let backend: [(&str, &str, Field); 6] = [
            (
                "doorman_backend_starts_total",
                "On-demand backend starts (cold starts).",
                |m| m.backend_starts,
            ),
            (
                "doorman_backend_failures_total",
                "Backend starts that exited or timed out before ready.",
                |m| m.backend_failures,
            ),
            (
                "doorman_backend_idle_stops_total",
                "Backends stopped for being idle.",
                |m| m.backend_idle_stops,
            ),
            (
                "doorman_proxied_connections_total",
                "Connections relayed to a backend.",
                |m| m.proxied,
            ),
            (
                "doorman_proxied_bytes_up_total",
                "Bytes relayed from clients to backends.",
                |m| m.bytes_up,
            ),
            (
                "doorman_proxied_bytes_down_total",
                "Bytes relayed from backends to clients.",
                |m| m.bytes_down,
            ),
        ];
        for (name, help, f) in backend {
            if self.services.values().all(|m| f(m) == 0) {
                continue;
            }
            family(&mut o, name, "counter", help);
            for (s, m) in &self.services {
                let _ = writeln!(o, "{name}{{service=\"{}\"}} {}", lbl(s), f(m));
            }
        }
        family(
            &mut o,
            "doorman_connections_dead_on_arrival_total",
            "counter",
            "Connections already reset or closed without data by the peer when accepted: closed, no handler started.",
        );
        for (s, m) in &self.services {
            let _ = writeln!(
                o,
                "doorman_connections_dead_on_arrival_total{{service=\"{}\"}} {}",
                lbl(s),
                m.dead_on_arrival
            );
        }
        family(
            &mut o,
            "doorman_spawn_failures_total",
            "counter",
            "Handlers that could not be started (fork or exec failed).",
        );
        for (s, m) in &self.services {
            let _ = writeln!(
                o,
                "doorman_spawn_failures_total{{service=\"{}\"}} {}",
                lbl(s),
                m.spawn_failures
            );
        }
        family(
            &mut o,
            "doorman_exits_total",
            "counter",
            "Handlers ended, by outcome.",
        );
        for (s, m) in &self.services {
            for (k, n) in [
                ("success", m.exits_success),
                ("failure", m.exits_failure),
                ("signal", m.exits_signal),
            ] {
                let _ = writeln!(
                    o,
                    "doorman_exits_total{{service=\"{}\",outcome=\"{k}\"}} {n}",
                    lbl(s)
                );
            }
        }
        family(&mut o, "doorman_running", "gauge", "Handlers running now.");
        for (s, g) in gauges {
            let _ = writeln!(o, "doorman_running{{service=\"{}\"}} {}", lbl(s), g.running);
        }
        family(
            &mut o,
            "doorman_paused",
            "gauge",
            "1 while a service is paused by a limit.",
        );
        for (s, g) in gauges {
            let _ = writeln!(
                o,
                "doorman_paused{{service=\"{}\"}} {}",
                lbl(s),
                u8::from(g.paused)
            );
        }
        family(
            &mut o,
            "doorman_handler_duration_seconds",
            "histogram",
            "How long handlers ran.",
        );
        for (s, m) in &self.services {
            let s = lbl(s);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "doorman_handler_duration_seconds_bucket{{service=\"{s}\",le=\"{b}\"}} {}",
                    m.buckets[i]
                );
            }
            let _ = writeln!(
                o,
                "doorman_handler_duration_seconds_bucket{{service=\"{s}\",le=\"+Inf\"}} {}",
                m.duration_count
            );
            let _ = writeln!(
                o,
                "doorman_handler_duration_seconds_sum{{service=\"{s}\"}} {}",
                m.duration_sum
            );
            let _ = writeln!(
                o,
                "doorman_handler_duration_seconds_count{{service=\"{s}\"}} {}",
                m.duration_count
            );
        }
        family(
            &mut o,
            "doorman_open_fds",
            "gauge",
            "File descriptors doorman holds.",
        );
        let _ = writeln!(o, "doorman_open_fds {fds}");
        family(
            &mut o,
            "doorman_resident_memory_bytes",
            "gauge",
            "doorman's resident set size.",
        );
        let _ = writeln!(o, "doorman_resident_memory_bytes {rss}");
        o
    }
}

/// doorman's own fd count and RSS, from /proc.
pub fn self_usage() -> (u64, u64) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        // SAFETY: sysconf has no preconditions.
        .map_or(0, |pages| {
            pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
        });
    (fds, rss)
}

/// The most of a request doorman reads before answering anyway.
pub const MAX_REQUEST: usize = 8192;

/// The HTTP answer to a scrape request (`GET /metrics`, or anything).
pub fn http_response(request: &[u8], body: &str) -> Vec<u8> {
    let first = request.split(|&b| b == b'\n').next().unwrap_or(b"");
    let (status, body, kind) = if first.starts_with(b"GET ") || first.starts_with(b"HEAD ") {
        ("200 OK", body, "text/plain; version=0.0.4; charset=utf-8")
    } else {
        ("405 Method Not Allowed", "only GET\n", "text/plain")
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !first.starts_with(b"HEAD ") {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_render() {
        let mut m = Metrics::default();
        let s = m.service("echo/tcp");
        s.accepted = 3;
        s.observe(Duration::from_millis(3));
        s.observe(Duration::from_secs(2));
        *s.refused.entry("rate").or_default() += 1;
        let mut g = BTreeMap::new();
        g.insert(
            "echo/tcp".to_string(),
            Gauges {
                running: 1,
                paused: false,
            },
        );
        let text = m.render(&g, 7, 4096);
        assert!(text.contains("doorman_accepted_total{service=\"echo/tcp\"} 3\n"));
        assert!(text.contains("doorman_refused_total{service=\"echo/tcp\",reason=\"rate\"} 1\n"));
        assert!(text.contains("le=\"0.005\"} 1\n"));
        assert!(text.contains("le=\"5\"} 2\n"));
        assert!(text.contains("doorman_handler_duration_seconds_count{service=\"echo/tcp\"} 2\n"));
        assert!(text.contains("doorman_running{service=\"echo/tcp\"} 1\n"));
        assert!(text.contains("doorman_open_fds 7\n"));
        let r = http_response(b"GET /metrics HTTP/1.1\r\n\r\n", "x\n");
        assert!(r.starts_with(b"HTTP/1.0 200 OK\r\n"));
        assert!(r.ends_with(b"\r\n\r\nx\n"));
    }
}
