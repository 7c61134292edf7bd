//! What a handler may see and do beyond its credentials: the subset of
//! systemd.exec(5)'s sandboxing doorman applies (file-system views,
//! namespaces, capabilities, system call filters), as plain data.
//!
//! Owns: the model and the parsing of each directive's value. Must not:
//! apply anything (`spawn::sandbox` turns it into a plan for the child).

use std::path::PathBuf;

/// `ProtectSystem=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProtectSystem {
    #[default]
    No,
    /// `/usr`, `/boot` and `/efi` read-only.
    Yes,
    /// ... and `/etc`.
    Full,
    /// Everything but `/dev`, `/proc`, `/sys` and `ReadWritePaths=`.
    Strict,
}

/// `ProtectHome=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProtectHome {
    #[default]
    No,
    /// `/home`, `/root` and `/run/user` empty and inaccessible.
    Yes,
    /// ... read-only.
    ReadOnly,
    /// ... an empty writable tmpfs each.
    Tmpfs,
}

/// `ProtectProc=`: what of other processes `/proc` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProtectProc {
    #[default]
    Default,
    /// `hidepid=noaccess`.
    NoAccess,
    /// `hidepid=invisible`.
    Invisible,
    /// `hidepid=ptraceable`.
    Ptraceable,
}

/// A path of `ReadWritePaths=` & co, with its `-` (ignore if missing) and
/// `+` (relative to a root directory, which doorman has none of) prefixes
/// taken off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPath {
    pub path: PathBuf,
    pub optional: bool,
}

/// `BindPaths=` / `BindReadOnlyPaths=`: `SOURCE[:DEST[:OPTIONS]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindPath {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub read_only: bool,
    pub optional: bool,
    pub recursive: bool,
}

/// A system call filter (`SystemCallFilter=`): names (groups already
/// expanded) allowed, or denied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallFilter {
    pub allow: bool,
    pub names: Vec<String>,
}

/// Everything a unit's sandboxing directives asked for. All defaults
/// mean "as doorman itself runs".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub no_new_privileges: bool,
    pub protect_system: ProtectSystem,
    pub protect_home: ProtectHome,
    pub private_tmp: bool,
    pub private_devices: bool,
    pub private_network: bool,
    pub private_users: bool,
    pub private_ipc: bool,
    pub private_mounts: bool,
    pub protect_kernel_tunables: bool,
    pub protect_kernel_modules: bool,
    pub protect_kernel_logs: bool,
    pub protect_control_groups: bool,
    pub protect_clock: bool,
    pub protect_hostname: bool,
    pub protect_proc: ProtectProc,
    /// `ProcSubset=pid`.
    pub proc_subset_pid: bool,
    pub read_write: Vec<SandboxPath>,
    pub read_only: Vec<SandboxPath>,
    pub inaccessible: Vec<SandboxPath>,
    pub bind: Vec<BindPath>,
    /// `TemporaryFileSystem=`: path and mount options.
    pub tmpfs: Vec<(PathBuf, String)>,
    /// Capabilities kept in the bounding set (`CapabilityBoundingSet=`);
    /// `None`: all.
    pub bounding: Option<u64>,
    /// `AmbientCapabilities=` for a handler that is not root.
    pub ambient: u64,
    /// Namespace types (`CLONE_NEW*` bits) the handler may still create
    /// (`RestrictNamespaces=`); `None`: no restriction.
    pub namespaces: Option<u64>,
    /// `RestrictAddressFamilies=`: allowed (true) or denied families.
    pub address_families: Option<(bool, Vec<i32>)>,
    pub restrict_realtime: bool,
    pub restrict_suid_sgid: bool,
    pub lock_personality: bool,
    pub memory_deny_write_execute: bool,
    /// `SystemCallArchitectures=native`.
    pub native_only: bool,
    pub syscalls: Option<SyscallFilter>,
    /// `SystemCallErrorNumber=`: denied calls fail with it; `None`: the
    /// process is killed (`SIGSYS`), as in systemd.
    pub syscall_errno: Option<i32>,
}

impl Sandbox {
    /// Whether the handler gets a mount namespace of its own.
    pub fn mounts(&self) -> bool {
        self.protect_system != ProtectSystem::No
            || self.protect_home != ProtectHome::No
            || self.private_tmp
            || self.private_devices
            || self.private_mounts
            || self.protect_kernel_tunables
            || self.protect_kernel_modules
            || self.protect_kernel_logs
            || self.protect_control_groups
            || self.protect_proc != ProtectProc::Default
            || self.proc_subset_pid
            || !self.read_write.is_empty()
            || !self.read_only.is_empty()
            || !self.inaccessible.is_empty()
            || !self.bind.is_empty()
            || !self.tmpfs.is_empty()
    }

    /// Whether a seccomp filter is needed.
    pub fn seccomp(&self) -> bool {
        self.native_only
            || self.syscalls.is_some()
            || self.namespaces.is_some()
            || self.address_families.is_some()
            || self.restrict_realtime
            || self.restrict_suid_sgid
            || self.lock_personality
            || self.memory_deny_write_execute
            || self.protect_clock
            || self.protect_hostname
            || self.protect_kernel_modules
            || self.protect_kernel_logs
    }

    /// Whether anything at all is asked for.
    pub fn any(&self) -> bool {
        *self != Sandbox::default()
    }
}

/// The capability names systemd knows (`CAP_` optional), by number.
pub const CAPABILITIES: &[&str] = &[
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// A capability's number from its name (`CAP_NET_ADMIN`, `net_admin`).
pub fn capability(name: &str) -> Option<u32> {
    let n = name.to_ascii_lowercase();
    let n = n.strip_prefix("cap_").unwrap_or(&n);
    CAPABILITIES.iter().position(|c| *c == n).map(|i| i as u32)
}

/// A capability list as systemd reads one: names separated by blanks, a
/// leading `~` inverting it. `Ok(mask)` of the capabilities named (or all
/// but those).
pub fn parse_capabilities(v: &str) -> Result<(bool, u64), String> {
    let (invert, rest) = match v.strip_prefix('~') {
        Some(r) => (true, r),
        None => (false, v),
    };
    let mut mask = 0u64;
    for w in rest.split_whitespace() {
        let c = capability(w).ok_or_else(|| format!("unknown capability {w:?}"))?;
        mask |= 1 << c;
    }
    Ok((invert, mask))
}

/// All capabilities this table knows.
pub fn all_capabilities() -> u64 {
    (1u64 << CAPABILITIES.len()) - 1
}

/// The `CLONE_NEW*` flag of a namespace type name (`RestrictNamespaces=`).
pub fn namespace_flag(name: &str) -> Option<u64> {
    Some(match name {
        "cgroup" => libc::CLONE_NEWCGROUP as u64,
        "ipc" => libc::CLONE_NEWIPC as u64,
        "net" => libc::CLONE_NEWNET as u64,
        "mnt" => libc::CLONE_NEWNS as u64,
        "pid" => libc::CLONE_NEWPID as u64,
        "user" => libc::CLONE_NEWUSER as u64,
        "uts" => libc::CLONE_NEWUTS as u64,
        _ => return None,
    })
}

/// Every namespace type's flag.
pub fn all_namespaces() -> u64 {
    ["cgroup", "ipc", "net", "mnt", "pid", "user", "uts"]
        .iter()
        .filter_map(|n| namespace_flag(n))
        .fold(0, |a, b| a | b)
}

/// An address family's number from its name (`AF_INET6`).
pub fn address_family(name: &str) -> Option<i32> {
    Some(match name {
        "AF_UNIX" | "AF_LOCAL" => libc::AF_UNIX,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_NETLINK" => libc::AF_NETLINK,
        "AF_PACKET" => libc::AF_PACKET,
        "AF_BLUETOOTH" => libc::AF_BLUETOOTH,
        "AF_CAN" => libc::AF_CAN,
        "AF_ALG" => libc::AF_ALG,
        "AF_VSOCK" => libc::AF_VSOCK,
        "AF_XDP" => libc::AF_XDP,
        "AF_TIPC" => libc::AF_TIPC,
        "AF_KEY" => libc::AF_KEY,
        "AF_APPLETALK" => libc::AF_APPLETALK,
        "AF_AX25" => libc::AF_AX25,
        "AF_IPX" => libc::AF_IPX,
        "AF_X25" => libc::AF_X25,
        "AF_NFC" => libc::AF_NFC,
        "AF_RDS" => libc::AF_RDS,
        "AF_QIPCRTR" => 42,
        "AF_MCTP" => 45,
        _ => return None,
    })
}

/// The system call groups of systemd (`@system-service` and the rest), as
/// `systemd-analyze syscall-filter` of systemd 252 (Debian 12) lists them;
/// a group may name other groups. Parsed from `syscall_groups.txt`.
pub fn syscall_group(name: &str) -> Option<Vec<&'static str>> {
    const TEXT: &str = include_str!("syscall_groups.txt");
    let mut out = Vec::new();
    let mut inside = false;
    let mut found = false;
    for line in TEXT.lines() {
        if let Some(g) = line.strip_prefix('@') {
            inside = g.trim() == &name[1..];
            found |= inside;
            continue;
        }
        let w = line.trim();
        if inside && !w.is_empty() && !w.starts_with('#') {
            out.push(w);
        }
    }
    found.then_some(out)
}

/// `SystemCallFilter=` values in order, into one filter: the first word
/// list decides whether it is an allow list (no `~`) or a deny list
/// (`~`); later allow lists add to an allow list and remove from a deny
/// list, later deny lists the other way round (systemd.exec(5)).
/// Groups are expanded; `name:errno` suffixes are dropped (the filter's
/// error number applies). The names are checked against the system calls
/// this build knows when the filter is compiled.
pub fn merge_syscall_filter(
    current: Option<SyscallFilter>,
    value: &str,
) -> Result<Option<SyscallFilter>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    let (deny, rest) = match value.trim().strip_prefix('~') {
        Some(r) => (true, r),
        None => (false, value.trim()),
    };
    let mut names: Vec<String> = Vec::new();
    fn expand(w: &str, out: &mut Vec<String>, depth: u32) -> Result<(), String> {
        let w = w.split(':').next().unwrap_or(w);
        if let Some(_g) = w.strip_prefix('@') {
            if depth > 8 {
                return Err(format!("system call group {w} nests too deep"));
            }
            let members =
                syscall_group(w).ok_or_else(|| format!("unknown system call group {w}"))?;
            for m in members {
                expand(m, out, depth + 1)?;
            }
        } else if !out.iter().any(|n| n == w) {
            out.push(w.to_string());
        }
        Ok(())
    }
    for w in rest.split_whitespace() {
        expand(w, &mut names, 0)?;
    }
    let mut f = current.unwrap_or(SyscallFilter {
        allow: !deny,
        names: Vec::new(),
    });
    if f.allow != deny {
        // Same kind as the filter: add.
        for n in names {
            if !f.names.contains(&n) {
                f.names.push(n);
            }
        }
    } else {
        f.names.retain(|n| !names.contains(n));
    }
    Ok(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_expand_and_merge_as_systemd_does() {
        let service = syscall_group("@system-service").unwrap();
        assert!(service.contains(&"@basic-io"), "{service:?}");
        let f = merge_syscall_filter(None, "@system-service chroot")
            .unwrap()
            .unwrap();
        assert!(f.allow);
        for n in ["read", "write", "execve", "chroot", "clone"] {
            assert!(f.names.iter().any(|x| x == n), "{n}");
        }
        assert!(!f.names.iter().any(|x| x == "reboot"));
        // A later deny list removes from an allow list.
        let f = merge_syscall_filter(Some(f), "~chroot").unwrap().unwrap();
        assert!(!f.names.iter().any(|x| x == "chroot"));
        let f = merge_syscall_filter(None, "~@mount").unwrap().unwrap();
        assert!(!f.allow && f.names.iter().any(|x| x == "mount"));
        assert!(merge_syscall_filter(None, "@no-such-group").is_err());
        assert_eq!(
            parse_capabilities("CAP_NET_BIND_SERVICE cap_sys_time"),
            Ok((false, 1 << 10 | 1 << 25))
        );
        assert_eq!(capability("CAP_CHECKPOINT_RESTORE"), Some(40));
    }
}
