//! The install paths: the scratch container layout (run without Docker),
//! the Debian package's conffile and systemd unit, and the README examples
//! that must not drift from the files and commands they show.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

fn top() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(top().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The words of the Dockerfile's exec-form `ENTRYPOINT ["a", "b", ...]`.
fn entrypoint(dockerfile: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT line");
    let inner = line
        .trim()
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .expect("exec form");
    inner
        .split(',')
        .map(|w| {
            let w = w.trim();
            assert!(w.len() >= 2 && w.starts_with('"') && w.ends_with('"'));
            w[1..w.len() - 1].to_string()
        })
        .collect()
}

#[test]
fn container_layout_runs_doorman_as_pid1() {
    if !is_root() {
        eprintln!("SKIPPED: the container test needs root (unshare --pid, chroot)");
        return;
    }
    let dockerfile = read("conf/container/Dockerfile");
    assert!(
        dockerfile.lines().any(|l| l == "FROM scratch"),
        "{dockerfile}"
    );
    assert!(
        dockerfile.lines().any(|l| l == "COPY rootfs/ /"),
        "{dockerfile}"
    );
    // README.md's commands for this, run as they are shown, on a
    // temporary directory instead of /tmp/rootfs.
    let block = container_block();
    assert_eq!(block.len(), 3, "{block:?}");
    let dir = TempDir::new();
    let root = dir.path().join("rootfs");
    let rootfs = root.to_str().unwrap();
    let words = |line: &str| -> Vec<String> {
        line.replace("/tmp/rootfs", rootfs)
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    for line in &block[..2] {
        let w = words(line);
        // A relative program is the repository's own script.
        let prog = if w[0].contains('/') {
            top().join(&w[0])
        } else {
            PathBuf::from(&w[0])
        };
        let out = Command::new(prog)
            .args(&w[1..])
            .current_dir(top())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            out.status.success(),
            "{line}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let doorman_size = std::fs::metadata(root.join("usr/sbin/doorman"))
        .unwrap()
        .len();
    eprintln!("static doorman: {doorman_size} bytes");

    // A name the files do not hold is an error saying where it looked,
    // for the command line and for a configuration file line.
    let chroot = |args: &[&str]| {
        let out = Command::new("chroot")
            .arg(&root)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = chroot(&[
        "/usr/sbin/doorman",
        "--check",
        "--listen",
        "127.0.0.1:0",
        "--user",
        "ghost",
        "--",
        "/usr/local/bin/hello",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("user: unknown user \"ghost\" (not in /etc/passwd)"),
        "{err}"
    );
    std::fs::write(
        root.join("etc/bad.conf"),
        "127.0.0.1:0 stream tcp nowait app:ghosts /usr/local/bin/hello hello\n",
    )
    .unwrap();
    let (code, _, err) = chroot(&["/usr/sbin/doorman", "--check", "-f", "/etc/bad.conf"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("/etc/bad.conf:1: group: unknown group \"ghosts\" (not in /etc/group)"),
        "{err}"
    );
    // A bare uid needs no passwd entry; a group name comes from the file.
    let (code, out, err) = chroot(&[
        "/usr/sbin/doorman",
        "--check",
        "--listen",
        "127.0.0.1:0",
        "--user",
        "4242",
        "--group",
        "staff",
        "--",
        "/usr/local/bin/hello",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("user=4242(4242) group=50 "), "{out}");

    // The image's ENTRYPOINT, in its PID namespace and chroot, on a free
    // loopback port instead of 7000.
    let mut argv = words(&block[2]);
    let at = argv.iter().position(|a| a == rootfs).unwrap() + 1;
    assert_eq!(
        argv[..at + 1].join(" "),
        format!(
            "unshare --pid --fork --mount-proc={rootfs}/proc chroot {rootfs} /usr/sbin/doorman"
        )
    );
    assert_eq!(
        argv[at..],
        entrypoint(&dockerfile),
        "README.md and the Dockerfile differ"
    );
    let listen = argv.iter().position(|a| a == "--listen").unwrap() + 1;
    argv[listen] = "127.0.0.1:0".into();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let log = Log::default();
    let l2 = log.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l2.push_line(line);
        }
        l2.push_line("<eof>".into());
    });
    let listen = log.wait_for(&["listen service="], DEADLINE);
    let Some(listen) = listen else {
        let _ = child.kill();
        panic!("doorman did not start:\n{}", log.text());
    };
    assert!(listen.contains("doorman[1]:"), "not PID 1: {listen}");
    assert!(
        log.wait_for(&["ready"], DEADLINE).is_some(),
        "{}",
        log.text()
    );
    let inner = children_of(child.id() as i32);
    assert_eq!(inner.len(), 1, "{inner:?}");
    let doorman = inner[0].0;
    eprintln!("static doorman idle RSS: {} kB", rss_kb(doorman));

    // The handler ran as app (uid 1000), its group, and its supplementary
    // group from /etc/group (staff, 50); the kernel sorts the list.
    let addr = field(&listen, "addr").parse().unwrap();
    let reply = talk(addr, b"");
    assert!(
        reply.starts_with("hello from uid=1000 gid=1000 groups=50,1000 pid="),
        "{reply}\n{}",
        log.text()
    );
    assert!(
        log.wait_for(&["exit service=", "status=0"], DEADLINE)
            .is_some(),
        "{}",
        log.text()
    );
    // Reaped: no zombie, no child left under PID 1.
    assert!(
        eventually(DEADLINE, || children_of(doorman).is_empty()),
        "{:?}",
        children_of(doorman)
    );

    // SIGTERM to PID 1 (which has no default action for it) stops it cleanly.
    // SAFETY: kill on the doorman we started (through unshare), by pid.
    unsafe { libc::kill(doorman, libc::SIGTERM) };
    let st = wait_child(&mut child, DEADLINE).expect("doorman exits on SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", log.text());
    assert!(log.wait_for(&["stop listeners=1"], DEADLINE).is_some());
    assert!(!Path::new(&format!("/proc/{doorman}")).exists());
}

/// `[Service]` settings of a unit file, in order.
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

#[test]
fn systemd_unit_starts_reloads_and_stops_doorman_as_type_notify() {
    let unit = read("conf/debian/doorman.service");
    let settings = service_settings(&unit);
    let get = |k: &str| {
        settings
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k}= in doorman.service"))
    };
    assert_eq!(get("Type"), "notify");
    // What systemd would run, with the package's paths mapped to this
    // checkout: the binary and the shipped conffile as installed.
    let exec: Vec<String> = get("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(exec[0], "/usr/sbin/doorman");
    let args: Vec<String> = exec[1..]
        .iter()
        .map(|a| {
            if a == "/etc/doorman.conf" {
                top().join("conf/debian/doorman.conf").display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    assert!(
        args.iter().any(|a| a.ends_with("conf/debian/doorman.conf")),
        "{args:?}"
    );
    let dir = TempDir::new();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut d = Doorman::start(
        dir,
        &args,
        Opts {
            env: vec![("NOTIFY_SOCKET".into(), sock_path.to_str().unwrap().into())],
            ..Opts::default()
        },
    );
    let mut buf = [0u8; 1024];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let m = recv();
    assert!(m.starts_with("READY=1\n"), "{m}");
    // ExecReload, with $MAINPID as systemd sets it.
    let reload: Vec<String> = get("ExecReload")
        .replace("$MAINPID", &d.pid().to_string())
        .split_whitespace()
        .map(String::from)
        .collect();
    let st = Command::new(&reload[0])
        .args(&reload[1..])
        .status()
        .unwrap();
    assert!(st.success());
    let m = recv();
    assert!(m.starts_with("RELOADING=1\n"), "{m}");
    assert!(recv().starts_with("READY=1"));
    assert!(
        d.log.wait_for(&["reload result=ok"], DEADLINE).is_some(),
        "{}",
        d.log.text()
    );
    assert_eq!(d.stop().code(), Some(0));
    assert_eq!(recv(), "STOPPING=1");
}

#[test]
fn shipped_conffile_serves_nothing_and_its_examples_are_valid() {
    let path = top().join("conf/debian/doorman.conf");
    let (code, out, err) = run(&["--check", "-f", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("declares no service"), "{err}");
    // Each example is disabled by a "#" glued to it; with those removed
    // every example must be a valid service.
    let text = std::fs::read_to_string(&path).unwrap();
    let examples: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.starts_with(|c: char| !c.is_whitespace() && c != '#'))
        .collect();
    assert_eq!(examples.len(), 5, "{examples:?}");
    let dir = TempDir::new();
    let enabled = dir.write("doorman.conf", &(examples.join("\n") + "\n"), false);
    let (code, out, err) = run(&["--check", "-f", enabled.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5, "{out}\n{err}");
}

/// The README's section that starts with `## {title}`.
fn readme_section(title: &str) -> String {
    let readme = read("README.md");
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("no section {title:?} in README.md"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 4);
    rest[..end].to_string()
}

/// Fenced blocks of a Markdown text: (the line before the fence, info
/// string, body).
fn fenced_blocks(md: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        if let Some(info) = lines[i].strip_prefix("```") {
            let before = (0..i)
                .rev()
                .map(|j| lines[j])
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            let mut body = String::new();
            i += 1;
            while i < lines.len() && lines[i] != "```" {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            out.push((before, info.to_string(), body));
        }
        i += 1;
    }
    out
}

#[test]
fn readme_migration_examples_are_the_fixtures_and_their_check_output() {
    let section = readme_section("Migrating from inetd / xinetd / systemd socket units");
    let blocks = fenced_blocks(&section);
    let mut files = 0;
    let mut checks = 0;
    for (before, info, body) in &blocks {
        // "`path`:" then the file's text, verbatim.
        if let Some(rel) = before.strip_prefix('`').and_then(|b| b.strip_suffix("`:")) {
            assert_eq!(body, &read(rel), "README.md shows {rel} not as it is");
            files += 1;
        }
        // "$ doorman --check ..." then exactly what it prints.
        if info == "console" {
            let mut lines = body.lines();
            let cmd = lines.next().unwrap();
            let Some(args) = cmd.strip_prefix("$ doorman ") else {
                continue;
            };
            let args: Vec<&str> = args.split_whitespace().collect();
            assert_eq!(args[0], "--check", "{cmd}");
            let out = Command::new(BIN)
                .args(&args)
                .current_dir(top())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{cmd}: {stderr}");
            let shown: String = lines.map(|l| format!("{l}\n")).collect();
            let real: String = stdout
                .lines()
                .chain(stderr.lines())
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(shown, real, "README.md's output of `{cmd}` is stale");
            checks += 1;
        }
    }
    assert_eq!((files, checks), (4, 3), "one worked example per format");
}

/// The README's commands that run the container's tree without Docker.
fn container_block() -> Vec<String> {
    fenced_blocks(&readme_section("Install"))
        .into_iter()
        .find(|(_, _, body)| body.contains("unshare "))
        .expect("a block with unshare in README.md's Install section")
        .2
        .lines()
        .map(String::from)
        .collect()
}

/// A shell line without a leading `#` (a comment showing a command) or a
/// trailing `# comment`.
fn command_of(line: &str) -> &str {
    let l = line.trim().trim_start_matches('#');
    l.split(" #").next().unwrap().trim()
}

#[test]
fn readme_install_commands_are_the_ones_ci_and_tests_run() {
    let section = readme_section("Install");
    // .ci/package runs these; the container test runs build-rootfs; the
    // Dockerfile's comment shows how to build the image from that tree.
    let ci = read(".ci/package")
        + &read("conf/container/build-rootfs")
        + &read("conf/container/Dockerfile");
    let mut n = 0;
    for (_, info, body) in fenced_blocks(&section) {
        // The container test runs the block with unshare itself.
        if info != "sh" || body.contains("unshare ") {
            continue;
        }
        for line in body.lines() {
            let cmd = command_of(line);
            if cmd.is_empty() {
                continue;
            }
            assert!(
                ci.lines().any(|l| command_of(l) == cmd),
                "README.md's install command `{cmd}` is not run by .ci/package \
                 or conf/container/build-rootfs (nor shown in conf/container/Dockerfile)"
            );
            n += 1;
        }
    }
    assert!(n >= 5, "{n} commands");
}

#[test]
fn debian_copyright_carries_both_licence_texts_as_they_are() {
    // Cargo.toml says MIT OR Apache-2.0; the .deb's copyright file
    // (conf/debian/copyright) must hold LICENSE-MIT and LICENSE-APACHE
    // line for line, in Debian's format (one space in front, "." for an
    // empty line).
    let text = std::fs::read_to_string(top().join("conf/debian/copyright")).unwrap();
    let para = |name: &str| -> String {
        let head = format!("License: {name}\n");
        let at = text.find(&head).unwrap_or_else(|| panic!("no {head:?}")) + head.len();
        text[at..]
            .lines()
            .take_while(|l| l.starts_with(' '))
            .map(|l| {
                if l == " ." {
                    String::new()
                } else {
                    l[1..].to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (name, file) in [("MIT", "LICENSE-MIT"), ("Apache-2.0", "LICENSE-APACHE")] {
        let want = std::fs::read_to_string(top().join(file)).unwrap();
        let want: Vec<&str> = want.trim_end().lines().map(str::trim_end).collect();
        assert_eq!(
            para(name),
            want.join("\n"),
            "{file} and conf/debian/copyright differ"
        );
    }
    let cargo = std::fs::read_to_string(top().join("Cargo.toml")).unwrap();
    assert!(cargo.contains("license = \"MIT OR Apache-2.0\""));
}
