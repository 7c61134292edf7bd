//! Binding and configuring each [`Endpoint`].
//!
//! Owns: socket creation (always close-on-exec and non-blocking), socket
//! options, bind and listen, and reading back the real local address.
//! Must not: know about processes or the event loop.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, SockFlag, SockType as NixSockType, SockaddrIn, SockaddrIn6,
    SockaddrLike, SockaddrStorage,
};

use crate::config::{Endpoint, SockType};

/// A bound, listening socket and the address it really has.
#[derive(Debug)]
pub struct Bound {
    pub fd: OwnedFd,
    pub local: SocketAddr,
}

/// Creates, configures, binds and (for stream sockets) listens.
/// The error names the step that failed: `bind 0.0.0.0:79: Address in use`.
pub fn bind(e: &Endpoint) -> Result<Bound, (String, Errno)> {
    let family = match e.addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let ty = match e.sock_type {
        SockType::Stream => NixSockType::Stream,
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket::socket(family, ty, flags, None).map_err(|e| ("socket".to_string(), e))?;
    let opt = |what: &str, r: nix::Result<()>| r.map_err(|e| (format!("setsockopt {what}"), e));
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
    let bound = match e.addr {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a)),
        SocketAddr::V6(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a)),
    };
    bound.map_err(|err| (format!("bind {}", e.addr), err))?;
    let backlog =
        socket::Backlog::new(e.backlog.clamp(1, i32::MAX)).unwrap_or(socket::Backlog::MAXCONN);
    socket::listen(&fd, backlog).map_err(|err| (format!("listen {}", e.addr), err))?;
    let local = local_addr(fd.as_raw_fd()).map_err(|err| ("getsockname".to_string(), err))?;
    Ok(Bound { fd, local })
}

/// The local address of a socket.
pub fn local_addr(fd: RawFd) -> nix::Result<SocketAddr> {
    let ss: SockaddrStorage = socket::getsockname(fd)?;
    storage_to_std(&ss).ok_or(Errno::EAFNOSUPPORT)
}

/// Converts a kernel socket address to std's, for IPv4 and IPv6.
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
    let _ = ss.family();
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
