//! xinetd configurations, run unchanged.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use crate::util::*;

fn fixture(rel: &str) -> String {
    format!(
        "{}/tests/data/xinetd/debian/{rel}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn debian_shipped_files_parse() {
    // /etc/xinetd.conf with its includedir pointed at Debian's shipped
    // /etc/xinetd.d (all services there are internal and disabled).
    let dir = TempDir::new();
    let conf = std::fs::read_to_string(fixture("etc/xinetd.conf")).unwrap();
    let conf = conf.replace(
        "includedir /etc/xinetd.d",
        &format!("includedir {}", fixture("etc/xinetd.d")),
    );
    let f = dir.write("xinetd.conf", &conf, false);
    let (code, out, err) = run(&["--check", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("declares no service"), "{err}");
    // The directory alone, read as an includedir.
    let (code, _, err) = run(&["--check", "-f", &fixture("etc/xinetd.d")]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn xinetd_service_behaves_as_xinetd_would() {
    let dir = TempDir::new();
    dir.write(
        "hold",
        "#!/bin/sh\necho \"$1 $2 $GREETING\"\nread x\n",
        true,
    );
    let conf = format!(
        "defaults\n{{\n    instances = 10\n    log_type = SYSLOG daemon info\n}}\n\n\
         service hold\n{{\n    type = UNLISTED\n    socket_type = stream\n    protocol = tcp\n    wait = no\n    user = root\n\
         \x20   server = {}/hold\n    server_args = first second\n    port = 0\n    bind = 127.0.0.1\n\
         \x20   instances = 2\n    per_source = 1\n    env = GREETING=hi\n}}\n",
        dir.path().display()
    );
    let f = dir.write("xinetd.conf", &conf, false);
    let d = Doorman::start(
        TempDir::new(),
        &["-f".into(), f.to_str().unwrap().into()],
        Opts::default(),
    );
    assert!(
        d.log.text().contains("log_type"),
        "the ignored attribute is said: {}",
        d.log.text()
    );
    let open = |src: &str| {
        let s = std::net::TcpStream::connect_timeout(&d.addr(0), DEADLINE).unwrap();
        let _ = src;
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        (s.try_clone().unwrap(), BufReader::new(s))
    };
    // server_args and env reach the server.
    let (mut w1, mut r1) = open("a");
    let mut l = String::new();
    r1.read_line(&mut l).unwrap();
    assert_eq!(l, "first second hi\n");
    // per_source = 1: a second connection from the same address is closed.
    assert_eq!(talk(d.addr(0), b""), "");
    assert!(d
        .log
        .wait_for(
            &["refuse service=hold/tcp", "per-source-instances"],
            DEADLINE
        )
        .is_some());
    drop(d.log.lines());
    w1.write_all(b"x\n").unwrap();
    assert!(eventually(DEADLINE, || d
        .log
        .count(&["exit service=hold/tcp"])
        == 1));
    // instances = 2: from two addresses... loopback offers 127.0.0.0/8.
    let from = |ip: &str| {
        let sock = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let local: std::net::SocketAddrV4 = format!("{ip}:0").parse().unwrap();
        nix::sys::socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &nix::sys::socket::SockaddrIn::from(local),
        )
        .unwrap();
        let std::net::SocketAddr::V4(to) = d.addr(0) else {
            unreachable!()
        };
        nix::sys::socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &nix::sys::socket::SockaddrIn::from(to),
        )
        .unwrap();
        let s = std::net::TcpStream::from(sock);
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        (s.try_clone().unwrap(), BufReader::new(s))
    };
    let (_a, mut ra) = from("127.0.0.2");
    let (_b, mut rb) = from("127.0.0.3");
    l.clear();
    ra.read_line(&mut l).unwrap();
    rb.read_line(&mut l).unwrap();
    let (_c, mut rc) = from("127.0.0.4");
    rc.get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    l.clear();
    assert!(rc.read_line(&mut l).is_err(), "a third instance ran: {l}");
}

#[test]
fn unsupported_attribute_is_an_error_naming_it() {
    let dir = TempDir::new();
    let f = dir.write(
        "x.conf",
        "service echo\n{\n    socket_type = stream\n    wait = no\n    user = root\n    server = /bin/cat\n    max_load = 2.5\n}\n",
        false,
    );
    let (code, _, err) = run(&["--check", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{}:7: max_load:", f.display())),
        "{err}"
    );
    assert!(err.contains("not supported yet"), "{err}");
}

#[test]
fn cps_pauses_and_resumes_and_internal_services_run() {
    // Two connections a second, then a pause of 1 s; and Debian's own
    // internal echo file, enabled, on a test port.
    let dir = TempDir::new();
    let echo = std::fs::read_to_string(fixture("etc/xinetd.d/echo"))
        .unwrap()
        .replacen(
            "disable\t\t= yes\n\ttype\t\t= INTERNAL",
            "disable\t\t= no\n\tport\t\t= 0\n\tbind\t\t= 127.0.0.1\n\ttype\t\t= INTERNAL UNLISTED",
            1,
        );
    let conf = format!(
        "service limited\n{{\n    type = UNLISTED\n    port = 0\n    bind = 127.0.0.1\n    socket_type = stream\n    wait = no\n    user = root\n    server = /bin/echo\n    server_args = ok\n    cps = 2 1\n}}\n{echo}"
    );
    let f = dir.write("x.conf", &conf, false);
    let d = Doorman::start(
        TempDir::new(),
        &["-f".into(), f.to_str().unwrap().into()],
        Opts::default(),
    );
    for _ in 0..2 {
        assert_eq!(talk(d.addr(0), b""), "ok\n");
    }
    // The second within the second reached it: the service pauses, and
    // the next client waits for the resume (none is closed).
    assert!(
        d.log
            .wait_for(&["pause service=limited"], DEADLINE)
            .is_some(),
        "{}",
        d.log.text()
    );
    assert_eq!(talk(d.addr(0), b""), "ok\n");
    assert!(d
        .log
        .wait_for(&["resume service=limited"], DEADLINE)
        .is_some());
    // The internal echo from Debian's file answers.
    let echoes: Vec<_> = d.addrs.iter().skip(1).collect();
    assert!(!echoes.is_empty(), "{}", d.log.text());
    assert_eq!(talk(*echoes[0], b"ping\n"), "ping\n");
}
