//! inetd.conf lines → raw services, every problem with file:line.
//!
//! Owns: the classic grammar with the OpenBSD, FreeBSD and Debian extensions,
//! and doorman's own `key=value` options appended to the wait field.
//! Must not: resolve names (ports, users, groups, hosts); `resolve.rs` does.
//!
//! ```text
//! [addr:]service socket_type protocol[,sndbuf=N][,rcvbuf=N] \
//!     wait|nowait[.max | /max-child[/conn-per-ip-per-min[/max-child-per-ip]]][,key=value...] \
//!     user[:group | .group] server_program [argv0 args...]
//! ```

use std::path::Path;
use std::time::Duration;

use super::{
    acl, options, Bucket, ExecSpec, Handover, Limits, Mode, ProxyVersion, Rate, Refusal, SockOpts,
    SockType, StopSpec,
};
use crate::error::{ConfigError, Origin};

/// The classic default for `nowait.N`: 256 spawns per 60 s (OpenBSD `toomany`).
pub const DEFAULT_RATE: Rate = Rate {
    max: 256,
    interval: Duration::from_secs(60),
    pause: Duration::from_secs(600),
};

/// The protocol field's address family choice (`tcp`, `tcp4`, ... and
/// the same for `udp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 and IPv6 as two sockets (the IPv6 one optional), as Debian's
    /// openbsd-inetd does for plain `tcp`/`udp`.
    Both,
    V4,
    /// IPv6 only (FreeBSD `tcp6`).
    V6,
    /// One dual-stack IPv6 socket that also accepts IPv4 (`tcp46`).
    Dual,
    /// IPv6 only (`tcp6only`).
    V6Only,
}

/// One address clause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawBind {
    /// Host (`None` for all addresses), port or service name, family.
    Inet {
        host: Option<String>,
        port: String,
        family: Family,
    },
    /// A unix socket path with the owner, group and mode of its file.
    Unix {
        path: String,
        owner: Option<String>,
        group: Option<String>,
        mode: Option<u32>,
    },
}

/// A service as written, before names are resolved: what every front end
/// (inetd.conf, xinetd, systemd units, the command line) produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawService {
    pub origin: Origin,
    pub name: String,
    pub binds: Vec<RawBind>,
    pub sock_type: SockType,
    pub sndbuf: Option<u32>,
    pub rcvbuf: Option<u32>,
    pub backlog: Option<i32>,
    /// Overrides the family's `IPV6_V6ONLY` choice (systemd
    /// `BindIPv6Only=`, xinetd `v6only`).
    pub v6only: Option<bool>,
    pub sock_opts: SockOpts,
    pub mode: Mode,
    pub handover: Handover,
    pub limits: Limits,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Extra supplementary groups (systemd `SupplementaryGroups=`).
    pub supplementary_groups: Vec<String>,
    /// Give the handler the user's groups from the group database (as
    /// `initgroups`); xinetd does so only with `groups = yes`.
    pub init_groups: bool,
    pub program: String,
    pub argv: Vec<String>,
    pub fd_name: Option<String>,
    /// A program without a `/` is looked up in `PATH` (command line only).
    pub search_path: bool,
    pub description: Option<String>,
    pub exec: ExecSpec,
    /// `KEY=VALUE` files read at load time (systemd `EnvironmentFile=`);
    /// `true`: a missing file is not an error (the `-` prefix).
    /// (file, `-` optional, where it is named).
    pub env_files: Vec<(String, bool, Option<Origin>)>,
    /// Where the program is named (a unit's `ExecStart=` line), for
    /// warnings about it.
    pub program_origin: Option<Origin>,
    pub stop: StopSpec,
    /// Expand `${VAR}` and `$VAR` in program and argv from the service's
    /// environment, as systemd does for `ExecStart=`.
    pub expand_env: bool,
    /// Access lists (see [`super::Access`]); unix peers by user and group
    /// names or numbers, resolved at load time.
    pub allow: Vec<acl::Cidr>,
    pub deny: Vec<acl::Cidr>,
    pub allow_users: Vec<String>,
    pub allow_groups: Vec<String>,
    pub refusal: Refusal,
    /// `internal` as the program: served by doorman itself (the kind is
    /// the service's name).
    pub internal: bool,
    /// Behind tcpmux as `(NAME, plus)`, with no bind of its own.
    pub tcpmux: Option<(String, bool)>,
    pub proxy: Option<ProxyVersion>,
    pub proxy_from: Vec<acl::Cidr>,
    pub proxy_optional: bool,
    /// `proxy-to=` and its companions (`idle-stop=`, `start-timeout=`,
    /// `max-held=`, `proxy-send=`), checked when resolved.
    pub backend: Option<super::Backend>,
    /// The socket type of each bind, when they differ (a socket unit may
    /// mix `ListenStream=` and `ListenDatagram=`); empty: all `sock_type`.
    pub bind_types: Vec<SockType>,
    /// What a systemd unit adds (its commands still unresolved).
    pub unit: Option<Box<super::UnitExec>>,
}

impl RawService {
    /// A service with every setting at doorman's default.
    pub fn new(
        origin: Origin,
        name: impl Into<String>,
        sock_type: SockType,
        mode: Mode,
    ) -> RawService {
        RawService {
            origin,
            name: name.into(),
            binds: Vec::new(),
            sock_type,
            sndbuf: None,
            rcvbuf: None,
            backlog: None,
            v6only: None,
            sock_opts: SockOpts::default(),
            mode,
            handover: Handover::INETD,
            limits: Limits::default(),
            user: None,
            group: None,
            supplementary_groups: Vec::new(),
            init_groups: true,
            program: String::new(),
            argv: Vec::new(),
            fd_name: None,
            search_path: false,
            description: None,
            exec: ExecSpec {
                inherit_env: true,
                ..ExecSpec::default()
            },
            env_files: Vec::new(),
            program_origin: None,
            stop: StopSpec::default(),
            expand_env: false,
            allow: Vec::new(),
            deny: Vec::new(),
            allow_users: Vec::new(),
            allow_groups: Vec::new(),
            refusal: Refusal::default(),
            internal: false,
            tcpmux: None,
            proxy: None,
            proxy_from: Vec::new(),
            proxy_optional: false,
            backend: None,
            bind_types: Vec::new(),
            unit: None,
        }
    }
}

/// What one file yielded.
#[derive(Debug, Default)]
pub struct Parsed {
    pub services: Vec<RawService>,
    pub warnings: Vec<String>,
    pub errors: Vec<ConfigError>,
}

/// Parses a whole inetd.conf file. Lines doorman does not serve yet are
/// warnings; malformed lines are errors; the rest are services.
pub fn parse(file: &Path, text: &str) -> Parsed {
    let mut out = Parsed::default();
    // Room for a service a line, made once: grown by doubling, the list
    // of 10,000 raw services (1 KiB each) was copied some 14 times.
    // (Comments and blank lines overcount it; it lives for one load.)
    out.services
        .reserve(text.bytes().filter(|&b| b == b'\n').count() + 1);
    let mut default_host: Option<String> = None;
    // One list of fields for every line.
    let mut fields = Vec::with_capacity(8);
    for (i, line) in text.lines().enumerate() {
        let origin = Origin::new(file, i + 1);
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        split_fields(trimmed, &mut fields);
        // OpenBSD: a line holding only `addr:` sets the default address
        // of the lines that follow; `*:` resets it.
        if fields.len() == 1 && fields[0].ends_with(':') {
            match split_host(&fields[0][..fields[0].len() - 1]) {
                Ok(h) => default_host = h,
                Err(m) => out
                    .errors
                    .push(ConfigError::new(&origin, Some("address"), m)),
            }
            continue;
        }
        match parse_line(&origin, &fields, &default_host, &mut out.services) {
            Ok(None) => {}
            Ok(Some(why)) => out.warnings.push(format!("{origin}: {why}; line skipped")),
            Err(e) => out.errors.push(e),
        }
    }
    out
}

/// A line's fields, split at white space. (An ASCII line, nearly every
/// line, is split byte by byte: the same fields, at a fraction of the
/// cost of Unicode's white space test per character. U+000B, white space
/// to Unicode but not to `is_ascii_whitespace`, takes the general path.)
fn split_fields<'a>(line: &'a str, fields: &mut Vec<&'a str>) {
    fields.clear();
    if line.is_ascii() && !line.contains('\x0b') {
        fields.extend(line.split_ascii_whitespace());
    } else {
        fields.extend(line.split_whitespace());
    }
}

/// A unix socket's service field, FreeBSD style:
/// `[:user:group:mode:]/absolute/path` (any of the three may be empty).
fn parse_unix_path(field: &str) -> Result<RawBind, String> {
    let (owner, group, mode, path) = match field.strip_prefix(':') {
        None => (None, None, None, field),
        Some(rest) => {
            let parts: Vec<&str> = rest.splitn(4, ':').collect();
            if parts.len() != 4 {
                return Err(format!(
                    "{field:?}: expected :user:group:mode:/path or /path"
                ));
            }
            let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
            let mode = match parts[2] {
                "" => None,
                m => Some(
                    u32::from_str_radix(m, 8)
                        .ok()
                        .filter(|&v| v <= 0o7777)
                        .ok_or_else(|| format!("mode {m:?} is not an octal file mode"))?,
                ),
            };
            (nonempty(parts[0]), nonempty(parts[1]), mode, parts[3])
        }
    };
    if !path.starts_with('/') {
        return Err(format!("unix socket path {path:?} is not absolute"));
    }
    if path.len() >= 108 {
        return Err(format!(
            "unix socket path {path:?} is longer than 107 bytes"
        ));
    }
    Ok(RawBind::Unix {
        path: path.to_string(),
        owner,
        group,
        mode,
    })
}

/// `*` (all addresses) → `None`; `[v6]` → the address inside.
fn split_host(host: &str) -> Result<Option<String>, String> {
    let host = host.trim();
    if host.is_empty() {
        return Err("empty address".into());
    }
    if host == "*" {
        return Ok(None);
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(v6) if !v6.is_empty() => Ok(Some(v6.to_string())),
            _ => Err(format!("unbalanced brackets in address {host:?}")),
        };
    }
    Ok(Some(host.to_string()))
}

/// Splits `[addr:]service`; `[v6]:service` for IPv6.
fn split_service_field(field: &str) -> Result<(Option<Option<String>>, &str), String> {
    if field.starts_with('[') {
        let close = field
            .find("]:")
            .ok_or_else(|| format!("expected [address]:service, found {field:?}"))?;
        let host = split_host(&field[..=close])?;
        return Ok((Some(host), &field[close + 2..]));
    }
    match field.rsplit_once(':') {
        Some((host, svc)) => Ok((Some(split_host(host)?), svc)),
        None => Ok((None, field)),
    }
}

/// One service line: its service pushed to `out` (`Ok(None)`), or why the
/// line is skipped (`Ok(Some(why))`, a warning), or what is wrong with it.
/// (Pushed, not returned in a box: a box and two copies of a raw service
/// a line.)
fn parse_line(
    origin: &Origin,
    fields: &[&str],
    default_host: &Option<String>,
    out: &mut Vec<RawService>,
) -> Result<Option<String>, ConfigError> {
    let err = |field: &str, msg: String| ConfigError::new(origin, Some(field), msg);
    if fields.len() < 6 {
        return Err(ConfigError::new(
            origin,
            None,
            format!(
                "expected at least 6 fields (service socket_type protocol wait user program), found {}",
                fields.len()
            ),
        ));
    }
    let sock_type = match fields[1] {
        "stream" => SockType::Stream,
        "dgram" => SockType::Dgram,
        "seqpacket" => SockType::SeqPacket,
        "raw" | "rdm" => {
            return Ok(Some(format!(
                "socket type {:?} is not supported",
                fields[1]
            )))
        }
        other => return Err(err("socket_type", format!("unknown socket type {other:?}"))),
    };

    // protocol[,sndbuf=N][,rcvbuf=N]
    let mut proto_parts = fields[2].split(',');
    let proto_name = proto_parts.next().unwrap_or("");
    let (transport, family) = match proto_name {
        "tcp" => ("tcp", Family::Both),
        "tcp4" => ("tcp", Family::V4),
        "tcp6" => ("tcp", Family::V6),
        "tcp46" => ("tcp", Family::Dual),
        "tcp6only" => ("tcp", Family::V6Only),
        "udp" => ("udp", Family::Both),
        "udp4" => ("udp", Family::V4),
        "udp6" => ("udp", Family::V6),
        "udp46" => ("udp", Family::Dual),
        "udp6only" => ("udp", Family::V6Only),
        "unix" => ("unix", Family::Both),
        p if p.starts_with("rpc/") => return Ok(Some("RPC services are not supported".into())),
        other => return Err(err("protocol", format!("unknown protocol {other:?}"))),
    };
    match (sock_type, transport) {
        (SockType::Stream, "tcp") | (SockType::Dgram, "udp") | (_, "unix") => {}
        (SockType::SeqPacket, _) => {
            return Err(err(
                "protocol",
                format!("seqpacket sockets are served over unix only, not {proto_name}"),
            ))
        }
        _ => {
            return Err(err(
                "protocol",
                format!(
                    "socket type {} does not go with protocol {proto_name}",
                    fields[1]
                ),
            ))
        }
    }
    let (mut sndbuf, mut rcvbuf) = (None, None);
    for opt in proto_parts {
        match opt.split_once('=') {
            Some(("sndbuf", v)) => sndbuf = Some(parse_size(v).map_err(|m| err("protocol", m))?),
            Some(("rcvbuf", v)) => rcvbuf = Some(parse_size(v).map_err(|m| err("protocol", m))?),
            _ => {
                return Err(err(
                    "protocol",
                    format!("unknown protocol option {opt:?} (expected sndbuf=N or rcvbuf=N)"),
                ))
            }
        }
    }

    let mut tcpmux = None;
    let (name, bind) = if transport == "unix" {
        let bind = parse_unix_path(fields[0]).map_err(|m| err("service", m))?;
        let RawBind::Unix { path, .. } = &bind else {
            unreachable!("parse_unix_path makes unix binds")
        };
        (path.clone(), bind)
    } else {
        let (host, name) = split_service_field(fields[0]).map_err(|m| err("service", m))?;
        let host = host.unwrap_or_else(|| default_host.clone());
        if name.is_empty() {
            return Err(err("service", "empty service name".into()));
        }
        if let Some(sub) = name.strip_prefix("tcpmux/") {
            // Served behind the tcpmux service (RFC 1078), on no port of
            // its own: `tcpmux/NAME`, or `tcpmux/+NAME` to answer "+" first.
            let (plus, sub) = match sub.strip_prefix('+') {
                Some(s) => (true, s),
                None => (false, sub),
            };
            if sub.is_empty() || !sub.chars().all(|c| c.is_ascii_graphic()) {
                return Err(err(
                    "service",
                    format!("{name:?}: expected tcpmux/NAME or tcpmux/+NAME"),
                ));
            }
            if sock_type != SockType::Stream || transport != "tcp" {
                return Err(err(
                    "service",
                    format!("{name:?}: tcpmux services are stream tcp"),
                ));
            }
            tcpmux = Some((sub.to_string(), plus));
        }
        let bind = RawBind::Inet {
            host,
            port: name.to_string(),
            family,
        };
        (name.to_string(), bind)
    };

    let wait = parse_wait(fields[3]).map_err(|m| err("wait", m))?;
    if wait.mode == Mode::Accept && !sock_type.accepts() && transport == "unix" {
        return Err(err(
            "wait",
            "unix dgram services must be wait: a unix datagram client may have no address to answer (per-peer sessions are for udp)"
                .into(),
        ));
    }

    let (user, group) = split_user(fields[4]).map_err(|m| err("user", m))?;

    let program = fields[5];
    let internal = program == "internal";
    if internal && transport == "unix" {
        return Err(err(
            "server_program",
            "internal services are served over tcp and udp".into(),
        ));
    }
    if !internal && !program.starts_with('/') {
        return Err(err(
            "server_program",
            format!("{program:?} is not an absolute path"),
        ));
    }
    let argv: Vec<String> = if fields.len() > 6 || internal {
        // `internal [KIND]`: the kind, if given, else the service's name.
        fields[6..].iter().map(|s| s.to_string()).collect()
    } else {
        let base = program.rsplit('/').next().unwrap_or(program);
        vec![base.to_string()]
    };

    let mut svc = RawService::new(origin.clone(), name, sock_type, wait.mode);
    svc.binds = if tcpmux.is_some() {
        Vec::new()
    } else {
        vec![bind]
    };
    svc.tcpmux = tcpmux;
    svc.internal = internal;
    svc.sndbuf = sndbuf;
    svc.rcvbuf = rcvbuf;
    svc.limits = wait.limits;
    svc.user = Some(user);
    svc.group = group;
    svc.program = program.to_string();
    svc.argv = argv;
    for (k, v) in &wait.opts {
        options::apply(&mut svc, k, v).map_err(|m| err("wait", m))?;
    }
    out.push(svc);
    Ok(None)
}

/// What the wait field says: the mode, the classic limits, and doorman's
/// options (applied in order by [`options::apply`]).
#[derive(Debug, PartialEq, Eq)]
struct WaitField {
    mode: Mode,
    limits: Limits,
    opts: Vec<(String, String)>,
}

/// `wait|nowait` + `.max` (OpenBSD/Debian) or `/max-child/per-ip-per-min/
/// max-child-per-ip` (FreeBSD), then doorman's `,key=value` options.
fn parse_wait(field: &str) -> Result<WaitField, String> {
    let mut parts = split_options(field);
    let base = parts.next().unwrap_or("");
    let (word, rest) = match base.find(['.', '/']) {
        Some(i) => (&base[..i], &base[i..]),
        None => (base, ""),
    };
    let mode = match word {
        "nowait" => Mode::Accept,
        "wait" => Mode::Wait,
        other => return Err(format!("expected wait or nowait, found {other:?}")),
    };
    let mut limits = Limits {
        rate: Some(DEFAULT_RATE),
        ..Limits::default()
    };
    if let Some(max) = rest.strip_prefix('.') {
        let n = parse_count(max, "the .max rate")?;
        limits.rate = (n > 0).then_some(Rate {
            max: n,
            ..DEFAULT_RATE
        });
    } else if let Some(slashes) = rest.strip_prefix('/') {
        let nums: Vec<&str> = slashes.split('/').collect();
        if nums.len() > 3 {
            return Err(format!(
                "too many /-separated limits in {base:?} (max-child/max-conn-per-ip-per-min/max-child-per-ip)"
            ));
        }
        let names = ["max-child", "max-conn-per-ip-per-min", "max-child-per-ip"];
        let mut vals = [None; 3];
        for (i, n) in nums.iter().enumerate() {
            let v = parse_count(n, names[i])?;
            vals[i] = (v > 0).then_some(v);
        }
        limits.max_instances = vals[0];
        // FreeBSD's connections per IP per minute, as a bucket that refills
        // continuously rather than a window that resets.
        limits.source_rate = vals[1].map(|n| Bucket {
            rate: n,
            interval: Duration::from_secs(60),
            burst: n,
        });
        limits.max_per_source = vals[2];
    } else if !rest.is_empty() {
        return Err(format!("unexpected {rest:?} after {word}"));
    }
    let mut opts = Vec::new();
    for opt in parts {
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| format!("option {opt:?} is not key=value"))?;
        opts.push((k.to_string(), v.to_string()));
    }
    Ok(WaitField { mode, limits, opts })
}

/// Splits the wait field at commas, except escaped ones (`\,`, kept for
/// `message=`).
/// (An iterator, not a list: a list a line, for the one word most wait
/// fields hold.)
fn split_options(field: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(field);
    std::iter::from_fn(move || {
        let f = rest?;
        let b = f.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b',' => {
                    rest = Some(&f[i + 1..]);
                    return Some(&f[..i]);
                }
                _ => i += 1,
            }
        }
        rest = None;
        Some(f)
    })
}

fn parse_count(s: &str, what: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what}: {s:?} is not a number"));
    }
    s.parse::<u32>()
        .map_err(|_| format!("{what}: {s} is too large"))
}

/// A buffer size: a number with an optional `k` or `m` suffix (OpenBSD).
fn parse_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1024u64),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n = u64::from(parse_count(num, "buffer size")?) * mult;
    u32::try_from(n)
        .ok()
        .filter(|&n| n <= i32::MAX as u32)
        .ok_or_else(|| format!("buffer size {s} is too large"))
}

/// `user`, `user:group`, `user.group`; FreeBSD's `/login-class` suffix is
/// refused rather than ignored.
fn split_user(field: &str) -> Result<(String, Option<String>), String> {
    if field.contains('/') {
        return Err(format!(
            "{field:?}: login classes (user/class) are not supported"
        ));
    }
    let (user, group) = match field.split_once(':').or_else(|| field.split_once('.')) {
        Some((u, g)) => (u, Some(g)),
        None => (field, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(format!("{field:?}: empty user or group name"));
    }
    Ok((user.to_string(), group.map(str::to_string)))
}

/// Parses a `--listen` argument: `PORT`, `ADDR:PORT`, `[V6ADDR]:PORT`,
/// `*:PORT`, or a unix socket path (`/path`, `unix:/path`).
pub fn parse_listen(arg: &str) -> Result<RawBind, String> {
    if let Some(path) = arg
        .strip_prefix("unix:")
        .or(arg.starts_with('/').then_some(arg))
    {
        return parse_unix_path(path);
    }
    let (host, port) = match split_service_field(arg)? {
        (Some(h), p) => (h, p),
        (None, p) => (None, p),
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "--listen {arg:?}: expected PORT, ADDR:PORT, [V6ADDR]:PORT or /PATH"
        ));
    }
    let family = match &host {
        Some(h) if h.contains(':') => Family::V6,
        _ => Family::Both,
    };
    Ok(RawBind::Inet {
        host,
        port: port.to_string(),
        family,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_as_unicode_white_space_splits_them() {
        let mut got = vec!["left", "over"];
        for line in [
            "echo stream tcp nowait root internal",
            "a\tb  c\x0cd\re",
            "a\x0bb c",
            "a\u{a0}b\u{2003}c d",
            "caf\u{e9} stream tcp",
            "",
            "  lone  ",
        ] {
            let want: Vec<&str> = line.split_whitespace().collect();
            // (The list is reused: what the last line left is cleared.)
            split_fields(line, &mut got);
            assert_eq!(got, want, "{line:?}");
        }
    }

    fn one(line: &str) -> Parsed {
        parse(Path::new("t.conf"), line)
    }

    fn inet(b: &RawBind) -> (Option<&str>, &str, Family) {
        match b {
            RawBind::Inet { host, port, family } => (host.as_deref(), port.as_str(), *family),
            RawBind::Unix { .. } => panic!("not inet: {b:?}"),
        }
    }

    #[test]
    fn classic_line() {
        let p = one("echo\tstream  tcp nowait root /bin/cat cat -u\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let s = &p.services[0];
        assert_eq!(s.name, "echo");
        assert_eq!(inet(&s.binds[0]), (None, "echo", Family::Both));
        assert_eq!(s.argv, vec!["cat", "-u"]);
        assert_eq!(s.user.as_deref(), Some("root"));
        assert_eq!(s.limits.rate, Some(DEFAULT_RATE));
        assert_eq!(s.handover, Handover::INETD);
    }

    #[test]
    fn addresses_and_defaults() {
        let p = one("127.0.0.1:\n9999 stream tcp nowait root /bin/cat cat\n[::1]:ftp stream tcp6 nowait root /bin/cat cat\n*:\n7 stream tcp nowait root /bin/cat cat\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(inet(&p.services[0].binds[0]).0, Some("127.0.0.1"));
        assert_eq!(inet(&p.services[1].binds[0]).0, Some("::1"));
        assert_eq!(p.services[1].name, "ftp");
        assert_eq!(inet(&p.services[2].binds[0]).0, None);
    }

    #[test]
    fn wait_field_variants() {
        let w = parse_wait("nowait.5").unwrap();
        assert_eq!(w.limits.rate.unwrap().max, 5);
        let w = parse_wait("nowait/2/30/1").unwrap();
        assert_eq!(w.limits.max_instances, Some(2));
        assert_eq!(
            w.limits.source_rate.map(|b| (b.rate, b.burst)),
            Some((30, 30))
        );
        assert_eq!(w.limits.max_per_source, Some(1));
        assert_eq!(w.limits.rate, Some(DEFAULT_RATE));
        let w = parse_wait("nowait/10,handover=fd3,fdname=web,message=a\\,b").unwrap();
        assert_eq!(
            w.opts,
            [("handover", "fd3"), ("fdname", "web"), ("message", "a\\,b")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(parse_wait("nowait.0").unwrap().limits.rate, None);
        assert!(parse_wait("nowiat").is_err());
        assert!(parse_wait("nowait.x").is_err());
        assert!(parse_wait("nowait/1/2/3/4").is_err());
        assert!(parse_wait("nowait,handover").is_err());
        assert!(parse_wait("nowait.99999999999").is_err());
    }

    #[test]
    fn unsupported_lines_warn_and_errors_name_line() {
        let p = one("# c\n\nsunrpc/1 dgram rpc/udp wait root /usr/sbin/rpcd rpcd\necho stream tcp nowait root internal\nbad stream tcp\nx stream tcp nowait root relative x\n");
        assert_eq!(p.services.len(), 1);
        assert!(p.services[0].internal);
        assert!(
            p.services[0].argv.is_empty(),
            "the kind is the service's name"
        );
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].starts_with("t.conf:3: "), "{}", p.warnings[0]);
        assert_eq!(p.errors.len(), 2);
        assert_eq!(p.errors[0].origin.line, 5);
        assert_eq!(p.errors[1].origin.line, 6);
        assert_eq!(p.errors[1].field.as_deref(), Some("server_program"));
    }

    #[test]
    fn wait_datagram_unix_and_seqpacket() {
        let p = one(
            "tftp dgram udp wait root /usr/sbin/in.tftpd in.tftpd -s /srv\n\
            :nobody:nogroup:0660:/run/x.sock stream unix nowait root /bin/cat cat\n\
            /run/y.sock seqpacket unix wait root /bin/cat cat\n\
            /run/z.sock dgram unix wait/3 root /bin/cat cat\n\
            9999 stream tcp wait root /bin/cat cat\n",
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.services.len(), 5);
        assert_eq!(p.services[0].mode, Mode::Wait);
        assert_eq!(p.services[0].sock_type, SockType::Dgram);
        assert_eq!(inet(&p.services[0].binds[0]), (None, "tftp", Family::Both));
        assert_eq!(
            p.services[1].binds[0],
            RawBind::Unix {
                path: "/run/x.sock".into(),
                owner: Some("nobody".into()),
                group: Some("nogroup".into()),
                mode: Some(0o660)
            }
        );
        assert_eq!(p.services[1].name, "/run/x.sock");
        assert_eq!(p.services[2].sock_type, SockType::SeqPacket);
        assert_eq!(p.services[3].limits.max_instances, Some(3));
        assert_eq!(p.services[4].mode, Mode::Wait);
        // Refused with file:line: dgram nowait, seqpacket over tcp,
        // mismatched type and protocol, relative or bad unix paths.
        let p = one("/run/d.sock dgram unix nowait root /bin/cat cat\n\
            x seqpacket tcp nowait root /bin/cat cat\n\
            x stream udp nowait root /bin/cat cat\n\
            run/x.sock stream unix nowait root /bin/cat cat\n\
            :a:b:999:/x stream unix nowait root /bin/cat cat\n\
            :a:b:/x stream unix nowait root /bin/cat cat\n");
        assert_eq!(p.errors.len(), 6, "{:?}", p.errors);
        assert!(p.errors[0]
            .message
            .contains("unix dgram services must be wait"));
        // UDP nowait: one handler per peer; tcpmux services have no bind.
        let p = one("x dgram udp nowait root /bin/cat cat\ntcpmux/+hello stream tcp nowait root /bin/cat cat\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.services[0].mode, Mode::Accept);
        assert!(p.services[1].binds.is_empty());
        assert_eq!(p.services[1].tcpmux, Some(("hello".to_string(), true)));
        for (i, e) in p.errors.iter().enumerate() {
            assert_eq!(e.origin.line, i + 1);
        }
    }

    #[test]
    fn user_and_buffers() {
        let p = one("echo stream tcp,sndbuf=64k,rcvbuf=1024 nowait nobody:nogroup /bin/cat cat\n7 stream tcp nowait nobody.nogroup /bin/cat\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.services[0].sndbuf, Some(65536));
        assert_eq!(p.services[0].rcvbuf, Some(1024));
        assert_eq!(p.services[0].group.as_deref(), Some("nogroup"));
        assert_eq!(p.services[1].group.as_deref(), Some("nogroup"));
        assert_eq!(p.services[1].argv, vec!["cat"]);
        assert!(split_user("u/class").is_err());
        assert!(split_user(":g").is_err());
    }

    #[test]
    fn listen_forms() {
        assert_eq!(inet(&parse_listen("9999").unwrap()).0, None);
        let b = parse_listen("127.0.0.1:9999").unwrap();
        assert_eq!((inet(&b).0, inet(&b).1), (Some("127.0.0.1"), "9999"));
        let b = parse_listen("[::1]:80").unwrap();
        assert_eq!(inet(&b), (Some("::1"), "80", Family::V6));
        assert!(matches!(
            parse_listen("/run/x.sock").unwrap(),
            RawBind::Unix { .. }
        ));
        assert!(matches!(
            parse_listen("unix:/run/x.sock").unwrap(),
            RawBind::Unix { .. }
        ));
        assert!(parse_listen("[::1:80").is_err());
        assert!(parse_listen("host:http").is_err());
    }
}

#[cfg(test)]
mod real_files {
    use super::*;

    /// Real files from each variant parse with no error (what doorman does
    /// not serve yet is a warning), as the variant means them.
    #[test]
    fn shipped_inetd_confs_parse() {
        for (name, text) in [
            ("debian", include_str!("../../tests/data/debian-inetd.conf")),
            (
                "freebsd",
                include_str!("../../tests/data/freebsd-inetd.conf"),
            ),
            (
                "openbsd",
                include_str!("../../tests/data/openbsd-inetd.conf"),
            ),
        ] {
            let p = parse(Path::new(name), text);
            assert!(p.errors.is_empty(), "{name}: {:?}", p.errors);
        }
        let p = parse(
            Path::new("openbsd"),
            include_str!("../../tests/data/openbsd-inetd.conf"),
        );
        // OpenBSD's file has active lines, among them address-prefixed ones.
        assert!(!p.services.is_empty() || !p.warnings.is_empty());
    }
}
