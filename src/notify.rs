//! systemd's readiness protocol (`NOTIFY_SOCKET`), for doorman itself when
//! a supervisor asks for it: `READY=1`, `RELOADING=1`, `STOPPING=1`,
//! `STATUS=...`, one datagram each.
//!
//! Owns: the socket address (a path or `@abstract`) and sending.
//! Must not: block (the socket is non-blocking; a full queue loses a
//! status message, never the loop).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

/// Where to send notifications, from `NOTIFY_SOCKET`.
pub struct Notify {
    fd: OwnedFd,
    addr: UnixAddr,
}

impl Notify {
    /// `None` when `NOTIFY_SOCKET` is unset or unusable.
    pub fn from_env() -> Option<Notify> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name).ok()?,
            None => UnixAddr::new(std::path::Path::new(&path)).ok()?,
        };
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .ok()?;
        Some(Notify { fd, addr })
    }

    /// Sends one message (`KEY=value` lines).
    pub fn send(&self, msg: &str) {
        if let Err(e) = socket::sendto(
            self.fd.as_raw_fd(),
            msg.as_bytes(),
            &self.addr,
            MsgFlags::MSG_NOSIGNAL,
        ) {
            log::debug!("NOTIFY_SOCKET: {}", e.desc());
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, for `MONOTONIC_USEC=` (reload).
pub fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000
}
