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

mod condition;
mod ini;
mod proxyd;
mod sandbox;
mod service;
mod socket;
pub mod table;
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
    let mut backend_unit = Vec::new();
    match proxyd::find(&service) {
        Some(exec) => {
            // systemd-socket-proxyd in front of a backend unit: doorman
            // relays itself and starts the backend unit on demand.
            backend_unit = b.socket_proxyd(path, exec, &service);
            b.unit_sections(&socket);
            b.unit_sections(&service);
            b.unit_sections(&backend_unit);
        }
        None => {
            b.service(&service);
            b.unit_sections(&socket);
            b.unit_sections(&service);
        }
    }
    b.backend_mode();
    // Conditions of both units, as systemd evaluates them when it starts
    // the socket and then the service.
    let conditions: Vec<&Assignment> = socket
        .iter()
        .chain(service.iter())
        .chain(backend_unit.iter())
        .filter(|a| a.section == "Unit" && condition_key(&a.key))
        .collect();
    let verdict = condition::check(&conditions, &mut b.warnings);
    out.errors.extend(b.errors);
    out.warnings.extend(b.warnings);
    if !out.errors.is_empty() {
        return out;
    }
    match verdict {
        Ok(()) => out.services.push(b.raw),
        Err(why) => out.warnings.push(why),
    }
    out
}

/// `Condition*=` and `Assert*=`.
fn condition_key(key: &str) -> bool {
    key.starts_with("Condition") || key.starts_with("Assert")
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

impl Builder {
    /// Whether `a` is a directive of `section` for the caller to apply
    /// (`table::TABLE` says so); others of that section are dealt with
    /// here: warned about, refused, or passed over, as the table says.
    fn take(&mut self, a: &Assignment, section: &str) -> bool {
        if a.section != section {
            return false;
        }
        match table::lookup(section, &a.key) {
            Some(table::Use::Applied) => true,
            Some(use_) => {
                self.note(a, use_);
                false
            }
            None => {
                self.warnings.push(format!(
                    "{}: unknown directive {}=, ignored",
                    a.origin, a.key
                ));
                false
            }
        }
    }

    fn note(&mut self, a: &Assignment, use_: table::Use) {
        match use_ {
            table::Use::Warn(why) => self
                .warnings
                .push(format!("{}: {}= is accepted and {why}", a.origin, a.key)),
            table::Use::Error(hint) => self
                .errors
                .push(err(a, format!("is not supported by doorman: {hint}"))),
            table::Use::Quiet | table::Use::Applied => {}
        }
    }

    /// `[Unit]` and `[Install]` of one unit file, and sections doorman does
    /// not know. `Description=` is taken from the first unit that has one
    /// (the socket, read first); `[Install]` gets one warning per file.
    fn unit_sections(&mut self, all: &[Assignment]) {
        let mut install_at = None;
        let mut unknown: Vec<(String, String)> = Vec::new();
        for a in all {
            match a.section.as_str() {
                "Unit" if condition_key(&a.key) => {}
                "Unit" => match table::lookup("Unit", &a.key) {
                    Some(table::Use::Applied) => {
                        if a.key == "Description" && self.raw.description.is_none() {
                            self.raw.description = Some(a.value.clone());
                        }
                    }
                    Some(u) => self.note(a, u),
                    None => self.warnings.push(format!(
                        "{}: unknown directive {}=, ignored",
                        a.origin, a.key
                    )),
                },
                "Install" => {
                    install_at.get_or_insert_with(|| a.origin.clone());
                }
                "Socket" | "Service" => {}
                other => {
                    let file = a.origin.file.display().to_string();
                    if !unknown.iter().any(|(f, s)| *f == file && s == other) {
                        unknown.push((file, other.to_string()));
                        self.warnings
                            .push(format!("{}: unknown section [{other}], ignored", a.origin));
                    }
                }
            }
        }
        if let Some(at) = install_at {
            self.warnings.push(format!(
                "{at}: [Install] is accepted and not applied: doorman serves every unit it is given (there is nothing to enable, and no alias)"
            ));
        }
    }

    /// Specifiers (systemd.unit(5)): `%i %I %n %N %p %P` (a template's
    /// instance is known only per connection: `connection`), the system
    /// manager's directories `%t %S %C %L %E %T %V`, and `%H %l %v %m %b
    /// %a %o %w %y %Y %%`. `per_connection`: the instance may appear.
    fn specifiers(&self, w: &str, per_connection: bool) -> Result<String, String> {
        let template = self.service_file.contains("@.");
        let prefix = self
            .service_file
            .split(['@', '.'])
            .next()
            .unwrap_or("")
            .to_string();
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let os = |key: &str| {
            read("/etc/os-release")
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let mut out = String::new();
        let mut chars = w.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some('i' | 'I') if template && per_connection => out.push_str(INSTANCE_MARK),
                Some('i' | 'I') => {}
                Some('n') if template && per_connection => {
                    out.push_str(&format!("{prefix}@{INSTANCE_MARK}.service"))
                }
                Some('n') => out.push_str(&self.service_file),
                Some('N') if template && per_connection => {
                    out.push_str(&format!("{prefix}@{INSTANCE_MARK}"))
                }
                Some('N') => out.push_str(self.service_file.trim_end_matches(".service")),
                Some('p' | 'P') => out.push_str(&prefix),
                Some('t') => out.push_str("/run"),
                Some('S') => out.push_str("/var/lib"),
                Some('C') => out.push_str("/var/cache"),
                Some('L') => out.push_str("/var/log"),
                Some('E') => out.push_str("/etc"),
                Some('T') => out.push_str("/tmp"),
                Some('V') => out.push_str("/var/tmp"),
                Some('H') => out.push_str(&read("/proc/sys/kernel/hostname")),
                Some('l') => out.push_str(
                    read("/proc/sys/kernel/hostname").split('.').next().unwrap_or(""),
                ),
                Some('v') => out.push_str(&read("/proc/sys/kernel/osrelease")),
                Some('m') => out.push_str(&read("/etc/machine-id")),
                Some('b') => out.push_str(&read("/proc/sys/kernel/random/boot_id").replace('-', "")),
                Some('a') => out.push_str(match std::env::consts::ARCH {
                    "x86_64" => "x86-64",
                    "aarch64" => "arm64",
                    a => a,
                }),
                Some('o') => out.push_str(&os("ID")),
                Some('w') => out.push_str(&os("VERSION_ID")),
                Some('y') => out.push_str(&self.raw.origin.file.display().to_string()),
                Some('Y') => out.push_str(
                    &self
                        .raw
                        .origin
                        .file
                        .parent()
                        .map_or(String::new(), |d| d.display().to_string()),
                ),
                Some(x) => {
                    return Err(format!(
                        "specifier %{x} is not supported (known: %i %I %n %N %p %P %t %S %C %L %E %T %V %H %l %v %m %b %a %o %w %y %Y %%)"
                    ))
                }
                None => return Err("a lone % at the end (write %% for a percent sign)".into()),
            }
        }
        Ok(out)
    }

    /// The unit's additions to a plain start, made on first use.
    fn unit(&mut self) -> &mut crate::config::UnitExec {
        self.raw.unit.get_or_insert_with(|| {
            Box::new(crate::config::UnitExec {
                ignore_sigpipe: true,
                ..Default::default()
            })
        })
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
