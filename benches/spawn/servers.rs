//! The servers under test, each started by this program on a loopback
//! port with its limits lifted and its logging off, and stopped by pid;
//! the handlers they run, built here from `benches/handlers/`.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DOORMAN: &str = env!("CARGO_BIN_EXE_doorman");
/// The name the minimal C spawner goes by in tables.
pub const MINSPAWN: &str = "minimal C spawner (reference)";
/// Where benches/deps.sh unpacks xinetd and openbsd-inetd.
const PEERS: &str = "/opt/doorman-peers/usr/sbin";

pub struct Handlers {
    /// Static, libc: writes `hello\n` and exits.
    pub hello: PathBuf,
    /// The same without libc (x86-64 only).
    pub nolibc: Option<PathBuf>,
    /// The yardstick: a minimal C spawner (epoll, accept4, vfork+execve,
    /// signalfd), `minspawn PORT PROGRAM`.
    pub minspawn: Option<PathBuf>,
}

fn out_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/spawn-HASH → target/release/bench-handlers
    let dir = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("bench-handlers");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn build_handlers() -> Handlers {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/handlers");
    let dir = out_dir();
    let cc = |name: &str, extra: &[&str]| -> Option<PathBuf> {
        let out = dir.join(name);
        let ok = Command::new("cc")
            .args(["-O2", "-static", "-o"])
            .arg(&out)
            .args(extra)
            .arg(src.join(format!("{name}.c")))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(out)
    };
    let hello = cc("hello", &[]).expect("cc -static benches/handlers/hello.c (libc6-dev)");
    let nolibc = if cfg!(target_arch = "x86_64") {
        cc("hello-nolibc", &["-nostdlib", "-fno-stack-protector"])
    } else {
        None
    };
    let minspawn = cc("minspawn", &[]);
    Handlers {
        hello,
        nolibc,
        minspawn,
    }
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Lifts the open-file limit in a child before exec.
fn lift_nofile(cmd: &mut Command) {
    // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let rl = libc::rlimit {
                rlim_cur: 65536,
                rlim_max: 65536,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            Ok(())
        });
    }
}

pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    _dir: Option<TempDir>,
}

pub struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("doorman-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    fn start(name: &str, port: u16, mut cmd: Command, dir: Option<TempDir>) -> Server {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        match &dir {
            // A daemon that logs writes its lines to a real file.
            Some(d) if name == "doorman" => {
                let f = std::fs::File::create(d.0.join("doorman.log")).unwrap();
                cmd.stderr(f)
            }
            _ => cmd.stderr(Stdio::null()),
        };
        lift_nofile(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let s = Server {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            _dir: dir,
        };
        s.wait_ready();
        s
    }

    /// Connects until a whole reply comes back (bounded).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = TcpStream::connect(self.addr) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                if c.read_to_end(&mut buf).is_ok() && buf == b"hello\n" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not answer on {}", self.name, self.addr);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// doorman with `DOORMAN_SPAWN=method` (`auto`: the default).
    /// The minimal C spawner, a reference point rather than a peer.
    pub fn minspawn(prog: &Path, handler: &Path) -> Server {
        let port = free_port();
        let mut cmd = Command::new(prog);
        cmd.arg(port.to_string()).arg(handler);
        Server::start(MINSPAWN, port, cmd, None)
    }

    /// `name` "doorman" is the default as users run it: its accept and
    /// exit lines on, written to a file; the spawn-method rows run `-q`.
    pub fn doorman(name: &str, handler: &Path, method: &str) -> Server {
        let port = free_port();
        let mut cmd = Command::new(DOORMAN);
        let logs = name == "doorman";
        if !logs {
            cmd.arg("-q");
        }
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--"])
            .arg(handler)
            .env_remove("RUST_LOG")
            .env("DOORMAN_SPAWN", method);
        let dir = logs.then(|| TempDir::new("log"));
        Server::start(name, port, cmd, dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling the process we started, by its pid, while we
        // have not reaped it (so the pid is still ours).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peers found on this machine (see benches/deps.sh), each serving
/// `handler`; a missing one is reported and skipped.
pub fn peers(handler: &Path) -> Vec<Server> {
    let h = handler.to_str().unwrap();
    let mut out = Vec::new();
    let have = |p: &str| Path::new(p).exists();

    if have("/usr/bin/tcpserver") {
        let port = free_port();
        let mut cmd = Command::new("/usr/bin/tcpserver");
        cmd.args(["-H", "-R", "-l", "0", "-c", "100000", "-b", "1024"])
            .args(["127.0.0.1", &port.to_string(), h]);
        out.push(Server::start("tcpserver", port, cmd, None));
    } else {
        eprintln!("skipped tcpserver: not installed (benches/deps.sh)");
    }

    let xinetd = format!("{PEERS}/xinetd");
    if have(&xinetd) {
        let port = free_port();
        let dir = TempDir::new("xinetd");
        let conf = dir.0.join("xinetd.conf");
        std::fs::write(
            &conf,
            format!(
                "defaults\n{{\n  instances = UNLIMITED\n  per_source = UNLIMITED\n  cps = 1000000 1\n  \
                 log_on_success =\n  log_on_failure =\n}}\n\
                 service bench\n{{\n  type = UNLISTED\n  socket_type = stream\n  protocol = tcp\n  \
                 port = {port}\n  bind = 127.0.0.1\n  wait = no\n  user = root\n  server = {h}\n  \
                 instances = UNLIMITED\n}}\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(&xinetd);
        cmd.arg("-dontfork")
            .arg("-f")
            .arg(&conf)
            .arg("-pidfile")
            .arg(dir.0.join("pid"));
        out.push(Server::start("xinetd", port, cmd, Some(dir)));
    } else {
        eprintln!("skipped xinetd: not unpacked (benches/deps.sh)");
    }

    let inetd = format!("{PEERS}/inetd");
    if have(&inetd) {
        let port = free_port();
        let dir = TempDir::new("inetd");
        let conf = dir.0.join("inetd.conf");
        std::fs::write(
            &conf,
            format!("127.0.0.1:{port} stream tcp nowait.100000000 root {h} hello\n"),
        )
        .unwrap();
        let mut cmd = Command::new(&inetd);
        cmd.args(["-i", "-R", "100000000"]).arg(&conf);
        out.push(Server::start("openbsd-inetd", port, cmd, Some(dir)));
    } else {
        eprintln!("skipped openbsd-inetd: not unpacked (benches/deps.sh)");
    }

    if have("/usr/bin/systemd-socket-activate") {
        let port = free_port();
        let mut cmd = Command::new("/usr/bin/systemd-socket-activate");
        cmd.args(["-l", &format!("127.0.0.1:{port}"), "-a", "--inetd", h]);
        out.push(Server::start("systemd-socket-activate", port, cmd, None));
    } else {
        eprintln!("skipped systemd-socket-activate: not installed");
    }
    if !busybox_has("tcpsvd") {
        eprintln!("skipped busybox tcpsvd/inetd: Debian's busybox is built without them");
    }
    out
}

fn busybox_has(applet: &str) -> bool {
    Command::new("busybox")
        .arg("--list")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == applet)
        })
        .unwrap_or(false)
}

/// doorman idle with `count` services: (VmRSS in KiB, time from spawn to
/// every socket bound, as `--ready-fd` reports it).
pub fn idle(handler: &Path, count: usize) -> (u64, Duration) {
    let dir = TempDir::new(&format!("idle{count}"));
    let conf = dir.0.join("doorman.conf");
    let mut text = String::new();
    for i in 0..count {
        // Distinct loopback addresses: one bind key per line.
        text += &format!(
            "127.1.{}.{}:0 stream tcp nowait root {} hello\n",
            i / 250,
            i % 250 + 1,
            handler.display()
        );
    }
    std::fs::write(&conf, text).unwrap();
    let mut fds = [0; 2];
    // SAFETY: a pipe into an array we own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (rd, wr) = (fds[0], fds[1]);
    let mut cmd = Command::new(DOORMAN);
    cmd.args(["-q", "--ready-fd", "3", "-f"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lift_nofile(&mut cmd);
    // SAFETY: dup2 is async-signal-safe; it also clears close-on-exec on 3.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(wr, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("start doorman");
    // SAFETY: closing our copy of the write end; reading into our buffer.
    unsafe { libc::close(wr) };
    let mut buf = [0u8; 6];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: as above.
        let n = unsafe { libc::read(rd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    let ready = t0.elapsed();
    // SAFETY: our read end.
    unsafe { libc::close(rd) };
    assert_eq!(
        &buf[..got],
        b"READY\n",
        "doorman with {count} services did not start"
    );
    std::thread::sleep(Duration::from_millis(200));
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    // SAFETY: our unreaped child, by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    (rss, ready)
}

/// The time a process's threads (not its children) have spent on a CPU,
/// in nanoseconds: the scheduler's own account (`/proc/PID/task/*/
/// schedstat`), exact where utime+stime are sampled in 10 ms ticks.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
