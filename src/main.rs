//! doorman: an inetd-style super-server. `main` parses the command line,
//! calls [`run`], and is the only place that decides the exit status.

mod cli;
mod config;
mod error;
mod listen;
mod policy;
mod reap;
mod server;
mod signals;
mod spawn;

use std::io::Write;
use std::process::ExitCode;

use error::{Error, EXIT_OK};

fn main() -> ExitCode {
    let args = match cli::Args::from_env() {
        Ok(a) => a,
        Err(code) => return ExitCode::from(code),
    };
    if args.version {
        println!("doorman {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::from(EXIT_OK);
    }
    init_logging(&args);
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("doorman: {line}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(args: &cli::Args) -> Result<u8, Error> {
    // Signals first: a SIGTERM during start-up is then handled, and the
    // dispositions handlers must get back are read before we change any.
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
        let mut out = std::io::stdout().lock();
        for w in &loaded.warnings {
            eprintln!("doorman: warning: {w}");
        }
        for s in &loaded.services {
            let _ = writeln!(out, "{s}");
        }
        if loaded.services.is_empty() {
            eprintln!("doorman: warning: the configuration declares no service to serve");
        }
        return Ok(EXIT_OK);
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
    let server = server::Server::start(loaded, trap, plan.options)?;
    Ok(server.run())
}

/// Log to stderr: `RUST_LOG` if set, else info (`-v` debug, `-v -v`
/// trace, `-q` warnings only).
fn init_logging(args: &cli::Args) {
    let level = match (args.quiet, args.verbose) {
        (true, _) => log::LevelFilter::Warn,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    b.format(|buf, rec| {
        writeln!(
            buf,
            "{} doorman[{}]: {}: {}",
            timestamp(),
            std::process::id(),
            rec.level().as_str().to_ascii_lowercase(),
            rec.args()
        )
    });
    b.target(env_logger::Target::Stderr);
    b.init();
}

/// Now, as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), without a time-zone database.
fn timestamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
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
