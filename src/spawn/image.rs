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

use libc::{c_char, c_int, gid_t};

use super::child::{ChildPlan, RawCreds, MAX_LISTEN, MAX_RLIMITS, MAX_SIGNALS};
use crate::config::unit::INSTANCE_MARK;
use crate::config::{cstring, Creds, ExecSpec, Handler, Handover, Service, StdFd};

/// Variables doorman sets itself; an inherited value is dropped so that a
/// handler never sees two, or a stale `LISTEN_FDS` meant for doorman.
const RESERVED: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
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

/// doorman's own environment less the reserved names, captured at start.
#[derive(Debug, Default)]
pub struct BaseEnv {
    vars: Vec<(Vec<u8>, Vec<u8>)>,
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
        BaseEnv { vars }
    }

    /// A service's environment: doorman's (all of it, or the names it
    /// passes), then what the service sets; a later setting replaces an
    /// earlier one of the same name; reserved names never pass.
    fn for_service(&self, spec: &ExecSpec) -> Vec<CString> {
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
        for (k, v) in &self.vars {
            if spec.inherit_env || spec.pass_env.iter().any(|p| p.as_bytes() == k.as_slice()) {
                put(k, v);
            }
        }
        for (k, v) in &spec.set_env {
            put(k.as_bytes(), v.as_bytes());
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
    env: Vec<CString>,
    creds: Option<Creds>,
    set_groups: bool,
    handover: Handover,
    fd_name: String,
    reset_signals: Vec<c_int>,
    cwd: Option<CString>,
    umask: Option<libc::mode_t>,
    nice: Option<c_int>,
    rlimits: Vec<(c_int, u64, u64)>,
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
        let path = CString::new(program.as_os_str().as_bytes()).unwrap_or_default();
        let argv: Vec<CString> = argv.iter().map(|a| cstring(a)).collect();
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(ptr::null());
        // Only root may call setgroups; an unprivileged doorman keeps its
        // ids and the switch is a no-op or fails visibly in setuid.
        let set_groups = nix::unistd::geteuid().is_root();
        let creds = svc.creds.clone().filter(|c| {
            set_groups
                || c.uid != nix::unistd::geteuid().as_raw()
                || c.gid != nix::unistd::getegid().as_raw()
        });
        let mut reset_signals = reset_signals.to_vec();
        reset_signals.truncate(MAX_SIGNALS);
        let mut rlimits: Vec<(c_int, u64, u64)> = svc
            .exec
            .rlimits
            .iter()
            .map(|r| (r.resource, r.soft, r.hard))
            .collect();
        rlimits.truncate(MAX_RLIMITS);
        let template = match &svc.handler {
            Handler::Exec { argv, .. } if argv.iter().any(|a| a.contains(INSTANCE_MARK)) => {
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
            env: base.for_service(&svc.exec),
            creds,
            set_groups,
            handover: svc.handover,
            fd_name: svc.fd_name.clone(),
            reset_signals,
            cwd: svc
                .exec
                .cwd
                .as_ref()
                .and_then(|c| CString::new(c.as_os_str().as_bytes()).ok()),
            umask: svc.exec.umask.map(|m| m as libc::mode_t),
            nice: svc.exec.nice,
            rlimits,
        }
    }
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

    /// The connection's variables (none for a listening socket).
    fn env(&self) -> Vec<CString> {
        match self {
            Peer::Tcp {
                remote,
                local,
                proxy,
            } => {
                let rip = remote.ip().to_canonical().to_string();
                let rport = remote.port().to_string();
                let lip = local.ip().to_canonical().to_string();
                let lport = local.port().to_string();
                let mut env = vec![
                    cstring(&format!("REMOTE_ADDR={rip}")),
                    cstring(&format!("REMOTE_PORT={rport}")),
                    cstring(&format!("REMOTE_HOST={rip}")),
                    cstring("PROTO=TCP"),
                    cstring(&format!("TCPREMOTEIP={rip}")),
                    cstring(&format!("TCPREMOTEPORT={rport}")),
                    cstring(&format!("TCPLOCALIP={lip}")),
                    cstring(&format!("TCPLOCALPORT={lport}")),
                ];
                if let Some(p) = proxy {
                    env.push(cstring(&format!("PROXY_ADDR={}", p.ip().to_canonical())));
                    env.push(cstring(&format!("PROXY_PORT={}", p.port())));
                }
                env
            }
            Peer::Udp { remote, local } => {
                let rip = remote.ip().to_canonical().to_string();
                let rport = remote.port().to_string();
                let lip = local.ip().to_canonical().to_string();
                let lport = local.port().to_string();
                vec![
                    cstring(&format!("REMOTE_ADDR={rip}")),
                    cstring(&format!("REMOTE_PORT={rport}")),
                    cstring(&format!("REMOTE_HOST={rip}")),
                    cstring("PROTO=UDP"),
                    cstring(&format!("UDPREMOTEIP={rip}")),
                    cstring(&format!("UDPREMOTEPORT={rport}")),
                    cstring(&format!("UDPLOCALIP={lip}")),
                    cstring(&format!("UDPLOCALPORT={lport}")),
                ]
            }
            Peer::Unix {
                uid,
                gid,
                pid,
                path,
            } => {
                let mut path_var = b"IPCLOCALPATH=".to_vec();
                path_var.extend_from_slice(path.as_os_str().as_bytes());
                vec![
                    cstring(&format!("REMOTE_UID={uid}")),
                    cstring(&format!("REMOTE_GID={gid}")),
                    cstring(&format!("REMOTE_PID={pid}")),
                    cstring("PROTO=UNIX"),
                    cstring(&format!("IPCREMOTEEUID={uid}")),
                    cstring(&format!("IPCREMOTEEGID={gid}")),
                    cstring(&format!("IPCREMOTEPID={pid}")),
                    CString::new(path_var).unwrap_or_default(),
                ]
            }
            Peer::Listener => Vec::new(),
        }
    }
}

/// One spawn: the envp of this connection and the fd plan. Lives on the
/// parent's stack across `fork()`; the child only reads it (and writes the
/// pid into its own copy of the slot).
pub struct Launch<'a> {
    image: &'a Image,
    _env: Vec<CString>,
    /// A template's argv with this connection's instance name.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    listen_pid: Option<Vec<u8>>,
    envp: Vec<*const c_char>,
    std: [RawFd; 3],
    listen: Vec<RawFd>,
}

impl<'a> Launch<'a> {
    /// Prepares a spawn of `image`: `socket` is what fds 0-2 may get (a
    /// connection, or the `wait` listener that woke), `listen` what goes to
    /// fds 3... with `LISTEN_FDS`. `devnull` is an open /dev/null.
    pub fn new(
        image: &'a Image,
        socket: RawFd,
        listen: &[RawFd],
        peer: &Peer,
        devnull: RawFd,
    ) -> Self {
        let h = image.handover;
        let mut env = peer.env();
        let mut fds = Vec::new();
        let mut listen_pid = None;
        if h.listen_fds {
            fds.extend(listen.iter().take(MAX_LISTEN));
            let listen = &fds;
            let names = vec![image.fd_name.as_str(); listen.len()].join(":");
            env.push(cstring(&format!("LISTEN_FDS={}", listen.len())));
            env.push(cstring(&format!("LISTEN_FDNAMES={names}")));
            let mut slot = b"LISTEN_PID=".to_vec();
            slot.resize(slot.len() + PID_WIDTH + 1, 0);
            listen_pid = Some(slot);
        }
        let src = |f: StdFd| match f {
            StdFd::Socket => socket,
            StdFd::Null => devnull,
            StdFd::Log => 2,
        };
        // stdin cannot be "the log": /dev/null instead.
        let stdin = match h.stdin {
            StdFd::Log => devnull,
            f => src(f),
        };
        let std = [stdin, src(h.stdout), src(h.stderr)];
        let mut envp: Vec<*const c_char> = Vec::with_capacity(image.env.len() + env.len() + 2);
        envp.extend(image.env.iter().map(|c| c.as_ptr()));
        envp.extend(env.iter().map(|c| c.as_ptr()));
        if let Some(slot) = &listen_pid {
            envp.push(slot.as_ptr().cast());
        }
        envp.push(ptr::null());
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
        Launch {
            image,
            _env: env,
            _argv: argv,
            argv_ptrs,
            listen_pid,
            envp,
            std,
            listen: fds,
        }
    }

    /// The raw plan for [`super::child::exec_child`]. The pointers stay
    /// valid while `self` lives and is not moved.
    pub fn plan(&mut self, err_fd: RawFd) -> ChildPlan {
        let img = self.image;
        let mut reset_signals = [0; MAX_SIGNALS];
        reset_signals[..img.reset_signals.len()].copy_from_slice(&img.reset_signals);
        let mut listen = [0; MAX_LISTEN];
        listen[..self.listen.len()].copy_from_slice(&self.listen);
        let mut rlimits = [(0, 0, 0); MAX_RLIMITS];
        rlimits[..img.rlimits.len()].copy_from_slice(&img.rlimits);
        let creds = img.creds.as_ref().map(|c| RawCreds {
            uid: c.uid,
            gid: c.gid,
            groups: c.groups.as_ptr() as *const gid_t,
            ngroups: c.groups.len(),
            set_groups: img.set_groups,
        });
        let listen_pid_slot = self
            .listen_pid
            .as_mut()
            .map(|s| (s[b"LISTEN_PID=".len()..].as_mut_ptr(), PID_WIDTH));
        ChildPlan {
            path: img.path.as_ptr(),
            argv: if self.argv_ptrs.is_empty() {
                img.argv_ptrs.as_ptr()
            } else {
                self.argv_ptrs.as_ptr()
            },
            envp: self.envp.as_ptr(),
            std: self.std,
            listen,
            nlisten: self.listen.len(),
            rlimits,
            nrlimits: img.rlimits.len(),
            umask: img.umask,
            nice: img.nice,
            cwd: img.cwd.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
            reset_signals,
            nsignals: img.reset_signals.len(),
            listen_pid_slot,
            creds,
            err_fd,
        }
    }
}
