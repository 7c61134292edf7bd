//! Helpers for black-box tests: start the real `doorman` binary on
//! loopback with a temporary configuration, wait for its readiness line,
//! talk to it as a client would, and stop it by pid.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_doorman");
/// Upper bound for anything a test waits on; tests end long before.
pub const DEADLINE: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("doorman-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        // World-readable so that handlers running as nobody can execute
        // the scripts placed here.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file; `exec` makes it an executable script.
    pub fn write(&self, name: &str, text: &str, exec: bool) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        let mode = if exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The log lines doorman wrote so far, shared with a reader thread.
#[derive(Clone, Default)]
pub struct Log(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Log {
    pub fn lines(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a line contains every one of `needles`; returns it.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.0;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// How many lines contain every one of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        self.lines()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Adds a line read from a process's stderr.
    pub fn push_line(&self, line: String) {
        self.push(line);
    }

    fn push(&self, line: String) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().push(line);
        cv.notify_all();
    }
}

/// A running doorman.
pub struct Doorman {
    pub child: Child,
    pub log: Log,
    /// Every `listen` line's IP address, in order (unix paths left out).
    pub addrs: Vec<SocketAddr>,
    pub dir: TempDir,
}

/// How to start doorman.
#[derive(Default)]
pub struct Opts {
    /// An extra inherited fd (not close-on-exec) placed at this number in
    /// doorman, to prove handlers never see it.
    pub leak_fd: Option<i32>,
    pub env: Vec<(String, String)>,
    /// Signals doorman inherits ignored (set straight through the kernel,
    /// so that glibc's own 32 and 33 can be too).
    pub ignored: Vec<i32>,
    /// A command doorman is run under (`setpriv ...`), which must exec it.
    pub wrapper: Vec<String>,
}

impl Doorman {
    /// Starts doorman with a configuration file holding `conf`
    /// (`{dir}` replaced by the temporary directory) and `extra` flags.
    pub fn with_conf(dir: TempDir, conf: &str, extra: &[&str]) -> Doorman {
        let conf = conf.replace("{dir}", dir.path().to_str().unwrap());
        let path = dir.write("doorman.conf", &conf, false);
        let mut args = vec!["-f".to_string(), path.to_str().unwrap().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Doorman::start(dir, &args, Opts::default())
    }

    /// Starts doorman with these arguments and waits for `ready`.
    pub fn start(dir: TempDir, args: &[String], opts: Opts) -> Doorman {
        let mut cmd = match opts.wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if !opts.ignored.is_empty() {
            let sigs = opts.ignored.clone();
            // SAFETY: only rt_sigaction system calls between fork and exec,
            // on a struct built before the fork's closure ran.
            unsafe {
                cmd.pre_exec(move || {
                    let mut ign = [0usize; 8];
                    ign[0] = libc::SIG_IGN;
                    for &sig in &sigs {
                        if libc::syscall(
                            libc::SYS_rt_sigaction,
                            sig,
                            ign.as_ptr(),
                            std::ptr::null_mut::<usize>(),
                            8usize,
                        ) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        if let Some(fd) = opts.leak_fd {
            // SAFETY: only async-signal-safe calls (open, dup2) between fork
            // and exec, on a path literal.
            unsafe {
                cmd.pre_exec(move || {
                    let f = libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY);
                    if f < 0 || libc::dup2(f, fd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start doorman");
        let stderr = child.stderr.take().unwrap();
        let log = Log::default();
        let reader_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("DOORMAN_TEST_ECHO").is_some() {
                    eprintln!("  | {line}");
                }
                reader_log.push(line);
            }
            reader_log.push("<eof>".into());
        });
        let ready = log.wait_for(&["ready"], DEADLINE);
        if ready.is_none() || log.count(&["<eof>"]) > 0 && log.count(&["ready"]) == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("doorman did not become ready:\n{}", log.text());
        }
        let addrs = log
            .lines()
            .iter()
            .filter_map(|l| {
                if l.contains(": listen service=") {
                    return field(l, "addr").parse().ok();
                }
                // --log-format json
                let at = l.find("\"event\":\"listen\"")?;
                let rest = &l[at..];
                let a = rest.find("\"addr\":\"")? + 8;
                rest[a..].split('"').next()?.parse().ok()
            })
            .collect();
        Doorman {
            child,
            log,
            addrs,
            dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// Sends a signal to doorman (by its pid).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGTERM and wait for the exit status (bounded).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        wait_child(&mut self.child, DEADLINE).expect("doorman did not exit on SIGTERM")
    }

    /// The number of open fds of doorman.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Pids of doorman's children that are zombies.
    pub fn zombies(&self) -> Vec<i32> {
        children_of(self.pid())
            .into_iter()
            .filter(|(_, state)| *state == 'Z')
            .map(|(p, _)| p)
            .collect()
    }
}

impl Drop for Doorman {
    /// Kills doorman and what it runs (handlers and backends, with their
    /// process groups): a test leaves no server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let kids = children_of(self.pid());
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
            for (pid, _) in kids {
                // SAFETY: signals to processes this test's doorman started.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// The fds process `pid` holds.
pub fn fds_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether doorman `pid` keeps at least `n` fds at or above 1024: its
/// listeners, lifted when it has 64 or more and its soft fd limit leaves
/// room for them (1024 + n + 256, as `listen::plan_fds` asks); without
/// that room there is nothing to check (SKIPPED).
pub fn lifted_listeners(pid: i32, n: usize) -> bool {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if soft < 1024 + n + 256 {
        eprintln!("SKIPPED: fd limit {soft} leaves no room to lift {n} listeners");
        return true;
    }
    fds_of(pid).iter().filter(|&&fd| fd >= 1024).count() >= n
}

/// `(pid, state)` of every process whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let state = it.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let parent: i32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if parent == ppid {
            out.push((pid, state));
        }
    }
    out
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of `key=` in a log line.
pub fn field(line: &str, key: &str) -> String {
    let pat = format!("{key}=");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        + pat.len();
    line[start..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Connects with a deadline on every read and write.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Connects, sends `input` (then shuts down writing), reads to EOF.
pub fn talk(addr: SocketAddr, input: &[u8]) -> String {
    let mut s = connect(addr);
    s.write_all(input).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read reply");
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs doorman to completion with `args` (e.g. `--check`): (status,
/// stdout, stderr). A doorman still running after [`DEADLINE`] is killed
/// (status -1), so that a test expecting an exit fails instead of hanging.
pub fn run(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run doorman");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = match wait_child(&mut child, DEADLINE) {
        Some(st) => st.code().unwrap_or(-1),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            -1
        }
    };
    (
        status,
        String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    )
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when the host can bind ::1 (some containers have no IPv6).
pub fn have_ipv6() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Parses `KEY=VALUE` lines.
pub fn env_map(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The kB in `VmRSS:` of a process.
pub fn rss_kb(pid: i32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `RssAnon:`, `RssFile:`).
pub fn status_kb(pid: i32, name: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The private memory of a process: what it would give back by exiting.
/// (Growth is measured on this: code pages that traffic maps back in are
/// shared page cache, and doorman unmaps them again when idle.)
pub fn anon_kb(pid: i32) -> u64 {
    status_kb(pid, "RssAnon:")
}

/// A loopback TCP port free right now (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The metrics endpoint's text at `addr`, read with curl as an operator
/// would.
pub fn scrape_metrics(addr: SocketAddr) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The system calls doorman makes while `during` runs (strace attached
/// before, detached after), without signal and exit lines or the
/// `resumed` halves; and the whole trace, for messages.
pub fn traced(d: &Doorman, during: impl FnOnce()) -> (Vec<String>, String) {
    let trace = d.dir.path().join(format!(
        "strace-{}.out",
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let mut strace = Command::new("strace")
        .args(["-p", &d.pid().to_string(), "-o", trace.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace is required (apt-get install strace)");
    let mut err = BufReader::new(strace.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("attached"), "strace: {line}");
    during();
    // SAFETY: signalling the strace we started, by pid.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    wait_child(&mut strace, DEADLINE).unwrap();
    let out = std::fs::read_to_string(&trace).unwrap();
    let calls = out
        .lines()
        .filter(|l| !l.starts_with("---") && !l.starts_with("+++") && !l.contains("resumed>"))
        .map(str::to_string)
        .collect();
    (calls, out)
}
