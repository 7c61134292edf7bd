//! The command line, as argh parses it, turned into a plan for `config`.
//!
//! Owns: the flags and their help text; checking that they make sense
//! together. Must not: decide anything about serving.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use crate::config::inetd::{self, RawBind, RawService, DEFAULT_RATE};
use crate::config::options;
use crate::config::{Format, Handover, Limits, Mode, Rate, SockType, Sources};
use crate::error::{Error, Origin};
use crate::server::{OnStop, Options};

/// The configuration read when neither -f nor --listen is given.
pub const DEFAULT_CONFIG: &str = "/etc/doorman.conf";

#[derive(FromArgs, Debug)]
/// doorman: an inetd-style super-server. Listens on behalf of services and
/// starts a handler for each connection (see doorman(8)).
pub struct Args {
    /// configuration file in inetd.conf syntax (repeatable; default /etc/doorman.conf)
    #[argh(option, short = 'f')]
    pub file: Vec<PathBuf>,

    /// read every -f as this syntax: inetd, xinetd or systemd (default: detected per file, see doorman.conf(5))
    #[argh(option)]
    pub format: Option<String>,

    /// serve the program after -- on PORT, ADDR:PORT, [V6ADDR]:PORT or a unix socket /PATH (repeatable)
    #[argh(option)]
    pub listen: Vec<String>,

    /// with --listen: hand the connection over as inetd (fds 0-2), stdio (fds 0-1, the default) or fd3 (LISTEN_FDS)
    #[argh(option)]
    pub handover: Option<String>,

    /// with --listen: wait mode (Accept=no): hand the listening socket to one instance at a time
    #[argh(switch)]
    pub wait: bool,

    /// with --listen: stream (the default), dgram (UDP: one handler per peer, or with --wait one for all; unix datagrams need --wait) or seqpacket (unix only)
    #[argh(option)]
    pub socket_type: Option<String>,

    /// with --listen on a unix path: owner of the socket file, USER[:GROUP]
    #[argh(option)]
    pub socket_owner: Option<String>,

    /// with --listen on a unix path: octal mode of the socket file (default 0666)
    #[argh(option)]
    pub socket_mode: Option<String>,

    /// with --listen: at most N handlers at once; further clients wait in the backlog
    #[argh(option)]
    pub max_instances: Option<u32>,

    /// with --listen: at most N handlers started per minute, then pause 10 minutes (0 = no limit, the default)
    #[argh(option)]
    pub rate: Option<u32>,

    /// with --listen: at most N handlers at once per client address (IPv6 clients counted by /64)
    #[argh(option)]
    pub max_per_source: Option<u32>,

    /// with --listen: per client address, at most N connections per SECONDS with bursts of BURST (a token bucket): N/SECONDS[/BURST]
    #[argh(option)]
    pub source_rate: Option<String>,

    /// with --listen: serve only these clients: an address, ADDR/PREFIXLEN, any, localhost, link-local or multicast (repeatable; the longest match of --allow and --deny decides)
    #[argh(option)]
    pub allow: Vec<String>,

    /// with --listen: refuse these clients (repeatable; same forms as --allow)
    #[argh(option)]
    pub deny: Vec<String>,

    /// with --listen: stop a handler that runs longer than SECONDS (the stop signal to its process group, SIGKILL 5 s later): SECONDS[/GRACE]
    #[argh(option)]
    pub timeout: Option<String>,

    /// with --listen: the program is an ordinary server listening on ADDR (PORT, ADDR:PORT or /PATH): started on the first connection, held clients relayed to it once a connect succeeds
    #[argh(option)]
    pub proxy: Option<String>,

    /// with --proxy: stop the program after this long without a connection (e.g. 5m; default never)
    #[argh(option)]
    pub idle_stop: Option<String>,

    /// with --proxy: how long a start may take before held clients are closed (default 60s)
    #[argh(option)]
    pub start_timeout: Option<String>,

    /// with --proxy: clients held at most while the program starts (default 128; the next wait in the backlog)
    #[argh(option)]
    pub max_held: Option<u32>,

    /// with --proxy: the program says READY=1 on $NOTIFY_SOCKET when it is ready (sd_notify); held clients are relayed after that (and a connect), not at the first connect
    #[argh(switch)]
    pub notify: bool,

    /// with --listen: any inetd.conf option KEY=VALUE, e.g. on-full=reset, crash=off, nofile=256 (repeatable; see doorman.conf(5))
    #[argh(option, short = 'o')]
    pub option: Vec<String>,

    /// at most N handlers at once over all services; past it every service waits (clients stay queued)
    #[argh(option)]
    pub max_children: Option<u32>,

    /// with --listen: run the handler as this user (name or uid), with its groups
    #[argh(option, short = 'u')]
    pub user: Option<String>,

    /// with --listen: run the handler with this group (name or gid)
    #[argh(option, short = 'g')]
    pub group: Option<String>,

    /// with --listen: the service name used in logs and LISTEN_FDNAMES
    #[argh(option)]
    pub name: Option<String>,

    /// parse and validate the configuration, print the services understood, and exit (0 if valid, 1 if not)
    #[argh(switch)]
    pub check: bool,

    /// write READY and a newline to this file descriptor once every socket is bound, then close it
    #[argh(option)]
    pub ready_fd: Option<i32>,

    /// on SIGTERM/SIGINT: leave running handlers alone, or term them (their stop signal to each process group, SIGKILL after --stop-timeout); default term with --listen or as PID 1, else leave
    #[argh(option)]
    pub on_stop: Option<String>,

    /// the same as --on-stop term
    #[argh(switch)]
    pub stop_children: bool,

    /// seconds to wait for handlers to stop before SIGKILL (default 10; a unit's TimeoutStopSec= wins)
    #[argh(option, default = "10")]
    pub stop_timeout: u64,

    /// serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9100)
    #[argh(option)]
    pub metrics: Option<String>,

    /// log lines as text (the default) or json, one object per line
    #[argh(option)]
    pub log_format: Option<String>,

    /// write doorman's pid to this file (atomically), remove it at exit
    #[argh(option)]
    pub pidfile: Option<PathBuf>,

    /// send SIGHUP to the doorman whose pid is in --pidfile (default /run/doorman.pid) and exit
    #[argh(switch)]
    pub reload: bool,

    /// detach: fork into the background, log to syslog (/dev/log)
    #[argh(switch)]
    pub daemon: bool,

    /// log more (repeat for even more)
    #[argh(switch, short = 'v')]
    pub verbose: u8,

    /// log only warnings and errors
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// print the version and exit
    #[argh(switch)]
    pub version: bool,

    /// the program to run and its arguments (with --listen)
    #[argh(positional, greedy)]
    pub command: Vec<String>,
}

/// What to do, as validated from the command line.
pub struct Plan {
    pub sources: Sources,
    pub check: bool,
    pub options: Options,
}

impl Args {
    /// Parses the process's arguments. `--help` prints to stdout and
    /// returns `Err(0)`; a parse error prints to stderr and returns
    /// `Err(2)` (usage), the exit status to use.
    pub fn from_env() -> Result<Args, u8> {
        let argv: Vec<String> = std::env::args().collect();
        let cmd = argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a))
            .unwrap_or("doorman");
        let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
        <Args as FromArgs>::from_args(&[cmd], &rest).map_err(|early| match early.status {
            Ok(()) => {
                println!("{}", early.output);
                crate::error::EXIT_OK
            }
            Err(()) => {
                eprintln!("{}", early.output);
                crate::error::EXIT_USAGE
            }
        })
    }

    /// Checks the flags against each other and builds the plan.
    pub fn plan(&self) -> Result<Plan, Error> {
        let usage = |m: &str| Error::Usage(m.to_string());
        let listen_only = [
            ("--handover", self.handover.is_some()),
            ("--wait", self.wait),
            ("--socket-type", self.socket_type.is_some()),
            ("--socket-owner", self.socket_owner.is_some()),
            ("--socket-mode", self.socket_mode.is_some()),
            ("--max-instances", self.max_instances.is_some()),
            ("--rate", self.rate.is_some()),
            ("--user", self.user.is_some()),
            ("--group", self.group.is_some()),
            ("--name", self.name.is_some()),
            ("--max-per-source", self.max_per_source.is_some()),
            ("--source-rate", self.source_rate.is_some()),
            ("--allow", !self.allow.is_empty()),
            ("--deny", !self.deny.is_empty()),
            ("--timeout", self.timeout.is_some()),
            ("--option", !self.option.is_empty()),
            ("--proxy", self.proxy.is_some()),
            ("--idle-stop", self.idle_stop.is_some()),
            ("--start-timeout", self.start_timeout.is_some()),
            ("--max-held", self.max_held.is_some()),
            ("--notify", self.notify),
        ];
        if self.proxy.is_none() {
            for (flag, on) in [
                ("--idle-stop", self.idle_stop.is_some()),
                ("--start-timeout", self.start_timeout.is_some()),
                ("--max-held", self.max_held.is_some()),
                ("--notify", self.notify),
            ] {
                if on {
                    return Err(usage(&format!("{flag} needs --proxy")));
                }
            }
        }
        if self.group.is_some() && self.user.is_none() {
            return Err(usage("--group needs --user"));
        }
        let listen = if self.listen.is_empty() {
            if let Some((flag, _)) = listen_only.iter().find(|(_, on)| *on) {
                return Err(usage(&format!("{flag} applies to --listen only")));
            }
            if !self.command.is_empty() {
                return Err(usage(&format!(
                    "a program ({}) is given without --listen",
                    self.command[0]
                )));
            }
            None
        } else {
            Some(self.listen_service()?)
        };
        // With --daemon, absolute, so that a reload still finds them after
        // the daemon has changed to /; otherwise as given (for messages).
        let mut files: Vec<PathBuf> = self
            .file
            .iter()
            .map(|f| match self.daemon {
                true => std::path::absolute(f).unwrap_or_else(|_| f.clone()),
                false => f.clone(),
            })
            .collect();
        if files.is_empty() && listen.is_none() {
            files.push(PathBuf::from(DEFAULT_CONFIG));
        }
        let format = match &self.format {
            Some(f) => Some(Format::parse(f).ok_or_else(|| {
                usage(&format!(
                    "--format {f:?}: expected inetd, xinetd or systemd"
                ))
            })?),
            None => None,
        };
        let on_stop = match (self.on_stop.as_deref(), self.stop_children) {
            (Some("term"), _) | (None, true) => OnStop::Term,
            (Some("leave"), false) => OnStop::Leave,
            (Some("leave"), true) => {
                return Err(usage("--on-stop leave contradicts --stop-children"))
            }
            (Some(o), _) => return Err(usage(&format!("--on-stop {o:?}: expected leave or term"))),
            // Containers (--listen, PID 1) stop their handlers; a classic
            // inetd leaves them.
            (None, false) if listen.is_some() || std::process::id() == 1 => OnStop::Term,
            (None, false) => OnStop::Leave,
        };
        let metrics = match &self.metrics {
            Some(m) => Some(m.parse::<std::net::SocketAddr>().map_err(|_| {
                usage(&format!(
                    "--metrics {m:?}: expected ADDR:PORT, e.g. 127.0.0.1:9100"
                ))
            })?),
            None => None,
        };
        match self.log_format.as_deref() {
            None | Some("text" | "json") => {}
            Some(f) => return Err(usage(&format!("--log-format {f:?}: expected text or json"))),
        }
        let sources = Sources {
            files,
            format,
            listen,
        };
        Ok(Plan {
            check: self.check,
            options: Options {
                ready_fd: self.ready_fd,
                on_stop,
                stop_timeout: Duration::from_secs(self.stop_timeout),
                metrics,
                sources: sources.clone(),
                max_children: self.max_children.filter(|&n| n > 0),
            },
            sources,
        })
    }

    fn listen_service(&self) -> Result<RawService, Error> {
        let usage = |m: String| Error::Usage(m);
        let Some(program) = self.command.first() else {
            return Err(usage(
                "--listen needs a program to run: doorman --listen ADDR -- PROGRAM [ARGS...]"
                    .into(),
            ));
        };
        let sock_type = match self.socket_type.as_deref() {
            None | Some("stream") => SockType::Stream,
            Some("dgram") => SockType::Dgram,
            Some("seqpacket") => SockType::SeqPacket,
            Some(t) => {
                return Err(usage(format!(
                    "--socket-type {t:?}: expected stream, dgram or seqpacket"
                )))
            }
        };
        let mode = if self.wait { Mode::Wait } else { Mode::Accept };

        let (sock_owner, sock_group) = match &self.socket_owner {
            Some(o) => match o.split_once(':') {
                Some((u, g)) if !u.is_empty() && !g.is_empty() => {
                    (Some(u.to_string()), Some(g.to_string()))
                }
                None if !o.is_empty() => (Some(o.clone()), None),
                _ => {
                    return Err(usage(format!(
                        "--socket-owner {o:?}: expected USER or USER:GROUP"
                    )))
                }
            },
            None => (None, None),
        };
        let sock_mode = match &self.socket_mode {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|&v| v <= 0o7777)
                    .ok_or_else(|| usage(format!("--socket-mode {m:?}: expected an octal mode")))?,
            ),
            None => None,
        };
        let mode_is_accept = mode == Mode::Accept;
        let mut binds = Vec::new();
        for l in &self.listen {
            let mut bind = inetd::parse_listen(l).map_err(usage)?;
            match &mut bind {
                RawBind::Unix {
                    owner, group, mode, ..
                } => {
                    if sock_type == SockType::Dgram && mode_is_accept {
                        return Err(usage(format!(
                            "--listen {l}: unix datagram services need --wait (a unix datagram client may have no address to answer)"
                        )));
                    }
                    *owner = owner.take().or(sock_owner.clone());
                    *group = group.take().or(sock_group.clone());
                    *mode = mode.or(sock_mode);
                }
                RawBind::Inet { .. } => {
                    if sock_type == SockType::SeqPacket {
                        return Err(usage(format!(
                            "--listen {l}: seqpacket sockets are served over unix paths only"
                        )));
                    }
                }
            }
            binds.push(bind);
        }
        if (self.socket_owner.is_some() || self.socket_mode.is_some())
            && !binds.iter().any(|b| matches!(b, RawBind::Unix { .. }))
        {
            return Err(usage(
                "--socket-owner and --socket-mode apply to unix socket paths only".into(),
            ));
        }
        let handover = match &self.handover {
            Some(h) => Handover::parse(h)
                .ok_or_else(|| usage(format!("--handover {h:?}: expected inetd, stdio or fd3")))?,
            None => Handover::STDIO,
        };
        let base = program.rsplit('/').next().unwrap_or(program);
        let name = self.name.clone().unwrap_or_else(|| base.to_string());
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains(':') {
            return Err(usage(format!(
                "--name {name:?}: expected a word without ':'"
            )));
        }
        let limits = Limits {
            max_instances: self.max_instances.filter(|&n| n > 0),
            rate: self.rate.filter(|&n| n > 0).map(|max| Rate {
                max,
                ..DEFAULT_RATE
            }),
            ..Limits::default()
        };
        let mut svc = RawService::new(Origin::command_line(), &name, sock_type, mode);
        svc.fd_name = Some(name);
        svc.binds = binds;
        svc.handover = handover;
        svc.limits = limits;
        svc.user = self.user.clone();
        svc.group = self.group.clone();
        svc.program = program.clone();
        svc.argv = self.command.clone();
        svc.search_path = true;
        let flags = [(
            "max-child-per-ip",
            "--max-per-source",
            self.max_per_source.map(|n| n.to_string()),
        )]
        .into_iter()
        .chain([("source-rate", "--source-rate", self.source_rate.clone())])
        .chain([("timeout", "--timeout", self.timeout.clone())])
        .chain([
            ("proxy-to", "--proxy", self.proxy.clone()),
            ("idle-stop", "--idle-stop", self.idle_stop.clone()),
            (
                "start-timeout",
                "--start-timeout",
                self.start_timeout.clone(),
            ),
            (
                "max-held",
                "--max-held",
                self.max_held.map(|n| n.to_string()),
            ),
            (
                "ready",
                "--notify",
                self.notify.then(|| "notify".to_string()),
            ),
        ])
        .chain(
            self.allow
                .iter()
                .map(|a| ("allow", "--allow", Some(a.clone()))),
        )
        .chain(
            self.deny
                .iter()
                .map(|a| ("deny", "--deny", Some(a.clone()))),
        );
        for (key, flag, value) in flags {
            if let Some(v) = value {
                options::apply(&mut svc, key, &v).map_err(|m| usage(format!("{flag}: {m}")))?;
            }
        }
        for o in &self.option {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| usage(format!("--option {o:?}: expected KEY=VALUE")))?;
            options::apply(&mut svc, k, v).map_err(|m| usage(format!("--option {o}: {m}")))?;
        }
        Ok(svc)
    }
}
