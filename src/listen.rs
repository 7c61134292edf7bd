//! Binding and configuring each [`Endpoint`].
//!
//! Owns: socket creation (always close-on-exec; non-blocking for sockets
//! doorman accepts on, blocking for `wait` sockets it only hands over),
//! socket options, bind and listen, unix socket files (stale ones replaced,
//! born with their mode and owner, changed later only through the inode
//! bound, removed when the socket is dropped), re-applying a kept socket's
//! changed options, and reading back the real local address.
//! Must not: know about processes or the event loop.
//!
//! # Unix socket files and who can write their directory
//!
//! Whoever can write a socket's directory can rename something else over
//! the socket file at any moment, so no path is ever trusted after the
//! `bind` that creates the file:
//! - the file is born with its final mode (`umask` around `bind`; doorman
//!   is single-threaded);
//! - in a directory only root can change (owned by root, writable by no
//!   one else, or sticky), the owner is set with `fchownat(...,
//!   AT_SYMLINK_NOFOLLOW)` right after `bind`: nobody else can swap the
//!   file in between;
//! - in a directory owned by the socket's owner (a `/run/app` of the
//!   service's user), the file is created as that user (`setfsuid`/
//!   `setfsgid` around `bind`), so nothing needs changing after it;
//! - any other directory (writable by others without the sticky bit, by a
//!   group other than root's, or owned by another user) is refused;
//! - a later change (a reload) opens the file with `O_PATH|O_NOFOLLOW`,
//!   checks that it is the very inode bound (a bound socket keeps its
//!   inode alive, so the number cannot be reused meanwhile), and changes
//!   it through that descriptor.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, SockFlag, SockType as NixSockType, SockaddrIn, SockaddrIn6,
    SockaddrStorage, UnixAddr,
};

use crate::config::{Address, Endpoint, SockType, DEFAULT_UNIX_MODE};

/// Removes a unix socket file when dropped (with its socket).
#[derive(Debug)]
pub struct UnlinkOnDrop(pub PathBuf);

impl UnlinkOnDrop {
    /// Keeps the file after all (`RemoveOnStop=no` since a reload).
    pub fn disarm(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
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
    /// For unix socket files: the inode bound.
    pub node: Option<Node>,
}

/// The inode of a unix socket's file, as bound: what a later change of its
/// owner or mode must find at the path before it touches anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    dev: u64,
    ino: u64,
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
    let mut node = None;
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
                node = Some(bind_unix_file(&fd, path, e)?);
                if !e.opts.keep_on_stop {
                    unlink = Some(UnlinkOnDrop(path.clone()));
                }
            }
        }
    }
    if e.sock_type.accepts() {
        let backlog =
            socket::Backlog::new(e.backlog.clamp(1, i32::MAX)).unwrap_or(socket::Backlog::MAXCONN);
        socket::listen(&fd, backlog).map_err(|err| (format!("listen {}", e.addr), err))?;
    }
    let local = match &e.addr {
        // Bound where asked: only port 0 needs the kernel's answer.
        Address::Inet(a) if a.port() != 0 => Address::Inet(*a),
        Address::Inet(_) => Address::Inet(
            local_addr(fd.as_raw_fd()).map_err(|err| ("getsockname".to_string(), err))?,
        ),
        Address::Unix(p) => Address::Unix(p.clone()),
    };
    let fd = lift(fd);
    Ok(Bound {
        fd,
        local,
        unlink,
        node,
    })
}

/// Where listeners go when there are many of them: at or above this fd
/// (0: where the kernel puts them, the lowest free). See [`plan_fds`].
static HIGH_BASE: AtomicI32 = AtomicI32::new(0);

/// Listeners from this many on are lifted above [`LIFT_BASE`].
pub const LIFT_FROM: usize = 64;
/// The fd listeners are lifted to: the fds below it (connections,
/// doorman's own few) are all a handler's spawn copies (see
/// `spawn::share_base`).
pub const LIFT_BASE: RawFd = 1024;

/// Decides, before a load binds its `listeners` sockets, where they go.
/// With many, they are kept at or above [`LIFT_BASE`], so that a spawn
/// copies only doorman's low fds into the child (`close_range` with
/// `CLOSE_RANGE_UNSHARE`, see `spawn`) instead of every listener, and the
/// child's exec closes only those: with 10,000 listeners the copy and the
/// close-on-exec pass cost more than the rest of a spawn. Lifting needs
/// room above the base within the fd limit; without it nothing moves.
pub fn plan_fds(listeners: usize) {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    let room = LIFT_BASE as u64 + listeners as u64 + 256;
    let base = if listeners >= LIFT_FROM && limit >= room {
        LIFT_BASE
    } else {
        0
    };
    // Once lifted, a reload to fewer listeners keeps the base: the
    // listeners already up there stay where they are.
    if base > 0 {
        HIGH_BASE.store(base, Ordering::Relaxed);
    }
}

/// The fd at or above which doorman keeps its listeners (0: none lifted):
/// no fd a handler is given is there (a `wait` listener excepted).
pub fn high_base() -> RawFd {
    HIGH_BASE.load(Ordering::Relaxed)
}

/// While alive, every free fd below the lift base is taken by a
/// placeholder, so that the sockets a load makes meanwhile are born above
/// it: with thousands to bind this costs two system calls per free low
/// fd (at most [`LIFT_BASE`]), where [`lift`] costs two per socket.
pub struct Lifting {
    held: Vec<RawFd>,
}

/// Fills the low fds for a load that binds `fresh` sockets, when that is
/// cheaper than lifting each (see [`Lifting`]); `None` otherwise.
pub fn lifting(fresh: usize) -> Option<Lifting> {
    let base = high_base();
    if base == 0 || fresh < base as usize / 2 {
        return None;
    }
    let mut held = Vec::new();
    // SAFETY: opening a path with flags; the fd is kept in `held`, whose
    // drop closes it.
    let first = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if first < 0 {
        return None;
    }
    let mut fd = first;
    while fd < base {
        held.push(fd);
        // SAFETY: F_DUPFD_CLOEXEC of an fd we hold; the new one is ours.
        fd = unsafe { libc::fcntl(first, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            break;
        }
    }
    if fd >= base {
        // SAFETY: the copy we just made, above the base: not a placeholder.
        unsafe { libc::close(fd) };
    }
    Some(Lifting { held })
}

impl Drop for Lifting {
    fn drop(&mut self) {
        self.held.sort_unstable();
        let mut i = 0;
        while i < self.held.len() {
            let mut j = i;
            while j + 1 < self.held.len() && self.held[j + 1] == self.held[j] + 1 {
                j += 1;
            }
            let (lo, hi) = (self.held[i], self.held[j]);
            // SAFETY: a run of placeholders this struct holds and nothing
            // else uses; close_range (Linux 5.9) closes the run in one call.
            let r = unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi as u32, 0u32) };
            if r != 0 {
                for fd in lo..=hi {
                    // SAFETY: as above, one at a time.
                    unsafe { libc::close(fd) };
                }
            }
            i = j + 1;
        }
    }
}

/// `fd` moved to the lifted range (close-on-exec, as every fd of
/// doorman's), or left where it is when there is none or no room.
fn lift(fd: OwnedFd) -> OwnedFd {
    let base = high_base();
    if base == 0 || fd.as_raw_fd() >= base {
        return fd;
    }
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own; the new fd, if any, is
    // owned by the OwnedFd made from it, the old one is closed by drop.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base) };
    if high < 0 {
        return fd;
    }
    // SAFETY: a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(high) }
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
    // A socket file: stale if nobody answers on it. Non-blocking: a live
    // listener whose backlog is full answers EAGAIN instead of keeping
    // doorman waiting.
    let probe = socket::socket(
        AddressFamily::Unix,
        nix_type(ty),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
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

/// Who may rename things in a unix socket's directory, besides root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trust {
    /// Nobody: the file can be fixed up by name after `bind`.
    Root,
    /// This user, the socket's owner: the file is created as that user.
    Owner(u32),
}

/// Opens `dir` (`O_PATH`) and decides whether a socket owned by `owner`
/// (`None`: doorman's own user) may be made there; the reason if not.
fn trusted_dir(dir: &Path, owner: Option<u32>) -> Result<(OwnedFd, Trust), BindError> {
    let shown = dir.display();
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|err| (format!("open directory {shown}"), err))?;
    // SAFETY: `open` just returned this fd and nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let st = nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(|err| (format!("stat directory {shown}"), err))?;
    let mode = st.st_mode;
    let sticky = mode & libc::S_ISVTX != 0;
    let refuse = |why: String| {
        Err((
            format!(
                "unix socket directory {shown} {why}: whoever can write it could swap the socket file (fix its owner or mode, or put the socket elsewhere)"
            ),
            Errno::EPERM,
        ))
    };
    if mode & libc::S_IWOTH != 0 && !sticky {
        return refuse(format!(
            "is writable by every user and not sticky (mode {:04o})",
            mode & 0o7777
        ));
    }
    if mode & libc::S_IWGRP != 0 && !sticky && st.st_gid != 0 {
        return refuse(format!(
            "is writable by group {} (mode {:04o})",
            st.st_gid,
            mode & 0o7777
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    let trust = match st.st_uid {
        0 => Trust::Root,
        u if owner == Some(u) => Trust::Owner(u),
        // A doorman that is not root, in its own directory.
        u if u == me && owner.map_or(true, |o| o == me) => Trust::Root,
        u => {
            return refuse(format!(
                "is owned by uid {u}, neither root nor the socket's owner{}",
                owner.map_or(String::new(), |o| format!(" (uid {o})"))
            ))
        }
    };
    Ok((fd, trust))
}

/// The file-system ids doorman creates files with, switched for the
/// lifetime of the guard (`setfsuid`/`setfsgid`; doorman is
/// single-threaded), and the umask likewise.
struct CreateAs {
    fsids: Option<(u32, u32)>,
    umask: nix::sys::stat::Mode,
}

impl CreateAs {
    fn new(mode: u32, ids: Option<(u32, Option<u32>)>) -> Result<CreateAs, BindError> {
        let mask = nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777);
        let umask = nix::sys::stat::umask(mask);
        let mut guard = CreateAs { fsids: None, umask };
        if let Some((uid, gid)) = ids {
            let (me_u, me_g) = (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            );
            guard.fsids = Some((me_u, me_g));
            // SAFETY: setfsgid/setfsuid change this thread's file-system
            // ids only; doorman has one thread. Asking with -1 (an invalid
            // id) reads the current value back.
            unsafe {
                if let Some(g) = gid {
                    libc::setfsgid(g);
                }
                libc::setfsuid(uid);
                let now_u = libc::setfsuid(u32::MAX) as u32;
                let now_g = libc::setfsgid(u32::MAX) as u32;
                if now_u != uid || gid.is_some_and(|g| now_g != g) {
                    return Err((format!("create the socket file as uid {uid}"), Errno::EPERM));
                }
            }
        }
        Ok(guard)
    }
}

impl Drop for CreateAs {
    fn drop(&mut self) {
        if let Some((u, g)) = self.fsids {
            // SAFETY: as in `new`, putting doorman's own ids back.
            unsafe {
                libc::setfsuid(u);
                libc::setfsgid(g);
            }
        }
        nix::sys::stat::umask(self.umask);
    }
}

/// Binds `fd` to the socket file `path`, born with its final mode and
/// owner (see the module's notes): the inode bound.
fn bind_unix_file(fd: &OwnedFd, path: &Path, e: &Endpoint) -> Result<Node, BindError> {
    let shown = path.display();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Err((format!("bind {shown}: no file name"), Errno::EINVAL));
    };
    prepare_unix_path(path, e)?;
    let (dirfd, trust) = trusted_dir(dir, e.perms.owner)?;
    let mode = e.perms.mode.unwrap_or(DEFAULT_UNIX_MODE) & 0o7777;
    let creator = match trust {
        Trust::Root => None,
        Trust::Owner(u) => Some((u, e.perms.group)),
    };
    let ua = UnixAddr::new(path).map_err(|err| (format!("bind {shown}"), err))?;
    {
        let _as = CreateAs::new(mode, creator)?;
        socket::bind(fd.as_raw_fd(), &ua).map_err(|err| (format!("bind {shown}"), err))?;
    }
    let me = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let want_uid = e.perms.owner.unwrap_or(me.0);
    if trust == Trust::Root && (e.perms.owner.is_some() || e.perms.group.is_some()) {
        // Nobody but root can rename in this directory: the name is still
        // the file just made.
        nix::unistd::fchownat(
            Some(dirfd.as_raw_fd()),
            name,
            e.perms.owner.map(nix::unistd::Uid::from_raw),
            e.perms.group.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|err| (format!("chown {shown}"), err))?;
    }
    // What is there now must be the file made (a socket of the expected
    // owner, with no other link): its inode is then the one bound.
    let node = open_node(&dirfd, name, path)?;
    let st =
        nix::sys::stat::fstat(node.as_raw_fd()).map_err(|err| (format!("stat {shown}"), err))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_uid != want_uid || st.st_nlink != 1 {
        return Err((
            format!("bind {shown}: the socket file was replaced right after it was made"),
            Errno::EEXIST,
        ));
    }
    let id = Node {
        dev: st.st_dev,
        ino: st.st_ino,
    };
    // A default ACL on the directory can widen the mode the umask gave.
    if st.st_mode & 0o7777 != mode {
        chmod_node(&node, mode, path)?;
    }
    if let Some(g) = e.perms.group {
        if st.st_gid != g {
            return Err((
                format!(
                    "chown {shown}: the set-group-ID directory gave it group {} instead of {g}",
                    st.st_gid
                ),
                Errno::EPERM,
            ));
        }
    }
    Ok(id)
}

/// The socket file `name` in `dir`, opened without following a link
/// (`O_PATH`: nothing is read or connected).
fn open_node(dir: &OwnedFd, name: &std::ffi::OsStr, path: &Path) -> Result<OwnedFd, BindError> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|err| (format!("open {}", path.display()), err))?;
    // SAFETY: `openat` just returned this fd and nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Changes the mode of the inode `node` refers to: through
/// `/proc/self/fd` (`fchmod` refuses an `O_PATH` fd), which names the
/// inode, not a path anyone can swap.
fn chmod_node(node: &OwnedFd, mode: u32, path: &Path) -> Result<(), BindError> {
    let magic = format!("/proc/self/fd/{}", node.as_raw_fd());
    std::fs::set_permissions(&magic, std::fs::Permissions::from_mode(mode)).map_err(|err| {
        let errno = io_errno(&err);
        let hint = if errno == Errno::ENOENT {
            " (/proc is not mounted)"
        } else {
            ""
        };
        (format!("chmod {mode:04o} {}{hint}", path.display()), errno)
    })
}

/// Re-applies what changed between `old` and `new`, the endpoint a kept
/// socket was bound with and the one a reload asks for (the bind key, and
/// so the address, is the same): buffer sizes, backlog, keep-alive, no
/// delay, reuse-port and free-bind (which matter only at the next bind,
/// but are set so that the socket says what the configuration says), and
/// a unix socket file's owner, group and mode.
pub fn reapply(
    fd: &OwnedFd,
    old: &Endpoint,
    new: &Endpoint,
    node: Option<Node>,
) -> Result<(), BindError> {
    let opt = |what: &str, r: nix::Result<()>| r.map_err(|err| (format!("setsockopt {what}"), err));
    if new.sndbuf != old.sndbuf {
        let n = new
            .sndbuf
            .map_or_else(|| default_buffer("wmem_default"), |n| Some(n as usize));
        if let Some(n) = n {
            opt("SO_SNDBUF", socket::setsockopt(fd, sockopt::SndBuf, &n))?;
        }
    }
    if new.rcvbuf != old.rcvbuf {
        let n = new
            .rcvbuf
            .map_or_else(|| default_buffer("rmem_default"), |n| Some(n as usize));
        if let Some(n) = n {
            opt("SO_RCVBUF", socket::setsockopt(fd, sockopt::RcvBuf, &n))?;
        }
    }
    let (o, n) = (old.opts, new.opts);
    if n.reuseport != o.reuseport {
        opt(
            "SO_REUSEPORT",
            socket::setsockopt(fd, sockopt::ReusePort, &n.reuseport),
        )?;
    }
    if let Address::Inet(addr) = &new.addr {
        if n.keepalive != o.keepalive {
            opt(
                "SO_KEEPALIVE",
                socket::setsockopt(fd, sockopt::KeepAlive, &n.keepalive),
            )?;
        }
        if n.nodelay != o.nodelay && new.sock_type == SockType::Stream {
            opt(
                "TCP_NODELAY",
                socket::setsockopt(fd, sockopt::TcpNoDelay, &n.nodelay),
            )?;
        }
        if n.freebind != o.freebind {
            let (level, name) = if addr.is_ipv6() {
                (libc::SOL_IPV6, libc::IPV6_FREEBIND)
            } else {
                (libc::SOL_IP, libc::IP_FREEBIND)
            };
            let on = libc::c_int::from(n.freebind);
            // SAFETY: setsockopt with a pointer to an int we own and its size.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    level,
                    name,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(("setsockopt FREEBIND".into(), Errno::last()));
            }
        }
    }
    if new.backlog != old.backlog && new.sock_type.accepts() {
        // listen() again on a listening socket sets its backlog.
        let b = socket::Backlog::new(new.backlog.clamp(1, i32::MAX))
            .unwrap_or(socket::Backlog::MAXCONN);
        socket::listen(fd, b).map_err(|err| (format!("listen {}", new.addr), err))?;
    }
    if let (Address::Unix(path), Some(node)) = (&new.addr, node) {
        reapply_unix(path, node, old, new)?;
    }
    Ok(())
}

/// The kernel's default socket buffer size (`net.core.wmem_default` or
/// `rmem_default`), for a buffer setting that was removed.
fn default_buffer(name: &str) -> Option<usize> {
    std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Re-applies a kept socket's owner, group and mode after a reload that
/// changed them: only to the very inode that was bound (`node`), through
/// a descriptor of it, never through the path; and only where a fresh
/// bind with these settings would be allowed.
fn reapply_unix(path: &Path, node: Node, old: &Endpoint, new: &Endpoint) -> Result<(), BindError> {
    let (o, n) = (old.perms, new.perms);
    let mode_of = |p: crate::config::UnixPerms| p.mode.unwrap_or(DEFAULT_UNIX_MODE) & 0o7777;
    if o == n || (o.owner == n.owner && o.group == n.group && mode_of(o) == mode_of(n)) {
        return Ok(());
    }
    let shown = path.display();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Err((format!("{shown}: no file name"), Errno::EINVAL));
    };
    let (dirfd, _) = trusted_dir(dir, n.owner)?;
    let fd = open_node(&dirfd, name, path)?;
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|err| (format!("stat {shown}"), err))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_dev != node.dev || st.st_ino != node.ino
    {
        return Err((
            format!("{shown}: the file there is no longer the socket doorman bound"),
            Errno::ESTALE,
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    let me_g = nix::unistd::getegid().as_raw();
    let (uid, gid) = (n.owner.unwrap_or(me), n.group.unwrap_or(me_g));
    if (st.st_uid, st.st_gid) != (uid, gid) {
        // AT_EMPTY_PATH: the inode the O_PATH descriptor names.
        // SAFETY: fchownat on our descriptor with an empty path.
        let r =
            unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) };
        if r != 0 {
            return Err((format!("chown {shown}"), Errno::last()));
        }
    }
    if st.st_mode & 0o7777 != mode_of(n) {
        chmod_node(&fd, mode_of(n), path)?;
    }
    Ok(())
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
        (SockType::Stream, true) => tcp_info(fd).map(|i| u64::from(i.tcpi_unacked)),
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

/// `getsockopt(TCP_INFO)` of a TCP socket.
fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: getsockopt into a zeroed tcp_info we own, with its size;
    // the kernel writes at most that much.
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
        (r == 0 && len >= 1).then_some(info)
    }
}

/// An accepted TCP connection's state (`tcp_states.h`), one
/// `getsockopt(TCP_INFO)`; `None` if it cannot be told.
pub fn tcp_state(fd: RawFd) -> Option<u8> {
    tcp_info(fd).map(|i| i.tcpi_state)
}

/// `TCP_CLOSE`: reset by the peer (or never connected).
pub const TCP_CLOSE: u8 = 7;
