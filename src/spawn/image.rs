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

use super::child::{ChildPlan, RawCreds, MAX_MOVES, MAX_SIGNALS};
use crate::config::{cstring, Creds, Handler, Handover, Service};

/// Variables doorman sets itself; an inherited value is dropped so that a
/// handler never sees two, or a stale `LISTEN_FDS` meant for doorman.
const RESERVED: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
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
    vars: Vec<CString>,
}

impl BaseEnv {
    pub fn capture() -> BaseEnv {
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            if RESERVED.iter().any(|r| OsStr::new(r) == k) {
                continue;
            }
            let mut bytes = k.as_bytes().to_vec();
            bytes.push(b'=');
            bytes.extend_from_slice(v.as_bytes());
            if let Ok(c) = CString::new(bytes) {
                vars.push(c);
            }
        }
        BaseEnv { vars }
    }
}

/// The per-service, per-reload half of a spawn: built once.
#[derive(Debug)]
pub struct Image {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    creds: Option<Creds>,
    set_groups: bool,
    handover: Handover,
    fd_names: CString,
    reset_signals: Vec<c_int>,
}

impl Image {
    /// `reset_signals`: signals to set back to `SIG_DFL` in the child.
    pub fn new(svc: &Service, reset_signals: &[c_int]) -> Image {
        let Handler::Exec { program, argv } = &svc.handler;
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
        Image {
            path,
            _argv: argv,
            argv_ptrs,
            creds,
            set_groups,
            handover: svc.handover,
            fd_names: cstring(&format!("LISTEN_FDNAMES={}", svc.fd_name)),
            reset_signals,
        }
    }
}

/// Who is on the other end of the socket being handed over.
#[derive(Clone, Debug)]
pub enum Peer {
    /// A TCP connection: both addresses.
    Tcp {
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
    /// The connection's variables (none for a listening socket).
    fn env(&self) -> Vec<CString> {
        match self {
            Peer::Tcp { remote, local } => {
                let rip = remote.ip().to_canonical().to_string();
                let rport = remote.port().to_string();
                let lip = local.ip().to_canonical().to_string();
                let lport = local.port().to_string();
                vec![
                    cstring(&format!("REMOTE_ADDR={rip}")),
                    cstring(&format!("REMOTE_PORT={rport}")),
                    cstring(&format!("REMOTE_HOST={rip}")),
                    cstring("PROTO=TCP"),
                    cstring(&format!("TCPREMOTEIP={rip}")),
                    cstring(&format!("TCPREMOTEPORT={rport}")),
                    cstring(&format!("TCPLOCALIP={lip}")),
                    cstring(&format!("TCPLOCALPORT={lport}")),
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

/// One spawn: the envp of this connection and the fd moves. Lives on the
/// parent's stack across `fork()`; the child only reads it (and writes the
/// pid into its own copy of the slot).
pub struct Launch<'a> {
    image: &'a Image,
    _env: Vec<CString>,
    listen_pid: Option<Vec<u8>>,
    envp: Vec<*const c_char>,
    moves: [(RawFd, RawFd); MAX_MOVES],
    nmoves: usize,
}

impl<'a> Launch<'a> {
    /// Prepares a spawn of `image` handing it `conn` (a connected socket,
    /// or the listening socket of a `wait` service). `devnull` is an open
    /// /dev/null, used by the `fd3` hand-over.
    pub fn new(image: &'a Image, base: &BaseEnv, conn: RawFd, peer: &Peer, devnull: RawFd) -> Self {
        let env = peer.env();
        let mut envp: Vec<*const c_char> = Vec::with_capacity(base.vars.len() + env.len() + 4);
        envp.extend(base.vars.iter().map(|c| c.as_ptr()));
        envp.extend(env.iter().map(|c| c.as_ptr()));

        let mut moves = [(-1, -1); MAX_MOVES];
        let mut listen_pid = None;
        // Moves are ordered so that no move overwrites a later move's
        // source: sources are ≥ 3 (fds 0-2 are always open in doorman), and
        // the only destination ≥ 3 (fd 3) comes last.
        let nmoves = match image.handover {
            Handover::Inetd => {
                moves[..3].copy_from_slice(&[(conn, 0), (conn, 1), (conn, 2)]);
                3
            }
            Handover::Stdio => {
                moves[..2].copy_from_slice(&[(conn, 0), (conn, 1)]);
                2
            }
            Handover::Fd3 => {
                let mut slot = b"LISTEN_PID=".to_vec();
                slot.resize(slot.len() + PID_WIDTH + 1, 0);
                envp.push(c"LISTEN_FDS=1".as_ptr());
                envp.push(image.fd_names.as_ptr());
                listen_pid = Some(slot);
                moves.copy_from_slice(&[(devnull, 0), (devnull, 1), (conn, 3), (-1, -1)]);
                3
            }
        };
        if let Some(slot) = &listen_pid {
            envp.push(slot.as_ptr().cast());
        }
        envp.push(ptr::null());
        Launch {
            image,
            _env: env,
            listen_pid,
            envp,
            moves,
            nmoves,
        }
    }

    /// The raw plan for [`super::child::exec_child`]. The pointers stay
    /// valid while `self` lives and is not moved.
    pub fn plan(&mut self, err_fd: RawFd) -> ChildPlan {
        let img = self.image;
        let mut reset_signals = [0; MAX_SIGNALS];
        reset_signals[..img.reset_signals.len()].copy_from_slice(&img.reset_signals);
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
            argv: img.argv_ptrs.as_ptr(),
            envp: self.envp.as_ptr(),
            moves: self.moves,
            nmoves: self.nmoves,
            reset_signals,
            nsignals: img.reset_signals.len(),
            listen_pid_slot,
            creds,
            err_fd,
        }
    }
}
