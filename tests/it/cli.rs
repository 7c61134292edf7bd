//! The one-service command line: `doorman --listen ADDR -- PROGRAM ARGS`.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use crate::util::*;

fn listen(args: &[&str]) -> Doorman {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Doorman::start(TempDir::new(), &args, Opts::default())
}

#[test]
fn listen_serves_program_with_args() {
    let d = listen(&["--listen", "127.0.0.1:0", "--", "/bin/echo", "one", "two"]);
    assert_eq!(talk(d.addr(0), b""), "one two\n");
    // The name defaults to the program's basename.
    assert!(d
        .log
        .text()
        .contains("listen service=echo/tcp addr=127.0.0.1:"));
}

#[test]
fn listen_repeated_and_ipv6_and_path_lookup() {
    let mut args = vec!["--listen", "127.0.0.1:0", "--listen", "127.0.0.2:0"];
    let v6 = have_ipv6();
    if v6 {
        args.extend(["--listen", "[::1]:0"]);
    }
    args.extend(["--name", "greet", "--", "echo", "hi"]);
    let d = listen(&args);
    assert_eq!(d.addrs.len(), if v6 { 3 } else { 2 });
    for a in &d.addrs {
        assert_eq!(talk(*a, b""), "hi\n", "{a}");
    }
    assert!(d.log.text().contains("listen service=greet/tcp"));
}

#[test]
fn listen_stdio_keeps_stderr_for_the_log() {
    let d = listen(&[
        "--listen",
        "127.0.0.1:0",
        "--",
        "/bin/sh",
        "-c",
        "echo to-client; echo to-log-$$ >&2",
    ]);
    assert_eq!(talk(d.addr(0), b""), "to-client\n");
    assert!(d.log.wait_for(&["to-log-"], DEADLINE).is_some());
}

#[test]
fn listen_max_instances_and_user() {
    let mut args = vec!["--listen", "127.0.0.1:0", "--max-instances", "1"];
    if is_root() {
        args.extend(["--user", "nobody"]);
    }
    args.extend(["--", "/bin/sh", "-c", "id -u; read x; echo bye"]);
    let d = listen(&args);
    let s1 = connect(d.addr(0));
    let mut r1 = BufReader::new(s1.try_clone().unwrap());
    let mut line = String::new();
    r1.read_line(&mut line).unwrap();
    if is_root() {
        assert_eq!(line, "65534\n");
    }
    let s2 = connect(d.addr(0));
    let mut r2 = BufReader::new(s2.try_clone().unwrap());
    s2.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut l2 = String::new();
    assert!(
        r2.read_line(&mut l2).is_err(),
        "second client served while the first runs"
    );
    drop(r1);
    drop(s1);
    s2.set_read_timeout(Some(DEADLINE)).unwrap();
    r2.read_line(&mut l2).unwrap();
    assert!(!l2.is_empty());
}

#[test]
fn usage_errors_exit_two() {
    for (args, msg) in [
        (&["--listen", "127.0.0.1:0"][..], "--listen needs a program"),
        (
            &["--listen", "nonsense:x", "--", "/bin/true"][..],
            "expected PORT",
        ),
        (
            &["--handover", "fd3", "-f", "/dev/null"][..],
            "--handover applies to --listen only",
        ),
        (
            &["--listen", "0", "--handover", "pipe", "--", "/bin/true"][..],
            "--handover \"pipe\"",
        ),
        (&["-f", "/dev/null", "/bin/true"][..], "without --listen"),
        (
            &["--no-such-flag"][..],
            "Unrecognized argument: --no-such-flag",
        ),
        (
            &["--listen", "0", "--group", "root", "--", "/bin/true"][..],
            "--group needs --user",
        ),
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    let (code, _, err) = run(&["--listen", "0", "--", "no-such-program-xyz"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("\"no-such-program-xyz\" not found in PATH"),
        "{err}"
    );
}

#[test]
fn ready_fd_signals_readiness() {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    use std::os::fd::AsRawFd;
    let wfd = w.as_raw_fd();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "--ready-fd",
        &wfd.to_string(),
        "--listen",
        "127.0.0.1:0",
        "--",
        "/bin/true",
    ])
    .stderr(std::process::Stdio::null());
    // SAFETY: fcntl on an fd we own, between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            libc::fcntl(wfd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(w);
    let mut got = String::new();
    BufReader::new(std::fs::File::from(r))
        .read_line(&mut got)
        .unwrap();
    assert_eq!(got, "READY\n");
    // SAFETY: signalling the child we started, by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_child(&mut child, DEADLINE).unwrap().code(), Some(0));
}
