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

/// A backend that listens at once but is warm only 1.5 s later: until
/// then it answers `early`, after it `ready`, and says READY=1 through
/// python3-systemd's `sd_notify` (from a thread of its own process).
fn warming_backend(dir: &TempDir) -> String {
    py_backend(
        dir,
        "warm.py",
        "import systemd.daemon\n",
        "state = {'ready': False}\n\
         def warm():\n\
         \x20   time.sleep(1.5); state['ready'] = True; systemd.daemon.notify('READY=1')\n\
         threading.Thread(target=warm).start()\n\
         while True:\n\
         \x20   c, _ = l.accept(); c.sendall(b'ready\\n' if state['ready'] else b'early\\n'); c.close()\n",
    )
}

fn answer(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn ready_notify_holds_clients_until_the_backend_says_ready() {
    let dir = TempDir::new();
    let script = warming_backend(&dir);
    // Without --notify the first connect that succeeds is "ready": the
    // first client meets the cold backend.
    let port = free_port();
    let p = port.to_string();
    let d = proxied(port, &[], &["/usr/bin/python3", &script, &p]);
    assert_eq!(answer(d.addr(0)), "early\n");
    drop(d);
    // With --notify: every client that came while it warmed gets the warm
    // answer, and a READY=1 from a stranger (this test, not in the
    // backend's process group) does not count.
    let port = free_port();
    let p = port.to_string();
    let d = proxied(port, &["--notify"], &["/usr/bin/python3", &script, &p]);
    let addr = d.addr(0);
    let clients: Vec<_> = (0..10)
        .map(|_| std::thread::spawn(move || answer(addr)))
        .collect();
    assert!(eventually(DEADLINE, || children_of(d.pid()).len() == 1));
    let backend = children_of(d.pid())[0].0;
    let mut name = None;
    assert!(eventually(DEADLINE, || {
        name = std::fs::read(format!("/proc/{backend}/environ"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .find_map(|v| v.strip_prefix(b"NOTIFY_SOCKET=@").map(|n| n.to_vec()));
        name.is_some()
    }));
    let stranger = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let to =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.unwrap(),
        )
        .unwrap();
    stranger.send_to_addr(b"READY=1", &to).unwrap();
    for c in clients {
        assert_eq!(c.join().unwrap(), "ready\n");
    }
    let log = d.log.text();
    let after: u64 = log
        .split("backend-ready ")
        .nth(1)
        .and_then(|l| l.split("after_ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(after >= 1400, "ready after {after} ms: {log}");
    assert_eq!(d.log.count(&["backend-start service="]), 1, "{log}");
}

/// The unit trio people write for systemd-socket-proxyd (its man page's
/// example, the server a python web app as nobody).
fn proxyd_units(dir: &TempDir, port: u16, backend: u16, idle: &str, stop_when_unneeded: bool) {
    dir.write(
        "proxy-to-app.socket",
        &format!("[Socket]\nListenStream=127.0.0.1:{port}\n\n[Install]\nWantedBy=sockets.target\n"),
        false,
    );
    dir.write(
        "proxy-to-app.service",
        &format!(
            "[Unit]\nRequires=app.service\nAfter=app.service\nRequires=proxy-to-app.socket\n\
             After=proxy-to-app.socket\n\n[Service]\n\
             ExecStart=/usr/lib/systemd/systemd-socket-proxyd --exit-idle-time={idle} 127.0.0.1:{backend}\n\
             PrivateTmp=yes\nPrivateNetwork=yes\n"
        ),
        false,
    );
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from app\n").unwrap();
    dir.write(
        "app.service",
        &format!(
            "[Unit]\nDescription=A Python web app\n{}\n[Service]\n\
             ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 --directory {} {backend}\n\
             User=nobody\n",
            if stop_when_unneeded {
                "StopWhenUnneeded=yes\n"
            } else {
                ""
            },
            www.display()
        ),
        false,
    );
}

fn uid_of(pid: i32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().and_then(|u| u.parse().ok()))
        .unwrap_or(u32::MAX)
}

#[test]
fn a_systemd_socket_proxyd_unit_trio_runs_natively() {
    let dir = TempDir::new();
    let (port, backend) = (free_port(), free_port());
    proxyd_units(&dir, port, backend, "2s", true);
    let out = dir.path().join("got");
    let d = Doorman::start(
        dir,
        &[
            "-f".into(),
            out.with_file_name("proxy-to-app.socket")
                .to_str()
                .unwrap()
                .into(),
        ],
        Opts::default(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(children_of(d.pid()).is_empty());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(curl(addr, "/index.html", &out), "200");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello from app\n");
    // The app itself runs, as its unit's User=; no systemd-socket-proxyd.
    let kids = children_of(d.pid());
    assert_eq!(kids.len(), 1, "{kids:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", kids[0].0)).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("http.server"));
    if is_root() {
        assert_eq!(uid_of(kids[0].0), 65534);
    }
    // --exit-idle-time with StopWhenUnneeded=yes: stopped after 2 s.
    assert!(eventually(DEADLINE, || children_of(d.pid()).is_empty()));
    assert!(
        d.log.text().contains("idle-stop service=proxy-to-app"),
        "{}",
        d.log.text()
    );
    assert_eq!(curl(addr, "/index.html", &out), "200");
    assert_eq!(d.log.count(&["backend-start service=proxy-to-app"]), 2);
    // doorman's stop stops the app too (handlers are left; a backend
    // would hold its port against the next start).
    let app = children_of(d.pid())[0].0;
    let mut d = d;
    d.stop();
    assert!(eventually(DEADLINE, || !std::fs::read_to_string(format!(
        "/proc/{app}/stat"
    ))
    .is_ok_and(|s| !s
        .rsplit(") ")
        .next()
        .unwrap_or("")
        .starts_with('Z'))));
}

#[test]
fn without_stop_when_unneeded_the_app_outlives_the_idle_time_as_under_systemd() {
    let dir = TempDir::new();
    let (port, backend) = (free_port(), free_port());
    proxyd_units(&dir, port, backend, "1s", false);
    let unit = dir.path().join("proxy-to-app.socket");
    let out = dir.path().join("got");
    let d = Doorman::start(
        dir,
        &["-f".into(), unit.to_str().unwrap().into()],
        Opts::default(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(curl(addr, "/index.html", &out), "200");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(children_of(d.pid()).len(), 1);
    assert!(!d.log.text().contains("idle-stop"));
}

#[test]
fn one_unit_with_doorman_options_and_type_notify() {
    let dir = TempDir::new();
    let script = warming_backend(&dir);
    let (port, backend) = (free_port(), free_port());
    dir.write(
        "app.socket",
        &format!("[Socket]\nListenStream=127.0.0.1:{port}\n"),
        false,
    );
    dir.write(
        "app.service",
        &format!(
            "[Service]\nType=notify\nExecStart=/usr/bin/python3 {script} {backend}\n\
             X-Doorman-Options=proxy-to=127.0.0.1:{backend} idle-stop=1s\n"
        ),
        false,
    );
    let unit = dir.path().join("app.socket");
    let (code, out, err) = run(&["--check", "-f", unit.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("mode=nowait") && out.contains("ready=notify"),
        "{out}"
    );
    let d = Doorman::start(
        dir,
        &["-f".into(), unit.to_str().unwrap().into()],
        Opts::default(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let clients: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || answer(addr)))
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), "ready\n");
    }
    assert!(eventually(DEADLINE, || children_of(d.pid()).is_empty()));
}

#[test]
fn proxyd_units_doorman_cannot_run_are_errors_naming_the_line() {
    let dir = TempDir::new();
    dir.write("p.socket", "[Socket]\nListenStream=127.0.0.1:0\n", false);
    dir.write(
        "p.service",
        "[Unit]\nRequires=a.service b.service\n[Service]\n\
         ExecStart=/lib/systemd/systemd-socket-proxyd 127.0.0.1:1\n",
        false,
    );
    dir.write("q.socket", "[Socket]\nListenStream=127.0.0.1:0\n", false);
    dir.write(
        "q.service",
        "[Service]\nExecStart=/lib/systemd/systemd-socket-proxyd --bogus example.com:80\n",
        false,
    );
    let (code, _, err) = run(&["--check", "-f", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    let p = dir.path().join("p.service").display().to_string();
    let q = dir.path().join("q.service").display().to_string();
    assert!(
        err.contains(&format!(
            "{p}:2: Requires: systemd-socket-proxyd in front of a.service, b.service"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{q}:2: ExecStart: systemd-socket-proxyd: unknown option --bogus"
        )),
        "{err}"
    );
    // Nothing pulled in: relayed to a running server, nothing started.
    let running = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = running.local_addr().unwrap();
    let dir = TempDir::new();
    dir.write("r.socket", "[Socket]\nListenStream=127.0.0.1:0\n", false);
    dir.write(
        "r.service",
        &format!("[Service]\nExecStart=/lib/systemd/systemd-socket-proxyd {target}\n"),
        false,
    );
    let unit = dir.path().join("r.socket");
    let d = Doorman::start(
        dir,
        &["-f".into(), unit.to_str().unwrap().into()],
        Opts::default(),
    );
    let t = std::thread::spawn(move || {
        let (mut c, _) = running.accept().unwrap();
        c.write_all(b"already up\n").unwrap();
    });
    assert_eq!(answer(d.addr(0)), "already up\n");
    t.join().unwrap();
    assert!(children_of(d.pid()).is_empty());
}

/// A reset on either side reaches the other as a reset, not an orderly
/// end: the backend's recv raises ECONNRESET when the client aborts, and
/// the client's read fails the same way when the backend aborts.
#[test]
fn resets_are_passed_on_both_ways() {
    let dir = TempDir::new();
    let seen = dir.path().join("seen");
    let script = py_backend(
        &dir,
        "rst.py",
        "import struct\n",
        &format!(
            "while True:\n\
             \x20   c, _ = l.accept(); first = c.recv(16)\n\
             \x20   if first == b'abort-me\\n':\n\
             \x20       c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); c.close(); continue\n\
             \x20   c.sendall(b'ack\\n')\n\
             \x20   try:\n\
             \x20       b = c.recv(16); what = 'eof' if not b else 'data'\n\
             \x20   except ConnectionResetError:\n\
             \x20       what = 'reset'\n\
             \x20   open({:?}, 'w').write(what); c.close()\n",
            seen.display()
        ),
    );
    let port = free_port();
    let p = port.to_string();
    let d = proxied(port, &[], &["/usr/bin/python3", &script, &p]);
    // The client aborts.
    let mut s = TcpStream::connect(d.addr(0)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this test owns.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(s);
    assert!(eventually(DEADLINE, || std::fs::read_to_string(&seen)
        .is_ok_and(|w| !w.is_empty())));
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "reset");
    // The backend aborts.
    let mut s = TcpStream::connect(d.addr(0)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"abort-me\n").unwrap();
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "an orderly end instead of a reset"
    );
    assert!(
        eventually(DEADLINE, || d.log.count(&["why=reset"]) == 2),
        "{}",
        d.log.text()
    );
}

/// Asleep means asleep with backends too: once the backend has been
/// stopped for being idle, doorman waits with no timeout and makes no
/// system call until something happens (here a SIGUSR1 ends the wait).
#[test]
fn idle_doorman_with_a_stopped_backend_makes_no_system_calls() {
    let dir = TempDir::new();
    let script = py_backend(
        &dir,
        "hello.py",
        "",
        "while True:\n\x20   c, _ = l.accept(); c.sendall(b'hello\\n'); c.close()\n",
    );
    let port = free_port();
    let p = port.to_string();
    let d = proxied(
        port,
        &["--idle-stop", "1s"],
        &["/usr/bin/python3", &script, &p],
    );
    assert_eq!(answer(d.addr(0)), "hello\n");
    assert!(d.log.wait_for(&["exit service="], DEADLINE).is_some());
    std::thread::sleep(Duration::from_millis(200));
    let (calls, out) = traced(&d, || {
        std::thread::sleep(Duration::from_millis(1500));
        d.signal(libc::SIGUSR1);
        assert!(d.log.wait_for(&["state service="], DEADLINE).is_some());
    });
    // The wait strace found doorman in had no timeout, and it ended only
    // for the signal: the next call reads the signalfd.
    let first = calls.first().expect("a call");
    assert!(
        first.starts_with("epoll_wait(") && first.contains(", -1) = 1"),
        "{out}"
    );
    assert!(
        calls.get(1).is_some_and(|c| c.starts_with("read(")),
        "{out}"
    );
}

/// Two services with their own backends in one loop; a reload with one
/// line changed keeps the other's backend running (same pid) and stops
/// the changed one's, whose next client starts the new program.
#[test]
fn several_backends_and_a_reload_that_changes_one() {
    let dir = TempDir::new();
    let script = py_backend(
        &dir,
        "say.py",
        "",
        "while True:\n\x20   c, _ = l.accept(); c.sendall(sys.argv[2].encode() + b'\\n'); c.close()\n",
    );
    let (a, b) = (free_port(), free_port());
    let line = |port: u16, word: &str| {
        format!(
            "127.0.0.1:0 stream tcp nowait,proxy-to={port} root /usr/bin/python3 python3 {script} {port} {word}\n"
        )
    };
    let conf = line(a, "alpha") + &line(b, "beta");
    let d = Doorman::with_conf(dir, &conf, &[]);
    assert_eq!(answer(d.addr(0)), "alpha\n");
    assert_eq!(answer(d.addr(1)), "beta\n");
    let kids = children_of(d.pid());
    assert_eq!(kids.len(), 2, "{kids:?}");
    let cmd = |pid: i32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .into_owned()
    };
    let alpha = kids
        .iter()
        .find(|(p, _)| cmd(*p).contains("alpha"))
        .unwrap()
        .0;
    let path = d.dir.path().join("doorman.conf");
    std::fs::write(&path, line(a, "alpha") + &line(b, "gamma")).unwrap();
    d.signal(libc::SIGHUP);
    assert!(
        d.log.wait_for(&["reload result=ok"], DEADLINE).is_some(),
        "{}",
        d.log.text()
    );
    // The beta backend is stopped; alpha's runs on untouched.
    assert!(eventually(DEADLINE, || children_of(d.pid()).len() == 1));
    assert_eq!(children_of(d.pid())[0].0, alpha);
    assert_eq!(answer(d.addr(0)), "alpha\n");
    assert_eq!(answer(d.addr(1)), "gamma\n");
    assert_eq!(
        d.log.count(&["backend-start service="]),
        3,
        "{}",
        d.log.text()
    );
}
