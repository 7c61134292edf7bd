//! Everything a child needs, built in the parent before `fork()`.
//!
//! Owns: the per-service part ([`Image`]: path, argv, credentials, as C
//! data, built once at load), the daemon's environment ([`BaseEnv`],
//! captured once), and the per-connection part ([`Launch`]: envp with the
//! connection's variables and the `LISTEN_PID` digit slot, the fd moves).
//! Must not: fork or make system calls.

use std::ffi::{CString, OsStr};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::ptr;
use std::rc::Rc;

use libc::{c_char, c_int, gid_t};

use super::child::{ChildPlan, RawCreds, MAX_LISTEN, MAX_RLIMITS, MAX_SIGNALS};
use crate::config::unit::INSTANCE_MARK;
use crate::config::{cstring, Creds, Handler, Handover, Service, StdFd};

/// Variables doorman sets itself, or that are meant for doorman alone (a
/// supervisor's watchdog); an inherited value is dropped so that a handler
/// never sees two, or a stale `LISTEN_FDS` meant for doorman.
const RESERVED: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_HOST",
    "PROTO",
    "TCPREMOTEIP",
    "TCPREMOTEPORT",
    "TCPLOCALIP",
    "TCPLOCALPORT",
    "REMOTE_UID",
    "REMOTE_GID",
    "REMOTE_PID",
    "IPCREMOTEEUID",
    "IPCREMOTEEGID",
    "IPCREMOTEPID",
    "IPCLOCALPATH",
];

/// Width of the `LISTEN_PID` digit slot: enough for any 64-bit pid.
const PID_WIDTH: usize = 20;

/// The `PATH` systemd gives the units of the system manager
/// (systemd.exec(5)); `/sbin:/bin` as on systems whose `/bin` is not
/// merged into `/usr`, harmless where it is.
pub const MANAGER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The locale variables systemd reads from the system's locale settings
/// and gives every unit.
const LOCALE_VARS: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "LC_CTYPE",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_COLLATE",
    "LC_MONETARY",
    "LC_MESSAGES",
    "LC_PAPER",
    "LC_NAME",
    "LC_ADDRESS",
    "LC_TELEPHONE",
    "LC_MEASUREMENT",
    "LC_IDENTIFICATION",
];

/// The settings of a service that decide its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EnvKey {
    inherit: bool,
    manager: bool,
    pass: Vec<String>,
    set: Vec<(String, String)>,
    unset: Vec<String>,
    /// USER/LOGNAME, HOME, SHELL, when they are set.
    user: Option<(String, String, String)>,
}

/// doorman's own environment less the reserved names, and the one a
/// service manager would give a unit, captured at start; and the
/// environments made of them so far: services with the same settings
/// share one (a thousand services, one copy).
#[derive(Debug, Default)]
pub struct BaseEnv {
    vars: Vec<(Vec<u8>, Vec<u8>)>,
    manager: Vec<(Vec<u8>, Vec<u8>)>,
    made: std::cell::RefCell<Vec<(EnvKey, Rc<Vec<CString>>)>>,
}

/// The system locale as systemd reads it: `/etc/locale.conf`, else
/// Debian's `/etc/default/locale`; `LANG=C.UTF-8` when neither sets it.
fn system_locale() -> Vec<(Vec<u8>, Vec<u8>)> {
    let text = ["/etc/locale.conf", "/etc/default/locale"]
        .iter()
        .find_map(|p| crate::config::read_text_bounded(std::path::Path::new(p)).ok())
        .unwrap_or_default();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (k, v) in crate::config::resolve::parse_env_file(&text) {
        if LOCALE_VARS.contains(&k.as_str()) && !v.is_empty() {
            out.retain(|(ok, _)| ok != k.as_bytes());
            out.push((k.into_bytes(), v.into_bytes()));
        }
    }
    if !out.iter().any(|(k, _)| k == b"LANG") {
        out.insert(0, (b"LANG".to_vec(), b"C.UTF-8".to_vec()));
    }
    out
}

impl BaseEnv {
    pub fn capture() -> BaseEnv {
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            if RESERVED.iter().any(|r| OsStr::new(r) == k) {
                continue;
            }
            vars.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        let mut manager = vec![(b"PATH".to_vec(), MANAGER_PATH.as_bytes().to_vec())];
        manager.extend(system_locale());
        BaseEnv {
            vars,
            manager,
            made: Default::default(),
        }
    }

    /// A service's environment, shared with every service of the same
    /// settings.
    fn shared(&self, svc: &Service) -> Rc<Vec<CString>> {
        let spec = &svc.exec;
        // The user's variables: in a unit whenever it names a user (as
        // systemd does), elsewhere when the handler runs as another user
        // than doorman (its HOME and SHELL are not doorman's).
        let euid = nix::unistd::geteuid().as_raw();
        let user = svc
            .creds
            .as_ref()
            .filter(|c| spec.manager_env || c.uid != euid)
            .map(|c| (c.user.clone(), c.home.clone(), c.shell.clone()));
        let key = EnvKey {
            inherit: spec.inherit_env,
            manager: spec.manager_env,
            pass: spec.pass_env.clone(),
            set: spec.set_env.clone(),
            unset: spec.unset_env.clone(),
            user,
        };
        let mut made = self.made.borrow_mut();
        // Forget environments no image uses any more (after reloads).
        made.retain(|(_, e)| Rc::strong_count(e) > 1);
        if let Some((_, e)) = made.iter().find(|(k, _)| *k == key) {
            return e.clone();
        }
        let e = Rc::new(self.for_service(&key));
        made.push((key, e.clone()));
        e
    }

    /// A service's environment, in systemd's order: the base (a service
    /// manager's, or doorman's own: all of it, or the names it passes),
    /// the user's variables, the names passed from doorman's environment,
    /// then what the service sets; a later setting replaces an earlier one
    /// of the same name; `unset` removes last; reserved names never pass.
    fn for_service(&self, key: &EnvKey) -> Vec<CString> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut put = |k: &[u8], v: &[u8]| {
            if RESERVED.iter().any(|r| r.as_bytes() == k) {
                return;
            }
            match out.iter_mut().find(|(ok, _)| ok == k) {
                Some(slot) => slot.1 = v.to_vec(),
                None => out.push((k.to_vec(), v.to_vec())),
            }
        };
        let passed = |k: &[u8]| key.pass.iter().any(|p| p.as_bytes() == k);
        if key.manager {
            for (k, v) in &self.manager {
                put(k, v);
            }
        } else {
            for (k, v) in &self.vars {
                if key.inherit || passed(k) {
                    put(k, v);
                }
            }
        }
        if let Some((name, home, shell)) = &key.user {
            put(b"USER", name.as_bytes());
            put(b"LOGNAME", name.as_bytes());
            if !home.is_empty() {
                put(b"HOME", home.as_bytes());
            }
            if !shell.is_empty() {
                put(b"SHELL", shell.as_bytes());
            }
        }
        if key.manager {
            for (k, v) in &self.vars {
                if passed(k) {
                    put(k, v);
                }
            }
        }
        for (k, v) in &key.set {
            put(k.as_bytes(), v.as_bytes());
        }
        for u in &key.unset {
            match u.split_once('=') {
                Some((k, v)) => out.retain(|(ok, ov)| !(ok == k.as_bytes() && ov == v.as_bytes())),
                None => out.retain(|(ok, _)| ok != u.as_bytes()),
            }
        }
        out.into_iter()
            .filter_map(|(mut k, v)| {
                k.push(b'=');
                k.extend_from_slice(&v);
                CString::new(k).ok()
            })
            .collect()
    }
}

/// The per-service, per-reload half of a spawn: built once.
#[derive(Debug)]
pub struct Image {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    /// argv holds a unit template's instance marker (`%i`), replaced per
    /// connection by `COUNTER-LOCAL-REMOTE`, as systemd names instances.
    argv_template: Option<Vec<String>>,
    instances: std::cell::Cell<u64>,
    env: Rc<Vec<CString>>,
    creds: Option<std::sync::Arc<Creds>>,
    set_groups: bool,
    /// The handler runs as another user than doorman: from its switch on,
    /// that user can signal (and stop) it.
    switches_user: bool,
    handover: Handover,
    fd_name: String,
    reset_signals: Vec<c_int>,
    cwd: Option<CString>,
    umask: Option<libc::mode_t>,
    nice: Option<c_int>,
    rlimits: Vec<(c_int, u64, u64)>,
    /// The unit's executor runs first (see `crate::executor`): doorman's
    /// log goes to the fd after the sockets.
    executor: bool,
    /// Why this service cannot start now (its sandbox cannot be made
    /// here); every start fails with it, logged.
    pub broken: Option<String>,
    /// Per-connection buffers, reused by every [`Launch`] of this image.
    scratch: std::cell::RefCell<Scratch>,
}

impl Image {
    /// `reset_signals`: signals to set back to `SIG_DFL` in the child.
    pub fn new(svc: &Service, base: &BaseEnv, reset_signals: &[c_int]) -> Image {
        // An internal service is never spawned: its image stays empty.
        let empty = (std::path::PathBuf::new(), Vec::new());
        let (program, argv) = match &svc.handler {
            Handler::Exec { program, argv } => (program, argv),
            Handler::Internal(_) => (&empty.0, &empty.1),
        };
        let unit = svc.unit.as_deref();
        let mut broken = None;
        let executor = unit.filter(|u| needs_executor(u)).map(|u| {
            executor_argv(svc, u).unwrap_or_else(|e| {
                broken = Some(e);
                Vec::new()
            })
        });
        let main_argv: Vec<String>;
        let (path, argv) = match &executor {
            Some(args) => {
                main_argv = args.clone();
                (c"/proc/self/exe".to_owned(), &main_argv)
            }
            None => (
                CString::new(program.as_os_str().as_bytes()).unwrap_or_default(),
                argv,
            ),
        };
        let argv: Vec<CString> = argv.iter().map(|a| cstring(a)).collect();
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(ptr::null());
        // Root, or a doorman with CAP_SETGID, sets the supplementary
        // groups; any other doorman keeps its own, and a switch to other
        // ids fails visibly in setgid or setuid.
        let set_groups = can_set_groups();
        let euid = nix::unistd::geteuid().as_raw();
        let main_privileges = unit.map(|u| u.privileges).unwrap_or_default();
        let creds = svc
            .creds
            .clone()
            .filter(|c| set_groups || c.uid != euid || c.gid != nix::unistd::getegid().as_raw());
        let switches_user = creds.as_ref().is_some_and(|c| c.uid != euid)
            && main_privileges == crate::config::Privileges::Normal;
        // The executor switches user itself, per command; `+` and `!` keep
        // doorman's.
        let creds = creds
            .filter(|_| executor.is_none() && main_privileges == crate::config::Privileges::Normal);
        let mut reset_signals = reset_signals.to_vec();
        if unit.is_some_and(|u| u.ignore_sigpipe) {
            // IgnoreSIGPIPE=yes (systemd's default): SIGPIPE stays ignored.
            reset_signals.retain(|&s| s != libc::SIGPIPE);
        }
        reset_signals.truncate(MAX_SIGNALS);
        let mut rlimits: Vec<(c_int, u64, u64)> = svc
            .exec
            .rlimits
            .iter()
            .map(|r| (r.resource, r.soft, r.hard))
            .collect();
        if let Some(&(soft, hard)) = HANDLER_NOFILE.get() {
            let nofile = libc::RLIMIT_NOFILE as c_int;
            if !rlimits.iter().any(|r| r.0 == nofile) {
                rlimits.insert(0, (nofile, soft, hard));
            }
        }
        rlimits.truncate(MAX_RLIMITS);
        let template = match (&executor, &svc.handler) {
            (Some(args), _) if args.iter().any(|a| a.contains(INSTANCE_MARK)) => Some(args.clone()),
            (None, Handler::Exec { argv, .. })
                if argv.iter().any(|a| a.contains(INSTANCE_MARK)) =>
            {
                Some(argv.clone())
            }
            _ => None,
        };
        Image {
            path,
            _argv: argv,
            argv_ptrs,
            argv_template: template,
            instances: std::cell::Cell::new(0),
            env: base.shared(svc),
            creds,
            set_groups,
            switches_user,
            handover: svc.handover,
            fd_name: svc.fd_name.to_string(),
            reset_signals,
            cwd: svc
                .exec
                .cwd
                .as_ref()
                .and_then(|c| CString::new(c.as_os_str().as_bytes()).ok()),
            umask: svc.exec.umask.map(|m| m as libc::mode_t),
            nice: svc.exec.nice,
            rlimits,
            executor: executor.is_some(),
            broken,
            scratch: Default::default(),
        }
    }
}

/// The `RLIMIT_NOFILE` doorman started with, when it raised its own soft
/// limit to the hard one (see [`lift_nofile`]): what handlers get back.
static HANDLER_NOFILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Raises doorman's soft `RLIMIT_NOFILE` to its hard limit, so that a
/// flood of connections to one service cannot take the descriptors
/// another needs to accept; handlers get the limit doorman was given
/// (programs using `select` break above 1,024), unless their service
/// sets one. Returns (old soft, new soft) when it changed.
pub fn lift_nofile() -> Option<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 || rl.rlim_cur >= rl.rlim_max {
            return None;
        }
        let raised = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            return None;
        }
    }
    let _ = HANDLER_NOFILE.set((rl.rlim_cur, rl.rlim_max));
    Some((rl.rlim_cur, rl.rlim_max))
}

/// Whether a unit asks for more than the raw child does.
fn needs_executor(u: &crate::config::UnitExec) -> bool {
    !u.pre.is_empty()
        || !u.post.is_empty()
        || u.notify
        || u.sandbox.any()
        || u.oom_score_adjust.is_some()
        || !u.files.is_empty()
        || u.nonblocking
}

/// The executor's argv for unit `u` of `svc`; `Err`: why its sandbox
/// cannot be made here.
fn executor_argv(svc: &Service, u: &crate::config::UnitExec) -> Result<Vec<String>, String> {
    use crate::executor::{Cmd, Spec, ARG0};
    let cmd = |c: &crate::config::Command| Cmd {
        program: c.program.clone(),
        argv: c.argv.clone(),
        ignore_failure: c.ignore_failure,
        privileges: c.privileges,
    };
    let main = match &svc.handler {
        Handler::Exec { program, argv } => Some(Cmd {
            program: program.clone(),
            argv: argv.clone(),
            ignore_failure: u.ignore_failure,
            privileges: u.privileges,
        }),
        Handler::Internal(_) => None,
    };
    let file = |f: StdFd| match f {
        StdFd::File(i) => u.files.get(i as usize).cloned(),
        _ => None,
    };
    let spec = Spec {
        label: svc.label(),
        json: crate::events::json(),
        listen_fds: svc.handover.listen_fds,
        creds: svc.creds.as_ref().map(|c| (c.uid, c.gid, c.groups.clone())),
        set_groups: can_set_groups(),
        oom: u.oom_score_adjust,
        nonblocking: u.nonblocking,
        stdout: file(svc.handover.stdout),
        stderr: file(svc.handover.stderr),
        notify: u.notify.then_some(u.notify_access),
        sandbox: super::sandbox::prepare(&u.sandbox)?,
        pre: u.pre.iter().map(cmd).collect(),
        main,
        post: u.post.iter().map(cmd).collect(),
    };
    let mut args = vec![ARG0.to_string()];
    args.extend(spec.encode());
    Ok(args)
}

/// doorman's log as a handler's executor gets it: a copy of stderr above
/// the standard fds (close-on-exec in doorman), made once.
fn log_fd() -> RawFd {
    static FD: std::sync::OnceLock<RawFd> = std::sync::OnceLock::new();
    *FD.get_or_init(|| {
        // SAFETY: fcntl with integer arguments.
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
        if fd < 0 {
            2
        } else {
            fd
        }
    })
}

impl Image {
    /// Whether the handler runs as another user than doorman (see
    /// [`super::spawn`]: such a child is never waited for).
    pub fn switches_user(&self) -> bool {
        self.switches_user
    }
}

/// Whether doorman may call `setgroups`: it is root, or holds
/// `CAP_SETGID` in its effective set (asked once with `capget`).
fn can_set_groups() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        #[repr(C)]
        struct Header {
            version: u32,
            pid: c_int,
        }
        let hdr = Header {
            version: super::child::CAP_VERSION_3,
            pid: 0,
        };
        const CAP_SETGID: u32 = 6;
        let mut data = [[0u32; 3]; 2];
        // SAFETY: capget with a version-3 header and room for its two
        // (effective, permitted, inheritable) triples.
        let r = unsafe { libc::syscall(libc::SYS_capget, &hdr, data.as_mut_ptr()) };
        r == 0 && data[0][0] & (1 << CAP_SETGID) != 0
    })
}

/// Who is on the other end of the socket being handed over.
#[derive(Clone, Debug)]
pub enum Peer {
    /// A TCP connection: both addresses (the client's, from the PROXY
    /// header when it came through a proxy, whose address is `proxy`).
    Tcp {
        remote: SocketAddr,
        local: SocketAddr,
        proxy: Option<SocketAddr>,
    },
    /// A UDP peer's session (`dgram nowait`): its address and the
    /// service's.
    Udp {
        remote: SocketAddr,
        local: SocketAddr,
    },
    /// A unix connection: the peer's credentials (`SO_PEERCRED`) and the
    /// socket's path.
    Unix {
        uid: u32,
        gid: u32,
        pid: i32,
        path: PathBuf,
    },
    /// A `wait` service: the listening socket itself, no peer yet.
    Listener,
}

impl Peer {
    /// The local end as logs show it: `addr:port`, or the socket's path.
    pub fn local(&self) -> String {
        match self {
            Peer::Tcp { local, .. } | Peer::Udp { local, .. } => {
                SocketAddr::new(local.ip().to_canonical(), local.port()).to_string()
            }
            Peer::Unix { path, .. } => path.display().to_string(),
            Peer::Listener => "-".into(),
        }
    }
}

/// Per-connection bytes, reused: the connection's variables (and a
/// template's argv) are written here and the envp pointer array rebuilt,
/// keeping both buffers' capacity, so that a steady stream of connections
/// allocates nothing here.
#[derive(Debug, Default)]
struct Scratch {
    /// NUL-terminated `NAME=value` entries, back to back.
    bytes: Vec<u8>,
    /// Where each entry of `bytes` starts.
    starts: Vec<usize>,
    envp: Vec<*const c_char>,
}

impl Scratch {
    /// Appends one `NAME=value` entry, the value written by `fmt`.
    fn var(&mut self, name: &str, value: std::fmt::Arguments<'_>) {
        use std::io::Write;
        self.starts.push(self.bytes.len());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(b'=');
        // Writing into a Vec cannot fail.
        let _ = self.bytes.write_fmt(value);
        // A NUL inside a value (a unix path) would end the entry early;
        // C could not see past it anyway, as with `cstring`.
        self.bytes.push(0);
    }

    /// Appends one entry from raw bytes (a unix socket path).
    fn var_bytes(&mut self, name: &str, value: &[u8]) {
        self.starts.push(self.bytes.len());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(b'=');
        self.bytes
            .extend(value.iter().copied().take_while(|&b| b != 0));
        self.bytes.push(0);
    }

    /// The connection's variables (none for a listening socket).
    /// The variables of an IP peer: `REMOTE_*`, `PROTO`, and UCSPI's
    /// `names` (`TCPREMOTEIP` ... or their UDP counterparts).
    fn inet(&mut self, proto: &str, names: [&str; 4], remote: &SocketAddr, local: &SocketAddr) {
        let rip = remote.ip().to_canonical();
        let rport = remote.port();
        self.var("REMOTE_ADDR", format_args!("{rip}"));
        self.var("REMOTE_PORT", format_args!("{rport}"));
        self.var("REMOTE_HOST", format_args!("{rip}"));
        self.var("PROTO", format_args!("{proto}"));
        self.var(names[0], format_args!("{rip}"));
        self.var(names[1], format_args!("{rport}"));
        self.var(names[2], format_args!("{}", local.ip().to_canonical()));
        self.var(names[3], format_args!("{}", local.port()));
    }

    fn peer(&mut self, peer: &Peer) {
        match peer {
            Peer::Tcp {
                remote,
                local,
                proxy,
            } => {
                self.inet(
                    "TCP",
                    ["TCPREMOTEIP", "TCPREMOTEPORT", "TCPLOCALIP", "TCPLOCALPORT"],
                    remote,
                    local,
                );
                if let Some(p) = proxy {
                    self.var("PROXY_ADDR", format_args!("{}", p.ip().to_canonical()));
                    self.var("PROXY_PORT", format_args!("{}", p.port()));
                }
            }
            Peer::Udp { remote, local } => self.inet(
                "UDP",
                ["UDPREMOTEIP", "UDPREMOTEPORT", "UDPLOCALIP", "UDPLOCALPORT"],
                remote,
                local,
            ),
            Peer::Unix {
                uid,
                gid,
                pid,
                path,
            } => {
                self.var("REMOTE_UID", format_args!("{uid}"));
                self.var("REMOTE_GID", format_args!("{gid}"));
                self.var("REMOTE_PID", format_args!("{pid}"));
                self.var("PROTO", format_args!("UNIX"));
                self.var("IPCREMOTEEUID", format_args!("{uid}"));
                self.var("IPCREMOTEEGID", format_args!("{gid}"));
                self.var("IPCREMOTEPID", format_args!("{pid}"));
                self.var_bytes("IPCLOCALPATH", path.as_os_str().as_bytes());
            }
            Peer::Listener => {}
        }
    }
}

/// A detached child's own copy of its connection's bytes (see
/// [`Launch::plan_detached`]); reused, keeping its capacity.
#[derive(Debug, Default)]
pub struct Own {
    bytes: Vec<u8>,
    envp: Vec<*const c_char>,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    /// The image the plan points into, kept alive while the child may
    /// read it (a reload may drop its service meanwhile).
    image: Option<Rc<Image>>,
}

impl Own {
    /// The child is done with this slot: let go of its image.
    pub fn release(&mut self) {
        self.image = None;
    }
}

/// One spawn: the envp of this connection and the fd plan, in the image's
/// reused scratch buffers. Lives on the parent's stack across the spawn;
/// the child only reads it (and writes the pid into the `LISTEN_PID`
/// slot: its own copy after fork, doorman's after clone, unused after).
pub struct Launch<'a> {
    image: &'a Rc<Image>,
    /// A template's argv with this connection's instance name (a unit
    /// template only: this one allocates).
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    /// Offset of the `LISTEN_PID=` entry in the scratch bytes.
    listen_pid: Option<usize>,
    std: [RawFd; 3],
    listen: [RawFd; MAX_LISTEN],
    nlisten: usize,
}

impl<'a> Launch<'a> {
    /// Prepares a spawn of `image`: `socket` is what fds 0-2 may get (a
    /// connection, or the `wait` listener that woke), `listen` what goes to
    /// fds 3... with `LISTEN_FDS`. `devnull` is an open /dev/null.
    /// `extra` is one more environment entry `NAME=VALUE` (a backend's
    /// `NOTIFY_SOCKET`), or empty.
    pub fn new(
        image: &'a Rc<Image>,
        socket: RawFd,
        listen: &[RawFd],
        peer: &Peer,
        devnull: RawFd,
        extra: &[u8],
    ) -> Self {
        let h = image.handover;
        let mut scratch = image.scratch.borrow_mut();
        scratch.bytes.clear();
        scratch.starts.clear();
        scratch.peer(peer);
        if !extra.is_empty() {
            let at = scratch.bytes.len();
            scratch.starts.push(at);
            scratch.bytes.extend_from_slice(extra);
            scratch.bytes.push(0);
        }
        let mut fds = [0; MAX_LISTEN];
        let mut nlisten = 0;
        let mut listen_pid = None;
        if h.listen_fds {
            nlisten = listen.len().min(MAX_LISTEN);
            fds[..nlisten].copy_from_slice(&listen[..nlisten]);
            scratch.var("LISTEN_FDS", format_args!("{nlisten}"));
            let at = scratch.bytes.len();
            scratch.starts.push(at);
            scratch.bytes.extend_from_slice(b"LISTEN_FDNAMES=");
            for i in 0..nlisten {
                if i > 0 {
                    scratch.bytes.push(b':');
                }
                scratch.bytes.extend_from_slice(image.fd_name.as_bytes());
            }
            scratch.bytes.push(0);
            let at = scratch.bytes.len();
            listen_pid = Some(at);
            scratch.starts.push(at);
            scratch.bytes.extend_from_slice(b"LISTEN_PID=");
            scratch
                .bytes
                .resize(at + b"LISTEN_PID=".len() + PID_WIDTH + 1, 0);
        }
        if image.executor && nlisten < MAX_LISTEN {
            // doorman's log, right after the sockets, for the executor.
            fds[nlisten] = log_fd();
            nlisten += 1;
        }
        let src = |f: StdFd| match f {
            StdFd::Socket => socket,
            // The executor opens the file over it.
            StdFd::Null | StdFd::File(_) => devnull,
            StdFd::Log => 2,
        };
        // stdin cannot be "the log": /dev/null instead.
        let stdin = match h.stdin {
            StdFd::Log => devnull,
            f => src(f),
        };
        let std = [stdin, src(h.stdout), src(h.stderr)];
        let (argv, argv_ptrs) = match &image.argv_template {
            Some(t) => {
                let n = image.instances.get();
                image.instances.set(n + 1);
                let inst = match peer {
                    Peer::Tcp { remote, local, .. } | Peer::Udp { remote, local } => {
                        format!("{n}-{local}-{remote}")
                    }
                    _ => n.to_string(),
                };
                let argv: Vec<CString> = t
                    .iter()
                    .map(|a| cstring(&a.replace(INSTANCE_MARK, &inst)))
                    .collect();
                let mut ptrs: Vec<*const c_char> = argv.iter().map(|c| c.as_ptr()).collect();
                ptrs.push(ptr::null());
                (argv, ptrs)
            }
            None => (Vec::new(), Vec::new()),
        };
        // The pointer array last: `bytes` no longer grows, so pointers
        // into it stay valid while the scratch is borrowed.
        let Scratch {
            bytes,
            starts,
            envp,
        } = &mut *scratch;
        envp.clear();
        envp.extend(image.env.iter().map(|c| c.as_ptr()));
        envp.extend(starts.iter().map(|&s| bytes[s..].as_ptr().cast::<c_char>()));
        envp.push(ptr::null());
        Launch {
            image,
            _argv: argv,
            argv_ptrs,
            listen_pid,
            std,
            listen: fds,
            nlisten,
        }
    }

    /// The plan for a child that runs alongside doorman (the detached
    /// clone): the per-connection bytes are copied into `own`, which the
    /// child keeps to itself until it has exec'd, so that the image's
    /// scratch buffers are free for the next connection at once. (A unit
    /// template's argv is moved there too.) The image itself must stay
    /// alive and unchanged until then.
    pub fn plan_detached(&mut self, report: *mut u64, own: &mut Own) -> ChildPlan {
        let mut plan = self.plan(report);
        let img = self.image;
        own.image = Some(Rc::clone(img));
        let scratch = img.scratch.borrow();
        own.bytes.clear();
        own.bytes.extend_from_slice(&scratch.bytes);
        own.envp.clear();
        own.envp.extend(img.env.iter().map(|c| c.as_ptr()));
        own.envp.extend(
            scratch
                .starts
                .iter()
                .map(|&s| own.bytes[s..].as_ptr().cast::<c_char>()),
        );
        own.envp.push(ptr::null());
        plan.envp = own.envp.as_ptr();
        plan.listen_pid_slot = self.listen_pid.map(|at| {
            // SAFETY: as in `plan`: the entry has PID_WIDTH + 1 bytes after
            // its `=`, copied byte for byte.
            let digits = unsafe { own.bytes.as_mut_ptr().add(at + b"LISTEN_PID=".len()) };
            (digits, PID_WIDTH)
        });
        if !self.argv_ptrs.is_empty() {
            // Moving the vectors moves no string: the pointers stay valid.
            own.argv = std::mem::take(&mut self._argv);
            own.argv_ptrs = std::mem::take(&mut self.argv_ptrs);
            plan.argv = own.argv_ptrs.as_ptr();
        }
        plan
    }

    /// The raw plan for [`super::child::exec_child`]. The pointers stay
    /// valid while `self` lives and no other `Launch` of the same image is
    /// made (only `new` writes the scratch buffers; doorman is
    /// single-threaded and spawns one launch at a time).
    pub fn image(&self) -> &Image {
        self.image
    }

    pub fn plan(&mut self, report: *mut u64) -> ChildPlan {
        let img = self.image;
        let mut scratch = img.scratch.borrow_mut();
        let mut reset_signals = [0; MAX_SIGNALS];
        reset_signals[..img.reset_signals.len()].copy_from_slice(&img.reset_signals);
        let mut rlimits = [(0, 0, 0); MAX_RLIMITS];
        rlimits[..img.rlimits.len()].copy_from_slice(&img.rlimits);
        let creds = img.creds.as_ref().map(|c| RawCreds {
            uid: c.uid,
            gid: c.gid,
            groups: c.groups.as_ptr() as *const gid_t,
            ngroups: c.groups.len(),
            set_groups: img.set_groups,
        });
        let listen_pid_slot = self.listen_pid.map(|at| {
            // SAFETY: `at` is the start of the `LISTEN_PID=` entry, which
            // has PID_WIDTH + 1 bytes after its `=` (see `new`).
            let digits = unsafe { scratch.bytes.as_mut_ptr().add(at + b"LISTEN_PID=".len()) };
            (digits, PID_WIDTH)
        });
        ChildPlan {
            path: img.path.as_ptr(),
            argv: if self.argv_ptrs.is_empty() {
                img.argv_ptrs.as_ptr()
            } else {
                self.argv_ptrs.as_ptr()
            },
            envp: scratch.envp.as_ptr(),
            std: self.std,
            listen: self.listen,
            nlisten: self.nlisten,
            rlimits,
            nrlimits: img.rlimits.len(),
            umask: img.umask,
            nice: img.nice,
            cwd: img.cwd.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
            new_session: super::new_session(),
            reset_signals,
            nsignals: img.reset_signals.len(),
            listen_pid_slot,
            creds,
            report,
            share_below: 0,
            unshared: ptr::null_mut(),
            tell: 0,
        }
        .checked()
    }
}

#[cfg(test)]
mod tests {
    //! The per-connection half allocates nothing once warm: a counting
    //! global allocator (counting only on the thread that asks, so that
    //! tests running alongside do not disturb it).

    use super::*;
    use crate::config::inetd;
    use crate::config::resolve::Resolver;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::ffi::CStr;

    struct Counting;

    thread_local! {
        static COUNT: Cell<Option<usize>> = const { Cell::new(None) };
    }

    // SAFETY: every call is passed on to the system allocator unchanged;
    // the counter is a const-initialized thread-local Cell (no allocation,
    // no destructor), reached with try_with so that thread teardown is
    // harmless.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let _ = COUNT.try_with(|c| c.set(c.get().map(|n| n + 1)));
            System.alloc(l)
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            System.dealloc(p, l)
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            let _ = COUNT.try_with(|c| c.set(c.get().map(|n| n + 1)));
            System.realloc(p, l, n)
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;

    /// Allocations made by `f` on this thread.
    fn allocations(f: impl FnOnce()) -> usize {
        COUNT.with(|c| c.set(Some(0)));
        f();
        COUNT.with(|c| c.replace(None)).unwrap()
    }

    fn image(line: &str) -> Rc<Image> {
        let parsed = inetd::parse(Path::new("test.conf"), line);
        assert!(parsed.errors.is_empty());
        let (svc, _) = Resolver::new().resolve(parsed.services[0].clone()).unwrap();
        Rc::new(Image::new(&svc, &BaseEnv::capture(), &[libc::SIGPIPE]))
    }

    /// The envp of a plan, as strings.
    fn envp(plan: &ChildPlan) -> Vec<String> {
        let mut out = Vec::new();
        // SAFETY: envp is a NULL-terminated array of NUL-terminated
        // strings, alive while the launch is.
        unsafe {
            let mut p = plan.envp;
            while !(*p).is_null() {
                out.push(CStr::from_ptr(*p).to_string_lossy().into_owned());
                p = p.add(1);
            }
        }
        out
    }

    use std::path::Path;

    #[test]
    fn connections_allocate_nothing_once_warm() {
        let img =
            image("127.0.0.1:9 stream tcp nowait,handover=fd3,fdname=web root /bin/true true\n");
        let peers = [
            Peer::Tcp {
                remote: "127.0.0.1:40000".parse().unwrap(),
                local: "127.0.0.1:9".parse().unwrap(),
                proxy: None,
            },
            Peer::Tcp {
                remote: "[2001:db8::1234:5678:9abc:def0]:65535".parse().unwrap(),
                local: "[::ffff:10.1.2.3]:9".parse().unwrap(),
                proxy: Some("[2001:db8::1]:65535".parse().unwrap()),
            },
        ];
        let mut slot = 0u64;
        // Warm up with the longest values, then count.
        for p in &peers {
            let mut l = Launch::new(&img, 5, &[5], p, 6, b"");
            let _ = l.plan(&mut slot);
        }
        let mut seen = Vec::with_capacity(2);
        let n = allocations(|| {
            for i in 0..100 {
                let mut l = Launch::new(&img, 5, &[5], &peers[i % 2], 6, b"");
                let plan = l.plan(&mut slot);
                if i < 2 {
                    seen.push((plan.nlisten, plan.std, plan.envp));
                }
            }
        });
        assert_eq!(n, 0, "allocations per 100 connections");
        // The detached clone's copy into a slot's own buffers, too.
        let mut own = Own::default();
        for p in &peers {
            let mut l = Launch::new(&img, 5, &[5], p, 6, b"");
            let _ = l.plan_detached(&mut slot, &mut own);
        }
        let n = allocations(|| {
            for i in 0..100 {
                let mut l = Launch::new(&img, 5, &[5], &peers[i % 2], 6, b"");
                let _ = l.plan_detached(&mut slot, &mut own);
            }
        });
        assert_eq!(n, 0, "allocations per 100 detached connections");
        // Its envp points into its own copy, with the connection's values.
        let mut l = Launch::new(&img, 5, &[5], &peers[1], 6, b"");
        let plan = l.plan_detached(&mut slot, &mut own);
        let env = envp(&plan);
        assert!(env.iter().any(|e| e == "REMOTE_PORT=65535"), "{env:?}");
        let (digits, _) = plan.listen_pid_slot.unwrap();
        let inside = own.bytes.as_ptr_range();
        assert!(inside.contains(&(digits as *const u8)));
        assert_eq!(seen[0].0, 1);
        assert_eq!(seen[0].1, [6, 6, 2]);

        // And the environment is right for each connection.
        let mut l = Launch::new(&img, 5, &[5], &peers[1], 6, b"");
        let plan = l.plan(&mut slot);
        let env = envp(&plan);
        for want in [
            "REMOTE_ADDR=2001:db8::1234:5678:9abc:def0",
            "REMOTE_PORT=65535",
            "TCPLOCALIP=10.1.2.3",
            "PROTO=TCP",
            "LISTEN_FDS=1",
            "LISTEN_FDNAMES=web",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} not in {env:?}");
        }
        let (digits, width) = plan.listen_pid_slot.unwrap();
        // SAFETY: the slot has width + 1 bytes (see `Launch::new`).
        unsafe { crate::spawn::child::write_pid(digits, width, 4242) };
        assert!(envp(&plan).iter().any(|e| e == "LISTEN_PID=4242"));
        let mut l = Launch::new(&img, 5, &[5], &peers[0], 6, b"");
        let env = envp(&l.plan(&mut slot));
        assert!(env.iter().any(|e| e == "REMOTE_ADDR=127.0.0.1"), "{env:?}");
        assert_eq!(
            env.iter().filter(|e| e.starts_with("REMOTE_ADDR=")).count(),
            1
        );
    }
}
