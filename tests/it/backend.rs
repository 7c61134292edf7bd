//! On-demand backends (issue 16): an ordinary server that binds its own
//! port, started on the first connection, clients held until it accepts,
//! bytes relayed, stopped when idle.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::util::*;

/// `doorman --listen 127.0.0.1:0 --proxy 127.0.0.1:PORT FLAGS -- ARGV`.
fn proxied(port: u16, flags: &[&str], argv: &[&str]) -> Doorman {
    let target = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", "127.0.0.1:0", "--proxy", &target];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(argv);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Doorman::start(TempDir::new(), &args, Opts::default())
}

/// A python backend in `dir`: `prelude` first (imports, a delay), then
/// it listens on 127.0.0.1 at the port in argv[1] as `l` and runs `body`.
fn py_backend(dir: &TempDir, name: &str, prelude: &str, body: &str) -> String {
    let text = format!(
        "import socket, sys, time, threading\n{prelude}\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('127.0.0.1', int(sys.argv[1]))); l.listen(128)\n{body}"
    );
    dir.write(name, &text, false).to_str().unwrap().to_string()
}

fn curl(addr: SocketAddr, path: &str, out: &std::path::Path) -> String {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(out)
        .args(["-w", "%{http_code}", &format!("http://{addr}{path}")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn an_http_server_sleeps_until_the_first_request_and_after_the_last() {
    let www = TempDir::new();
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(www.path().join("blob"), &blob).unwrap();
    let port = free_port();
    let p = port.to_string();
    let dir = www.path().to_str().unwrap().to_string();
    let d = proxied(
        port,
        &["--idle-stop", "2s"],
        &[
            "/usr/bin/python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            &dir,
            &p,
        ],
    );
    // Asleep: no python before the first request.
    std::thread::sleep(Duration::from_millis(300));
    assert!(children_of(d.pid()).is_empty());
    let out = www.path().join("got");
    assert_eq!(curl(d.addr(0), "/blob", &out), "200");
    assert!(std::fs::read(&out).unwrap() == blob, "not byte-identical");
    assert_eq!(children_of(d.pid()).len(), 1);
    // Two seconds of quiet: stopped, and the log says what it used.
    assert!(eventually(DEADLINE, || children_of(d.pid()).is_empty()));
    let log = d.log.text();
    assert!(log.contains("idle-stop service="), "{log}");
    assert!(log.contains("peak_rss_kb="), "{log}");
    assert!(
        log.contains("received=") && log.contains("sent=3000"),
        "{log}"
    );
    // The next request starts it again.
    assert_eq!(curl(d.addr(0), "/blob", &out), "200");
    assert!(std::fs::read(&out).unwrap() == blob);
    assert_eq!(d.log.count(&["backend-start service="]), 2);
}

#[test]
fn clients_of_a_slow_starter_are_held_not_refused() {
    let dir = TempDir::new();
    let script = py_backend(
        &dir,
        "slow.py",
        "time.sleep(3)\n",
        "def serve(c):\n\
         \x20   f = c.makefile('rb'); line = f.readline()\n\
         \x20   c.sendall(b'hello ' + line); c.close()\n\
         while True:\n\
         \x20   c, _ = l.accept(); threading.Thread(target=serve, args=(c,)).start()\n",
    );
    let port = free_port();
    let p = port.to_string();
    let d = proxied(port, &[], &["/usr/bin/python3", &script, &p]);
    let addr = d.addr(0);
    let clients: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                s.write_all(format!("{i}\n").as_bytes()).unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).map(|_| out)
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let out = c.join().unwrap();
        assert_eq!(out.ok().as_deref(), Some(format!("hello {i}\n").as_str()));
    }
    let log = d.log.text();
    assert_eq!(d.log.count(&["backend-start service="]), 1, "{log}");
    assert!(!log.contains("refuse"), "{log}");
}

#[test]
fn a_backend_that_never_binds_times_out_and_doorman_stays_responsive() {
    let port = free_port();
    let d = proxied(port, &["--start-timeout", "1s"], &["/bin/sleep", "60"]);
    let mut s = TcpStream::connect(d.addr(0)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty());
    assert!(eventually(DEADLINE, || d
        .log
        .count(&["backend-timeout service="])
        == 1));
    // The sleeper is stopped, and doorman still answers its signals and
    // accepts (the next client is held for a fresh start).
    assert!(eventually(DEADLINE, || children_of(d.pid()).is_empty()));
    let _next = TcpStream::connect(d.addr(0)).unwrap();
    d.signal(libc::SIGUSR1);
    assert!(eventually(DEADLINE, || d
        .log
        .count(&["state service=", "backend="])
        == 1));
}

#[test]
fn a_backend_killed_mid_transfer_ends_the_client_and_restarts() {
    let dir = TempDir::new();
    let script = py_backend(
        &dir,
        "drip.py",
        "",
        "while True:\n\
         \x20   c, _ = l.accept()\n\
         \x20   for i in range(600):\n\
         \x20       c.sendall(b'x' * 1000); time.sleep(0.05)\n",
    );
    let port = free_port();
    let p = port.to_string();
    let d = proxied(port, &[], &["/usr/bin/python3", &script, &p]);
    let mut s = TcpStream::connect(d.addr(0)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 1000];
    s.read_exact(&mut b).unwrap();
    let kids = children_of(d.pid());
    assert_eq!(kids.len(), 1);
    // SAFETY: killing the backend this test's doorman started.
    unsafe { libc::kill(kids[0].0, libc::SIGKILL) };
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest); // ends (EOF or reset), no hang
    assert!(rest.len() < 600_000);
    assert!(eventually(DEADLINE, || children_of(d.pid()).is_empty()));
    let mut s2 = TcpStream::connect(d.addr(0)).unwrap();
    s2.set_read_timeout(Some(DEADLINE)).unwrap();
    s2.read_exact(&mut b).unwrap();
    assert_eq!(d.log.count(&["backend-start service="]), 2);
}

#[test]
fn xinetd_redirect_relays_to_a_running_server_and_starts_nothing() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = upstream.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = upstream.accept().unwrap();
        let mut line = [0u8; 5];
        c.read_exact(&mut line).unwrap();
        c.write_all(b"upstream got ").unwrap();
        c.write_all(&line).unwrap();
    });
    let dir = TempDir::new();
    let conf = format!(
        "service relay\n{{\n\ttype = UNLISTED\n\tsocket_type = stream\n\tprotocol = tcp\n\
         \twait = no\n\tbind = 127.0.0.1\n\tport = 0\n\tredirect = 127.0.0.1 {}\n}}\n",
        up.port()
    );
    let path = dir.write("relay", &conf, false);
    let args = ["-f".to_string(), path.to_str().unwrap().to_string()];
    let d = Doorman::start(dir, &args, Opts::default());
    let mut s = TcpStream::connect(d.addr(0)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"hello").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out, "upstream got hello");
    server.join().unwrap();
    assert!(children_of(d.pid()).is_empty());
    assert_eq!(d.log.count(&["backend-start"]), 0);
}

#[test]
fn the_backend_is_told_the_client_and_sees_its_half_close() {
    let dir = TempDir::new();
    // Reads to EOF (the client's shutdown passed on), then answers with
    // all it got: the PROXY header first.
    let script = py_backend(
        &dir,
        "whole.py",
        "",
        "while True:\n\
         \x20   c, _ = l.accept(); got = b''\n\
         \x20   while True:\n\
         \x20       b = c.recv(65536)\n\
         \x20       if not b: break\n\
         \x20       got += b\n\
         \x20   c.sendall(b'got ' + got); c.close()\n",
    );
    let port = free_port();
    let p = port.to_string();
    let d = proxied(
        port,
        &["-o", "proxy-send=v1"],
        &["/usr/bin/python3", &script, &p],
    );
    let mut s = TcpStream::connect(d.addr(0)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let (me, it) = (s.local_addr().unwrap(), d.addr(0));
    s.write_all(b"request").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(
        out,
        format!(
            "got PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nrequest",
            me.port(),
            it.port()
        )
    );
}
