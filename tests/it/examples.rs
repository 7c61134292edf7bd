//! The shipped example configuration really runs (on free ports).

use crate::util::*;

#[test]
fn conf_doorman_conf_serves_its_services() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/conf/doorman.conf")).unwrap();
    let (code, out, err) = run(&["--check", "-f", &format!("{root}/conf/doorman.conf")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    // Same file, ports 9999/9998 replaced by 0 (IPv6 line dropped on hosts without it).
    let v6 = have_ipv6();
    let conf: String = text
        .lines()
        .filter(|l| v6 || !l.starts_with('['))
        .map(|l| l.replace(":9999 ", ":0    ").replace(":9998 ", ":0    ") + "\n")
        .collect();
    let d = Doorman::with_conf(TempDir::new(), &conf, &[]);
    assert_eq!(d.addrs.len(), if v6 { 3 } else { 2 });
    let hello = talk(d.addr(0), b"");
    assert!(
        hello.starts_with("Hello 127.0.0.1:"),
        "{hello}\n{}",
        d.log.text()
    );
    assert!(
        hello.contains(&format!("on 127.0.0.1:{}, handler pid", d.addr(0).port())),
        "{hello}"
    );
    if v6 {
        assert!(talk(d.addr(1), b"").starts_with("Hello ::1:"));
    }
    let echo = d.addrs[d.addrs.len() - 1];
    assert_eq!(talk(echo, b"ping\n"), "ping\n");
}

#[test]
fn conf_units_serve_their_service() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = TempDir::new();
    for f in ["hello.socket", "hello@.service"] {
        let text = std::fs::read_to_string(format!("{root}/conf/units/{f}")).unwrap();
        dir.write(f, &text.replace("127.0.0.1:9996", "127.0.0.1:0"), false);
    }
    let units = dir.path().to_str().unwrap().to_string();
    let d = Doorman::start(TempDir::new(), &["-f".into(), units], Opts::default());
    let hello = talk(d.addr(0), b"");
    assert!(
        hello.starts_with("Hello 127.0.0.1:"),
        "{hello}\n{}",
        d.log.text()
    );
    drop(dir);
}

#[test]
fn conf_xinetd_serves_its_service() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = TempDir::new();
    let text = std::fs::read_to_string(format!("{root}/conf/xinetd/hello")).unwrap();
    dir.write("hello", &text.replace("9995", "0"), false);
    let d = Doorman::start(
        TempDir::new(),
        &["-f".into(), dir.path().to_str().unwrap().into()],
        Opts::default(),
    );
    let hello = talk(d.addr(0), b"");
    assert!(
        hello.starts_with("Hello 127.0.0.1:"),
        "{hello}\n{}",
        d.log.text()
    );
    drop(dir);
}

#[test]
fn conf_proxyd_starts_its_web_server_on_demand() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = TempDir::new();
    let (port, backend) = (free_port(), free_port());
    for f in ["proxy-to-web.socket", "proxy-to-web.service", "web.service"] {
        let text = std::fs::read_to_string(format!("{root}/conf/proxyd/{f}")).unwrap();
        let text = text
            .replace("127.0.0.1:9994", &format!("127.0.0.1:{port}"))
            .replace("19994", &backend.to_string());
        dir.write(f, &text, false);
    }
    let units = dir.path().to_str().unwrap().to_string();
    let d = Doorman::start(TempDir::new(), &["-f".into(), units], Opts::default());
    assert!(children_of(d.pid()).is_empty());
    let page = talk(d.addr(0), b"GET / HTTP/1.0\r\n\r\n");
    assert!(page.starts_with("HTTP/1.0 200"), "{page}\n{}", d.log.text());
    assert!(page.contains("Directory listing"), "{page}");
    assert_eq!(children_of(d.pid()).len(), 1);
    drop(dir);
}
