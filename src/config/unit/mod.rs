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

use super::inetd::{Parsed, RawBind, RawService};
use super::{acl, options, Handover, Mode, Rate, Rlimit, SockType, StdFd};
use crate::error::{ConfigError, Origin};

/// The marker standing for `%i` and `%n` in a template's `ExecStart=`
/// until a connection gives the instance its name (see `spawn::image`).
pub const INSTANCE_MARK: &str = "\u{1}instance\u{1}";

mod ini;
mod service;
mod socket;
mod values;

use ini::{read_unit, Assignment};
use values::*;
pub use values::{parse_timespan, split_words};

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
}

#[cfg(test)]
mod tests {
    use super::super::inetd::Family;
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
