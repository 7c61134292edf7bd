//! The executor: doorman's own binary, exec'd in place of a unit's program
//! when that unit asks for more than the raw child does (`ExecStartPre=`,
//! `ExecStartPost=`, `Type=notify`, sandboxing, `OOMScoreAdjust=`,
//! `StandardOutput=file:`, `NonBlocking=`, the `!` prefix). The design of
//! systemd 255's `systemd-executor`, and for the same reason: the child
//! between fork and exec may only make raw system calls (see
//! `spawn::child`), while a sandbox needs paths stat'ed, namespaces made,
//! mounts made in order, helpers forked and waited for. A fresh process
//! image may do all of that.
//!
//! The raw child execs `/proc/self/exe` (doorman's binary as it runs,
//! even if the file was replaced since) as `doorman-exec TOKENS...`,
//! still as root, with the handler's fds already placed (0-2, the
//! `LISTEN_FDS` sockets from 3) and doorman's log right after them; its
//! environment is the program's. The executor makes the namespaces and
//! mounts, runs each `ExecStartPre=` to completion (in the sandbox, as the
//! unit's user, unless prefixed), then becomes the main program with
//! `execve` in place: the pid doorman tracks, the `LISTEN_PID` the program
//! checks, and the process group doorman stops are the program's.
//! `ExecStartPost=` and readiness are watched by a helper in the same
//! process group, which has given up the handler's sockets (so a client
//! sees the end of its connection when the program exits).
//!
//! Owns: the token encoding of a [`Spec`] and applying it. Must not: run
//! in the daemon's process (only in a process of its own, after exec).

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{FileMode, NotifyAccess, Privileges};
use crate::spawn::sandbox::{Op, Prepared};
use crate::spawn::seccomp::Insn;

/// argv[0] of the executor: what `ps` shows until the program's exec.
pub const ARG0: &str = "doorman-exec";

/// systemd's exit statuses for a start that failed before the program ran
/// (systemd.exec(5), "Process Exit Codes"), so that logs read the same.
pub const EXIT_EXEC: i32 = 203;
pub const EXIT_GROUP: i32 = 216;
pub const EXIT_USER: i32 = 217;
pub const EXIT_CAPABILITIES: i32 = 218;
pub const EXIT_STDOUT: i32 = 209;
pub const EXIT_NAMESPACE: i32 = 226;
pub const EXIT_SECCOMP: i32 = 228;
pub const EXIT_OOM_ADJUST: i32 = 206;
pub const EXIT_SPEC: i32 = 242;

/// How long a `Type=notify` program may take to say READY=1 (systemd's
/// `DefaultTimeoutStartSec=`) before the start counts as failed.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub ignore_failure: bool,
    pub privileges: Privileges,
}

/// Everything the executor is told.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Spec {
    /// The service, for log lines.
    pub label: String,
    /// 0 text, 1 JSON lines (doorman's `--log-format`).
    pub json: bool,
    /// The program gets `LISTEN_FDS` sockets at 3...; the log follows them.
    pub listen_fds: bool,
    /// uid, gid and supplementary groups; `None`: doorman's own.
    pub creds: Option<(u32, u32, Vec<u32>)>,
    pub set_groups: bool,
    pub oom: Option<i32>,
    pub nonblocking: bool,
    pub stdout: Option<(PathBuf, FileMode)>,
    pub stderr: Option<(PathBuf, FileMode)>,
    pub notify: Option<NotifyAccess>,
    pub sandbox: Prepared,
    pub pre: Vec<Cmd>,
    pub main: Option<Cmd>,
    pub post: Vec<Cmd>,
}

// ---------------------------------------------------------------- tokens

struct W(Vec<String>);

impl W {
    fn s(&mut self, v: &str) {
        self.0.push(v.to_string());
    }
    fn n(&mut self, v: i64) {
        self.0.push(v.to_string());
    }
    fn b(&mut self, v: bool) {
        self.0.push(if v { "1" } else { "0" }.into());
    }
    fn opt(&mut self, v: &Option<String>) {
        self.b(v.is_some());
        self.s(v.as_deref().unwrap_or(""));
    }
    fn cmd(&mut self, c: &Cmd) {
        self.s(&c.program.to_string_lossy());
        self.n(c.argv.len() as i64);
        for a in &c.argv {
            self.s(a);
        }
        self.b(c.ignore_failure);
        self.n(match c.privileges {
            Privileges::Normal => 0,
            Privileges::Full => 1,
            Privileges::KeepIds => 2,
        });
    }
    fn file(&mut self, f: &Option<(PathBuf, FileMode)>) {
        self.b(f.is_some());
        if let Some((p, m)) = f {
            self.s(&p.to_string_lossy());
            self.n(match m {
                FileMode::Write => 0,
                FileMode::Append => 1,
                FileMode::Truncate => 2,
            });
        }
    }
}

struct R<'a>(std::slice::Iter<'a, String>);

impl R<'_> {
    fn s(&mut self) -> Result<String, String> {
        self.0
            .next()
            .cloned()
            .ok_or_else(|| "truncated".to_string())
    }
    fn n(&mut self) -> Result<i64, String> {
        let t = self.s()?;
        t.parse().map_err(|_| format!("not a number: {t}"))
    }
    fn b(&mut self) -> Result<bool, String> {
        Ok(self.n()? != 0)
    }
    fn opt(&mut self) -> Result<Option<String>, String> {
        let some = self.b()?;
        let v = self.s()?;
        Ok(some.then_some(v))
    }
    fn cmd(&mut self) -> Result<Cmd, String> {
        let program = PathBuf::from(self.s()?);
        let n = self.n()?;
        let argv = (0..n).map(|_| self.s()).collect::<Result<_, _>>()?;
        Ok(Cmd {
            program,
            argv,
            ignore_failure: self.b()?,
            privileges: match self.n()? {
                1 => Privileges::Full,
                2 => Privileges::KeepIds,
                _ => Privileges::Normal,
            },
        })
    }
    fn file(&mut self) -> Result<Option<(PathBuf, FileMode)>, String> {
        if !self.b()? {
            return Ok(None);
        }
        let p = PathBuf::from(self.s()?);
        let m = match self.n()? {
            1 => FileMode::Append,
            2 => FileMode::Truncate,
            _ => FileMode::Write,
        };
        Ok(Some((p, m)))
    }
}

impl Spec {
    /// The tokens after argv[0].
    pub fn encode(&self) -> Vec<String> {
        let mut w = W(Vec::new());
        w.s("v1");
        w.s(&self.label);
        w.b(self.json);
        w.b(self.listen_fds);
        w.b(self.creds.is_some());
        if let Some((u, g, groups)) = &self.creds {
            w.n(*u as i64);
            w.n(*g as i64);
            w.n(groups.len() as i64);
            for x in groups {
                w.n(*x as i64);
            }
        }
        w.b(self.set_groups);
        w.b(self.oom.is_some());
        w.n(self.oom.unwrap_or(0) as i64);
        w.b(self.nonblocking);
        w.file(&self.stdout);
        w.file(&self.stderr);
        w.n(match self.notify {
            None => 0,
            Some(NotifyAccess::None) => 1,
            Some(NotifyAccess::Main) => 2,
            Some(NotifyAccess::Exec) => 3,
            Some(NotifyAccess::All) => 4,
        });
        let sb = &self.sandbox;
        w.n(sb.unshare as i64);
        w.b(sb.lo_up);
        w.b(sb.user_ns);
        w.s(&format!("{:x}", sb.drop_bounding));
        w.s(&format!("{:x}", sb.ambient));
        w.b(sb.no_new_privs);
        let mut hex = String::with_capacity(sb.filter.len() * 16);
        for i in &sb.filter {
            hex.push_str(&format!(
                "{:04x}{:02x}{:02x}{:08x}",
                i.code, i.jt, i.jf, i.k
            ));
        }
        w.s(&hex);
        w.n(sb.ops.len() as i64);
        for op in &sb.ops {
            match op {
                Op::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    data,
                    optional,
                } => {
                    w.s("mount");
                    w.opt(source);
                    w.s(&target.to_string_lossy());
                    w.opt(fstype);
                    w.s(&format!("{flags:x}"));
                    w.opt(data);
                    w.b(*optional);
                }
                Op::SetAttr {
                    path,
                    set,
                    clr,
                    recursive,
                    optional,
                } => {
                    w.s("setattr");
                    w.s(&path.to_string_lossy());
                    w.s(&format!("{set:x}"));
                    w.s(&format!("{clr:x}"));
                    w.b(*recursive);
                    w.b(*optional);
                }
                Op::Mkdir { path, mode } => {
                    w.s("mkdir");
                    w.s(&path.to_string_lossy());
                    w.n(*mode as i64);
                }
                Op::Touch { path } => {
                    w.s("touch");
                    w.s(&path.to_string_lossy());
                }
                Op::Symlink { target, path } => {
                    w.s("symlink");
                    w.s(target);
                    w.s(&path.to_string_lossy());
                }
            }
        }
        w.n(self.pre.len() as i64);
        for c in &self.pre {
            w.cmd(c);
        }
        w.b(self.main.is_some());
        if let Some(c) = &self.main {
            w.cmd(c);
        }
        w.n(self.post.len() as i64);
        for c in &self.post {
            w.cmd(c);
        }
        w.0
    }

    pub fn decode(t: &[String]) -> Result<Spec, String> {
        let mut r = R(t.iter());
        if r.s()? != "v1" {
            return Err("not a doorman executor specification".into());
        }
        let hex = |s: String| u64::from_str_radix(&s, 16).map_err(|_| format!("not hex: {s}"));
        let mut sp = Spec {
            label: r.s()?,
            json: r.b()?,
            listen_fds: r.b()?,
            ..Spec::default()
        };
        if r.b()? {
            let u = r.n()? as u32;
            let g = r.n()? as u32;
            let n = r.n()?;
            let groups = (0..n)
                .map(|_| r.n().map(|x| x as u32))
                .collect::<Result<_, _>>()?;
            sp.creds = Some((u, g, groups));
        }
        sp.set_groups = r.b()?;
        let has_oom = r.b()?;
        let oom = r.n()? as i32;
        sp.oom = has_oom.then_some(oom);
        sp.nonblocking = r.b()?;
        sp.stdout = r.file()?;
        sp.stderr = r.file()?;
        sp.notify = match r.n()? {
            1 => Some(NotifyAccess::None),
            2 => Some(NotifyAccess::Main),
            3 => Some(NotifyAccess::Exec),
            4 => Some(NotifyAccess::All),
            _ => None,
        };
        let sb = &mut sp.sandbox;
        sb.unshare = r.n()? as i32;
        sb.lo_up = r.b()?;
        sb.user_ns = r.b()?;
        sb.drop_bounding = hex(r.s()?)?;
        sb.ambient = hex(r.s()?)?;
        sb.no_new_privs = r.b()?;
        let f = r.s()?;
        if f.len() % 16 != 0 || !f.is_ascii() {
            return Err("bad filter".into());
        }
        for k in (0..f.len()).step_by(16) {
            let part = |a: usize, b: usize| {
                u32::from_str_radix(&f[k + a..k + b], 16).map_err(|_| "bad filter".to_string())
            };
            sb.filter.push(Insn {
                code: part(0, 4)? as u16,
                jt: part(4, 6)? as u8,
                jf: part(6, 8)? as u8,
                k: part(8, 16)?,
            });
        }
        let nops = r.n()?;
        for _ in 0..nops {
            let op = match r.s()?.as_str() {
                "mount" => Op::Mount {
                    source: r.opt()?,
                    target: PathBuf::from(r.s()?),
                    fstype: r.opt()?,
                    flags: hex(r.s()?)?,
                    data: r.opt()?,
                    optional: r.b()?,
                },
                "setattr" => Op::SetAttr {
                    path: PathBuf::from(r.s()?),
                    set: hex(r.s()?)?,
                    clr: hex(r.s()?)?,
                    recursive: r.b()?,
                    optional: r.b()?,
                },
                "mkdir" => Op::Mkdir {
                    path: PathBuf::from(r.s()?),
                    mode: r.n()? as u32,
                },
                "touch" => Op::Touch {
                    path: PathBuf::from(r.s()?),
                },
                "symlink" => Op::Symlink {
                    target: r.s()?,
                    path: PathBuf::from(r.s()?),
                },
                other => return Err(format!("unknown step {other}")),
            };
            sb.ops.push(op);
        }
        let n = r.n()?;
        sp.pre = (0..n).map(|_| r.cmd()).collect::<Result<_, _>>()?;
        if r.b()? {
            sp.main = Some(r.cmd()?);
        }
        let n = r.n()?;
        sp.post = (0..n).map(|_| r.cmd()).collect::<Result<_, _>>()?;
        Ok(sp)
    }
}

// ------------------------------------------------------------- the process

/// Where the executor logs: doorman's log, handed over right after the
/// sockets (and closed at the program's exec).
struct Log {
    fd: RawFd,
    json: bool,
    label: String,
}

impl Log {
    fn line(&self, level: &str, msg: &str) {
        let line = if self.json {
            let mut l = String::from("{\"ts\":");
            crate::events::escape_into(&mut l, &crate::timestamp());
            l.push_str(",\"level\":");
            crate::events::escape_into(&mut l, level);
            l.push_str(",\"msg\":");
            crate::events::escape_into(&mut l, &format!("{}: {msg}", self.label));
            l.push_str("}\n");
            l
        } else {
            format!(
                "{} doorman[{}]: {level}: {}: {msg}\n",
                crate::timestamp(),
                std::process::id(),
                self.label
            )
        };
        let _ = nix::unistd::write(
            // SAFETY: the log fd stays open for the executor's life.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) },
            line.as_bytes(),
        );
    }

    fn fail(&self, status: i32, msg: &str) -> ! {
        self.line("error", msg);
        std::process::exit(status)
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn path_c(p: &std::path::Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// A command ready to exec: its C strings built before any fork.
struct Ready {
    path: CString,
    argv: Vec<CString>,
    shown: String,
    ignore_failure: bool,
    privileges: Privileges,
}

fn ready(c: &Cmd) -> Ready {
    Ready {
        path: path_c(&c.program),
        argv: c.argv.iter().map(|a| cstr(a)).collect(),
        shown: c.argv.join(" "),
        ignore_failure: c.ignore_failure,
        privileges: c.privileges,
    }
}

/// The namespaces doorman runs in, for commands prefixed with `+`.
struct Outside {
    fds: Vec<(OwnedFd, libc::c_int)>,
}

/// What every command's process applies to itself last, before exec: the
/// way back out of the sandbox (`+`), the user, capabilities, no new
/// privileges, the filter.
struct Enter<'a> {
    spec: &'a Spec,
    outside: &'a Outside,
    /// Groups that exist in the handler's user namespace.
    groups: Vec<libc::gid_t>,
}

impl Enter<'_> {
    /// Applies `privileges`; `Err((exit status, what failed, errno))`.
    /// Only system calls: it also runs in forked children.
    fn apply(&self, privileges: Privileges) -> Result<(), (i32, &'static str, nix::errno::Errno)> {
        use nix::errno::Errno;
        let sb = &self.spec.sandbox;
        if privileges == Privileges::Full {
            for (fd, kind) in &self.outside.fds {
                // SAFETY: setns with an fd of /proc/self/ns/*.
                if unsafe { libc::setns(fd.as_raw_fd(), *kind) } != 0 {
                    return Err((EXIT_NAMESPACE, "setns", Errno::last()));
                }
            }
            return Ok(());
        }
        for cap in 0..64 {
            if sb.drop_bounding & (1 << cap) != 0 {
                // SAFETY: prctl with integer arguments. EINVAL: a number
                // this kernel does not know, nothing to drop.
                let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
                if r != 0 && Errno::last() != Errno::EINVAL {
                    return Err((
                        EXIT_CAPABILITIES,
                        "drop from the bounding set",
                        Errno::last(),
                    ));
                }
            }
        }
        let creds = self
            .spec
            .creds
            .as_ref()
            .filter(|_| privileges == Privileges::Normal);
        let ambient = sb.ambient;
        if let Some((uid, gid, _)) = creds {
            if ambient != 0 {
                // SAFETY: prctl with integer arguments.
                unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
            }
            if self.spec.set_groups {
                // SAFETY: the group list lives in self.
                if unsafe { libc::setgroups(self.groups.len(), self.groups.as_ptr()) } != 0 {
                    return Err((EXIT_GROUP, "setgroups", Errno::last()));
                }
            }
            // SAFETY: plain integer system calls.
            if unsafe { libc::setgid(*gid) } != 0 {
                return Err((EXIT_GROUP, "setgid", Errno::last()));
            }
            // SAFETY: as above.
            if unsafe { libc::setuid(*uid) } != 0 {
                return Err((EXIT_USER, "setuid", Errno::last()));
            }
            if *uid != 0 && ambient != 0 {
                let lo = ambient as u32;
                let hi = (ambient >> 32) as u32;
                let hdr = [crate::spawn::child::CAP_VERSION_3, 0];
                let data = [lo, lo, lo, hi, hi, hi];
                // SAFETY: capset with a version 3 header and two data
                // structs (effective, permitted, inheritable each).
                if unsafe { libc::syscall(libc::SYS_capset, hdr.as_ptr(), data.as_ptr()) } != 0 {
                    return Err((EXIT_CAPABILITIES, "capset", Errno::last()));
                }
                for cap in 0..64u64 {
                    if ambient & (1 << cap) != 0 {
                        // SAFETY: prctl with integer arguments.
                        let r = unsafe {
                            libc::prctl(
                                libc::PR_CAP_AMBIENT,
                                libc::PR_CAP_AMBIENT_RAISE,
                                cap as libc::c_ulong,
                                0,
                                0,
                            )
                        };
                        if r != 0 {
                            return Err((
                                EXIT_CAPABILITIES,
                                "raise an ambient capability",
                                Errno::last(),
                            ));
                        }
                    }
                }
            }
        }
        if sb.no_new_privs {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err((EXIT_SECCOMP, "no new privileges", Errno::last()));
            }
        }
        if !sb.filter.is_empty() {
            let prog = libc::sock_fprog {
                len: sb.filter.len() as u16,
                filter: sb.filter.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) with a program that
            // lives in self; Insn has sock_filter's layout.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &prog as *const libc::sock_fprog,
                )
            };
            if r != 0 {
                return Err((
                    EXIT_SECCOMP,
                    "install the system call filter",
                    Errno::last(),
                ));
            }
        }
        Ok(())
    }
}

/// `execve` of a prepared command; returns only on failure.
fn exec(r: &Ready, envp: &[CString]) -> nix::errno::Errno {
    match nix::unistd::execve(&r.path, &r.argv, envp) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Runs one `ExecStartPre=`/`ExecStartPost=` command to its end: stdin
/// /dev/null, stdout and stderr to doorman's log, no sockets. `Ok`: it
/// succeeded (or its failure is ignored); `Err`: why it failed.
fn run_cmd(r: &Ready, envp: &[CString], enter: &Enter<'_>, log_fd: RawFd) -> Result<(), String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    let devnull = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("/dev/null: {e}"))?;
    // A report pipe: the child writes its failure, exec closes it.
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the executor is single-threaded; the child makes only system
    // calls on memory prepared above and then execs or exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Child) => {
            let fail = |what: &[u8], e: i32| -> ! {
                let mut msg = [0u8; 64];
                let n = what.len().min(56);
                msg[..n].copy_from_slice(&what[..n]);
                msg[56..60].copy_from_slice(&e.to_ne_bytes());
                // SAFETY: write and _exit.
                unsafe {
                    libc::write(wr.as_raw_fd(), msg.as_ptr().cast(), 64);
                    libc::_exit(127)
                }
            };
            // SAFETY: dup2 onto 0-2 from fds that are open.
            unsafe {
                libc::dup2(devnull, 0);
                libc::dup2(log_fd, 1);
                libc::dup2(log_fd, 2);
            }
            // The sockets are the main program's.
            // SAFETY: close_range with no flags.
            unsafe { libc::syscall(libc::SYS_close_range, 3, log_fd.max(3) as u32, 0) };
            if let Err((_, what, e)) = enter.apply(r.privileges) {
                fail(what.as_bytes(), e as i32);
            }
            let e = exec(r, envp);
            fail(b"exec", e as i32)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = nix::unistd::close(devnull);
            drop(wr);
            let mut msg = [0u8; 64];
            let n = loop {
                match nix::unistd::read(rd.as_raw_fd(), &mut msg) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Ok(n) => break n,
                    Err(_) => break 0,
                }
            };
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            if n == 64 {
                let what_len = msg[..56].iter().position(|&b| b == 0).unwrap_or(56);
                let what = String::from_utf8_lossy(&msg[..what_len]).into_owned();
                let e = i32::from_ne_bytes([msg[56], msg[57], msg[58], msg[59]]);
                let err = format!(
                    "{what} {}: {}",
                    r.path.to_string_lossy(),
                    nix::errno::Errno::from_raw(e).desc()
                );
                return if r.ignore_failure { Ok(()) } else { Err(err) };
            }
            let why = match status {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, c)) => format!("exited with status {c}"),
                Ok(WaitStatus::Signaled(_, s, _)) => format!("killed by {}", s.as_str()),
                other => format!("{other:?}"),
            };
            if r.ignore_failure {
                Ok(())
            } else {
                Err(why)
            }
        }
    }
}

/// Sets `fd`'s close-on-exec flag.
fn cloexec(fd: RawFd) {
    // SAFETY: fcntl with integer arguments.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Makes the sandbox's mounts, in order. `Err`: which step failed.
fn file_system(ops: &[Op]) -> Result<(), String> {
    use nix::errno::Errno;
    for op in ops {
        let (r, optional) = match op {
            Op::Mount {
                source,
                target,
                fstype,
                flags,
                data,
                optional,
            } => {
                let source = source.as_deref().map(cstr);
                let fstype = fstype.as_deref().map(cstr);
                let data = data.as_deref().map(cstr);
                let target = path_c(target);
                // SAFETY: mount(2) with NUL-terminated strings or null.
                let r = unsafe {
                    libc::mount(
                        source.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                        target.as_ptr(),
                        fstype.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                        *flags as libc::c_ulong,
                        data.as_ref()
                            .map_or(std::ptr::null(), |c| c.as_ptr().cast()),
                    )
                };
                (r, *optional)
            }
            Op::SetAttr {
                path,
                set,
                clr,
                recursive,
                optional,
            } => {
                #[repr(C)]
                struct MountAttr {
                    set: u64,
                    clr: u64,
                    propagation: u64,
                    userns_fd: u64,
                }
                let attr = MountAttr {
                    set: *set,
                    clr: *clr,
                    propagation: 0,
                    userns_fd: 0,
                };
                let p = path_c(path);
                let flags = if *recursive {
                    crate::spawn::sandbox::AT_RECURSIVE
                } else {
                    0
                };
                // SAFETY: mount_setattr(2) with a path and a struct that
                // live across the call.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_mount_setattr,
                        libc::AT_FDCWD,
                        p.as_ptr(),
                        flags,
                        &attr as *const MountAttr,
                        std::mem::size_of::<MountAttr>(),
                    )
                } as libc::c_int;
                (r, *optional)
            }
            Op::Mkdir { path, mode } => {
                let p = path_c(path);
                // SAFETY: mkdir(2) with a path.
                let r = unsafe { libc::mkdir(p.as_ptr(), *mode) };
                if r == 0 {
                    // SAFETY: chmod(2): the mode the umask may have cut.
                    unsafe { libc::chmod(p.as_ptr(), *mode) };
                }
                (
                    if r != 0 && Errno::last() == Errno::EEXIST {
                        0
                    } else {
                        r
                    },
                    false,
                )
            }
            Op::Touch { path } => {
                let p = path_c(path);
                // SAFETY: open(2) with a path; the fd is closed at once.
                let fd = unsafe {
                    libc::open(
                        p.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                        0o644,
                    )
                };
                if fd >= 0 {
                    // SAFETY: an fd just opened.
                    unsafe { libc::close(fd) };
                }
                (if fd >= 0 { 0 } else { -1 }, false)
            }
            Op::Symlink { target, path } => {
                let t = cstr(target);
                let p = path_c(path);
                // SAFETY: symlink(2) with two paths.
                (unsafe { libc::symlink(t.as_ptr(), p.as_ptr()) }, false)
            }
        };
        if r != 0 {
            let e = Errno::last();
            if optional && e == Errno::ENOENT {
                continue;
            }
            return Err(format!("{op}: {}", e.desc()));
        }
    }
    Ok(())
}

/// Brings up `lo` in a new network namespace.
fn loopback_up() -> Result<(), String> {
    // SAFETY: a socket for the ioctl, closed below; ifreq zeroed.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(format!("socket: {}", nix::errno::Errno::last().desc()));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let mut r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        }
        let e = nix::errno::Errno::last();
        libc::close(s);
        if r != 0 {
            return Err(format!("bring up lo: {}", e.desc()));
        }
    }
    Ok(())
}

/// A user namespace for `PrivateUsers=`: root and the handler's own user
/// and group map to themselves, every other id shows as the overflow
/// user. The maps are written by a helper left in doorman's namespace
/// (a process inside the new one may not map more than itself).
fn user_namespace(creds: Option<&(u32, u32, Vec<u32>)>) -> Result<(), String> {
    let (uid, gid) = creds.map_or((0, 0), |c| (c.0, c.1));
    let map = |id: u32| {
        if id == 0 {
            "0 0 1\n".to_string()
        } else {
            format!("0 0 1\n{id} {id} 1\n")
        }
    };
    let (umap, gmap) = (map(uid), map(gid));
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let me = std::process::id();
    // SAFETY: single-threaded; the helper writes two files and exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(wr);
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(rd.as_raw_fd(), &mut b);
            let ok = std::fs::write(format!("/proc/{me}/uid_map"), &umap).is_ok()
                && std::fs::write(format!("/proc/{me}/gid_map"), &gmap).is_ok();
            // SAFETY: _exit from a forked helper.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(rd);
            // SAFETY: unshare with a flag.
            let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            let e = nix::errno::Errno::last();
            let _ = nix::unistd::write(&wr, b"x");
            drop(wr);
            let st = nix::sys::wait::waitpid(child, None);
            if r != 0 {
                return Err(format!("unshare a user namespace: {}", e.desc()));
            }
            match st {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                _ => Err("could not write the user namespace's id maps".into()),
            }
        }
    }
}

/// The executor's main: `args` is its whole argv.
pub fn main(args: Vec<OsString>) -> ! {
    let tokens: Vec<String> = args
        .into_iter()
        .skip(1)
        .map(|a| String::from_utf8_lossy(&a.into_vec()).into_owned())
        .collect();
    let early = Log {
        fd: 2,
        json: false,
        label: ARG0.into(),
    };
    let spec = match Spec::decode(&tokens) {
        Ok(s) => s,
        Err(e) => early.fail(EXIT_SPEC, &format!("bad specification: {e}")),
    };
    let nlisten: usize = if spec.listen_fds {
        std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    } else {
        0
    };
    let log_fd = 3 + nlisten as RawFd;
    cloexec(log_fd);
    let log = Log {
        fd: log_fd,
        json: spec.json,
        label: spec.label.clone(),
    };
    let started = Instant::now();

    // The program's environment, and the commands' (no sockets for them).
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let to_c = |env: &[(OsString, OsString)]| -> Vec<CString> {
        env.iter()
            .map(|(k, v)| {
                let mut b = k.as_bytes().to_vec();
                b.push(b'=');
                b.extend_from_slice(v.as_bytes());
                CString::new(b).unwrap_or_default()
            })
            .collect()
    };
    let cmd_env: Vec<(OsString, OsString)> = env
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.to_str(),
                Some("LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES")
            )
        })
        .cloned()
        .collect();
    let cmd_envp = to_c(&cmd_env);

    // Output files, opened as root like systemd does.
    for (fd, f) in [(1, &spec.stdout), (2, &spec.stderr)] {
        if let Some((path, mode)) = f {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true);
            match mode {
                FileMode::Write => {}
                FileMode::Append => {
                    o.append(true);
                }
                FileMode::Truncate => {
                    o.truncate(true);
                }
            }
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o644);
            match o.open(path) {
                Ok(file) => {
                    // SAFETY: dup2 onto a standard fd.
                    unsafe { libc::dup2(file.as_raw_fd(), fd) };
                }
                Err(e) => log.fail(EXIT_STDOUT, &format!("{}: {e}", path.display())),
            }
        }
    }
    if spec.nonblocking {
        for fd in 3..3 + nlisten as RawFd {
            // SAFETY: fcntl on a handed socket.
            unsafe {
                let fl = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
    }
    if let Some(adj) = spec.oom {
        if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
            log.fail(EXIT_OOM_ADJUST, &format!("OOMScoreAdjust={adj}: {e}"));
        }
    }

    // The way back out, for `+` commands.
    let mut outside = Outside { fds: Vec::new() };
    let sb = &spec.sandbox;
    for (flag, name) in [
        (libc::CLONE_NEWNS, "mnt"),
        (libc::CLONE_NEWNET, "net"),
        (libc::CLONE_NEWUTS, "uts"),
        (libc::CLONE_NEWIPC, "ipc"),
        (libc::CLONE_NEWUSER, "user"),
    ] {
        let wanted = if flag == libc::CLONE_NEWUSER {
            sb.user_ns
        } else {
            sb.unshare & flag != 0
        };
        if wanted {
            match std::fs::File::open(format!("/proc/self/ns/{name}")) {
                Ok(f) => outside.fds.push((OwnedFd::from(f), flag)),
                Err(e) => log.fail(EXIT_NAMESPACE, &format!("/proc/self/ns/{name}: {e}")),
            }
        }
    }
    // The user namespace is entered first on the way out.
    outside.fds.reverse();
    if sb.unshare != 0 {
        // SAFETY: unshare with flags.
        if unsafe { libc::unshare(sb.unshare) } != 0 {
            let e = nix::errno::Errno::last();
            log.fail(EXIT_NAMESPACE, &format!("unshare: {}", e.desc()));
        }
    }
    if let Err(e) = file_system(&sb.ops) {
        log.fail(EXIT_NAMESPACE, &format!("sandbox: {e}"));
    }
    if sb.lo_up {
        if let Err(e) = loopback_up() {
            log.fail(EXIT_NAMESPACE, &format!("PrivateNetwork=: {e}"));
        }
    }
    if sb.user_ns {
        if let Err(e) = user_namespace(spec.creds.as_ref()) {
            log.fail(EXIT_NAMESPACE, &format!("PrivateUsers=: {e}"));
        }
    }
    let groups: Vec<libc::gid_t> = match &spec.creds {
        // In a user namespace only mapped groups can be set.
        Some((_, gid, g)) if sb.user_ns => {
            g.iter().copied().filter(|x| x == gid || *x == 0).collect()
        }
        Some((_, _, g)) => g.clone(),
        None => Vec::new(),
    };
    let enter = Enter {
        spec: &spec,
        outside: &outside,
        groups,
    };

    for c in &spec.pre {
        let r = ready(c);
        if let Err(why) = run_cmd(&r, &cmd_envp, &enter, log_fd) {
            log.fail(
                1,
                &format!("ExecStartPre={} failed: {why}; start aborted", r.shown),
            );
        }
    }

    let Some(main) = &spec.main else {
        std::process::exit(0)
    };
    let main = ready(main);
    let mut env = env;
    // Readiness: a datagram socket of the helper's, named in NOTIFY_SOCKET
    // (abstract: nothing to create or remove; made after the network
    // namespace, so that the program reaches it from inside).
    let notify = spec.notify.map(|access| {
        let name = format!(
            "doorman/notify/{}/{}",
            std::process::id(),
            started.elapsed().as_nanos()
        );
        let sock = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap_or_else(|e| log.fail(EXIT_NAMESPACE, &format!("notify socket: {e}")));
        let addr = nix::sys::socket::UnixAddr::new_abstract(name.as_bytes())
            .unwrap_or_else(|e| log.fail(EXIT_NAMESPACE, &format!("notify socket: {e}")));
        if let Err(e) = nix::sys::socket::bind(sock.as_raw_fd(), &addr) {
            log.fail(EXIT_NAMESPACE, &format!("notify socket: {e}"));
        }
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true);
        env.retain(|(k, _)| k != "NOTIFY_SOCKET");
        env.push(("NOTIFY_SOCKET".into(), format!("@{name}").into()));
        (sock, access)
    });
    let envp = to_c(&env);
    let post: Vec<Ready> = spec.post.iter().map(ready).collect();

    // The helper: sees the exec (its pipe closes), waits for READY=1,
    // runs ExecStartPost=; out of the program's way (double fork: it is
    // nobody's child to reap but doorman's, a subreaper).
    let exec_pipe = if notify.is_some() || !post.is_empty() {
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .unwrap_or_else(|e| log.fail(EXIT_EXEC, &format!("pipe: {e}")));
        let main_pid = std::process::id() as libc::pid_t;
        // SAFETY: single-threaded.
        match unsafe { nix::unistd::fork() } {
            Err(e) => log.fail(EXIT_EXEC, &format!("fork: {e}")),
            Ok(nix::unistd::ForkResult::Child) => {
                // SAFETY: single-threaded.
                if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
                    drop(wr);
                    helper(
                        rd,
                        main_pid,
                        notify.as_ref(),
                        &post,
                        &cmd_envp,
                        &enter,
                        &log,
                        nlisten,
                        started,
                    );
                }
                // SAFETY: _exit of the middle process.
                unsafe { libc::_exit(0) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let _ = nix::sys::wait::waitpid(child, None);
                drop(rd);
                Some(wr)
            }
        }
    } else {
        None
    };
    drop(notify);

    if let Err((status, what, e)) = enter.apply(main.privileges) {
        log.fail(status, &format!("{what}: {}", e.desc()));
    }
    let e = exec(&main, &envp);
    if let Some(wr) = &exec_pipe {
        let _ = nix::unistd::write(wr, &(e as i32).to_ne_bytes());
    }
    log.fail(
        EXIT_EXEC,
        &format!("exec {}: {}", main.path.to_string_lossy(), e.desc()),
    )
}

/// The helper's life: see [`main`].
#[allow(clippy::too_many_arguments)]
fn helper(
    exec_rd: OwnedFd,
    main_pid: libc::pid_t,
    notify: Option<&(OwnedFd, NotifyAccess)>,
    post: &[Ready],
    envp: &[CString],
    enter: &Enter<'_>,
    log: &Log,
    nlisten: usize,
    started: Instant,
) -> ! {
    // Let go of the client and the sockets.
    if let Ok(null) = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    ) {
        // SAFETY: dup2 onto 0-2; then the null fd is closed.
        unsafe {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
    // The sockets' slots keep /dev/null, so that no fd made later lands
    // in the range a command's child closes.
    if let Ok(null) = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    ) {
        for fd in 3..3 + nlisten as RawFd {
            // SAFETY: dup2 over a socket the helper lets go of.
            unsafe { libc::dup2(null, fd) };
        }
        let _ = nix::unistd::close(null);
    }
    let mut word = [0u8; 4];
    let n = nix::unistd::read(exec_rd.as_raw_fd(), &mut word).unwrap_or(0);
    if n != 0 {
        // SAFETY: _exit; the executor logged why its exec failed.
        unsafe { libc::_exit(0) }
    }
    drop(exec_rd);
    let alive = || {
        // SAFETY: kill with signal 0 probes only.
        let there = unsafe { libc::kill(main_pid, 0) } == 0;
        there
            && std::fs::read_to_string(format!("/proc/{main_pid}/stat"))
                .map(|s| !s.rsplit(") ").next().unwrap_or("").starts_with('Z'))
                .unwrap_or(false)
    };
    if let Some((sock, access)) = notify {
        let deadline = started + READY_TIMEOUT;
        let mut ready = false;
        while !ready {
            let now = Instant::now();
            if now >= deadline {
                log.line(
                    "error",
                    &format!(
                        "pid={main_pid} did not send READY=1 within {}s; stopping it",
                        READY_TIMEOUT.as_secs()
                    ),
                );
                // SAFETY: signals to the program's process group.
                unsafe { libc::kill(-main_pid, libc::SIGTERM) };
                // SAFETY: _exit.
                unsafe { libc::_exit(1) }
            }
            let mut pfd = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Woken by a message, or each 200 ms to see the program is
            // still there (it may exit without a word).
            // SAFETY: poll on one fd.
            let r = unsafe { libc::poll(&mut pfd, 1, 200) };
            if r <= 0 {
                if !alive() {
                    // SAFETY: _exit: doorman logs the program's exit.
                    unsafe { libc::_exit(0) }
                }
                continue;
            }
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!(libc::ucred);
            let Ok(msg) = nix::sys::socket::recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) else {
                continue;
            };
            let sender = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    nix::sys::socket::ControlMessageOwned::ScmCredentials(c) => Some(c.pid()),
                    _ => None,
                })
            });
            let len = msg.bytes;
            let allowed = match access {
                NotifyAccess::None => false,
                NotifyAccess::Main => sender == Some(main_pid),
                NotifyAccess::Exec | NotifyAccess::All => true,
            };
            let text = String::from_utf8_lossy(&buf[..len]);
            if allowed && text.lines().any(|l| l == "READY=1") {
                ready = true;
            }
        }
        log.line(
            "info",
            &format!(
                "ready pid={main_pid} after_ms={}",
                started.elapsed().as_millis()
            ),
        );
    }
    for r in post {
        if let Err(why) = run_cmd(r, envp, enter, log.fd) {
            log.line(
                "error",
                &format!(
                    "ExecStartPost={} failed: {why}; stopping pid={main_pid}",
                    r.shown
                ),
            );
            // SAFETY: signals to the program's process group.
            unsafe { libc::kill(-main_pid, libc::SIGTERM) };
            // SAFETY: _exit.
            unsafe { libc::_exit(1) }
        }
    }
    // SAFETY: _exit.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trip() {
        let c = |p: &str, pr| Cmd {
            program: PathBuf::from(p),
            argv: vec![p.into(), "a b".into(), String::new()],
            ignore_failure: true,
            privileges: pr,
        };
        let mut s = Spec {
            label: "ssh/tcp".into(),
            json: true,
            listen_fds: true,
            creds: Some((33, 44, vec![44, 5])),
            set_groups: true,
            oom: Some(-500),
            nonblocking: true,
            stdout: Some((PathBuf::from("/var/log/x"), FileMode::Append)),
            stderr: None,
            notify: Some(NotifyAccess::Main),
            pre: vec![c("/bin/true", Privileges::Full)],
            main: Some(c("/usr/sbin/sshd", Privileges::Normal)),
            post: vec![c("/bin/echo", Privileges::KeepIds)],
            ..Spec::default()
        };
        s.sandbox.unshare = libc::CLONE_NEWNS;
        s.sandbox.drop_bounding = 1 << 40;
        s.sandbox.filter = vec![Insn {
            code: 6,
            jt: 1,
            jf: 2,
            k: 0x7fff_0000,
        }];
        s.sandbox.ops = vec![
            Op::Mount {
                source: None,
                target: "/".into(),
                fstype: Some("tmpfs".into()),
                flags: 0x4000,
                data: Some(String::new()),
                optional: true,
            },
            Op::SetAttr {
                path: "/usr".into(),
                set: 1,
                clr: 0,
                recursive: true,
                optional: false,
            },
            Op::Mkdir {
                path: "/run/x".into(),
                mode: 0o1777,
            },
            Op::Touch { path: "/t".into() },
            Op::Symlink {
                target: "pts/ptmx".into(),
                path: "/dev/ptmx".into(),
            },
        ];
        let back = Spec::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        assert!(Spec::decode(&["v0".to_string()]).is_err());
        let mut t = s.encode();
        t.truncate(t.len() - 3);
        assert!(Spec::decode(&t).is_err());
    }
}
