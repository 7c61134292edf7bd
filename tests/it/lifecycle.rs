//! Reload, shutdown, PID 1, readiness, pidfile, JSON logs, state dump and
//! metrics.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

fn sighup(d: &Doorman) {
    d.signal(libc::SIGHUP);
}

fn reloads(d: &Doorman, result: &str) -> usize {
    d.log.count(&["reload result=", result])
}

/// The socket inode behind each of doorman's fds.
fn socket_inodes(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.starts_with("socket:"))
        .collect();
    v.sort();
    v
}

/// The `took=N.Nms` field of a log line, as milliseconds.
fn took(line: &str) -> f64 {
    let v = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("took="))
        .unwrap_or_else(|| panic!("no took= in {line:?}"));
    let ms = v
        .strip_suffix("ms")
        .unwrap_or_else(|| panic!("{v:?} is not N.Nms"));
    assert!(
        ms.split_once('.').is_some_and(|(_, d)| d.len() == 1),
        "{v:?}"
    );
    ms.parse().unwrap_or_else(|_| panic!("{v:?} is not N.Nms"))
}

#[test]
fn ready_and_reload_lines_say_how_long_they_took() {
    let dir = TempDir::new();
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait root /bin/echo echo one\n",
        &[],
    );
    let conf = d.dir.path().join("doorman.conf");
    let ready = d
        .log
        .wait_for(&["ready services=1"], DEADLINE)
        .expect("ready line");
    took(&ready);
    sighup(&d);
    let ok = d.log.wait_for(&["reload result=ok"], DEADLINE);
    took(&ok.unwrap_or_else(|| d.log.text()));
    std::fs::write(&conf, "127.0.0.1:0 stream tcp nowait root\n").unwrap();
    sighup(&d);
    let failed = d.log.wait_for(&["reload result=failed"], DEADLINE);
    took(&failed.unwrap_or_else(|| d.log.text()));
}

#[test]
fn reload_adds_removes_and_changes_services() {
    let dir = TempDir::new();
    let d = Doorman::with_conf(dir, "127.0.0.1:0 stream tcp nowait root /bin/echo echo one\n127.0.0.2:0 stream tcp nowait root /bin/echo echo two\n", &[]);
    let conf = d.dir.path().join("doorman.conf");
    let (one, two) = (d.addr(0), d.addr(1));
    assert_eq!(talk(one, b""), "one\n");
    assert_eq!(talk(two, b""), "two\n");
    let before = socket_inodes(d.pid());
    // Changed program on the same socket, one service removed, one added.
    std::fs::write(
        &conf,
        "127.0.0.1:0 stream tcp nowait root /bin/echo echo uno\n127.0.0.3:0 stream tcp nowait root /bin/echo echo tres\n",
    )
    .unwrap();
    sighup(&d);
    assert!(
        d.log.wait_for(&["reload result=ok"], DEADLINE).is_some(),
        "{}",
        d.log.text()
    );
    assert_eq!(talk(one, b""), "uno\n");
    assert!(
        std::net::TcpStream::connect(two).is_err(),
        "removed service still listens"
    );
    let closed = format!("close service=0/tcp addr={two}");
    assert!(d.log.text().contains(&closed), "{}", d.log.text());
    let added = d
        .log
        .wait_for(&["listen service=", "addr=127.0.0.3:"], DEADLINE)
        .unwrap();
    let tres = field(&added, "addr").parse().unwrap();
    assert_eq!(talk(tres, b""), "tres\n");
    // The kept socket is the same socket (same inode), not a rebind.
    let after = socket_inodes(d.pid());
    let kept = before.iter().filter(|s| after.contains(s)).count();
    assert!(kept >= 1, "before {before:?} after {after:?}");
}

#[test]
fn bad_reload_keeps_the_old_configuration() {
    let dir = TempDir::new();
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait root /bin/echo echo kept\n",
        &[],
    );
    let conf = d.dir.path().join("doorman.conf");
    let before = socket_inodes(d.pid());
    std::fs::write(
        &conf,
        "127.0.0.1:0 stream tcp nowait nosuchuser /bin/echo echo new\nbroken line\n",
    )
    .unwrap();
    sighup(&d);
    assert!(
        d.log
            .wait_for(&["reload result=failed"], DEADLINE)
            .is_some(),
        "{}",
        d.log.text()
    );
    let text = d.log.text();
    assert!(
        text.contains(&format!(
            "reload: {}:1: user: unknown user \"nosuchuser\"",
            conf.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "reload: {}:2: expected at least 6 fields",
            conf.display()
        )),
        "{text}"
    );
    assert_eq!(talk(d.addr(0), b""), "kept\n");
    assert_eq!(socket_inodes(d.pid()), before);
}

#[test]
fn queued_connections_survive_a_reload() {
    let dir = TempDir::new();
    dir.write("hold", "#!/bin/sh\necho started\nread x\n", true);
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait/1 root {dir}/hold hold\n",
        &[],
    );
    let s1 = connect(d.addr(0));
    let mut r1 = BufReader::new(s1.try_clone().unwrap());
    let mut l = String::new();
    r1.read_line(&mut l).unwrap();
    // Queued in the backlog while the first runs.
    let s2 = connect(d.addr(0));
    let mut r2 = BufReader::new(s2);
    sighup(&d);
    assert!(d.log.wait_for(&["reload result=ok"], DEADLINE).is_some());
    (&s1).write_all(b"done\n").unwrap();
    l.clear();
    r2.read_line(&mut l).unwrap();
    assert_eq!(l, "started\n");
}

#[test]
fn reload_storm_refuses_no_connection() {
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait.0 root /bin/echo echo ok\n",
        &[],
    );
    let addr = d.addr(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let client = std::thread::spawn(move || {
        let mut served = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) && served < 2000 {
            assert_eq!(talk(addr, b""), "ok\n", "connection {served} not served");
            served += 1;
        }
        served
    });
    // One SIGHUP after the other is read: signals of one kind that are
    // pending together are one (the signalfd reads them as one).
    for i in 1..=50 {
        sighup(&d);
        assert!(
            eventually(DEADLINE, || reloads(&d, "ok") == i),
            "{}",
            reloads(&d, "ok")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let served = client.join().unwrap();
    assert!(served > 50, "only {served} connections during the storm");
    assert_eq!(d.log.count(&["refuse"]), 0);
}

#[test]
fn on_stop_term_kills_a_handler_that_ignores_sigterm() {
    let dir = TempDir::new();
    dir.write(
        "stubborn",
        "#!/bin/sh\ntrap '' TERM\necho started\nsleep 30\n",
        true,
    );
    let mut d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait root {dir}/stubborn stubborn\n",
        &["--on-stop", "term", "--stop-timeout", "1"],
    );
    let s = connect(d.addr(0));
    let mut r = BufReader::new(s);
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(d.stop().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = d.log.text();
    assert!(
        text.contains("still running after 1s, sending SIGKILL"),
        "{text}"
    );
    assert!(text.contains("signal=SIGKILL"), "{text}");
}

#[test]
fn pid1_in_a_pid_namespace_reaps_orphans_and_stops_cleanly() {
    if !is_root() {
        eprintln!("SKIPPED: pid1 test needs root for unshare --pid");
        return;
    }
    let dir = TempDir::new();
    // The handler leaves a grandchild behind that exits a bit later.
    dir.write(
        "orphan",
        "#!/bin/sh\n(sleep 0.5; exit 3) &\necho parent-done\n",
        true,
    );
    let conf = dir.write(
        "doorman.conf",
        &format!(
            "127.0.0.1:0 stream tcp nowait root {}/orphan orphan\n",
            dir.path().display()
        ),
        false,
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        BIN,
        "-v",
        "-f",
        conf.to_str().unwrap(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .env("RUST_LOG", "debug");
    let mut child = cmd.spawn().unwrap();
    let log = Log::default();
    let l2 = log.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l2.push_line(line);
        }
    });
    let ready = log
        .wait_for(&["listen service="], DEADLINE)
        .expect("doorman started");
    assert!(ready.contains("doorman[1]:"), "not PID 1: {ready}");
    let addr = field(&ready, "addr").parse().unwrap();
    assert_eq!(talk(addr, b""), "parent-done\n");
    // The orphan is re-parented to PID 1, doorman, and reaped.
    assert!(
        log.wait_for(&["reaped orphan", "status=3"], DEADLINE)
            .is_some(),
        "{}",
        log.text()
    );
    // doorman's pid in our namespace is unshare's child.
    let inner = children_of(child.id() as i32);
    assert_eq!(inner.len(), 1);
    assert!(children_of(inner[0].0).iter().all(|(_, st)| *st != 'Z'));
    // SIGTERM to PID 1 is handled (PID 1 has no default handlers).
    // SAFETY: kill on the doorman we started (through unshare), by pid.
    unsafe { libc::kill(inner[0].0, libc::SIGTERM) };
    let st = wait_child(&mut child, DEADLINE).expect("exit");
    assert_eq!(st.code(), Some(0), "{}", log.text());
}

#[test]
fn notify_socket_gets_ready_reloading_and_stopping() {
    let dir = TempDir::new();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let conf = dir.write(
        "doorman.conf",
        "127.0.0.1:0 stream tcp nowait root /bin/echo echo x\n",
        false,
    );
    let mut d = Doorman::start(
        TempDir::new(),
        &["-f".into(), conf.to_str().unwrap().into()],
        Opts {
            env: vec![("NOTIFY_SOCKET".into(), sock_path.to_str().unwrap().into())],
            ..Opts::default()
        },
    );
    let mut buf = [0u8; 1024];
    let mut recv = || {
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let m = recv();
    assert!(m.starts_with("READY=1\nSTATUS=serving 1 services"), "{m}");
    d.signal(libc::SIGHUP);
    let m = recv();
    assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{m}");
    assert!(recv().starts_with("READY=1"));
    d.stop();
    assert_eq!(recv(), "STOPPING=1");
    // Handlers never see doorman's NOTIFY_SOCKET.
    drop(sock);
}

#[test]
fn pidfile_and_reload_command() {
    let dir = TempDir::new();
    let pidfile = dir.path().join("doorman.pid");
    let conf = dir.write(
        "doorman.conf",
        "127.0.0.1:0 stream tcp nowait root /bin/echo echo x\n",
        false,
    );
    let mut d = Doorman::start(
        TempDir::new(),
        &[
            "-f".into(),
            conf.to_str().unwrap().into(),
            "--pidfile".into(),
            pidfile.to_str().unwrap().into(),
        ],
        Opts::default(),
    );
    assert!(eventually(DEADLINE, || std::fs::read_to_string(&pidfile)
        .is_ok_and(|s| s == format!("{}\n", d.pid()))));
    let (code, _, err) = run(&["--reload", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(d.log.wait_for(&["reload result=ok"], DEADLINE).is_some());
    assert_eq!(d.stop().code(), Some(0));
    assert!(!pidfile.exists());
    let (code, _, err) = run(&["--reload", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn json_log_lines_and_state_dump() {
    let dir = TempDir::new();
    dir.write("hold", "#!/bin/sh\necho started\nread x\n", true);
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait root {dir}/hold hold\n",
        &["--log-format", "json"],
    );
    let s = connect(d.addr(0));
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    d.signal(libc::SIGUSR1);
    assert!(
        d.log
            .wait_for(&["\"event\":\"state\"", "\"child\":"], DEADLINE)
            .is_some(),
        "{}",
        d.log.text()
    );
    (&s).write_all(b"x\n").unwrap();
    assert!(d.log.wait_for(&["\"event\":\"exit\""], DEADLINE).is_some());
    // Every line is one JSON object; check with python's parser.
    let lines = d
        .log
        .lines()
        .into_iter()
        .filter(|l| l != "<eof>")
        .collect::<Vec<_>>()
        .join("\n");
    let check = r#"
import json, sys
events = {}
for line in sys.stdin:
    o = json.loads(line)
    assert "ts" in o and "level" in o, o
    if "event" in o:
        events.setdefault(o["event"], []).append(o)
a = events["accept"][0]
assert a["service"].endswith("/tcp") and isinstance(a["pid"], int) and a["peer"].startswith("127.0.0.1:"), a
e = events["exit"][0]
assert e["pid"] == a["pid"] and e["status"] == 0 and isinstance(e["duration_ms"], int), e
assert a["local"].startswith("127.0.0.1:"), a
assert any("child" in s for s in events["state"]), events["state"]
print("ok")
"#;
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", check])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = py.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "{}\n{lines}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_endpoint_counts_the_traffic() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let maddr = probe.local_addr().unwrap();
    drop(probe);
    let dir = TempDir::new();
    let conf = dir.write(
        "doorman.conf",
        "127.0.0.1:0 stream tcp nowait root /bin/echo echo ok\n127.0.0.1:0 stream tcp nowait root /bin/false false\n",
        false,
    );
    let d = Doorman::start(
        TempDir::new(),
        &[
            "-f".into(),
            conf.to_str().unwrap().into(),
            "--metrics".into(),
            maddr.to_string(),
        ],
        Opts::default(),
    );
    for _ in 0..7 {
        assert_eq!(talk(d.addr(0), b""), "ok\n");
    }
    for _ in 0..3 {
        talk(d.addr(1), b"");
    }
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 10));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{maddr}/metrics"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc = |n: &str| format!("service=\"0/tcp\"{n}");
    let value = |prefix: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    // Both services are labelled 0/tcp (port 0): the counters add up.
    assert_eq!(
        value(&format!("doorman_accepted_total{{{}}}", svc(""))),
        [10.0],
        "{text}"
    );
    assert_eq!(
        value(&format!(
            "doorman_exits_total{{{}",
            svc(",outcome=\"success\"}")
        )),
        [7.0],
        "{text}"
    );
    assert_eq!(
        value(&format!(
            "doorman_exits_total{{{}",
            svc(",outcome=\"failure\"}")
        )),
        [3.0],
        "{text}"
    );
    assert_eq!(value("doorman_handler_duration_seconds_count"), [10.0]);
    assert!(value("doorman_open_fds")[0] > 3.0);
    // The exposition format: every sample line is NAME{LABELS} VALUE or NAME VALUE, with TYPE lines.
    for l in text.lines() {
        if l.starts_with('#') {
            assert!(l.starts_with("# HELP ") || l.starts_with("# TYPE "), "{l}");
            continue;
        }
        let (name, v) = l.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "{l}");
        let base = name.split('{').next().unwrap();
        assert!(
            base.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{l}"
        );
    }
    // Counters keep their values across a reload.
    d.signal(libc::SIGHUP);
    assert!(d.log.wait_for(&["reload result=ok"], DEADLINE).is_some());
    let again = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{maddr}/metrics"),
        ])
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.contains("doorman_accepted_total{service=\"0/tcp\"} 10\n"),
        "{again}"
    );
    // Idle again afterwards: no scrape left open.
    assert!(d.log.count(&["error"]) == 0, "{}", d.log.text());
}

#[test]
fn daemonizing_wait_handler_holds_its_socket() {
    // The handler forks a grandchild that serves the connection after a
    // moment and exits itself at once: the socket stays handed over until
    // the grandchild is gone (doorman is its subreaper), no second wake.
    let dir = TempDir::new();
    dir.write(
        "daemon.py",
        "import os, socket, time\nif os.fork() == 0:\n    time.sleep(0.5)\n    l = socket.socket(fileno=0)\n    c, _ = l.accept()\n    c.sendall(b'from the grandchild\\n')\n    c.close()\n    os._exit(0)\nos._exit(0)\n",
        false,
    );
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp wait root /usr/bin/python3 python3 {dir}/daemon.py\n",
        &[],
    );
    assert_eq!(talk(d.addr(0), b""), "from the grandchild\n");
    assert_eq!(d.log.count(&["wake service="]), 1, "{}", d.log.text());
    assert_eq!(d.log.count(&["pause service="]), 0, "{}", d.log.text());
    // Once the grandchild is gone, the next client wakes a new instance.
    assert_eq!(talk(d.addr(0), b""), "from the grandchild\n");
    assert!(eventually(DEADLINE, || d.log.count(&["wake service="]) == 2));
}

#[test]
fn busy_wait_socket_stays_handed_over_across_a_reload() {
    let dir = TempDir::new();
    dir.write(
        "slow.py",
        "import socket, time\nl = socket.socket(fileno=0)\nc, _ = l.accept()\ntime.sleep(1)\nc.sendall(b'slow\\n')\n",
        false,
    );
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp wait root /usr/bin/python3 python3 {dir}/slow.py\n",
        &[],
    );
    let addr = d.addr(0);
    let first = std::thread::spawn(move || talk(addr, b""));
    assert!(d.log.wait_for(&["wake service="], DEADLINE).is_some());
    // A second client queues while the handler runs; a reload must not
    // hand the socket to a second instance meanwhile.
    let second = std::thread::spawn(move || talk(addr, b""));
    sighup(&d);
    assert!(d.log.wait_for(&["reload result=ok"], DEADLINE).is_some());
    assert_eq!(first.join().unwrap(), "slow\n");
    assert_eq!(second.join().unwrap(), "slow\n");
    // Exactly one instance at a time: the second woke after the first exited.
    let lines = d.log.lines();
    let first_exit = lines
        .iter()
        .position(|l| l.contains("exit service="))
        .unwrap();
    let second_wake = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("wake service="))
        .nth(1)
        .unwrap()
        .0;
    assert!(second_wake > first_exit, "{}", d.log.text());
}

#[test]
fn daemon_mode_detaches_and_stops_by_pidfile() {
    let dir = TempDir::new();
    let pidfile = dir.path().join("d.pid");
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let conf = dir.write(
        "doorman.conf",
        &format!("{addr} stream tcp nowait root /bin/echo echo daemon\n"),
        false,
    );
    let st = Command::new(BIN)
        .args([
            "--daemon",
            "--pidfile",
            pidfile.to_str().unwrap(),
            "-f",
            conf.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0), "the launching process exits at once");
    assert!(eventually(DEADLINE, || std::fs::read_to_string(&pidfile).is_ok()));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Stopped even if an assertion below fails.
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // Only if that pid is still our doorman (pids are reused).
            let ours = std::fs::read(format!("/proc/{}/cmdline", self.0))
                .is_ok_and(|c| c.windows(8).any(|w| w == b"--daemon"));
            if ours {
                // SAFETY: signalling the daemon this test started, by its pid.
                unsafe { libc::kill(self.0, libc::SIGKILL) };
            }
        }
    }
    let _guard = KillOnDrop(pid);
    assert!(eventually(DEADLINE, || std::net::TcpStream::connect(addr).is_ok()));
    assert_eq!(talk(addr, b""), "daemon\n");
    // Detached: a session of its own (of which, double-forked, it is not
    // the leader, so it can never take a terminal), and not our child.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // SAFETY: getsid(0) has no preconditions.
    let our_session = unsafe { libc::getsid(0) };
    assert_ne!(f[3], our_session.to_string());
    assert_ne!(f[3], pid.to_string());
    assert_ne!(f[1], std::process::id().to_string());
    // SAFETY: signalling the daemon we started, by the pid it wrote.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(eventually(DEADLINE, || !pidfile.exists()));
    assert!(eventually(DEADLINE, || std::fs::read_to_string(format!(
        "/proc/{pid}/stat"
    ))
    .map_or(true, |s| s.contains(") Z"))));
}

#[test]
fn daemon_start_failure_is_not_hidden() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = TempDir::new();
    let conf = dir.write(
        "doorman.conf",
        &format!("{addr} stream tcp nowait root /bin/echo echo x\n"),
        false,
    );
    let out = Command::new(BIN)
        .args(["--daemon", "-f", conf.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("bind {addr}: Address already in use")),
        "{err}"
    );
}

#[test]
fn metrics_count_with_logging_off() {
    // With -q (and no RUST_LOG) no accept or exit line is built at all;
    // the counters must not depend on the log.
    let free = || {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let (maddr, addr) = (free(), free());
    let mut child = Command::new(BIN)
        .args(["-q", "--metrics", &maddr.to_string(), "--listen"])
        .arg(addr.to_string())
        .args(["--", "/bin/echo", "ok"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(DEADLINE, || std::net::TcpStream::connect(addr).is_ok()));
    for _ in 0..5 {
        assert_eq!(talk(addr, b""), "ok\n");
    }
    let line = "doorman_exits_total{service=\"echo/tcp\",outcome=\"success\"} ";
    let mut text = String::new();
    let counted = eventually(DEADLINE, || {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                &format!("http://{maddr}/metrics"),
            ])
            .output()
            .expect("curl");
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The first connection (the readiness probe) counts too.
        text.lines().any(|l| l == format!("{line}6"))
    });
    // SAFETY: signalling the doorman we started, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_child(&mut child, DEADLINE).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(counted, "{line}6 not in:\n{text}");
    assert!(!err.contains("exit service="), "{err}");
}

/// A reload of a 1,000-service file with one line's address changed
/// re-binds exactly that socket: 999 sockets are the same sockets
/// (inodes) before and after, one is closed and one is new.
#[test]
fn reload_of_a_thousand_services_rebinds_only_the_changed_line() {
    let port = free_port();
    let line =
        |i: usize, host: &str| format!("{host}:{port} stream tcp nowait root /bin/echo echo {i}\n");
    let host = |i: usize| format!("127.0.{}.{}", 10 + i / 250, 1 + i % 250);
    let conf: String = (0..1000).map(|i| line(i, &host(i))).collect();
    let d = Doorman::with_conf(TempDir::new(), &conf, &[]);
    assert_eq!(d.addrs.len(), 1000);
    // The 1,000 sockets were born above fd 1024 (the fds below were held
    // by placeholders meanwhile, all closed again): doorman holds its
    // listeners and a handful of its own, nothing more.
    assert!(lifted_listeners(d.pid(), 1000), "listeners not lifted");
    let fds = fds_of(d.pid());
    assert!(fds.len() < 1000 + 16, "doorman holds {} fds", fds.len());
    let before = socket_inodes(d.pid());
    let path = d.dir.path().join("doorman.conf");
    let changed: String = (0..1000)
        .map(|i| {
            line(
                i,
                &if i == 500 {
                    "127.0.9.9".to_string()
                } else {
                    host(i)
                },
            )
        })
        .collect();
    std::fs::write(&path, changed).unwrap();
    sighup(&d);
    assert!(
        d.log.wait_for(&["reload result=ok"], DEADLINE).is_some(),
        "{}",
        d.log.text()
    );
    let after = socket_inodes(d.pid());
    let gone: Vec<_> = before.iter().filter(|s| !after.contains(s)).collect();
    let new: Vec<_> = after.iter().filter(|s| !before.contains(s)).collect();
    assert_eq!((gone.len(), new.len()), (1, 1), "gone {gone:?} new {new:?}");
    let at = |h: &str| {
        format!("{h}:{port}")
            .parse::<std::net::SocketAddr>()
            .unwrap()
    };
    assert_eq!(talk(at("127.0.9.9"), b""), "500\n");
    assert_eq!(talk(at(&host(499)), b""), "499\n");
    assert!(std::net::TcpStream::connect(at(&host(500))).is_err());
    assert_eq!(d.log.count(&["listen service="]), 1001);
}
