//! The `[Service]` sandboxing directives (systemd.exec(5), SANDBOXING,
//! SYSTEM CALL FILTERING, CAPABILITIES) into [`Sandbox`].

use std::path::PathBuf;

use super::*;
use crate::config::sandbox::{
    self, merge_syscall_filter, BindPath, ProtectHome, ProtectProc, ProtectSystem, SandboxPath,
};

impl Builder {
    /// Applies sandboxing directive `key=v`; false if `key` is not one.
    pub(super) fn sandbox(&mut self, key: &str, v: &str) -> Result<bool, String> {
        let flag = |v: &str| parse_bool(v);
        let paths = |v: &str| -> Result<Vec<SandboxPath>, String> {
            split_words(v)?
                .into_iter()
                .map(|w| {
                    let mut w = w.as_str();
                    let mut optional = false;
                    loop {
                        match w.chars().next() {
                            Some('-') => optional = true,
                            Some('+') => {}
                            _ => break,
                        }
                        w = &w[1..];
                    }
                    if !w.starts_with('/') {
                        return Err(format!("{w:?} is not an absolute path"));
                    }
                    Ok(SandboxPath {
                        path: PathBuf::from(w),
                        optional,
                    })
                })
                .collect()
        };
        let sb = &mut self.unit().sandbox;
        match key {
            "NoNewPrivileges" => sb.no_new_privileges = flag(v)?,
            "ProtectSystem" => {
                sb.protect_system = match v {
                    "full" => ProtectSystem::Full,
                    "strict" => ProtectSystem::Strict,
                    _ if flag(v)? => ProtectSystem::Yes,
                    _ => ProtectSystem::No,
                }
            }
            "ProtectHome" => {
                sb.protect_home = match v {
                    "read-only" => ProtectHome::ReadOnly,
                    "tmpfs" => ProtectHome::Tmpfs,
                    _ if flag(v)? => ProtectHome::Yes,
                    _ => ProtectHome::No,
                }
            }
            "PrivateTmp" => sb.private_tmp = flag(v)?,
            "PrivateDevices" => sb.private_devices = flag(v)?,
            "PrivateNetwork" => sb.private_network = flag(v)?,
            "PrivateUsers" => sb.private_users = flag(v)?,
            "PrivateIPC" => sb.private_ipc = flag(v)?,
            "PrivateMounts" => sb.private_mounts = flag(v)?,
            "ProtectKernelTunables" => sb.protect_kernel_tunables = flag(v)?,
            "ProtectKernelModules" => sb.protect_kernel_modules = flag(v)?,
            "ProtectKernelLogs" => sb.protect_kernel_logs = flag(v)?,
            "ProtectControlGroups" => sb.protect_control_groups = flag(v)?,
            "ProtectClock" => sb.protect_clock = flag(v)?,
            "ProtectHostname" => sb.protect_hostname = flag(v)?,
            "ProtectProc" => {
                sb.protect_proc = match v {
                    "noaccess" => ProtectProc::NoAccess,
                    "invisible" => ProtectProc::Invisible,
                    "ptraceable" => ProtectProc::Ptraceable,
                    "default" => ProtectProc::Default,
                    _ => return Err("expected noaccess, invisible, ptraceable or default".into()),
                }
            }
            "ProcSubset" => {
                sb.proc_subset_pid = match v {
                    "pid" => true,
                    "all" => false,
                    _ => return Err("expected all or pid".into()),
                }
            }
            "ReadWritePaths" | "ReadOnlyPaths" | "InaccessiblePaths" => {
                let list = match key {
                    "ReadWritePaths" => &mut sb.read_write,
                    "ReadOnlyPaths" => &mut sb.read_only,
                    _ => &mut sb.inaccessible,
                };
                if v.is_empty() {
                    list.clear();
                }
                list.extend(paths(v)?);
            }
            "BindPaths" | "BindReadOnlyPaths" => {
                if v.is_empty() {
                    sb.bind
                        .retain(|b| b.read_only != (key == "BindReadOnlyPaths"));
                }
                for w in split_words(v)? {
                    let (optional, w) = match w.strip_prefix('-') {
                        Some(r) => (true, r.to_string()),
                        None => (false, w),
                    };
                    let mut parts = w.splitn(3, ':');
                    let source = parts.next().unwrap_or("");
                    let dest = parts.next().filter(|d| !d.is_empty()).unwrap_or(source);
                    let recursive = match parts.next() {
                        None | Some("rbind") => true,
                        Some("norbind") => false,
                        Some(o) => return Err(format!("unknown bind option {o:?}")),
                    };
                    if !source.starts_with('/') || !dest.starts_with('/') {
                        return Err(format!("{w:?}: paths must be absolute"));
                    }
                    sb.bind.push(BindPath {
                        source: source.into(),
                        dest: dest.into(),
                        read_only: key == "BindReadOnlyPaths",
                        optional,
                        recursive,
                    });
                }
            }
            "TemporaryFileSystem" => {
                if v.is_empty() {
                    sb.tmpfs.clear();
                }
                for w in split_words(v)? {
                    let (path, opts) = w.split_once(':').unwrap_or((&w, ""));
                    if !path.starts_with('/') {
                        return Err(format!("{path:?} is not an absolute path"));
                    }
                    sb.tmpfs.push((path.into(), opts.to_string()));
                }
            }
            "CapabilityBoundingSet" => {
                if v.is_empty() {
                    sb.bounding = Some(0);
                } else {
                    let (invert, mask) = sandbox::parse_capabilities(v)?;
                    let all = sandbox::all_capabilities();
                    let keep = if invert { all & !mask } else { mask };
                    // Several lines: allow lists add, deny lists take away.
                    sb.bounding = Some(match (sb.bounding, invert) {
                        (Some(prev), false) => prev | keep,
                        (Some(prev), true) => prev & keep,
                        (None, _) => keep,
                    });
                }
            }
            "AmbientCapabilities" => {
                if v.is_empty() {
                    sb.ambient = 0;
                } else {
                    let (invert, mask) = sandbox::parse_capabilities(v)?;
                    if invert {
                        sb.ambient &= !mask;
                    } else {
                        sb.ambient |= mask;
                    }
                }
            }
            "RestrictNamespaces" => {
                let all = sandbox::all_namespaces();
                sb.namespaces = match parse_bool(v) {
                    Ok(true) => Some(0),
                    Ok(false) => None,
                    Err(_) => {
                        let (invert, rest) = match v.strip_prefix('~') {
                            Some(r) => (true, r),
                            None => (false, v),
                        };
                        let mut mask = 0;
                        for w in rest.split_whitespace() {
                            mask |= sandbox::namespace_flag(w)
                                .ok_or_else(|| format!("unknown namespace type {w:?}"))?;
                        }
                        Some(if invert { all & !mask } else { mask })
                    }
                };
            }
            "RestrictAddressFamilies" => {
                if v.is_empty() || v == "none" {
                    sb.address_families = if v == "none" {
                        Some((true, Vec::new()))
                    } else {
                        None
                    };
                } else {
                    let (deny, rest) = match v.strip_prefix('~') {
                        Some(r) => (true, r),
                        None => (false, v),
                    };
                    let mut fams = Vec::new();
                    for w in rest.split_whitespace() {
                        fams.push(
                            sandbox::address_family(w)
                                .ok_or_else(|| format!("unknown address family {w:?}"))?,
                        );
                    }
                    sb.address_families = Some(match sb.address_families.take() {
                        Some((allow, mut prev)) if allow != deny => {
                            prev.extend(fams);
                            (allow, prev)
                        }
                        Some((allow, prev)) => (
                            allow,
                            prev.into_iter().filter(|f| !fams.contains(f)).collect(),
                        ),
                        None => (!deny, fams),
                    });
                }
            }
            "RestrictRealtime" => sb.restrict_realtime = flag(v)?,
            "RestrictSUIDSGID" => sb.restrict_suid_sgid = flag(v)?,
            "LockPersonality" => sb.lock_personality = flag(v)?,
            "MemoryDenyWriteExecute" => sb.memory_deny_write_execute = flag(v)?,
            "SystemCallArchitectures" => {
                for w in v.split_whitespace() {
                    match w {
                        "native" => sb.native_only = true,
                        "x86-64" if cfg!(target_arch = "x86_64") => sb.native_only = true,
                        "arm64" if cfg!(target_arch = "aarch64") => sb.native_only = true,
                        other => {
                            return Err(format!(
                                "architecture {other:?}: doorman filters the native one only"
                            ))
                        }
                    }
                }
                if v.is_empty() {
                    sb.native_only = false;
                }
            }
            "SystemCallFilter" => sb.syscalls = merge_syscall_filter(sb.syscalls.take(), v)?,
            "SystemCallErrorNumber" => {
                sb.syscall_errno = match v {
                    "" | "kill" => None,
                    _ => Some(parse_errno(v)?),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// An errno by name (`EPERM`) or number.
fn parse_errno(v: &str) -> Result<i32, String> {
    if let Ok(n) = v.parse::<i32>() {
        return Ok(n);
    }
    const NAMES: &[(&str, i32)] = &[
        ("EPERM", libc::EPERM),
        ("EACCES", libc::EACCES),
        ("ENOSYS", libc::ENOSYS),
        ("EINVAL", libc::EINVAL),
        ("ENOTSUP", libc::ENOTSUP),
        ("EOPNOTSUPP", libc::EOPNOTSUPP),
        ("ENOENT", libc::ENOENT),
        ("EIO", libc::EIO),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == v)
        .map(|&(_, e)| e)
        .ok_or_else(|| format!("unknown error number {v:?}"))
}
