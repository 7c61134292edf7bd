//! The PROXY protocol header (HAProxy's versions 1 and 2), as a pure
//! function of the bytes received so far.
//!
//! Owns: recognizing, validating and measuring the header, and the
//! addresses it carries. Must not: read sockets (the loop peeks and feeds
//! bytes in) or trust anything: every length is checked against the
//! buffer before it is used, and the header is bounded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::ProxyVersion;

/// The version 2 signature.
pub const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most this long, CRLF included.
pub const V1_MAX: usize = 107;
/// Version 2 headers longer than this (TLVs included) are refused.
pub const V2_MAX: usize = 16 + 1024;
/// The most bytes worth looking at.
pub const MAX: usize = V2_MAX;

/// What the bytes so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// A valid beginning: more bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes; `addrs` are (source, destination)
    /// for a proxied TCP connection, `None` for `LOCAL` (v2), `UNKNOWN`
    /// (v1) or an address family without IP addresses.
    Done {
        len: usize,
        addrs: Option<(SocketAddr, SocketAddr)>,
    },
}

/// Parses the start of a connection. `Err` names what is wrong: the
/// connection is not (or no longer can be) a PROXY header of `version`.
pub fn parse(buf: &[u8], version: ProxyVersion) -> Result<Header, String> {
    let v1 = b"PROXY ";
    let is_prefix = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    let may_v1 = version != ProxyVersion::V2 && is_prefix(v1);
    let may_v2 = version != ProxyVersion::V1 && is_prefix(V2_SIG);
    if may_v1 && buf.len() >= v1.len() {
        return parse_v1(buf);
    }
    if may_v2 && buf.len() >= V2_SIG.len() {
        return parse_v2(buf);
    }
    if may_v1 || may_v2 {
        return Ok(Header::Incomplete);
    }
    Err(match version {
        ProxyVersion::V1 => "not a PROXY protocol v1 header".into(),
        ProxyVersion::V2 => "not a PROXY protocol v2 header".into(),
        ProxyVersion::Any => "not a PROXY protocol header".into(),
    })
}

fn parse_v1(buf: &[u8]) -> Result<Header, String> {
    let end = buf.iter().take(V1_MAX).position(|&b| b == b'\n');
    let Some(end) = end else {
        return if buf.len() >= V1_MAX {
            Err(format!("v1 header longer than {V1_MAX} bytes"))
        } else {
            Ok(Header::Incomplete)
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err("v1 header does not end with CRLF".into());
    }
    let line = std::str::from_utf8(&buf[..end - 1]).map_err(|_| "v1 header is not ASCII")?;
    let words: Vec<&str> = line.split(' ').collect();
    let len = end + 1;
    match words.get(1).copied() {
        Some("UNKNOWN") => Ok(Header::Done { len, addrs: None }),
        Some(fam @ ("TCP4" | "TCP6")) => {
            if words.len() != 6 {
                return Err(format!("v1 {fam} header needs 4 fields: {line:?}"));
            }
            let ip = |s: &str| -> Result<IpAddr, String> {
                let ip: IpAddr = if fam == "TCP4" {
                    s.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().map(IpAddr::V6)
                }
                .map_err(|_| format!("v1: {s:?} is not an {fam} address"))?;
                Ok(ip)
            };
            let port = |s: &str| -> Result<u16, String> {
                if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("v1: {s:?} is not a port"));
                }
                s.parse().map_err(|_| format!("v1: {s:?} is not a port"))
            };
            let src = SocketAddr::new(ip(words[2])?, port(words[4])?);
            let dst = SocketAddr::new(ip(words[3])?, port(words[5])?);
            Ok(Header::Done {
                len,
                addrs: Some((src, dst)),
            })
        }
        _ => Err(format!("v1: unknown protocol in {line:?}")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Header, String> {
    if buf.len() < 16 {
        return Ok(Header::Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(format!("v2: version {} is not 2", ver_cmd >> 4));
    }
    let cmd = ver_cmd & 0x0f;
    if cmd > 1 {
        return Err(format!("v2: unknown command {cmd}"));
    }
    let fam = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Err(format!("v2 header of {len} bytes is longer than {V2_MAX}"));
    }
    if buf.len() < len {
        return Ok(Header::Incomplete);
    }
    let b = &buf[16..len];
    // LOCAL: the proxy's own connection (health checks): keep the socket's
    // addresses. TLVs after the addresses are skipped.
    if cmd == 0 {
        return Ok(Header::Done { len, addrs: None });
    }
    let addrs = match fam >> 4 {
        0 => None,
        1 => {
            if b.len() < 12 {
                return Err("v2: INET addresses truncated".into());
            }
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]));
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        2 => {
            if b.len() < 36 {
                return Err("v2: INET6 addresses truncated".into());
            }
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        3 => None, // AF_UNIX: no address a TCP handler could use
        f => return Err(format!("v2: unknown address family {f}")),
    };
    Ok(Header::Done { len, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        assert_eq!(
            parse(h, ProxyVersion::V1),
            Ok(Header::Done {
                len: 45,
                addrs: Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")))
            })
        );
        let h = b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n";
        assert_eq!(
            parse(h, ProxyVersion::Any).unwrap(),
            Header::Done {
                len: h.len(),
                addrs: Some((sa("[2001:db8::1]:1"), sa("[::1]:2")))
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN whatever\r\nx", ProxyVersion::V1).unwrap(),
            Header::Done {
                len: 24,
                addrs: None
            }
        );
        // Every truncation of a valid header is incomplete, never wrong.
        let full = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        for n in 0..full.len() {
            assert_eq!(
                parse(&full[..n], ProxyVersion::Any),
                Ok(Header::Incomplete),
                "{n}"
            );
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"GET / HTTP/1.0\r\n",
        ] {
            assert!(parse(bad, ProxyVersion::V1).is_err(), "{bad:?}");
        }
        let long = [b"PROXY ".to_vec(), vec![b'x'; 200]].concat();
        assert!(parse(&long, ProxyVersion::V1)
            .unwrap_err()
            .contains("longer"));
        // v1 is not v2.
        assert!(parse(full, ProxyVersion::V2).is_err());
    }

    #[test]
    fn v2_headers() {
        let mut inet = vec![192, 0, 2, 1, 198, 51, 100, 2];
        inet.extend_from_slice(&56324u16.to_be_bytes());
        inet.extend_from_slice(&443u16.to_be_bytes());
        // With a TLV after the addresses (skipped).
        let mut body = inet.clone();
        body.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]);
        let h = [v2(1, 0x11, &body), b"payload".to_vec()].concat();
        assert_eq!(
            parse(&h, ProxyVersion::V2),
            Ok(Header::Done {
                len: 16 + body.len(),
                addrs: Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")))
            })
        );
        let mut six = Vec::new();
        six.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        six.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        six.extend_from_slice(&[0, 1, 0, 2]);
        assert_eq!(
            parse(&v2(1, 0x21, &six), ProxyVersion::Any).unwrap(),
            Header::Done {
                len: 52,
                addrs: Some((sa("[2001:db8::1]:1"), sa("[::1]:2")))
            }
        );
        // LOCAL keeps the socket's addresses.
        assert_eq!(
            parse(&v2(0, 0x00, &[]), ProxyVersion::V2).unwrap(),
            Header::Done {
                len: 16,
                addrs: None
            }
        );
        let full = v2(1, 0x11, &body);
        for n in 0..full.len() {
            assert_eq!(
                parse(&full[..n], ProxyVersion::V2),
                Ok(Header::Incomplete),
                "{n}"
            );
        }
        assert!(parse(&v2(1, 0x11, &inet[..8]), ProxyVersion::V2).is_err());
        assert!(parse(&v2(1, 0x21, &inet), ProxyVersion::V2).is_err());
        assert!(parse(&v2(2, 0x11, &inet), ProxyVersion::V2).is_err());
        assert!(parse(&v2(1, 0x51, &inet), ProxyVersion::V2).is_err());
        let mut huge = v2(1, 0x11, &inet);
        huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
        assert!(parse(&huge, ProxyVersion::V2)
            .unwrap_err()
            .contains("longer"));
        let mut v3 = full.clone();
        v3[12] = 0x31;
        assert!(parse(&v3, ProxyVersion::V2).is_err());
        assert!(parse(&full, ProxyVersion::V1).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds: [&[u8]; 3] = [
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            &V2_SIG[..],
            b"PROXY TCP6 ::1 ::1 1 2\r\n",
        ];
        for i in 0..20_000 {
            let mut buf = seeds[i % 3].to_vec();
            let extra = (next() % 64) as usize;
            for _ in 0..extra {
                buf.push(next() as u8);
            }
            // Flip a few bytes, then truncate anywhere.
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % buf.len();
                buf[at] = next() as u8;
            }
            let cut = (next() as usize) % (buf.len() + 1);
            for v in [ProxyVersion::V1, ProxyVersion::V2, ProxyVersion::Any] {
                if let Ok(Header::Done { len, .. }) = parse(&buf[..cut], v) {
                    assert!(len <= cut);
                }
            }
        }
    }
}
