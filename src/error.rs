//! The error type and the fixed exit-code table.
//!
//! Owns: the four kinds of failure doorman can report before its event loop
//! runs (usage, configuration, system, bug) and the exit status each maps to.
//! Must not: decide when to exit; `main.rs` does that.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Exit status for success.
pub const EXIT_OK: u8 = 0;
/// Exit status for a configuration error, or a start-up failure to bind.
pub const EXIT_CONFIG: u8 = 1;
/// Exit status for a command-line usage error.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a system error at start-up (cannot create the event loop...).
pub const EXIT_SYSTEM: u8 = 111;

/// Where a configuration item came from: file and line (line 0 for the
/// command line or for the file as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Shared by the items of one file (see [`Origin::new`]).
    pub file: Arc<Path>,
    pub line: usize,
}

impl Origin {
    /// Items of the same file as the last one share its path: 10,000
    /// services of one file hold one copy of its name.
    pub fn new(file: impl AsRef<Path>, line: usize) -> Origin {
        thread_local! {
            static LAST: std::cell::RefCell<Option<Arc<Path>>> =
                const { std::cell::RefCell::new(None) };
        }
        // (Compared as bytes, and copied only when it is a new file: once
        // a line, a copy and Path's comparison by components were a fair
        // part of a 10,000-line load.)
        let file = file.as_ref();
        let file = LAST.with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some(a) if a.as_os_str() == file.as_os_str() => Arc::clone(a),
                _ => Arc::clone(last.insert(Arc::from(file))),
            }
        });
        Origin { file, line }
    }

    /// The command line, for `--listen` services.
    pub fn command_line() -> Origin {
        Origin::new("command line", 0)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

/// One configuration problem: where, which field, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    pub field: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(origin: &Origin, field: Option<&str>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: origin.clone(),
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {}: {}", self.origin, field, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// Everything that can stop doorman before or instead of serving.
#[derive(Debug)]
pub enum Error {
    /// The command line is wrong.
    Usage(String),
    /// The configuration is wrong; every problem found is listed.
    Config(Vec<ConfigError>),
    /// A service could not be bound at start-up.
    Bind(String),
    /// A system call failed where doorman cannot go on.
    System {
        what: String,
        errno: nix::errno::Errno,
    },
}

impl Error {
    pub fn system(what: impl Into<String>, errno: nix::errno::Errno) -> Error {
        Error::System {
            what: what.into(),
            errno,
        }
    }

    /// The documented exit status for this error (see doorman(8), EXIT STATUS).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Config(_) | Error::Bind(_) => EXIT_CONFIG,
            Error::System { .. } => EXIT_SYSTEM,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "usage: {m}"),
            Error::Config(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            Error::Bind(m) => write!(f, "{m}"),
            Error::System { what, errno } => write!(f, "{what}: {}", errno.desc()),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(vec![e])
    }
}
