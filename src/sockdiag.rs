//! The state of one TCP connection by its addresses, asked of the kernel
//! with `NETLINK_SOCK_DIAG` (an exact lookup, as `ss` does for one
//! socket): whether a client was still there when its handler exited.
//!
//! Owns: the request and reply layouts of `inet_diag(7)`. Must not: be
//! asked per connection (only for a handler that failed soon after it
//! started, see `server::children`).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `TCP_CLOSE` in `tcp_states.h`.
pub const TCP_CLOSE: u8 = 7;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const INET_DIAG_NOCOOKIE: u32 = !0;

#[repr(C)]
#[derive(Clone, Copy)]
struct NlMsgHdr {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    iface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    hdr: NlMsgHdr,
    req: ReqV2,
}

thread_local! {
    static SOCK: std::cell::OnceCell<Option<OwnedFd>> = const { std::cell::OnceCell::new() };
}

fn words(ip: IpAddr) -> [u32; 4] {
    let mut w = [0u32; 4];
    match ip {
        IpAddr::V4(a) => w[0] = u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => {
            for (i, c) in a.octets().chunks(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
    w
}

/// One lookup in `family`: `Ok(Some(state))`, `Ok(None)` when there is no
/// such socket, `Err(())` when the kernel could not be asked.
fn lookup(fd: &OwnedFd, family: u8, local: SocketAddr, remote: SocketAddr) -> Result<Option<u8>, ()> {
    let req = Request {
        hdr: NlMsgHdr {
            len: std::mem::size_of::<Request>() as u32,
            ty: SOCK_DIAG_BY_FAMILY,
            flags: NLM_F_REQUEST,
            seq: 1,
            pid: 0,
        },
        req: ReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: !0,
            id: SockId {
                sport: local.port().to_be(),
                dport: remote.port().to_be(),
                src: words(local.ip()),
                dst: words(remote.ip()),
                iface: 0,
                cookie: [INET_DIAG_NOCOOKIE; 2],
            },
        },
    };
    // SAFETY: send of a plain-data struct to the kernel.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (&req as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
        )
    };
    if n < 0 {
        return Err(());
    }
    let mut buf = [0u8; 512];
    // SAFETY: recv into a stack buffer. The kernel answers within the send
    // (an exact lookup); MSG_DONTWAIT so that nothing here can block.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    let hdr_len = std::mem::size_of::<NlMsgHdr>();
    if n < hdr_len as isize + 4 {
        return Err(());
    }
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    if ty == NLMSG_ERROR {
        let err = i32::from_ne_bytes([buf[hdr_len], buf[hdr_len + 1], buf[hdr_len + 2], buf[hdr_len + 3]]);
        return if err == -libc::ENOENT { Ok(None) } else { Err(()) };
    }
    if ty != SOCK_DIAG_BY_FAMILY {
        return Err(());
    }
    // inet_diag_msg: family, state, ... The lookup falls back to the
    // listening socket of the port when the connection is gone.
    const TCP_LISTEN: u8 = 10;
    match buf[hdr_len + 1] {
        TCP_LISTEN => Ok(None),
        state => Ok(Some(state)),
    }
}

/// The state of the TCP connection from `local` to `remote`: `Ok(None)`
/// when it no longer exists (reset, or closed by both ends), `Err(())`
/// when it cannot be told.
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Result<Option<u8>, ()> {
    SOCK.with(|cell| {
        let sock = cell.get_or_init(|| {
            // SAFETY: socket(2); the fd is owned at once.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                    libc::NETLINK_SOCK_DIAG,
                )
            };
            // SAFETY: a new fd of ours.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        });
        let Some(fd) = sock else { return Err(()) };
        let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (l, r) = (canon(local), canon(remote));
        match (l.ip(), r.ip()) {
            (IpAddr::V4(lv), IpAddr::V4(rv)) => {
                // An IPv4 client of a dual-stack socket is in AF_INET6 as
                // a mapped address.
                match lookup(fd, libc::AF_INET as u8, l, r)? {
                    Some(s) => Ok(Some(s)),
                    None => {
                        let m = |ip: std::net::Ipv4Addr| IpAddr::V6(ip.to_ipv6_mapped());
                        lookup(
                            fd,
                            libc::AF_INET6 as u8,
                            SocketAddr::new(m(lv), l.port()),
                            SocketAddr::new(m(rv), r.port()),
                        )
                    }
                }
            }
            _ => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
                    v6 => v6,
                };
                lookup(
                    fd,
                    libc::AF_INET6 as u8,
                    SocketAddr::new(v6(l.ip()), l.port()),
                    SocketAddr::new(v6(r.ip()), r.port()),
                )
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn states_of_a_live_a_closed_and_a_reset_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let (local, remote) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
        const ESTABLISHED: u8 = 1;
        assert_eq!(tcp_state(local, remote), Ok(Some(ESTABLISHED)));
        // The server side closes first while the client is there: it
        // stays (FIN_WAIT2), found.
        drop(s);
        assert!(matches!(tcp_state(local, remote), Ok(Some(st)) if st != TCP_CLOSE));
        let _ = c.write_all(b"x");
        // Reset by the client: gone.
        let sock = socket_of(&c);
        set_linger_zero(sock);
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(tcp_state(local, remote), Ok(None));
    }

    fn socket_of(c: &TcpStream) -> i32 {
        use std::os::fd::AsRawFd;
        c.as_raw_fd()
    }

    fn set_linger_zero(fd: i32) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt with a linger struct.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
    }
}
