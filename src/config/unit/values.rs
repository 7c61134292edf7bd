//! Values of unit directives: addresses, words, booleans, numbers, sizes,
//! time spans, signals, resource limits.

use std::time::Duration;

use super::super::inetd::{Family, RawBind};
use super::super::SockType;

/// A `Listen*=` address: `port`, `addr:port`, `[v6]:port`, `/path`, `@name`.
pub fn parse_listen_address(v: &str, ty: SockType) -> Result<RawBind, String> {
    if v.starts_with('/') || v.starts_with('@') {
        if v.len() >= 108 {
            return Err("unix socket path is longer than 107 bytes".into());
        }
        return Ok(RawBind::Unix {
            path: v.to_string(),
            owner: None,
            group: None,
            mode: None,
        });
    }
    if ty == SockType::SeqPacket {
        return Err("seqpacket sockets are served over unix paths only".into());
    }
    if v.starts_with("vsock:") {
        return Err("AF_VSOCK sockets are not supported".into());
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // systemd: a bare port listens on all addresses, IPv6 and IPv4 on
        // one socket (falling back to IPv4 where the host has no IPv6).
        return Ok(RawBind::Inet {
            host: None,
            port: v.to_string(),
            family: Family::Dual,
        });
    }
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or("expected [address]:port")?;
        (h.split('%').next().unwrap_or(h).to_string(), p)
    } else {
        let (h, p) = v
            .rsplit_once(':')
            .ok_or("expected port, address:port, [address]:port, /path or @name")?;
        (h.to_string(), p)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{port:?} is not a port number"));
    }
    if host.parse::<std::net::IpAddr>().is_err() {
        return Err(format!(
            "{host:?} is not an IP address (systemd does not resolve names here)"
        ));
    }
    let family = if host.contains(':') {
        Family::V6
    } else {
        Family::V4
    };
    Ok(RawBind::Inet {
        host: Some(host),
        port: port.to_string(),
        family,
    })
}

/// Splits a command line or list as systemd does: white space separates,
/// `"..."` and `'...'` group, backslash escapes.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                let n = chars.next().ok_or("a trailing backslash")?;
                cur.push(match n {
                    'n' => '\n',
                    't' => '\t',
                    x => x,
                });
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unbalanced quotes".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean")),
    }
}

pub fn parse_u32(v: &str) -> Result<u32, String> {
    v.parse().map_err(|_| format!("{v:?} is not a number"))
}

pub fn parse_mode(v: &str) -> Result<u32, String> {
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|&m| m <= 0o7777)
        .ok_or_else(|| format!("{v:?} is not an octal mode"))
}

/// A size with an optional 1024-based suffix (K, M, G, T).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, mult) = match v.chars().last() {
        Some('K' | 'k') => (&v[..v.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&v[..v.len() - 1], 1 << 20),
        Some('G' | 'g') => (&v[..v.len() - 1], 1 << 30),
        Some('T' | 't') => (&v[..v.len() - 1], 1 << 40),
        _ => (v, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a size"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{v:?} is too large"))
}

pub fn parse_size32(v: &str) -> Result<u32, String> {
    let n = parse_size(v)?;
    u32::try_from(n)
        .ok()
        .filter(|&n| n <= i32::MAX as u32)
        .ok_or_else(|| format!("{v:?} is too large"))
}

/// A time span: `infinity`, a bare number of seconds, or number+unit
/// words (`1min 30s`, `500ms`, `2h`). `None` for infinity.
pub fn parse_timespan(v: &str) -> Result<Option<Duration>, String> {
    let v = v.trim();
    if v == "infinity" {
        return Ok(None);
    }
    let mut total = Duration::ZERO;
    let mut rest = v;
    if rest.is_empty() {
        return Err("empty time span".into());
    }
    while !rest.is_empty() {
        rest = rest.trim_start();
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if num_len == 0 {
            return Err(format!("{v:?} is not a time span"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{v:?} is not a time span"))?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "ms" | "msec" => 0.001,
            "us" | "usec" => 0.000_001,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            _ => return Err(format!("unknown time unit {unit:?}")),
        };
        // systemd's range: a 64-bit count of microseconds. Anything longer
        // (or a number no float holds) is an error, not a panic here or a
        // deadline past what `Instant` can hold in the loop.
        total = Duration::try_from_secs_f64(n * secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .filter(|t| t.as_micros() < u128::from(u64::MAX))
            .ok_or_else(|| format!("{v:?} is too long (say infinity)"))?;
    }
    Ok(Some(total))
}

pub fn parse_signal(v: &str) -> Result<i32, String> {
    if let Ok(n) = v.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|s| s as i32)
            .map_err(|_| format!("{v:?} is not a signal"));
    }
    let name = if v.starts_with("SIG") {
        v.to_string()
    } else {
        format!("SIG{v}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| format!("{v:?} is not a signal"))
}

pub fn rlimit_resource(key: &str) -> Option<i32> {
    Some(match key {
        "LimitCPU" => libc::RLIMIT_CPU,
        "LimitFSIZE" => libc::RLIMIT_FSIZE,
        "LimitDATA" => libc::RLIMIT_DATA,
        "LimitSTACK" => libc::RLIMIT_STACK,
        "LimitCORE" => libc::RLIMIT_CORE,
        "LimitRSS" => libc::RLIMIT_RSS,
        "LimitNOFILE" => libc::RLIMIT_NOFILE,
        "LimitAS" => libc::RLIMIT_AS,
        "LimitNPROC" => libc::RLIMIT_NPROC,
        "LimitMEMLOCK" => libc::RLIMIT_MEMLOCK,
        "LimitLOCKS" => libc::RLIMIT_LOCKS,
        "LimitSIGPENDING" => libc::RLIMIT_SIGPENDING,
        "LimitMSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "LimitNICE" => libc::RLIMIT_NICE,
        "LimitRTPRIO" => libc::RLIMIT_RTPRIO,
        "LimitRTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    } as i32)
}

/// `Limit*=`: `value` or `soft:hard`, `infinity`; sizes with suffixes;
/// `LimitCPU=` a time span in seconds, `LimitRTTIME=` in microseconds.
pub fn parse_rlimit(v: &str, key: &str) -> Result<(u64, u64), String> {
    let one = |x: &str| -> Result<u64, String> {
        if x == "infinity" {
            return Ok(libc::RLIM_INFINITY);
        }
        match key {
            "LimitCPU" => Ok(parse_timespan(x)?.map_or(libc::RLIM_INFINITY, |d| d.as_secs())),
            "LimitRTTIME" => {
                Ok(parse_timespan(x)?.map_or(libc::RLIM_INFINITY, |d| d.as_micros() as u64))
            }
            _ => parse_size(x),
        }
    };
    match v.split_once(':') {
        Some((s, h)) => {
            let (s, h) = (one(s)?, one(h)?);
            if s > h {
                return Err("the soft limit is above the hard limit".into());
            }
            Ok((s, h))
        }
        None => {
            let n = one(v)?;
            Ok((n, n))
        }
    }
}
