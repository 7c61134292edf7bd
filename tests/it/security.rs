//! Local users and odd signals cannot freeze, blind or subvert doorman
//! (issue 18): a handler's user stopping children on their way to exec,
//! a symlink swapped over a unix socket file, deaths by real-time
//! signals, kept sockets whose settings change on reload, the environment
//! and signal state a handler gets, a doorman that runs with capabilities
//! instead of root, and the checks on `--pidfile` and `--ready-fd`.
//!
//! The racers run as `nobody` for a bounded time and are stopped by pid
//! (or with the PID namespace they run in).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

fn nobody_ids() -> (u32, u32) {
    let out = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id").args(["-g", "nobody"]).output().unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

fn chown(path: &std::path::Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// Connects, reads to EOF, within `limit`: the reply, or why not.
fn answer_within(addr: SocketAddr, limit: Duration) -> Result<String, String> {
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&addr, limit).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if t0.elapsed() > limit {
        return Err(format!("answered after {:?}", t0.elapsed()));
    }
    Ok(out)
}

/// Stops (SIGSTOP) the next pids of its PID namespace while it connects
/// to a service whose handlers run as its own user, for `secs` seconds:
/// one of them stopped between its switch to that user and its execve is
/// a child doorman must not wait for. Prints tries, processes stopped, and
/// how many of those were still doorman's image (stopped before exec).
const RACER_PY: &str = r#"
import os, signal, socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
end = time.time() + secs
stopped, pre_exec, tries = set(), 0, 0
while time.time() < end:
    with open('/proc/sys/kernel/ns_last_pid') as f:
        last = int(f.read())
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(('127.0.0.1', port))
    except BlockingIOError:
        pass
    tries += 1
    until = time.time() + 0.01
    while time.time() < until:
        for p in (last + 1, last + 2, last + 3):
            try:
                os.kill(p, signal.SIGSTOP)
            except OSError:
                continue
            if p not in stopped:
                stopped.add(p)
                try:
                    if open('/proc/%d/comm' % p).read().strip() == 'doorman':
                        pre_exec += 1
                except OSError:
                    pass
    s.close()
print(tries, len(stopped), pre_exec, flush=True)
"#;

/// One spawn method against the racer: every probe of a second service
/// answers within 1 s, reloads included, and doorman stops at once.
fn racer_against(method: &str) {
    let dir = TempDir::new();
    dir.write("racer.py", RACER_PY, false);
    let conf = dir.write(
        "doorman.conf",
        "127.0.0.1:0 stream tcp nowait nobody /bin/cat cat\n\
         127.0.0.1:0 stream tcp nowait root /bin/echo echo ok\n",
        false,
    );
    // Its own PID namespace: the racer stops nobody's processes in there
    // only (doorman's handlers), never another test's.
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", BIN, "--on-stop", "leave"])
        .arg("-f")
        .arg(&conf)
        .env("DOORMAN_SPAWN", method)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::default();
    let l2 = log.clone();
    let err = unshare.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l2.push_line(line);
        }
    });
    assert!(
        log.wait_for(&["ready services=2"], DEADLINE).is_some(),
        "{}",
        log.text()
    );
    let addrs: Vec<SocketAddr> = log
        .lines()
        .iter()
        .filter(|l| l.contains(": listen service="))
        .map(|l| field(l, "addr").parse().unwrap())
        .collect();
    let doorman = children_of(unshare.id() as i32)[0].0;
    let mut racer = Command::new("nsenter")
        .args(["-t", &doorman.to_string(), "-p", "-m", "--"])
        .args([
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ])
        .args([
            "/usr/bin/python3",
            dir.path().join("racer.py").to_str().unwrap(),
        ])
        .args([addrs[0].port().to_string(), "5".into()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let (mut probes, mut worst, mut reloads) = (0, Duration::ZERO, 0);
    while t0.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        match answer_within(addrs[1], Duration::from_secs(1)) {
            Ok(r) => assert_eq!(r, "ok\n", "{method}"),
            Err(e) => {
                // SAFETY: kill on processes we started, by pid.
                unsafe {
                    libc::kill(racer.id() as i32, libc::SIGKILL);
                    libc::kill(doorman, libc::SIGKILL);
                }
                panic!(
                    "{method}: the second service did not answer within 1 s after {:?} of racing: {e}\n{}",
                    t0.elapsed(),
                    log.text()
                );
            }
        }
        worst = worst.max(t.elapsed());
        probes += 1;
        // A reload while children are stuck before their exec must not
        // wait for them either.
        if probes % 5 == 0 {
            // SAFETY: kill on the doorman we started, by pid.
            unsafe { libc::kill(doorman, libc::SIGHUP) };
            reloads += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut said = String::new();
    racer
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert!(wait_child(&mut racer, DEADLINE).is_some());
    assert!(
        eventually(DEADLINE, || log.count(&["reload result="]) >= reloads),
        "{method}: reloads did not complete\n{}",
        log.text()
    );
    // Stopping does not wait for the children stuck before their exec.
    let t = Instant::now();
    // SAFETY: kill on the doorman we started, by pid.
    unsafe { libc::kill(doorman, libc::SIGTERM) };
    let st = wait_child(&mut unshare, DEADLINE).expect("doorman stops");
    eprintln!(
        "{method}: racer (tries, stopped, stopped before exec) = {}; {probes} probes, slowest {worst:?}; stop took {:?}",
        said.trim(),
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "{method}: stop waited"
    );
    assert_eq!(st.code(), Some(0), "{}", log.text());
}

#[test]
fn a_stopped_child_never_freezes_doorman() {
    if !is_root() {
        eprintln!("SKIPPED: the stop racer needs root (unshare --pid, setpriv)");
        return;
    }
    for method in ["vfork", "fork", "clone", "auto"] {
        racer_against(method);
    }
}

/// Waits for the socket file to appear and renames a symlink to `victim`
/// over it at once (the window between a `bind` and a `chown(path)` or
/// `chmod(path)`), until it is killed. C, because the window is a few
/// microseconds: against the code this replaced it won within 5 binds.
const SWAPPER_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
    char tmp[4096], sock[4096];
    struct stat st;
    snprintf(tmp, sizeof tmp, "%s/.swap", argv[1]);
    snprintf(sock, sizeof sock, "%s/sock", argv[1]);
    symlink(argv[2], tmp);
    for (;;)
        if (lstat(sock, &st) == 0 && S_ISSOCK(st.st_mode) && rename(tmp, sock) == 0)
            symlink(argv[2], tmp);
}
"#;

#[test]
fn symlink_swapped_over_a_unix_socket_never_changes_another_file() {
    if !is_root() {
        eprintln!("SKIPPED: the symlink race needs root and nobody");
        return;
    }
    let (uid, gid) = nobody_ids();
    let dir = TempDir::new();
    let src = dir.write("swap.c", SWAPPER_C, false);
    let swap = dir.path().join("swap");
    let cc = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&swap)
        .arg(&src)
        .status()
        .expect("gcc (installed by .ci/deps)");
    assert!(cc.success());
    // A directory of the service's user, as /run/app would be.
    let d = dir.path().join("app");
    std::fs::create_dir(&d).unwrap();
    chown(&d, uid, gid);
    let victim = dir.write("victim", "secret\n", false);
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sock = d.join("sock");
    let conf_for = |i: usize| {
        let mut c = String::from("127.0.0.1:0 stream tcp nowait root /bin/echo echo up\n");
        // Removed, bound afresh, then kept with a new mode: every way the
        // file's owner and mode are set.
        match i % 3 {
            0 => {}
            1 => {
                c += &format!(
                    ":nobody:nogroup:0666:{} stream unix nowait root /bin/echo echo u\n",
                    sock.display()
                )
            }
            _ => {
                c += &format!(
                    ":nobody:nogroup:0660:{} stream unix nowait root /bin/echo echo u\n",
                    sock.display()
                )
            }
        }
        c
    };
    let conf = dir.write("doorman.conf", &conf_for(1), false);
    let mut d_ = Doorman::start(
        TempDir::new(),
        &["-f".into(), conf.to_str().unwrap().into()],
        Opts::default(),
    );
    let mut swapper = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(&swap)
        .arg(&d)
        .arg(&victim)
        .spawn()
        .unwrap();
    for i in 0..200 {
        std::fs::write(&conf, conf_for(i + 2)).unwrap();
        d_.signal(libc::SIGHUP);
        assert!(
            eventually(DEADLINE, || d_.log.count(&["reload result="]) > i),
            "reload {i}\n{}",
            d_.log.text()
        );
    }
    // SAFETY: kill on the swapper we started, by pid.
    unsafe { libc::kill(swapper.id() as i32, libc::SIGKILL) };
    let _ = swapper.wait();
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600, "the victim's mode changed");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "the victim's owner changed"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
    let text = d_.log.text();
    eprintln!(
        "200 reloads: {} ok, {} partial (the swapper won the path)",
        d_.log.count(&["reload result=ok"]),
        d_.log.count(&["reload result=partial"])
    );
    // doorman itself still serves.
    assert_eq!(talk(d_.addr(0), b""), "up\n", "{text}");
    d_.stop();
}

#[test]
fn unix_socket_directories_others_can_write_are_refused() {
    if !is_root() {
        eprintln!("SKIPPED: directory ownership checks need root and nobody");
        return;
    }
    let (uid, gid) = nobody_ids();
    let dir = TempDir::new();
    let mk = |name: &str, mode: u32, owner: (u32, u32)| {
        let p = dir.path().join(name);
        std::fs::create_dir(&p).unwrap();
        chown(&p, owner.0, owner.1);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let open = mk("open", 0o777, (0, 0));
    let group = mk("group", 0o775, (0, gid));
    let theirs = mk("theirs", 0o755, (uid, gid));
    let sticky = mk("sticky", 0o1777, (0, 0));
    let start = |line: String| {
        let conf = dir.write("doorman.conf", &line, false);
        run(&["-f", conf.to_str().unwrap()])
    };
    for (d, owner, why) in [
        (&open, "", "is writable by every user and not sticky"),
        (&group, "", &*format!("is writable by group {gid}")),
        (
            &theirs,
            "",
            &*format!("is owned by uid {uid}, neither root nor the socket's owner"),
        ),
        (
            &theirs,
            "root",
            "neither root nor the socket's owner (uid 0)",
        ),
    ] {
        let (code, _, err) = start(format!(
            ":{owner}::0666:{}/s stream unix nowait root /bin/echo echo x\n",
            d.display()
        ));
        assert_eq!(code, 1, "{}: {err}", d.display());
        assert!(err.contains(why), "{}: {err}", d.display());
        assert!(!d.join("s").exists(), "{}: a socket was left", d.display());
    }
    // A sticky directory (as /tmp), and a directory of the socket's own
    // owner (as a /run/app of the service's user), are fine; the file is
    // born with its mode and owner.
    for (d, owner, want) in [
        (&sticky, "nobody:nogroup", (uid, gid, 0o640)),
        (&theirs, "nobody:nogroup", (uid, gid, 0o640)),
        (&theirs, "nobody:", (uid, 0, 0o640)),
    ] {
        let path = d.join("s");
        let conf = dir.write(
            "doorman.conf",
            &format!(
                ":{owner}:0640:{} stream unix nowait root /bin/echo echo x\n",
                path.display()
            ),
            false,
        );
        let mut dm = Doorman::start(
            TempDir::new(),
            &["-f".into(), conf.to_str().unwrap().into()],
            Opts::default(),
        );
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            want,
            "{}",
            path.display()
        );
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out, "x\n");
        dm.stop();
    }
}

/// `(Send-Q, rb, tb)` of the listening TCP socket on `port`, from `ss`:
/// its backlog, receive and send buffer sizes.
fn listener_of(port: u16) -> (u64, u64, u64) {
    let out = Command::new("ss")
        .args(["-Hltnm", &format!("sport = :{port}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    let send_q = words[2].parse().unwrap();
    let mem = |key: &str| -> u64 {
        let at = text.find(key).unwrap_or_else(|| panic!("{key} in {text}")) + key.len();
        text[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (send_q, mem(",rb"), mem(",tb"))
}

#[test]
fn reload_reapplies_what_changed_on_a_kept_socket() {
    if !is_root() {
        eprintln!("SKIPPED: socket owner changes need root");
        return;
    }
    let (uid, _) = nobody_ids();
    let dir = TempDir::new();
    let sock = dir.path().join("s.sock");
    dir.write(
        "keep.py",
        "import socket, sys\ns = socket.socket(fileno=0)\n\
         print(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))\n",
        false,
    );
    let write = |rcv: u32, snd: u32, backlog: u32, keepalive: &str, mode: &str, user: &str| {
        dir.write(
            "t.socket",
            &format!(
                "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\nReceiveBuffer={rcv}\nSendBuffer={snd}\n\
                 Backlog={backlog}\nKeepAlive={keepalive}\n"
            ),
            false,
        );
        dir.write(
            "t@.service",
            &format!(
                "[Service]\nExecStart=/usr/bin/python3 {}/keep.py\nStandardInput=socket\n",
                dir.path().display()
            ),
            false,
        );
        dir.write(
            "u.socket",
            &format!(
                "[Socket]\nListenStream={}\nAccept=yes\nSocketMode={mode}\nSocketUser={user}\n",
                sock.display()
            ),
            false,
        );
        dir.write(
            "u@.service",
            "[Service]\nExecStart=/bin/echo u\nStandardInput=socket\n",
            false,
        );
    };
    write(32768, 16384, 17, "no", "0666", "root");
    let mut d = Doorman::start(
        TempDir::new(),
        &["-f".into(), dir.path().display().to_string()],
        Opts::default(),
    );
    let port = d.addrs[0].port();
    let (q, rb, tb) = listener_of(port);
    assert_eq!((q, rb, tb), (17, 65536, 32768), "before");
    assert_eq!(talk(d.addr(0), b"").trim(), "0");
    let before = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!((before.mode() & 0o777, before.uid()), (0o666, 0));

    write(65536, 32768, 9, "yes", "0600", "nobody");
    d.signal(libc::SIGHUP);
    assert!(
        d.log.wait_for(&["reload result=ok"], DEADLINE).is_some(),
        "{}",
        d.log.text()
    );
    let (q, rb, tb) = listener_of(port);
    assert_eq!((q, rb, tb), (9, 131072, 65536), "after the reload");
    assert_eq!(
        talk(d.addr(0), b"").trim(),
        "1",
        "keep-alive on new connections"
    );
    let after = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(after.ino(), before.ino(), "the socket was kept");
    assert_eq!(
        (after.mode() & 0o777, after.uid()),
        (0o600, uid),
        "owner and mode re-applied"
    );
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out, "u\n");
    d.stop();
}

#[test]
fn a_handler_killed_by_a_realtime_signal_is_reaped() {
    let dir = TempDir::new();
    // Per connection, one at a time: the first handler answers and kills
    // itself with SIGRTMIN+2; the second client must be served.
    dir.write("rt.sh", "#!/bin/sh\necho hi\nkill -36 $$\nsleep 5\n", true);
    // Wait mode: the instance serves one client and dies the same way;
    // the socket must be watched again.
    dir.write(
        "rtwait.py",
        "import os, signal, socket\ns = socket.socket(fileno=0)\nc, _ = s.accept()\n\
         c.sendall(b'w\\n')\nc.close()\nos.kill(os.getpid(), signal.SIGRTMIN + 2)\n",
        false,
    );
    let mut d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait/1 root {dir}/rt.sh rt.sh\n\
         127.0.0.1:0 stream tcp wait root /usr/bin/python3 python3 {dir}/rtwait.py\n",
        &[],
    );
    for i in 0..3 {
        assert_eq!(talk(d.addr(0), b""), "hi\n", "client {i}\n{}", d.log.text());
        assert_eq!(
            talk(d.addr(1), b""),
            "w\n",
            "wait client {i}\n{}",
            d.log.text()
        );
    }
    assert!(
        d.log
            .wait_for(&["exit service=", "signal=SIGRTMIN+2"], DEADLINE)
            .is_some(),
        "{}",
        d.log.text()
    );
    assert!(eventually(DEADLINE, || d.log.count(&["signal=SIGRTMIN+2"]) >= 6));
    // Nothing is left in the tables: the state dump lists no child.
    d.signal(libc::SIGUSR1);
    assert!(d
        .log
        .wait_for(&["state internal_connections="], DEADLINE)
        .is_some());
    assert_eq!(d.log.count(&["state child="]), 0, "{}", d.log.text());
    d.stop();
}

#[test]
fn units_get_systemds_environment_and_user_drops_get_the_users() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to drop to nobody");
        return;
    }
    let dir = TempDir::new();
    dir.write("envfile", "FROM_FILE=file\n", false);
    dir.write(
        "e.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\n",
        false,
    );
    dir.write(
        "e@.service",
        &format!(
            "[Service]\nUser=nobody\nExecStart=/usr/bin/env\nStandardInput=socket\n\
             Environment=SET_HERE=unit\nEnvironmentFile={}/envfile\nPassEnvironment=KEEP_ME NOT_THERE\n\
             UnsetEnvironment=LANGUAGE\n",
            dir.path().display()
        ),
        false,
    );
    let inetd = dir.write(
        "inetd.conf",
        "127.0.0.1:0 stream tcp nowait nobody /usr/bin/env env\n\
         127.0.0.1:0 stream tcp nowait root /usr/bin/env env\n",
        false,
    );
    let unit = dir.path().join("e.socket");
    let leaks = [
        ("SECRET_TOKEN", "s3cret"),
        ("KEEP_ME", "kept"),
        ("PYTHONHOME", "/nowhere"),
        ("INVOCATION_ID", "0123456789abcdef0123456789abcdef"),
        ("WATCHDOG_PID", "1"),
        ("WATCHDOG_USEC", "1000000"),
        ("HOME", "/root"),
        ("SHELL", "/bin/bash"),
        ("USER", "root"),
        ("PATH", "/opt/doorman-only/bin:/usr/bin:/bin"),
    ];
    let d = Doorman::start(
        TempDir::new(),
        &[
            "-f".into(),
            unit.display().to_string(),
            "-f".into(),
            inetd.display().to_string(),
        ],
        Opts {
            env: leaks
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Opts::default()
        },
    );
    let env: HashMap<String, String> = env_map(&talk(d.addr(0), b""));
    let get = |e: &HashMap<String, String>, k: &str| e.get(k).cloned();
    assert_eq!(
        get(&env, "PATH").as_deref(),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "{env:?}"
    );
    assert!(env.contains_key("LANG"), "{env:?}");
    for (k, v) in [
        ("USER", "nobody"),
        ("LOGNAME", "nobody"),
        ("HOME", "/nonexistent"),
        ("SHELL", "/usr/sbin/nologin"),
        ("SET_HERE", "unit"),
        ("FROM_FILE", "file"),
        ("KEEP_ME", "kept"),
    ] {
        assert_eq!(get(&env, k).as_deref(), Some(v), "unit {k}: {env:?}");
    }
    for k in [
        "SECRET_TOKEN",
        "PYTHONHOME",
        "INVOCATION_ID",
        "WATCHDOG_PID",
        "WATCHDOG_USEC",
        "NOT_THERE",
        "LANGUAGE",
    ] {
        assert!(!env.contains_key(k), "unit: {k} leaked: {env:?}");
    }
    // inetd.conf keeps its tradition (doorman's environment), but the
    // user's own variables follow a user drop, and a watchdog meant for
    // doorman never reaches a handler.
    let env = env_map(&talk(d.addr(1), b""));
    for (k, v) in [
        ("USER", "nobody"),
        ("LOGNAME", "nobody"),
        ("HOME", "/nonexistent"),
        ("SHELL", "/usr/sbin/nologin"),
        ("SECRET_TOKEN", "s3cret"),
        ("PATH", "/opt/doorman-only/bin:/usr/bin:/bin"),
    ] {
        assert_eq!(get(&env, k).as_deref(), Some(v), "inetd {k}: {env:?}");
    }
    let root = env_map(&talk(d.addr(2), b""));
    assert_eq!(
        get(&root, "HOME").as_deref(),
        Some("/root"),
        "no drop: doorman's"
    );
    assert_eq!(get(&root, "SHELL").as_deref(), Some("/bin/bash"));
    for e in [&env, &root] {
        assert!(!e.contains_key("WATCHDOG_PID") && !e.contains_key("WATCHDOG_USEC"));
    }
}

#[test]
fn every_signal_doorman_inherited_ignored_is_reset_and_none_is_blocked() {
    // 32 and 33 (glibc's own) and SIGRTMAX included.
    let d = Doorman::start(
        TempDir::new(),
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--".into(),
            "/bin/cat".into(),
            "/proc/self/status".into(),
        ],
        Opts {
            ignored: vec![libc::SIGQUIT, 32, 33, 40, 64],
            ..Opts::default()
        },
    );
    let out = talk(d.addr(0), b"");
    for key in ["SigBlk", "SigIgn", "SigCgt"] {
        let line = out.lines().find(|l| l.starts_with(key)).unwrap();
        let mask = u64::from_str_radix(line.split_whitespace().last().unwrap(), 16).unwrap();
        assert_eq!(mask, 0, "{line}");
    }
    // Negative control: doorman itself really had them ignored.
    let own = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let ign = own.lines().find(|l| l.starts_with("SigIgn")).unwrap();
    let mask = u64::from_str_radix(ign.split_whitespace().last().unwrap(), 16).unwrap();
    for sig in [32, 33, 64] {
        assert_ne!(mask & (1 << (sig - 1)), 0, "{ign}");
    }
}

#[test]
fn a_doorman_with_capabilities_instead_of_root_drops_groups_and_keeps_no_capability() {
    if !is_root() {
        eprintln!("SKIPPED: setpriv with ambient capabilities needs root");
        return;
    }
    let dir = TempDir::new();
    let conf = dir.write(
        "doorman.conf",
        "127.0.0.1:0 stream tcp nowait daemon /bin/cat cat /proc/self/status\n",
        false,
    );
    let d = Doorman::start(
        dir,
        &["-f".into(), conf.to_str().unwrap().into()],
        Opts {
            wrapper: [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--inh-caps=+setuid,+setgid",
                "--ambient-caps=+setuid,+setgid",
            ]
            .map(String::from)
            .to_vec(),
            ..Opts::default()
        },
    );
    let own = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    assert!(own.contains("CapEff:\t00000000000000c0"), "{own}");
    let out = talk(d.addr(0), b"");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key}: {out}\n{}", d.log.text()))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (uid, gid) = {
        let o = Command::new("id").args(["-u", "daemon"]).output().unwrap();
        let g = Command::new("id").args(["-g", "daemon"]).output().unwrap();
        (
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
            String::from_utf8_lossy(&g.stdout).trim().to_string(),
        )
    };
    assert_eq!(line("Uid:"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(line("Gid:"), format!("{gid} {gid} {gid} {gid}"));
    let groups = Command::new("id").args(["-G", "daemon"]).output().unwrap();
    let mut want: Vec<String> = String::from_utf8_lossy(&groups.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    want.sort();
    let mut got: Vec<String> = line("Groups:")
        .split_whitespace()
        .map(String::from)
        .collect();
    got.sort();
    assert_eq!(got, want, "the user's groups, not doorman's");
    for key in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(line(key), "0000000000000000", "{key}");
    }
}

#[test]
fn ready_fd_must_be_an_open_writable_descriptor_above_2() {
    for (fd, why) in [
        ("1", "must be above 2"),
        ("2", "must be above 2"),
        ("57", "no such open descriptor"),
    ] {
        let (code, _, err) = run(&[
            "--ready-fd",
            fd,
            "--listen",
            "127.0.0.1:0",
            "--",
            "/bin/true",
        ]);
        assert_eq!(code, 2, "--ready-fd {fd}: {err}");
        assert!(err.contains(why), "--ready-fd {fd}: {err}");
    }
    // Open but read-only: refused too.
    let dir = TempDir::new();
    let f = dir.write("ro", "", false);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7<{} && exec {BIN} --ready-fd 7 --listen 127.0.0.1:0 -- /bin/true",
            f.display()
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("open for reading only"), "{err}");
    // A real one works and is not handed to handlers (close-on-exec).
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7>&1 && exec {BIN} --ready-fd 7 --listen 127.0.0.1:0 -- /bin/ls /proc/self/fd"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "READY\n");
    // SAFETY: kill on the doorman we started, by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

#[test]
fn pidfile_is_written_without_following_a_planted_link() {
    let dir = TempDir::new();
    let victim = dir.write("victim", "untouched\n", false);
    let pidfile = dir.path().join("doorman.pid");
    // The final name is a link someone planted: rename replaces the link
    // itself, and the file it points to is never written.
    std::os::unix::fs::symlink(&victim, &pidfile).unwrap();
    let mut d = Doorman::start(
        TempDir::new(),
        &[
            "--pidfile".into(),
            pidfile.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--".into(),
            "/bin/true".into(),
        ],
        Opts::default(),
    );
    let meta = std::fs::symlink_metadata(&pidfile).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the link was replaced by the file"
    );
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        d.pid().to_string()
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    d.stop();
    assert!(!pidfile.exists());
    let _ = std::io::stdout().flush();
}
