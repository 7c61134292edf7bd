//! `Condition*=` and `Assert*=`: evaluated when the configuration is
//! loaded (at start-up and on every reload), as systemd evaluates them
//! when it starts a unit. A unit whose conditions do not hold is not
//! served (a warning says which one); one doorman cannot evaluate here is
//! taken as met, with a warning.
//!
//! systemd.unit(5): every condition must hold, except that of those
//! prefixed `|` (triggering) one is enough; `!` negates; an empty
//! assignment resets the list.

use std::path::Path;

use super::ini::Assignment;

/// The outcome for a unit: `Ok(())` to serve it, `Err(why)` not to.
pub fn check(all: &[&Assignment], warnings: &mut Vec<String>) -> Result<(), String> {
    let mut list: Vec<&Assignment> = Vec::new();
    for a in all {
        if a.value.trim().is_empty() {
            list.retain(|x| x.key != a.key);
        } else {
            list.push(a);
        }
    }
    let mut any_trigger = false;
    let mut trigger_met = false;
    let mut failed: Option<String> = None;
    for a in list {
        let assert = a.key.starts_with("Assert");
        let kind = a
            .key
            .strip_prefix("Condition")
            .or_else(|| a.key.strip_prefix("Assert"))
            .unwrap_or(&a.key);
        let mut v = a.value.trim();
        let trigger = v.starts_with('|');
        if trigger {
            v = v[1..].trim_start();
        }
        let negate = v.starts_with('!');
        if negate {
            v = v[1..].trim_start();
        }
        let held = match evaluate(kind, v) {
            Some(b) => b != negate,
            None => {
                warnings.push(format!(
                    "{}: {}= cannot be evaluated by doorman; taken as met",
                    a.origin, a.key
                ));
                true
            }
        };
        if trigger && !assert {
            any_trigger = true;
            trigger_met |= held;
        } else if !held && failed.is_none() {
            failed = Some(format!(
                "{}: {}={} {}: the unit is not served",
                a.origin,
                a.key,
                a.value.trim(),
                if assert { "failed" } else { "is not met" }
            ));
        }
    }
    if let Some(f) = failed {
        return Err(f);
    }
    if any_trigger && !trigger_met {
        return Err(format!(
            "{}: none of the unit's triggering (|) conditions is met: the unit is not served",
            all.first().map_or(String::new(), |a| a.origin.to_string())
        ));
    }
    Ok(())
}

/// One condition's truth, `None` if doorman cannot tell.
fn evaluate(kind: &str, v: &str) -> Option<bool> {
    let p = Path::new(v);
    let meta = || std::fs::metadata(p).ok();
    Some(match kind {
        "PathExists" => std::fs::symlink_metadata(p).is_ok() && p.exists(),
        "PathExistsGlob" => glob_matches(v),
        "PathIsDirectory" => meta().is_some_and(|m| m.is_dir()),
        "PathIsSymbolicLink" => {
            std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
        }
        "PathIsMountPoint" => is_mount_point(p),
        "PathIsReadWrite" => {
            let Ok(c) = std::ffi::CString::new(v) else {
                return Some(false);
            };
            // SAFETY: statvfs on a NUL-terminated path into a zeroed struct.
            unsafe {
                let mut s: libc::statvfs = std::mem::zeroed();
                libc::statvfs(c.as_ptr(), &mut s) == 0 && s.f_flag & libc::ST_RDONLY == 0
            }
        }
        "DirectoryNotEmpty" => std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some()),
        "FileNotEmpty" => meta().is_some_and(|m| m.is_file() && m.len() > 0),
        "FileIsExecutable" => {
            use std::os::unix::fs::PermissionsExt;
            meta().is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        "User" => user_matches(v),
        "Group" => group_matches(v),
        "Host" => host_matches(v),
        "KernelCommandLine" => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
            cmdline.split_whitespace().any(|w| {
                if v.contains('=') {
                    w == v
                } else {
                    w == v || w.split('=').next() == Some(v)
                }
            })
        }
        "Architecture" => {
            let here = match std::env::consts::ARCH {
                "x86_64" => "x86-64",
                "aarch64" => "arm64",
                "x86" => "x86",
                "arm" => "arm",
                other => other,
            };
            v == "native" || v == here
        }
        "Virtualization" => virtualization_matches(v)?,
        "Environment" => {
            let (k, val) = match v.split_once('=') {
                Some((k, val)) => (k, Some(val)),
                None => (v, None),
            };
            match (std::env::var_os(k), val) {
                (Some(x), Some(val)) => x == val,
                (Some(_), None) => true,
                (None, _) => false,
            }
        }
        "Capability" => {
            let cap = crate::config::sandbox::capability(v)?;
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
            let mask = u64::from_str_radix(bnd.trim(), 16).ok()?;
            mask & (1 << cap) != 0
        }
        _ => return None,
    })
}

/// `glob(3)` with braces, as systemd matches `ConditionPathExistsGlob=`.
fn glob_matches(pattern: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(pattern) else {
        return false;
    };
    const GLOB_BRACE: libc::c_int = 1 << 10;
    // SAFETY: glob on a NUL-terminated pattern into a zeroed glob_t, which
    // globfree releases.
    unsafe {
        let mut g: libc::glob_t = std::mem::zeroed();
        let r = libc::glob(c.as_ptr(), GLOB_BRACE | libc::GLOB_NOSORT, None, &mut g);
        let found = r == 0 && g.gl_pathc > 0;
        libc::globfree(&mut g);
        found
    }
}

/// Whether `p` is where a file system is mounted (its device differs from
/// its parent's, or it is listed in `/proc/self/mountinfo`).
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(p) else {
        return false;
    };
    if let Some(parent) = p.parent() {
        if let Ok(pm) = std::fs::metadata(parent) {
            if pm.dev() != m.dev() || pm.ino() == m.ino() {
                return true;
            }
        }
    }
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == canon.to_str())
}

fn user_matches(v: &str) -> bool {
    let uid = nix::unistd::geteuid().as_raw();
    if v == "@system" {
        return uid < 1000;
    }
    if let Ok(n) = v.parse::<u32>() {
        return n == uid;
    }
    crate::config::passwd::user_by_name(v)
        .ok()
        .flatten()
        .is_some_and(|u| u.uid == uid)
}

fn group_matches(v: &str) -> bool {
    let gid = nix::unistd::getegid().as_raw();
    let groups: Vec<u32> = nix::unistd::getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    let want = match v.parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => crate::config::passwd::group_by_name(v).ok().flatten(),
    };
    want.is_some_and(|w| w == gid || groups.contains(&w))
}

fn host_matches(v: &str) -> bool {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    host.eq_ignore_ascii_case(v) || machine.trim().eq_ignore_ascii_case(v)
}

/// What `systemd-detect-virt` would say, as far as files tell: the
/// container manager, and the hypervisor.
fn detect_virt() -> (Option<String>, Option<String>) {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut container = read("/run/systemd/container").map(|s| s.trim().to_string());
    if container.is_none() {
        if let Ok(env) = std::fs::read("/proc/1/environ") {
            container = env
                .split(|&b| b == 0)
                .find_map(|kv| kv.strip_prefix(b"container="))
                .map(|v| String::from_utf8_lossy(v).into_owned());
        }
    }
    if container.is_none() && Path::new("/.dockerenv").exists() {
        container = Some("docker".into());
    }
    if container.is_none() && Path::new("/run/.containerenv").exists() {
        container = Some("podman".into());
    }
    if container.is_none()
        && read("/proc/sys/kernel/osrelease")
            .is_some_and(|r| r.contains("Microsoft") || r.contains("WSL"))
    {
        container = Some("wsl".into());
    }
    let vendor = read("/sys/class/dmi/id/sys_vendor").unwrap_or_default();
    let product = read("/sys/class/dmi/id/product_name").unwrap_or_default();
    let hyper = read("/proc/cpuinfo").is_some_and(|c| {
        c.lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
    });
    let vm = match () {
        _ if vendor.contains("QEMU") || product.contains("KVM") => Some("kvm"),
        _ if vendor.contains("VMware") => Some("vmware"),
        _ if vendor.contains("innotek") || product.contains("VirtualBox") => Some("oracle"),
        _ if vendor.contains("Xen") => Some("xen"),
        _ if vendor.contains("Microsoft") => Some("microsoft"),
        _ if vendor.contains("Amazon") => Some("amazon"),
        _ if vendor.contains("Google") => Some("google"),
        _ if Path::new("/proc/xen").exists() => Some("xen"),
        _ if hyper => Some("vm-other"),
        _ => None,
    };
    (container, vm.map(str::to_string))
}

fn virtualization_matches(v: &str) -> Option<bool> {
    let (container, vm) = detect_virt();
    Some(match v {
        "container" => container.is_some(),
        "vm" => vm.is_some() && container.is_none(),
        "private-users" => std::fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| m.split_whitespace().nth(2) != Some("4294967295")),
        _ => match super::values::parse_bool(v) {
            Ok(b) => (container.is_some() || vm.is_some()) == b,
            Err(_) => container.as_deref() == Some(v) || vm.as_deref() == Some(v),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Origin;

    fn a(key: &str, value: &str) -> Assignment {
        Assignment {
            section: "Unit".into(),
            key: key.into(),
            value: value.into(),
            origin: Origin::new(Path::new("u.socket"), 3),
        }
    }

    #[test]
    fn conditions_as_systemd_combines_them() {
        let mut w = Vec::new();
        let yes = a("ConditionPathExists", "/");
        let no = a("ConditionPathExists", "/no/such/path");
        let not_no = a("ConditionPathExists", "!/no/such/path");
        assert!(check(&[&yes, &not_no], &mut w).is_ok());
        let e = check(&[&yes, &no], &mut w).unwrap_err();
        assert!(
            e.contains("u.socket:3: ConditionPathExists=/no/such/path is not met"),
            "{e}"
        );
        // Triggering conditions: one is enough.
        let t1 = a("ConditionPathExists", "|/no/such/path");
        let t2 = a("ConditionPathIsDirectory", "|/");
        assert!(check(&[&t1, &t2], &mut w).is_ok());
        assert!(check(&[&t1], &mut w).is_err());
        // An empty assignment resets that condition.
        let reset = a("ConditionPathExists", "");
        assert!(check(&[&no, &reset], &mut w).is_ok());
        // Globs with braces, as Debian's clamav-daemon units use them.
        let g = a("ConditionPathExistsGlob", "/proc/{self,nonexistent}/stat?");
        assert!(check(&[&g], &mut w).is_ok());
        let g = a(
            "ConditionPathExistsGlob",
            "/var/lib/no-clamav/main.{c[vl]d,inc}",
        );
        assert!(check(&[&g], &mut w).is_err());
        // What cannot be evaluated is taken as met, with a warning.
        let u = a("ConditionSecurity", "selinux");
        assert!(check(&[&u], &mut w).is_ok());
        assert!(w
            .iter()
            .any(|l| l.contains("ConditionSecurity= cannot be evaluated")));
        let f = a("AssertFileNotEmpty", "/no/such/file");
        assert!(check(&[&f], &mut w).unwrap_err().contains("failed"));
    }
}
