//! The pattern people use for on-demand servers under systemd, run
//! natively: a `.socket` whose service runs `systemd-socket-proxyd`
//! (`[--exit-idle-time=T] [--connections-max=N] TARGET`) and pulls in the
//! real server's unit with `Requires=`/`BindsTo=`/`Wants=`. doorman relays
//! itself (no systemd-socket-proxyd binary is needed) and starts the real
//! server's unit on the first connection, with that unit's `[Service]`
//! (user, environment, limits, sandbox, `Type=notify`).
//!
//! Recognised shapes (doorman.conf(5), SYSTEMD-SOCKET-PROXYD):
//! - exactly one `*.service` among the proxy service's `Requires=`,
//!   `BindsTo=`, `Wants=`, `Requisite=`, `Upholds=`: that unit is the
//!   backend, started on demand (`After=` only orders, as under systemd);
//! - none: the server is not doorman's to start; connections are relayed
//!   to TARGET as xinetd's `redirect` does;
//! - `--exit-idle-time=T` stops the backend after T without a connection
//!   when systemd would stop it too: its unit has `StopWhenUnneeded=yes`,
//!   or `BindsTo=`/`PartOf=` the proxy's service. Otherwise it keeps
//!   running (under systemd only the proxy would exit).
//! - `--connections-max=N` (`-c N`, default 256) bounds relayed
//!   connections; more wait in the backlog.

use std::path::Path;

use super::ini::{read_unit, Assignment};
use super::values::parse_timespan;
use super::{err, Builder};
use crate::config::{parse_target, Backend, Mode};

/// systemd-socket-proxyd's default `--connections-max`.
const CONNECTIONS_MAX: u32 = 256;

/// The service's `ExecStart=` when it runs systemd-socket-proxyd.
pub(super) fn find(service: &[Assignment]) -> Option<&Assignment> {
    let a = service
        .iter()
        .rev()
        .find(|a| a.section == "Service" && a.key == "ExecStart" && !a.value.is_empty())?;
    let first = a
        .value
        .trim_start_matches(['-', '@', ':', '+', '!'])
        .split_whitespace()
        .next()?;
    (Path::new(first).file_name()? == "systemd-socket-proxyd").then_some(a)
}

/// What systemd-socket-proxyd's command line says.
struct Args {
    target: String,
    idle: Option<std::time::Duration>,
    max: u32,
}

fn args(argv: &[String]) -> Result<Args, String> {
    let mut target = None;
    let mut idle = None;
    let mut max = CONNECTIONS_MAX;
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("systemd-socket-proxyd: {name} needs a value"))
        };
        match key {
            "--exit-idle-time" => {
                let v = value("--exit-idle-time")?;
                idle = parse_timespan(&v)
                    .map_err(|m| format!("systemd-socket-proxyd --exit-idle-time: {m}"))?
                    .filter(|d| !d.is_zero());
            }
            "--connections-max" | "-c" => {
                let v = value("--connections-max")?;
                max = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    format!("systemd-socket-proxyd --connections-max={v:?}: expected a count")
                })?;
            }
            k if k.starts_with('-') && k.len() > 1 => {
                return Err(format!("systemd-socket-proxyd: unknown option {k}"))
            }
            _ if target.is_some() => {
                return Err("systemd-socket-proxyd takes one address".to_string())
            }
            _ => target = Some(a.clone()),
        }
    }
    let target = target.ok_or("systemd-socket-proxyd needs an address to connect to")?;
    Ok(Args { target, idle, max })
}

/// `.service` names in `keys` of the `[Unit]` section.
fn units<'a>(all: &'a [Assignment], keys: &[&str]) -> Vec<(&'a Assignment, String)> {
    let mut out: Vec<(&Assignment, String)> = Vec::new();
    for a in all
        .iter()
        .filter(|a| a.section == "Unit" && keys.contains(&a.key.as_str()))
    {
        if a.value.is_empty() {
            out.clear();
        }
        for w in a.value.split_whitespace() {
            if w.ends_with(".service") && !out.iter().any(|(_, n)| n == w) {
                out.push((a, w.to_string()));
            }
        }
    }
    out
}

impl Builder {
    /// Builds the service from systemd-socket-proxyd's `exec` line in
    /// `service` and the backend unit it pulls in (returned, for its
    /// `[Unit]` section and conditions).
    pub(super) fn socket_proxyd(
        &mut self,
        socket: &Path,
        exec: &Assignment,
        service: &[Assignment],
    ) -> Vec<Assignment> {
        let parsed = self.command(&exec.value).and_then(|c| args(&c.argv));
        let a = match parsed {
            Ok(a) => a,
            Err(m) => {
                self.errors.push(err(exec, m));
                return Vec::new();
            }
        };
        let target = match parse_target(a.target.strip_prefix('@').map_or(&a.target, |_| "")) {
            Ok(t) => t,
            Err(m) => {
                let m = if a.target.starts_with('@') {
                    format!(
                        "{:?}: an abstract socket is not supported as a backend",
                        a.target
                    )
                } else {
                    format!("{m} (systemd-socket-proxyd's host names are not resolved here: write the address)")
                };
                self.errors.push(err(exec, m));
                return Vec::new();
            }
        };
        let proxy_name = self.service_file.clone();
        let pulled = units(
            service,
            &["Requires", "BindsTo", "Wants", "Requisite", "Upholds"],
        );
        let mut backend = Backend::new(target, !pulled.is_empty());
        self.raw.limits.max_instances = Some(a.max);
        let mut unit = Vec::new();
        match pulled.as_slice() {
            [] => {}
            [(line, name)] => {
                let file = socket.with_file_name(name);
                let Some(u) = read_unit(&file, &mut self.errors) else {
                    if let Some(e) = self.errors.pop() {
                        let m = format!("cannot read {}: {}", file.display(), e.message);
                        self.errors.push(err(line, m));
                    }
                    return Vec::new();
                };
                self.service_file = name.clone();
                self.service(&u);
                let stops = u.iter().any(|x| {
                    x.section == "Unit"
                        && match x.key.as_str() {
                            "StopWhenUnneeded" => super::parse_bool(&x.value).unwrap_or(false),
                            "BindsTo" | "PartOf" => {
                                x.value.split_whitespace().any(|w| w == proxy_name)
                            }
                            _ => false,
                        }
                });
                backend.idle_stop = a.idle.filter(|_| stops);
                unit = u;
            }
            [(line, _), ..] => {
                let names: Vec<&str> = pulled.iter().map(|(_, n)| n.as_str()).collect();
                self.errors.push(err(
                    line,
                    format!(
                        "systemd-socket-proxyd in front of {}: doorman starts one backend unit per socket",
                        names.join(", ")
                    ),
                ));
                return Vec::new();
            }
        }
        if !backend.start {
            // Nothing to start: the program fields stay empty.
            self.raw.program.clear();
            self.raw.argv.clear();
        }
        self.raw.backend = Some(backend);
        unit
    }

    /// A unit with a backend (`X-Doorman-Options=proxy-to=...` or the
    /// proxyd pattern): doorman accepts the connections itself whatever
    /// `Accept=` says, and `Type=notify` is the backend's readiness.
    pub(super) fn backend_mode(&mut self) {
        let Some(b) = self.raw.backend.as_mut() else {
            return;
        };
        // systemd's default trigger and poll limits count activations of
        // the service and wake-ups of a socket nobody serves; in front of
        // a backend both happen once per start, not per connection (the
        // relay accepts them all), so their defaults do not apply to
        // connections here. An explicit value stays.
        let default = |max: u32| {
            Some(crate::config::Rate {
                max,
                interval: std::time::Duration::from_secs(2),
                pause: std::time::Duration::from_secs(2),
            })
        };
        let l = &mut self.raw.limits;
        if l.rate == default(20) || l.rate == default(200) {
            l.rate = None;
        }
        if l.poll == default(15) || l.poll == default(150) {
            l.poll = None;
        }
        self.raw.mode = Mode::Accept;
        self.raw.fd_name = None;
        if let Some(u) = self.raw.unit.as_mut() {
            if u.notify && b.start {
                b.notify = true;
                u.notify = false;
            }
        }
    }
}
