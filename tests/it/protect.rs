//! Protection: refusal fates seen from the client, per-source buckets,
//! rate and crash-loop pauses that end by themselves, access lists
//! (addresses, mapped IPv4, unix peer uids), handler timeouts, rlimits,
//! the global cap, and a flood that must not starve another service.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

/// Connects to `dst` from the local address `src` (any of 127.0.0.0/8
/// reaches a loopback listener), with read and write deadlines.
pub fn connect_from(src: IpAddr, dst: SocketAddr) -> TcpStream {
    let IpAddr::V4(src) = src else {
        panic!("IPv4 sources only")
    };
    // SAFETY: plain socket calls on a fresh fd we own; the sockaddr
    // structs are fully initialized and their sizes passed.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_addr.s_addr = u32::from(src).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&a as *const libc::sockaddr_in).cast(), len),
            0
        );
        let SocketAddr::V4(d) = dst else {
            panic!("IPv4 destinations only")
        };
        let mut b: libc::sockaddr_in = std::mem::zeroed();
        b.sin_family = libc::AF_INET as libc::sa_family_t;
        b.sin_addr.s_addr = u32::from(*d.ip()).to_be();
        b.sin_port = d.port().to_be();
        assert_eq!(
            libc::connect(fd, (&b as *const libc::sockaddr_in).cast(), len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        fd
    };
    // SAFETY: the fd was just created and is owned by nothing else.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

fn read_all(mut s: TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 {
        out.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn each_fate_as_the_client_sees_it() {
    let dir = TempDir::new();
    dir.write("slow", "#!/bin/sh\necho hi\nsleep 1.5\n", true);
    let mut conf = String::new();
    for fate in ["queue", "close", "message,message=busy\\r\\n", "reset"] {
        conf.push_str(&format!(
            "127.0.0.1:0 stream tcp nowait,max-child=1,on-full={fate} root {{dir}}/slow slow\n"
        ));
    }
    let d = Doorman::with_conf(dir, &conf, &[]);
    // Each service busy with one client...
    let mut first: Vec<TcpStream> = (0..4).map(|i| connect(d.addr(i))).collect();
    for s in &mut first {
        assert_eq!(read_line(s), "hi\n");
    }
    // queue: the second client waits in the backlog, then is served.
    let mut q = connect(d.addr(0));
    q.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut b = [0u8; 8];
    let e = q.read(&mut b).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    // close: EOF at once, nothing sent.
    assert_eq!(read_all(connect(d.addr(1))).unwrap(), "");
    // message: the text, then EOF.
    assert_eq!(read_all(connect(d.addr(2))).unwrap(), "busy\r\n");
    // reset: ECONNRESET.
    // (A blocking connect: it returns once the handshake is done, before
    // doorman resets.)
    let e = read_all(connect_from(ip("127.0.0.1"), d.addr(3))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    q.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(read_line(&mut q), "hi\n");
    for (fate, reason) in [
        ("close", "instances"),
        ("message", "instances"),
        ("reset", "instances"),
    ] {
        assert!(
            d.log
                .count(&["refuse service=", &format!("fate={fate}"), reason])
                == 1,
            "{fate}: {}",
            d.log.text()
        );
    }
    assert_eq!(d.log.count(&["fate=queue"]), 0);
}

#[test]
fn an_abusive_source_is_refused_and_recovers_while_others_are_served() {
    // One token a second per source, bursts of two; refusals close.
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait,source-rate=1/1/2 root /bin/echo echo hi\n",
        &[],
    );
    let a = ip("127.0.0.1");
    let t0 = Instant::now();
    assert_eq!(read_all(connect_from(a, d.addr(0))).unwrap(), "hi\n");
    assert_eq!(read_all(connect_from(a, d.addr(0))).unwrap(), "hi\n");
    let mut refused = 0;
    for _ in 0..5 {
        if read_all(connect_from(a, d.addr(0))).unwrap().is_empty() {
            refused += 1;
        }
    }
    // Each token takes a second to come back: at most one of the five
    // could be served if this ran slowly.
    assert!(
        refused >= 4 || t0.elapsed() > Duration::from_secs(1),
        "{refused}"
    );
    // Another source is served at once.
    assert_eq!(
        read_all(connect_from(ip("127.0.0.2"), d.addr(0))).unwrap(),
        "hi\n"
    );
    // The bucket refills by itself.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(read_all(connect_from(a, d.addr(0))).unwrap(), "hi\n");
    // Logged once for the source (within the minute), counted each time.
    assert_eq!(
        d.log
            .count(&["refuse service=", "peer=127.0.0.1:", "per-source-rate"]),
        1,
        "{}",
        d.log.text()
    );
    assert_eq!(d.log.count(&["peer=127.0.0.2:", "refuse"]), 0);
}

#[test]
fn a_rate_pause_ends_by_itself() {
    // Three spawns per minute, then a two-second pause.
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait,rate=3/60/2 root /bin/echo echo hi\n",
        &[],
    );
    for _ in 0..3 {
        assert_eq!(talk(d.addr(0), b""), "hi\n");
    }
    // The third reached the limit: the service pauses (no client closed).
    assert!(d.log.wait_for(&["pause service="], DEADLINE).is_some());
    // Meanwhile clients wait in the backlog (on-paused=queue) ...
    let t0 = Instant::now();
    assert_eq!(talk(d.addr(0), b""), "hi\n");
    // ... and are served once the pause is over, without a restart.
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(d.log.count(&["pause service="]), 1);
    assert_eq!(d.log.count(&["resume service="]), 1, "{}", d.log.text());
}

#[test]
fn a_crash_loop_pauses_a_failing_handler_but_never_a_healthy_one() {
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait,crash=3/10/2 root /bin/false false\n\
         127.0.0.1:0 stream tcp nowait,crash=3/10/2 root /bin/echo echo ok\n",
        &[],
    );
    // A healthy busy handler at a higher rate: never paused.
    for _ in 0..20 {
        assert_eq!(talk(d.addr(1), b""), "ok\n");
    }
    for _ in 0..3 {
        talk(d.addr(0), b"");
    }
    let line = d
        .log
        .wait_for(&["pause service=", "crash-loop"], DEADLINE)
        .unwrap_or_else(|| panic!("{}", d.log.text()));
    assert!(line.contains("status=1"), "{line}");
    let healthy = d.addr(1).port().to_string();
    assert_eq!(d.log.count(&["pause", &healthy]), 0, "{}", d.log.text());
    // Resumes by itself.
    assert!(d.log.wait_for(&["resume service="], DEADLINE).is_some());
    assert_eq!(talk(d.addr(1), b""), "ok\n");
}

#[test]
fn access_lists_allow_deny_and_the_longest_match() {
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait,allow=127.0.0.1 root /bin/echo echo in\n\
         127.0.0.1:0 stream tcp nowait,allow=127.0.0.0/8,deny=127.0.0.2,on-deny=message,message=no\\n root /bin/echo echo in\n",
        &[],
    );
    assert_eq!(
        read_all(connect_from(ip("127.0.0.1"), d.addr(0))).unwrap(),
        "in\n"
    );
    assert_eq!(
        read_all(connect_from(ip("127.0.0.3"), d.addr(0))).unwrap(),
        ""
    );
    // The more specific deny wins over the wider allow; the rest of the
    // allowed prefix gets in.
    assert_eq!(
        read_all(connect_from(ip("127.0.0.2"), d.addr(1))).unwrap(),
        "no\n"
    );
    assert_eq!(
        read_all(connect_from(ip("127.0.0.3"), d.addr(1))).unwrap(),
        "in\n"
    );
    assert_eq!(d.log.count(&["refuse service=", "reason=access"]), 2);
}

#[test]
fn ipv4_mapped_clients_match_ipv4_rules() {
    if !have_ipv6() {
        eprintln!("skipped: no IPv6 on this host");
        return;
    }
    // One dual-stack socket: IPv4 clients arrive as ::ffff:a.b.c.d.
    let d = Doorman::with_conf(
        TempDir::new(),
        "[::]:0 stream tcp46 nowait,allow=127.0.0.2 root /bin/echo echo in\n",
        &[],
    );
    let port = d.addr(0).port();
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        read_all(connect_from(ip("127.0.0.2"), dst)).unwrap(),
        "in\n"
    );
    assert_eq!(read_all(connect_from(ip("127.0.0.1"), dst)).unwrap(), "");
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    assert_eq!(talk(v6, b""), "");
}

#[test]
fn unix_peers_by_uid() {
    if !is_root() {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    let dir = TempDir::new();
    let path = dir.path().join("s.sock");
    let conf = format!(
        "{} stream unix nowait,allow-uid=root,on-deny=message,message=uid\\n root /bin/echo echo in\n",
        path.display()
    );
    let _d = Doorman::with_conf(dir, &conf, &[]);
    let client = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nb=b''\nwhile True:\n  x=s.recv(100)\n  if not x: break\n  b+=x\nsys.stdout.write(b.decode())\n";
    let run_as = |uid: &str| {
        let out = Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                client,
                path.to_str().unwrap(),
            ])
            .output()
            .expect("setpriv");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run_as("0"), "in\n");
    assert_eq!(run_as("65534"), "uid\n");
}

#[test]
fn a_handler_over_its_time_is_stopped_with_its_children() {
    let dir = TempDir::new();
    // Prints its own pid and a child's, then waits forever; the second
    // also ignores SIGTERM (its children inherit that), so only SIGKILL
    // ends them.
    dir.write(
        "forever",
        "#!/bin/sh\nsleep 1000 &\necho $$ $!\nwait\n",
        true,
    );
    dir.write(
        "stubborn",
        "#!/bin/sh\ntrap '' TERM\nsleep 1000 &\necho $$ $!\nwait\nwait\n",
        true,
    );
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait,timeout=1 root {dir}/forever forever\n\
         127.0.0.1:0 stream tcp nowait,timeout=1/1 root {dir}/stubborn stubborn\n",
        &[],
    );
    for (i, signal) in [(0, "SIGTERM"), (1, "SIGKILL")] {
        let mut s = connect(d.addr(i));
        let line = read_line(&mut s);
        let pids: Vec<i32> = line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{line:?}");
        let t0 = Instant::now();
        // EOF once every holder of the socket is gone.
        let _ = read_all(s);
        assert!(t0.elapsed() < DEADLINE);
        for p in &pids {
            assert!(
                eventually(DEADLINE, || !std::path::Path::new(&format!("/proc/{p}"))
                    .exists()
                    || std::fs::read_to_string(format!("/proc/{p}/stat"))
                        .is_ok_and(|s| s.contains(") Z "))),
                "pid {p} still runs"
            );
        }
        let pid = pids[0].to_string();
        assert!(
            d.log
                .wait_for(
                    &[
                        "timeout service=",
                        &format!("pid={pid}"),
                        &format!("signal={signal}")
                    ],
                    DEADLINE
                )
                .is_some(),
            "{}",
            d.log.text()
        );
    }
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 2));
    // The killed children were orphans of doorman (a subreaper): reaped
    // as soon as their SIGCHLD is handled.
    assert!(eventually(DEADLINE, || d.zombies().is_empty()));
}

#[test]
fn rlimits_umask_nice_and_directory_reach_the_handler() {
    let dir = TempDir::new();
    dir.write(
        "show",
        "#!/bin/sh\necho nofile=$(ulimit -Sn):$(ulimit -Hn) core=$(ulimit -c) umask=$(umask) cwd=$(pwd)\n\
         awk '{print \"nice=\" $19}' /proc/self/stat\n\
         grep 'Max address space' /proc/self/limits\n",
        true,
    );
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait,nofile=64:128,core=0,as=1G,umask=027,nice=5,cwd=/tmp root {dir}/show show\n",
        &[],
    );
    let out = talk(d.addr(0), b"");
    assert!(
        out.contains("nofile=64:128 core=0 umask=0027 cwd=/tmp\n"),
        "{out}"
    );
    assert!(out.contains("nice=5\n"), "{out}");
    let as_line = out
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap();
    assert_eq!(
        as_line
            .split_whitespace()
            .filter(|w| *w == "1073741824")
            .count(),
        2,
        "{out}"
    );
}

#[test]
fn the_global_cap_queues_every_service() {
    let dir = TempDir::new();
    dir.write("slow", "#!/bin/sh\necho slow\nsleep 1\n", true);
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait root {dir}/slow slow\n\
         127.0.0.1:0 stream tcp nowait root /bin/echo echo fast\n",
        &["--max-children", "1"],
    );
    let mut s = connect(d.addr(0));
    assert_eq!(read_line(&mut s), "slow\n");
    // The other service waits until the slow handler is done.
    let t0 = Instant::now();
    assert_eq!(talk(d.addr(1), b""), "fast\n");
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        d.log.count(&["full max_children=1"]) >= 1,
        "{}",
        d.log.text()
    );
}

#[test]
fn a_flood_never_starves_another_service() {
    let dir = TempDir::new();
    dir.write("slow", "#!/bin/sh\necho x\nsleep 0.2\n", true);
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait,max-child=5,on-full=close root {dir}/slow slow\n\
         127.0.0.1:0 stream tcp nowait root /bin/echo echo probe\n",
        &[],
    );
    std::thread::sleep(Duration::from_millis(200));
    let fds0 = d.fd_count();
    let rss0 = anon_kb(d.pid());
    let flood = d.addr(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 2000 connections, 200 at a time (200 threads of 10 each).
    let workers: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                let mut done = 0;
                for _ in 0..10 {
                    if let Ok(s) = TcpStream::connect_timeout(&flood, DEADLINE) {
                        s.set_read_timeout(Some(DEADLINE)).unwrap();
                        let _ = read_all(s);
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    // The other service answers every probe (one each 100 ms) in time.
    let probe = d.addr(1);
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 5 {
                let t = Instant::now();
                assert_eq!(talk(probe, b""), "probe\n");
                worst = worst.max(t.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (n, worst)
        })
    };
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (probes, worst) = prober.join().unwrap();
    assert_eq!(total, 2000);
    assert!(
        worst < Duration::from_secs(1),
        "a probe took {worst:?} ({probes} probes)"
    );
    // Afterwards: no zombie, fds back where they were, RSS bounded.
    assert!(eventually(DEADLINE, || children_of(d.pid()).is_empty()));
    assert!(
        eventually(DEADLINE, || d.fd_count() == fds0),
        "{} != {fds0}",
        d.fd_count()
    );
    let grown = anon_kb(d.pid()).saturating_sub(rss0);
    assert!(grown < 1024, "private memory grew by {grown} kB");
    assert!(d.log.count(&["refuse service=", "instances"]) >= 1);
}

#[test]
fn front_ends_carry_the_protection_settings() {
    let dir = TempDir::new();
    let banner = dir.write("banner", "not you\n", false);
    dir.write(
        "x.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\nIPAddressAllow=127.0.0.2\nIPAddressDeny=any\nX-Doorman-Options=on-deny=reset\n",
        false,
    );
    dir.write(
        "x@.service",
        "[Service]\nExecStart=/bin/echo unit\nRuntimeMaxSec=30\n",
        false,
    );
    let xi = dir.write(
        "xi.conf",
        &format!(
            "service x\n{{\n type = UNLISTED\n port = 0\n socket_type = stream\n wait = no\n user = root\n server = /bin/echo\n server_args = xinetd\n only_from = 127.0.0.2\n banner_fail = {}\n}}\n",
            banner.display()
        ),
        false,
    );
    let (code, out, err) = run(&[
        "--check",
        "-f",
        dir.path().join("x.socket").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("allow=127.0.0.2/32 deny=0.0.0.0/0,::/0 on-deny=reset")
            && out.contains("timeout=30s"),
        "{out}"
    );
    // The xinetd service for real: refused clients get banner_fail.
    let d = Doorman::start(
        TempDir::new(),
        &["-f".into(), xi.to_str().unwrap().into()],
        Opts::default(),
    );
    assert_eq!(
        read_all(connect_from(ip("127.0.0.1"), d.addr(0))).unwrap(),
        "not you\n"
    );
    assert_eq!(
        read_all(connect_from(ip("127.0.0.2"), d.addr(0))).unwrap(),
        "xinetd\n"
    );
    // The command line.
    let (code, out, err) = run(&[
        "--check",
        "--listen",
        "127.0.0.1:0",
        "--allow",
        "127.0.0.0/8",
        "--deny",
        "127.0.0.9",
        "--timeout",
        "5",
        "--max-per-source",
        "2",
        "--source-rate",
        "10/60/20",
        "-o",
        "on-source=reset",
        "--",
        "/bin/true",
    ]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "max-child-per-ip=2",
        "source-rate=10/60s,burst=20",
        "allow=127.0.0.0/8 deny=127.0.0.9/32",
        "on-source=reset",
        "timeout=5s",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let (code, _, err) = run(&[
        "--check",
        "--listen",
        "127.0.0.1:0",
        "--allow",
        "localhost.example",
        "--",
        "/bin/true",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("host names are not resolved"), "{err}");
}
