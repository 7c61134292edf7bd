//! The child contract, checked from inside the handler (issue 9), for what
//! `nowait.rs` does not already prove (exact fds per hand-over, empty
//! signal sets): the parent-death signal, doorman's own `LISTEN_*` and
//! `NOTIFY_SOCKET` never reaching a handler that should not get them, and
//! the uid, gid and supplementary groups in every front end.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;

use crate::util::*;

/// The handler reports its parent-death signal, then answers once more
/// after doorman is gone.
const PDEATH_PY: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
v = ctypes.c_int(-1)
assert libc.prctl(2, ctypes.byref(v), 0, 0, 0) == 0  # PR_GET_PDEATHSIG
sys.stdout.write("pdeathsig=%d ppid=%d\n" % (v.value, os.getppid()))
sys.stdout.flush()
sys.stdin.readline()
sys.stdout.write("alive\n")
sys.stdout.flush()
"#;

#[test]
fn no_parent_death_signal_and_handlers_outlive_doorman() {
    // Documented (doorman(8), CHILD CONTRACT): doorman never sets
    // PR_SET_PDEATHSIG; a handler keeps running when doorman dies, even by
    // SIGKILL, as with classic inetd.
    let dir = TempDir::new();
    dir.write("pdeath.py", PDEATH_PY, false);
    let mut d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait root /usr/bin/python3 python3 {dir}/pdeath.py\n",
        &[],
    );
    let s = connect(d.addr(0));
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(
        line,
        format!("pdeathsig=0 ppid={}\n", d.pid()),
        "{}",
        d.log.text()
    );
    d.signal(libc::SIGKILL);
    assert!(wait_child(&mut d.child, DEADLINE).is_some());
    (&s).write_all(b"go on\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "alive\n");
}

#[test]
fn doorman_own_listen_and_notify_variables_never_leak() {
    let dir = TempDir::new();
    dir.write("env3", "#!/bin/sh\nexec env >&3\n", true);
    // A real notification socket, so that doorman runs as under systemd.
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let xinetd = dir.write(
        "x.conf",
        "service leak\n{\n    type = UNLISTED\n    socket_type = stream\n    wait = no\n    user = root\n\
         \x20   port = 0\n    bind = 127.0.0.1\n    server = /usr/bin/env\n\
         \x20   passenv = PATH LISTEN_FDS LISTEN_PID LISTEN_FDNAMES NOTIFY_SOCKET\n}\n",
        false,
    );
    let conf = format!(
        "127.0.0.1:0 stream tcp nowait root /usr/bin/env env\n\
         127.0.0.1:0 stream tcp nowait,handover=stdio root /usr/bin/env env\n\
         127.0.0.1:0 stream tcp nowait,handover=fd3 root {0}/env3 env3\n",
        dir.path().display()
    );
    let conf = dir.write("doorman.conf", &conf, false);
    let args = [
        "-f".to_string(),
        conf.display().to_string(),
        "-f".into(),
        xinetd.display().to_string(),
    ];
    let d = Doorman::start(
        TempDir::new(),
        &args,
        Opts {
            env: vec![
                ("LISTEN_FDS".into(), "7".into()),
                ("LISTEN_PID".into(), "1".into()),
                ("LISTEN_FDNAMES".into(), "stale".into()),
                ("NOTIFY_SOCKET".into(), notify_path.display().to_string()),
                ("AUDIT_MARK".into(), "kept".into()),
            ],
            ..Opts::default()
        },
    );
    let mut buf = [0u8; 64];
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let n = notify
        .recv(&mut buf)
        .expect("doorman notifies its supervisor");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    assert_eq!(d.addrs.len(), 4, "{}", d.log.text());
    for (i, what) in ["inetd", "stdio", "fd3", "xinetd passenv"]
        .iter()
        .enumerate()
    {
        let env = env_map(&talk(d.addr(i), b""));
        assert!(!env.contains_key("NOTIFY_SOCKET"), "{what}: {env:?}");
        if *what == "fd3" {
            // Its own, not doorman's.
            assert_eq!(env.get("LISTEN_FDS").map(String::as_str), Some("1"));
            assert_eq!(
                env.get("LISTEN_FDNAMES").map(String::as_str),
                Some("connection")
            );
            let pid = env.get("LISTEN_PID").expect("LISTEN_PID");
            assert_ne!(pid, "1");
            assert_ne!(*pid, d.pid().to_string());
        } else {
            for k in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
                assert!(!env.contains_key(k), "{what}: {k} leaked: {env:?}");
            }
        }
        if *what != "xinetd passenv" {
            // The rest of doorman's environment is inherited (negative
            // control: the variables above were really there to leak).
            assert_eq!(env.get("AUDIT_MARK").map(String::as_str), Some("kept"));
        }
    }
}

/// (real, effective, saved, fs) uid and gid, and the supplementary groups
/// of a handler, from its `/proc/self/status`.
fn creds_of(status: &str) -> (Vec<u32>, Vec<u32>, BTreeSet<u32>) {
    let nums = |key: &str| -> Vec<u32> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {status}"));
        line[key.len()..]
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (
        nums("Uid:"),
        nums("Gid:"),
        nums("Groups:").into_iter().collect(),
    )
}

/// `getgrouplist(user, gid)`: what `initgroups` would give.
fn grouplist(user: &str, gid: u32) -> BTreeSet<u32> {
    let name = CString::new(user).unwrap();
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: a NUL-terminated name, a buffer of `n` gids and its length.
    let r = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    assert!(r >= 0, "getgrouplist({user})");
    groups[..n as usize].iter().copied().collect()
}

fn nobody() -> (u32, u32) {
    let name = CString::new("nobody").unwrap();
    // SAFETY: getpwnam on a NUL-terminated name; the fields are read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no user nobody");
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

#[test]
fn credentials_in_every_front_end() {
    if !is_root() {
        eprintln!("SKIPPED: credentials_in_every_front_end needs root");
        return;
    }
    let (uid, gid) = nobody();
    let status = "/bin/cat /proc/self/status";
    let dir = TempDir::new();
    // inetd.conf: the user's groups, as initgroups.
    dir.write(
        "inetd.conf",
        &format!("127.0.0.1:0 stream tcp nowait nobody {status} cat /proc/self/status\n"),
        false,
    );
    // xinetd: only the primary group, unless groups = yes.
    let xinetd = |name: &str, extra: &str| {
        format!(
            "service {name}\n{{\n    type = UNLISTED\n    socket_type = stream\n    wait = no\n    user = nobody\n\
             \x20   port = 0\n    bind = 127.0.0.1\n    server = /bin/cat\n    server_args = /proc/self/status\n{extra}}}\n"
        )
    };
    dir.write(
        "xinetd.conf",
        &(xinetd("plain", "") + &xinetd("withgroups", "    groups = yes\n    group = root\n")),
        false,
    );
    // A unit pair: User=, Group=, SupplementaryGroups=.
    dir.write(
        "c.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\n",
        false,
    );
    dir.write(
        "c@.service",
        "[Service]\nUser=nobody\nSupplementaryGroups=root\nExecStart=/bin/cat /proc/self/status\nStandardInput=socket\n",
        false,
    );
    let p = |n: &str| dir.path().join(n).display().to_string();
    let files = [p("inetd.conf"), p("xinetd.conf"), p("c.socket")];
    let mut args = Vec::new();
    for f in &files {
        args.extend(["-f".to_string(), f.clone()]);
    }
    let d = Doorman::start(TempDir::new(), &args, Opts::default());
    assert_eq!(d.addrs.len(), 4, "{}", d.log.text());
    let with_root: BTreeSet<u32> = grouplist("nobody", gid).into_iter().chain([0]).collect();
    let cases = [
        ("inetd.conf", gid, grouplist("nobody", gid)),
        ("xinetd", gid, BTreeSet::from([gid])),
        ("xinetd groups=yes group=root", 0, grouplist("nobody", 0)),
        ("unit", gid, with_root),
    ];
    for (i, (what, want_gid, want_groups)) in cases.iter().enumerate() {
        let (u, g, groups) = creds_of(&talk(d.addr(i), b""));
        assert_eq!(u, [uid; 4], "{what}");
        assert_eq!(g, [*want_gid; 4], "{what}");
        assert_eq!(&groups, want_groups, "{what}");
    }
    drop(d);

    // The command line: --user and --group.
    let d = Doorman::start(
        TempDir::new(),
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--user".into(),
            "nobody".into(),
            "--group".into(),
            "root".into(),
            "--".into(),
            "/bin/cat".into(),
            "/proc/self/status".into(),
        ],
        Opts::default(),
    );
    let (u, g, groups) = creds_of(&talk(d.addr(0), b""));
    assert_eq!(u, [uid; 4]);
    assert_eq!(g, [0; 4]);
    assert_eq!(groups, grouplist("nobody", 0));
}

#[test]
fn each_handler_leads_a_process_group_and_a_session_only_with_a_terminal() {
    // The handler (the shell itself: `$$` is the exec'd pid) reports its
    // pid, process group and session. It leads its own group; it leads a
    // session of its own only when doorman has a controlling terminal
    // (inherited from this test process, if it has one).
    let dir = TempDir::new();
    dir.write(
        "ids",
        "#!/bin/sh\necho $$\ncut -d' ' -f5,6 /proc/$$/stat\n",
        true,
    );
    let d = Doorman::with_conf(
        dir,
        "127.0.0.1:0 stream tcp nowait root {dir}/ids ids\n",
        &[],
    );
    let out = talk(d.addr(0), b"");
    let mut lines = out.lines();
    let pid = lines.next().unwrap().to_string();
    let ids: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_eq!(ids[0], pid, "process group: {out}");
    // SAFETY: open with flags; the fd, if any, is closed at once.
    let tty = unsafe {
        let fd = libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
        );
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    };
    if tty {
        assert_eq!(ids[1], pid, "a session of its own: {out}");
    } else {
        // doorman's session, which it shares with this test process.
        // SAFETY: getsid(0) has no preconditions.
        let ours = unsafe { libc::getsid(0) };
        assert_eq!(ids[1], ours.to_string(), "doorman's session: {out}");
    }
}

#[test]
fn with_a_terminal_each_handler_leads_a_session() {
    // doorman started on a pseudo-terminal by script(1), as from a shell:
    // its handlers must not share that terminal, so each leads a session.
    let dir = TempDir::new();
    let ids = dir.write(
        "ids",
        "#!/bin/sh\necho $$\ncut -d' ' -f5,6 /proc/$$/stat\nif (exec 3</dev/tty) 2>/dev/null; then echo tty; else echo no-tty; fi\n",
        true,
    );
    let pidfile = dir.path().join("pid");
    let addr: std::net::SocketAddr = "127.0.0.78:9".parse().unwrap();
    let cmd = format!(
        "{BIN} -q --pidfile {} --listen {addr} -- {}",
        pidfile.display(),
        ids.display()
    );
    let mut script = std::process::Command::new("script")
        .args(["-q", "-f", "-e", "-c", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("script(1) is required (util-linux)");
    assert!(eventually(DEADLINE, || pidfile.exists()
        && std::net::TcpStream::connect(addr).is_ok()));
    let doorman: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = talk(addr, b"");
    // SAFETY: signalling the doorman we started, by the pid it wrote.
    unsafe { libc::kill(doorman, libc::SIGTERM) };
    drop(script.stdin.take());
    wait_child(&mut script, DEADLINE).unwrap();
    let mut lines = out.lines();
    let pid = lines.next().unwrap().to_string();
    let ids: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_eq!(ids, [pid.as_str(), pid.as_str()], "{out}");
    assert_eq!(lines.next(), Some("no-tty"), "{out}");
}
