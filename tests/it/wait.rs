//! `wait` services (Accept=no): the listening socket handed to one
//! instance, stream and datagram; the seed's program; the spin guard.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

fn seed(file: &str) -> String {
    format!("{}/conf/seed/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// `nc` as the article does: connect, print what the service says.
fn nc(addr: std::net::SocketAddr) -> String {
    let out = Command::new("nc")
        .args(["-w", "10", &addr.ip().to_string(), &addr.port().to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("nc is required (apt-get install netcat-openbsd)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const GREETING: &str = "Hello! The service has been awakened to serve you.\n";

fn seed_runs_as_the_article_says(d: &Doorman) {
    // Asleep: nothing runs before the first knock.
    assert!(children_of(d.pid()).is_empty());
    assert_eq!(nc(d.addr(0)), GREETING);
    let wake = d.log.wait_for(&["wake service="], DEADLINE).unwrap();
    let pid = field(&wake, "pid");
    // It serves one connection and exits; doorman watches the socket again.
    assert!(
        d.log
            .wait_for(&[&format!("pid={pid} status=0")], DEADLINE)
            .is_some(),
        "{}",
        d.log.text()
    );
    assert!(eventually(DEADLINE, || children_of(d.pid()).is_empty()));
    // A second knock wakes a new instance.
    assert_eq!(nc(d.addr(0)), GREETING);
    assert!(eventually(DEADLINE, || d.log.count(&["wake service="]) == 2));
    let second = d
        .log
        .lines()
        .into_iter()
        .filter(|l| l.contains("wake service="))
        .nth(1)
        .unwrap();
    assert_ne!(field(&second, "pid"), pid);
}

#[test]
fn seed_program_unchanged_from_inetd_conf() {
    let conf = format!(
        "127.0.0.1:0 stream tcp wait,handover=fd3 root /usr/bin/python3 python3 {}\n",
        seed("my_app.py")
    );
    let d = Doorman::with_conf(TempDir::new(), &conf, &[]);
    assert!(d.log.text().contains("mode=wait handover=fd3"));
    seed_runs_as_the_article_says(&d);
}

#[test]
fn seed_program_unchanged_from_the_command_line() {
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--wait",
        "--handover",
        "fd3",
        "--name",
        "my_app",
        "--",
        "/usr/bin/python3",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([seed("my_app.py")])
    .collect();
    let d = Doorman::start(TempDir::new(), &args, Opts::default());
    seed_runs_as_the_article_says(&d);
}

/// A wait handler that accepts until idle for 1 s, answering with its pid.
const SERVE_UNTIL_IDLE: &str = r#"
import os, socket, sys
fd = int(sys.argv[1])
sock = socket.socket(fileno=fd)
sock.settimeout(1.0)
while True:
    try:
        conn, _ = sock.accept()
    except socket.timeout:
        break
    conn.sendall(b"%d\n" % os.getpid())
    conn.close()
"#;

#[test]
fn wait_stream_handler_serves_queued_clients() {
    let dir = TempDir::new();
    dir.write("serve.py", SERVE_UNTIL_IDLE, false);
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp wait root /usr/bin/python3 python3 {dir}/serve.py 0\n",
        &[],
    );
    // 50 clients spread over 3 s, several at once.
    let addr = d.addr(0);
    let start = Instant::now();
    let mut threads = Vec::new();
    for i in 0..50u64 {
        threads.push(std::thread::spawn(move || {
            let at = Duration::from_millis(i * 60);
            std::thread::sleep(at.saturating_sub(start.elapsed()));
            talk(addr, b"")
        }));
    }
    let pids: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        pids.iter()
            .all(|p| p.ends_with('\n') && p.trim().parse::<u32>().is_ok()),
        "{pids:?}"
    );
    let mut distinct = pids.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() < 10,
        "{} processes for 50 clients",
        distinct.len()
    );
    assert!(eventually(DEADLINE, || distinct.len()
        == d.log.count(&["wake service="])));
}

/// Fetches big.bin with the tftp-hpa client into `dest`; its bytes.
fn tftp_get(port: &str, dest: &std::path::Path) -> Vec<u8> {
    Command::new("tftp")
        .args(["-m", "binary", "127.0.0.1", port, "-c", "get", "big.bin"])
        .arg(dest)
        .status()
        .expect("tftp is required (apt-get install tftp-hpa)");
    std::fs::read(dest).unwrap_or_default()
}

#[test]
fn tftpd_over_udp_wait() {
    let dir = TempDir::new();
    let srv = dir.path().join("srv");
    std::fs::create_dir(&srv).unwrap();
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(srv.join("big.bin"), &data).unwrap();
    // -t 1: exit after 1 s without requests, so the second fetch proves
    // doorman re-armed the socket.
    let mut d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 dgram udp wait root /usr/sbin/in.tftpd in.tftpd -t 1 -s {dir}/srv\n",
        &["--stop-children"],
    );
    assert!(d.log.text().contains("type=dgram proto=udp4 mode=wait"));
    let port = d.addr(0).port().to_string();
    let out = d.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let fetch = |name: &str| tftp_get(&port, &out.join(name));
    assert!(fetch("first.bin") == data, "first fetch differs");
    assert!(
        d.log
            .wait_for(&["exit service=", "status=0"], DEADLINE)
            .is_some(),
        "{}",
        d.log.text()
    );
    assert!(fetch("second.bin") == data, "second fetch differs");
    assert!(
        eventually(DEADLINE, || d.log.count(&["wake service="]) == 2),
        "{}",
        d.log.text()
    );
    // Five at once.
    let results: Vec<_> = (0..5)
        .map(|i| {
            let port = port.clone();
            let dest = out.join(format!("c{i}.bin"));
            std::thread::spawn(move || tftp_get(&port, &dest))
        })
        .collect();
    for r in results {
        assert!(r.join().unwrap() == data, "a concurrent fetch differs");
    }
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn spin_guard_pauses_a_handler_that_never_accepts() {
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp wait root /bin/true true\n127.0.0.1:0 stream tcp nowait root /bin/echo echo alive\n",
        &[],
    );
    // The client stays queued: /bin/true never accepts it.
    let mut s = connect(d.addr(0));
    let line = d.log.wait_for(&["pause service=", "reason=spin"], DEADLINE);
    assert!(line.is_some(), "{}", d.log.text());
    assert!(line.unwrap().contains("exited 5 times in a row"));
    // Exactly the guard's count of spawns, then nothing more.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.log.count(&["wake service=0/tcp"]), 5, "{}", d.log.text());
    // The other service is unaffected; the spinning one's client is not served.
    assert_eq!(talk(d.addr(1), b""), "alive\n");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert!(s.read(&mut buf).is_err());
}

#[test]
fn seed_wait_handler_is_not_mistaken_for_a_spin() {
    // The seed serves one connection per instance: with 8 clients queued,
    // each instance exits quickly with the socket still readable, but it
    // made progress, so no pause.
    let conf = format!(
        "127.0.0.1:0 stream tcp wait,handover=fd3 root /usr/bin/python3 python3 {}\n",
        seed("my_app.py")
    );
    let d = Doorman::with_conf(TempDir::new(), &conf, &[]);
    let addr = d.addr(0);
    let clients: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || talk(addr, b"")))
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), GREETING);
    }
    assert_eq!(d.log.count(&["pause service="]), 0, "{}", d.log.text());
}

#[test]
fn dgram_wait_max_child_shares_the_socket() {
    // Each instance reads one datagram, records it, holds on for a while.
    let dir = TempDir::new();
    dir.write(
        "slow.py",
        "import os, socket, sys, time\ns = socket.socket(fileno=0)\nd = s.recv(100)\nopen(os.path.join(sys.argv[1], d.decode()), 'w').write(str(os.getpid()))\ntime.sleep(1.5)\n",
        false,
    );
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 dgram udp wait/3 root /usr/bin/python3 python3 {dir}/slow.py {dir}\n",
        &[],
    );
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut most = 0;
    for i in 0..5 {
        sock.send_to(format!("d{i}").as_bytes(), d.addr(0)).unwrap();
        let until = Instant::now() + Duration::from_millis(350);
        while Instant::now() < until {
            most = most.max(children_of(d.pid()).len());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // All five datagrams served, by at most three instances at a time.
    assert!(eventually(DEADLINE, || (0..5).all(|i| d
        .dir
        .path()
        .join(format!("d{i}"))
        .exists())));
    assert_eq!(most, 3, "{}", d.log.text());
    assert!(
        eventually(DEADLINE, || d.log.count(&["wake service="]) == 5),
        "{}",
        d.log.text()
    );
}
