//! The spawn fast path (`clone(CLONE_VM | CLONE_VFORK)`, pinned with
//! `DOORMAN_SPAWN=clone`) under stress, and everything a handler is
//! promised, checked through it and through the fork path alike.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;

/// Starts doorman on `conf` with the spawn method pinned.
fn start(conf: &str, method: &str, dir: TempDir) -> Doorman {
    let conf = conf.replace("{dir}", dir.path().to_str().unwrap());
    let path = dir.write("doorman.conf", &conf, false);
    Doorman::start(
        dir,
        &["-f".into(), path.to_str().unwrap().into()],
        Opts {
            env: vec![("DOORMAN_SPAWN".into(), method.into())],
            ..Opts::default()
        },
    )
}

/// `n` connections, `c` at a time, each read to EOF: the number whose
/// reply was not exactly `want`.
fn hammer(addr: SocketAddr, n: usize, c: usize, want: &[u8]) -> usize {
    hammer_any(addr, n, c, &[want])
}

/// As [`hammer`], where any of `wants` is a right reply.
fn hammer_any(addr: SocketAddr, n: usize, c: usize, wants: &[&[u8]]) -> usize {
    let wants: Vec<Vec<u8>> = wants.iter().map(|w| w.to_vec()).collect();
    let left = Arc::new(AtomicUsize::new(n));
    let bad = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..c)
        .map(|_| {
            let (left, bad) = (left.clone(), bad.clone());
            let wants = wants.clone();
            std::thread::spawn(move || {
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                    .is_ok()
                {
                    let ok = std::net::TcpStream::connect_timeout(&addr, DEADLINE)
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(DEADLINE))?;
                            let mut out = Vec::new();
                            s.read_to_end(&mut out)?;
                            Ok(wants.contains(&out))
                        })
                        .unwrap_or(false);
                    if !ok {
                        bad.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    bad.load(Ordering::SeqCst)
}

#[test]
fn twenty_thousand_connections_at_c64_through_clone() {
    let d = start(
        "127.0.0.1:0 stream tcp nowait.0 root /bin/echo echo ok\n",
        "clone",
        TempDir::new(),
    );
    let fds_before = d.fd_count();
    // Zombies sampled during the flood: the reaper runs every turn, so
    // they never pile up (a starved reaper leaves thousands).
    let pid = d.pid();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut worst = 0;
            while !done.load(Ordering::SeqCst) {
                let z = children_of(pid).iter().filter(|(_, s)| *s == 'Z').count();
                worst = worst.max(z);
                std::thread::sleep(Duration::from_millis(20));
            }
            worst
        })
    };
    let bad = hammer(d.addr(0), 20_000, 64, b"ok\n");
    done.store(true, Ordering::SeqCst);
    let worst = sampler.join().unwrap();
    assert_eq!(bad, 0, "failed connections");
    assert!(worst < 300, "{worst} zombies at once during the flood");
    assert!(
        eventually(DEADLINE, || d.log.count(&["exit service="]) == 20_000),
        "{} exits logged",
        d.log.count(&["exit service="])
    );
    assert!(
        eventually(DEADLINE, || children_of(d.pid()).is_empty()),
        "children left: {:?}",
        children_of(d.pid())
    );
    assert!(d.zombies().is_empty());
    assert_eq!(d.fd_count(), fds_before);
    // Every one went through clone: no spawn failure, no error logged.
    assert_eq!(d.log.count(&["error"]), 0, "{}", d.log.text());
}

/// Reports the handler's fds (kind and blocking), its environment's
/// LISTEN_* and its own pid, and its ids. (Not its signals: python sets
/// its own; `/bin/cat /proc/self/status` shows those.)
const PROBE_PY: &str = r#"
import os, stat, sys
out = []
# Every fd, however high (doorman keeps many listeners above 1024); the
# listing's own fd is closed by the time it is looked at.
for fd in sorted(int(x) for x in os.listdir("/proc/self/fd")):
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    kind = "socket" if stat.S_ISSOCK(st.st_mode) else "null" if stat.S_ISCHR(st.st_mode) else "other"
    block = "nonblock" if os.get_blocking(fd) is False else "block"
    out.append("fd %d %s %s" % (fd, kind, block))
out.append("pid %d listen_pid %s fds %s" % (os.getpid(), os.environ.get("LISTEN_PID", "-"), os.environ.get("LISTEN_FDS", "-")))
out.append("ids %d %d %d %d groups %s" % (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())))
os.write(int(sys.argv[1]), ("\n".join(out) + "\n").encode())
"#;

/// Extra services that make doorman lift its listeners above fd 1024 (see
/// `listen::plan_fds`): then a spawn shares doorman's fd table and the
/// child copies only the low fds.
fn many_listeners() -> String {
    "127.0.0.1:0 stream tcp nowait root /bin/true true\n".repeat(70)
}

fn probe(method: &str) {
    probe_with(method, "")
}

fn probe_with(method: &str, extra: &str) {
    let dir = TempDir::new();
    dir.write("probe.py", PROBE_PY, false);
    let mut conf = String::from(
        "127.0.0.1:0 stream tcp nowait,handover=inetd root /usr/bin/python3 python3 {dir}/probe.py 1\n\
         127.0.0.1:0 stream tcp nowait,handover=stdio root /usr/bin/python3 python3 {dir}/probe.py 1\n\
         127.0.0.1:0 stream tcp nowait,handover=fd3 root /usr/bin/python3 python3 {dir}/probe.py 3\n\
         127.0.0.1:0 stream tcp nowait root /bin/cat cat /proc/self/status\n"
    );
    if is_root() {
        conf += "127.0.0.1:0 stream tcp nowait nobody /usr/bin/python3 python3 {dir}/probe.py 1\n";
    } else {
        eprintln!("SKIPPED: the privilege drop part of probe({method}) needs root");
    }
    conf += extra;
    let d = start(&conf, method, dir);
    if !extra.is_empty() {
        assert!(
            lifted_listeners(d.pid(), 70),
            "{method}: listeners not lifted"
        );
    }

    let out = talk(d.addr(0), b"");
    let fds: Vec<&str> = out.lines().filter(|l| l.starts_with("fd ")).collect();
    assert_eq!(
        fds,
        [
            "fd 0 socket block",
            "fd 1 socket block",
            "fd 2 socket block"
        ],
        "{method} inetd:\n{out}"
    );

    let out = talk(d.addr(1), b"");
    let fds: Vec<&str> = out.lines().filter(|l| l.starts_with("fd ")).collect();
    assert_eq!(fds.len(), 3, "{method} stdio:\n{out}");
    assert_eq!(fds[..2], ["fd 0 socket block", "fd 1 socket block"]);
    assert!(fds[2].starts_with("fd 2 other"), "{method} stdio:\n{out}");

    let out = talk(d.addr(2), b"");
    let fds: Vec<&str> = out.lines().filter(|l| l.starts_with("fd ")).collect();
    assert_eq!(fds.len(), 4, "{method} fd3:\n{out}");
    assert_eq!(fds[..2], ["fd 0 null block", "fd 1 null block"]);
    assert_eq!(fds[3], "fd 3 socket block");
    let pid_line = out.lines().find(|l| l.starts_with("pid ")).unwrap();
    let w: Vec<&str> = pid_line.split_whitespace().collect();
    assert_eq!(w[1], w[3], "{method}: LISTEN_PID is the handler's own pid");
    assert_eq!(w[5], "1");

    // No blocked, ignored or caught signal among 1-31 (32 and 33 are
    // glibc's own and a test runner may pass them on ignored).
    let out = talk(d.addr(3), b"");
    for key in ["SigBlk", "SigIgn", "SigCgt"] {
        let line = out.lines().find(|l| l.starts_with(key)).unwrap();
        let mask = u64::from_str_radix(line.split_whitespace().last().unwrap(), 16).unwrap();
        assert_eq!(mask & 0x7fff_ffff, 0, "{method}: {line}");
    }

    if is_root() {
        let out = talk(d.addr(4), b"");
        let ids = out.lines().find(|l| l.starts_with("ids ")).unwrap();
        assert!(ids.starts_with("ids 65534 65534 "), "{method}: {ids}");
        assert!(!ids.contains("groups [0"), "{method}: {ids}");
    }
}

#[test]
fn handover_modes_and_privilege_drop_through_clone() {
    probe("clone");
}

#[test]
fn handover_modes_and_privilege_drop_through_vfork() {
    probe("vfork");
}

#[test]
fn handover_modes_and_privilege_drop_through_fork() {
    probe("fork");
}

// With its listeners lifted doorman hands over exactly the same fds: the
// detached child (clone) and the vfork child share its fd table until
// their first step, which copies the low fds only.
#[test]
fn handover_modes_and_privilege_drop_with_many_listeners_through_clone() {
    probe_with("clone", &many_listeners());
}

#[test]
fn handover_modes_and_privilege_drop_with_many_listeners_through_vfork() {
    probe_with("vfork", &many_listeners());
}

#[test]
fn exec_failure_reports_its_errno_with_many_listeners() {
    exec_errors_with("clone", &many_listeners());
    exec_errors_with("vfork", &many_listeners());
}

/// doorman holds a connection for a detached child that shares its fd
/// table only until that child has its own copy: a handler that closes
/// the connection and lingers leaves the client at EOF, and doorman's
/// fd count comes back, while it still runs.
#[test]
fn a_lingering_handler_that_closed_its_socket_leaves_the_client_at_eof() {
    let dir = TempDir::new();
    dir.write(
        "linger",
        "#!/bin/sh\necho bye\nexec </dev/null >/dev/null 2>&1\nexec sleep 30\n",
        true,
    );
    let conf =
        "127.0.0.1:0 stream tcp nowait root {dir}/linger linger\n".to_string() + &many_listeners();
    let d = start(&conf, "clone", dir);
    assert!(lifted_listeners(d.pid(), 70));
    let fds_before = d.fd_count();
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(d.addr(0)).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out, "bye\n");
    }
    let sleepers = children_of(d.pid());
    assert_eq!(sleepers.len(), 3, "the handlers still run: {sleepers:?}");
    assert!(
        eventually(DEADLINE, || d.fd_count() == fds_before),
        "doorman holds {} fds, {fds_before} before",
        d.fd_count()
    );
    for (pid, _) in sleepers {
        // SAFETY: a handler this test's doorman started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

fn exec_errors(method: &str) {
    exec_errors_with(method, "")
}

fn exec_errors_with(method: &str, extra: &str) {
    let dir = TempDir::new();
    dir.write("noexec", "#!/bin/sh\necho never\n", false);
    let conf = "127.0.0.1:0 stream tcp nowait root /nonexistent/prog prog\n\
         127.0.0.1:0 stream tcp nowait root {dir}/noexec noexec\n\
         127.0.0.1:0 stream tcp nowait root /bin/echo echo still here\n"
        .to_string()
        + extra;
    let d = start(&conf, method, dir);
    assert_eq!(talk(d.addr(0), b""), "");
    assert_eq!(talk(d.addr(1), b""), "");
    assert!(
        d.log
            .wait_for(
                &["exec /nonexistent/prog: No such file or directory"],
                DEADLINE
            )
            .is_some(),
        "{method}: {}",
        d.log.text()
    );
    assert!(
        d.log
            .wait_for(&["noexec: Permission denied"], DEADLINE)
            .is_some(),
        "{method}: {}",
        d.log.text()
    );
    // The failed children were reaped at once; the daemon goes on.
    assert_eq!(talk(d.addr(2), b""), "still here\n");
    assert!(eventually(DEADLINE, || d.zombies().is_empty()));
}

#[test]
fn exec_failure_reports_its_errno_through_clone() {
    exec_errors("clone");
}

#[test]
fn exec_failure_reports_its_errno_through_vfork() {
    exec_errors("vfork");
}

#[test]
fn exec_failure_reports_its_errno_through_fork() {
    exec_errors("fork");
}

#[test]
fn an_idle_doorman_gives_start_up_memory_back() {
    // Start-up and a reload touch parsers, name-service modules and most
    // of libc; right before the idle wait doorman unmaps the clean file
    // pages and trims the heap. The daemon must stay small and keep
    // working: everything it unmapped comes back from the page cache.
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait root /bin/echo echo ok\n",
        &[],
    );
    let small = |d: &Doorman| {
        eventually(DEADLINE, || {
            status_kb(d.pid(), "RssFile:") < 1024 && rss_kb(d.pid()) < 1536
        })
    };
    assert!(
        small(&d),
        "after start: RSS {} kB, file-backed {} kB",
        rss_kb(d.pid()),
        status_kb(d.pid(), "RssFile:")
    );
    for _ in 0..20 {
        assert_eq!(talk(d.addr(0), b""), "ok\n");
    }
    // Every handler reaped (and logged) first: what runs after the
    // give-back maps its pages back in.
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 20));
    d.signal(libc::SIGHUP);
    assert!(d.log.wait_for(&["reload result=ok"], DEADLINE).is_some());
    assert!(
        small(&d),
        "after a reload: RSS {} kB, file-backed {} kB",
        rss_kb(d.pid()),
        status_kb(d.pid(), "RssFile:")
    );
    assert_eq!(talk(d.addr(0), b""), "ok\n");
    // The reload and the connections logged and reaped as ever.
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 21));
}

/// Runs `load` against doorman `d` while its configuration is replaced by
/// `conf(k)` for reload k = 0, 1, ... with a SIGHUP every `every` (at most
/// `max` reloads); returns the failed connections and how many reloads
/// were made.
fn reloading(
    d: &Doorman,
    load: impl FnOnce() -> usize + Send + 'static,
    conf: impl Fn(usize) -> String,
    every: Duration,
    max: usize,
) -> (usize, usize) {
    let path = d.dir.path().join("doorman.conf");
    let load = std::thread::spawn(load);
    let mut reloads = 0;
    while !load.is_finished() && reloads < max {
        // Replaced whole (a reload must never read a half-written file).
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, conf(reloads)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        d.signal(libc::SIGHUP);
        reloads += 1;
        std::thread::sleep(every);
    }
    (load.join().unwrap(), reloads)
}

#[test]
fn reloads_that_move_a_listener_lose_no_connection() {
    // A reload that adds or drops a service before this one moves its
    // listener to another index (its epoll token), and only such a
    // listener is registered again. One client at a time, so that nothing
    // else would wake a listener whose readiness was lost: each
    // connection is answered, none waits for the next.
    let d = start(
        "127.0.0.78:9 stream tcp nowait.0 root /bin/echo echo A\n",
        "clone",
        TempDir::new(),
    );
    let addr = d.addr(0);
    let port = addr.port();
    let other = free_port();
    let conf = |k: usize| {
        let front = if k % 2 == 0 {
            format!("127.0.0.78:{other} stream tcp nowait.0 root /bin/echo echo other\n")
        } else {
            String::new()
        };
        format!("{front}127.0.0.78:{port} stream tcp nowait.0 root /bin/echo echo A\n")
    };
    let load = move || hammer(addr, 400, 1, b"A\n");
    let (bad, reloads) = reloading(&d, load, conf, Duration::from_millis(15), 400);
    assert_eq!(bad, 0, "lost or wrong replies");
    assert!(reloads >= 5, "only {reloads} reloads during the load");
    assert_eq!(d.log.count(&["error"]), 0, "{}", d.log.text());
}

#[test]
fn reloads_while_handlers_start_keep_every_reply_right() {
    // With the detached clone, children still on their way to exec read
    // the service's spawn image while doorman goes on; a reload must not
    // free an image under them. 3,000 connections at c=16 while the
    // program's argument flips between A and B with a SIGHUP every 50 ms.
    let d = start(
        "127.0.0.77:9 stream tcp nowait.0 root /bin/echo echo A\n",
        "clone",
        TempDir::new(),
    );
    let addr = d.addr(0);
    let port = addr.port();
    let conf = |k: usize| {
        let word = if k % 2 == 0 { "B" } else { "A" };
        format!("127.0.0.77:{port} stream tcp nowait.0 root /bin/echo echo {word}\n")
    };
    let load = move || hammer_any(addr, 3000, 16, &[b"A\n", b"B\n"]);
    let (bad, reloads) = reloading(&d, load, conf, Duration::from_millis(50), 200);
    assert_eq!(bad, 0, "wrong or missing replies");
    assert!(reloads >= 5, "only {reloads} reloads during the load");
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 3000));
    assert!(eventually(DEADLINE, || d.zombies().is_empty()));
    assert_eq!(d.log.count(&["error"]), 0, "{}", d.log.text());
    assert_eq!(d.log.count(&["kept"]), 0, "{}", d.log.text());
}

#[test]
fn exec_failures_under_load_are_each_reported_once() {
    // Detached children that cannot exec report it when reaped: 300 of
    // them, 16 at a time (more than the slots there are, so that slots
    // held by failures must be given back), each logged once with its
    // errno, none logged as an exit; a good service still answers.
    let d = start(
        "127.0.0.1:0 stream tcp nowait.0,crash=off root /nonexistent/prog prog\n\
         127.0.0.1:0 stream tcp nowait root /bin/echo echo ok\n",
        "clone",
        TempDir::new(),
    );
    assert_eq!(hammer(d.addr(0), 300, 16, b""), 0);
    let msg = ["exec /nonexistent/prog: No such file or directory"];
    assert!(
        eventually(DEADLINE, || d.log.count(&msg) == 300),
        "{} failures logged",
        d.log.count(&msg)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(d.log.count(&msg), 300);
    assert_eq!(d.log.count(&["exit service="]), 0, "{}", d.log.text());
    assert_eq!(hammer(d.addr(1), 100, 8, b"ok\n"), 0);
    assert!(eventually(DEADLINE, || d.zombies().is_empty()));
    // Every slot was given back, and the detached clone was what ran.
    assert!(eventually(DEADLINE, || d.log.count(&["exit service="]) == 100));
    d.signal(libc::SIGUSR1);
    let line = d
        .log
        .wait_for(&["spawn_slots_held="], DEADLINE)
        .expect("a state line");
    assert_eq!(field(&line, "spawn_slots_held"), "0", "{line}");
    let made: usize = field(&line, "spawn_slots").parse().unwrap();
    assert!((1..=64).contains(&made), "{line}");
}

/// Resident kB of a process's mappings whose smaps header matches `pred`.
fn mapping_rss_kb(pid: i32, pred: impl Fn(&str) -> bool) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    let mut on = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            on = pred(line);
        } else if on {
            if let Some(v) = line.strip_prefix("Rss:") {
                total += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn giving_memory_back_runs_no_libc_after_libc_is_dropped() {
    // After the give-back only the idle wait's own libc page comes back,
    // with the kernel's 64 KiB fault-around window: calls into libc's
    // madvise wrapper after its text was dropped mapped a second window
    // back in (128 kB at idle in four runs of five).
    let d = Doorman::with_conf(
        TempDir::new(),
        "127.0.0.1:0 stream tcp nowait root /bin/echo echo ok\n",
        &[],
    );
    let libc_text =
        |d: &Doorman| mapping_rss_kb(d.pid(), |h| h.contains(" r-xp ") && h.contains("/libc.so"));
    assert!(
        eventually(DEADLINE, || libc_text(&d) <= 64),
        "libc text resident at idle: {} kB",
        libc_text(&d)
    );
    assert_eq!(talk(d.addr(0), b""), "ok\n");
}
