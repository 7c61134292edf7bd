//! The internal services' protocols as pure functions: what echo,
//! discard, chargen, daytime, time and tcpmux say. The loop
//! (`server/inside.rs`) moves the bytes, never blocking.
//!
//! Owns: the chargen pattern, the daytime text, the RFC 868 number, and
//! reading a tcpmux request line. Must not: do I/O.

use std::time::{SystemTime, UNIX_EPOCH};

/// chargen's 95 printable characters, twice, so that any 72-character
/// line is one slice.
const PRINTABLE: &[u8; 190] = b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~ !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
/// A chargen line: 72 characters and CRLF.
pub const LINE: usize = 74;

/// Line `n` of chargen's endless output (RFC 864: each line starts one
/// character further along).
pub fn chargen_line(n: u64) -> [u8; LINE] {
    let start = (n % 95) as usize;
    let mut line = [0u8; LINE];
    line[..72].copy_from_slice(&PRINTABLE[start..start + 72]);
    line[72] = b'\r';
    line[73] = b'\n';
    line
}

/// Fills `out` with chargen's stream from byte `offset` on.
pub fn chargen_fill(offset: u64, out: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < out.len() {
        let line = chargen_line(pos / LINE as u64);
        let at = (pos % LINE as u64) as usize;
        let n = (LINE - at).min(out.len() - i);
        out[i..i + n].copy_from_slice(&line[at..at + n]);
        i += n;
        pos += n as u64;
    }
}

/// RFC 868: seconds since 1900-01-01 00:00 UTC, modulo 2^32.
pub fn rfc868_time(now: SystemTime) -> [u8; 4] {
    const OFFSET: u64 = 2_208_988_800; // 1900 → 1970
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .wrapping_add(OFFSET);
    (secs as u32).to_be_bytes()
}

/// RFC 867: the local date and time as one line, as inetd writes it
/// (`ctime` format: `Wed Nov 25 07:10:00 2026\r\n`).
pub fn daytime(now: SystemTime) -> Vec<u8> {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r writes only into `tm`, which we own; `secs` is a
    // valid time_t.
    let ok = !unsafe { libc::localtime_r(&secs, &mut tm) }.is_null();
    if !ok {
        return b"?\r\n".to_vec();
    }
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}\r\n",
        DAYS[tm.tm_wday.clamp(0, 6) as usize],
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        tm.tm_year + 1900
    )
    .into_bytes()
}

/// The longest tcpmux request line read.
pub const TCPMUX_MAX: usize = 256;

/// What a tcpmux client asked for so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// No full line yet.
    Incomplete,
    /// `HELP`: list the services.
    Help,
    /// A service name (case as sent; matching ignores case).
    Service(String),
    /// Too long, or not text.
    Bad,
}

/// Reads the request line from what has arrived (RFC 1078: a name
/// terminated by CRLF; a bare LF is accepted).
pub fn tcpmux_request(buf: &[u8]) -> (Request, usize) {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        let r = if buf.len() >= TCPMUX_MAX {
            Request::Bad
        } else {
            Request::Incomplete
        };
        return (r, 0);
    };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(name) = std::str::from_utf8(line) else {
        return (Request::Bad, end + 1);
    };
    let name = name.trim();
    let r = if name.eq_ignore_ascii_case("help") {
        Request::Help
    } else if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
        Request::Bad
    } else {
        Request::Service(name.to_string())
    };
    (r, end + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn chargen_rotates() {
        let a = chargen_line(0);
        assert_eq!(&a[..3], b" !\"");
        assert_eq!(&a[72..], b"\r\n");
        assert_eq!(chargen_line(1)[0], b'!');
        assert_eq!(chargen_line(95), a);
        let mut buf = [0u8; 300];
        chargen_fill(0, &mut buf);
        assert_eq!(&buf[..LINE], &a[..]);
        assert_eq!(&buf[LINE..2 * LINE], &chargen_line(1)[..]);
        let mut part = [0u8; 10];
        chargen_fill(70, &mut part);
        assert_eq!(&part[..], &buf[70..80]);
    }

    #[test]
    fn time_and_daytime() {
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(u32::from_be_bytes(rfc868_time(t)), 3_208_988_800);
        let d = String::from_utf8(daytime(SystemTime::now())).unwrap();
        assert!(d.ends_with("\r\n") && d.len() == 26, "{d:?}");
    }

    #[test]
    fn tcpmux_lines() {
        assert_eq!(tcpmux_request(b"hel"), (Request::Incomplete, 0));
        assert_eq!(tcpmux_request(b"HELP\r\n"), (Request::Help, 6));
        assert_eq!(
            tcpmux_request(b"Hello\r\nrest"),
            (Request::Service("Hello".into()), 7)
        );
        assert_eq!(tcpmux_request(b"\r\n"), (Request::Bad, 2));
        assert_eq!(tcpmux_request(&[b'x'; TCPMUX_MAX]).0, Request::Bad);
        assert_eq!(tcpmux_request(b"a b\n").0, Request::Bad);
    }
}
