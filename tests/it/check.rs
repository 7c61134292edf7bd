//! `--check`: validation without binding, the normalized listing, errors
//! with file:line, and real-world inetd.conf files.

use crate::util::*;

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_lists_services_without_binding() {
    let dir = TempDir::new();
    // A port that is certainly in use: --check must not try to bind it.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let conf = dir.write(
        "ok.conf",
        &format!(
            "# comment\n\n127.0.0.1:{port}\tstream tcp nowait/4/30/2 nobody /bin/cat cat -u\n[::1]:echo stream tcp6 nowait.10,handover=fd3 root /bin/cat cat\n"
        ),
        false,
    );
    let (code, out, err) = run(&["--check", "-f", conf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with(&format!("{port} listen=stream:tcp4:127.0.0.1:{port} mode=nowait handover=inetd user=nobody(65534)")), "{}", lines[0]);
    assert!(
        lines[0]
            .contains("max-child=4 max-child-per-ip=2 source-rate=30/60s,burst=30 rate=256/60s"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with("program=/bin/cat argv=[cat -u]"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1]
            .starts_with("echo listen=stream:tcp6:[::1]:7 mode=nowait handover=fd3 user=root(0)"),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("rate=10/60s"), "{}", lines[1]);
}

#[test]
fn check_reports_every_error_with_file_and_line() {
    let dir = TempDir::new();
    let conf = dir.write(
        "bad.conf",
        "echo stream tcp nowait root /bin/cat cat\n\
         9999 stream tcp nowait nobdy /bin/cat cat\n\
         9998 stream tcp nowiat root /bin/cat cat\n\
         9997 stream tcp nowait root /bin/cat\n\
         no-such-service-name stream tcp nowait root /bin/cat cat\n\
         9996 stream tcp nowait root:no-such-group /bin/cat cat\n\
         9995 stream tcp\n\
         9994 stream tcp nowait,handover=pipe root /bin/cat cat\n\
         /run/x.sock dgram unix nowait root /bin/cat cat\n",
        false,
    );
    let path = conf.to_str().unwrap();
    let (code, out, err) = run(&["--check", "-f", path]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.is_empty(), "{out}");
    for (line, what) in [
        (2, "user: unknown user \"nobdy\""),
        (3, "wait: expected wait or nowait, found \"nowiat\""),
        (5, "service: unknown service \"no-such-service-name\""),
        (6, "group: unknown group \"no-such-group\""),
        (7, "expected at least 6 fields"),
        (8, "wait: handover=\"pipe\""),
        (9, "wait: unix dgram services must be wait"),
    ] {
        let needle = format!("doorman: {path}:{line}: {what}");
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    assert_eq!(err.lines().count(), 7, "{err}");
    // Line 4 (no argv0) and line 1 are fine; an unsupported socket type is
    // only a warning when the file is otherwise valid.
    let ok = dir.write(
        "ok.conf",
        "9993 raw icmp wait root /usr/sbin/pingd pingd\n9999 stream tcp nowait root /bin/cat\n",
        false,
    );
    let (code, out, err) = run(&["--check", "-f", ok.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "{}:1: socket type \"raw\" is not supported; line skipped",
            ok.display()
        )),
        "{err}"
    );
    assert!(out.contains("program=/bin/cat argv=[cat]"), "{out}");
}

#[test]
fn conflicting_binds_name_both_lines() {
    let dir = TempDir::new();
    let conf = dir.write(
        "dup.conf",
        "127.0.0.1:9999 stream tcp nowait root /bin/cat cat\n127.0.0.1:9999 stream tcp nowait root /bin/cat cat\n",
        false,
    );
    let (code, _, err) = run(&["--check", "-f", conf.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("dup.conf:2: service: stream 127.0.0.1:9999 is already bound by 9999/tcp"),
        "{err}"
    );
    assert!(err.contains("dup.conf:1)"), "{err}");
}

#[test]
fn real_world_files_parse() {
    for f in ["debian-inetd.conf", "freebsd-inetd.conf"] {
        let (code, _, err) = run(&["--check", "-f", &data(f)]);
        assert_eq!(code, 0, "{f}: {err}");
    }
}

#[test]
fn bind_failure_exits_one_naming_service_and_line() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = TempDir::new();
    let conf = dir.write(
        "busy.conf",
        &format!("\n127.0.0.1:{port} stream tcp nowait root /bin/cat cat\n"),
        false,
    );
    let (code, _, err) = run(&["-f", conf.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "doorman: {port}/tcp: bind 127.0.0.1:{port}: Address already in use ({}:2)",
            conf.display()
        )),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_an_error() {
    let (code, _, err) = run(&["--check", "-f", "/nonexistent/doorman.conf"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/doorman.conf: No such file or directory"),
        "{err}"
    );
}
