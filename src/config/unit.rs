//! systemd `.socket` + `.service` unit pairs → raw services.
//!
//! Owns: the INI subset systemd uses (sections, `\` continuation, `#`/`;`
//! comments, drop-in directories `NAME.socket.d/*.conf` applied in order,
//! empty assignments resetting lists), pairing a socket with its service
//! (`Service=`, else `NAME.service` for `Accept=no`, `NAME@.service` for
//! `Accept=yes`), `ExecStart=` quoting, prefixes and specifiers, and the
//! mapping of every directive doorman knows onto the one model. An unknown
//! directive is a warning with file:line, as systemd gives; a known one
//! doorman cannot honour is an error; a harmless one is a warning saying it
//! is not applied.
//! Must not: resolve names (`resolve.rs` does).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::inetd::{Family, Parsed, RawBind, RawService};
use super::{acl, options, Handover, Mode, Rate, Rlimit, SockType, StdFd};
use crate::error::{ConfigError, Origin};

/// The marker standing for `%i` and `%n` in a template's `ExecStart=`
/// until a connection gives the instance its name (see `spawn::image`).
pub const INSTANCE_MARK: &str = "\u{1}instance\u{1}";

/// One `Key=Value` as written, with where.
#[derive(Clone, Debug)]
struct Assignment {
    section: String,
    key: String,
    value: String,
    origin: Origin,
}

/// Reads a unit file and its drop-ins (`FILE.d/*.conf`, in name order).
fn read_unit(path: &Path, errors: &mut Vec<ConfigError>) -> Option<Vec<Assignment>> {
    let text = match super::read_text_bounded(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError::new(&Origin::new(path, 0), None, e.to_string()));
            return None;
        }
    };
    let mut out = parse_ini(path, &text, errors);
    let mut dropin_dir = path.as_os_str().to_owned();
    dropin_dir.push(".d");
    if let Ok(entries) = std::fs::read_dir(&dropin_dir) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        files.sort();
        for f in files {
            match super::read_text_bounded(&f) {
                Ok(t) => out.extend(parse_ini(&f, &t, errors)),
                Err(e) => errors.push(ConfigError::new(&Origin::new(&f, 0), None, e.to_string())),
            }
        }
    }
    Some(out)
}

/// The INI subset of systemd.syntax(7).
fn parse_ini(path: &Path, text: &str, errors: &mut Vec<ConfigError>) -> Vec<Assignment> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let origin = Origin::new(path, i + 1);
        let mut line = raw.trim().to_string();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        // Continuation: a trailing backslash joins the next line (comment
        // lines in between are skipped, as systemd does).
        while line.ends_with('\\') {
            line.pop();
            line.push(' ');
            match lines.next() {
                Some((_, next)) => {
                    let next = next.trim();
                    if next.starts_with('#') || next.starts_with(';') {
                        // A comment inside a continuation is skipped and the
                        // continuation goes on (systemd.syntax(7)).
                        line.pop();
                        line.push('\\');
                        continue;
                    }
                    line.push_str(next);
                }
                None => break,
            }
        }
        if let Some(name) = line.strip_prefix('[') {
            match name.strip_suffix(']') {
                Some(n) => section = n.to_string(),
                None => errors.push(ConfigError::new(
                    &origin,
                    None,
                    format!("bad section header {line:?}"),
                )),
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            errors.push(ConfigError::new(
                &origin,
                None,
                format!("expected Key=Value, found {line:?}"),
            ));
            continue;
        };
        if section.is_empty() {
            errors.push(ConfigError::new(
                &origin,
                Some(k.trim()),
                "assignment outside of a section",
            ));
            continue;
        }
        out.push(Assignment {
            section: section.clone(),
            key: k.trim().to_string(),
            value: v.trim().to_string(),
            origin,
        });
    }
    out
}

/// Whether `path` names a unit doorman reads as a pair's socket half.
pub fn is_socket_unit(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "socket")
}

/// Every `*.socket` in a directory, in name order.
pub fn parse_dir(dir: &Path) -> Parsed {
    let mut out = Parsed::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(e) => e
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_socket_unit(p))
            .collect(),
        Err(e) => {
            out.errors
                .push(ConfigError::new(&Origin::new(dir, 0), None, e.to_string()));
            return out;
        }
    };
    files.sort();
    for f in files {
        let p = parse_socket_unit(&f);
        out.services.extend(p.services);
        out.warnings.extend(p.warnings);
        out.errors.extend(p.errors);
    }
    out
}

/// A `.socket` unit and the `.service` it activates.
pub fn parse_socket_unit(path: &Path) -> Parsed {
    let mut out = Parsed::default();
    let Some(socket) = read_unit(path, &mut out.errors) else {
        return out;
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("x.socket");
    let unit_name = file_name
        .strip_suffix(".socket")
        .unwrap_or(file_name)
        .to_string();
    let accept = last(&socket, "Socket", "Accept")
        .map_or(Ok(false), |a| parse_bool(&a.value).map_err(|m| err(a, m)));
    let accept = match accept {
        Ok(b) => b,
        Err(e) => {
            out.errors.push(e);
            false
        }
    };
    // Pairing, as systemd does.
    let service_file = match last(&socket, "Socket", "Service") {
        Some(a) => a.value.clone(),
        None if accept => format!("{unit_name}@.service"),
        None => format!("{unit_name}.service"),
    };
    let service_path = path.with_file_name(&service_file);
    let Some(service) = read_unit(&service_path, &mut out.errors) else {
        // A service file named by `Service=` that cannot be read is that
        // line's error (file:line), not one of a file without lines.
        if let Some(a) = last(&socket, "Socket", "Service") {
            if let Some(e) = out.errors.pop() {
                let msg = format!("cannot read {}: {}", service_path.display(), e.message);
                out.errors.push(err(a, msg));
            }
        }
        return out;
    };
    let mut b = Builder {
        raw: RawService::new(
            Origin::new(path, 0),
            &unit_name,
            SockType::Stream,
            if accept { Mode::Accept } else { Mode::Wait },
        ),
        errors: Vec::new(),
        warnings: Vec::new(),
        service_file,
    };
    // systemd's default is RemoveOnStop=no: the socket file stays.
    b.raw.sock_opts.keep_on_stop = true;
    // A unit's handler gets the environment systemd.exec(5) assembles
    // (the manager's PATH and locale, the user's variables, what the unit
    // sets or passes), not doorman's own.
    b.raw.exec.inherit_env = false;
    b.raw.exec.manager_env = true;
    if !accept {
        // systemd names Accept=no sockets after the socket unit.
        b.raw.fd_name = Some(file_name.to_string());
    }
    b.socket(&socket);
    b.service(&service);
    out.errors.extend(b.errors);
    out.warnings.extend(b.warnings);
    if out.errors.is_empty() {
        out.services.push(b.raw);
    }
    out
}

fn last<'a>(a: &'a [Assignment], section: &str, key: &str) -> Option<&'a Assignment> {
    a.iter()
        .rev()
        .find(|x| x.section == section && x.key == key)
}

fn err(a: &Assignment, msg: impl Into<String>) -> ConfigError {
    ConfigError::new(&a.origin, Some(&a.key), msg)
}

struct Builder {
    raw: RawService,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    service_file: String,
}

/// Directives accepted and not applied, because they change nothing that
/// matters to a socket-activated handler here (documented in doorman.conf(5)).
const HARMLESS: &[(&str, &str)] = &[
    ("Socket", "Timestamping"),
    ("Socket", "PassCredentials"),
    ("Socket", "PassSecurity"),
    ("Socket", "PassPacketInfo"),
    ("Socket", "Priority"),
    ("Socket", "Mark"),
    ("Socket", "IPTOS"),
    ("Socket", "IPTTL"),
    ("Socket", "DeferAcceptSec"),
    ("Socket", "KeepAliveTimeSec"),
    ("Socket", "KeepAliveIntervalSec"),
    ("Socket", "KeepAliveProbes"),
    ("Socket", "PipeSize"),
    ("Service", "Restart"),
    ("Service", "RestartSec"),
    ("Service", "RemainAfterExit"),
    ("Service", "TimeoutStartSec"),
    ("Service", "SyslogIdentifier"),
];

/// Directives doorman knows and cannot honour: an error, never ignored.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("Socket", "ListenFIFO"),
    ("Socket", "ListenSpecial"),
    ("Socket", "ListenNetlink"),
    ("Socket", "ListenMessageQueue"),
    ("Socket", "ListenUSBFunction"),
    ("Socket", "BindToDevice"),
    ("Socket", "Transparent"),
    ("Socket", "Broadcast"),
    ("Socket", "ExecStartPre"),
    ("Socket", "ExecStartPost"),
    ("Socket", "ExecStopPre"),
    ("Socket", "ExecStopPost"),
    ("Socket", "Writable"),
    ("Socket", "MessageQueueMaxMessages"),
    ("Service", "ExecStartPre"),
    ("Service", "ExecStartPost"),
    ("Service", "ExecStop"),
    ("Service", "ExecStopPost"),
    ("Service", "ExecReload"),
    ("Service", "RootDirectory"),
    ("Service", "Sockets"),
    ("Service", "PrivateTmp"),
    ("Service", "ProtectSystem"),
    ("Service", "ProtectHome"),
    ("Service", "NoNewPrivileges"),
    ("Socket", "Symlinks"),
    ("Socket", "SocketProtocol"),
];

impl Builder {
    /// Whether `a` is a directive of `section` for the caller to apply.
    /// `[Unit]` `Description=` is taken here (the socket's first, it is read
    /// first); other sections are passed over or warned about.
    fn take(&mut self, a: &Assignment, section: &str, known: &[&str]) -> bool {
        if a.section == "Unit" && a.key == "Description" {
            if self.raw.description.is_none() {
                self.raw.description = Some(a.value.clone());
            }
            return false;
        }
        if a.section != section {
            if a.section != "Unit" && a.section != "Install" {
                self.check_known(a, &[]);
            }
            return false;
        }
        self.check_known(a, known)
    }

    fn check_known(&mut self, a: &Assignment, known: &[&str]) -> bool {
        if known.contains(&a.key.as_str()) {
            return true;
        }
        let key = (a.section.as_str(), a.key.as_str());
        if UNSUPPORTED.contains(&key) {
            self.errors.push(err(a, "is not supported by doorman"));
        } else if HARMLESS.contains(&key) {
            self.warnings.push(format!(
                "{}: {}= is accepted and not applied",
                a.origin, a.key
            ));
        } else if !matches!(
            a.section.as_str(),
            "Unit" | "Install" | "Socket" | "Service"
        ) {
            self.warnings.push(format!(
                "{}: unknown section [{}], ignored",
                a.origin, a.section
            ));
        } else if !matches!(a.section.as_str(), "Unit" | "Install") {
            self.warnings.push(format!(
                "{}: unknown directive {}=, ignored",
                a.origin, a.key
            ));
        }
        false
    }

    fn socket(&mut self, all: &[Assignment]) {
        const KNOWN: &[&str] = &[
            "ListenStream",
            "ListenDatagram",
            "ListenSequentialPacket",
            "Accept",
            "Service",
            "MaxConnections",
            "MaxConnectionsPerSource",
            "Backlog",
            "BindIPv6Only",
            "ReusePort",
            "FreeBind",
            "KeepAlive",
            "NoDelay",
            "ReceiveBuffer",
            "SendBuffer",
            "SocketUser",
            "SocketGroup",
            "SocketMode",
            "DirectoryMode",
            "RemoveOnStop",
            "FileDescriptorName",
            "TriggerLimitIntervalSec",
            "TriggerLimitBurst",
            "PollLimitIntervalSec",
            "PollLimitBurst",
            "IPAddressAllow",
            "IPAddressDeny",
            "Description",
            "X-Doorman-Options",
        ];
        let (mut ip_allow, mut ip_deny) = (Vec::new(), Vec::new());
        let mut late_options: Vec<String> = Vec::new();
        let mut allow_at = None;
        let mut listens: Vec<(SockType, &Assignment)> = Vec::new();
        let (mut sock_user, mut sock_group, mut sock_mode) = (None, None, None);
        let mut max_conn: Option<u32> = Some(64);
        let mut trigger = (Duration::from_secs(2), None::<u32>);
        let mut poll = (Duration::from_secs(2), None::<u32>);
        let mut bind_v6 = None;
        for a in all.iter() {
            if !self.take(a, "Socket", KNOWN) {
                continue;
            }
            let v = a.value.as_str();
            let r: Result<(), String> = (|| {
                match a.key.as_str() {
                    "ListenStream" | "ListenDatagram" | "ListenSequentialPacket" => {
                        if v.is_empty() {
                            listens.clear();
                        } else {
                            let t = match a.key.as_str() {
                                "ListenStream" => SockType::Stream,
                                "ListenDatagram" => SockType::Dgram,
                                _ => SockType::SeqPacket,
                            };
                            listens.push((t, a));
                        }
                    }
                    "MaxConnections" => max_conn = Some(parse_u32(v)?).filter(|&n| n > 0),
                    "MaxConnectionsPerSource" => {
                        self.raw.limits.max_per_source = Some(parse_u32(v)?).filter(|&n| n > 0)
                    }
                    "Backlog" => {
                        self.raw.backlog =
                            Some(i32::try_from(parse_u32(v)?).map_err(|_| "too large")?)
                    }
                    "BindIPv6Only" => {
                        bind_v6 = match v {
                            "default" => None,
                            "both" => Some(false),
                            "ipv6-only" => Some(true),
                            _ => return Err("expected default, both or ipv6-only".into()),
                        }
                    }
                    "ReusePort" => self.raw.sock_opts.reuseport = parse_bool(v)?,
                    "FreeBind" => self.raw.sock_opts.freebind = parse_bool(v)?,
                    "KeepAlive" => self.raw.sock_opts.keepalive = parse_bool(v)?,
                    "NoDelay" => self.raw.sock_opts.nodelay = parse_bool(v)?,
                    "ReceiveBuffer" => self.raw.rcvbuf = Some(parse_size32(v)?),
                    "SendBuffer" => self.raw.sndbuf = Some(parse_size32(v)?),
                    "SocketUser" => sock_user = Some(v.to_string()).filter(|s| !s.is_empty()),
                    "SocketGroup" => sock_group = Some(v.to_string()).filter(|s| !s.is_empty()),
                    "SocketMode" => sock_mode = Some(parse_mode(v)?),
                    "DirectoryMode" => self.raw.sock_opts.directory_mode = Some(parse_mode(v)?),
                    "RemoveOnStop" => self.raw.sock_opts.keep_on_stop = !parse_bool(v)?,
                    "FileDescriptorName" => {
                        if v.is_empty()
                            || v.len() > 255
                            || !v.chars().all(|c| c.is_ascii_graphic() && c != ':')
                        {
                            return Err("expected 1 to 255 printable characters, no ':'".into());
                        }
                        self.raw.fd_name = Some(v.to_string());
                    }
                    "TriggerLimitIntervalSec" => {
                        trigger.0 = parse_timespan(v)?.unwrap_or(Duration::ZERO)
                    }
                    "TriggerLimitBurst" => trigger.1 = Some(parse_u32(v)?),
                    "PollLimitIntervalSec" => poll.0 = parse_timespan(v)?.unwrap_or(Duration::ZERO),
                    "PollLimitBurst" => poll.1 = Some(parse_u32(v)?),
                    "IPAddressAllow" | "IPAddressDeny" => {
                        let list = if a.key == "IPAddressAllow" {
                            allow_at = Some(a.origin.clone());
                            &mut ip_allow
                        } else {
                            &mut ip_deny
                        };
                        if v.is_empty() {
                            list.clear();
                        }
                        for c in acl::parse_list(v.split_whitespace())? {
                            if !list.contains(&c) {
                                list.push(c);
                            }
                        }
                    }
                    "X-Doorman-Options" => {
                        // Checked now, applied after the directives so
                        // that they win over MaxConnections= & co.
                        let mut scratch = self.raw.clone();
                        options::apply_words(&mut scratch, v.split_whitespace())?;
                        late_options.push(v.to_string());
                    }
                    _ => {} // Accept, Service: read before
                }
                Ok(())
            })();
            if let Err(m) = r {
                self.errors.push(err(a, m));
            }
        }
        // systemd: an allow list without a deny list restricts nothing
        // (allow only makes exceptions to deny). So here too, but say so.
        if !ip_allow.is_empty() && ip_deny.is_empty() {
            if let Some(at) = allow_at {
                self.warnings.push(format!(
                    "{at}: IPAddressAllow= without IPAddressDeny= lets every client in (as in systemd); add IPAddressDeny=any to allow only these"
                ));
            }
            ip_allow.clear();
        }
        self.raw.allow.extend(ip_allow);
        self.raw.deny.extend(ip_deny);
        if listens.is_empty() {
            self.errors.push(ConfigError::new(
                &self.raw.origin,
                Some("ListenStream"),
                "the socket unit listens on nothing",
            ));
            return;
        }
        let ty = listens[0].0;
        self.raw.sock_type = ty;
        self.raw.v6only = bind_v6;
        for (t, a) in &listens {
            if *t != ty {
                self.errors.push(err(
                    a,
                    "all Listen*= of one unit must be of the same socket type here",
                ));
                continue;
            }
            match parse_listen_address(&a.value, ty) {
                Ok(RawBind::Unix { path, .. }) => self.raw.binds.push(RawBind::Unix {
                    path,
                    owner: sock_user.clone(),
                    group: sock_group.clone(),
                    mode: sock_mode,
                }),
                Ok(b) => self.raw.binds.push(b),
                Err(m) => self.errors.push(err(a, m)),
            }
        }
        if self.raw.mode == Mode::Accept {
            if ty == SockType::Dgram {
                self.errors.push(err(
                    listens[0].1,
                    "Accept=yes is for stream and seqpacket sockets (as in systemd); for one handler per UDP peer use a `dgram udp nowait` inetd.conf line or --socket-type dgram without --wait",
                ));
            }
            self.raw.limits.max_instances = max_conn;
        }
        // systemd.socket(5): TriggerLimitBurst= defaults to 200 activations
        // per 2 s for Accept=yes and 20 otherwise; PollLimitBurst= to 150
        // and 15 polling events per 2 s, per socket. Over the poll limit
        // the socket is not polled for the rest of the interval (clients
        // wait in the backlog), as in systemd; over the trigger limit the
        // service pauses for the interval and resumes by itself, where
        // systemd fails the socket unit until it is restarted.
        let accept = self.raw.mode == Mode::Accept;
        let burst_default = if accept { 200 } else { 20 };
        let trig_burst = trigger.1.unwrap_or(burst_default);
        self.raw.limits.rate = (trig_burst > 0 && !trigger.0.is_zero()).then_some(Rate {
            max: trig_burst,
            interval: trigger.0,
            pause: trigger.0,
        });
        let poll_burst = poll.1.unwrap_or(if accept { 150 } else { 15 });
        self.raw.limits.poll = (poll_burst > 0 && !poll.0.is_zero()).then_some(Rate {
            max: poll_burst,
            interval: poll.0,
            pause: poll.0,
        });
        for v in &late_options {
            options::apply_words(&mut self.raw, v.split_whitespace()).expect("checked when read");
        }
    }

    fn service(&mut self, all: &[Assignment]) {
        const KNOWN: &[&str] = &[
            "ExecStart",
            "User",
            "Group",
            "SupplementaryGroups",
            "Environment",
            "EnvironmentFile",
            "PassEnvironment",
            "UnsetEnvironment",
            "WorkingDirectory",
            "UMask",
            "Nice",
            "StandardInput",
            "StandardOutput",
            "StandardError",
            "KillMode",
            "KillSignal",
            "TimeoutStopSec",
            "RuntimeMaxSec",
            "X-Doorman-Options",
            "Type",
            "LimitCPU",
            "LimitFSIZE",
            "LimitDATA",
            "LimitSTACK",
            "LimitCORE",
            "LimitRSS",
            "LimitNOFILE",
            "LimitAS",
            "LimitNPROC",
            "LimitMEMLOCK",
            "LimitLOCKS",
            "LimitSIGPENDING",
            "LimitMSGQUEUE",
            "LimitNICE",
            "LimitRTPRIO",
            "LimitRTTIME",
        ];
        let mut exec: Vec<&Assignment> = Vec::new();
        let (mut stdin, mut stdout, mut stderr) = (None::<String>, None::<String>, None::<String>);
        let mut env: Vec<(String, String)> = Vec::new();
        for a in all.iter() {
            if !self.take(a, "Service", KNOWN) {
                continue;
            }
            let v = a.value.as_str();
            let r: Result<(), String> = (|| {
                match a.key.as_str() {
                    "ExecStart" => {
                        if v.is_empty() {
                            exec.clear();
                        } else {
                            exec.push(a);
                        }
                    }
                    "User" => self.raw.user = Some(v.to_string()).filter(|s| !s.is_empty()),
                    "Group" => self.raw.group = Some(v.to_string()).filter(|s| !s.is_empty()),
                    "SupplementaryGroups" => {
                        if v.is_empty() {
                            self.raw.supplementary_groups.clear();
                        }
                        self.raw.supplementary_groups.extend(v.split_whitespace().map(str::to_string));
                    }
                    "Environment" => {
                        if v.is_empty() {
                            env.clear();
                        }
                        for word in split_words(v)? {
                            let (k, val) = word.split_once('=').ok_or_else(|| format!("{word:?} is not VAR=value"))?;
                            env.retain(|(ek, _)| ek != k);
                            env.push((k.to_string(), val.to_string()));
                        }
                    }
                    "PassEnvironment" => {
                        if v.is_empty() {
                            self.raw.exec.pass_env.clear();
                        }
                        for name in split_words(v)? {
                            if !self.raw.exec.pass_env.contains(&name) {
                                self.raw.exec.pass_env.push(name);
                            }
                        }
                    }
                    "UnsetEnvironment" => {
                        if v.is_empty() {
                            self.raw.exec.unset_env.clear();
                        }
                        self.raw.exec.unset_env.extend(split_words(v)?);
                    }
                    "EnvironmentFile" => {
                        if v.is_empty() {
                            self.raw.env_files.clear();
                        } else {
                            let (optional, f) = match v.strip_prefix('-') {
                                Some(f) => (true, f),
                                None => (false, v),
                            };
                            self.raw.env_files.push((f.to_string(), optional));
                        }
                    }
                    "WorkingDirectory" => {
                        let (optional, d) = match v.strip_prefix('-') {
                            Some(d) => (true, d),
                            None => (false, v),
                        };
                        // "-": a missing directory is not an error (the
                        // handler then runs where doorman does).
                        self.raw.exec.cwd = (!d.is_empty() && d != "~" && (!optional || Path::new(d).is_dir()))
                            .then(|| PathBuf::from(d));
                        if d == "~" {
                            return Err("~ (the user's home) is not supported; give the path".into());
                        }
                    }
                    "UMask" => self.raw.exec.umask = Some(parse_mode(v)?),
                    "Nice" => {
                        let n: i32 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
                        if !(-20..=19).contains(&n) {
                            return Err("expected -20 to 19".into());
                        }
                        self.raw.exec.nice = Some(n);
                    }
                    "StandardInput" => stdin = Some(v.to_string()),
                    "StandardOutput" => stdout = Some(v.to_string()),
                    "StandardError" => stderr = Some(v.to_string()),
                    "KillMode" => {
                        self.raw.stop.group = match v {
                            "control-group" | "mixed" => Some(true),
                            "process" => Some(false),
                            "none" => None,
                            _ => return Err("expected control-group, mixed, process or none".into()),
                        }
                    }
                    "KillSignal" => self.raw.stop.signal = parse_signal(v)?,
                    "TimeoutStopSec" => self.raw.stop.timeout = parse_timespan(v)?,
                    "RuntimeMaxSec" => {
                        self.raw.exec.runtime_max = parse_timespan(v)?.filter(|d| !d.is_zero())
                    }
                    "X-Doorman-Options" => options::apply_words(&mut self.raw, v.split_whitespace())?,
                    "Type" => match v {
                        "simple" | "exec" | "oneshot" => {}
                        "notify" | "notify-reload" | "forking" | "dbus" | "idle" => self.warnings.push(format!(
                            "{}: Type={v} is run as Type=simple (doorman does not wait for readiness)",
                            a.origin
                        )),
                        _ => return Err(format!("unknown service type {v:?}")),
                    },
                    k => {
                        let res = rlimit_resource(k).expect("listed in KNOWN");
                        self.raw.exec.rlimits.retain(|r| r.resource != res);
                        let (soft, hard) = parse_rlimit(v, k)?;
                        self.raw.exec.rlimits.push(Rlimit { resource: res, soft, hard });
                    }
                }
                Ok(())
            })();
            if let Err(m) = r {
                self.errors.push(err(a, m));
            }
        }
        self.raw.exec.set_env = env;
        self.handover(stdin, stdout, stderr);
        match exec.as_slice() {
            [] => self.errors.push(ConfigError::new(
                &Origin::new(self.raw.origin.file.with_file_name(&self.service_file), 0),
                Some("ExecStart"),
                "no ExecStart= in the service",
            )),
            [a] => {
                if let Err(m) = self.exec_start(a) {
                    self.errors.push(err(a, m));
                }
            }
            [.., a] => self.errors.push(err(
                a,
                "more than one ExecStart= (only Type=oneshot may, and doorman runs one command)",
            )),
        }
    }

    /// `StandardInput=socket` gives the socket on fd 0 (and, by systemd's
    /// defaults, 1 and 2) without `LISTEN_FDS`; otherwise the socket goes to
    /// fd 3 with `LISTEN_FDS`, fds 0 on /dev/null and 1/2 to the log.
    fn handover(&mut self, stdin: Option<String>, stdout: Option<String>, stderr: Option<String>) {
        let origin = self.raw.origin.clone();
        let mut bad = |what: &str, v: &str| {
            self.errors.push(ConfigError::new(
                &origin,
                Some(what),
                format!(
                    "{v:?} is not supported (socket, null, inherit, journal, syslog, kmsg, tty)"
                ),
            ));
            StdFd::Null
        };
        let stdin_fd = match stdin.as_deref() {
            None | Some("null") => StdFd::Null,
            Some("socket") => StdFd::Socket,
            Some(v) => bad("StandardInput", v),
        };
        let out = |v: Option<&str>, inherit: StdFd, default: StdFd| -> Result<StdFd, String> {
            Ok(match v {
                None => default,
                Some("inherit") => inherit,
                Some("null") => StdFd::Null,
                Some("socket") => StdFd::Socket,
                Some(
                    "journal" | "syslog" | "kmsg" | "journal+console" | "syslog+console"
                    | "kmsg+console" | "tty",
                ) => StdFd::Log,
                Some(v) => return Err(v.to_string()),
            })
        };
        // systemd: StandardOutput= defaults to inherit when the input is a
        // socket (else to the journal); StandardError= to inherit, that is
        // whatever stdout is.
        let stdout_default = if stdin_fd == StdFd::Socket {
            StdFd::Socket
        } else {
            StdFd::Log
        };
        let stdout_fd = match out(stdout.as_deref(), stdin_fd, stdout_default) {
            Ok(f) => f,
            Err(v) => bad("StandardOutput", &v),
        };
        let stderr_fd = match out(stderr.as_deref(), stdout_fd, stdout_fd) {
            Ok(f) => f,
            Err(v) => bad("StandardError", &v),
        };
        let h = Handover {
            stdin: stdin_fd,
            stdout: stdout_fd,
            stderr: stderr_fd,
            listen_fds: stdin_fd != StdFd::Socket,
        };
        if !h.listen_fds && self.raw.binds.len() > 1 {
            self.errors.push(ConfigError::new(
                &origin,
                Some("StandardInput"),
                "StandardInput=socket needs a socket unit with exactly one Listen*=",
            ));
        }
        self.raw.handover = h;
    }

    /// `ExecStart=[-@:+!]path args...` with quoting and specifiers.
    fn exec_start(&mut self, a: &Assignment) -> Result<(), String> {
        let mut v = a.value.as_str();
        let mut at = false;
        let mut no_expand = false;
        while let Some(c) = v.chars().next() {
            match c {
                '-' => v = &v[1..],
                ':' => {
                    no_expand = true;
                    v = &v[1..];
                }
                '@' => {
                    at = true;
                    v = &v[1..];
                }
                '+' | '!' => {
                    return Err(format!(
                        "the {c:?} prefix (privileged execution) is not supported"
                    ))
                }
                _ => break,
            }
        }
        let words = split_words(v)?;
        let words: Vec<String> = words
            .iter()
            .map(|w| self.specifiers(w))
            .collect::<Result<_, _>>()?;
        let Some(program) = words.first() else {
            return Err("empty command".into());
        };
        if !program.starts_with('/') {
            return Err(format!("{program:?} is not an absolute path"));
        }
        let argv: Vec<String> = if at {
            if words.len() < 2 {
                return Err("the @ prefix needs argv[0] after the program".into());
            }
            words[1..].to_vec()
        } else {
            words.clone()
        };
        self.raw.program = program.clone();
        self.raw.argv = argv;
        // `${VAR}`/`$VAR` are expanded by resolve, once EnvironmentFile=
        // has been read.
        self.raw.expand_env = !no_expand;
        Ok(())
    }

    /// `%i %n %N %p %%` (and `%I`, `%P` unescaped the same way here).
    fn specifiers(&self, w: &str) -> Result<String, String> {
        let template = self.service_file.contains("@.");
        let prefix = self
            .service_file
            .split(['@', '.'])
            .next()
            .unwrap_or("")
            .to_string();
        let mut out = String::new();
        let mut chars = w.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some('i' | 'I') if template => out.push_str(INSTANCE_MARK),
                Some('i' | 'I') => {}
                Some('n') if template => out.push_str(&format!("{prefix}@{INSTANCE_MARK}.service")),
                Some('n') => out.push_str(&self.service_file),
                Some('N') if template => out.push_str(&format!("{prefix}@{INSTANCE_MARK}")),
                Some('N') => out.push_str(self.service_file.trim_end_matches(".service")),
                Some('p' | 'P') => out.push_str(&prefix),
                Some(x) => {
                    return Err(format!(
                        "specifier %{x} is not supported (known: %i %I %n %N %p %P %%)"
                    ))
                }
                None => return Err("a lone % at the end (write %% for a percent sign)".into()),
            }
        }
        Ok(out)
    }
}

/// A `Listen*=` address: `port`, `addr:port`, `[v6]:port`, `/path`, `@name`.
fn parse_listen_address(v: &str, ty: SockType) -> Result<RawBind, String> {
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

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean")),
    }
}

fn parse_u32(v: &str) -> Result<u32, String> {
    v.parse().map_err(|_| format!("{v:?} is not a number"))
}

fn parse_mode(v: &str) -> Result<u32, String> {
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|&m| m <= 0o7777)
        .ok_or_else(|| format!("{v:?} is not an octal mode"))
}

/// A size with an optional 1024-based suffix (K, M, G, T).
fn parse_size(v: &str) -> Result<u64, String> {
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

fn parse_size32(v: &str) -> Result<u32, String> {
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

fn parse_signal(v: &str) -> Result<i32, String> {
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

fn rlimit_resource(key: &str) -> Option<i32> {
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
fn parse_rlimit(v: &str, key: &str) -> Result<(u64, u64), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_quotes() {
        assert_eq!(
            split_words(r#"/bin/sh -c "echo 'a b'" x\ y"#).unwrap(),
            ["/bin/sh", "-c", "echo 'a b'", "x y"]
        );
        assert!(split_words("\"open").is_err());
    }

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("10").unwrap(), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_timespan("1min 30s").unwrap(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_timespan("500ms").unwrap(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_timespan("infinity").unwrap(), None);
        assert!(parse_timespan("5 parsecs").is_err());
    }

    #[test]
    fn listen_addresses() {
        assert!(matches!(
            parse_listen_address("9999", SockType::Stream),
            Ok(RawBind::Inet {
                host: None,
                family: Family::Dual,
                ..
            })
        ));
        assert!(matches!(
            parse_listen_address("127.0.0.1:80", SockType::Stream),
            Ok(RawBind::Inet {
                family: Family::V4,
                ..
            })
        ));
        assert!(matches!(
            parse_listen_address("[::1]:80", SockType::Stream),
            Ok(RawBind::Inet {
                family: Family::V6,
                ..
            })
        ));
        assert!(matches!(
            parse_listen_address("/run/x.sock", SockType::Stream),
            Ok(RawBind::Unix { .. })
        ));
        assert!(matches!(
            parse_listen_address("@abstract", SockType::Stream),
            Ok(RawBind::Unix { .. })
        ));
        assert!(parse_listen_address("localhost:80", SockType::Stream).is_err());
        assert!(parse_listen_address("vsock:2:80", SockType::Stream).is_err());
    }

    #[test]
    fn rlimits_and_signals() {
        assert_eq!(
            parse_rlimit("1024:4096", "LimitNOFILE").unwrap(),
            (1024, 4096)
        );
        assert_eq!(parse_rlimit("8M", "LimitAS").unwrap(), (8 << 20, 8 << 20));
        assert_eq!(
            parse_rlimit("infinity", "LimitAS").unwrap().0,
            libc::RLIM_INFINITY
        );
        assert!(parse_rlimit("10:5", "LimitNOFILE").is_err());
        assert_eq!(parse_signal("SIGINT").unwrap(), libc::SIGINT);
        assert_eq!(parse_signal("HUP").unwrap(), libc::SIGHUP);
        assert_eq!(parse_signal("9").unwrap(), 9);
    }
}
