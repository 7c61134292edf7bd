//! doorman's own `key=value` options, the same in every front end: after
//! the wait field of an inetd.conf line (`nowait,timeout=30,allow=::1`),
//! in xinetd's `doorman_options` attribute, in a unit's
//! `X-Doorman-Options=` and on the command line (`-o key=value`).
//!
//! Owns: the option names, their grammar and their effect on a
//! [`RawService`]. Must not: resolve names (`allow-uid=` keeps user names
//! for `resolve.rs`).

use std::time::Duration;

use super::inetd::{RawService, DEFAULT_RATE};
use super::{
    acl, Bucket, Crash, Fate, Handover, ProxyVersion, Rate, Rlimit, DEFAULT_CRASH, MAX_MESSAGE,
};

/// Every option name, for error messages and the manual.
pub const NAMES: &[&str] = &[
    "handover",
    "fdname",
    "backlog",
    "max-child",
    "max-child-per-ip",
    "rate",
    "rate-pause",
    "session-idle",
    "proxy-to",
    "idle-stop",
    "start-timeout",
    "max-held",
    "proxy-send",
    "ready",
    "source-rate",
    "source-prefix",
    "crash",
    "allow",
    "deny",
    "allow-uid",
    "allow-gid",
    "on-full",
    "on-source",
    "on-deny",
    "on-paused",
    "message",
    "timeout",
    "nice",
    "umask",
    "cwd",
    "nofile",
    "as",
    "cpu",
    "data",
    "nproc",
    "core",
    "fsize",
    "stack",
    "proxy-protocol",
    "proxy-from",
    "proxy-optional",
];

/// Applies one option. Lists (`allow`, `deny`, `allow-uid`, `allow-gid`)
/// add to what is there; everything else replaces.
pub fn apply(raw: &mut RawService, key: &str, v: &str) -> Result<(), String> {
    match key {
        "handover" => {
            raw.handover = Handover::parse(v)
                .ok_or_else(|| format!("handover={v:?}: expected inetd, stdio or fd3"))?
        }
        "fdname" => {
            if v.is_empty() || v.len() > 255 || !v.chars().all(|c| c.is_ascii_graphic() && c != ':')
            {
                return Err(format!(
                    "fdname={v:?}: expected 1 to 255 printable characters, no ':'"
                ));
            }
            raw.fd_name = Some(v.to_string())
        }
        "backlog" => {
            let n = count(v, "backlog")?;
            raw.backlog = Some(i32::try_from(n).map_err(|_| format!("backlog={v} is too large"))?);
        }
        "max-child" => raw.limits.max_instances = nonzero(count(v, "max-child")?),
        "max-child-per-ip" => raw.limits.max_per_source = nonzero(count(v, "max-child-per-ip")?),
        "rate" => {
            // rate=N[/INTERVAL[/PAUSE]], seconds (default 60 and 600).
            let p = slashes(v, 3, "rate=N[/INTERVAL[/PAUSE]]")?;
            let n = count(p[0], "rate")?;
            raw.limits.rate = (n > 0).then_some(Rate {
                max: n,
                interval: p.get(1).map_or(Ok(DEFAULT_RATE.interval), |s| {
                    secs(s, "rate interval", true)
                })?,
                pause: p
                    .get(2)
                    .map_or(Ok(DEFAULT_RATE.pause), |s| secs(s, "rate pause", false))?,
            });
        }
        "rate-pause" => {
            raw.limits.rate_fixed = match v {
                "fixed" => true,
                "escalate" => false,
                _ => return Err(format!("rate-pause={v:?}: expected fixed or escalate")),
            }
        }
        "proxy-to" | "idle-stop" | "start-timeout" | "max-held" | "proxy-send" | "ready" => {
            let b = raw.backend.get_or_insert_with(|| {
                super::Backend::new(super::Address::Unix(std::path::PathBuf::new()), true)
            });
            match key {
                "proxy-to" => {
                    b.target = super::parse_target(v).map_err(|m| format!("proxy-to: {m}"))?
                }
                "idle-stop" => {
                    let t = secs(v, "idle-stop", false)?;
                    b.idle_stop = (!t.is_zero()).then_some(t);
                }
                "start-timeout" => b.start_timeout = secs(v, "start-timeout", true)?,
                "max-held" => {
                    b.max_held = count(v, "max-held")?;
                }
                "ready" => {
                    b.notify = match v {
                        "notify" => true,
                        "connect" => false,
                        _ => return Err(format!("ready={v:?}: expected connect or notify")),
                    }
                }
                _ => {
                    b.send_proxy = match v {
                        "v1" => Some(ProxyVersion::V1),
                        "v2" => Some(ProxyVersion::V2),
                        "off" | "no" => None,
                        _ => return Err(format!("proxy-send={v:?}: expected v1, v2 or off")),
                    }
                }
            }
        }
        "session-idle" => {
            let t = secs(v, "session-idle", false)?;
            raw.limits.session_idle = (!t.is_zero()).then_some(t);
        }
        "source-rate" => {
            // source-rate=N/SECONDS[/BURST]: a token bucket per source.
            let p = slashes(v, 3, "source-rate=N/SECONDS[/BURST]")?;
            if v == "0" || v == "off" {
                raw.limits.source_rate = None;
                return Ok(());
            }
            if p.len() < 2 {
                return Err(format!("source-rate={v:?}: expected N/SECONDS[/BURST]"));
            }
            let rate = count(p[0], "source-rate")?;
            let interval = secs(p[1], "source-rate interval", true)?;
            let burst = p
                .get(2)
                .map_or(Ok(rate), |b| count(b, "source-rate burst"))?;
            if rate == 0 || burst == 0 {
                return Err(format!(
                    "source-rate={v:?}: rate and burst must be at least 1 (or source-rate=off)"
                ));
            }
            raw.limits.source_rate = Some(Bucket {
                rate,
                interval,
                burst,
            });
        }
        "source-prefix" => {
            // source-prefix=V4LEN/V6LEN (default 32/64).
            let p = slashes(v, 2, "source-prefix=V4LEN/V6LEN")?;
            let (a, b) = (
                p[0],
                p.get(1).copied().ok_or_else(|| {
                    format!("source-prefix={v:?}: expected V4LEN/V6LEN, e.g. 32/64")
                })?,
            );
            let four = count(a, "source-prefix").ok().filter(|&n| n <= 32);
            let six = count(b, "source-prefix").ok().filter(|&n| n <= 128);
            match (four, six) {
                (Some(f), Some(s)) => {
                    raw.limits.prefix4 = f as u8;
                    raw.limits.prefix6 = s as u8;
                }
                _ => {
                    return Err(format!(
                        "source-prefix={v:?}: expected 0-32/0-128, e.g. 32/64"
                    ))
                }
            }
        }
        "crash" => {
            // crash=N/WINDOW[/PAUSE[/LIFETIME]] or crash=off.
            if v == "off" || v == "0" {
                raw.limits.crash = None;
                return Ok(());
            }
            let p = slashes(v, 4, "crash=N/WINDOW[/PAUSE[/LIFETIME]] or off")?;
            if p.len() < 2 {
                return Err(format!(
                    "crash={v:?}: expected N/WINDOW[/PAUSE[/LIFETIME]] or off"
                ));
            }
            let max = count(p[0], "crash")?;
            if max == 0 {
                return Err(format!("crash={v:?}: N must be at least 1 (or crash=off)"));
            }
            raw.limits.crash = Some(Crash {
                max,
                window: secs(p[1], "crash window", true)?,
                pause: p
                    .get(2)
                    .map_or(Ok(DEFAULT_CRASH.pause), |s| secs(s, "crash pause", true))?,
                lifetime: p.get(3).map_or(Ok(DEFAULT_CRASH.lifetime), |s| {
                    secs(s, "crash lifetime", true)
                })?,
            });
        }
        "allow" => add(
            &mut raw.allow,
            acl::parse(v).map_err(|m| format!("allow: {m}"))?,
        ),
        "deny" => add(
            &mut raw.deny,
            acl::parse(v).map_err(|m| format!("deny: {m}"))?,
        ),
        "allow-uid" | "allow-gid" => {
            if v.is_empty() {
                return Err(format!("{key}: expected a user or group name or number"));
            }
            let list = if key == "allow-uid" {
                &mut raw.allow_users
            } else {
                &mut raw.allow_groups
            };
            if !list.iter().any(|x| x == v) {
                list.push(v.to_string());
            }
        }
        "on-full" | "on-source" | "on-deny" | "on-paused" => {
            let fate = Fate::parse(v)
                .ok_or_else(|| format!("{key}={v:?}: expected queue, close, message or reset"))?;
            let queue_ok = matches!(key, "on-full" | "on-paused");
            if fate == Fate::Queue && !queue_ok {
                return Err(format!(
                    "{key}=queue: only a whole service can leave clients queued (on-full, on-paused); use close, message or reset"
                ));
            }
            let r = &mut raw.refusal;
            *match key {
                "on-full" => &mut r.full,
                "on-source" => &mut r.source,
                "on-deny" => &mut r.deny,
                _ => &mut r.paused,
            } = fate;
        }
        "message" => raw.refusal.message = message(v)?.into(),
        "proxy-protocol" => {
            raw.proxy = match v {
                "v1" => Some(ProxyVersion::V1),
                "v2" => Some(ProxyVersion::V2),
                "any" => Some(ProxyVersion::Any),
                "off" | "no" => None,
                _ => return Err(format!("proxy-protocol={v:?}: expected v1, v2, any or off")),
            }
        }
        "proxy-from" => add(
            &mut raw.proxy_from,
            acl::parse(v).map_err(|m| format!("proxy-from: {m}"))?,
        ),
        "proxy-optional" => {
            raw.proxy_optional = match v {
                "yes" | "true" | "1" => true,
                "no" | "false" | "0" => false,
                _ => return Err(format!("proxy-optional={v:?}: expected yes or no")),
            }
        }
        "timeout" => {
            // timeout=SECONDS[/GRACE]
            let p = slashes(v, 2, "timeout=SECONDS[/GRACE]")?;
            let t = secs(p[0], "timeout", false)?;
            raw.exec.runtime_max = (!t.is_zero()).then_some(t);
            if let Some(g) = p.get(1) {
                raw.stop.timeout = Some(secs(g, "timeout grace", false)?);
            }
        }
        "nice" => match v.parse::<i32>() {
            Ok(n) if (-20..=19).contains(&n) => raw.exec.nice = Some(n),
            _ => return Err(format!("nice={v:?}: expected -20 to 19")),
        },
        "umask" => {
            raw.exec.umask = Some(
                u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|&m| m <= 0o777 && !v.is_empty())
                    .ok_or_else(|| format!("umask={v:?}: expected an octal mode such as 022"))?,
            )
        }
        "cwd" => {
            if !v.starts_with('/') {
                return Err(format!("cwd={v:?}: expected an absolute path"));
            }
            raw.exec.cwd = Some(v.into());
        }
        _ => {
            if let Some(resource) = rlimit_resource(key) {
                let r = rlimit(key, resource, v)?;
                raw.exec.rlimits.retain(|x| x.resource != r.resource);
                raw.exec.rlimits.push(r);
            } else {
                return Err(format!(
                    "unknown option {key:?} (known: {})",
                    NAMES.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Applies `key=value` words in order (a unit's `X-Doorman-Options=`, an
/// xinetd `doorman_options`).
pub fn apply_words<'a>(
    raw: &mut RawService,
    words: impl IntoIterator<Item = &'a str>,
) -> Result<(), String> {
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("option {w:?} is not key=value"))?;
        apply(raw, k, v)?;
    }
    Ok(())
}

fn add(list: &mut Vec<acl::Cidr>, more: Vec<acl::Cidr>) {
    for c in more {
        if !list.contains(&c) {
            list.push(c);
        }
    }
}

fn nonzero(n: u32) -> Option<u32> {
    (n > 0).then_some(n)
}

fn slashes<'a>(v: &'a str, max: usize, shape: &str) -> Result<Vec<&'a str>, String> {
    let p: Vec<&str> = v.split('/').collect();
    if p.len() > max {
        return Err(format!("{v:?}: expected {shape}"));
    }
    Ok(p)
}

pub fn count(s: &str, what: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what}: {s:?} is not a number"));
    }
    s.parse::<u32>()
        .map_err(|_| format!("{what}: {s} is too large"))
}

/// Seconds, with an optional `ms`, `s`, `m` or `h` suffix; `positive`
/// refuses zero.
pub fn secs(s: &str, what: &str, positive: bool) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n = u64::from(count(num, what)?);
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(format!(
                "{what}: {s:?} is not a duration (N, Nms, Ns, Nm, Nh)"
            ))
        }
    };
    if positive && d.is_zero() {
        return Err(format!("{what}: must be more than 0"));
    }
    Ok(d)
}

/// A refusal message: `\n`, `\r`, `\t`, `\s` (space), `\,` (comma),
/// `\\` and `\xHH` escapes, at most [`MAX_MESSAGE`] bytes.
pub fn message(v: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b.get(i + 1).copied();
        i += 2;
        match c {
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b's') => out.push(b' '),
            Some(b',') => out.push(b','),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = v.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(hex.ok_or_else(|| format!("message: \\x needs two hex digits in {v:?}"))?);
                i += 2;
            }
            _ => {
                return Err(format!(
                    "message: unknown escape in {v:?} (known: \\n \\r \\t \\s \\, \\\\ \\xHH)"
                ))
            }
        }
    }
    if out.is_empty() || out.len() > MAX_MESSAGE {
        return Err(format!("message: 1 to {MAX_MESSAGE} bytes"));
    }
    Ok(out)
}

fn rlimit_resource(key: &str) -> Option<i32> {
    Some(match key {
        "nofile" => libc::RLIMIT_NOFILE as i32,
        "as" => libc::RLIMIT_AS as i32,
        "cpu" => libc::RLIMIT_CPU as i32,
        "data" => libc::RLIMIT_DATA as i32,
        "nproc" => libc::RLIMIT_NPROC as i32,
        "core" => libc::RLIMIT_CORE as i32,
        "fsize" => libc::RLIMIT_FSIZE as i32,
        "stack" => libc::RLIMIT_STACK as i32,
        _ => return None,
    })
}

/// `SOFT[:HARD]`, each a number with an optional K, M or G suffix
/// (powers of 1024) or `infinity`; one value sets both.
fn rlimit(key: &str, resource: i32, v: &str) -> Result<Rlimit, String> {
    let one = |s: &str| -> Result<u64, String> {
        if s == "infinity" || s == "unlimited" {
            return Ok(libc::RLIM_INFINITY);
        }
        let (num, mult) = match s.as_bytes().last() {
            Some(b'k' | b'K') => (&s[..s.len() - 1], 1u64 << 10),
            Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
            Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
            _ => (s, 1),
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{key}={v:?}: expected N[K|M|G][:N[K|M|G]] or infinity"
            ));
        }
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .ok_or_else(|| format!("{key}={v:?}: too large"))
    };
    let (soft, hard) = match v.split_once(':') {
        Some((s, h)) => (one(s)?, one(h)?),
        None => (one(v)?, one(v)?),
    };
    if soft > hard {
        return Err(format!(
            "{key}={v:?}: the soft limit is above the hard limit"
        ));
    }
    Ok(Rlimit {
        resource,
        soft,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, SockType};
    use crate::error::Origin;

    fn raw() -> RawService {
        RawService::new(Origin::new("t", 1), "t", SockType::Stream, Mode::Accept)
    }

    #[test]
    fn every_option_applies() {
        let mut r = raw();
        apply_words(
            &mut r,
            [
                "max-child=5",
                "max-child-per-ip=2",
                "rate=10/2/3",
                "source-rate=4/10/8",
                "source-prefix=24/48",
                "crash=3/5/7/1",
                "allow=localhost",
                "allow=10.0.0.0/8",
                "deny=any",
                "allow-uid=root",
                "allow-gid=0",
                "on-full=reset",
                "on-source=message",
                "on-deny=reset",
                "on-paused=close",
                "message=go\\saway\\,\\sbye\\r\\n",
                "timeout=30/2",
                "nice=5",
                "umask=027",
                "cwd=/tmp",
                "nofile=64:128",
                "as=1G",
                "cpu=infinity",
            ],
        )
        .unwrap();
        let l = r.limits;
        assert_eq!(l.max_instances, Some(5));
        assert_eq!(l.max_per_source, Some(2));
        assert_eq!(l.rate.unwrap().pause, Duration::from_secs(3));
        let b = l.source_rate.unwrap();
        assert_eq!((b.rate, b.interval.as_secs(), b.burst), (4, 10, 8));
        assert_eq!((l.prefix4, l.prefix6), (24, 48));
        let c = l.crash.unwrap();
        assert_eq!(
            (
                c.max,
                c.window.as_secs(),
                c.pause.as_secs(),
                c.lifetime.as_secs()
            ),
            (3, 5, 7, 1)
        );
        assert_eq!(r.allow.len(), 3);
        assert_eq!(r.deny.len(), 2);
        assert_eq!(r.allow_users, ["root"]);
        assert_eq!(r.allow_groups, ["0"]);
        assert_eq!(r.refusal.full, Fate::Reset);
        assert_eq!(r.refusal.source, Fate::Message);
        assert_eq!(r.refusal.deny, Fate::Reset);
        assert_eq!(r.refusal.paused, Fate::Close);
        assert_eq!(&r.refusal.message[..], b"go away, bye\r\n");
        assert_eq!(r.exec.runtime_max, Some(Duration::from_secs(30)));
        assert_eq!(r.stop.timeout, Some(Duration::from_secs(2)));
        assert_eq!(r.exec.nice, Some(5));
        assert_eq!(r.exec.umask, Some(0o027));
        assert_eq!(r.exec.rlimits.len(), 3);
        assert_eq!(r.exec.rlimits[0].soft, 64);
        assert_eq!(r.exec.rlimits[1].hard, 1 << 30);
        apply(&mut r, "crash", "off").unwrap();
        assert_eq!(r.limits.crash, None);
        apply(&mut r, "timeout", "500ms").unwrap();
        assert_eq!(r.exec.runtime_max, Some(Duration::from_millis(500)));
    }

    #[test]
    fn bad_options_say_why() {
        for (k, v, want) in [
            ("on-source", "queue", "only a whole service"),
            ("on-full", "drop", "expected queue, close"),
            ("allow", "example.com", "host names are not resolved"),
            ("source-rate", "5", "expected N/SECONDS"),
            ("source-rate", "0/10", "at least 1"),
            ("source-prefix", "33/64", "expected 0-32/0-128"),
            ("crash", "0/10", "at least 1"),
            ("timeout", "5x", "not a duration"),
            ("message", "\\q", "unknown escape"),
            ("nofile", "10:5", "soft limit is above"),
            ("nice", "30", "-20 to 19"),
            ("cwd", "tmp", "absolute"),
            ("bogus", "1", "unknown option"),
        ] {
            let e = apply(&mut raw(), k, v).unwrap_err();
            assert!(e.contains(want), "{k}={v}: {e}");
        }
        let long = "x".repeat(MAX_MESSAGE + 1);
        assert!(apply(&mut raw(), "message", &long).is_err());
    }
}
