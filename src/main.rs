//! doorman: an inetd-style super-server. `main` parses the command line,
//! calls [`run`], and is the only place that decides the exit status.

mod cli;
mod config;
mod error;
mod events;
mod executor;
mod fasthash;
mod footprint;
mod internal;
mod listen;
mod metrics;
mod notify;
mod policy;
mod proxy;
mod reap;
mod server;
mod signals;
mod spawn;

use std::io::Write;
use std::process::ExitCode;

use error::{Error, EXIT_OK};

fn main() -> ExitCode {
    events::started();
    // A unit's executor (see executor.rs): exec'd by doorman's own child.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if argv0 == executor::ARG0 {
        executor::main(std::env::args_os().collect());
    }
    let args = match cli::Args::from_env() {
        Ok(a) => a,
        Err(code) => return ExitCode::from(code),
    };
    if args.version {
        println!("doorman {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::from(EXIT_OK);
    }
    if args.reload {
        return ExitCode::from(match send_reload(&args) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("doorman: {e}");
                e.exit_code()
            }
        });
    }
    init_logging(&args);
    let pid_path = pidfile(&args);
    let result = run(&args, pid_path.as_deref());
    if let Some(p) = &pid_path {
        // Only the doorman that wrote it removes it.
        if std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            == Some(std::process::id())
        {
            let _ = std::fs::remove_file(p);
        }
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("doorman: {line}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(args: &cli::Args, pid_path: Option<&std::path::Path>) -> Result<u8, Error> {
    // Start-up runs in a frame of its own that is gone before the loop
    // starts: the loop's stack is then main, this frame and the loop's,
    // and what the parsers and binding touched below them is given back
    // with the rest of start-up's memory (footprint.rs). The server lives
    // on the heap, not in a frame that stays live for the daemon's life.
    match start(args, pid_path)? {
        Some(server) => Ok(server.run()),
        None => Ok(EXIT_OK),
    }
}

/// Loads the configuration and binds its sockets: the server, ready to
/// run, or `None` when there is nothing to run (`--check`).
#[inline(never)]
fn start(
    args: &cli::Args,
    pid_path: Option<&std::path::Path>,
) -> Result<Option<Box<server::Server>>, Error> {
    // Signals first: a SIGTERM during start-up is then handled, and the
    // dispositions handlers must get back are read before we change any.
    // Before doorman opens anything of its own, which could take the
    // number of an --ready-fd that was not really inherited.
    check_ready_fd(args.ready_fd)?;
    ensure_std_fds();
    cloexec_inherited_fds();
    let trap = signals::Trap::install()
        .map_err(|e| Error::system("install signal handlers", errno_of(&e)))?;
    let plan = args.plan()?;
    let loaded = match config::load(&plan.sources) {
        Ok(l) => l,
        Err(errors) => return Err(Error::Config(errors)),
    };
    if plan.check {
        // Buffered: 10,000 services are a few writes, not 10,000.
        let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
        for w in &loaded.warnings {
            eprintln!("doorman: warning: {w}");
        }
        for s in &loaded.services {
            let _ = writeln!(out, "{s}");
        }
        let _ = out.flush();
        if loaded.services.is_empty() {
            eprintln!("doorman: warning: the configuration declares no service to serve");
        }
        return Ok(None);
    }
    for w in &loaded.warnings {
        log::warn!("{w}");
    }
    if loaded.services.is_empty() {
        log::warn!("the configuration declares no service to serve");
    }
    for s in &loaded.services {
        log::debug!("service {s}");
    }
    // The daemon reports how its start went to the process that was run,
    // which exits with that status: a bind failure is not hidden.
    let mut status = if args.daemon {
        Some(daemonize()?)
    } else {
        None
    };
    if let Some((old, new)) = spawn::image::lift_nofile() {
        log::debug!("RLIMIT_NOFILE raised from {old} to {new}; handlers get {old}");
    }
    let started = server::Server::start(loaded, trap, plan.options).and_then(|mut server| {
        if let Some(p) = pid_path {
            write_pidfile(p)
                .map_err(|e| Error::system(format!("--pidfile {}", p.display()), errno_of(&e)))?;
        }
        server.announce_ready();
        Ok(server)
    });
    if let Some(f) = &mut status {
        let _ = match &started {
            Ok(_) => f.write_all(b"READY\n"),
            Err(e) => f.write_all(format!("{e}\n").as_bytes()),
        };
    }
    drop(status);
    started.map(|s| Some(Box::new(s)))
}

/// Log to stderr (to syslog with `--daemon`): `RUST_LOG` if set, else
/// info (`-v` debug, `-v -v` trace, `-q` warnings only); events as text or
/// JSON lines (`--log-format`).
fn init_logging(args: &cli::Args) {
    let level = match (args.quiet, args.verbose) {
        (true, _) => log::LevelFilter::Warn,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    let json = args.log_format.as_deref() == Some("json");
    events::set_json(json);
    let syslog = args.daemon && !args.check;
    let pid = std::process::id();
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    b.format(move |buf, rec| {
        let level = level_word(rec.level());
        let is_event = rec.target() == events::TARGET;
        // RFC 3164 over /dev/log, facility daemon; the pid is the daemon's,
        // which changed when it detached.
        if syslog {
            let sev = match rec.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                _ => 7,
            };
            write!(buf, "<{}>doorman[{}]: ", 24 + sev, std::process::id())?;
        }
        if json {
            let mut line = String::from("{\"ts\":");
            events::escape_into(&mut line, &timestamp());
            line.push_str(",\"level\":");
            events::escape_into(&mut line, level);
            line.push(',');
            if is_event {
                line.push_str(&rec.args().to_string());
            } else {
                line.push_str("\"msg\":");
                events::escape_into(&mut line, &rec.args().to_string());
            }
            line.push('}');
            return writeln!(buf, "{line}");
        }
        if syslog {
            // syslog stamps its own time.
            return writeln!(buf, "{level}: {}", rec.args());
        }
        // The date and time to the second, formatted once per second.
        thread_local! {
            static STAMP: std::cell::RefCell<(u64, String)> =
                const { std::cell::RefCell::new((u64::MAX, String::new())) };
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        STAMP.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != now.as_secs() {
                let t = timestamp_at(now);
                c.1.clear();
                c.1.push_str(&t[..19]);
                c.0 = now.as_secs();
            }
            writeln!(
                buf,
                "{}.{:03}Z doorman[{pid}]: {}: {}",
                c.1,
                now.subsec_millis(),
                level_word(rec.level()),
                rec.args()
            )
        })
    });
    if syslog {
        b.target(env_logger::Target::Pipe(Box::new(Syslog::default())));
    } else {
        b.target(env_logger::Target::Pipe(Box::new(events::Stderr)));
    }
    b.init();
}

/// Sends each log line as one datagram to /dev/log.
#[derive(Default)]
struct Syslog {
    line: Vec<u8>,
    sock: Option<std::os::unix::net::UnixDatagram>,
}

impl Write for Syslog {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(data);
        while let Some(i) = self.line.iter().position(|&b| b == b'\n') {
            let msg: Vec<u8> = self.line.drain(..=i).collect();
            if self.sock.is_none() {
                let s = std::os::unix::net::UnixDatagram::unbound()?;
                s.set_nonblocking(true)?;
                self.sock = Some(s);
            }
            if let Some(s) = &self.sock {
                // A full or missing syslog loses the line, never the loop.
                let _ = s.send_to(&msg[..msg.len() - 1], "/dev/log");
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `--daemon`: the classic double fork; the first parent exits 0, the
/// daemon runs in a new session with / as its directory and stdio on
/// /dev/null.
///
/// Returns the write end of a pipe on which the daemon says `READY` or
/// why it could not start; the first process waits for that and exits 0
/// or 1 accordingly (printing the reason).
fn daemonize() -> Result<std::fs::File, Error> {
    use nix::unistd::{fork, setsid, ForkResult};
    use std::io::Read;
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::system("pipe", e))?;
    // SAFETY: doorman is single-threaded here; the child goes on running
    // ordinary code, as a process of its own.
    match unsafe { fork() }.map_err(|e| Error::system("fork", e))? {
        ForkResult::Parent { .. } => {
            drop(wr);
            let mut said = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut said);
            if said.starts_with("READY") {
                std::process::exit(0);
            }
            for line in said.lines() {
                eprintln!("doorman: {line}");
            }
            if said.is_empty() {
                eprintln!("doorman: the daemon exited before it was ready");
            }
            std::process::exit(i32::from(error::EXIT_CONFIG));
        }
        ForkResult::Child => drop(rd),
    }
    setsid().map_err(|e| Error::system("setsid", e))?;
    // SAFETY: as above.
    match unsafe { fork() }.map_err(|e| Error::system("fork", e))? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    let _ = std::env::set_current_dir("/");
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::system("open /dev/null", e))?;
    for fd in 0..3 {
        let _ = nix::unistd::dup2(null, fd);
    }
    if null > 2 {
        let _ = nix::unistd::close(null);
    }
    Ok(std::fs::File::from(wr))
}

/// `--pidfile` as an absolute path (the daemon runs in /).
fn pidfile(args: &cli::Args) -> Option<std::path::PathBuf> {
    let p = args.pidfile.as_ref()?;
    Some(std::path::absolute(p).unwrap_or_else(|_| p.clone()))
}

/// Writes the pid next to `path` and renames it into place, so that a
/// reader never sees a partial file. The temporary file is created anew
/// (`O_EXCL|O_NOFOLLOW`): a link planted there, or a file of someone
/// else's, is never followed or written to; a leftover of an earlier
/// doorman with the same pid is removed first (unlink removes a link, not
/// what it points to).
fn write_pidfile(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
    };
    let mut f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp)?;
            open()?
        }
        r => r?,
    };
    let written = f.write_all(format!("{}\n", std::process::id()).as_bytes());
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// `--ready-fd N` must name a descriptor doorman was given to write to:
/// above 2 (0-2 are the standard streams), open, and writable. Checked
/// before doorman opens any descriptor of its own, so that it cannot be
/// one of them.
fn check_ready_fd(fd: Option<i32>) -> Result<(), Error> {
    let Some(fd) = fd else { return Ok(()) };
    if fd <= 2 {
        return Err(Error::Usage(format!(
            "--ready-fd {fd}: must be above 2 (0, 1 and 2 are the standard streams)"
        )));
    }
    match nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
        Ok(flags) if flags & libc::O_ACCMODE != libc::O_RDONLY => Ok(()),
        Ok(_) => Err(Error::Usage(format!(
            "--ready-fd {fd}: the descriptor is open for reading only"
        ))),
        Err(e) => Err(Error::Usage(format!(
            "--ready-fd {fd}: no such open descriptor ({})",
            e.desc()
        ))),
    }
}

/// `--reload`: SIGHUP to the pid in the pidfile.
fn send_reload(args: &cli::Args) -> Result<(), Error> {
    let path = args
        .pidfile
        .clone()
        .unwrap_or_else(|| "/run/doorman.pid".into());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Usage(format!("--reload: {}: {e}", path.display())))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| Error::Usage(format!("--reload: {}: no pid in it", path.display())))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| Error::system(format!("--reload: kill -HUP {pid}"), e))
}

/// A log level as the log lines spell it.
fn level_word(l: log::Level) -> &'static str {
    match l {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), without a time-zone database.
fn timestamp() -> String {
    timestamp_at(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// `d` after the epoch, as [`timestamp`] writes it.
fn timestamp_at(d: std::time::Duration) -> String {
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Fds 0, 1 and 2 must be open (on /dev/null if nothing else), so that no
/// socket doorman opens can land on them and be handed out by mistake.
fn ensure_std_fds() {
    for fd in 0..3 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF) {
            // Opened without O_CLOEXEC on purpose: it becomes fd `fd`.
            let _ = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            );
        }
    }
}

/// Marks every fd doorman inherited above 2 close-on-exec, so that no
/// handler sees an fd it was not given (a supervisor's pipe, a shell's
/// stray descriptor). `--ready-fd` still works: doorman writes to it itself.
fn cloexec_inherited_fds() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds
    // in the range; it closes nothing and touches no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: walk /proc/self/fd.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
}

fn errno_of(e: &std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_temporary_file_never_follows_a_planted_link() {
        let dir = std::env::temp_dir().join(format!("doorman-pidfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "untouched\n").unwrap();
        let path = dir.join("doorman.pid");
        let tmp = dir.join(format!("doorman.pid.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        write_pidfile(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert!(
            std::fs::symlink_metadata(&tmp).is_err(),
            "no temporary left"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
