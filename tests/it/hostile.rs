//! Malformed and hostile clients (issue 9): half-open connections, clients
//! that send nothing to a wait service, a reset right after connect, and
//! 10,000 connections that close before doorman accepts them. doorman logs
//! none of them above debug level, leaks nothing, and stays responsive.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::util::*;

/// No line above info level in the log (the clients below deserve at most
/// debug lines).
fn assert_quiet(d: &Doorman) {
    let loud: Vec<String> = d
        .log
        .lines()
        .into_iter()
        .filter(|l| l.contains(": warn: ") || l.contains(": error: "))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
}

/// Served promptly: a reply well within the deadline.
fn assert_responsive(addr: SocketAddr) {
    let t = Instant::now();
    assert_eq!(talk(addr, b""), "ok\n");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// Sets `SO_LINGER` to 0: closing sends a reset.
fn linger0(fd: i32) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a fully initialized struct
    // and its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

/// A non-blocking connect that is not waited for (IPv4 only).
fn connect_nowait(dst: SocketAddr) -> OwnedFd {
    let SocketAddr::V4(d) = dst else {
        panic!("IPv4 only")
    };
    // SAFETY: a fresh socket we own; the sockaddr is fully initialized and
    // its size passed.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_addr.s_addr = u32::from(*d.ip()).to_be();
        a.sin_port = d.port().to_be();
        let r = libc::connect(
            fd,
            (&a as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let e = std::io::Error::last_os_error().raw_os_error();
        assert!(r == 0 || e == Some(libc::EINPROGRESS), "connect: {e:?}");
        OwnedFd::from_raw_fd(fd)
    }
}

/// The accept queue length of the IPv4 listener on `addr`, from
/// `/proc/net/tcp` (a listening socket's rx_queue).
fn accept_queue(addr: SocketAddr) -> u64 {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let want = format!("0100007F:{:04X}", addr.port());
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f[1] == want && f[3] == "0A" {
            let rx = f[4].split(':').nth(1).unwrap();
            return u64::from_str_radix(rx, 16).unwrap();
        }
    }
    panic!("no listener {want} in /proc/net/tcp")
}

/// SIGCONT to doorman when dropped, so that no path (a failed assertion
/// included) leaves it stopped.
struct Stopped<'a>(&'a Doorman);

impl<'a> Stopped<'a> {
    fn new(d: &'a Doorman) -> Stopped<'a> {
        d.signal(libc::SIGSTOP);
        Stopped(d)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

#[test]
fn ten_thousand_connections_closed_before_accept() {
    let mut d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait.0,backlog=64,crash=off root /bin/true true\n\
         127.0.0.1:0 stream tcp nowait root /bin/echo echo ok\n",
        &[],
    );
    let fds = d.fd_count();
    {
        let _stopped = Stopped::new(&d);
        for _ in 0..10_000 {
            let s = connect_nowait(d.addr(0));
            linger0(s.as_raw_fd());
        } // each closed (reset) at once, before doorman can accept it
          // The kernel did queue connections for doorman (not a vacuous test).
        let queued = accept_queue(d.addr(0));
        assert!(queued > 0, "nothing queued");
    }
    // doorman accepts what the kernel queued (dead already) and goes on.
    assert_responsive(d.addr(1));
    // The flooded service itself serves (its handler says nothing).
    assert_eq!(talk(d.addr(0), b""), "");
    assert!(
        eventually(DEADLINE, || d.zombies().is_empty()
            && children_of(d.pid()).is_empty()
            && d.fd_count() == fds),
        "fds {} (was {fds}), children {:?}",
        d.fd_count(),
        children_of(d.pid())
    );
    assert_quiet(&d);
    assert!(d.stop().success());
}

#[test]
fn reset_right_after_connect() {
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait.0,crash=off root /bin/true true\n\
         127.0.0.1:0 stream tcp nowait,max-child=2,on-full=close root /bin/sleep sleep 5\n\
         127.0.0.1:0 stream tcp nowait root /bin/echo echo ok\n",
        &[],
    );
    let fds = d.fd_count();
    for i in 0..300 {
        // Blocking connect: the handshake is complete, then a reset.
        let s = TcpStream::connect(d.addr(i % 2)).unwrap();
        linger0(s.as_raw_fd());
        drop(s);
    }
    assert_responsive(d.addr(2));
    assert!(eventually(DEADLINE, || d.fd_count() <= fds + 2));
    assert_quiet(&d);
}

#[test]
fn half_open_and_silent_clients() {
    let dir = TempDir::new();
    // A wait service whose instance waits for a line that never comes
    // (until its client goes), and a nowait one that reads its input.
    dir.write(
        "wait_line.py",
        "import socket, sys\nls = socket.socket(fileno=0)\nc, _ = ls.accept()\nc.settimeout(30)\ntry:\n    c.recv(10)\nexcept OSError:\n    pass\n",
        false,
    );
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp wait root /usr/bin/python3 python3 {dir}/wait_line.py\n\
         127.0.0.1:0 stream tcp nowait,max-child=4 root /bin/cat cat\n\
         127.0.0.1:0 stream tcp nowait root /bin/echo echo ok\n",
        &[],
    );
    // Silent clients of the wait service: one is handed to an instance,
    // the rest wait in the backlog; doorman does not wait on any of them.
    let silent: Vec<TcpStream> = (0..50).map(|_| connect(d.addr(0))).collect();
    assert!(eventually(DEADLINE, || d.log.count(&["wake service="]) == 1));
    // Half-open: clients that close their sending side at once, and
    // clients that send nothing and never read.
    let mut half = Vec::new();
    for i in 0..40 {
        let s = connect(d.addr(1));
        if i % 2 == 0 {
            s.shutdown(Shutdown::Write).unwrap();
        }
        half.push(s);
    }
    assert_responsive(d.addr(2));
    // Meanwhile doorman's loop is idle, not spinning on any of them.
    let cpu = |pid: i32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = cpu(d.pid());
    std::thread::sleep(Duration::from_millis(500));
    let spent = cpu(d.pid()) - before;
    assert!(
        spent <= 10,
        "doorman used {spent} ticks in 0.5 s while idle"
    );
    drop(half);
    drop(silent);
    assert_responsive(d.addr(2));
    // Every queued silent client gets an instance in turn (each takes one).
    assert!(
        eventually(DEADLINE, || d.log.count(&["wake service="]) == 50),
        "{} wakes",
        d.log.count(&["wake service="])
    );
    assert!(eventually(DEADLINE, || children_of(d.pid()).is_empty()));
    assert_quiet(&d);
}
