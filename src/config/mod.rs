//! The validated plan: every front end ends here, as a list of [`Service`].
//!
//! Owns: the one model (`Service`, `Endpoint`, `Mode`, `Handover`, `Limits`,
//! `Creds`, `Handler`), loading the configuration named on the command line,
//! and the normalized one-line listing printed by `--check` and at start-up.
//! Must not: touch sockets or processes. Nothing after this module knows
//! which syntax a service came from.

pub mod acl;
pub mod inetd;
pub mod options;
pub mod passwd;
pub mod resolve;
pub mod sandbox;
pub mod unit;
pub mod xinetd;

#[cfg(test)]
pub(crate) mod fuzz_tests;

use std::ffi::CString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ConfigError, Origin};

/// The socket type of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SockType {
    Stream,
    Dgram,
    SeqPacket,
}

impl SockType {
    pub fn as_str(self) -> &'static str {
        match self {
            SockType::Stream => "stream",
            SockType::Dgram => "dgram",
            SockType::SeqPacket => "seqpacket",
        }
    }

    /// Connection-oriented: can be accepted per connection.
    pub fn accepts(self) -> bool {
        !matches!(self, SockType::Dgram)
    }
}

/// Where an endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Owner, group and mode of a unix socket file, applied after bind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixPerms {
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub mode: Option<u32>,
}

/// The mode of a unix socket file when none is configured (as systemd's
/// `SocketMode=`).
pub const DEFAULT_UNIX_MODE: u32 = 0o666;

/// One address to listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub sock_type: SockType,
    pub addr: Address,
    /// `IPV6_V6ONLY` for IPv6 addresses: `true` serves IPv6 only, `false`
    /// makes one dual-stack socket.
    pub v6only: bool,
    /// Skipped with a warning (instead of failing start-up) when the host
    /// has no support for this address family, and left out when another
    /// endpoint claims IPv6 on the same port: the IPv6 half of a plain
    /// `tcp` service, as Debian's openbsd-inetd does (see
    /// `settle_families`).
    pub optional: bool,
    pub backlog: i32,
    pub sndbuf: Option<u32>,
    pub rcvbuf: Option<u32>,
    pub perms: UnixPerms,
    pub opts: SockOpts,
}

/// Socket options beyond the address (systemd `.socket` directives, xinetd
/// flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOpts {
    pub reuseport: bool,
    pub freebind: bool,
    pub keepalive: bool,
    pub nodelay: bool,
    /// Mode of directories created for a unix socket (default 0755).
    pub directory_mode: Option<u32>,
    /// Keep the unix socket file when doorman exits (systemd
    /// `RemoveOnStop=no`, its default).
    pub keep_on_stop: bool,
}

impl Endpoint {
    /// The protocol as inetd.conf would name this endpoint's socket.
    pub fn proto(&self) -> &'static str {
        let udp = self.sock_type == SockType::Dgram;
        match (&self.addr, self.v6only, udp) {
            (Address::Unix(_), _, _) => "unix",
            (Address::Inet(SocketAddr::V4(_)), _, false) => "tcp4",
            (Address::Inet(SocketAddr::V6(_)), true, false) => "tcp6",
            (Address::Inet(SocketAddr::V6(_)), false, false) => "tcp46",
            (Address::Inet(SocketAddr::V4(_)), _, true) => "udp4",
            (Address::Inet(SocketAddr::V6(_)), true, true) => "udp6",
            (Address::Inet(SocketAddr::V6(_)), false, true) => "udp46",
        }
    }

    /// What identifies this socket across reloads.
    pub fn bind_key(&self) -> (SockType, Address, bool) {
        (self.sock_type, self.addr.clone(), self.v6only)
    }

    /// A port 0 (the kernel picks one per socket): never a conflict.
    fn ephemeral(&self) -> bool {
        matches!(self.addr, Address::Inet(a) if a.port() == 0)
    }
}

/// Per connection (`nowait`, `Accept=yes`) or one instance handed the
/// listening socket (`wait`, `Accept=no`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Accept,
    Wait,
}

/// What one of the handler's fds 0, 1 and 2 is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdFd {
    /// The socket handed over.
    Socket,
    /// /dev/null.
    Null,
    /// doorman's own stderr (its log).
    Log,
    /// A file opened for each start (`StandardOutput=file:` & co): the
    /// index into the unit's [`UnitExec::files`].
    File(u8),
}

impl StdFd {
    pub fn as_str(self) -> &'static str {
        match self {
            StdFd::Socket => "socket",
            StdFd::Null => "null",
            StdFd::Log => "log",
            StdFd::File(_) => "file",
        }
    }
}

/// How an output file is opened (`file:`, `append:`, `truncate:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// Written from its start, not truncated.
    Write,
    Append,
    Truncate,
}

/// With what privileges a unit command runs (its `+` and `!` prefixes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Privileges {
    /// The unit's user, groups and sandbox.
    #[default]
    Normal,
    /// `+`: as doorman runs, without the unit's user or sandbox.
    Full,
    /// `!`: the sandbox applies, the user and groups do not.
    KeepIds,
}

/// One command around the main program (`ExecStartPre=`,
/// `ExecStartPost=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub program: PathBuf,
    /// argv, argv[0] included.
    pub argv: Vec<String>,
    /// `-`: a failure (exit status, signal, exec error) does not abort
    /// the start.
    pub ignore_failure: bool,
    pub privileges: Privileges,
    /// Expand `$VAR`/`${VAR}` from the unit's environment (no `:` prefix).
    pub expand: bool,
    /// Where it is named, for warnings about it.
    pub origin: Option<crate::error::Origin>,
}

/// A directory made for a unit before it starts (`RuntimeDirectory=` &
/// co), owned by its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDir {
    /// `RUNTIME_DIRECTORY`, `STATE_DIRECTORY`, ...: the variable naming it.
    pub var: &'static str,
    /// The full path (`/run/NAME`, `/var/lib/NAME`, ...).
    pub path: PathBuf,
    pub mode: u32,
    /// Removed after the last handler has exited (the runtime directory,
    /// unless preserved).
    pub remove: bool,
}

/// Who may send readiness notifications (`NotifyAccess=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotifyAccess {
    None,
    /// The main process only.
    #[default]
    Main,
    /// The main process and the commands around it.
    Exec,
    /// Any process of the handler's.
    All,
}

/// What a systemd unit adds to starting a plain handler: the commands
/// around it, the directories it needs, readiness, the statuses that mean
/// success, and its sandbox (systemd.service(5), systemd.exec(5)). Boxed
/// in [`Service`]: inetd.conf and xinetd services carry none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitExec {
    pub pre: Vec<Command>,
    pub post: Vec<Command>,
    /// The main program's `+`/`!` prefix.
    pub privileges: Privileges,
    /// The main program's `-` prefix: its failure is not one (for the
    /// crash-loop guard).
    pub ignore_failure: bool,
    pub dirs: Vec<ServiceDir>,
    /// `Type=notify`: the handler gets a `NOTIFY_SOCKET` of doorman's and
    /// its readiness is awaited (and logged) before `ExecStartPost=`.
    pub notify: bool,
    pub notify_access: NotifyAccess,
    pub oom_score_adjust: Option<i32>,
    /// Exit statuses and signals that count as success (besides 0).
    pub success_status: Vec<i32>,
    pub success_signals: Vec<i32>,
    /// `IgnoreSIGPIPE=` (systemd's default: yes).
    pub ignore_sigpipe: bool,
    /// `NonBlocking=`: the sockets handed over are non-blocking.
    pub nonblocking: bool,
    /// Files of `StandardOutput=`/`StandardError=` (`StdFd::File`).
    pub files: Vec<(PathBuf, FileMode)>,
    /// A non-optional `EnvironmentFile=` that could not be read when the
    /// configuration was loaded: every start fails with this reason
    /// until a reload finds it (as systemd fails each start).
    pub env_missing: Option<String>,
    /// `DynamicUser=`: the user was allocated for this unit.
    pub dynamic_user: bool,
    pub sandbox: sandbox::Sandbox,
}

/// How the socket is handed to the handler: what fds 0, 1 and 2 are, and
/// whether the socket(s) also go to fd 3 on with `LISTEN_FDS` (systemd).
/// The three named modes are presets; systemd's `StandardInput=` & co.
/// can make other combinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handover {
    pub stdin: StdFd,
    pub stdout: StdFd,
    pub stderr: StdFd,
    pub listen_fds: bool,
}

impl Handover {
    /// The socket on fds 0, 1 and 2, as classic inetd.
    pub const INETD: Handover = Handover {
        stdin: StdFd::Socket,
        stdout: StdFd::Socket,
        stderr: StdFd::Socket,
        listen_fds: false,
    };
    /// A backend: no socket (it binds its own); stdin /dev/null, stdout
    /// and stderr doorman's log.
    pub const BACKEND: Handover = Handover {
        stdin: StdFd::Null,
        stdout: StdFd::Log,
        stderr: StdFd::Log,
        listen_fds: false,
    };
    /// The socket on fds 0 and 1; fd 2 stays doorman's stderr (UCSPI).
    pub const STDIO: Handover = Handover {
        stdin: StdFd::Socket,
        stdout: StdFd::Socket,
        stderr: StdFd::Log,
        listen_fds: false,
    };
    /// The socket on fd 3 with `LISTEN_FDS=1`, `LISTEN_PID`,
    /// `LISTEN_FDNAMES` (systemd); fds 0 and 1 on /dev/null, fd 2 doorman's
    /// stderr.
    pub const FD3: Handover = Handover {
        stdin: StdFd::Null,
        stdout: StdFd::Null,
        stderr: StdFd::Log,
        listen_fds: true,
    };

    pub fn parse(s: &str) -> Option<Handover> {
        match s {
            "inetd" => Some(Handover::INETD),
            "stdio" => Some(Handover::STDIO),
            "fd3" => Some(Handover::FD3),
            _ => None,
        }
    }

    /// The preset's name, or the fds spelled out.
    pub fn name(&self) -> String {
        match *self {
            Handover::INETD => "inetd".into(),
            Handover::STDIO => "stdio".into(),
            Handover::FD3 => "fd3".into(),
            h => format!(
                "stdin:{},stdout:{},stderr:{}{}",
                h.stdin.as_str(),
                h.stdout.as_str(),
                h.stderr.as_str(),
                if h.listen_fds { ",fd3" } else { "" }
            ),
        }
    }
}

/// One resource limit set in the handler (`setrlimit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_*` as the C library numbers it.
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

/// The handler's process settings beyond credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// Pass doorman's own environment on (inetd.conf, the command line,
    /// xinetd without `passenv`); `false` gives only `pass` and `set`.
    pub inherit_env: bool,
    /// Start from the environment a service manager gives its units
    /// (systemd.exec(5): its `PATH`, the system locale), not doorman's;
    /// `USER`, `LOGNAME`, `HOME` and `SHELL` whenever a user is set
    /// (systemd units).
    pub manager_env: bool,
    /// Variables passed from doorman's environment when not inheriting it
    /// (xinetd `passenv`, systemd `PassEnvironment=`).
    pub pass_env: Vec<String>,
    /// Variables set (after inheritance; the last setting wins).
    pub set_env: Vec<(String, String)>,
    /// Variables removed at the end (systemd `UnsetEnvironment=`: a name,
    /// or `NAME=value` to remove only that value).
    pub unset_env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub umask: Option<u32>,
    pub nice: Option<i32>,
    pub rlimits: Vec<Rlimit>,
    /// Wall-clock limit of one handler (systemd `RuntimeMaxSec=`, inetd.conf
    /// `timeout=`, `--timeout`): past it the handler's process group gets
    /// the stop signal, then SIGKILL after the stop timeout.
    pub runtime_max: Option<Duration>,
}

impl ExecSpec {
    /// Without the spare capacity the parser's vectors grew with.
    pub fn shrunk(mut self) -> ExecSpec {
        self.pass_env.shrink_to_fit();
        self.set_env.shrink_to_fit();
        self.unset_env.shrink_to_fit();
        self.rlimits.shrink_to_fit();
        self
    }
}

/// How a handler is stopped when doorman stops it (`--stop-children`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopSpec {
    pub signal: i32,
    /// Signal the whole process group (systemd `KillMode=control-group`/
    /// `mixed`), or only the handler (`process`); `None`: leave it running.
    pub group: Option<bool>,
    pub timeout: Option<Duration>,
}

impl Default for StopSpec {
    fn default() -> Self {
        StopSpec {
            signal: libc::SIGTERM,
            group: Some(true),
            timeout: None,
        }
    }
}

/// Between the stop signal and SIGKILL when the service sets no stop
/// timeout (a handler over its `timeout`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// The classic looping protection: at most `max` spawns per `interval`;
/// over it the service pauses for `pause`, then resumes by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub max: u32,
    pub interval: Duration,
    pub pause: Duration,
}

/// A token bucket: `rate` tokens refill every `interval`, never more than
/// `burst` held; each connection takes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub rate: u32,
    pub interval: Duration,
    pub burst: u32,
}

/// Crash-loop detection: `max` handlers that fail (exit non-zero or by a
/// signal, or cannot be started) within `lifetime` of starting, all within
/// `window`, pause the service for `pause`. Healthy handlers, however
/// many, never count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crash {
    pub max: u32,
    pub window: Duration,
    pub lifetime: Duration,
    pub pause: Duration,
}

/// On by default: 10 quick failures within 10 s pause the service 30 s.
pub const DEFAULT_CRASH: Crash = Crash {
    max: 10,
    window: Duration::from_secs(10),
    lifetime: Duration::from_secs(2),
    pause: Duration::from_secs(30),
};

/// Admission limits of one service. `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent instances (FreeBSD `max-child`, `--max-instances`).
    pub max_instances: Option<u32>,
    /// Spawns per interval (OpenBSD/Debian `nowait.N`).
    pub rate: Option<Rate>,
    /// Connections per source as a token bucket (FreeBSD's
    /// per-IP-per-minute field is `N/60s` with a burst of `N`).
    pub source_rate: Option<Bucket>,
    /// Concurrent instances per source address (FreeBSD field 4).
    pub max_per_source: Option<u32>,
    /// Wake-ups (accepted connections, wait hand-overs) per interval
    /// of one socket (systemd `PollLimit*`); reaching it stops watching
    /// that socket for the pause.
    pub poll: Option<Rate>,
    /// Sources are counted by prefix: IPv4 by /32 and IPv6 by /64 unless
    /// configured otherwise (one IPv6 host usually owns a whole /64).
    pub prefix4: u8,
    pub prefix6: u8,
    pub crash: Option<Crash>,
    /// `rate-pause=fixed`: every rate pause is the whole `pause`, as BSD
    /// inetd's 10 minutes; by default they escalate (see
    /// `policy::escalated`).
    pub rate_fixed: bool,
    /// A `dgram nowait` session with no datagram either way for this
    /// long ends (its handler is stopped); `None`: never.
    pub session_idle: Option<Duration>,
}

/// How long a quiet UDP session lives by default.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(60);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instances: None,
            rate: None,
            source_rate: None,
            max_per_source: None,
            poll: None,
            prefix4: 32,
            prefix6: 64,
            rate_fixed: false,
            session_idle: Some(DEFAULT_SESSION_IDLE),
            crash: Some(DEFAULT_CRASH),
        }
    }
}

/// What a refused client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Not accepted: it waits in the kernel's backlog until there is room
    /// (the listener is not watched meanwhile).
    Queue,
    /// Accepted and closed at once (the client reads EOF).
    Close,
    /// Accepted, sent the service's refusal message, closed.
    Message,
    /// Accepted and reset (`SO_LINGER` 0: the client gets ECONNRESET).
    Reset,
}

impl Fate {
    pub fn parse(s: &str) -> Option<Fate> {
        match s {
            "queue" => Some(Fate::Queue),
            "close" => Some(Fate::Close),
            "message" => Some(Fate::Message),
            "reset" => Some(Fate::Reset),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Queue => "queue",
            Fate::Close => "close",
            Fate::Message => "message",
            Fate::Reset => "reset",
        }
    }
}

/// What each kind of refusal does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The service's instance limit is reached (default: queue).
    pub full: Fate,
    /// A per-source limit (concurrent or rate) is reached (default: close).
    pub source: Fate,
    /// The access list refuses the client (default: close).
    pub deny: Fate,
    /// The service is paused by its rate or crash-loop limit (default:
    /// queue: no connection is closed; the one that reached a rate limit
    /// was served).
    pub paused: Fate,
    /// What `message` sends (at most [`MAX_MESSAGE`] bytes). (The
    /// default is not a copy per service: a load of 10,000 made 20,000.)
    pub message: std::borrow::Cow<'static, [u8]>,
}

/// A refusal message is sent with one non-blocking write: it must fit in
/// any socket buffer.
pub const MAX_MESSAGE: usize = 1024;

impl Default for Refusal {
    fn default() -> Self {
        Refusal {
            full: Fate::Queue,
            source: Fate::Close,
            deny: Fate::Close,
            paused: Fate::Queue,
            message: std::borrow::Cow::Borrowed(b"service unavailable, try again later\r\n"),
        }
    }
}

/// Who may connect. Addresses: the longest matching prefix of either list
/// decides (allow wins a tie); a client no prefix matches is allowed when
/// the allow list is empty and refused otherwise. Unix sockets: when
/// either id list is set, the peer's uid or gid (`SO_PEERCRED`) must be in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub allow: Vec<acl::Cidr>,
    pub deny: Vec<acl::Cidr>,
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Access {
    /// Without the spare capacity the parser's vectors grew with.
    pub fn shrunk(mut self) -> Access {
        for v in [&mut self.uids, &mut self.gids] {
            v.shrink_to_fit();
        }
        self.allow.shrink_to_fit();
        self.deny.shrink_to_fit();
        self
    }
}

impl Access {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
            && self.deny.is_empty()
            && self.uids.is_empty()
            && self.gids.is_empty()
    }
}

/// The credentials a handler runs with, resolved at load time so that the
/// child needs no name lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's entries in the group database plus `gid`).
    pub groups: Vec<u32>,
    /// The user's home directory and login shell (`HOME`, `SHELL`), empty
    /// for a bare uid with no passwd entry.
    pub home: String,
    pub shell: String,
}

/// A service doorman serves itself, inside its loop, without forking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Internal {
    /// RFC 862: sends back what it receives.
    Echo,
    /// RFC 863: reads and drops.
    Discard,
    /// RFC 864: a rotating pattern of printable characters.
    Chargen,
    /// RFC 867: the local date and time as text.
    Daytime,
    /// RFC 868: seconds since 1900 as a 32-bit big-endian number.
    Time,
    /// RFC 1078: reads a service name, then hands the connection over to
    /// the `tcpmux/NAME` service of that name.
    Tcpmux,
}

impl Internal {
    /// The internal service of this name (the service field of an
    /// inetd.conf line, xinetd's service name) or port number.
    pub fn from_name(name: &str) -> Option<Internal> {
        Some(match name {
            "echo" | "7" => Internal::Echo,
            "discard" | "9" => Internal::Discard,
            "chargen" | "19" => Internal::Chargen,
            "daytime" | "13" => Internal::Daytime,
            "time" | "37" => Internal::Time,
            "tcpmux" | "1" => Internal::Tcpmux,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Internal::Echo => "echo",
            Internal::Discard => "discard",
            Internal::Chargen => "chargen",
            Internal::Daytime => "daytime",
            Internal::Time => "time",
            Internal::Tcpmux => "tcpmux",
        }
    }

    /// The well-known port (UDP loop protection refuses requests from the
    /// ports of internal services).
    pub fn port(self) -> u16 {
        match self {
            Internal::Echo => 7,
            Internal::Discard => 9,
            Internal::Chargen => 19,
            Internal::Daytime => 13,
            Internal::Time => 37,
            Internal::Tcpmux => 1,
        }
    }
}

/// What runs for a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handler {
    Exec {
        program: PathBuf,
        /// argv, argv[0] included.
        argv: Vec<String>,
    },
    Internal(Internal),
}

/// Which PROXY protocol versions a service reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
    Any,
}

/// PROXY protocol on input: connections from `trusted` proxies must start
/// with a header, whose addresses then stand for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySpec {
    pub version: ProxyVersion,
    pub trusted: Vec<acl::Cidr>,
    /// Connections from elsewhere are served as direct ones (otherwise
    /// they are refused).
    pub optional: bool,
}

/// An ordinary server kept asleep (`proxy-to=`, `--proxy`, xinetd
/// `redirect`): doorman starts the program on the first connection,
/// holds clients until a connect to `target` succeeds, relays the bytes
/// both ways, and stops the program after `idle_stop` without a
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Where the program listens (it binds there itself).
    pub target: Address,
    /// `false`: the server is already running, nothing is started (xinetd
    /// `redirect`).
    pub start: bool,
    /// `None`: never stopped for being idle.
    pub idle_stop: Option<Duration>,
    /// How long a start may take before held clients are closed.
    pub start_timeout: Duration,
    /// Clients accepted and held while the backend starts (the next ones
    /// wait in the kernel's backlog).
    pub max_held: u32,
    /// A PROXY header sent to the backend first, naming the client.
    pub send_proxy: Option<ProxyVersion>,
    /// `true`: ready once it has sent `READY=1` on the `NOTIFY_SOCKET`
    /// doorman gives it (and a connect succeeds); `false`: once a connect
    /// succeeds.
    pub notify: bool,
}

/// Defaults of a backend.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_HELD: u32 = 128;

impl Backend {
    pub fn new(target: Address, start: bool) -> Backend {
        Backend {
            target,
            start,
            idle_stop: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            max_held: DEFAULT_MAX_HELD,
            send_proxy: None,
            notify: false,
        }
    }
}

/// A backend's address: `/PATH` (unix), `PORT` (127.0.0.1), `ADDR:PORT`,
/// `[V6ADDR]:PORT` (`localhost` is 127.0.0.1; no DNS).
pub fn parse_target(s: &str) -> Result<Address, String> {
    if s.starts_with('/') {
        return Ok(Address::Unix(PathBuf::from(s)));
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(Address::Inet(SocketAddr::from(([127, 0, 0, 1], port))));
    }
    let s2 = s
        .strip_prefix("localhost:")
        .map(|p| format!("127.0.0.1:{p}"));
    match s2.as_deref().unwrap_or(s).parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(Address::Inet(a)),
        _ => Err(format!(
            "{s:?} is not a backend address (PORT, ADDR:PORT, [V6ADDR]:PORT or /PATH)"
        )),
    }
}

/// One service: where it listens, how and what it runs, within which limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The service as named in its configuration (`echo`, `9999`).
    pub name: String,
    pub origin: Origin,
    pub endpoints: Vec<Endpoint>,
    pub mode: Mode,
    pub handover: Handover,
    pub handler: Handler,
    /// `None`: run as doorman itself runs (no privilege change). Shared
    /// by the services of one load that name the same user and group.
    pub creds: Option<std::sync::Arc<Creds>>,
    /// Shared with the services of a load written alike (see
    /// `resolve::Resolver`): 10,000 such services cost one copy.
    pub limits: Arc<Limits>,
    /// `LISTEN_FDNAMES` for the `fd3` hand-over (default `connection` per
    /// connection, the service name in wait mode, as systemd).
    pub fd_name: std::borrow::Cow<'static, str>,
    /// A description for logs (systemd `Description=`).
    pub description: Option<String>,
    /// Shared as `limits` is.
    pub exec: Arc<ExecSpec>,
    pub stop: StopSpec,
    /// Shared as `limits` is.
    pub access: Arc<Access>,
    pub refusal: Refusal,
    /// Served behind tcpmux (RFC 1078) under this name instead of on a
    /// port of its own; `true`: tcpmux answers `+` first (`tcpmux/+NAME`).
    /// (Boxed, as `proxy`: few services have one.)
    pub tcpmux: Option<Box<(String, bool)>>,
    pub proxy: Option<Box<ProxySpec>>,
    /// An ordinary server behind doorman, started on demand (boxed: most
    /// services have none, 72 bytes each otherwise).
    pub backend: Option<Box<Backend>>,
    /// What a systemd unit adds (none for the other front ends).
    pub unit: Option<Box<UnitExec>>,
}

impl Service {
    pub fn internal(&self) -> Option<Internal> {
        match self.handler {
            Handler::Internal(i) => Some(i),
            Handler::Exec { .. } => None,
        }
    }

    /// `name/proto`, the subject of every log line about this service.
    pub fn label(&self) -> String {
        if let Some((name, _)) = self.tcpmux.as_deref() {
            return format!("tcpmux/{name}");
        }
        let proto = self.endpoints.first().map_or("tcp", |e| e.proto());
        let proto = proto.trim_end_matches(['4', '6']);
        // (Not format!: a load of 10,000 services makes 10,000 of these.)
        let mut label = String::with_capacity(self.name.len() + 1 + proto.len());
        label.push_str(&self.name);
        label.push('/');
        label.push_str(proto);
        label
    }
}

/// Joins an argv for display, quoting words that need it.
pub fn display_argv(argv: &[String]) -> String {
    let mut out = String::new();
    for (i, a) in argv.iter().enumerate() {
        let a = &a.replace(unit::INSTANCE_MARK, "%i");
        if i > 0 {
            out.push(' ');
        }
        if a.is_empty()
            || a.chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\\')
        {
            out.push('"');
            for c in a.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(a);
        }
    }
    out
}

impl fmt::Display for Service {
    /// The normalized listing: one line per service, whatever front end it
    /// came from (`--check`, start-up at `-v`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        for e in &self.endpoints {
            write!(
                f,
                " listen={}:{}:{}",
                e.sock_type.as_str(),
                e.proto(),
                e.addr
            )?;
            if e.optional {
                write!(f, "?")?;
            }
            let o = e.opts;
            for (on, name) in [
                (o.reuseport, "reuseport"),
                (o.freebind, "freebind"),
                (o.keepalive, "keepalive"),
                (o.nodelay, "nodelay"),
            ] {
                if on {
                    write!(f, ",{name}")?;
                }
            }
            if let Address::Unix(_) = e.addr {
                let id = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
                write!(
                    f,
                    "(owner={} group={} mode={:04o})",
                    id(e.perms.owner),
                    id(e.perms.group),
                    e.perms.mode.unwrap_or(DEFAULT_UNIX_MODE)
                )?;
            }
        }
        let mode = match self.mode {
            Mode::Accept => "nowait",
            Mode::Wait => "wait",
        };
        write!(f, " mode={mode} handover={}", self.handover.name())?;
        match &self.creds {
            Some(c) => write!(f, " user={}({}) group={}", c.user, c.uid, c.gid)?,
            None => write!(f, " user=-")?,
        }
        let l = &self.limits;
        let num = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            " max-child={} max-child-per-ip={}",
            num(l.max_instances),
            num(l.max_per_source),
        )?;
        match l.source_rate {
            Some(b) => write!(
                f,
                " source-rate={}/{}s,burst={}",
                b.rate,
                b.interval.as_secs_f64(),
                b.burst
            )?,
            None => write!(f, " source-rate=-")?,
        }
        if (l.prefix4, l.prefix6) != (32, 64) {
            write!(f, " source-prefix={}/{}", l.prefix4, l.prefix6)?;
        }
        match l.rate {
            Some(r) => write!(
                f,
                " rate={}/{}s,pause={}s{}",
                r.max,
                r.interval.as_secs_f64(),
                r.pause.as_secs_f64(),
                if l.rate_fixed { ",fixed" } else { "" }
            )?,
            None => write!(f, " rate=-")?,
        }
        if let Some(r) = l.poll {
            write!(
                f,
                " poll={}/{}s,pause={}s",
                r.max,
                r.interval.as_secs_f64(),
                r.pause.as_secs_f64()
            )?;
        }
        match l.crash {
            Some(c) if c != DEFAULT_CRASH => write!(
                f,
                " crash={}/{}s,lifetime={}s,pause={}s",
                c.max,
                c.window.as_secs_f64(),
                c.lifetime.as_secs_f64(),
                c.pause.as_secs_f64()
            )?,
            Some(_) => {}
            None => write!(f, " crash=off")?,
        }
        if l.session_idle != Some(DEFAULT_SESSION_IDLE) {
            match l.session_idle {
                Some(t) => write!(f, " session-idle={}s", t.as_secs_f64())?,
                None => write!(f, " session-idle=0")?,
            }
        }
        let a = &self.access;
        for (name, list) in [("allow", &a.allow), ("deny", &a.deny)] {
            if !list.is_empty() {
                let l: Vec<String> = list.iter().map(|c| c.to_string()).collect();
                write!(f, " {name}={}", l.join(","))?;
            }
        }
        for (name, list) in [("allow-uid", &a.uids), ("allow-gid", &a.gids)] {
            if !list.is_empty() {
                let l: Vec<String> = list.iter().map(u32::to_string).collect();
                write!(f, " {name}={}", l.join(","))?;
            }
        }
        let r = &self.refusal;
        let d = Refusal::default();
        for (name, fate, default) in [
            ("on-full", r.full, d.full),
            ("on-source", r.source, d.source),
            ("on-deny", r.deny, d.deny),
            ("on-paused", r.paused, d.paused),
        ] {
            if fate != default {
                write!(f, " {name}={}", fate.as_str())?;
            }
        }
        if r.message != d.message {
            write!(f, " message={:?}", String::from_utf8_lossy(&r.message))?;
        }
        if let Some(t) = self.exec.runtime_max {
            write!(
                f,
                " timeout={}s,grace={}s",
                t.as_secs_f64(),
                self.stop.timeout.unwrap_or(DEFAULT_GRACE).as_secs_f64()
            )?;
        }
        if let Some(c) = &self.creds {
            if c.groups != [c.gid] {
                let g: Vec<String> = c.groups.iter().map(u32::to_string).collect();
                write!(f, " groups={}", g.join(","))?;
            }
        }
        let e = &self.exec;
        if e.manager_env {
            write!(f, " env=manager")?;
        } else if !e.inherit_env {
            write!(f, " env=clean")?;
        }
        if !e.inherit_env {
            for p in &e.pass_env {
                write!(f, " passenv={p}")?;
            }
        }
        for (k, v) in &e.set_env {
            write!(f, " env+={}", display_argv(&[format!("{k}={v}")]))?;
        }
        for u in &e.unset_env {
            write!(f, " env-={}", display_argv(std::slice::from_ref(u)))?;
        }
        if let Some(d) = &e.cwd {
            write!(f, " cwd={}", d.display())?;
        }
        if let Some(m) = e.umask {
            write!(f, " umask={m:04o}")?;
        }
        if let Some(n) = e.nice {
            write!(f, " nice={n}")?;
        }
        for r in &e.rlimits {
            let v = |x: u64| {
                if x == libc::RLIM_INFINITY {
                    "infinity".to_string()
                } else {
                    x.to_string()
                }
            };
            write!(f, " rlimit{}={}:{}", r.resource, v(r.soft), v(r.hard))?;
        }
        if let Some(b) = &self.backend {
            write!(
                f,
                " {}={} start-timeout={}s max-held={}",
                if b.start { "proxy-to" } else { "redirect" },
                b.target,
                b.start_timeout.as_secs_f64(),
                b.max_held
            )?;
            if let Some(t) = b.idle_stop {
                write!(f, " idle-stop={}s", t.as_secs_f64())?;
            }
            if b.notify {
                write!(f, " ready=notify")?;
            }
            if let Some(v) = b.send_proxy {
                write!(
                    f,
                    " proxy-send={}",
                    if v == ProxyVersion::V1 { "v1" } else { "v2" }
                )?;
            }
        }
        if let Some(p) = &self.proxy {
            let t: Vec<String> = p.trusted.iter().map(|c| c.to_string()).collect();
            write!(
                f,
                " proxy-protocol={} proxy-from={}{}",
                match p.version {
                    ProxyVersion::V1 => "v1",
                    ProxyVersion::V2 => "v2",
                    ProxyVersion::Any => "any",
                },
                t.join(","),
                if p.optional {
                    " proxy-optional=yes"
                } else {
                    ""
                }
            )?;
        }
        if let Some((name, plus)) = self.tcpmux.as_deref() {
            write!(f, " tcpmux={}{name}", if *plus { "+" } else { "" })?;
        }
        match &self.handler {
            Handler::Exec { program, argv } => write!(
                f,
                " program={} argv=[{}]",
                program.display(),
                display_argv(argv)
            ),
            Handler::Internal(i) => write!(f, " program=internal:{}", i.as_str()),
        }
    }
}

/// The syntax of a configuration source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Inetd,
    Xinetd,
    Systemd,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "inetd" => Some(Format::Inetd),
            "xinetd" => Some(Format::Xinetd),
            "systemd" => Some(Format::Systemd),
            _ => None,
        }
    }
}

/// Which configuration sources to read, from the command line.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub files: Vec<PathBuf>,
    /// `--format`: read every file with this syntax instead of detecting it.
    pub format: Option<Format>,
    pub listen: Option<inetd::RawService>,
}

/// How a path is read, when `--format` does not say: a directory holding
/// `*.socket` files is a unit directory, any other directory an xinetd
/// `includedir`; a `*.socket` file is a unit; a file whose first
/// significant word is `service`, `defaults`, `include` or `includedir` is
/// xinetd; anything else is inetd.conf.
pub fn detect(path: &Path, text: Option<&str>) -> Format {
    if path.is_dir() {
        let has_units = std::fs::read_dir(path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| unit::is_socket_unit(&e.path()))
            })
            .unwrap_or(false);
        return if has_units {
            Format::Systemd
        } else {
            Format::Xinetd
        };
    }
    if unit::is_socket_unit(path) {
        return Format::Systemd;
    }
    if text.is_some_and(xinetd::looks_like) {
        return Format::Xinetd;
    }
    Format::Inetd
}

/// The outcome of loading: the services, and warnings about what was
/// skipped (each naming file:line).
#[derive(Debug, Default)]
pub struct Loaded {
    pub services: Vec<Service>,
    pub warnings: Vec<String>,
}

/// Reads, parses and resolves every source. All errors are collected, so
/// that one run of `--check` lists them all.
pub fn load(sources: &Sources) -> Result<Loaded, Vec<ConfigError>> {
    let mut raws = Vec::new();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for file in &sources.files {
        let parsed = if file.is_dir() {
            match sources.format.unwrap_or_else(|| detect(file, None)) {
                Format::Systemd => unit::parse_dir(file),
                Format::Xinetd => xinetd::parse_dir(file),
                Format::Inetd => {
                    errors.push(ConfigError::new(
                        &Origin::new(file, 0),
                        None,
                        "is a directory: inetd.conf syntax is read from files only",
                    ));
                    continue;
                }
            }
        } else {
            let text = match read_file(file) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match sources.format.unwrap_or_else(|| detect(file, Some(&text))) {
                Format::Systemd => unit::parse_socket_unit(file),
                Format::Xinetd => xinetd::parse(file, &text),
                Format::Inetd => inetd::parse(file, &text),
            }
        };
        // (The first file's services are taken as they are: a copy of
        // 10,000 raw services is a fair part of a load.)
        if raws.is_empty() {
            raws = parsed.services;
        } else {
            raws.extend(parsed.services);
        }
        warnings.extend(parsed.warnings);
        errors.extend(parsed.errors);
    }
    if let Some(raw) = &sources.listen {
        raws.push(raw.clone());
    }
    let mut resolver = resolve::Resolver::new();
    let mut services = Vec::with_capacity(raws.len());
    for raw in raws {
        match resolver.resolve(raw) {
            Ok((svc, mut w)) => {
                warnings.append(&mut w);
                services.push(svc);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    settle_families(&mut services);
    check_conflicts(&services, &mut errors);
    let muxed: Vec<&Service> = services.iter().filter(|s| s.tcpmux.is_some()).collect();
    if !muxed.is_empty()
        && !services
            .iter()
            .any(|s| s.internal() == Some(Internal::Tcpmux))
    {
        for s in muxed {
            warnings.push(format!(
                "{}: {}: no internal tcpmux service is configured to reach it (add `tcpmux stream tcp nowait root internal`)",
                s.origin,
                s.label()
            ));
        }
    }
    if errors.is_empty() {
        Ok(Loaded { services, warnings })
    } else {
        Err(errors)
    }
}

/// The most a configuration file (or an included file, a drop-in, an
/// environment file) may hold. Configuration is text written by people;
/// `-f /dev/zero` or an `include` of a device must be an error, not an
/// allocation without bound.
pub const MAX_FILE: u64 = 16 << 20;

/// Reads at most [`MAX_FILE`] bytes of `path`; more is an error.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_FILE >> 20),
        ));
    }
    Ok(bytes)
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_text_bounded(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8"))
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    let origin = Origin::new(path, 0);
    let bytes = read_bounded(path).map_err(|e| ConfigError::new(&origin, None, e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        ConfigError::new(&Origin::new(path, line), None, "not valid UTF-8")
    })
}

/// An explicit IPv6 line wins over what a line for both families only
/// implies, as in every BSD inetd.conf, which pairs `daytime stream tcp`
/// with `daytime stream tcp6`:
/// - the optional `[::]` half of a plain `tcp`/`udp` line (which, as in
///   Debian's openbsd-inetd, serves IPv4 and IPv6 when alone) is dropped
///   when another endpoint claims an IPv6 address on the same port and
///   socket type;
/// - a dual-stack `tcp46`/`udp46` endpoint on `[::]` keeps only its IPv4
///   half (`0.0.0.0`) when another endpoint claims `[::]` for IPv6 only.
fn settle_families(services: &mut [Service]) {
    use std::net::{IpAddr, Ipv4Addr};
    let inet = |e: &Endpoint| match e.addr {
        Address::Inet(a) if a.port() != 0 => Some(a),
        _ => None,
    };
    // (type, port) claimed for IPv6 explicitly, and of those for IPv6 only
    // on the wildcard address.
    let mut v6: crate::fasthash::FastSet<(SockType, u16)> = Default::default();
    let mut v6only_any: crate::fasthash::FastSet<(SockType, u16)> = Default::default();
    for e in services.iter().flat_map(|s| &s.endpoints) {
        if let Some(a) = inet(e).filter(|a| a.is_ipv6() && !e.optional) {
            v6.insert((e.sock_type, a.port()));
            if e.v6only && a.ip().is_unspecified() {
                v6only_any.insert((e.sock_type, a.port()));
            }
        }
    }
    if v6.is_empty() {
        return;
    }
    for svc in services.iter_mut() {
        svc.endpoints.retain(|e| {
            !(e.optional
                && inet(e).is_some_and(|a| a.is_ipv6() && v6.contains(&(e.sock_type, a.port()))))
        });
        for e in &mut svc.endpoints {
            let Some(a) = inet(e) else { continue };
            if a.is_ipv6()
                && a.ip().is_unspecified()
                && !e.v6only
                && v6only_any.contains(&(e.sock_type, a.port()))
            {
                e.addr =
                    Address::Inet(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), a.port()));
            }
        }
    }
}

/// Two services may not bind the same address: name both sources.
fn check_conflicts(services: &[Service], errors: &mut Vec<ConfigError>) {
    // A map, not a list: 10,000 services are 10,000 look-ups, not 50
    // million comparisons.
    let mut seen: crate::fasthash::FastMap<(SockType, Address, bool), &Service> =
        crate::fasthash::FastMap::with_capacity_and_hasher(services.len(), Default::default());
    for svc in services {
        for e in &svc.endpoints {
            if e.ephemeral() {
                continue; // the kernel picks a fresh port for each
            }
            let key = e.bind_key();
            if let Some(other) = seen.get(&key) {
                errors.push(ConfigError::new(
                    &svc.origin,
                    Some("service"),
                    format!(
                        "{} {} is already bound by {} ({})",
                        e.sock_type.as_str(),
                        e.addr,
                        other.label(),
                        other.origin
                    ),
                ));
            } else {
                seen.insert(key, svc);
            }
        }
    }
}

/// A `CString` from config text that was already checked for NUL bytes.
pub fn cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| CString::new(s.replace('\0', "")).expect("no NUL left"))
}

#[cfg(test)]
mod family_tests {
    use super::*;

    fn listing(text: &str) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!(
            "doorman-family-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("inetd.conf");
        std::fs::write(&f, text).unwrap();
        let loaded = load(&Sources {
            files: vec![f],
            ..Sources::default()
        })
        .unwrap_or_else(|e| panic!("{e:?}"));
        let _ = std::fs::remove_dir_all(&dir);
        loaded
            .services
            .iter()
            .flat_map(|s| {
                s.endpoints.iter().map(move |e| {
                    format!(
                        "{} {}:{}{}",
                        s.name,
                        e.proto(),
                        e.addr,
                        if e.optional { "?" } else { "" }
                    )
                })
            })
            .collect()
    }

    #[test]
    fn an_explicit_ipv6_line_wins_over_what_tcp_implies() {
        // A lone `tcp` line: IPv4, and IPv6 where the host has it.
        assert_eq!(
            listing("daytime stream tcp nowait root internal\n"),
            ["daytime tcp4:0.0.0.0:13", "daytime tcp6:[::]:13?"]
        );
        // The BSD pair: each family once, neither refused.
        let pair =
            "daytime stream tcp nowait root internal\ndaytime stream tcp6 nowait root internal\n";
        assert_eq!(
            listing(pair),
            ["daytime tcp4:0.0.0.0:13", "daytime tcp6:[::]:13"]
        );
        let pair = "echo dgram udp wait root internal\necho dgram udp6 wait root internal\n";
        assert_eq!(listing(pair), ["echo udp4:0.0.0.0:7", "echo udp6:[::]:7"]);
        // tcp46 next to tcp6: the dual socket keeps its IPv4 half.
        let pair =
            "time stream tcp46 nowait root internal\ntime stream tcp6 nowait root internal\n";
        assert_eq!(listing(pair), ["time tcp4:0.0.0.0:37", "time tcp6:[::]:37"]);
        // A specific IPv6 address on the port also takes over from `tcp`.
        let pair =
            "time stream tcp nowait root internal\n[::1]:time stream tcp6 nowait root internal\n";
        assert_eq!(
            listing(pair),
            ["time tcp4:0.0.0.0:37", "time tcp6:[::1]:37"]
        );
    }
}
