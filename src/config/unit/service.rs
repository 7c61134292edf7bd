//! The `[Service]` section: the command, credentials, environment,
//! hand-over and process settings.

use super::*;

impl Builder {
    pub(super) fn service(&mut self, all: &[Assignment]) {
        const KNOWN: &[&str] = &[
            "ExecStart",
            "User",
            "Group",
            "SupplementaryGroups",
            "Environment",
            "EnvironmentFile",
            "PassEnvironment",
            "UnsetEnvironment",
            "WorkingDirectory",
            "UMask",
            "Nice",
            "StandardInput",
            "StandardOutput",
            "StandardError",
            "KillMode",
            "KillSignal",
            "TimeoutStopSec",
            "RuntimeMaxSec",
            "X-Doorman-Options",
            "Type",
            "LimitCPU",
            "LimitFSIZE",
            "LimitDATA",
            "LimitSTACK",
            "LimitCORE",
            "LimitRSS",
            "LimitNOFILE",
            "LimitAS",
            "LimitNPROC",
            "LimitMEMLOCK",
            "LimitLOCKS",
            "LimitSIGPENDING",
            "LimitMSGQUEUE",
            "LimitNICE",
            "LimitRTPRIO",
            "LimitRTTIME",
        ];
        let mut exec: Vec<&Assignment> = Vec::new();
        let (mut stdin, mut stdout, mut stderr) = (None::<String>, None::<String>, None::<String>);
        let mut env: Vec<(String, String)> = Vec::new();
        for a in all.iter() {
            if !self.take(a, "Service", KNOWN) {
                continue;
            }
            let v = a.value.as_str();
            let r: Result<(), String> = (|| {
                match a.key.as_str() {
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
                            self.raw.env_files.push((f.to_string(), optional));
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
                        "simple" | "exec" | "oneshot" => {}
                        "notify" | "notify-reload" | "forking" | "dbus" | "idle" => self.warnings.push(format!(
                            "{}: Type={v} is run as Type=simple (doorman does not wait for readiness)",
                            a.origin
                        )),
                        _ => return Err(format!("unknown service type {v:?}")),
                    },
                    k => {
                        let res = rlimit_resource(k).expect("listed in KNOWN");
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
                    "{v:?} is not supported (socket, null, inherit, journal, syslog, kmsg, tty)"
                ),
            ));
            StdFd::Null
        };
        let stdin_fd = match stdin.as_deref() {
            None | Some("null") => StdFd::Null,
            Some("socket") => StdFd::Socket,
            Some(v) => bad("StandardInput", v),
        };
        let out = |v: Option<&str>, inherit: StdFd, default: StdFd| -> Result<StdFd, String> {
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
        let stdout_fd = match out(stdout.as_deref(), stdin_fd, stdout_default) {
            Ok(f) => f,
            Err(v) => bad("StandardOutput", &v),
        };
        let stderr_fd = match out(stderr.as_deref(), stdout_fd, stdout_fd) {
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
    }

    /// `ExecStart=[-@:+!]path args...` with quoting and specifiers.
    fn exec_start(&mut self, a: &Assignment) -> Result<(), String> {
        let mut v = a.value.as_str();
        let mut at = false;
        let mut no_expand = false;
        while let Some(c) = v.chars().next() {
            match c {
                '-' => v = &v[1..],
                ':' => {
                    no_expand = true;
                    v = &v[1..];
                }
                '@' => {
                    at = true;
                    v = &v[1..];
                }
                '+' | '!' => {
                    return Err(format!(
                        "the {c:?} prefix (privileged execution) is not supported"
                    ))
                }
                _ => break,
            }
        }
        let words = split_words(v)?;
        let words: Vec<String> = words
            .iter()
            .map(|w| self.specifiers(w))
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
        self.raw.program = program.clone();
        self.raw.argv = argv;
        // `${VAR}`/`$VAR` are expanded by resolve, once EnvironmentFile=
        // has been read.
        self.raw.expand_env = !no_expand;
        Ok(())
    }

    /// `%i %n %N %p %%` (and `%I`, `%P` unescaped the same way here).
    fn specifiers(&self, w: &str) -> Result<String, String> {
        let template = self.service_file.contains("@.");
        let prefix = self
            .service_file
            .split(['@', '.'])
            .next()
            .unwrap_or("")
            .to_string();
        let mut out = String::new();
        let mut chars = w.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some('i' | 'I') if template => out.push_str(INSTANCE_MARK),
                Some('i' | 'I') => {}
                Some('n') if template => out.push_str(&format!("{prefix}@{INSTANCE_MARK}.service")),
                Some('n') => out.push_str(&self.service_file),
                Some('N') if template => out.push_str(&format!("{prefix}@{INSTANCE_MARK}")),
                Some('N') => out.push_str(self.service_file.trim_end_matches(".service")),
                Some('p' | 'P') => out.push_str(&prefix),
                Some(x) => {
                    return Err(format!(
                        "specifier %{x} is not supported (known: %i %I %n %N %p %P %%)"
                    ))
                }
                None => return Err("a lone % at the end (write %% for a percent sign)".into()),
            }
        }
        Ok(out)
    }
}
