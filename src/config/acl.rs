//! Access lists as written: address prefixes and the keywords that stand
//! for several, parsed once at load time.
//!
//! Owns: [`Cidr`] (an address and prefix length, host bits cleared) and
//! the one grammar shared by every front end (`--allow`, inetd.conf
//! `allow=`, systemd `IPAddressAllow=`, xinetd `only_from` after its own
//! forms are rewritten). Must not: decide admission (`policy` does) or
//! resolve host names: doorman makes no DNS lookups, at load time or in
//! the loop, so a name is a clear error.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address prefix: `addr/len` with the host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// A prefix, host bits cleared; `None` if `len` is too long.
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return None;
        }
        Some(Cidr {
            addr: mask(addr, len),
            len,
        })
    }

    /// Whether `ip` lies in this prefix. IPv4-mapped IPv6 addresses
    /// (`::ffff:a.b.c.d`) match IPv4 prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `ip` with all but its first `len` bits cleared.
pub fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// One access-list word: an address (`10.1.2.3`, `::1`, `[::1]`), a prefix
/// (`10.0.0.0/8`, `fe80::/10`), or a keyword as systemd has them: `any`
/// (also `all`), `localhost`, `link-local`, `multicast`. Several prefixes
/// for a keyword.
pub fn parse(word: &str) -> Result<Vec<Cidr>, String> {
    let both = |a: &str, b: &str| -> Vec<Cidr> {
        [a, b]
            .iter()
            .map(|s| parse_one(s).expect("built-in prefix"))
            .collect()
    };
    match word {
        "any" | "all" => return Ok(both("0.0.0.0/0", "::/0")),
        "localhost" => return Ok(both("127.0.0.0/8", "::1/128")),
        "link-local" => return Ok(both("169.254.0.0/16", "fe80::/64")),
        "multicast" => return Ok(both("224.0.0.0/4", "ff00::/8")),
        _ => {}
    }
    parse_one(word).map(|c| vec![c])
}

fn parse_one(word: &str) -> Result<Cidr, String> {
    let (addr, len) = match word.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (word, None),
    };
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    let ip: IpAddr = addr.parse().map_err(|_| {
        if !addr.is_empty()
            && addr
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && addr.chars().any(|c| c.is_ascii_alphabetic())
        {
            format!(
                "{word:?}: host names are not resolved (doorman makes no DNS lookups); \
                 give an address or prefix, or any, localhost, link-local, multicast"
            )
        } else {
            format!("{word:?} is not an IP address or ADDRESS/PREFIXLEN")
        }
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&n| n <= max && l.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("{word:?}: prefix length {l:?} is not 0 to {max}"))?,
    };
    Ok(Cidr::new(ip, len).expect("length checked"))
}

/// Parses a list of words (each possibly a keyword) into prefixes.
pub fn parse_list<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Vec<Cidr>, String> {
    let mut out = Vec::new();
    for w in words {
        for c in parse(w)? {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_and_keywords() {
        let c = parse("10.1.2.3/8").unwrap();
        assert_eq!(c[0].to_string(), "10.0.0.0/8");
        assert!(c[0].contains(ip("10.200.0.1")));
        assert!(!c[0].contains(ip("11.0.0.1")));
        assert!(c[0].contains(ip("::ffff:10.9.9.9")), "mapped v4");
        assert!(!c[0].contains(ip("::1")));
        let h = parse("[::1]").unwrap();
        assert_eq!(h[0].to_string(), "::1/128");
        assert!(h[0].contains(ip("::1")));
        assert_eq!(parse("any").unwrap().len(), 2);
        assert!(parse("any")
            .unwrap()
            .iter()
            .any(|c| c.contains(ip("1.2.3.4"))));
        assert!(parse("localhost")
            .unwrap()
            .iter()
            .any(|c| c.contains(ip("127.9.0.1"))));
        assert!(parse("fe80::/10").unwrap()[0].contains(ip("fe80::1")));
        assert_eq!(parse("0.0.0.0/0").unwrap()[0].len, 0);
    }

    #[test]
    fn errors_are_clear() {
        let e = parse("example.com").unwrap_err();
        assert!(e.contains("host names are not resolved"), "{e}");
        assert!(parse("10.0.0.0/33").unwrap_err().contains("prefix length"));
        assert!(parse("::/129").unwrap_err().contains("prefix length"));
        assert!(parse("10.0.0.0/+8").is_err());
        assert!(parse("1.2.3.4.5")
            .unwrap_err()
            .contains("not an IP address"));
        assert!(parse("").is_err());
    }

    #[test]
    fn lists_drop_duplicates() {
        let l = parse_list(["localhost", "127.0.0.1/8", "::1"]).unwrap();
        assert_eq!(l.len(), 2);
    }
}
