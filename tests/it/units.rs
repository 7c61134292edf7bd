//! systemd `.socket` + `.service` pairs, run with no systemd.

use std::io::{BufRead, BufReader, Read};
use std::process::Command;
use std::time::Duration;

use crate::util::*;

fn seed(file: &str) -> String {
    std::fs::read_to_string(format!("{}/conf/seed/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn seed_units_as_published() {
    let dir = TempDir::new();
    // Exactly as published, but for the two paths of this machine: a
    // loopback test port and where the program lives.
    let socket = seed("my_app.socket").replace("ListenStream=9999", "ListenStream=127.0.0.1:0");
    let program = format!("{}/conf/seed/my_app.py", env!("CARGO_MANIFEST_DIR"));
    let service = seed("my_app.service").replace("/opt/my_app.py", &program);
    assert_ne!(socket, seed("my_app.socket"));
    assert_ne!(service, seed("my_app.service"));
    dir.write("my_app.socket", &socket, false);
    dir.write("my_app.service", &service, false);
    let unit = dir.path().join("my_app.socket");
    let d = Doorman::start(
        dir,
        &["-f".into(), unit.to_str().unwrap().into()],
        Opts::default(),
    );
    assert!(
        d.log.text().contains("listen service=my_app/tcp"),
        "{}",
        d.log.text()
    );
    // systemd's defaults: stdin /dev/null, stdout and stderr to the journal
    // (doorman's log), the socket on fd 3.
    assert!(
        d.log
            .text()
            .contains("mode=wait handover=stdin:null,stdout:log,stderr:log,fd3"),
        "{}",
        d.log.text()
    );
    assert!(children_of(d.pid()).is_empty());
    for round in 0..2 {
        let out = Command::new("nc")
            .args(["-w", "10", "127.0.0.1", &d.addr(0).port().to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Hello! The service has been awakened to serve you.\n"
        );
        assert!(eventually(DEADLINE, || d
            .log
            .count(&["exit service=my_app/tcp", "status=0"])
            == round + 1));
    }
    assert!(
        eventually(DEADLINE, || d.log.count(&["wake service=my_app/tcp"]) == 2),
        "{}",
        d.log.text()
    );
}

const ECHO_SOCKET: &str =
    "[Unit]\nDescription=Echo\n\n[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\n";

#[test]
fn accept_yes_template_serves_concurrent_clients() {
    let dir = TempDir::new();
    dir.write("echo.socket", ECHO_SOCKET, false);
    dir.write(
        "echo@.service",
        "[Service]\nExecStart=/bin/cat\nStandardInput=socket\n",
        false,
    );
    let d = Doorman::start(
        TempDir::new(),
        &["-f".into(), dir.path().to_str().unwrap().into()],
        Opts::default(),
    );
    let addr = d.addr(0);
    let clients: Vec<_> = (0..20)
        .map(|i| std::thread::spawn(move || talk(addr, format!("client {i}\n").as_bytes())))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.join().unwrap(), format!("client {i}\n"));
    }
    assert!(
        eventually(DEADLINE, || d.log.count(&["accept service=echo/tcp"]) == 20),
        "{}",
        d.log.text()
    );
    drop(dir);
}

#[test]
fn max_connections_and_instance_specifier() {
    let dir = TempDir::new();
    dir.write(
        "hold.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\nMaxConnections=2\n",
        false,
    );
    dir.write(
        "hold@.service",
        "[Service]\nExecStart=/bin/sh -c 'echo \"%i %p\"; read x'\nStandardInput=socket\n",
        false,
    );
    let unit = dir.path().join("hold.socket");
    let d = Doorman::start(
        dir,
        &["-f".into(), unit.to_str().unwrap().into()],
        Opts::default(),
    );
    let open = || {
        let s = connect(d.addr(0));
        (s.try_clone().unwrap(), BufReader::new(s))
    };
    let (mut w1, mut r1) = open();
    let (_w2, mut r2) = open();
    let mut l = String::new();
    r1.read_line(&mut l).unwrap();
    // %i: COUNTER-LOCAL-REMOTE, as systemd names Accept=yes instances.
    let me = w1.local_addr().unwrap();
    assert_eq!(l, format!("0-{}-{me} hold\n", d.addr(0)));
    l.clear();
    r2.read_line(&mut l).unwrap();
    assert!(l.starts_with("1-"), "{l}");
    // A third waits in the backlog until one of the two ends.
    let (_w3, mut r3) = open();
    r3.get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    l.clear();
    assert!(r3.read_line(&mut l).is_err());
    std::io::Write::write_all(&mut w1, b"bye\n").unwrap();
    r3.get_ref().set_read_timeout(Some(DEADLINE)).unwrap();
    r3.read_line(&mut l).unwrap();
    assert!(l.starts_with("2-"), "{l}");
}

/// Reports fds 0-4 and the LISTEN_* variables, to the log (stderr).
const REPORT: &str = r#"
import os, socket, sys
fds = []
for fd in range(0, 6):
    try:
        fds.append((fd, os.readlink("/proc/self/fd/%d" % fd)))
    except OSError:
        pass
names = []
for fd, t in fds:
    if t.startswith("socket:"):
        s = socket.socket(fileno=os.dup(fd))
        try:
            t = "sock:%d" % s.getsockname()[1]
        except OSError:
            t = "sock"
        s.close()
    names.append("%d=%s" % (fd, t if t.startswith("sock") else ("null" if t == "/dev/null" else "other")))
# One write, so that the line is not split among doorman's own log lines.
line = "REPORT %s %s %s %s\n" % (" ".join(names), os.environ.get("LISTEN_FDS"),
    os.environ.get("LISTEN_FDNAMES"), os.environ.get("LISTEN_PID") == str(os.getpid()))
os.write(2, line.encode())
if os.environ.get("LISTEN_FDS"):
    for fd in range(3, 3 + int(os.environ["LISTEN_FDS"])):
        l = socket.socket(fileno=fd)
        if os.environ["LISTEN_FDNAMES"] == "connection":
            l.sendall(b"connection on fd %d\n" % fd)
            continue
        c, _ = l.accept()
        c.sendall(b"fd %d\n" % fd)
        c.close()
else:
    sys.stdout.write("stdin socket\n")
"#;

#[test]
fn two_listen_streams_with_fd_names_in_order() {
    let dir = TempDir::new();
    dir.write("report.py", REPORT, false);
    dir.write(
        "two.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nListenStream=127.0.0.2:0\nFileDescriptorName=web\n",
        false,
    );
    dir.write(
        "two.service",
        "[Service]\nExecStart=/usr/bin/python3 {dir}/report.py\n",
        false,
    );
    let svc = std::fs::read_to_string(dir.path().join("two.service")).unwrap();
    dir.write(
        "two.service",
        &svc.replace("{dir}", dir.path().to_str().unwrap()),
        false,
    );
    let unit = dir.path().join("two.socket");
    let d = Doorman::start(
        dir,
        &["-f".into(), unit.to_str().unwrap().into()],
        Opts::default(),
    );
    let (a, b) = (d.addr(0), d.addr(1));
    // Connect to both first, then the instance serves fd 3 then fd 4.
    let s1 = connect(a);
    let s2 = connect(b);
    let mut out = String::new();
    BufReader::new(s1).read_to_string(&mut out).unwrap();
    assert_eq!(out, "fd 3\n");
    out.clear();
    BufReader::new(s2).read_to_string(&mut out).unwrap();
    assert_eq!(out, "fd 4\n");
    let report = d.log.wait_for(&["REPORT"], DEADLINE).unwrap();
    let report = &report[report.find("REPORT").unwrap()..];
    assert_eq!(
        report,
        format!(
            "REPORT 0=null 1=other 2=other 3=sock:{} 4=sock:{} 2 web:web True",
            a.port(),
            b.port()
        )
    );
    assert!(
        eventually(DEADLINE, || d.log.count(&["wake service="]) == 1),
        "{}",
        d.log.text()
    );
}

#[test]
fn standard_input_socket_versus_fd3() {
    let dir = TempDir::new();
    dir.write("report.py", REPORT, false);
    let p = format!("{}/report.py", dir.path().display());
    dir.write(
        "a.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\n",
        false,
    );
    dir.write("a@.service", &format!("[Service]\nExecStart=/usr/bin/python3 {p}\nStandardInput=socket\nStandardError=journal\n"), false);
    dir.write(
        "b.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\n",
        false,
    );
    dir.write(
        "b@.service",
        &format!("[Service]\nExecStart=/usr/bin/python3 {p}\n"),
        false,
    );
    let d = Doorman::start(
        TempDir::new(),
        &["-f".into(), dir.path().to_str().unwrap().into()],
        Opts::default(),
    );
    // a: socket on 0 and 1, stderr to the log, no LISTEN_FDS.
    assert_eq!(talk(d.addr(0), b""), "stdin socket\n");
    let p = d.addr(0).port();
    let r = d.log.wait_for(&["REPORT 0=sock"], DEADLINE).unwrap();
    assert!(
        r.ends_with(&format!(
            "REPORT 0=sock:{p} 1=sock:{p} 2=other None None False"
        )),
        "{r}"
    );
    // b: the connection on fd 3 with LISTEN_FDS=1, LISTEN_FDNAMES=connection,
    // stdin /dev/null, stdout and stderr to the log.
    assert_eq!(talk(d.addr(1), b""), "connection on fd 3\n");
    let p = d.addr(1).port();
    let r = d.log.wait_for(&["REPORT 0=null"], DEADLINE).unwrap();
    assert!(
        r.ends_with(&format!(
            "REPORT 0=null 1=other 2=other 3=sock:{p} 1 connection True"
        )),
        "{r}"
    );
    drop(dir);
}

#[test]
fn dropin_resets_exec_start_and_unknown_directive_warns() {
    let dir = TempDir::new();
    dir.write(
        "d.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\nFrobnicate=yes\n",
        false,
    );
    dir.write(
        "d@.service",
        "[Service]\nExecStart=/bin/echo original\nStandardInput=socket\n",
        false,
    );
    std::fs::create_dir(dir.path().join("d@.service.d")).unwrap();
    dir.write(
        "d@.service.d/10-override.conf",
        "[Service]\nExecStart=\nExecStart=/bin/echo \\\n  overridden\n",
        false,
    );
    let unit = dir.path().join("d.socket");
    let d = Doorman::start(
        dir,
        &["-f".into(), unit.to_str().unwrap().into()],
        Opts::default(),
    );
    assert_eq!(talk(d.addr(0), b""), "overridden\n");
    let w = d
        .log
        .wait_for(&["unknown directive Frobnicate="], DEADLINE)
        .unwrap();
    assert!(w.contains("d.socket:4: "), "{w}");
}

#[test]
fn unit_errors_name_file_line_and_directive() {
    let dir = TempDir::new();
    dir.write(
        "bad.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=maybe\nBindToDevice=eth0\nIPAddressDeny=example.com\n",
        false,
    );
    dir.write(
        "bad.service",
        "[Service]\nExecStart=relative/path\nNice=99\n",
        false,
    );
    let unit = dir.path().join("bad.socket");
    let (code, _, err) = run(&["--check", "-f", unit.to_str().unwrap()]);
    assert_eq!(code, 1);
    let p = unit.display().to_string();
    let s = dir.path().join("bad.service").display().to_string();
    for needle in [
        format!("{p}:3: Accept: \"maybe\" is not a boolean"),
        format!("{p}:4: BindToDevice: is not supported by doorman"),
        format!("{p}:5: IPAddressDeny: \"example.com\": host names are not resolved"),
        format!("{s}:2: ExecStart: \"relative/path\" is not an absolute path"),
        format!("{s}:3: Nice: expected -20 to 19"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in\n{err}");
    }
    // A socket without its service.
    let lone = dir.write("lone.socket", "[Socket]\nListenStream=9\n", false);
    let (code, _, err) = run(&["--check", "-f", lone.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("lone.service: No such file or directory"),
        "{err}"
    );
}

#[test]
fn service_settings_reach_the_handler() {
    let dir = TempDir::new();
    dir.write("envfile", "# comment\nFROM_FILE=\"file value\"\n", false);
    dir.write(
        "s.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\n",
        false,
    );
    dir.write(
        "s@.service",
        &format!(
            "[Service]\nExecStart=/bin/sh -c 'echo \"$GREETING|$FROM_FILE|$(pwd)|$(umask)|$(ulimit -n)|$(nice)\"'\n\
             StandardInput=socket\nEnvironment=\"GREETING=hello world\" UNUSED=1\nEnvironmentFile={}/envfile\n\
             EnvironmentFile=-/nonexistent/env\nWorkingDirectory=/tmp\nUMask=0027\nLimitNOFILE=123\nNice=5\n",
            dir.path().display()
        ),
        false,
    );
    let unit = dir.path().join("s.socket");
    let d = Doorman::start(
        dir,
        &["-f".into(), unit.to_str().unwrap().into()],
        Opts::default(),
    );
    assert_eq!(
        talk(d.addr(0), b""),
        "hello world|file value|/tmp|0027|123|5\n"
    );
}

#[test]
fn same_service_from_every_front_end() {
    let dir = TempDir::new();
    // One service, said in each syntax: at most 5 at once, 50 starts per
    // second then a 1 s pause (what systemd's trigger limit means), as nobody.
    dir.write(
        "inetd.conf",
        "127.0.0.1:7777 stream tcp nowait/5,rate=50/1/1 nobody /bin/cat /bin/cat -u\n",
        false,
    );
    dir.write(
        "e.socket",
        "[Socket]\nListenStream=127.0.0.1:7777\nAccept=yes\nMaxConnections=5\nTriggerLimitBurst=50\nTriggerLimitIntervalSec=1\nPollLimitBurst=0\n",
        false,
    );
    dir.write("e@.service", "[Service]\nUser=nobody\nExecStart=/bin/cat -u\nStandardInput=socket\nStandardError=socket\n", false);
    dir.write(
        "xinetd.conf",
        "service e\n{\n    type = UNLISTED\n    port = 7777\n    bind = 127.0.0.1\n    socket_type = stream\n    wait = no\n    user = nobody\n    server = /bin/cat\n    flags = NAMEINARGS\n    server_args = /bin/cat -u\n    instances = 5\n    cps = 50 1\n}\n",
        false,
    );
    let line = |f: &str| {
        let path = dir.path().join(f);
        let (code, out, err) = run(&["--check", "-f", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{f}: {err}");
        // Everything after the name is the normalized service.
        out.trim().split_once(' ').unwrap().1.to_string()
    };
    let inetd = line("inetd.conf");
    // A unit's handler gets a service manager's environment, not
    // doorman's: the one difference, shown as such.
    let unit = line("e.socket");
    assert!(unit.contains(" env=manager "), "{unit}");
    assert_eq!(inetd, unit.replace(" env=manager ", " "));
    assert_eq!(inetd, line("xinetd.conf"));
    assert!(
        inetd.contains(
            "listen=stream:tcp4:127.0.0.1:7777 mode=nowait handover=inetd user=nobody(65534)"
        ),
        "{inetd}"
    );
    assert!(inetd.contains("rate=50/1s,pause=1s"), "{inetd}");
}

#[test]
fn format_override() {
    let dir = TempDir::new();
    // Named like a unit, but inetd.conf syntax: --format says so.
    let f = dir.write(
        "odd.socket",
        "127.0.0.1:7778 stream tcp nowait root /bin/cat cat\n",
        false,
    );
    let (code, _, _) = run(&["--check", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    let (code, out, err) = run(&["--check", "--format", "inetd", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("127.0.0.1:7778"));
    let (code, _, err) = run(&["--check", "--format", "nope", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn socket_options_reach_the_connection() {
    let dir = TempDir::new();
    dir.write(
        "opts.py",
        "import socket\ns = socket.socket(fileno=0)\nprint(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0, s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, flush=True)\n",
        false,
    );
    let p = dir.path().join("opts.py");
    dir.write("o.socket", "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\nKeepAlive=yes\nNoDelay=yes\nReusePort=yes\n", false);
    dir.write(
        "o@.service",
        &format!(
            "[Service]\nExecStart=/usr/bin/python3 {}\nStandardInput=socket\n",
            p.display()
        ),
        false,
    );
    dir.write(
        "p.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\n",
        false,
    );
    dir.write(
        "p@.service",
        &format!(
            "[Service]\nExecStart=/usr/bin/python3 {}\nStandardInput=socket\n",
            p.display()
        ),
        false,
    );
    let d = Doorman::start(
        TempDir::new(),
        &["-f".into(), dir.path().to_str().unwrap().into()],
        Opts::default(),
    );
    assert_eq!(talk(d.addr(0), b""), "True True\n");
    // Negative control: without the directives, neither is set.
    assert_eq!(talk(d.addr(1), b""), "False False\n");
}

#[test]
fn unit_stop_settings_are_used_at_shutdown() {
    // KillSignal=SIGINT reaches the handler (its trap answers it, SIGTERM
    // would not run it) well within TimeoutStopSec=, so no SIGKILL.
    let dir = TempDir::new();
    dir.write(
        "k.socket",
        "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\n",
        false,
    );
    dir.write(
        "k@.service",
        "[Service]\nExecStart=/bin/sh -c 'trap \"echo got-INT >&2; exit 0\" INT; echo started; while :; do sleep 0.1; done'\n\
         StandardInput=socket\nStandardError=journal\nKillSignal=SIGINT\nKillMode=process\nTimeoutStopSec=5\n",
        false,
    );
    let unit = dir.path().join("k.socket");
    let mut d = Doorman::start(
        TempDir::new(),
        &[
            "-f".into(),
            unit.to_str().unwrap().into(),
            "--on-stop".into(),
            "term".into(),
        ],
        Opts::default(),
    );
    let s = connect(d.addr(0));
    let mut r = BufReader::new(s);
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert_eq!(l, "started\n");
    assert_eq!(d.stop().code(), Some(0));
    let text = d.log.text();
    assert!(text.contains("got-INT"), "{text}");
    assert!(text.contains("waiting up to 5s"), "{text}");
    assert!(!text.contains("sending SIGKILL"), "{text}");
}

#[test]
fn abstract_unix_socket() {
    let dir = TempDir::new();
    let name = format!("doorman-test-{}", std::process::id());
    dir.write(
        "abs.socket",
        &format!("[Socket]\nListenStream=@{name}\nAccept=yes\n"),
        false,
    );
    dir.write(
        "abs@.service",
        "[Service]\nExecStart=/bin/sh -c 'echo hi $REMOTE_UID'\nStandardInput=socket\n",
        false,
    );
    let unit = dir.path().join("abs.socket");
    let d = Doorman::start(
        dir,
        &["-f".into(), unit.to_str().unwrap().into()],
        Opts::default(),
    );
    // No file: the name lives in the abstract namespace.
    assert!(
        d.log.text().contains(&format!("addr=@{name}")),
        "{}",
        d.log.text()
    );
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect('\\0'+sys.argv[1])\nb=b''\nwhile True:\n  x=s.recv(100)\n  if not x: break\n  b+=x\nsys.stdout.write(b.decode())\n",
            &name,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("hi {uid}\n"));
}
