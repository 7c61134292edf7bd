//! Raw services → [`Service`]: ports from `/etc/services`, host names,
//! users and groups (with `getgrouplist`), program paths.
//!
//! Owns: every name lookup doorman makes, all of them at load time, so that
//! nothing is looked up while serving (and never in a forked child).
//! Must not: bind or spawn anything.

use crate::fasthash::FastMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::inetd::{Family, RawBind, RawService};
use super::passwd;
use super::{
    Access, Address, Creds, Endpoint, Handler, Internal, Mode, ProxySpec, Service, SockType,
    UnixPerms,
};
use crate::error::ConfigError;

/// The listen backlog when none is configured (what systemd uses).
pub const DEFAULT_BACKLOG: i32 = 4096;

/// Resolves raw services, caching `/etc/services` across them and every
/// lookup by name (users, groups, hosts, programs): a load asks NSS once
/// per distinct name, not once per line (10,000 lines naming `root` read
/// `/etc/passwd` and `/etc/group` 10,000 times). A reload makes a new
/// resolver, so a changed `/etc/passwd` is seen.
pub struct Resolver {
    services_db: Option<Vec<(String, u16, String)>>,
    services_path: PathBuf,
    /// Users allocated for `DynamicUser=` units in this load (name, uid).
    dynamic: Vec<(String, u32)>,
    /// By `user`, or `user\0group`: one string, so that a look-up of a
    /// name already seen allocates nothing (`key` is the buffer).
    creds: FastMap<String, CredsResult>,
    key: String,
    uids: FastMap<String, Result<u32, String>>,
    gids: FastMap<String, Result<u32, (&'static str, String)>>,
    hosts: FastMap<String, Result<Vec<IpAddr>, String>>,
    /// By program, without and with the search of `PATH`.
    programs: [FastMap<String, Result<PathBuf, String>>; 2],
    /// By the path's bytes (a `Path` key hashes it component by
    /// component, a fair part of a 10,000-line reload).
    executables: FastMap<std::ffi::OsString, bool>,
    /// The last service's limits, exec settings and access lists: the
    /// next one written alike shares them (most lines of a long file are:
    /// 10,000 services then hold one copy, not 10,000 of 450 bytes).
    last_limits: Option<Arc<super::Limits>>,
    last_exec: Option<Arc<super::ExecSpec>>,
    last_access: Option<Arc<Access>>,
}

/// `v`, as the copy in `last` when equal, or as a new one that becomes
/// `last`.
fn shared<T: PartialEq>(last: &mut Option<Arc<T>>, v: T) -> Arc<T> {
    match last {
        Some(a) if **a == v => Arc::clone(a),
        _ => Arc::clone(last.insert(Arc::new(v))),
    }
}

/// Credentials, or the field at fault and why.
/// Shared: the services that name one user hold one copy of it.
type CredsResult = Result<Arc<Creds>, (&'static str, String)>;

/// `map[key]`, computed by `f` the first time; a key seen before is
/// looked up without a copy of it being made.
fn memo<K, Q, V: Clone>(map: &mut FastMap<K, V>, key: &Q, f: impl FnOnce() -> V) -> V
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: ToOwned<Owned = K> + std::hash::Hash + Eq + ?Sized,
{
    if let Some(v) = map.get(key) {
        return v.clone();
    }
    let v = f();
    map.insert(key.to_owned(), v.clone());
    v
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new()
    }
}

impl Resolver {
    pub fn new() -> Resolver {
        Resolver {
            services_db: None,
            services_path: PathBuf::from("/etc/services"),
            dynamic: Vec::new(),
            creds: FastMap::default(),
            key: String::new(),
            uids: FastMap::default(),
            gids: FastMap::default(),
            hosts: FastMap::default(),
            programs: Default::default(),
            executables: FastMap::default(),
            last_limits: None,
            last_exec: None,
            last_access: None,
        }
    }

    fn creds(&mut self, user: &str, group: Option<&str>) -> CredsResult {
        if user.contains('\0') {
            // (No such user; and not a key that could pass for another.)
            return resolve_creds(user, group).map(Arc::new);
        }
        self.key.clear();
        self.key.push_str(user);
        if let Some(g) = group {
            self.key.push('\0');
            self.key.push_str(g);
        }
        memo(&mut self.creds, self.key.as_str(), || {
            resolve_creds(user, group).map(Arc::new)
        })
    }

    fn uid(&mut self, user: &str) -> Result<u32, String> {
        memo(&mut self.uids, user, || resolve_uid(user))
    }

    fn gid(&mut self, group: &str) -> Result<u32, (&'static str, String)> {
        memo(&mut self.gids, group, || resolve_group(group))
    }

    fn host(&mut self, host: &str) -> Result<Vec<IpAddr>, String> {
        memo(&mut self.hosts, host, || resolve_host(host))
    }

    fn executable(&mut self, p: &Path) -> bool {
        memo(&mut self.executables, p.as_os_str(), || is_executable(p))
    }

    fn program(&mut self, program: &str, search_path: bool) -> Result<PathBuf, String> {
        memo(
            &mut self.programs[usize::from(search_path)],
            program,
            || resolve_program(program, search_path),
        )
    }

    /// Turns one raw service into a validated one, or lists what is wrong.
    pub fn resolve(
        &mut self,
        mut raw: RawService,
    ) -> Result<(Service, Vec<String>), Vec<ConfigError>> {
        // Taken by value: its strings and lists move into the service
        // rather than being copied and then dropped with it.
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let origin = &raw.origin;

        let mut endpoints = Vec::new();
        for (i, bind) in raw.binds.iter().enumerate() {
            let ty = raw.bind_types.get(i).copied().unwrap_or(raw.sock_type);
            match self.endpoints(&raw, bind, ty) {
                // (Most services have one bind: its list is taken as it is.)
                Ok(e) if endpoints.is_empty() => endpoints = e,
                Ok(mut e) => endpoints.append(&mut e),
                Err(m) => errors.push(ConfigError::new(origin, Some("service"), m)),
            }
        }

        let dynamic = raw.unit.as_ref().is_some_and(|u| u.dynamic_user);
        let static_user = raw
            .user
            .as_ref()
            .filter(|u| !dynamic || self.creds(u, None).is_ok());
        let creds = match static_user {
            None if dynamic => {
                let name = raw.user.clone().unwrap_or_else(|| raw.name.clone());
                match self.dynamic_user(&name) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(m) => {
                        errors.push(ConfigError::new(origin, Some("DynamicUser"), m));
                        None
                    }
                }
            }
            Some(user) => match self.creds(user, raw.group.as_deref()) {
                Ok(mut c) => {
                    // A copy of its own only for a service that changes it.
                    if !raw.init_groups {
                        let gid = c.gid;
                        Arc::make_mut(&mut c).groups = vec![gid];
                    }
                    for g in &raw.supplementary_groups {
                        match self.gid(g) {
                            Ok(gid) if !c.groups.contains(&gid) => {
                                Arc::make_mut(&mut c).groups.push(gid)
                            }
                            Ok(_) => {}
                            Err((_, m)) => errors.push(ConfigError::new(
                                origin,
                                Some("supplementary groups"),
                                m,
                            )),
                        }
                    }
                    Some(c)
                }
                Err((field, m)) => {
                    errors.push(ConfigError::new(origin, Some(field), m));
                    None
                }
            },
            None => {
                if !raw.supplementary_groups.is_empty() {
                    errors.push(ConfigError::new(
                        origin,
                        Some("supplementary groups"),
                        "supplementary groups given without a user",
                    ));
                }
                if let Some(g) = &raw.group {
                    errors.push(ConfigError::new(
                        origin,
                        Some("group"),
                        format!("group {g:?} given without a user"),
                    ));
                }
                None
            }
        };

        let internal = if raw.internal {
            // The kind: the word after `internal`, or the service's name.
            let kind = raw.argv.first().map_or(raw.name.as_str(), String::as_str);
            match Internal::from_name(kind) {
                Some(i) => Some(i),
                None => {
                    errors.push(ConfigError::new(
                        origin,
                        Some("server_program"),
                        format!("no internal service {kind:?} (known: echo, discard, chargen, daytime, time, tcpmux)"),
                    ));
                    None
                }
            }
        } else {
            None
        };
        if internal.is_some() && raw.sock_type == SockType::Stream && raw.mode == Mode::Wait {
            errors.push(ConfigError::new(
                origin,
                Some("wait"),
                "internal stream services are nowait: doorman serves each connection itself",
            ));
        }
        if internal == Some(Internal::Tcpmux) && raw.sock_type != SockType::Stream {
            errors.push(ConfigError::new(
                origin,
                Some("socket_type"),
                "tcpmux is a stream service",
            ));
        }
        if raw.tcpmux.is_some() && (raw.internal || raw.mode != Mode::Accept) {
            errors.push(ConfigError::new(
                origin,
                Some("service"),
                "a tcpmux/NAME service runs a program per connection (nowait)",
            ));
        }
        let proxy = match raw.proxy {
            None => None,
            Some(version) => {
                let inet_stream = raw.sock_type == SockType::Stream
                    && raw.binds.iter().all(|b| matches!(b, RawBind::Inet { .. }));
                if !inet_stream || raw.mode != Mode::Accept {
                    errors.push(ConfigError::new(
                        origin,
                        Some("proxy-protocol"),
                        "the PROXY protocol is read on nowait TCP services only",
                    ));
                }
                if raw.proxy_from.is_empty() {
                    errors.push(ConfigError::new(
                        origin,
                        Some("proxy-protocol"),
                        "name the proxies to trust with proxy-from= (an address, a prefix, or any)",
                    ));
                }
                Some(ProxySpec {
                    version,
                    trusted: std::mem::take(&mut raw.proxy_from),
                    optional: raw.proxy_optional,
                })
            }
        };
        let backend = raw.backend.take();
        // The spawn rate of inetd.conf's default counts handlers; a backend
        // is started once for many connections.
        let mut limits = raw.limits;
        if backend.is_some() && limits.rate == Some(super::inetd::DEFAULT_RATE) {
            limits.rate = None;
        }
        if let Some(b) = &backend {
            let inet_stream = raw.sock_type == SockType::Stream;
            if !inet_stream || raw.mode != Mode::Accept || raw.internal || raw.tcpmux.is_some() {
                errors.push(ConfigError::new(
                    origin,
                    Some("proxy-to"),
                    "a backend is proxied to from a nowait stream service running a program",
                ));
            }
            if b.notify && !b.start {
                errors.push(ConfigError::new(
                    origin,
                    Some("ready"),
                    "ready=notify needs a program doorman starts (not redirect=)",
                ));
            }
            if b.send_proxy.is_some() && !matches!(b.target, Address::Inet(_)) {
                warnings.push(format!(
                    "{origin}: {}: proxy-send= sends a PROXY header to a unix backend too",
                    raw.name
                ));
            }
        }
        if backend
            .as_ref()
            .is_some_and(|b| b.target == Address::Unix(PathBuf::new()))
        {
            errors.push(ConfigError::new(
                origin,
                Some("proxy-to"),
                "idle-stop=, start-timeout=, max-held=, proxy-send= and ready= need proxy-to=ADDR",
            ));
        }
        for (what, s) in std::iter::once(("server_program", &raw.program))
            .chain(raw.argv.iter().map(|a| ("argv", a)))
        {
            // (A scan, not a CString made and dropped: two allocations a
            // line.)
            if s.as_bytes().contains(&0) {
                errors.push(ConfigError::new(origin, Some(what), "contains a NUL byte"));
            }
        }
        let redirect = backend.as_ref().is_some_and(|b| !b.start);
        let program = if raw.internal || redirect {
            PathBuf::new()
        } else {
            match self.program(&raw.program, raw.search_path) {
                Ok(p) => p,
                Err(m) => {
                    errors.push(ConfigError::new(origin, Some("server_program"), m));
                    PathBuf::new()
                }
            }
        };
        if errors.is_empty() && !raw.internal && !redirect && !self.executable(&program) {
            let named = raw.program_origin.as_ref().unwrap_or(origin);
            warnings.push(format!(
                "{named}: {}: {} is not an executable file (yet); connections will fail until it is",
                raw.name,
                program.display()
            ));
        }
        if raw.mode == Mode::Wait
            && raw.sock_type != SockType::Dgram
            && raw.limits.max_instances.is_some_and(|m| m > 1)
        {
            warnings.push(format!(
                "{origin}: {}: a {} wait service runs one instance per socket at a time; max-child > 1 only applies to dgram",
                raw.name,
                raw.sock_type.as_str()
            ));
        }
        let mut exec = std::mem::take(&mut raw.exec);
        let mut unit = raw.unit.take();
        for (file, optional, named) in &raw.env_files {
            let named = named.as_ref().unwrap_or(origin);
            match super::read_text_bounded(Path::new(file)) {
                Ok(text) => exec.set_env.extend(parse_env_file(&text)),
                Err(e) if *optional && e.kind() == std::io::ErrorKind::NotFound => {}
                // Missing now: as under systemd, which reads it at each
                // start, every start fails until it is there (a reload
                // reads it again); the configuration still loads.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let why = format!("environment file {file}: {e}");
                    warnings.push(format!(
                        "{named}: EnvironmentFile=: {}: {why}; starts will fail until it exists",
                        raw.name
                    ));
                    unit.get_or_insert_with(Default::default).env_missing = Some(why);
                }
                Err(e) => errors.push(ConfigError::new(
                    origin,
                    Some("EnvironmentFile"),
                    format!("{file}: {e}"),
                )),
            }
        }
        let (program, argv) = if raw.expand_env {
            (
                PathBuf::from(expand_env_word(&raw.program, &exec.set_env)),
                expand_argv(&raw.argv, &exec.set_env),
            )
        } else {
            (program, std::mem::take(&mut raw.argv))
        };
        if let Some(cwd) = &exec.cwd {
            if !cwd.is_absolute() {
                errors.push(ConfigError::new(
                    origin,
                    Some("working directory"),
                    format!("{} is not an absolute path", cwd.display()),
                ));
            }
        }
        let mut access = Access {
            allow: std::mem::take(&mut raw.allow),
            deny: std::mem::take(&mut raw.deny),
            ..Access::default()
        };
        for u in &raw.allow_users {
            match self.uid(u) {
                Ok(uid) => access.uids.push(uid),
                Err(_) => errors.push(ConfigError::new(
                    origin,
                    Some("allow-uid"),
                    format!("unknown user {u:?}"),
                )),
            }
        }
        for g in &raw.allow_groups {
            match self.gid(g) {
                Ok(gid) => access.gids.push(gid),
                Err((_, m)) => errors.push(ConfigError::new(origin, Some("allow-gid"), m)),
            }
        }
        if raw.mode == Mode::Wait && !access.is_empty() {
            errors.push(ConfigError::new(
                origin,
                Some("access list"),
                "access lists need a nowait (per-connection) service: in wait mode the handler accepts its own clients",
            ));
        }
        let unix = raw.binds.iter().all(|b| matches!(b, RawBind::Unix { .. }));
        let inet = raw.binds.iter().all(|b| matches!(b, RawBind::Inet { .. }));
        if unix && !(access.allow.is_empty() && access.deny.is_empty()) {
            errors.push(ConfigError::new(
                origin,
                Some("access list"),
                "address lists (allow=, deny=) apply to IP sockets; for a unix socket use allow-uid= and allow-gid=",
            ));
        }
        if inet && !(access.uids.is_empty() && access.gids.is_empty()) {
            errors.push(ConfigError::new(
                origin,
                Some("access list"),
                "allow-uid= and allow-gid= apply to unix sockets (SO_PEERCRED); for IP sockets use allow= and deny=",
            ));
        }
        if let Some(u) = unit.as_mut() {
            self.unit_exec(
                u,
                &exec,
                dynamic && static_user.is_none(),
                &raw.name,
                origin,
                &mut warnings,
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // LISTEN_FDNAMES separates names with ':'; a default made from a
        // path must not contain one.
        let default_fd_name = match raw.mode {
            // (Not a copy per service: 10,000 of them share this one.)
            Mode::Accept => "connection".into(),
            Mode::Wait => raw
                .name
                .chars()
                .map(|c| {
                    if c == ':' || !c.is_ascii_graphic() {
                        '_'
                    } else {
                        c
                    }
                })
                .take(255)
                .collect(),
        };
        let svc = Service {
            name: std::mem::take(&mut raw.name),
            origin: raw.origin.clone(),
            endpoints,
            mode: raw.mode,
            handover: if backend.is_some() {
                super::Handover::BACKEND
            } else {
                raw.handover
            },
            handler: match internal {
                Some(i) => Handler::Internal(i),
                None => Handler::Exec { program, argv },
            },
            creds,
            limits: shared(&mut self.last_limits, limits),
            fd_name: raw.fd_name.take().map_or(default_fd_name, Into::into),
            description: raw.description.take(),
            exec: shared(&mut self.last_exec, exec.shrunk()),
            stop: raw.stop,
            access: shared(&mut self.last_access, access.shrunk()),
            refusal: std::mem::take(&mut raw.refusal),
            tcpmux: raw.tcpmux.take().map(Box::new),
            proxy: proxy.map(Box::new),
            backend: backend.map(Box::new),
            unit,
        };
        Ok((svc, warnings))
    }

    /// A unit's commands (expanded like `ExecStart=`, checked like it),
    /// and what `DynamicUser=` implies (systemd.exec(5)): a read-only
    /// system and home, a private /tmp, no new privileges, no set-id files,
    /// its directories writable.
    fn unit_exec(
        &mut self,
        u: &mut super::UnitExec,
        exec: &super::ExecSpec,
        dynamic: bool,
        name: &str,
        origin: &crate::error::Origin,
        warnings: &mut Vec<String>,
    ) {
        use super::sandbox::{ProtectHome, ProtectSystem, SandboxPath};
        for c in u.pre.iter_mut().chain(u.post.iter_mut()) {
            if c.expand {
                c.program = PathBuf::from(expand_env_word(
                    &c.program.display().to_string(),
                    &exec.set_env,
                ));
                c.argv = expand_argv(&c.argv, &exec.set_env);
            }
            if !self.executable(&c.program) {
                let named = c.origin.as_ref().unwrap_or(origin);
                warnings.push(format!(
                    "{named}: {name}: {} is not an executable file (yet); starts will fail until it is",
                    c.program.display()
                ));
            }
        }
        if dynamic {
            u.dynamic_user = true;
            let sb = &mut u.sandbox;
            sb.protect_system = ProtectSystem::Strict;
            if sb.protect_home == ProtectHome::No {
                sb.protect_home = ProtectHome::ReadOnly;
            }
            sb.private_tmp = true;
            sb.no_new_privileges = true;
            sb.restrict_suid_sgid = true;
        }
        if u.sandbox.protect_system == ProtectSystem::Strict {
            // The unit's own directories stay writable, as in systemd.
            for d in &u.dirs {
                if d.var != "CONFIGURATION_DIRECTORY" {
                    u.sandbox.read_write.push(SandboxPath {
                        path: d.path.clone(),
                        optional: true,
                    });
                }
            }
        }
    }

    /// A user for a `DynamicUser=` unit, as systemd allocates one: a uid
    /// in 61184-65519 chosen from a hash of the name, used by no user or
    /// group on the system nor by another unit of this configuration; the
    /// group has the same number; home `/`, no login shell.
    fn dynamic_user(&mut self, name: &str) -> Result<Creds, String> {
        const FIRST: u32 = 61184;
        const LAST: u32 = 65519;
        let span = LAST - FIRST + 1;
        let uid = match self.dynamic.iter().find(|(n, _)| n == name) {
            Some(&(_, uid)) => uid,
            None => {
                // FNV-1a: stable across runs, so a unit keeps its uid.
                let mut h: u32 = 0x811c_9dc5;
                for b in name.bytes() {
                    h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
                }
                let free = |uid: u32| {
                    passwd::user_by_uid(uid).ok().flatten().is_none()
                        && passwd::group_by_gid(uid).ok().flatten().is_none()
                        && !self.dynamic.iter().any(|&(_, u)| u == uid)
                };
                let uid = (0..span)
                    .map(|i| FIRST + (h.wrapping_add(i)) % span)
                    .find(|&u| free(u))
                    .ok_or("no free uid in 61184-65519 for a dynamic user")?;
                self.dynamic.push((name.to_string(), uid));
                uid
            }
        };
        Ok(Creds {
            user: name.to_string(),
            uid,
            gid: uid,
            groups: vec![uid],
            home: "/".into(),
            shell: "/usr/sbin/nologin".into(),
        })
    }

    fn endpoints(
        &mut self,
        raw: &RawService,
        bind: &RawBind,
        sock_type: SockType,
    ) -> Result<Vec<Endpoint>, String> {
        let base = Endpoint {
            sock_type,
            addr: Address::Unix(PathBuf::new()),
            v6only: false,
            optional: false,
            backlog: raw.backlog.unwrap_or(DEFAULT_BACKLOG),
            sndbuf: raw.sndbuf,
            rcvbuf: raw.rcvbuf,
            perms: UnixPerms::default(),
            opts: raw.sock_opts,
        };
        let (host, port, family) = match bind {
            RawBind::Unix {
                path,
                owner,
                group,
                mode,
            } => {
                let owner = match owner {
                    Some(u) => Some(self.uid(u)?),
                    None => None,
                };
                let group = match group {
                    Some(g) => Some(self.gid(g).map_err(|(_, m)| m)?),
                    None => None,
                };
                return Ok(vec![Endpoint {
                    addr: Address::Unix(PathBuf::from(path)),
                    perms: UnixPerms {
                        owner,
                        group,
                        mode: *mode,
                    },
                    ..base
                }]);
            }
            RawBind::Inet { host, port, family } => (host, port, *family),
        };
        let proto = if sock_type == SockType::Dgram {
            "udp"
        } else {
            "tcp"
        };
        let port = self.port(port, proto)?;
        let mk = |ip: IpAddr, v6only: bool, optional: bool| Endpoint {
            addr: Address::Inet(SocketAddr::new(ip, port)),
            v6only: raw.v6only.unwrap_or(v6only),
            optional,
            ..base.clone()
        };
        let v4any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let v6any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let Some(host) = host else {
            return Ok(match family {
                Family::Both => vec![mk(v4any, false, false), mk(v6any, true, true)],
                Family::V4 => vec![mk(v4any, false, false)],
                Family::V6 | Family::V6Only => vec![mk(v6any, true, false)],
                Family::Dual => vec![mk(v6any, false, false)],
            });
        };
        let pick = |ip: IpAddr| match (family, ip) {
            (Family::Both | Family::V4 | Family::Dual, IpAddr::V4(_)) => Some(mk(ip, false, false)),
            (Family::Both | Family::V6 | Family::V6Only, IpAddr::V6(_)) => {
                Some(mk(ip, true, false))
            }
            (Family::Dual, IpAddr::V6(_)) => Some(mk(ip, false, false)),
            (Family::V4, IpAddr::V6(_)) | (Family::V6 | Family::V6Only, IpAddr::V4(_)) => None,
        };
        let none = || format!("address {host:?} has no address of the protocol's family");
        // A literal address, nearly every line that names one: its one
        // endpoint, in a list of one (not a list of addresses first, and
        // not a list grown to four).
        if let Ok(ip) = host.parse::<IpAddr>() {
            return pick(ip).map(|e| vec![e]).ok_or_else(none);
        }
        let ips = self.host(host)?;
        let mut out = Vec::with_capacity(ips.len());
        for e in ips.into_iter().filter_map(pick) {
            if !out.contains(&e) {
                out.push(e);
            }
        }
        if out.is_empty() {
            return Err(none());
        }
        Ok(out)
    }

    /// A port number, or a name from `/etc/services` for `proto`.
    pub fn port(&mut self, name: &str, proto: &str) -> Result<u16, String> {
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            return name
                .parse::<u16>()
                .map_err(|_| format!("port {name} is out of range (0-65535)"));
        }
        if self.services_db.is_none() {
            let text = std::fs::read_to_string(&self.services_path).unwrap_or_default();
            self.services_db = Some(parse_services(&text));
        }
        let db = self.services_db.as_ref().expect("just loaded");
        db.iter()
            .find(|(n, _, p)| n == name && p == proto)
            .map(|(_, port, _)| *port)
            .ok_or_else(|| {
                format!(
                    "unknown service {name:?} (not a number, not in {} for {proto})",
                    self.services_path.display()
                )
            })
    }
}

/// systemd's `ExecStart=` expansion: `${VAR}` anywhere in a word is
/// replaced by the value; a word that is exactly `$VAR` becomes the value
/// split at white space (no word if empty). Unset variables are empty.
pub fn expand_argv(argv: &[String], env: &[(String, String)]) -> Vec<String> {
    let get = |k: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let mut out = Vec::new();
    for w in argv {
        if let Some(name) = w.strip_prefix('$') {
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                out.extend(
                    get(name)
                        .unwrap_or("")
                        .split_whitespace()
                        .map(str::to_string),
                );
                continue;
            }
        }
        out.push(expand_env_word(w, env));
    }
    out
}

/// `${VAR}` replaced anywhere in `w`, and `$$` by a literal `$`
/// (systemd.service(5), Command lines).
fn expand_env_word(w: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = w;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(end) = after.strip_prefix('{').and_then(|a| a.find('}')) {
            let name = &after[1..1 + end];
            out.push_str(
                env.iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map_or("", |(_, v)| v),
            );
            rest = &after[2 + end..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod expand_tests {
    use super::*;

    #[test]
    fn dollars_and_braces() {
        let env = vec![("A".to_string(), "x y".to_string())];
        assert_eq!(expand_env_word("$${A}-${A}-$A-$", &env), "${A}-x y-$A-$");
        assert_eq!(expand_env_word("echo $$(id -u)", &env), "echo $(id -u)");
        assert_eq!(
            expand_argv(&["$A".into(), "${B}z".into()], &env),
            vec!["x", "y", "z"]
        );
    }
}

/// An environment file (systemd `EnvironmentFile=`): `KEY=VALUE` lines,
/// `#` and `;` comments, values optionally in single or double quotes,
/// an optional leading `export `.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let v = v.trim();
        let v = ["\"", "'"]
            .iter()
            .find_map(|q| v.strip_prefix(q).and_then(|x| x.strip_suffix(q)))
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    out
}

/// `/etc/services`: `name port/proto [aliases...] [# comment]`; every alias
/// is entered as a name of its own. Malformed lines are passed over.
pub fn parse_services(text: &str) -> Vec<(String, u16, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (Some(name), Some(pp)) = (words.next(), words.next()) else {
            continue;
        };
        let Some((port, proto)) = pp.split_once('/') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        for n in std::iter::once(name).chain(words) {
            out.push((n.to_string(), port, proto.to_string()));
        }
    }
    out
}

fn resolve_host(host: &str) -> Result<Vec<IpAddr>, String> {
    let addrs = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve address {host:?}: {e}"))?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for a in addrs {
        if !ips.contains(&a.ip()) {
            ips.push(a.ip());
        }
    }
    Ok(ips)
}

/// User (name or number), optional group (name or number), and the
/// supplementary group list as `initgroups` would set it. Lookups go
/// through [`passwd`] (NSS, or the files in a static build).
fn resolve_creds(user: &str, group: Option<&str>) -> Result<Creds, (&'static str, String)> {
    let numeric = user.bytes().all(|b| b.is_ascii_digit());
    let pw = if numeric {
        let uid: u32 = user
            .parse()
            .map_err(|_| ("user", format!("uid {user} is out of range")))?;
        passwd::user_by_uid(uid)
    } else {
        passwd::user_by_name(user)
    }
    .map_err(|m| ("user", m))?;
    let Some(pw) = pw else {
        if numeric {
            // A bare uid with no passwd entry: allowed (containers), with
            // its own number as group unless one is given.
            let uid: u32 = user.parse().expect("checked digits");
            let gid = match group {
                Some(g) => resolve_group(g)?,
                None => uid,
            };
            return Ok(Creds {
                user: user.to_string(),
                uid,
                gid,
                groups: vec![gid],
                home: String::new(),
                shell: String::new(),
            });
        }
        return Err((
            "user",
            format!("unknown user {user:?}{}", passwd::user_note()),
        ));
    };
    let gid = match group {
        Some(g) => resolve_group(g)?,
        None => pw.gid,
    };
    let groups = passwd::groups_of(&pw.name, gid).map_err(|m| ("user", m))?;
    Ok(Creds {
        user: pw.name,
        uid: pw.uid,
        gid,
        groups,
        home: pw.home,
        shell: pw.shell,
    })
}

/// A user name or number, for a socket file's owner.
fn resolve_uid(user: &str) -> Result<u32, String> {
    if let Some(u) = passwd::user_by_name(user)? {
        return Ok(u.uid);
    }
    if !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()) {
        return user
            .parse()
            .map_err(|_| format!("uid {user} is out of range"));
    }
    Err(format!(
        "unknown user {user:?} for the socket's owner{}",
        passwd::user_note()
    ))
}

fn resolve_group(group: &str) -> Result<u32, (&'static str, String)> {
    if let Some(gid) = passwd::group_by_name(group).map_err(|m| ("group", m))? {
        return Ok(gid);
    }
    if !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()) {
        return group
            .parse()
            .map_err(|_| ("group", format!("gid {group} is out of range")));
    }
    Err((
        "group",
        format!("unknown group {group:?}{}", passwd::group_note()),
    ))
}

/// Absolute paths stay as they are; with `search_path`, a bare name is
/// looked up in `PATH` like `execvp` would, once, at load time.
fn resolve_program(program: &str, search_path: bool) -> Result<PathBuf, String> {
    if program.is_empty() {
        return Err("empty program".into());
    }
    if program.contains('/') {
        let p = Path::new(program);
        if p.is_absolute() || !search_path {
            return Ok(p.to_path_buf());
        }
        return std::env::current_dir()
            .map(|d| d.join(p))
            .map_err(|e| format!("cannot resolve {program:?}: {e}"));
    }
    if !search_path {
        return Err(format!("{program:?} is not an absolute path"));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Ok(if candidate.is_absolute() {
                candidate
            } else {
                std::env::current_dir()
                    .map(|d| d.join(&candidate))
                    .unwrap_or(candidate)
            });
        }
    }
    Err(format!("{program:?} not found in PATH"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_file() {
        let db =
            parse_services("# x\nftp\t\t21/tcp\nhttp 80/tcp www # WWW\nbad line\nx notaport/tcp\n");
        assert!(db.contains(&("ftp".into(), 21, "tcp".into())));
        assert!(db.contains(&("www".into(), 80, "tcp".into())));
        assert_eq!(db.len(), 3);
    }

    #[test]
    fn env_files() {
        let v = parse_env_file("# c\nA=1\nexport B=\"two words\"\n; x\nC='3'\nbad line\n=x\n");
        assert_eq!(
            v,
            [
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "3".into())
            ]
        );
    }

    #[test]
    fn exec_expansion() {
        let env = vec![
            ("A".to_string(), "x y".to_string()),
            ("B".into(), "z".into()),
        ];
        let argv: Vec<String> = ["p", "$A", "${A}-${B}", "$NONE", "a$B", "${"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            expand_argv(&argv, &env),
            ["p", "x", "y", "x y-z", "a$B", "${"]
        );
    }

    #[test]
    fn ports() {
        let mut r = Resolver::new();
        assert_eq!(r.port("9999", "tcp"), Ok(9999));
        assert!(r.port("70000", "tcp").is_err());
        r.services_db = Some(parse_services("echo 7/tcp\n"));
        assert_eq!(r.port("echo", "tcp"), Ok(7));
        assert!(r.port("nosuch", "tcp").unwrap_err().contains("nosuch"));
    }

    #[test]
    fn creds_root() {
        let c = resolve_creds("root", None).unwrap();
        assert_eq!((c.uid, c.gid), (0, 0));
        assert!(c.groups.contains(&0));
        assert!(resolve_creds("no-such-user-xyz", None).is_err());
        assert!(resolve_creds("root", Some("no-such-group-xyz")).is_err());
    }
}
