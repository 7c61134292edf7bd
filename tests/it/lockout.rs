//! Nobody locked out (issue 19): clients that leave start nothing, the
//! crash-loop guard blames only a broken handler, and its pauses are
//! short and recover.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::protect::connect_from;
use crate::util::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `n` clients that connect and reset at once (`SO_LINGER {1, 0}`, then
/// close), as a health checker or a scanner does.
fn reset_burst(addr: SocketAddr, n: usize) {
    for _ in 0..n {
        let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            continue;
        };
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt with a linger struct on a socket we own.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            );
        }
        drop(s);
    }
}

/// A well-behaved client from `src`: sends `req`, reads the answer.
fn client(src: &str, addr: SocketAddr, req: &[u8]) -> (String, Duration) {
    let t = Instant::now();
    let mut s = connect_from(ip(src), addr);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(req).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    (out, t.elapsed())
}

/// `doorman --listen 127.0.0.1:0 -- /bin/sh -c SCRIPT`.
fn listen_sh(script: &str, opts: Opts) -> Doorman {
    let args = ["--listen", "127.0.0.1:0", "--", "/bin/sh", "-c", script];
    Doorman::start(TempDir::new(), &args.map(String::from), opts)
}

/// A client that sends a request and waits for the end of the answer.
fn send_and_wait(addr: SocketAddr) {
    let mut s = connect_from(ip("127.0.0.1"), addr);
    s.write_all(b"req\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
}

fn burst_then_two_clients(handler: &str, req: &[u8]) {
    let maddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = [
        "--metrics",
        &maddr.to_string(),
        "--listen",
        "127.0.0.1:0",
        "--",
        "/bin/sh",
        "-c",
        handler,
    ]
    .map(String::from);
    let d = Doorman::start(TempDir::new(), &args, Opts::default());
    let addr = d.addr(0);
    // Warm up: one served, to count fds with a handler's worth of state.
    assert_eq!(client("127.0.0.1", addr, req).0, "ok\n");
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 1));
    let fds = d.fd_count();
    // "At once": all 2,000 arrive and reset while doorman is busy (here:
    // stopped, by its pid), so that they wait in the backlog together, as
    // a burst does on a loaded machine.
    d.signal(libc::SIGSTOP);
    reset_burst(addr, 2000);
    d.signal(libc::SIGCONT);
    let (a, ta) = client("127.0.0.1", addr, req);
    let (b, tb) = client("127.0.0.2", addr, req);
    assert_eq!(
        (a.as_str(), b.as_str()),
        ("ok\n", "ok\n"),
        "{}",
        d.log.text()
    );
    eprintln!("after 2,000 resets: served in {ta:?} and {tb:?}");
    let started = d.log.count(&["accept service="]);
    let log = d.log.text();
    assert!(!log.contains("pause service="), "{log}");
    assert!(started < 20 + 3, "{started} handlers started\n{log}");
    assert!(eventually(DEADLINE, || d.zombies().is_empty()
        && children_of(d.pid()).is_empty()));
    // At most one more: the sock_diag socket, opened for the first
    // handler that failed.
    assert!(
        eventually(DEADLINE, || d.fd_count() <= fds + 1),
        "{} > {fds}",
        d.fd_count()
    );
    // The resets are counted where an operator looks.
    let text = scrape_metrics(maddr);
    let doa: u64 = text
        .lines()
        .find(|l| l.starts_with("doorman_connections_dead_on_arrival_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    eprintln!("dead on arrival: {doa}");
    assert!(doa >= 1000, "{text}");
}

#[test]
fn a_burst_of_resets_starts_nothing_and_locks_nobody_out() {
    burst_then_two_clients("echo ok", b"");
}

#[test]
fn a_burst_of_resets_against_a_handler_that_reads_first() {
    burst_then_two_clients("read l; echo ok", b"req\n");
}

#[test]
fn a_broken_handler_is_still_paused_briefly_and_recovers() {
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait root /bin/false false\n\
         127.0.0.1:0 stream tcp nowait root /bin/echo echo ok\n",
        &[],
    );
    // Clients that send a request and wait: the handler is to blame.
    for _ in 0..10 {
        send_and_wait(d.addr(0));
    }
    let line = d
        .log
        .wait_for(&["pause service=", "crash-loop"], DEADLINE)
        .unwrap_or_else(|| panic!("{}", d.log.text()));
    // The first pause is short and says which failures caused it.
    assert!(
        line.contains("for=5s") || line.contains("for=5000ms"),
        "{line}"
    );
    assert!(line.contains("status=1 x10"), "{line}");
    // Another service is not touched, and the paused one comes back.
    assert_eq!(client("127.0.0.2", d.addr(1), b"").0, "ok\n");
    assert!(
        d.log.wait_for(&["resume service="], DEADLINE).is_some(),
        "{}",
        d.log.text()
    );
}

#[test]
fn a_crash_signal_counts_and_sigpipe_does_not() {
    let dir = TempDir::new();
    dir.write("pipe.sh", "kill -PIPE $$\n", true);
    dir.write("segv.sh", "kill -SEGV $$\n", true);
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait,crash=3/10/2 root /bin/sh sh {dir}/pipe.sh\n\
         127.0.0.1:0 stream tcp nowait,crash=3/10/2 root /bin/sh sh {dir}/segv.sh\n",
        &[],
    );
    for _ in 0..6 {
        send_and_wait(d.addr(0));
    }
    assert!(
        eventually(DEADLINE, || d.log.count(&["signal=SIGPIPE"]) == 6),
        "{}",
        d.log.text()
    );
    for _ in 0..3 {
        send_and_wait(d.addr(1));
    }
    let line = d
        .log
        .wait_for(&["pause service=", "signal=SIGSEGV x3"], DEADLINE)
        .unwrap_or_else(|| panic!("{}", d.log.text()));
    let sigpipe = d.addr(0).port().to_string();
    assert!(!line.contains(&sigpipe), "{line}");
    assert_eq!(d.log.count(&["pause service="]), 1, "{}", d.log.text());
}

#[test]
fn doorman_lifts_its_fd_limit_and_handlers_keep_theirs() {
    let d = listen_sh(
        "ulimit -n; ulimit -Hn",
        Opts {
            wrapper: vec!["prlimit".into(), "--nofile=256:4096".into(), "--".into()],
            ..Opts::default()
        },
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((f[3], f[4]), ("4096", "4096"), "{line}");
    assert_eq!(talk(d.addr(0), b""), "256\n4096\n");
}

/// Lets this test process open as many sockets as its hard limit allows
/// (the flood tests hold several hundred).
fn raise_own_nofile() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// A connect that does not wait: past a full backlog the kernel keeps
/// retrying the SYN on its own, as a flood's clients do.
fn connect_nb(addr: SocketAddr) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(a) = addr else {
        panic!("IPv4 only")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a fresh socket we own, connected with a sockaddr_in we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

/// Three services whose tables hold client descriptors (internal echo,
/// a trusted-proxy service, UDP sessions) and a plain one, under
/// `ulimit -n 256`: each of the three gets (256 - 64 reserve - 4
/// listeners) / 3 = 62 descriptors.
fn under_256_fds() -> Doorman {
    raise_own_nofile();
    let dir = TempDir::new();
    let conf = "\
127.0.0.1:0 stream tcp nowait root internal echo
127.0.0.1:0 stream tcp nowait,proxy-protocol=v1,proxy-from=127.0.0.1 root /bin/echo echo served
127.0.0.1:0 dgram udp nowait root /bin/sleep sleep 30
127.0.0.1:0 stream tcp nowait root /bin/echo echo ok
";
    let path = dir.write("doorman.conf", conf, false);
    let args = ["-f".to_string(), path.to_str().unwrap().to_string()];
    Doorman::start(
        dir,
        &args,
        Opts {
            wrapper: vec!["prlimit".into(), "--nofile=256:256".into(), "--".into()],
            ..Opts::default()
        },
    )
}

/// The plain service answers within a second.
fn other_service_answers(d: &Doorman) {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&d.addr(3), Duration::from_secs(1)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert_eq!(out, "ok\n", "after {:?}\n{}", t.elapsed(), d.log.text());
    eprintln!("the other service answered in {:?}", t.elapsed());
}

/// doorman's open descriptors stay under its limit, with room.
fn fds_within_limit(d: &Doorman) {
    let n = d.fd_count();
    assert!(n < 256 - 32, "{n} descriptors open");
}

#[test]
fn idle_internal_connections_cannot_take_the_daemons_fds() {
    let d = under_256_fds();
    let idle: Vec<_> = (0..300).map(|_| connect_nb(d.addr(0))).collect();
    assert!(eventually(DEADLINE, || d
        .log
        .count(&["accept service=", "internal=echo"])
        >= 62));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.log.count(&["accept service=", "internal=echo"]),
        62,
        "{}",
        d.log.text()
    );
    fds_within_limit(&d);
    other_service_answers(&d);
    // The rest waited in the backlog, not refused: once the idle ones
    // leave, echo serves again.
    drop(idle);
    assert_eq!(talk(d.addr(0), b"hi\n"), "hi\n");
}

#[test]
fn silent_proxy_connections_count_and_are_bounded() {
    let d = under_256_fds();
    let silent: Vec<_> = (0..300).map(|_| connect_nb(d.addr(1))).collect();
    std::thread::sleep(Duration::from_millis(500));
    fds_within_limit(&d);
    other_service_answers(&d);
    // (The other service's accept line may reach the log reader after
    // its answer reached this test.)
    assert!(d.log.wait_for(&["accept service="], DEADLINE).is_some());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(d.log.count(&["accept service="]), 1, "{}", d.log.text());
    // Still there: pending reads hold 62 and the rest wait. Once they
    // leave, a proxy that speaks gets its client served.
    assert!(d.fd_count() > 62, "{}", d.fd_count());
    drop(silent);
    let mut s = connect(d.addr(1));
    s.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 4000 80\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out, "served\n", "{}", d.log.text());
    // Its accept line is written after the fork, so it may reach the
    // log reader after the handler's answer reached this test.
    assert!(
        d.log.wait_for(&["peer=192.0.2.7:4000"], DEADLINE).is_some(),
        "{}",
        d.log.text()
    );
}

#[test]
fn udp_sessions_are_bounded_by_the_fd_share() {
    let d = under_256_fds();
    // 1,000 datagrams from 1,000 source ports, spread over ten /24s (so
    // that the per-network bound of 16 is not what stops them).
    for i in 0..1000 {
        let src = format!("127.0.{}.1:0", 1 + i % 10);
        let u = std::net::UdpSocket::bind(src).unwrap();
        let _ = u.send_to(b"x", d.addr(2));
    }
    assert!(eventually(DEADLINE, || children_of(d.pid()).len() >= 62));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(children_of(d.pid()).len(), 62, "{}", d.log.text());
    fds_within_limit(&d);
    other_service_answers(&d);
}

#[test]
fn an_idle_udp_session_ends_and_the_peer_gets_a_new_one() {
    let dir = TempDir::new();
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 dgram udp nowait,session-idle=1s root /bin/sleep sleep 60\n",
        &[],
    );
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(b"x", d.addr(0)).unwrap();
    assert!(eventually(DEADLINE, || children_of(d.pid()).len() == 1));
    assert!(eventually(DEADLINE, || d.log.count(&["idle service="]) == 1));
    assert!(eventually(DEADLINE, || children_of(d.pid()).is_empty()));
    let log = d.log.text();
    assert!(log.contains("signal=SIGTERM"), "{log}");
    // Its stop was not a failure of the handler.
    assert!(!log.contains("pause service="), "{log}");
    u.send_to(b"x", d.addr(0)).unwrap();
    assert!(eventually(DEADLINE, || d.log.count(&["accept service="]) == 2));
}
