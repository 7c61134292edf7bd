//! A unit's sandbox as a plan for the child: which namespaces to make, the
//! mounts to make in its mount namespace, in order, the capabilities to
//! drop from the bounding set, and the system call filter. Built in the
//! parent (it reads `/proc/self/mountinfo` and `stat`s paths); the child
//! only makes the calls (see `child.rs`).
//!
//! Owns: the order and content of the mounts that systemd.exec(5)'s
//! file-system directives mean. Must not: make them (the child does).

use std::path::{Path, PathBuf};

use super::seccomp;
use crate::config::sandbox::{ProtectHome, ProtectProc, ProtectSystem, Sandbox};

/// Where doorman keeps the nodes it mounts over inaccessible paths and the
/// directory it builds a private `/dev` on (inside the child's own mount
/// namespace, so every child can use the same one).
pub const STATE_DIR: &str = "/run/doorman";

/// `mount_setattr(2)`'s attribute bits and flags.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const AT_RECURSIVE: u32 = 0x8000;

/// One mount of the current namespace: where, and whether read-only.
#[derive(Debug, Clone)]
struct MountInfo {
    path: PathBuf,
    ro: bool,
}

/// The mounts of doorman's namespace, from `/proc/self/mountinfo`.
fn mounts() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let path = unescape(f.get(4)?);
            let ro = f.get(5)?.split(',').any(|o| o == "ro");
            Some(MountInfo {
                path: PathBuf::from(path),
                ro,
            })
        })
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One step of a sandbox's file-system setup, made by the executor in the
/// handler's own mount namespace, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Mount {
        source: Option<String>,
        target: PathBuf,
        fstype: Option<String>,
        flags: u64,
        data: Option<String>,
        optional: bool,
    },
    SetAttr {
        path: PathBuf,
        set: u64,
        clr: u64,
        recursive: bool,
        optional: bool,
    },
    Mkdir {
        path: PathBuf,
        mode: u32,
    },
    Touch {
        path: PathBuf,
    },
    Symlink {
        target: String,
        path: PathBuf,
    },
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Mount {
                source,
                target,
                fstype,
                ..
            } => write!(
                f,
                "mount {} on {}",
                fstype.as_deref().or(source.as_deref()).unwrap_or("-"),
                target.display()
            ),
            Op::SetAttr { path, set, .. } => write!(
                f,
                "make {} {}",
                path.display(),
                if set & MOUNT_ATTR_RDONLY != 0 {
                    "read-only"
                } else {
                    "writable"
                }
            ),
            Op::Mkdir { path, .. } => write!(f, "mkdir {}", path.display()),
            Op::Touch { path } => write!(f, "create {}", path.display()),
            Op::Symlink { target, path } => write!(f, "symlink {} -> {target}", path.display()),
        }
    }
}

/// A unit's sandbox as the executor applies it (see `crate::executor`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub ops: Vec<Op>,
    pub filter: Vec<seccomp::Insn>,
    /// `CLONE_NEW*` flags for `unshare` (the user namespace apart).
    pub unshare: libc::c_int,
    /// `PrivateNetwork=`: bring up `lo` in the new namespace.
    pub lo_up: bool,
    /// `PrivateUsers=`: a user namespace, made last.
    pub user_ns: bool,
    pub drop_bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl Prepared {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
        optional: bool,
    ) {
        // c_ulong is 32 bits wide on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let flags = u64::from(flags);
        self.ops.push(Op::Mount {
            source: source.map(str::to_string),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
            optional,
        });
    }

    fn bind_self(&mut self, p: &Path, optional: bool) {
        let s = p.to_string_lossy().into_owned();
        self.mount(
            Some(&s),
            p,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
            optional,
        );
    }

    fn setattr(&mut self, p: &Path, set: u64, clr: u64, recursive: bool, optional: bool) {
        self.ops.push(Op::SetAttr {
            path: p.to_path_buf(),
            set,
            clr,
            recursive,
            optional,
        });
    }

    fn read_only(&mut self, p: &Path, optional: bool) {
        self.bind_self(p, optional);
        self.setattr(p, MOUNT_ATTR_RDONLY, 0, true, optional);
    }

    /// Hides `p` behind an empty node of doorman's (mode 0).
    fn inaccessible(&mut self, p: &Path, optional: bool) {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => self.mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                Some("mode=000"),
                optional,
            ),
            Err(_) if optional => {}
            // A file, or missing now (the executor finds out, and fails).
            _ => {
                let node = Path::new(STATE_DIR).join("inaccessible");
                let s = node.to_string_lossy().into_owned();
                self.mount(Some(&s), p, None, libc::MS_BIND, None, optional);
            }
        }
    }

    fn mkdir(&mut self, p: &Path, mode: u32) {
        self.ops.push(Op::Mkdir {
            path: p.to_path_buf(),
            mode,
        });
    }

    fn touch(&mut self, p: &Path) {
        self.ops.push(Op::Touch {
            path: p.to_path_buf(),
        });
    }

    fn symlink(&mut self, target: &str, p: &Path) {
        self.ops.push(Op::Symlink {
            target: target.to_string(),
            path: p.to_path_buf(),
        });
    }
}

/// Whether the kernel has `mount_setattr` (Linux 5.12), which read-only
/// views need.
fn have_mount_setattr() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| {
        // SAFETY: an invalid call (fd -1): EBADF where it exists, ENOSYS
        // where it does not; nothing is changed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                c"".as_ptr(),
                0,
                std::ptr::null::<u8>(),
                0usize,
            )
        };
        !(r == -1 && nix::errno::Errno::last() == nix::errno::Errno::ENOSYS)
    })
}

/// Makes sure doorman's own nodes exist: `STATE_DIR`, an inaccessible file
/// (mode 0), the directory a private `/dev` is built on. Root only.
pub fn ensure_state_dir() -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = Path::new(STATE_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let node = dir.join("inaccessible");
    if std::fs::symlink_metadata(&node).is_err() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o0)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&node)?;
    }
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o0))?;
    let dev = dir.join("dev");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dev)?;
    Ok(())
}

/// The plan for `sb`, for a handler running as `uid`/`gid`. `Err`: why it
/// cannot be made here.
pub fn prepare(sb: &Sandbox) -> Result<Prepared, String> {
    let mut p = Prepared::default();
    if !sb.any() {
        return Ok(p);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("sandboxing directives need doorman to run as root".into());
    }
    let mut flags = 0;
    if sb.mounts() {
        if !have_mount_setattr() {
            return Err(
                "the sandbox's read-only views need Linux 5.12 or later (mount_setattr)".into(),
            );
        }
        ensure_state_dir().map_err(|e| format!("{STATE_DIR}: {e}"))?;
        flags |= libc::CLONE_NEWNS;
    }
    if sb.private_network {
        flags |= libc::CLONE_NEWNET;
        p.lo_up = true;
    }
    if sb.protect_hostname {
        flags |= libc::CLONE_NEWUTS;
    }
    if sb.private_ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    p.unshare = flags;
    if sb.mounts() {
        file_system(&mut p, sb);
    }
    p.user_ns = sb.private_users;
    p.ambient = sb.ambient;
    let cap = |name: &str| 1u64 << crate::config::sandbox::capability(name).unwrap_or(0);
    let mut drop = match sb.bounding {
        Some(keep) => crate::config::sandbox::all_capabilities() & !keep,
        None => 0,
    };
    if sb.protect_kernel_modules {
        drop |= cap("sys_module");
    }
    if sb.protect_kernel_logs {
        drop |= cap("syslog");
    }
    if sb.protect_clock {
        drop |= cap("sys_time") | cap("wake_alarm");
    }
    if sb.private_devices {
        drop |= cap("mknod") | cap("sys_rawio");
    }
    p.drop_bounding = drop;
    if let Some(prog) = seccomp::program(sb) {
        if !seccomp::SUPPORTED {
            return Err("system call filters are not supported on this architecture".into());
        }
        p.filter = prog;
    }
    p.no_new_privs = sb.no_new_privileges || !p.filter.is_empty();
    Ok(p)
}

/// The mounts, in the order that keeps each directive's meaning (new
/// mounts made after the read-only pass stay writable, as `/tmp` must).
fn file_system(p: &mut Prepared, sb: &Sandbox) {
    // Nothing made here reaches doorman's namespace.
    p.mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SLAVE,
        None,
        false,
    );
    let api = |path: &Path| {
        ["/dev", "/proc", "/sys"]
            .iter()
            .any(|a| path.starts_with(a))
    };
    // Writable paths are separate mounts first, so that a read-only pass
    // over what holds them can be undone for them alone.
    for rw in &sb.read_write {
        p.bind_self(&rw.path, rw.optional);
    }
    match sb.protect_system {
        ProtectSystem::No => {}
        ProtectSystem::Yes | ProtectSystem::Full => {
            let mut dirs = vec!["/usr", "/boot", "/efi"];
            if sb.protect_system == ProtectSystem::Full {
                dirs.push("/etc");
            }
            for d in dirs {
                p.read_only(Path::new(d), true);
            }
        }
        ProtectSystem::Strict => {
            p.setattr(Path::new("/"), MOUNT_ATTR_RDONLY, 0, true, false);
            // The API file systems stay as they were.
            for m in mounts() {
                if api(&m.path) && !m.ro {
                    p.setattr(&m.path, 0, MOUNT_ATTR_RDONLY, false, true);
                }
            }
        }
    }
    if sb.protect_system != ProtectSystem::No {
        let snapshot = mounts();
        for rw in &sb.read_write {
            p.setattr(&rw.path, 0, MOUNT_ATTR_RDONLY, false, rw.optional);
            for m in &snapshot {
                if m.path.starts_with(&rw.path) && m.path != rw.path && !m.ro {
                    p.setattr(&m.path, 0, MOUNT_ATTR_RDONLY, false, true);
                }
            }
        }
    }
    for ro in &sb.read_only {
        p.read_only(&ro.path, ro.optional);
    }
    let homes = ["/home", "/root", "/run/user"];
    match sb.protect_home {
        ProtectHome::No => {}
        ProtectHome::Yes => {
            for h in homes {
                if Path::new(h).exists() {
                    p.inaccessible(Path::new(h), true);
                }
            }
        }
        ProtectHome::ReadOnly => {
            for h in homes {
                p.read_only(Path::new(h), true);
            }
        }
        ProtectHome::Tmpfs => {
            for h in homes {
                if Path::new(h).is_dir() {
                    p.mount(
                        Some("tmpfs"),
                        Path::new(h),
                        Some("tmpfs"),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                        Some("mode=0755"),
                        true,
                    );
                }
            }
        }
    }
    if sb.private_tmp {
        for t in ["/tmp", "/var/tmp"] {
            if Path::new(t).is_dir() {
                p.mount(
                    Some("tmpfs"),
                    Path::new(t),
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some("mode=1777"),
                    false,
                );
            }
        }
    }
    for (path, opts) in &sb.tmpfs {
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        let mut data: Vec<&str> = Vec::new();
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" => flags |= libc::MS_RDONLY,
                "rw" => flags &= !libc::MS_RDONLY,
                "noexec" => flags |= libc::MS_NOEXEC,
                "exec" => flags &= !libc::MS_NOEXEC,
                "suid" => flags &= !libc::MS_NOSUID,
                "dev" => flags &= !libc::MS_NODEV,
                other => data.push(other),
            }
        }
        let data = if data.is_empty() {
            "mode=0755".to_string()
        } else {
            data.join(",")
        };
        p.mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            flags,
            Some(&data),
            false,
        );
    }
    for b in &sb.bind {
        let src = b.source.to_string_lossy().into_owned();
        let rec = if b.recursive { libc::MS_REC } else { 0 };
        p.mount(
            Some(&src),
            &b.dest,
            None,
            libc::MS_BIND | rec,
            None,
            b.optional,
        );
        if b.read_only {
            p.setattr(&b.dest, MOUNT_ATTR_RDONLY, 0, b.recursive, b.optional);
        }
    }
    if sb.protect_proc != ProtectProc::Default || sb.proc_subset_pid {
        let mut opts = Vec::new();
        match sb.protect_proc {
            ProtectProc::Default => {}
            ProtectProc::NoAccess => opts.push("hidepid=noaccess"),
            ProtectProc::Invisible => opts.push("hidepid=invisible"),
            ProtectProc::Ptraceable => opts.push("hidepid=ptraceable"),
        }
        if sb.proc_subset_pid {
            opts.push("subset=pid");
        }
        p.mount(
            Some("proc"),
            Path::new("/proc"),
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some(&opts.join(",")),
            false,
        );
    }
    if sb.private_devices {
        private_dev(p);
    }
    if sb.protect_kernel_tunables {
        for t in [
            "/proc/sys",
            "/proc/sysrq-trigger",
            "/proc/latency_stats",
            "/proc/acpi",
            "/proc/timer_stats",
            "/proc/asound",
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/sys",
        ] {
            if Path::new(t).exists() {
                p.read_only(Path::new(t), true);
            }
        }
        for t in ["/proc/kallsyms", "/proc/kcore"] {
            if Path::new(t).exists() {
                p.inaccessible(Path::new(t), true);
            }
        }
    }
    if sb.protect_control_groups && Path::new("/sys/fs/cgroup").exists() {
        p.read_only(Path::new("/sys/fs/cgroup"), true);
    }
    if sb.protect_kernel_modules {
        for m in ["/usr/lib/modules", "/lib/modules"] {
            if Path::new(m).exists() {
                p.inaccessible(Path::new(m), true);
            }
        }
    }
    if sb.protect_kernel_logs {
        for k in ["/proc/kmsg", "/dev/kmsg"] {
            if Path::new(k).exists() {
                p.inaccessible(Path::new(k), true);
            }
        }
    }
    for i in &sb.inaccessible {
        p.inaccessible(&i.path, i.optional);
    }
}

/// A private `/dev`: a tmpfs with the harmless devices bound in from the
/// real one, its own pseudo-terminals and shared memory, moved over
/// `/dev` (systemd's `PrivateDevices=`).
fn private_dev(p: &mut Prepared) {
    let stage = Path::new(STATE_DIR).join("dev");
    p.mount(
        Some("tmpfs"),
        &stage,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755"),
        false,
    );
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        let real = Path::new("/dev").join(d);
        if !real.exists() {
            continue;
        }
        p.touch(&stage.join(d));
        let src = real.to_string_lossy().into_owned();
        p.mount(Some(&src), &stage.join(d), None, libc::MS_BIND, None, true);
    }
    p.mkdir(&stage.join("pts"), 0o755);
    p.mount(
        Some("devpts"),
        &stage.join("pts"),
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620,gid=5"),
        true,
    );
    p.symlink("pts/ptmx", &stage.join("ptmx"));
    p.mkdir(&stage.join("shm"), 0o1777);
    p.mount(
        Some("tmpfs"),
        &stage.join("shm"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
        false,
    );
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        p.symlink(target, &stage.join(name));
    }
    let s = stage.to_string_lossy().into_owned();
    p.mount(
        Some(&s),
        Path::new("/dev"),
        None,
        libc::MS_MOVE,
        None,
        false,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
