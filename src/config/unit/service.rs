//! The `[Service]` section: the command, credentials, environment,
//! hand-over and process settings.

use super::*;

impl Builder {
    pub(super) fn service(&mut self, all: &[Assignment]) {
        let mut exec: Vec<&Assignment> = Vec::new();
        let (mut stdin, mut stdout, mut stderr) = (None::<String>, None::<String>, None::<String>);
        let mut env: Vec<(String, String)> = Vec::new();
        // (variable, base, names) and (variable, mode) of the directories.
        let mut dirs: Vec<(&'static str, &'static str, Vec<String>)> = Vec::new();
        let mut dir_modes: Vec<(&'static str, u32)> = Vec::new();
        let mut preserve_runtime = false;
        // Every unit carries its defaults (IgnoreSIGPIPE=yes among them).
        let _ = self.unit();
        for a in all.iter() {
            if !self.take(a, "Service") {
                continue;
            }
            let v = a.value.as_str();
            let r: Result<(), String> = (|| {
                if self.sandbox(&a.key, v)? {
                    return Ok(());
                }
                if let Some((var, base)) = directory_kind(&a.key) {
                    let names: Vec<String> = split_words(v)?
                        .into_iter()
                        .map(|n| n.split(':').next().unwrap_or("").to_string())
                        .collect();
                    for n in &names {
                        if n.is_empty()
                            || n.starts_with('/')
                            || n.split('/').any(|c| c == ".." || c == ".")
                        {
                            return Err(format!("{n:?} must be a relative path below {base}"));
                        }
                    }
                    match dirs.iter_mut().find(|(vv, _, _)| *vv == var) {
                        Some(d) if v.is_empty() => d.2.clear(),
                        Some(d) => d.2.extend(names),
                        None => dirs.push((var, base, names)),
                    }
                    return Ok(());
                }
                if let Some(var) = a
                    .key
                    .strip_suffix("Mode")
                    .and_then(directory_kind)
                    .map(|(v, _)| v)
                {
                    dir_modes.retain(|(vv, _)| *vv != var);
                    dir_modes.push((var, parse_mode(v)?));
                    return Ok(());
                }
                match a.key.as_str() {
                    "ExecStartPre" | "ExecStartPost" => {
                        let post = a.key == "ExecStartPost";
                        if v.is_empty() {
                            let u = self.unit();
                            if post { u.post.clear() } else { u.pre.clear() }
                        } else {
                            let mut c = self.command(v)?;
                            c.origin = Some(a.origin.clone());
                            let u = self.unit();
                            if post { u.post.push(c) } else { u.pre.push(c) }
                        }
                    }
                    "NotifyAccess" => {
                        use crate::config::NotifyAccess;
                        self.unit().notify_access = match v {
                            "none" => NotifyAccess::None,
                            "main" => NotifyAccess::Main,
                            "exec" => NotifyAccess::Exec,
                            "all" => NotifyAccess::All,
                            _ => return Err("expected none, main, exec or all".into()),
                        }
                    }
                    "DynamicUser" => self.unit().dynamic_user = parse_bool(v)?,
                    "OOMScoreAdjust" => {
                        let n: i32 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
                        if !(-1000..=1000).contains(&n) {
                            return Err("expected -1000 to 1000".into());
                        }
                        self.unit().oom_score_adjust = Some(n);
                    }
                    "IgnoreSIGPIPE" => self.unit().ignore_sigpipe = parse_bool(v)?,
                    "NonBlocking" => self.unit().nonblocking = parse_bool(v)?,
                    "SuccessExitStatus" => {
                        let u = self.unit();
                        if v.is_empty() {
                            u.success_status.clear();
                            u.success_signals.clear();
                        }
                        for w in v.split_whitespace() {
                            match w.parse::<i32>() {
                                Ok(n) if (0..=255).contains(&n) => u.success_status.push(n),
                                Ok(_) => return Err(format!("{w}: exit statuses are 0 to 255")),
                                Err(_) => u.success_signals.push(parse_signal(w)?),
                            }
                        }
                    }
                    "RuntimeDirectoryPreserve" => {
                        preserve_runtime = match v {
                            "restart" => false,
                            _ => parse_bool(v)?,
                        }
                    }
                    "ExecStart" => {
                        if v.is_empty() {
                            exec.clear();
                        } else {
                            exec.push(a);
                        }
                    }
                    "User" => self.raw.user = Some(v.to_string()).filter(|s| !s.is_empty()),
                    "Group" => self.raw.group = Some(v.to_string()).filter(|s| !s.is_empty()),
                    "SupplementaryGroups" => {
                        if v.is_empty() {
                            self.raw.supplementary_groups.clear();
                        }
                        self.raw.supplementary_groups.extend(v.split_whitespace().map(str::to_string));
                    }
                    "Environment" => {
                        if v.is_empty() {
                            env.clear();
                        }
                        for word in split_words(v)? {
                            let (k, val) = word.split_once('=').ok_or_else(|| format!("{word:?} is not VAR=value"))?;
                            env.retain(|(ek, _)| ek != k);
                            env.push((k.to_string(), val.to_string()));
                        }
                    }
                    "PassEnvironment" => {
                        if v.is_empty() {
                            self.raw.exec.pass_env.clear();
                        }
                        for name in split_words(v)? {
                            if !self.raw.exec.pass_env.contains(&name) {
                                self.raw.exec.pass_env.push(name);
                            }
                        }
                    }
                    "UnsetEnvironment" => {
                        if v.is_empty() {
                            self.raw.exec.unset_env.clear();
                        }
                        self.raw.exec.unset_env.extend(split_words(v)?);
                    }
                    "EnvironmentFile" => {
                        if v.is_empty() {
                            self.raw.env_files.clear();
                        } else {
                            let (optional, f) = match v.strip_prefix('-') {
                                Some(f) => (true, f),
                                None => (false, v),
                            };
                            self.raw.env_files.push((f.to_string(), optional, Some(a.origin.clone())));
                        }
                    }
                    "WorkingDirectory" => {
                        let (optional, d) = match v.strip_prefix('-') {
                            Some(d) => (true, d),
                            None => (false, v),
                        };
                        // "-": a missing directory is not an error (the
                        // handler then runs where doorman does).
                        self.raw.exec.cwd = (!d.is_empty() && d != "~" && (!optional || Path::new(d).is_dir()))
                            .then(|| PathBuf::from(d));
                        if d == "~" {
                            return Err("~ (the user's home) is not supported; give the path".into());
                        }
                    }
                    "UMask" => self.raw.exec.umask = Some(parse_mode(v)?),
                    "Nice" => {
                        let n: i32 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
                        if !(-20..=19).contains(&n) {
                            return Err("expected -20 to 19".into());
                        }
                        self.raw.exec.nice = Some(n);
                    }
                    "StandardInput" => stdin = Some(v.to_string()),
                    "StandardOutput" => stdout = Some(v.to_string()),
                    "StandardError" => stderr = Some(v.to_string()),
                    "KillMode" => {
                        self.raw.stop.group = match v {
                            "control-group" | "mixed" => Some(true),
                            "process" => Some(false),
                            "none" => None,
                            _ => return Err("expected control-group, mixed, process or none".into()),
                        }
                    }
                    "KillSignal" => self.raw.stop.signal = parse_signal(v)?,
                    "TimeoutStopSec" => self.raw.stop.timeout = parse_timespan(v)?,
                    "RuntimeMaxSec" => {
                        self.raw.exec.runtime_max = parse_timespan(v)?.filter(|d| !d.is_zero())
                    }
                    "X-Doorman-Options" => options::apply_words(&mut self.raw, v.split_whitespace())?,
                    "Type" => match v {
                        "simple" | "exec" | "oneshot" | "idle" | "forking" => {
                            if let Some(u) = self.raw.unit.as_mut() {
                                u.notify = false;
                            }
                        }
                        "notify" | "notify-reload" => self.unit().notify = true,
                        "dbus" => self.warnings.push(format!(
                            "{}: Type=dbus is run as Type=simple (doorman does not watch D-Bus names)",
                            a.origin
                        )),
                        _ => return Err(format!("unknown service type {v:?}")),
                    },
                    k => {
                        let res = rlimit_resource(k).ok_or_else(|| format!("{k}= is not a resource limit"))?;
                        self.raw.exec.rlimits.retain(|r| r.resource != res);
                        let (soft, hard) = parse_rlimit(v, k)?;
                        self.raw.exec.rlimits.push(Rlimit { resource: res, soft, hard });
                    }
                }
                Ok(())
            })();
            if let Err(m) = r {
                self.errors.push(err(a, m));
            }
        }
        self.raw.exec.set_env = env;
        for (var, base, names) in dirs {
            let mode = dir_modes
                .iter()
                .find(|(v, _)| *v == var)
                .map_or(0o755, |&(_, m)| m);
            let remove = var == "RUNTIME_DIRECTORY" && !preserve_runtime;
            let u = self.unit();
            for n in names {
                u.dirs.push(crate::config::ServiceDir {
                    var,
                    path: Path::new(base).join(n),
                    mode,
                    remove,
                });
            }
        }
        // $RUNTIME_DIRECTORY & co: the directories, ':'-separated.
        if let Some(u) = self.raw.unit.as_deref() {
            let mut vars: Vec<(String, String)> = Vec::new();
            for d in &u.dirs {
                let p = d.path.display().to_string();
                match vars.iter_mut().find(|(k, _)| k == d.var) {
                    Some((_, v)) => {
                        v.push(':');
                        v.push_str(&p);
                    }
                    None => vars.push((d.var.to_string(), p)),
                }
            }
            self.raw.exec.set_env.extend(vars);
        }
        self.handover(stdin, stdout, stderr);
        match exec.as_slice() {
            [] => self.errors.push(ConfigError::new(
                &Origin::new(self.raw.origin.file.with_file_name(&self.service_file), 0),
                Some("ExecStart"),
                "no ExecStart= in the service",
            )),
            [a] => {
                if let Err(m) = self.exec_start(a) {
                    self.errors.push(err(a, m));
                }
            }
            [.., a] => self.errors.push(err(
                a,
                "more than one ExecStart= (only Type=oneshot may, and doorman runs one command)",
            )),
        }
    }

    /// `StandardInput=socket` gives the socket on fd 0 (and, by systemd's
    /// defaults, 1 and 2) without `LISTEN_FDS`; otherwise the socket goes to
    /// fd 3 with `LISTEN_FDS`, fds 0 on /dev/null and 1/2 to the log.
    fn handover(&mut self, stdin: Option<String>, stdout: Option<String>, stderr: Option<String>) {
        let origin = self.raw.origin.clone();
        let mut bad = |what: &str, v: &str| {
            self.errors.push(ConfigError::new(
                &origin,
                Some(what),
                format!(
                    "{v:?} is not supported (socket, null, inherit, journal, syslog, kmsg, tty, file:PATH, append:PATH, truncate:PATH)"
                ),
            ));
            StdFd::Null
        };
        let stdin_fd = match stdin.as_deref() {
            None | Some("null") => StdFd::Null,
            Some("socket") => StdFd::Socket,
            Some(v) => bad("StandardInput", v),
        };
        // file:, append:, truncate: paths, in the order they appear.
        let mut files: Vec<(PathBuf, crate::config::FileMode)> = Vec::new();
        let mut file_fd = |v: &str| -> Option<StdFd> {
            use crate::config::FileMode;
            let (mode, path) = if let Some(p) = v.strip_prefix("file:") {
                (FileMode::Write, p)
            } else if let Some(p) = v.strip_prefix("append:") {
                (FileMode::Append, p)
            } else if let Some(p) = v.strip_prefix("truncate:") {
                (FileMode::Truncate, p)
            } else {
                return None;
            };
            if !path.starts_with('/') {
                return None;
            }
            let i = match files
                .iter()
                .position(|(p, m)| p == Path::new(path) && *m == mode)
            {
                Some(i) => i,
                None => {
                    files.push((PathBuf::from(path), mode));
                    files.len() - 1
                }
            };
            Some(StdFd::File(i as u8))
        };
        let stdout_file = stdout.as_deref().and_then(&mut file_fd);
        let stderr_file = stderr.as_deref().and_then(&mut file_fd);
        let out = |v: Option<&str>,
                   file: Option<StdFd>,
                   inherit: StdFd,
                   default: StdFd|
         -> Result<StdFd, String> {
            if let Some(f) = file {
                return Ok(f);
            }
            Ok(match v {
                None => default,
                Some("inherit") => inherit,
                Some("null") => StdFd::Null,
                Some("socket") => StdFd::Socket,
                Some(
                    "journal" | "syslog" | "kmsg" | "journal+console" | "syslog+console"
                    | "kmsg+console" | "tty",
                ) => StdFd::Log,
                Some(v) => return Err(v.to_string()),
            })
        };
        // systemd: StandardOutput= defaults to inherit when the input is a
        // socket (else to the journal); StandardError= to inherit, that is
        // whatever stdout is.
        let stdout_default = if stdin_fd == StdFd::Socket {
            StdFd::Socket
        } else {
            StdFd::Log
        };
        let stdout_fd = match out(stdout.as_deref(), stdout_file, stdin_fd, stdout_default) {
            Ok(f) => f,
            Err(v) => bad("StandardOutput", &v),
        };
        let stderr_fd = match out(stderr.as_deref(), stderr_file, stdout_fd, stdout_fd) {
            Ok(f) => f,
            Err(v) => bad("StandardError", &v),
        };
        let h = Handover {
            stdin: stdin_fd,
            stdout: stdout_fd,
            stderr: stderr_fd,
            listen_fds: stdin_fd != StdFd::Socket,
        };
        if !h.listen_fds && self.raw.binds.len() > 1 {
            self.errors.push(ConfigError::new(
                &origin,
                Some("StandardInput"),
                "StandardInput=socket needs a socket unit with exactly one Listen*=",
            ));
        }
        self.raw.handover = h;
        if !files.is_empty() {
            self.unit().files = files;
        }
    }

    /// A command line `[-@:+!]path args...` with quoting and specifiers
    /// (`ExecStart=`, `ExecStartPre=`, `ExecStartPost=`).
    pub(super) fn command(&self, value: &str) -> Result<crate::config::Command, String> {
        use crate::config::Privileges;
        let mut v = value;
        let mut at = false;
        let mut no_expand = false;
        let mut ignore_failure = false;
        let mut privileges = Privileges::Normal;
        while let Some(c) = v.chars().next() {
            match c {
                '-' => ignore_failure = true,
                ':' => no_expand = true,
                '@' => at = true,
                '+' => privileges = Privileges::Full,
                '!' => {
                    if privileges == Privileges::Normal {
                        privileges = Privileges::KeepIds;
                    }
                }
                '|' => return Err("the | prefix (a shell command line) is not supported".into()),
                _ => break,
            }
            v = &v[1..];
        }
        let words = split_words(v)?;
        let words: Vec<String> = words
            .iter()
            .map(|w| self.specifiers(w, true))
            .collect::<Result<_, _>>()?;
        let Some(program) = words.first() else {
            return Err("empty command".into());
        };
        if !program.starts_with('/') {
            return Err(format!("{program:?} is not an absolute path"));
        }
        let argv: Vec<String> = if at {
            if words.len() < 2 {
                return Err("the @ prefix needs argv[0] after the program".into());
            }
            words[1..].to_vec()
        } else {
            words.clone()
        };
        Ok(crate::config::Command {
            program: program.into(),
            argv,
            ignore_failure,
            privileges,
            expand: !no_expand,
            origin: None,
        })
    }

    /// `ExecStart=`: the main program.
    fn exec_start(&mut self, a: &Assignment) -> Result<(), String> {
        let c = self.command(&a.value)?;
        self.raw.program_origin = Some(a.origin.clone());
        self.raw.program = c.program.display().to_string();
        self.raw.argv = c.argv;
        // `${VAR}`/`$VAR` are expanded by resolve, once EnvironmentFile=
        // has been read.
        self.raw.expand_env = c.expand;
        if c.privileges != crate::config::Privileges::Normal || c.ignore_failure {
            let u = self.unit();
            u.privileges = c.privileges;
            u.ignore_failure = c.ignore_failure;
        }
        Ok(())
    }
}

/// The variable and base directory of `RuntimeDirectory=` & co.
fn directory_kind(key: &str) -> Option<(&'static str, &'static str)> {
    Some(match key {
        "RuntimeDirectory" => ("RUNTIME_DIRECTORY", "/run"),
        "StateDirectory" => ("STATE_DIRECTORY", "/var/lib"),
        "CacheDirectory" => ("CACHE_DIRECTORY", "/var/cache"),
        "LogsDirectory" => ("LOGS_DIRECTORY", "/var/log"),
        "ConfigurationDirectory" => ("CONFIGURATION_DIRECTORY", "/etc"),
        _ => return None,
    })
}
