//! Users and groups: through NSS (`getpwnam`, `getgrnam`, `getgrouplist`)
//! in an ordinary build, or read straight from `/etc/passwd` and
//! `/etc/group` in a static one.
//!
//! Why files only when static: a statically linked glibc still loads NSS
//! modules (`libnss_files.so.2`, …) with `dlopen` for every name lookup.
//! In a `FROM scratch` container there are none, so every lookup would
//! fail; on a host, the modules belong to another glibc than the one built
//! in, which glibc does not support. The files are what a container has,
//! and reading them is all NSS's `files` module does. A dynamic build keeps
//! NSS, so LDAP, sssd or systemd's dynamic users keep working on hosts.
//!
//! Owns: the passwd/group file parser and the choice between the two
//! sources. Must not: be called after fork (it allocates and reads files).

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};

/// True in a build with a static C library (`-C target-feature=+crt-static`).
pub const FILES_ONLY: bool = cfg!(target_feature = "crt-static");

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";

/// A user's name, uid, primary gid, home directory and login shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PwEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// A group's name, gid and members (user names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// `/etc/passwd`: `name:password:uid:gid:gecos:home:shell`. Comments,
/// blank lines, NIS `+`/`-` lines and lines without a numeric uid and gid
/// are passed over, as glibc's files module does.
pub fn parse_passwd(text: &str) -> Vec<PwEntry> {
    text.lines()
        .filter_map(|line| {
            let f = fields(line, 4)?;
            Some(PwEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).map_or("", |h| h).to_string(),
                shell: f.get(6).map_or("", |h| h).to_string(),
            })
        })
        .collect()
}

/// `/etc/group`: `name:password:gid:member,member,...`.
pub fn parse_group(text: &str) -> Vec<GrEntry> {
    text.lines()
        .filter_map(|line| {
            let f = fields(line, 3)?;
            Some(GrEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The `:`-separated fields of a database line with at least `min` of
/// them and a name, or `None` for a line to pass over.
fn fields(line: &str, min: usize) -> Option<Vec<&str>> {
    let line = line.trim_end_matches('\r');
    if line.trim().is_empty() || line.starts_with(['#', '+', '-']) {
        return None;
    }
    let f: Vec<&str> = line.split(':').collect();
    (f.len() >= min && !f[0].is_empty()).then_some(f)
}

/// The groups `initgroups(name, gid)` would set: `gid` first, then every
/// group that lists `name` as a member, each once.
pub fn group_list(groups: &[GrEntry], name: &str, gid: u32) -> Vec<u32> {
    let mut out = vec![gid];
    for g in groups {
        if g.members.iter().any(|m| m == name) && !out.contains(&g.gid) {
            out.push(g.gid);
        }
    }
    out
}

fn read_db(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// A user by name, `Ok(None)` if there is none.
pub fn user_by_name(name: &str) -> Result<Option<PwEntry>, String> {
    if FILES_ONLY {
        let db = parse_passwd(&read_db(PASSWD)?);
        return Ok(db.into_iter().find(|u| u.name == name));
    }
    Ok(User::from_name(name).ok().flatten().map(pw_entry))
}

/// A user by uid, `Ok(None)` if there is none.
pub fn user_by_uid(uid: u32) -> Result<Option<PwEntry>, String> {
    if FILES_ONLY {
        // No passwd file at all is a container with numeric ids only.
        let text = std::fs::read_to_string(PASSWD).unwrap_or_default();
        return Ok(parse_passwd(&text).into_iter().find(|u| u.uid == uid));
    }
    Ok(User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(pw_entry))
}

/// A group's name by gid, `Ok(None)` if there is none.
pub fn group_by_gid(gid: u32) -> Result<Option<String>, String> {
    if FILES_ONLY {
        let text = std::fs::read_to_string(GROUP).unwrap_or_default();
        return Ok(parse_group(&text)
            .into_iter()
            .find(|g| g.gid == gid)
            .map(|g| g.name));
    }
    Ok(Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name))
}

/// A group's gid by name, `Ok(None)` if there is none.
pub fn group_by_name(name: &str) -> Result<Option<u32>, String> {
    if FILES_ONLY {
        let db = parse_group(&read_db(GROUP)?);
        return Ok(db.into_iter().find(|g| g.name == name).map(|g| g.gid));
    }
    Ok(Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw()))
}

/// The supplementary groups of `user` with `gid` as primary group.
pub fn groups_of(user: &str, gid: u32) -> Result<Vec<u32>, String> {
    if FILES_ONLY {
        // No group file: the primary group alone.
        let text = std::fs::read_to_string(GROUP).unwrap_or_default();
        return Ok(group_list(&parse_group(&text), user, gid));
    }
    let cname = CString::new(user).map_err(|_| "NUL in user name".to_string())?;
    let groups = nix::unistd::getgrouplist(&cname, Gid::from_raw(gid))
        .map_err(|e| format!("cannot list the groups of {user:?}: {}", e.desc()))?;
    let mut groups: Vec<u32> = groups.into_iter().map(Gid::as_raw).collect();
    groups.dedup();
    Ok(groups)
}

/// What to add to "unknown user": where a static build looked.
pub fn user_note() -> &'static str {
    if FILES_ONLY {
        " (not in /etc/passwd)"
    } else {
        ""
    }
}

/// What to add to "unknown group": where a static build looked.
pub fn group_note() -> &'static str {
    if FILES_ONLY {
        " (not in /etc/group)"
    } else {
        ""
    }
}

fn pw_entry(u: User) -> PwEntry {
    PwEntry {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir.to_string_lossy().into_owned(),
        shell: u.shell.to_string_lossy().into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "\
# a container's /etc/passwd
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:App,,,:/home/app:/sbin/nologin
+nisuser::::::
-excluded::::::

broken line
nouid:x::100::/:/bin/sh
short:x:5
dup:x:7:7::/:
dup:x:8:8::/:
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\r
";

    const GROUP_TEXT: &str = "\
root:x:0:
app:x:1000:
staff:x:50:app, other
wheel:x:10:root,app
nogid:x::app
# comment:x:1:app
users:x:100:other
";

    #[test]
    fn passwd_lines() {
        let db = parse_passwd(PASSWD_TEXT);
        let names: Vec<&str> = db.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "app", "dup", "dup", "nobody"]);
        assert_eq!(
            db[1],
            PwEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/app".into(),
                shell: "/sbin/nologin".into(),
            }
        );
        // First entry wins, as with glibc.
        assert_eq!(db.iter().find(|u| u.name == "dup").unwrap().uid, 7);
        assert_eq!(db[4].gid, 65534);
        assert_eq!(db[4].shell, "/usr/sbin/nologin");
    }

    #[test]
    fn group_lines() {
        let db = parse_group(GROUP_TEXT);
        let names: Vec<&str> = db.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["root", "app", "staff", "wheel", "users"]);
        assert_eq!(db[2].members, ["app", "other"]);
        assert!(db[0].members.is_empty());
    }

    #[test]
    fn supplementary_groups_as_initgroups() {
        let db = parse_group(GROUP_TEXT);
        assert_eq!(group_list(&db, "app", 1000), [1000, 50, 10]);
        // The primary group comes first even when it also lists the user.
        assert_eq!(group_list(&db, "app", 10), [10, 50]);
        assert_eq!(group_list(&db, "nobody", 65534), [65534]);
        assert_eq!(group_list(&db, "other", 100), [100, 50]);
    }

    #[test]
    fn this_build_finds_root() {
        // Either source knows root on any Linux this runs on.
        let root = user_by_name("root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(user_by_uid(0).unwrap().unwrap().name, "root");
        assert_eq!(group_by_name("root").unwrap(), Some(0));
        assert!(groups_of("root", 0).unwrap().contains(&0));
        assert_eq!(user_by_name("no-such-user-xyz").unwrap(), None);
    }
}
