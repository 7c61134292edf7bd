//! Binding and configuring each [`Endpoint`].
//!
//! Owns: socket creation (always close-on-exec; non-blocking for sockets
//! doorman accepts on, blocking for `wait` sockets it only hands over),
//! socket options, bind and listen, unix socket files (stale ones replaced,
//! owner/group/mode applied, removed when the socket is dropped), and
//! reading back the real local address.
//! Must not: know about processes or the event loop.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, SockFlag, SockType as NixSockType, SockaddrIn, SockaddrIn6,
    SockaddrStorage, UnixAddr,
};

use crate::config::{Address, Endpoint, SockType, DEFAULT_UNIX_MODE};

/// Removes a unix socket file when dropped (with its socket).
#[derive(Debug)]
pub struct UnlinkOnDrop(pub PathBuf);

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A bound (and, for connection sockets, listening) socket and the address
/// it really has.
#[derive(Debug)]
pub struct Bound {
    pub fd: OwnedFd,
    pub local: Address,
    /// For unix sockets: removes the file when the socket goes.
    pub unlink: Option<UnlinkOnDrop>,
}

/// The failing step and its errno: `("bind 0.0.0.0:79", EADDRINUSE)`.
pub type BindError = (String, Errno);

fn nix_type(t: SockType) -> NixSockType {
    match t {
        SockType::Stream => NixSockType::Stream,
        SockType::Dgram => NixSockType::Datagram,
        SockType::SeqPacket => NixSockType::SeqPacket,
    }
}

/// Creates, configures, binds and (for connection sockets) listens.
/// `nonblocking`: doorman accepts on it itself; a `wait` socket is left
/// blocking, as the handler it is handed to expects.
pub fn bind(e: &Endpoint, nonblocking: bool) -> Result<Bound, BindError> {
    let family = match &e.addr {
        Address::Inet(SocketAddr::V4(_)) => AddressFamily::Inet,
        Address::Inet(SocketAddr::V6(_)) => AddressFamily::Inet6,
        Address::Unix(_) => AddressFamily::Unix,
    };
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    let fd = socket::socket(family, nix_type(e.sock_type), flags, None)
        .map_err(|err| ("socket".to_string(), err))?;
    let opt = |what: &str, r: nix::Result<()>| r.map_err(|err| (format!("setsockopt {what}"), err));
    if let Some(n) = e.sndbuf {
        opt(
            "SO_SNDBUF",
            socket::setsockopt(&fd, sockopt::SndBuf, &(n as usize)),
        )?;
    }
    if let Some(n) = e.rcvbuf {
        opt(
            "SO_RCVBUF",
            socket::setsockopt(&fd, sockopt::RcvBuf, &(n as usize)),
        )?;
    }
    if e.opts.reuseport {
        opt(
            "SO_REUSEPORT",
            socket::setsockopt(&fd, sockopt::ReusePort, &true),
        )?;
    }
    let mut unlink = None;
    match &e.addr {
        Address::Inet(addr) => {
            // Inherited by accepted connections on Linux.
            if e.opts.keepalive {
                opt(
                    "SO_KEEPALIVE",
                    socket::setsockopt(&fd, sockopt::KeepAlive, &true),
                )?;
            }
            if e.opts.nodelay && e.sock_type == SockType::Stream {
                opt(
                    "TCP_NODELAY",
                    socket::setsockopt(&fd, sockopt::TcpNoDelay, &true),
                )?;
            }
            if e.opts.freebind {
                let (level, name) = if family == AddressFamily::Inet6 {
                    (libc::SOL_IPV6, libc::IPV6_FREEBIND)
                } else {
                    (libc::SOL_IP, libc::IP_FREEBIND)
                };
                let one: libc::c_int = 1;
                // SAFETY: setsockopt with a pointer to an int we own and its size.
                let r = unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        level,
                        name,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if r != 0 {
                    return Err(("setsockopt FREEBIND".into(), Errno::last()));
                }
            }
            opt(
                "SO_REUSEADDR",
                socket::setsockopt(&fd, sockopt::ReuseAddr, &true),
            )?;
            if family == AddressFamily::Inet6 {
                opt(
                    "IPV6_V6ONLY",
                    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &e.v6only),
                )?;
            }
            let r = match addr {
                SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*a)),
                SocketAddr::V6(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*a)),
            };
            r.map_err(|err| (format!("bind {addr}"), err))?;
        }
        Address::Unix(path) => {
            if let Some(name) = abstract_name(path) {
                // Linux abstract namespace: no file, no permissions.
                let ua = UnixAddr::new_abstract(name)
                    .map_err(|err| (format!("bind {}", path.display()), err))?;
                socket::bind(fd.as_raw_fd(), &ua)
                    .map_err(|err| (format!("bind {}", path.display()), err))?;
            } else {
                prepare_unix_path(path, e)?;
                let ua =
                    UnixAddr::new(path).map_err(|err| (format!("bind {}", path.display()), err))?;
                socket::bind(fd.as_raw_fd(), &ua)
                    .map_err(|err| (format!("bind {}", path.display()), err))?;
                if !e.opts.keep_on_stop {
                    unlink = Some(UnlinkOnDrop(path.clone()));
                }
                apply_perms(path, e)?;
            }
        }
    }
    if e.sock_type.accepts() {
        let backlog =
            socket::Backlog::new(e.backlog.clamp(1, i32::MAX)).unwrap_or(socket::Backlog::MAXCONN);
        socket::listen(&fd, backlog).map_err(|err| (format!("listen {}", e.addr), err))?;
    }
    let local = match &e.addr {
        Address::Inet(_) => Address::Inet(
            local_addr(fd.as_raw_fd()).map_err(|err| ("getsockname".to_string(), err))?,
        ),
        Address::Unix(p) => Address::Unix(p.clone()),
    };
    Ok(Bound { fd, local, unlink })
}

/// The name of an abstract unix socket (`@name`), if `path` is one.
pub fn abstract_name(path: &Path) -> Option<&[u8]> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().strip_prefix(b"@")
}

/// Makes room for a unix socket at `path`: creates a missing parent
/// directory (mode 0755 unless configured), replaces a stale socket file left by an earlier
/// run, and refuses anything else (a live socket, a regular file).
fn prepare_unix_path(path: &Path, e: &Endpoint) -> Result<(), BindError> {
    let ty = e.sock_type;
    let shown = path.display();
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(e.opts.directory_mode.unwrap_or(0o755))
                .create(dir)
                .map_err(|err| {
                    (
                        format!("create directory {}", dir.display()),
                        io_errno(&err),
                    )
                })?;
        }
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err((format!("stat {shown}"), io_errno(&err))),
    };
    if !meta.file_type().is_socket() {
        return Err((
            format!("bind {shown}: the path exists and is not a socket"),
            Errno::EEXIST,
        ));
    }
    // A socket file: stale if nobody answers on it.
    let probe = socket::socket(
        AddressFamily::Unix,
        nix_type(ty),
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|err| ("socket".to_string(), err))?;
    let ua = UnixAddr::new(path).map_err(|err| (format!("bind {shown}"), err))?;
    match socket::connect(probe.as_raw_fd(), &ua) {
        Err(Errno::ECONNREFUSED) => std::fs::remove_file(path)
            .map_err(|err| (format!("remove stale socket {shown}"), io_errno(&err))),
        Ok(()) | Err(Errno::EAGAIN | Errno::EPROTOTYPE) => Err((
            format!("bind {shown}: a live socket is already there"),
            Errno::EADDRINUSE,
        )),
        Err(err) => Err((format!("probe {shown}"), err)),
    }
}

fn apply_perms(path: &Path, e: &Endpoint) -> Result<(), BindError> {
    let shown = path.display();
    if e.perms.owner.is_some() || e.perms.group.is_some() {
        nix::unistd::chown(
            path,
            e.perms.owner.map(nix::unistd::Uid::from_raw),
            e.perms.group.map(nix::unistd::Gid::from_raw),
        )
        .map_err(|err| (format!("chown {shown}"), err))?;
    }
    let mode = e.perms.mode.unwrap_or(DEFAULT_UNIX_MODE);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|err| (format!("chmod {mode:o} {shown}"), io_errno(&err)))
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

/// The local address of an IP socket.
pub fn local_addr(fd: RawFd) -> nix::Result<SocketAddr> {
    let ss: SockaddrStorage = socket::getsockname(fd)?;
    storage_to_std(&ss).ok_or(Errno::EAFNOSUPPORT)
}

/// Converts a kernel socket address to std's, for IPv4 and IPv6.
/// `accept4` (close-on-exec, blocking) that also returns the peer's IP
/// address, saving the `getpeername` a later lookup would cost.
pub fn accept(lfd: RawFd) -> Result<(OwnedFd, Option<SocketAddr>), Errno> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` and `len` are valid for writes of the size given.
    let fd = unsafe {
        libc::accept4(
            lfd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: accept4 just returned this fd; nothing else owns it.
    let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: the kernel filled `len` bytes of `ss` with a sockaddr.
    let peer = unsafe {
        <SockaddrStorage as nix::sys::socket::SockaddrLike>::from_raw(
            (&ss as *const libc::sockaddr_storage).cast(),
            Some(len),
        )
    }
    .and_then(|s| storage_to_std(&s));
    Ok((conn, peer))
}

pub fn storage_to_std(ss: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = ss.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    if let Some(v6) = ss.as_sockaddr_in6() {
        return Some(SocketAddr::V6(SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        )));
    }
    None
}

/// True for the errors that mean "this host has no such address family",
/// after which an optional endpoint is skipped with a warning.
pub fn is_family_unsupported(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL | Errno::EPROTONOSUPPORT
    )
}

/// Whether a socket has something to read or accept now (no waiting).
pub fn readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd we own, with a zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & libc::POLLIN != 0
}

/// How much is queued on a `wait` socket, where the kernel tells: the
/// accept queue of a TCP listener (`tcpi_unacked` in `TCP_INFO`), the bytes
/// in a datagram socket's receive queue (`SO_MEMINFO`). `None` for unix
/// stream and seqpacket listeners, whose queue is not exposed this way.
pub fn queued(fd: RawFd, ty: SockType, inet: bool) -> Option<u64> {
    match (ty, inet) {
        (SockType::Stream, true) => {
            // SAFETY: getsockopt into a zeroed tcp_info we own, with its size.
            unsafe {
                let mut info: libc::tcp_info = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
                let r = libc::getsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    (&mut info as *mut libc::tcp_info).cast(),
                    &mut len,
                );
                (r == 0).then_some(u64::from(info.tcpi_unacked))
            }
        }
        (SockType::Dgram, _) => {
            const SO_MEMINFO: libc::c_int = 55;
            let mut mem = [0u32; 9];
            let mut len = std::mem::size_of_val(&mem) as libc::socklen_t;
            // SAFETY: getsockopt into an array we own, with its size; index
            // 0 is SK_MEMINFO_RMEM_ALLOC, the receive queue's bytes.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    SO_MEMINFO,
                    mem.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            (r == 0).then_some(u64::from(mem[0]))
        }
        _ => None,
    }
}
