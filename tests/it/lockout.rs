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
    let d = listen_sh(handler, Opts::default());
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
    let metrics = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    assert!(metrics.contains("State:"));
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
