//! Served inside the loop: internal services (TCP and UDP, with real
//! clients), tcpmux, the PROXY protocol behind a real HAProxy, and
//! per-peer UDP sessions.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::*;

/// Runs `nc` with `args`, feeding `input`; returns what it printed.
fn nc(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("nc")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nc (netcat-openbsd) is required");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    assert!(wait_child(&mut child, DEADLINE).is_some(), "nc did not end");
    out
}

fn host_port(a: SocketAddr) -> (String, String) {
    (a.ip().to_string(), a.port().to_string())
}

const INTERNAL_CONF: &str = "\
127.0.0.1:0 stream tcp nowait root internal echo
127.0.0.1:0 stream tcp nowait root internal discard
127.0.0.1:0 stream tcp nowait root internal chargen
127.0.0.1:0 stream tcp nowait root internal daytime
127.0.0.1:0 stream tcp nowait root internal time
127.0.0.1:0 dgram udp wait root internal echo
127.0.0.1:0 dgram udp wait root internal daytime
127.0.0.1:0 dgram udp wait root internal time
127.0.0.1:0 dgram udp wait root internal chargen
";

#[test]
fn internal_tcp_services_with_nc() {
    let d = Doorman::with_conf(TempDir::new(), INTERNAL_CONF, &[]);
    // echo: 1 MiB there and back.
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let (h, p) = host_port(d.addr(0));
    assert!(nc(&["-N", &h, &p], &data) == data, "echo changed the data");
    // discard: nothing comes back; the connection ends after our EOF.
    let (h, p) = host_port(d.addr(1));
    assert!(nc(&["-N", &h, &p], &data).is_empty());
    // chargen: read 100 KiB, then close; the pattern rotates per line.
    let mut s = connect(d.addr(2));
    let mut got = vec![0u8; 100 * 1024];
    s.read_exact(&mut got).unwrap();
    drop(s);
    let first: &[u8] = &got[..74];
    assert_eq!(&first[..4], b" !\"#");
    assert_eq!(&first[72..], b"\r\n");
    assert_eq!(got[74], b'!');
    // daytime: this machine's local time, within two seconds.
    let (h, p) = host_port(d.addr(3));
    let day = String::from_utf8(nc(&[&h, &p], b"")).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let near: Vec<String> = (now - 2..=now + 2)
        .map(|t| {
            let out = Command::new("date")
                .args(["-d", &format!("@{t}"), "+%a %b %e %H:%M:%S %Y"])
                .output()
                .unwrap();
            format!("{}\r\n", String::from_utf8_lossy(&out.stdout).trim_end())
        })
        .collect();
    assert!(near.contains(&day), "{day:?} not in {near:?}");
    // time: seconds since 1900, within two seconds.
    let (h, p) = host_port(d.addr(4));
    let t = nc(&[&h, &p], b"");
    assert_eq!(t.len(), 4);
    let secs = u64::from(u32::from_be_bytes(t.try_into().unwrap())) - 2_208_988_800;
    assert!(secs.abs_diff(now) <= 2, "{secs} vs {now}");
    assert!(eventually(DEADLINE, || d.log.count(&["end service="]) >= 5));
    assert!(
        d.zombies().is_empty() && children_of(d.pid()).is_empty(),
        "no process was forked"
    );
}

#[test]
fn internal_udp_services_and_loop_protection() {
    let d = Doorman::with_conf(TempDir::new(), INTERNAL_CONF, &[]);
    let (h, p) = host_port(d.addr(5));
    // nc -u sends what it reads and prints the reply; -w1 ends it.
    assert_eq!(nc(&["-u", "-w1", &h, &p], b"hello\n"), b"hello\n");
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    c.send_to(b"x", d.addr(6)).unwrap();
    let n = c.recv(&mut buf).unwrap();
    assert!(buf[..n].ends_with(b"\r\n") && n == 26, "{:?}", &buf[..n]);
    c.send_to(b"x", d.addr(7)).unwrap();
    assert_eq!(c.recv(&mut buf).unwrap(), 4);
    // chargen answers with no more than the request had (no
    // amplification), 512 at most.
    c.send_to(b"x", d.addr(8)).unwrap();
    let n = c.recv(&mut buf).unwrap();
    assert!(n == 1 && buf[..n].iter().all(|b| b.is_ascii()), "{n}");
    c.send_to(&[b'q'; 900], d.addr(8)).unwrap();
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(n, 512);
    // Loop protection: no answer to a privileged port or an internal
    // service's port (the echo <-> chargen storm).
    if is_root() {
        for port in [999u16, 19] {
            let Ok(evil) = UdpSocket::bind(("127.0.0.1", port)) else {
                continue;
            };
            evil.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            evil.send_to(b"ping", d.addr(5)).unwrap();
            assert!(evil.recv(&mut buf).is_err(), "answered port {port}");
        }
        assert!(d
            .log
            .wait_for(&["refuse service=", "reason=loop"], DEADLINE)
            .is_some());
    }
}

#[test]
fn chargen_clients_that_never_read_cost_little() {
    let d = Doorman::with_conf(
        TempDir::new(),
        // nowait.0: no spawn-rate limit (500 connections in a burst).
        "127.0.0.1:0 stream tcp nowait.0 root internal chargen\n127.0.0.1:0 stream tcp nowait root internal echo\n",
        &[],
    );
    let rss0 = anon_kb(d.pid());
    let idle: Vec<TcpStream> = (0..500).map(|_| connect(d.addr(0))).collect();
    // Every connection is open and stuck with a full socket buffer.
    assert!(eventually(DEADLINE, || d
        .log
        .count(&["accept service=", "internal=chargen"])
        == 500));
    // Another service answers at once.
    for _ in 0..20 {
        let mut s = connect(d.addr(1));
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
    }
    let grown = anon_kb(d.pid()).saturating_sub(rss0);
    assert!(
        grown < 4096,
        "private memory grew by {grown} kB for 500 stuck chargen clients"
    );
    drop(idle);
    // 500 chargen and 20 echo connections ended.
    assert!(eventually(DEADLINE, || d.log.count(&["end service="]) == 520));
}

#[test]
fn an_internal_connection_over_its_time_is_closed() {
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait,timeout=1 root internal chargen\n",
        &[],
    );
    // A client that never reads: closed once its time is up.
    let s = connect(d.addr(0));
    let line = d
        .log
        .wait_for(&["end service=", "why=timeout"], DEADLINE)
        .unwrap_or_else(|| panic!("{}", d.log.text()));
    let ms: u64 = field(&line, "duration")
        .trim_end_matches("ms")
        .parse()
        .unwrap();
    assert!((900..DEADLINE.as_millis() as u64).contains(&ms), "{line}");
    drop(s);
}

#[test]
fn tcpmux_help_and_named_services() {
    let dir = TempDir::new();
    dir.write("hi", "#!/bin/sh\necho hi $REMOTE_ADDR\n", true);
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait root internal tcpmux\n\
         tcpmux/+hello stream tcp nowait root {dir}/hi hi\n\
         tcpmux/quiet stream tcp nowait root /bin/echo echo quiet\n",
        &[],
    );
    let a = d.addr(0);
    let help = talk(a, b"help\r\n");
    assert_eq!(help, "hello\r\nquiet\r\n");
    assert_eq!(talk(a, b"HELLO\r\n"), "+Go\r\nhi 127.0.0.1\n");
    assert_eq!(talk(a, b"quiet\r\n"), "quiet\n");
    assert_eq!(talk(a, b"nope\r\n"), "-Service not available\r\n");
    assert!(
        d.log
            .wait_for(&["accept service=tcpmux/hello"], DEADLINE)
            .is_some(),
        "{}",
        d.log.text()
    );
}

/// A running HAProxy, stopped (by pid) when dropped.
struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn proxy_protocol_behind_haproxy() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("skipped: haproxy is not installed (.ci/deps installs it)");
        return;
    }
    let dir = TempDir::new();
    dir.write(
        "who",
        "#!/bin/sh\necho \"$REMOTE_ADDR $PROXY_ADDR $TCPREMOTEIP\"\ncat\n",
        true,
    );
    // Trusts 127.0.0.2 only: HAProxy connects from there.
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait,proxy-protocol=any,proxy-from=127.0.0.2 root {dir}/who who\n",
        &[],
    );
    let backend = d.addr(0);
    let (p1, p2) = (free_port(), free_port());
    let cfg = d.dir.write(
        "haproxy.cfg",
        &format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend v1\n  bind 127.0.0.1:{p1}\n  default_backend v1\nbackend v1\n  server s {backend} send-proxy source 127.0.0.2\n\
             frontend v2\n  bind 127.0.0.1:{p2}\n  default_backend v2\nbackend v2\n  server s {backend} send-proxy-v2 source 127.0.0.2\n"
        ),
        false,
    );
    let _h = Haproxy(
        Command::new("haproxy")
            .args(["-db", "-f", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = |p: u16| eventually(DEADLINE, || TcpStream::connect(("127.0.0.1", p)).is_ok());
    assert!(up(p1) && up(p2), "haproxy did not start");
    for port in [p1, p2] {
        // The client comes from 127.0.0.9; the handler must see that, and
        // none of the header; data after it goes through untouched.
        let mut s =
            crate::protect::connect_from(ip("127.0.0.9"), SocketAddr::new(ip("127.0.0.1"), port));
        s.write_all(b"payload\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(
            out, "127.0.0.9 127.0.0.2 127.0.0.9\npayload\n",
            "port {port}"
        );
    }
    // A direct (untrusted) client is refused.
    assert_eq!(talk(backend, b""), "");
    assert!(
        d.log
            .wait_for(&["refuse service=", "proxy: not a trusted proxy"], DEADLINE)
            .is_some(),
        "{}",
        d.log.text()
    );
    // Garbage from the trusted address: closed, logged.
    let mut g = crate::protect::connect_from(ip("127.0.0.2"), backend);
    g.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = g.read_to_string(&mut out);
    assert_eq!(out, "");
    assert!(d
        .log
        .wait_for(
            &["refuse service=", "not a PROXY protocol header"],
            DEADLINE
        )
        .is_some());
}

#[test]
fn proxy_header_truncated_or_never_sent_is_closed() {
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait,proxy-protocol=v1,proxy-from=127.0.0.1 root /bin/echo echo served\n",
        &[],
    );
    // A valid v1 header from the trusted proxy serves the client it names.
    assert_eq!(
        talk(d.addr(0), b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n"),
        "served\n"
    );
    assert!(
        d.log
            .wait_for(&["accept service=", "peer=192.0.2.7:5555"], DEADLINE)
            .is_some(),
        "{}",
        d.log.text()
    );
    // Half a header, then silence: closed after the header time-out, with
    // a log line, and nothing was spawned for it.
    let mut s = connect(d.addr(0));
    s.write_all(b"PROXY TCP4 192.0.2.").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(out.is_empty());
    assert!(d
        .log
        .wait_for(&["refuse service=", "no header within"], DEADLINE)
        .is_some());
    assert_eq!(d.log.count(&["accept service="]), 1);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn udp_sessions_one_handler_per_peer() {
    let dir = TempDir::new();
    dir.write(
        "udp-echo",
        "#!/usr/bin/python3\nimport os, socket\ns = socket.socket(fileno=0)\npid = os.getpid()\n\
         while True:\n    d = s.recv(65535)\n    if d == b'quit':\n        break\n    s.send(b'%d %s %s' % (pid, os.environ['REMOTE_PORT'].encode(), d))\n",
        true,
    );
    let d = Doorman::with_conf(
        dir,
        // 20 peers from one address: more than the default per-/24 bound.
        "127.0.0.1:0 dgram udp nowait,max-child-per-ip=20 root {dir}/udp-echo udp-echo\n",
        &[],
    );
    let svc = d.addr(0);
    let peers: Vec<UdpSocket> = (0..20)
        .map(|_| {
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            u.set_read_timeout(Some(DEADLINE)).unwrap();
            u
        })
        .collect();
    let ask = |u: &UdpSocket, msg: &str| -> (String, String, String) {
        u.send_to(msg.as_bytes(), svc).unwrap();
        let mut b = [0u8; 2048];
        let n = u.recv(&mut b).unwrap();
        let r = String::from_utf8_lossy(&b[..n]).into_owned();
        let mut w = r.splitn(3, ' ').map(str::to_string);
        (
            w.next().unwrap(),
            w.next().unwrap(),
            w.next().unwrap_or_default(),
        )
    };
    let mut pids = Vec::new();
    for (i, u) in peers.iter().enumerate() {
        // The first datagram reaches the new handler.
        let (pid, port, data) = ask(u, &format!("first {i}"));
        assert_eq!(data, format!("first {i}"));
        assert_eq!(port, u.local_addr().unwrap().port().to_string());
        pids.push(pid);
    }
    let mut unique = pids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 20, "one handler per peer: {pids:?}");
    // Later datagrams go to the same handler, never another peer's.
    for (i, u) in peers.iter().enumerate() {
        let (pid, _, data) = ask(u, &format!("again {i}"));
        assert_eq!(
            (pid.as_str(), data),
            (pids[i].as_str(), format!("again {i}"))
        );
    }
    // A handler's exit frees its peer for a new one.
    peers[0].send_to(b"quit", svc).unwrap();
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 1));
    let (pid, _, data) = ask(&peers[0], "new");
    assert_eq!(data, "new");
    assert_ne!(pid, pids[0]);
    for u in &peers {
        u.send_to(b"quit", svc).unwrap();
    }
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 21));
    assert!(eventually(DEADLINE, || children_of(d.pid()).is_empty()));
}

#[test]
fn classic_internal_lines_check() {
    let dir = TempDir::new();
    let ok = dir.write(
        "ok.conf",
        "echo stream tcp nowait root internal\nchargen dgram udp wait root internal\ntcpmux/x stream tcp nowait root /bin/true\n",
        false,
    );
    let (code, out, err) = run(&["--check", "-f", ok.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("echo listen=stream:tcp4:0.0.0.0:7") && out.contains("program=internal:echo"),
        "{out}"
    );
    assert!(out.contains("program=internal:chargen"), "{out}");
    assert!(
        err.contains("tcpmux/x: no internal tcpmux service"),
        "{err}"
    );
    let bad = dir.write(
        "bad.conf",
        "echo stream tcp wait root internal\n8 stream tcp nowait root internal\n",
        false,
    );
    let (code, _, err) = run(&["--check", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let p = bad.display();
    assert!(
        err.contains(&format!("{p}:1: wait: internal stream services are nowait")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:2: server_program: no internal service \"8\"")),
        "{err}"
    );
}

#[test]
fn proxy_optional_serves_direct_clients_and_local_keeps_addresses() {
    let dir = TempDir::new();
    dir.write(
        "who",
        "#!/bin/sh\necho \"$REMOTE_ADDR ${PROXY_ADDR:-direct}\"\n",
        true,
    );
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait,proxy-protocol=v2,proxy-from=127.0.0.2,proxy-optional=yes root {dir}/who who\n",
        &[],
    );
    // Not from the proxy: served as a direct client.
    let s = crate::protect::connect_from(ip("127.0.0.1"), d.addr(0));
    let mut out = String::new();
    let mut s = s;
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out, "127.0.0.1 direct\n");
    // From the proxy, a v2 LOCAL header (a health check): the socket's
    // own addresses stay, and the proxy is named.
    let mut s = crate::protect::connect_from(ip("127.0.0.2"), d.addr(0));
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    s.write_all(&local).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out, "127.0.0.2 127.0.0.2\n");
}

#[test]
fn udp_sessions_over_the_instance_limit_are_dropped_and_logged() {
    let dir = TempDir::new();
    dir.write(
        "udp-hold",
        "#!/usr/bin/python3\nimport socket\ns = socket.socket(fileno=0)\n\
         while True:\n    d = s.recv(65535)\n    if d in (b'', b'quit'):\n        break\n    s.send(b'ok ' + d)\n",
        true,
    );
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 dgram udp nowait,max-child=1 root {dir}/udp-hold udp-hold\n",
        &[],
    );
    let svc = d.addr(0);
    let first = UdpSocket::bind("127.0.0.1:0").unwrap();
    let second = UdpSocket::bind("127.0.0.1:0").unwrap();
    first.set_read_timeout(Some(DEADLINE)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 64];
    first.send_to(b"a", svc).unwrap();
    let n = first.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"ok a");
    // The one instance is taken: the second peer's datagram is dropped,
    // logged, and the first peer's session goes on.
    second.send_to(b"b", svc).unwrap();
    assert!(second.recv(&mut b).is_err(), "a second handler answered");
    assert!(d
        .log
        .wait_for(
            &["refuse service=", "reason=instances", "fate=drop"],
            DEADLINE
        )
        .is_some());
    first.send_to(b"c", svc).unwrap();
    let n = first.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"ok c");
    // Once the first handler is gone, the second peer gets one.
    first.send_to(b"quit", svc).unwrap();
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 1));
    second.set_read_timeout(Some(DEADLINE)).unwrap();
    second.send_to(b"d", svc).unwrap();
    let n = second.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"ok d");
    // And ends it, so that no handler outlives the test.
    second.send_to(b"quit", svc).unwrap();
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 2));
}

#[test]
fn udp_sessions_are_bounded_per_network() {
    let dir = TempDir::new();
    dir.write(
        "udp-hold",
        "#!/usr/bin/python3\nimport socket\ns = socket.socket(fileno=0)\nwhile True:\n    d = s.recv(65535)\n    s.send(b'ok')\n",
        true,
    );
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 dgram udp nowait root {dir}/udp-hold udp-hold\n",
        &[],
    );
    let svc = d.addr(0);
    // 1,000 datagrams from 200 ports of 127.0.0.1 (a spoofer's view):
    // at most 16 sessions from that /24.
    let socks: Vec<UdpSocket> = (0..200)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for _ in 0..5 {
        for u in &socks {
            let _ = u.send_to(b"x", svc);
        }
    }
    assert!(eventually(DEADLINE, || d.log.count(&["accept service="]) >= 16));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.log.count(&["accept service="]), 16, "{}", d.log.text());
    assert!(
        d.log.text().contains("per-source-instances"),
        "{}",
        d.log.text()
    );
    // Another network still gets a session and its answer.
    let other = UdpSocket::bind("127.0.1.1:0").unwrap();
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    other.send_to(b"x", svc).unwrap();
    let mut b = [0u8; 16];
    let n = other.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"ok");
    assert_eq!(children_of(d.pid()).len(), 17);
}
