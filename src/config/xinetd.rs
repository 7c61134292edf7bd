//! xinetd `service NAME { attr = value }` blocks → raw services, every
//! problem with file:line and the attribute.
//!
//! Owns: the xinetd.conf(5) grammar (`defaults`, `service`, `include`,
//! `includedir`; the `=`, `+=` and `-=` operators) and how each attribute
//! maps onto doorman's model. What doorman cannot honour yet is an error
//! naming the attribute, never silently dropped; what only changes xinetd's
//! own logging is a warning.
//! Must not: resolve names (ports, users, groups, hosts); `resolve.rs` does.
//!
//! ```text
//! defaults
//! {
//!     instances = 30
//!     cps       = 50 10
//! }
//! service echo
//! {
//!     socket_type = stream
//!     wait        = no
//!     user        = nobody
//!     server      = /bin/cat
//!     passenv    += TZ
//! }
//! includedir /etc/xinetd.d
//! ```
//!
//! The whole tree of files is read first; `defaults` then applies to every
//! service, wherever it stands (as xinetd fills services in after parsing).
//!
//! Where doorman has defaults of its own, a service from here keeps
//! xinetd's (2.3.15, as Debian ships it): IPv4 and IPv6 unless `flags =
//! IPv4` or `v6only = yes`; the whole environment unless `passenv` is given;
//! `cps = 50 10`; only the user's primary group unless `groups = yes`.

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::acl::{self, Cidr};
use super::inetd::{Family, Parsed, RawBind, RawService};
use super::{options, Fate, Mode, Rate, Rlimit, SockType, MAX_MESSAGE};
use crate::error::{ConfigError, Origin};

/// xinetd's built-in `cps = 50 10`: over 50 connections in a second the
/// service pauses for 10 seconds.
pub const DEFAULT_CPS: Rate = Rate {
    max: 50,
    interval: Duration::from_secs(1),
    pause: Duration::from_secs(10),
};

/// How deep `include` and `includedir` may nest (a guard against loops
/// that the path check cannot see).
const MAX_DEPTH: usize = 16;

/// Parses an xinetd config file (and what it includes), returning raw
/// services. (doorman itself reads the text first, for format detection,
/// and calls [`parse`].)
#[cfg(test)]
pub fn parse_file(path: &Path) -> Parsed {
    parse_file_in(path, None)
}

/// Parses xinetd text as if read from `path` (for tests and includes);
/// relative `include` and `includedir` paths are taken from `path`'s directory.
pub fn parse(path: &Path, text: &str) -> Parsed {
    let mut r = Reader::new(None);
    r.text(path, text, &Origin::new(path, 0), None);
    r.finish()
}

/// True when text looks like xinetd syntax: its first significant token is
/// `service`, `defaults`, `include` or `includedir` (`-f` format detection).
pub fn looks_like(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(|l| {
            matches!(
                first_word(l),
                "service" | "defaults" | "include" | "includedir"
            )
        })
}

/// Reads a directory as xinetd's `includedir` does: files in name order,
/// skipping names that contain a `.` or end in `~`.
pub fn parse_dir(dir: &Path) -> Parsed {
    let mut r = Reader::new(None);
    r.dir(dir, &Origin::new(dir, 0), None);
    r.finish()
}

/// `parse_file` with absolute include paths read under `root` (tests read
/// a distribution's `/etc` from a fixture directory).
#[cfg(test)]
fn parse_file_in(path: &Path, root: Option<&Path>) -> Parsed {
    let mut r = Reader::new(root.map(Path::to_path_buf));
    r.file(path, &Origin::new(path, 0), None);
    r.finish()
}

/// An assignment operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Set,
    Add,
    Remove,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Set => "=",
            Op::Add => "+=",
            Op::Remove => "-=",
        }
    }
}

/// One `attribute op values...` line.
#[derive(Clone, Debug)]
struct Line {
    origin: Origin,
    attr: String,
    op: Op,
    values: Vec<String>,
}

/// A `service NAME` (or `defaults`, `name` `None`) block as written.
#[derive(Debug)]
struct Block {
    origin: Origin,
    name: Option<String>,
    lines: Vec<Line>,
    /// Lines of the wrong shape (left out of `lines`).
    errors: Vec<ConfigError>,
}

impl Block {
    fn field(&self) -> &'static str {
        if self.name.is_some() {
            "service"
        } else {
            "defaults"
        }
    }

    fn title(&self) -> String {
        match &self.name {
            Some(n) => format!("service {n}"),
            None => "defaults".into(),
        }
    }
}

/// How many values an attribute takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Count {
    One,
    Two,
    Any,
}

/// An attribute of xinetd.conf(5): `list` attributes take `+=` and `-=`
/// and may be repeated; the others take `=` once.
struct AttrDef {
    name: &'static str,
    count: Count,
    list: bool,
}

const fn attr(name: &'static str, count: Count) -> AttrDef {
    AttrDef {
        name,
        count,
        list: false,
    }
}

const fn list(name: &'static str) -> AttrDef {
    AttrDef {
        name,
        count: Count::Any,
        list: true,
    }
}

/// The attributes of a service entry (xinetd's `service_attributes`).
const SERVICE_ATTRS: &[AttrDef] = &[
    attr("socket_type", Count::One),
    attr("protocol", Count::One),
    attr("wait", Count::One),
    attr("user", Count::One),
    attr("group", Count::One),
    attr("server", Count::One),
    attr("server_args", Count::Any),
    attr("instances", Count::One),
    list("log_on_success"),
    list("log_on_failure"),
    attr("log_type", Count::Any),
    list("only_from"),
    list("no_access"),
    attr("access_times", Count::Any),
    attr("type", Count::Any),
    attr("rpc_version", Count::One),
    attr("rpc_number", Count::One),
    attr("id", Count::One),
    list("env"),
    attr("port", Count::One),
    list("passenv"),
    attr("flags", Count::Any),
    attr("nice", Count::One),
    attr("redirect", Count::Two),
    attr("banner", Count::One),
    attr("bind", Count::One),
    attr("interface", Count::One),
    attr("per_source", Count::One),
    attr("groups", Count::One),
    attr("banner_success", Count::One),
    attr("banner_fail", Count::One),
    attr("cps", Count::Two),
    attr("disable", Count::One),
    attr("max_load", Count::One),
    attr("rlimit_as", Count::One),
    attr("rlimit_cpu", Count::One),
    attr("rlimit_data", Count::One),
    attr("rlimit_files", Count::One),
    attr("rlimit_rss", Count::One),
    attr("rlimit_stack", Count::One),
    attr("v6only", Count::One),
    attr("deny_time", Count::One),
    attr("umask", Count::One),
    attr("libwrap", Count::One),
    attr("mdns", Count::One),
    list("doorman_options"),
];

/// The attributes a `defaults` entry may set (xinetd's `default_attributes`).
const DEFAULTS_ATTRS: &[AttrDef] = &[
    list("log_type"),
    list("log_on_success"),
    list("log_on_failure"),
    list("disabled"),
    list("no_access"),
    list("only_from"),
    attr("instances", Count::One),
    list("passenv"),
    attr("banner", Count::One),
    attr("bind", Count::One),
    attr("interface", Count::One),
    attr("per_source", Count::One),
    attr("groups", Count::One),
    attr("banner_success", Count::One),
    attr("banner_fail", Count::One),
    attr("cps", Count::Two),
    list("enabled"),
    attr("max_load", Count::One),
    attr("v6only", Count::One),
    attr("umask", Count::One),
    attr("mdns", Count::One),
    list("doorman_options"),
];

fn lookup(name: &str, defaults: bool) -> Option<&'static AttrDef> {
    let table = if defaults {
        DEFAULTS_ATTRS
    } else {
        SERVICE_ATTRS
    };
    table.iter().find(|a| a.name == name)
}

/// `interface` is another name for `bind`.
fn canonical(name: &str) -> &str {
    if name == "interface" {
        "bind"
    } else {
        name
    }
}

/// Where the reader is within one file.
enum State {
    Top,
    /// `service NAME` or `defaults` was read: `{` must follow.
    Brace(Block),
    In(Block),
    /// After a malformed opening: lines are passed over up to the next `}`
    /// or top-level keyword.
    Skip,
}

/// Reads a tree of files into blocks, then maps them onto raw services.
struct Reader {
    root: Option<PathBuf>,
    /// The files being read, innermost last (the include-loop guard).
    stack: Vec<PathBuf>,
    /// Every file read, in the order read (errors are listed so).
    files: Vec<PathBuf>,
    defaults: Option<Block>,
    services: Vec<Block>,
    out: Parsed,
}

impl Reader {
    fn new(root: Option<PathBuf>) -> Reader {
        Reader {
            root,
            stack: Vec::new(),
            files: Vec::new(),
            defaults: None,
            services: Vec::new(),
            out: Parsed::default(),
        }
    }

    fn error(&mut self, origin: &Origin, field: Option<&str>, msg: impl Into<String>) {
        self.out.errors.push(ConfigError::new(origin, field, msg));
    }

    /// Reads one file; problems opening it are reported at `from` (the
    /// `include` line, or the file itself).
    fn file(&mut self, path: &Path, from: &Origin, field: Option<&str>) {
        let bytes = match super::read_bounded(path) {
            Ok(b) => b,
            Err(e) => {
                let msg = match field {
                    Some(_) => format!("cannot read {}: {e}", path.display()),
                    None => e.to_string(),
                };
                return self.error(from, field, msg);
            }
        };
        match String::from_utf8(bytes) {
            Ok(text) => self.text(path, &text, from, field),
            Err(e) => {
                let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
                self.error(&Origin::new(path, line), None, "not valid UTF-8");
            }
        }
    }

    fn text(&mut self, path: &Path, text: &str, from: &Origin, field: Option<&str>) {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.stack.contains(&key) {
            return self.error(
                from,
                field,
                format!("include loop: {} is already being read", path.display()),
            );
        }
        if self.stack.len() >= MAX_DEPTH {
            return self.error(
                from,
                field,
                format!(
                    "{}: includes nest more than {MAX_DEPTH} deep",
                    path.display()
                ),
            );
        }
        self.stack.push(key);
        self.files.push(path.to_path_buf());
        self.lines(path, text);
        self.stack.pop();
    }

    /// An `includedir`: every file whose name has no `.` and does not end
    /// in `~`, in byte order of the names (the C locale).
    fn dir(&mut self, dir: &Path, from: &Origin, field: Option<&str>) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                let msg = match field {
                    Some(_) => format!("cannot read directory {}: {e}", dir.display()),
                    None => e.to_string(),
                };
                return self.error(from, field, msg);
            }
        };
        let mut names: Vec<OsString> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| {
                let b = n.as_bytes();
                !b.contains(&b'.') && !b.ends_with(b"~")
            })
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            if path.is_dir() {
                continue;
            }
            self.file(&path, from, field);
        }
    }

    /// Where an `include` or `includedir` argument points: relative to the
    /// including file's directory; absolute paths under `root` if set.
    fn target(&self, including: &Path, arg: &str) -> PathBuf {
        let p = Path::new(arg);
        if let Ok(rel) = p.strip_prefix("/") {
            return match &self.root {
                Some(root) => root.join(rel),
                None => p.to_path_buf(),
            };
        }
        match including.parent() {
            Some(d) => d.join(p),
            None => p.to_path_buf(),
        }
    }

    fn lines(&mut self, path: &Path, text: &str) {
        let mut state = State::Top;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            state = self.step(state, path, &Origin::new(path, i + 1), line);
        }
        match state {
            State::Top | State::Skip => {}
            State::Brace(b) => {
                let msg = format!("missing `{{` after {}", b.title());
                self.error(&b.origin, Some(b.field()), msg);
            }
            State::In(b) => {
                let msg = format!(
                    "{} is not closed: missing `}}` at the end of the file",
                    b.title()
                );
                self.error(&b.origin, Some(b.field()), msg);
            }
        }
    }

    fn step(&mut self, state: State, path: &Path, origin: &Origin, line: &str) -> State {
        match state {
            State::Top => self.top(path, origin, line),
            State::Brace(b) => {
                if line == "{" {
                    return State::In(b);
                }
                let msg = format!("missing `{{` on the line after {}", b.title());
                self.error(&b.origin, Some(b.field()), msg);
                if is_keyword_line(line) {
                    self.top(path, origin, line)
                } else if line == "}" {
                    State::Top
                } else {
                    State::Skip
                }
            }
            State::In(mut b) => {
                if line == "}" {
                    self.close(b);
                    return State::Top;
                }
                if is_keyword_line(line) {
                    let word = first_word(line);
                    if matches!(word, "include" | "includedir") {
                        self.error(
                            origin,
                            Some(word),
                            format!("{word} cannot be used inside a block"),
                        );
                        return State::In(b);
                    }
                    let msg = format!(
                        "{} is not closed: missing `}}` before line {}",
                        b.title(),
                        origin.line
                    );
                    self.error(&b.origin, Some(b.field()), msg);
                    return self.top(path, origin, line);
                }
                match split_attr(line) {
                    Some((attr, op, values)) => b.lines.push(Line {
                        origin: origin.clone(),
                        attr,
                        op,
                        values,
                    }),
                    None => self.error(
                        origin,
                        None,
                        format!("expected `attribute = value` or `}}`, found {line:?}"),
                    ),
                }
                State::In(b)
            }
            State::Skip => {
                if line == "}" {
                    State::Top
                } else if is_keyword_line(line) {
                    self.top(path, origin, line)
                } else {
                    State::Skip
                }
            }
        }
    }

    /// A line outside any block.
    fn top(&mut self, path: &Path, origin: &Origin, line: &str) -> State {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        // `service NAME {` and `defaults {`, the brace maybe glued on.
        let mut brace = false;
        if let Some(last) = words.last_mut() {
            if *last == "{" {
                words.pop();
                brace = true;
            } else if let Some(w) = last.strip_suffix('{') {
                *last = w;
                brace = true;
            }
        }
        let open = |b: Block| if brace { State::In(b) } else { State::Brace(b) };
        match words.first().copied().unwrap_or("{") {
            "service" => match words.len() {
                2 => open(Block {
                    origin: origin.clone(),
                    name: Some(words[1].to_string()),
                    lines: Vec::new(),
                    errors: Vec::new(),
                }),
                1 => {
                    self.error(origin, Some("service"), "service name missing");
                    State::Skip
                }
                _ => {
                    self.error(
                        origin,
                        Some("service"),
                        format!(
                            "expected `service NAME`, found {} words after `service`",
                            words.len() - 1
                        ),
                    );
                    State::Skip
                }
            },
            "defaults" => {
                if words.len() > 1 {
                    self.error(
                        origin,
                        Some("defaults"),
                        format!("unexpected {:?} after `defaults`", words[1]),
                    );
                    return State::Skip;
                }
                open(Block {
                    origin: origin.clone(),
                    name: None,
                    lines: Vec::new(),
                    errors: Vec::new(),
                })
            }
            kw @ ("include" | "includedir") => {
                if brace || words.len() != 2 {
                    self.error(origin, Some(kw), format!("expected `{kw} PATH`"));
                    return State::Top;
                }
                let target = self.target(path, words[1]);
                if kw == "include" {
                    self.file(&target, origin, Some(kw));
                } else {
                    self.dir(&target, origin, Some(kw));
                }
                State::Top
            }
            "}" => {
                self.error(origin, None, "unexpected `}` outside a block");
                State::Top
            }
            "{" => {
                self.error(
                    origin,
                    None,
                    "unexpected `{`: expected `service NAME` first",
                );
                State::Skip
            }
            other => {
                self.error(
                    origin,
                    None,
                    format!("expected service, defaults, include or includedir, found {other:?}"),
                );
                State::Skip
            }
        }
    }

    /// A block is complete: check its lines' shape (known attribute,
    /// operator, number of values, set once) and keep it.
    fn close(&mut self, b: Block) {
        let defaults = b.name.is_none();
        let mut seen: Vec<(&str, usize)> = Vec::new();
        let mut kept = Vec::new();
        let mut errors = Vec::new();
        for l in b.lines {
            match check_line(&l, defaults, &seen) {
                Ok(def) => {
                    if !def.list {
                        seen.push((canonical(def.name), l.origin.line));
                    }
                    kept.push(l);
                }
                Err(m) => errors.push(ConfigError::new(&l.origin, Some(&l.attr), m)),
            }
        }
        let block = Block {
            lines: kept,
            errors,
            ..b
        };
        if !defaults {
            return self.services.push(block);
        }
        if let Some(first) = &self.defaults {
            let msg = format!(
                "only one defaults block is allowed (the first is at {})",
                first.origin
            );
            self.out.errors.extend(block.errors);
            return self.error(&block.origin, Some("defaults"), msg);
        }
        self.defaults = Some(block);
    }

    /// Maps every service, with `defaults` applied; errors are listed by
    /// file (in the order read), then line.
    fn finish(mut self) -> Parsed {
        let mut base = Settings::default();
        if let Some(d) = self.defaults.take() {
            self.out.errors.extend(d.errors);
            for l in &d.lines {
                base.apply(l, true, &mut self.out.errors, &mut self.out.warnings);
            }
        }
        for b in std::mem::take(&mut self.services) {
            self.service(&base, b);
        }
        let files = &self.files;
        let rank = |o: &Origin| files.iter().position(|f| **f == *o.file).unwrap_or(0);
        self.out
            .errors
            .sort_by_key(|e| (rank(&e.origin), e.origin.line));
        self.out
    }

    fn service(&mut self, base: &Settings, mut b: Block) {
        let name = b.name.clone().unwrap_or_default();
        // A `disable` of the wrong value: whether to serve is unknown.
        let unsure = b
            .errors
            .iter()
            .any(|e| e.field.as_deref() == Some("disable"));
        self.out.errors.append(&mut b.errors);
        let value = |attr: &str| {
            b.lines
                .iter()
                .find(|l| l.attr == attr)
                .and_then(|l| l.values.first())
        };
        let id = value("id").cloned().unwrap_or_else(|| name.clone());
        let disabled = value("disable").is_some_and(|v| v == "yes")
            || base.disabled.contains(&id)
            || base.enabled.as_ref().is_some_and(|e| !e.contains(&id));
        if disabled || unsure {
            return;
        }
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let kinds = Kinds::read(&b.lines, &mut errors);
        let skip = if kinds.sensor {
            Some("SENSOR services are not supported yet")
        } else if kinds.rpc {
            Some("RPC services are not supported")
        } else {
            None
        };
        if let Some(why) = skip {
            self.out.errors.append(&mut errors);
            self.out
                .warnings
                .push(format!("{}: {id}: {why}; service skipped", b.origin));
            return;
        }
        let mut s = base.clone();
        for l in &b.lines {
            s.apply(l, false, &mut errors, &mut warnings);
        }
        if !kinds.ignored.is_empty() {
            let origin = kinds.flags_origin.as_ref().unwrap_or(&b.origin);
            warnings.push(format!(
                "{origin}: flags: {} ignored: doorman has no such behaviour",
                kinds.ignored.join(", ")
            ));
        }
        let svc = build(&b.origin, &name, &id, &s, &kinds, &mut errors);
        self.out.warnings.append(&mut warnings);
        if errors.is_empty() {
            if let Some(svc) = svc {
                self.out.services.push(svc);
            }
        } else {
            self.out.errors.append(&mut errors);
        }
    }
}

/// The first word of a line, a glued `{` left off.
fn first_word(line: &str) -> &str {
    line.split(|c: char| c.is_whitespace() || c == '{')
        .next()
        .unwrap_or("")
}

/// A `service`, `defaults`, `include` or `includedir` line (and not an
/// attribute of that name).
fn is_keyword_line(line: &str) -> bool {
    matches!(
        first_word(line),
        "service" | "defaults" | "include" | "includedir"
    ) && split_attr(line).is_none()
}

/// `name op values...`; the operator may touch the name and the values.
fn split_attr(line: &str) -> Option<(String, Op, Vec<String>)> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(line.len());
    if end == 0 {
        return None;
    }
    let rest = line[end..].trim_start();
    let (op, rest) = if let Some(r) = rest.strip_prefix("+=") {
        (Op::Add, r)
    } else if let Some(r) = rest.strip_prefix("-=") {
        (Op::Remove, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (Op::Set, r)
    } else {
        return None;
    };
    let values = rest.split_whitespace().map(str::to_string).collect();
    Some((line[..end].to_string(), op, values))
}

/// The shape of one line: a known attribute for this kind of block, an
/// operator it takes, the right number of values, not set twice.
fn check_line(
    l: &Line,
    defaults: bool,
    seen: &[(&str, usize)],
) -> Result<&'static AttrDef, String> {
    let Some(def) = lookup(&l.attr, defaults) else {
        if defaults && lookup(&l.attr, false).is_some() {
            return Err("cannot be set in defaults, only in a service".into());
        }
        if !defaults && lookup(&l.attr, true).is_some() {
            return Err("can be set in defaults only".into());
        }
        return Err(format!("unknown attribute {:?}", l.attr));
    };
    if def.list {
        if def.name == "env" && l.op == Op::Remove {
            return Err("`-=` cannot be used with env".into());
        }
    } else {
        if l.op != Op::Set {
            return Err(format!(
                "`{}` is for list attributes only (only_from, no_access, log_on_success, log_on_failure, passenv, env); use `=`",
                l.op.as_str()
            ));
        }
        if let Some((_, line)) = seen.iter().find(|(n, _)| *n == canonical(def.name)) {
            return Err(format!("is already set at line {line}"));
        }
    }
    let n = l.values.len();
    match def.count {
        Count::One if n != 1 => Err(format!("expects 1 value, found {n}")),
        Count::Two if n != 2 => Err(format!("expects 2 values, found {n}")),
        _ if def.name == "disable" && !matches!(l.values[0].as_str(), "yes" | "no") => {
            Err(format!("expected yes or no, found {:?}", l.values[0]))
        }
        _ => Ok(def),
    }
}

/// What a service's `type` and `flags` say.
#[derive(Debug, Default)]
struct Kinds {
    internal: bool,
    unlisted: bool,
    rpc: bool,
    tcpmux: bool,
    tcpmux_plus: bool,
    sensor: bool,
    v4: bool,
    v6: bool,
    nodelay: bool,
    keepalive: bool,
    name_in_args: bool,
    /// Flags accepted with a warning: xinetd behaviour doorman lacks but
    /// whose absence changes nothing for the server.
    ignored: Vec<String>,
    flags_origin: Option<Origin>,
}

impl Kinds {
    fn read(lines: &[Line], errors: &mut Vec<ConfigError>) -> Kinds {
        let mut k = Kinds::default();
        for l in lines {
            let mut fail = |m: String| errors.push(ConfigError::new(&l.origin, Some(&l.attr), m));
            match l.attr.as_str() {
                "type" => {
                    for v in &l.values {
                        match v.as_str() {
                            "INTERNAL" => k.internal = true,
                            "UNLISTED" => k.unlisted = true,
                            "RPC" => k.rpc = true,
                            "TCPMUX" => k.tcpmux = true,
                            "TCPMUXPLUS" => {
                                k.tcpmux = true;
                                k.tcpmux_plus = true;
                            }
                            other => fail(format!(
                                "unknown type {other:?} (expected INTERNAL, UNLISTED, RPC, TCPMUX or TCPMUXPLUS)"
                            )),
                        }
                    }
                }
                "flags" => {
                    k.flags_origin = Some(l.origin.clone());
                    for v in &l.values {
                        match v.as_str() {
                            "IPv4" => k.v4 = true,
                            "IPv6" => k.v6 = true,
                            "NODELAY" => k.nodelay = true,
                            "KEEPALIVE" => k.keepalive = true,
                            "NAMEINARGS" => k.name_in_args = true,
                            "SENSOR" => k.sensor = true,
                            // Deprecated in xinetd: every socket has it, in
                            // doorman too.
                            "REUSE" => {}
                            "NORETRY" | "INTERCEPT" | "NOLIBWRAP" | "LABELED" => {
                                k.ignored.push(v.clone())
                            }
                            "IDONLY" => fail(
                                "IDONLY is not supported yet: doorman does not query the client's ident server"
                                    .into(),
                            ),
                            other => fail(format!(
                                "unknown flag {other:?} (known: IPv4, IPv6, NODELAY, KEEPALIVE, REUSE, NAMEINARGS, NORETRY, INTERCEPT, SENSOR, NOLIBWRAP, LABELED, IDONLY)"
                            )),
                        }
                    }
                }
                _ => {}
            }
        }
        k
    }
}

/// Attribute values after `defaults` and the service's own lines.
#[derive(Clone, Debug, Default)]
struct Settings {
    socket_type: Option<(Origin, SockType)>,
    /// The protocol's name and the socket type it goes with.
    protocol: Option<(Origin, &'static str, SockType)>,
    wait: Option<(Origin, Mode)>,
    user: Option<String>,
    group: Option<String>,
    server: Option<String>,
    server_args: Option<(Origin, Vec<String>)>,
    /// `redirect = ADDR PORT`: connections relayed to a running server.
    redirect: Option<crate::config::Address>,
    /// `Some(None)`: UNLIMITED.
    instances: Option<Option<u32>>,
    per_source: Option<Option<u32>>,
    cps: Option<Rate>,
    groups: Option<bool>,
    umask: Option<u32>,
    nice: Option<i32>,
    port: Option<String>,
    bind: Option<(Origin, String)>,
    v6only: Option<bool>,
    rlimits: Vec<Rlimit>,
    env: Vec<(String, String)>,
    passenv: Vec<String>,
    /// A `passenv` line was read (in the service or in defaults), even an
    /// empty one: the server then gets only those variables and `env`;
    /// without one, xinetd's (doorman's) whole environment and `env`.
    passenv_given: bool,
    /// `only_from` (`Some` once given, even empty: then no one) and
    /// `no_access`, as written (checked when read).
    only_from: Option<Vec<String>>,
    no_access: Vec<String>,
    /// The contents of the `banner_fail` file.
    banner_fail: Option<Vec<u8>>,
    /// doorman's own options (`doorman_options = key=value ...`), checked
    /// when read.
    doorman_options: Vec<String>,
    /// `defaults` only: service ids never served / the only ones served.
    disabled: Vec<String>,
    enabled: Option<Vec<String>>,
    /// Attributes set, their values right or wrong (a wrong one is not
    /// also "missing").
    given: Vec<String>,
}

impl Settings {
    /// Applies one line whose shape `check_line` accepted; value problems
    /// are errors naming the line and attribute.
    fn apply(
        &mut self,
        l: &Line,
        defaults: bool,
        errors: &mut Vec<ConfigError>,
        warnings: &mut Vec<String>,
    ) {
        self.given.push(canonical(&l.attr).to_string());
        let mut fail = |m: String| errors.push(ConfigError::new(&l.origin, Some(&l.attr), m));
        let one = l.values.first().map_or("", String::as_str);
        let origin = || l.origin.clone();
        // In defaults, `=` on a list adds to it, as `+=` does.
        let op = if defaults && l.op == Op::Set {
            Op::Add
        } else {
            l.op
        };
        let mut ignore =
            |why: &str| warnings.push(format!("{}: {}: ignored: {why}", l.origin, l.attr));
        match l.attr.as_str() {
            // Read before: they decide whether the service is served at all.
            "id" | "disable" | "type" | "flags" => {}
            "socket_type" => match one {
                "stream" => self.socket_type = Some((origin(), SockType::Stream)),
                "dgram" => self.socket_type = Some((origin(), SockType::Dgram)),
                "seqpacket" => fail(
                    "seqpacket is served over unix sockets only, which xinetd cannot name".into(),
                ),
                "raw" | "rdm" => fail(format!("{one} sockets are not supported")),
                other => fail(format!("unknown socket type {other:?} (expected stream or dgram)")),
            },
            "protocol" => match one {
                "tcp" => self.protocol = Some((origin(), "tcp", SockType::Stream)),
                "udp" => self.protocol = Some((origin(), "udp", SockType::Dgram)),
                other => fail(format!("unknown protocol {other:?} (expected tcp or udp)")),
            },
            "wait" => match yes_no(one) {
                Ok(w) => {
                    let mode = if w { Mode::Wait } else { Mode::Accept };
                    self.wait = Some((origin(), mode));
                }
                Err(m) => fail(m),
            },
            "user" => self.user = Some(one.to_string()),
            "group" => self.group = Some(one.to_string()),
            "server" => {
                if one.starts_with('/') {
                    self.server = Some(one.to_string());
                } else {
                    fail(format!("{one:?} is not an absolute path"));
                }
            }
            "server_args" => self.server_args = Some((origin(), l.values.clone())),
            "instances" => match parse_limit(one) {
                Ok(n) => self.instances = Some(n),
                Err(m) => fail(m),
            },
            "per_source" => match parse_limit(one) {
                Ok(n) => self.per_source = Some(n),
                Err(m) => fail(m),
            },
            "cps" => match parse_cps(&l.values) {
                Ok(r) => self.cps = Some(r),
                Err(m) => fail(m),
            },
            "groups" => match yes_no(one) {
                Ok(b) => self.groups = Some(b),
                Err(m) => fail(m),
            },
            "v6only" => match yes_no(one) {
                Ok(b) => self.v6only = Some(b),
                Err(m) => fail(m),
            },
            "umask" => match u32::from_str_radix(one, 8) {
                Ok(m) if m <= 0o777 && !one.starts_with(['+', '-']) => self.umask = Some(m),
                _ => fail(format!("{one:?} is not an octal umask (000 to 777)")),
            },
            "nice" => match one.parse::<i32>() {
                Ok(n) if (-20..=19).contains(&n) => self.nice = Some(n),
                _ => fail(format!("{one:?} is not a nice value (-20 to 19)")),
            },
            "port" => {
                if one.bytes().all(|b| b.is_ascii_digit()) && one.parse::<u16>().is_ok() {
                    self.port = Some(one.to_string());
                } else {
                    fail(format!("{one:?} is not a port number (0 to 65535)"));
                }
            }
            "bind" | "interface" => self.bind = Some((origin(), one.to_string())),
            "rlimit_as" | "rlimit_cpu" | "rlimit_data" | "rlimit_files" | "rlimit_rss"
            | "rlimit_stack" => match parse_rlimit(&l.attr, one) {
                Ok(r) => {
                    self.rlimits.retain(|x| x.resource != r.resource);
                    self.rlimits.push(r);
                }
                Err(m) => fail(m),
            },
            "env" => {
                let mut vars = Vec::new();
                for v in &l.values {
                    match v.split_once('=') {
                        Some((k, val)) if !k.is_empty() => vars.push((k.to_string(), val.to_string())),
                        _ => fail(format!("{v:?} is not NAME=VALUE")),
                    }
                }
                if op == Op::Set {
                    self.env.clear();
                }
                self.env.extend(vars);
            }
            "passenv" => {
                self.passenv_given = true;
                edit_list(&mut self.passenv, op, &l.values);
            }
            "disabled" => edit_list(&mut self.disabled, op, &l.values),
            "enabled" => edit_list(self.enabled.get_or_insert_with(Vec::new), op, &l.values),
            "log_type" | "log_on_success" | "log_on_failure" => ignore(
                "doorman's log lines are fixed (one per connection, one per exit, to its own log)",
            ),
            "mdns" => match yes_no(one) {
                Ok(_) => ignore("doorman does not register services with mDNS"),
                Err(m) => fail(m),
            },
            "libwrap" => ignore("doorman does not consult TCP wrappers (hosts.allow)"),
            "only_from" | "no_access" => {
                if let Some(bad) = l.values.iter().find_map(|v| xinetd_addr(v).err()) {
                    fail(bad);
                } else if l.attr == "only_from" {
                    edit_list(self.only_from.get_or_insert_with(Vec::new), op, &l.values);
                } else {
                    edit_list(&mut self.no_access, op, &l.values);
                }
            }
            "doorman_options" => {
                let mut scratch = RawService::new(origin(), "x", SockType::Stream, Mode::Accept);
                match options::apply_words(&mut scratch, l.values.iter().map(String::as_str)) {
                    Ok(()) => edit_list(&mut self.doorman_options, op, &l.values),
                    Err(m) => fail(m),
                }
            }
            "access_times" => {
                fail("is not supported yet: doorman serves at all times".into())
            }
            "banner_fail" => match super::read_bounded(Path::new(one)) {
                Ok(b) if !b.is_empty() && b.len() <= MAX_MESSAGE => self.banner_fail = Some(b),
                Ok(b) => fail(format!(
                    "{one}: {} bytes; a refusal message is 1 to {MAX_MESSAGE} bytes",
                    b.len()
                )),
                Err(e) => fail(format!("{one}: {e}")),
            },
            "banner" | "banner_success" => fail(
                "is not supported: doorman sends nothing before the server runs (banner_fail is supported)"
                    .into(),
            ),
            "deny_time" => fail(
                "is not supported yet: doorman keeps no deny list (it goes with the SENSOR flag)"
                    .into(),
            ),
            "redirect" => {
                let port = l.values.get(1).map_or("", String::as_str);
                let host = if one == "localhost" { "127.0.0.1" } else { one };
                match crate::config::parse_target(&format!(
                    "{}:{port}",
                    if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host.to_string()
                    }
                )) {
                    Ok(a) => self.redirect = Some(a),
                    Err(_) => fail(format!(
                        "{:?}: expected an IP address and a port (no DNS names)",
                        l.values.join(" ")
                    )),
                }
            }
            "max_load" => {
                fail("is not supported yet: doorman does not watch the load average".into())
            }
            "rpc_version" | "rpc_number" => {
                fail("is not supported yet: doorman serves no RPC services".into())
            }
            other => fail(format!("unknown attribute {other:?}")),
        }
    }
}

/// `=` replaces the list, `+=` adds what is not there yet, `-=` removes.
fn edit_list(list: &mut Vec<String>, op: Op, values: &[String]) {
    match op {
        Op::Set => {
            list.clear();
            list.extend(values.iter().cloned());
        }
        Op::Add => {
            for v in values {
                if !list.contains(v) {
                    list.push(v.clone());
                }
            }
        }
        Op::Remove => list.retain(|x| !values.contains(x)),
    }
}

fn yes_no(v: &str) -> Result<bool, String> {
    match v {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => Err(format!("expected yes or no, found {other:?}")),
    }
}

fn parse_count(v: &str) -> Result<u32, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a number"));
    }
    v.parse().map_err(|_| format!("{v} is too large"))
}

/// `instances`, `per_source`: a number of at least 1, or `UNLIMITED`.
fn parse_limit(v: &str) -> Result<Option<u32>, String> {
    if v == "UNLIMITED" {
        return Ok(None);
    }
    match parse_count(v).map_err(|m| format!("{m} (expected a number or UNLIMITED)"))? {
        0 => Err("must be at least 1, or UNLIMITED".into()),
        n => Ok(Some(n)),
    }
}

/// `cps = N W`: over N connections in a second, pause W seconds.
fn parse_cps(values: &[String]) -> Result<Rate, String> {
    let max = parse_count(&values[0])?;
    let pause = parse_count(&values[1])?;
    if max == 0 || pause == 0 {
        return Err(format!(
            "`cps = {} {}`: both the rate and the pause must be at least 1",
            values[0], values[1]
        ));
    }
    Ok(Rate {
        max,
        interval: Duration::from_secs(1),
        pause: Duration::from_secs(u64::from(pause)),
    })
}

/// `rlimit_*`: a number (sizes with a K or M suffix, as xinetd reads
/// them) or `UNLIMITED`; the soft and hard limits both.
fn parse_rlimit(attr: &str, v: &str) -> Result<Rlimit, String> {
    let (resource, size) = match attr {
        "rlimit_as" => (libc::RLIMIT_AS, true),
        "rlimit_cpu" => (libc::RLIMIT_CPU, false),
        "rlimit_data" => (libc::RLIMIT_DATA, true),
        "rlimit_files" => (libc::RLIMIT_NOFILE, false),
        "rlimit_rss" => (libc::RLIMIT_RSS, true),
        _ => (libc::RLIMIT_STACK, true),
    };
    let value = if v == "UNLIMITED" {
        if attr == "rlimit_files" {
            return Err("rlimit_files takes a number of files, not UNLIMITED".into());
        }
        libc::RLIM_INFINITY
    } else {
        let (num, mult) = match v.as_bytes().last() {
            Some(b'k' | b'K') if size => (&v[..v.len() - 1], 1024u64),
            Some(b'm' | b'M') if size => (&v[..v.len() - 1], 1024 * 1024),
            _ => (v, 1),
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            let unit = if size { " (with K or M)" } else { "" };
            return Err(format!("{v:?} is not a number{unit} or UNLIMITED"));
        }
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .filter(|&n| n != libc::RLIM_INFINITY)
            .ok_or_else(|| format!("{v} is too large"))?
    };
    Ok(Rlimit {
        resource: resource as i32,
        soft: value,
        hard: value,
    })
}

/// The raw service a served (enabled, not internal) entry makes.
fn build(
    origin: &Origin,
    name: &str,
    id: &str,
    s: &Settings,
    k: &Kinds,
    errors: &mut Vec<ConfigError>,
) -> Option<RawService> {
    let given = |attr: &str| s.given.iter().any(|g| g == attr);
    let mut fail =
        |at: &Origin, field: &str, m: String| errors.push(ConfigError::new(at, Some(field), m));
    let sock_type = match (&s.socket_type, &s.protocol) {
        (Some((_, t)), Some((at, p, pt))) => {
            if t != pt {
                fail(
                    at,
                    "protocol",
                    format!("protocol {p} does not go with socket_type {}", t.as_str()),
                );
            }
            Some(*t)
        }
        (Some((_, t)), None) => Some(*t),
        (None, Some((_, _, t))) => Some(*t),
        (None, None) => {
            if !given("socket_type") && !given("protocol") {
                fail(
                    origin,
                    "socket_type",
                    "missing: set socket_type (stream or dgram)".into(),
                );
            }
            None
        }
    };
    let mode = match &s.wait {
        Some((at, mode)) => {
            let _ = at;
            Some(*mode)
        }
        None => {
            if !given("wait") {
                fail(
                    origin,
                    "wait",
                    "missing: set wait = yes or wait = no".into(),
                );
            }
            None
        }
    };
    if s.user.is_none() && !k.internal && s.redirect.is_none() {
        fail(
            origin,
            "user",
            "missing: xinetd services name the user their server runs as".into(),
        );
    }
    let argv = match (&s.server, &s.server_args) {
        // Served by doorman itself: the service's name says which.
        _ if k.internal => Some(vec![name.to_string()]),
        // Relayed to a running server: nothing to run.
        (None, _) if s.redirect.is_some() => Some(Vec::new()),
        (None, _) => {
            if !given("server") {
                fail(origin, "server", "missing: set the program to run".into());
            }
            None
        }
        (Some(_), args) if k.name_in_args => match args {
            Some((_, a)) if !a.is_empty() => Some(a.clone()),
            Some((at, _)) => {
                fail(
                    at,
                    "server_args",
                    "flags = NAMEINARGS needs server_args to start with argv[0]".into(),
                );
                None
            }
            None => {
                let at = k.flags_origin.as_ref().unwrap_or(origin);
                fail(
                    at,
                    "server_args",
                    "missing: flags = NAMEINARGS needs server_args (argv[0] first)".into(),
                );
                None
            }
        },
        (Some(server), args) => {
            let base = server.rsplit('/').next().unwrap_or(server);
            let mut argv = vec![base.to_string()];
            if let Some((_, a)) = args {
                argv.extend(a.iter().cloned());
            }
            Some(argv)
        }
    };
    let port = match (&s.port, k.unlisted) {
        (Some(p), _) => p.clone(),
        // Behind tcpmux: no port of its own.
        (None, _) if k.tcpmux => String::new(),
        (None, true) => {
            fail(
                origin,
                "port",
                "missing: UNLISTED services need a port".into(),
            );
            String::new()
        }
        // Looked up in /etc/services by the service name (not its id).
        (None, false) => name.to_string(),
    };
    let (host, family) = bind_family(s, k, &mut fail);
    let (Some(sock_type), Some(mode), Some(argv)) = (sock_type, mode, argv) else {
        return None;
    };
    let mut svc = RawService::new(origin.clone(), id, sock_type, mode);
    svc.binds = vec![RawBind::Inet { host, port, family }];
    svc.internal = k.internal;
    if k.tcpmux {
        svc.binds.clear();
        svc.tcpmux = Some((name.to_string(), k.tcpmux_plus));
    }
    svc.user = s.user.clone();
    svc.group = s.group.clone();
    svc.init_groups = s.groups.unwrap_or(false);
    svc.program = s.server.clone().unwrap_or_default();
    svc.argv = argv;
    svc.limits.max_instances = s.instances.flatten();
    svc.limits.max_per_source = s.per_source.flatten();
    svc.limits.rate = Some(s.cps.unwrap_or(DEFAULT_CPS));
    if sock_type == SockType::Stream {
        // xinetd: "no effect" on anything but TCP.
        svc.sock_opts.nodelay = k.nodelay;
        svc.sock_opts.keepalive = k.keepalive;
    }
    // As xinetd's setup_environ: the whole environment unless passenv
    // was given.
    svc.exec.inherit_env = !s.passenv_given;
    svc.exec.pass_env = s.passenv.clone();
    svc.exec.set_env = s.env.clone();
    svc.exec.umask = s.umask;
    svc.exec.nice = s.nice;
    svc.exec.rlimits = s.rlimits.clone();
    // Access: only_from allows, no_access denies, the more specific match
    // wins (as xinetd); an empty only_from lets no one in.
    let cidrs = |words: &[String]| -> Vec<Cidr> {
        let mut out = Vec::new();
        for c in words
            .iter()
            .flat_map(|w| xinetd_addr(w).unwrap_or_default())
        {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    };
    if let Some(only) = &s.only_from {
        svc.allow = cidrs(only);
        if svc.allow.is_empty() {
            svc.deny = acl::parse("any").expect("keyword");
        }
    }
    for c in cidrs(&s.no_access) {
        if !svc.deny.contains(&c) {
            svc.deny.push(c);
        }
    }
    if let Some(b) = &s.banner_fail {
        // xinetd writes banner_fail to clients it refuses.
        svc.refusal.message = b.clone().into();
        svc.refusal.deny = Fate::Message;
        svc.refusal.source = Fate::Message;
    }
    if let Some(a) = &s.redirect {
        svc.backend = Some(crate::config::Backend::new(a.clone(), false));
    }
    options::apply_words(&mut svc, s.doorman_options.iter().map(String::as_str))
        .expect("checked when read");
    Some(svc)
}

/// One `only_from`/`no_access` word: an address or prefix (IPv4 or
/// IPv6), xinetd's network form with trailing zero octets
/// (`10.0.0.0` is 10.0.0.0/8, `0.0.0.0` everyone), or its factorized form
/// `10.1.2.{3,4}`. Host, domain and network names are refused: doorman
/// makes no DNS lookups.
fn xinetd_addr(word: &str) -> Result<Vec<Cidr>, String> {
    if let Some(open) = word.find('{') {
        let (head, rest) = word.split_at(open);
        let inner = rest
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .ok_or_else(|| format!("{word:?}: expected a.b.c.{{x,y,...}}"))?;
        if !head.ends_with('.') || head.contains(':') {
            return Err(format!("{word:?}: expected a.b.c.{{x,y,...}}"));
        }
        let mut out = Vec::new();
        for part in inner.split(',') {
            out.extend(xinetd_addr(&format!("{head}{}", part.trim()))?);
        }
        return Ok(out);
    }
    if word == "0.0.0.0" {
        // xinetd: every client, IPv6 ones included.
        return acl::parse("any");
    }
    if let Ok(v4) = word.parse::<Ipv4Addr>() {
        let o = v4.octets();
        let zeros = o.iter().rev().take_while(|&&b| b == 0).count() as u8;
        return Ok(vec![
            Cidr::new(v4.into(), 32 - 8 * zeros).expect("valid length")
        ]);
    }
    acl::parse(word)
}

/// The address and family. xinetd (2.3.15, as Debian ships it) opens one
/// IPv6 socket that also takes IPv4 unless `v6only = yes`, falling back
/// to IPv4 where the host has no IPv6; doorman's `Both` (an IPv4 socket and
/// an optional IPv6-only one) serves the same clients. `flags = IPv4` or an
/// IPv4 `bind` address gives IPv4 only; an IPv6 `bind` address one socket
/// on it, dual-stack unless `v6only = yes`.
fn bind_family(
    s: &Settings,
    k: &Kinds,
    fail: &mut impl FnMut(&Origin, &str, String),
) -> (Option<String>, Family) {
    let v4_only = k.v4 && !k.v6;
    let v6_only = s.v6only == Some(true);
    let Some((at, host)) = &s.bind else {
        let family = if v4_only {
            Family::V4
        } else if v6_only {
            Family::V6
        } else {
            Family::Both
        };
        return (None, family);
    };
    let family = if host.parse::<Ipv4Addr>().is_ok() {
        if k.v6 && !k.v4 {
            fail(
                at,
                "bind",
                format!("{host} is an IPv4 address but flags say IPv6"),
            );
        }
        Family::V4
    } else if host.parse::<Ipv6Addr>().is_ok() {
        if v4_only {
            fail(
                at,
                "bind",
                format!("{host} is an IPv6 address but flags say IPv4"),
            );
        }
        if v6_only {
            Family::V6
        } else {
            Family::Dual
        }
    } else if v4_only {
        Family::V4
    } else if v6_only || k.v6 {
        // A host name with flags = IPv6: its IPv6 addresses.
        Family::V6
    } else {
        Family::Both
    };
    (Some(host.clone()), family)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> Parsed {
        parse(Path::new("x.conf"), text)
    }

    fn inet(s: &RawService) -> (Option<&str>, &str, Family) {
        match &s.binds[..] {
            [RawBind::Inet { host, port, family }] => (host.as_deref(), port.as_str(), *family),
            b => panic!("not one inet bind: {b:?}"),
        }
    }

    /// (line, field) of every error.
    fn where_(p: &Parsed) -> Vec<(usize, Option<&str>)> {
        p.errors
            .iter()
            .map(|e| (e.origin.line, e.field.as_deref()))
            .collect()
    }

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let d =
                std::env::temp_dir().join(format!("doorman-xinetd-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const ECHO: &str = "service echo\n{\n\tsocket_type = stream\n\twait = no\n\tuser = nobody\n\tserver = /bin/cat\n}\n";

    #[test]
    fn minimal_service() {
        let p = conf(ECHO);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let s = &p.services[0];
        assert_eq!(s.name, "echo");
        assert_eq!(s.origin, Origin::new("x.conf", 1));
        assert_eq!(inet(s), (None, "echo", Family::Both));
        assert_eq!((s.sock_type, s.mode), (SockType::Stream, Mode::Accept));
        assert_eq!(s.user.as_deref(), Some("nobody"));
        assert_eq!(s.program, "/bin/cat");
        assert_eq!(s.argv, ["cat"]);
        assert_eq!(s.limits.rate, Some(DEFAULT_CPS));
        assert_eq!(s.limits.max_instances, None);
        assert_eq!(s.handover, super::super::Handover::INETD);
        assert_eq!(s.fd_name, None);
        assert!(s.exec.inherit_env);
        assert!(s.exec.pass_env.is_empty());
        assert!(!s.init_groups);
        assert_eq!(s.v6only, None);
    }

    #[test]
    fn brace_on_the_service_line_and_glued_operators() {
        let p = conf("service x {\nsocket_type=dgram\nwait =yes\nuser= root\nserver = /usr/sbin/in.tftpd\nserver_args = -s /srv/tftp\nport = 69\n}\ndefaults{\n}\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let s = &p.services[0];
        assert_eq!((s.sock_type, s.mode), (SockType::Dgram, Mode::Wait));
        assert_eq!(s.argv, ["in.tftpd", "-s", "/srv/tftp"]);
        assert_eq!(inet(s).1, "69");
    }

    #[test]
    fn defaults_applied_and_overridden() {
        let p = conf("defaults\n{\n\tinstances = 10\n\tper_source = 3\n\tcps = 25 30\n\tumask = 022\n\tgroups = yes\n\tbind = 127.0.0.1\n\tpassenv = PATH\n}\n\
            service a\n{\n\tsocket_type = stream\n\twait = no\n\tuser = nobody\n\tserver = /bin/a\n}\n\
            service b\n{\n\tsocket_type = stream\n\twait = no\n\tuser = nobody\n\tserver = /bin/b\n\
            \tinstances = UNLIMITED\n\tper_source = 1\n\tcps = 5 2\n\tumask = 077\n\tgroups = no\n\tbind = ::1\n}\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let (a, b) = (&p.services[0], &p.services[1]);
        assert_eq!(a.limits.max_instances, Some(10));
        assert_eq!(a.limits.max_per_source, Some(3));
        assert_eq!(
            a.limits.rate,
            Some(Rate {
                max: 25,
                interval: Duration::from_secs(1),
                pause: Duration::from_secs(30)
            })
        );
        assert_eq!(a.exec.umask, Some(0o22));
        assert!(a.init_groups);
        assert_eq!(inet(a), (Some("127.0.0.1"), "a", Family::V4));
        assert_eq!(a.exec.pass_env, ["PATH"]);
        assert_eq!(b.limits.max_instances, None);
        assert_eq!(b.limits.max_per_source, Some(1));
        assert_eq!(b.limits.rate.unwrap().max, 5);
        assert_eq!(b.limits.rate.unwrap().pause, Duration::from_secs(2));
        assert_eq!(b.exec.umask, Some(0o77));
        assert!(!b.init_groups);
        assert_eq!(inet(b), (Some("::1"), "b", Family::Dual));
    }

    #[test]
    fn defaults_apply_wherever_they_stand() {
        let text = format!("{ECHO}defaults\n{{\ninstances = 4\n}}\n");
        let p = conf(&text);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.services[0].limits.max_instances, Some(4));
    }

    #[test]
    fn list_operators() {
        let svc = |name: &str, extra: &str| {
            format!("service {name}\n{{\nsocket_type = stream\nwait = no\nuser = nobody\nserver = /bin/x\n{extra}}}\n")
        };
        let text = format!(
            "defaults\n{{\npassenv = PATH LANG\npassenv = TZ\n}}\n{}{}{}{}",
            svc("a", "passenv += HOME\n"),
            svc("b", "passenv -= LANG\n"),
            svc("c", "passenv = HOME\npassenv += TERM\n"),
            svc("d", "env = A=1 B=x=y\nenv += C=\n"),
        );
        let p = conf(&text);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let env = |i: usize| p.services[i].exec.pass_env.clone();
        // In defaults, `=` adds as `+=` does.
        assert_eq!(env(0), ["PATH", "LANG", "TZ", "HOME"]);
        assert_eq!(env(1), ["PATH", "TZ"]);
        assert_eq!(env(2), ["HOME", "TERM"]);
        assert_eq!(env(3), ["PATH", "LANG", "TZ"]);
        // passenv given (here in defaults): only those variables pass.
        assert!(p.services.iter().all(|s| !s.exec.inherit_env));
        let set: Vec<(&str, &str)> = p.services[3]
            .exec
            .set_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(set, [("A", "1"), ("B", "x=y"), ("C", "")]);
        // `+=`/`-=` on a plain attribute, `-=` on env, a bad env word.
        let p = p_err("instances += 3\nenv -= A\nenv = NOEQUALS\n");
        assert_eq!(
            where_(&p),
            [(7, Some("instances")), (8, Some("env")), (9, Some("env"))]
        );
    }

    /// A valid service with `extra` lines from line 7 on.
    fn p_err(extra: &str) -> Parsed {
        conf(&format!(
            "service echo\n{{\nsocket_type = stream\nwait = no\nuser = nobody\nserver = /bin/cat\n{extra}}}\n"
        ))
    }

    #[test]
    fn access_lists_banner_fail_and_doorman_options() {
        let banner = std::env::temp_dir().join(format!("doorman-banner-{}", std::process::id()));
        std::fs::write(&banner, "go away\r\n").unwrap();
        let p = p_err(&format!(
            "only_from = 127.0.0.1 10.0.0.0 192.168.1.{{1,2}}\nonly_from += ::1\n\
             no_access = 10.1.0.0/16\nbanner_fail = {}\n\
             doorman_options = timeout=30 on-full=reset\n",
            banner.display()
        ));
        std::fs::remove_file(&banner).unwrap();
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let s = &p.services[0];
        let shown: Vec<String> = s.allow.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            shown,
            [
                "127.0.0.1/32",
                "10.0.0.0/8",
                "192.168.1.1/32",
                "192.168.1.2/32",
                "::1/128"
            ]
        );
        assert_eq!(s.deny[0].to_string(), "10.1.0.0/16");
        assert_eq!(&s.refusal.message[..], b"go away\r\n");
        assert_eq!(s.refusal.deny, Fate::Message);
        assert_eq!(s.refusal.full, Fate::Reset);
        assert_eq!(s.exec.runtime_max, Some(Duration::from_secs(30)));
        // An empty only_from lets no one in; 0.0.0.0 is everyone.
        let s = &p_err("only_from =\n").services[0];
        assert!(s.allow.is_empty() && s.deny.len() == 2);
        let s = &p_err("only_from = 0.0.0.0\n").services[0];
        assert_eq!(s.allow.len(), 2, "IPv4 and IPv6: everyone");
        assert!(s.allow.iter().all(|c| c.len == 0));
    }

    #[test]
    fn environment() {
        // No passenv anywhere: the whole environment, plus env.
        let s = &p_err("env = A=1\n").services[0];
        assert!(s.exec.inherit_env);
        assert_eq!(s.exec.set_env, [("A".to_string(), "1".to_string())]);
        // An empty passenv: nothing passes but env.
        let s = &p_err("passenv =\nenv = A=1\n").services[0];
        assert!(!s.exec.inherit_env);
        assert!(s.exec.pass_env.is_empty());
        let s = &p_err("passenv = TZ\n").services[0];
        assert_eq!(
            (s.exec.inherit_env, &s.exec.pass_env[..]),
            (false, &["TZ".to_string()][..])
        );
    }

    #[test]
    fn name_in_args() {
        let p = p_err("flags = NAMEINARGS\nserver_args = in.telnetd -h\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.services[0].argv, ["in.telnetd", "-h"]);
        assert_eq!(p.services[0].program, "/bin/cat");
        let p = p_err("flags = NAMEINARGS\n");
        assert_eq!(where_(&p), [(7, Some("server_args"))]);
        let p = p_err("flags = NAMEINARGS\nserver_args =\n");
        assert_eq!(where_(&p), [(8, Some("server_args"))]);
    }

    #[test]
    fn cps_default_and_explicit() {
        assert_eq!(conf(ECHO).services[0].limits.rate, Some(DEFAULT_CPS));
        let r = p_err("cps = 100 5\n").services[0].limits.rate.unwrap();
        assert_eq!(
            (r.max, r.interval, r.pause),
            (100, Duration::from_secs(1), Duration::from_secs(5))
        );
        let p = p_err("cps = 0 5\ncps = 10\n");
        assert_eq!(where_(&p), [(7, Some("cps")), (8, Some("cps"))]);
    }

    #[test]
    fn disabled_services() {
        // Nothing about a disabled service is interpreted: no warning, no
        // error for attributes doorman cannot honour.
        let p = conf("service a\n{\ndisable = yes\ntype = INTERNAL\nonly_from = 127.0.0.1\nlog_on_failure += USERID\n}\n");
        assert!(p.services.is_empty() && p.errors.is_empty() && p.warnings.is_empty());
        // Its shape is still checked.
        let p = conf("service a\n{\ndisable = yes\ncolour = blue\n}\n");
        assert_eq!(where_(&p), [(4, Some("colour"))]);
        let p = conf("service a\n{\ndisable = maybe\n}\n");
        assert_eq!(where_(&p), [(3, Some("disable"))]);
        // `disabled` and `enabled` in defaults name ids.
        let svc = |name: &str, id: &str| {
            format!("service {name}\n{{\nid = {id}\nsocket_type = stream\nwait = no\nuser = nobody\nserver = /bin/x\n}}\n")
        };
        let all = format!("{}{}{}", svc("a", "a-1"), svc("b", "b-1"), svc("c", "c-1"));
        let names = |p: &Parsed| {
            p.services
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        };
        let q = conf(&format!("defaults\n{{\ndisabled = b-1\n}}\n{all}"));
        assert_eq!(names(&q), ["a-1", "c-1"]);
        let q = conf(&format!(
            "defaults\n{{\nenabled = c-1\nenabled = a-1\n}}\n{all}"
        ));
        assert_eq!(names(&q), ["a-1", "c-1"]);
        // The id names the service; the port still comes from its name.
        assert_eq!(inet(&q.services[0]).1, "a");
    }

    #[test]
    fn errors_name_line_and_attribute_and_all_are_collected() {
        let p = conf(
            "\
service one
{
\tsocket_type = stream
\twait = maybe
\tuser = nobody
\tserver = bin/cat
}
# comment
service two
{
\tsocket_type = raw
\tprotocol = icmp
\twait = no
\tuser = nobody
\tserver = /bin/cat
\tinstances = 0
\tumask = 999
\tnice = 40
\tport = http
\trlimit_as = 10G
}
service three
{
\tsocket_type = dgram
\twait = no
\tuser = nobody
\tserver = /bin/cat
}
service four
{
\tprotocol = tcp
\twait = yes
\tuser = nobody
\tserver = /bin/cat
\tserver_args = -u
}
",
        );
        assert_eq!(
            where_(&p),
            [
                (4, Some("wait")),
                (6, Some("server")),
                (11, Some("socket_type")),
                (12, Some("protocol")),
                (16, Some("instances")),
                (17, Some("umask")),
                (18, Some("nice")),
                (19, Some("port")),
                (20, Some("rlimit_as")),
            ],
            "{:#?}",
            p.errors
        );
        // A bad service does not hide the good ones (three: UDP sessions).
        assert_eq!(p.services.len(), 2);
        assert_eq!(p.services[0].name, "three");
        assert_eq!(p.services[1].name, "four");
        assert_eq!(p.services[1].sock_type, SockType::Stream);
        assert_eq!(p.services[1].argv, ["cat", "-u"]);
    }

    #[test]
    fn missing_attributes_are_reported_at_the_service_line() {
        let p = conf("\n\nservice x\n{\n}\n");
        assert_eq!(
            where_(&p),
            [
                (3, Some("socket_type")),
                (3, Some("wait")),
                (3, Some("user")),
                (3, Some("server"))
            ]
        );
        let p = p_err("type = UNLISTED\n");
        assert_eq!(where_(&p), [(1, Some("port"))]);
        let p = p_err("type = UNLISTED\nport = 7777\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(inet(&p.services[0]).1, "7777");
    }

    #[test]
    fn socket_type_and_protocol() {
        let q = |st: &str| {
            let p = conf(&format!(
                "service x\n{{\n{st}\nwait = yes\nuser = nobody\nserver = /bin/x\n}}\n"
            ));
            (
                p.services.first().map(|s| s.sock_type),
                where_(&p).first().map(|w| w.1.map(str::to_string)),
            )
        };
        assert_eq!(q("protocol = udp"), (Some(SockType::Dgram), None));
        assert_eq!(q("protocol = tcp"), (Some(SockType::Stream), None));
        assert_eq!(q("socket_type = dgram"), (Some(SockType::Dgram), None));
        assert_eq!(
            q("socket_type = stream\nprotocol = udp").1,
            Some(Some("protocol".into()))
        );
        assert_eq!(q("protocol = unix").1, Some(Some("protocol".into())));
        assert_eq!(
            q("socket_type = seqpacket").1,
            Some(Some("socket_type".into()))
        );
    }

    #[test]
    fn unsupported_attributes_are_errors() {
        for (line, attr) in [
            ("deny_time = 60", "deny_time"),
            ("access_times = 2:00-9:00 12:00-24:00", "access_times"),
            ("max_load = 2.5", "max_load"),
            ("rpc_version = 1", "rpc_version"),
            ("flags = IDONLY", "flags"),
        ] {
            let p = p_err(&format!("{line}\n"));
            assert_eq!(where_(&p), [(7, Some(attr))], "{line}");
            assert!(p.errors[0].message.contains("not supported yet"), "{line}");
            assert!(p.services.is_empty());
        }
        for (line, attr) in [
            ("banner = /etc/issue", "banner"),
            ("banner_success = /etc/issue", "banner_success"),
            ("banner_fail = /nonexistent/banner", "banner_fail"),
            ("only_from = www.example.com", "only_from"),
            ("no_access = 10.0.0.0/99", "no_access"),
            ("doorman_options = timeout=x", "doorman_options"),
        ] {
            let p = p_err(&format!("{line}\n"));
            assert_eq!(where_(&p), [(7, Some(attr))], "{line}");
        }
        // In defaults too, reported once at the defaults line.
        let p = conf(&format!("defaults\n{{\nmax_load = 2\n}}\n{ECHO}{ECHO}"));
        assert_eq!(where_(&p), [(3, Some("max_load"))]);
        // Unknown attributes, and service-only attributes in defaults.
        let p = p_err("colour = blue\n");
        assert_eq!(where_(&p), [(7, Some("colour"))]);
        let p = conf("defaults\n{\nuser = root\nenabled = x\n}\n");
        assert_eq!(where_(&p), [(3, Some("user"))]);
        let p = p_err("disabled = x\n");
        assert_eq!(where_(&p), [(7, Some("disabled"))]);
    }

    #[test]
    fn ignored_attributes_warn_once_per_line() {
        let p = conf(&format!(
            "defaults\n{{\nlog_type = SYSLOG daemon info\nlog_on_success = PID HOST\n}}\n{ECHO}{ECHO}"
        ));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.services.len(), 2);
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(
            p.warnings[0].starts_with("x.conf:3: log_type: ignored"),
            "{}",
            p.warnings[0]
        );
        assert!(p.warnings[1].starts_with("x.conf:4: log_on_success: ignored"));
        let p = p_err("log_on_failure += USERID\nflags = REUSE NORETRY LABELED\nmdns = yes\nlibwrap = in.telnetd\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.warnings.len(), 4, "{:?}", p.warnings);
        assert!(p
            .warnings
            .iter()
            .any(|w| w.starts_with("x.conf:8: flags: NORETRY, LABELED ignored")));
    }

    #[test]
    fn families_and_socket_options() {
        let fam = |extra: &str| {
            let p = p_err(extra);
            assert!(p.errors.is_empty(), "{extra}: {:?}", p.errors);
            let s = &p.services[0];
            (
                inet(s).0.map(str::to_string),
                inet(s).2,
                s.sock_opts.nodelay,
                s.sock_opts.keepalive,
            )
        };
        assert_eq!(fam(""), (None, Family::Both, false, false));
        assert_eq!(fam("flags = IPv6\n").1, Family::Both);
        assert_eq!(fam("flags = IPv4\n").1, Family::V4);
        assert_eq!(fam("flags = IPv4 IPv6\n").1, Family::Both);
        assert_eq!(fam("v6only = yes\n").1, Family::V6);
        assert_eq!(fam("v6only = no\n").1, Family::Both);
        assert_eq!(
            fam("bind = 10.0.0.1\n"),
            (Some("10.0.0.1".into()), Family::V4, false, false)
        );
        assert_eq!(fam("interface = ::\nv6only = yes\n").1, Family::V6);
        assert_eq!(fam("bind = localhost\n").1, Family::Both);
        assert_eq!(fam("bind = localhost\nflags = IPv4\n").1, Family::V4);
        assert_eq!(
            fam("flags = NODELAY KEEPALIVE\n"),
            (None, Family::Both, true, true)
        );
        let p = p_err("flags = IPv4\nbind = ::1\n");
        assert_eq!(where_(&p), [(8, Some("bind"))]);
        let p = p_err("flags = FAST\n");
        assert_eq!(where_(&p), [(7, Some("flags"))]);
        let p = p_err("bind = 1.2.3.4\ninterface = 1.2.3.5\n");
        assert_eq!(where_(&p), [(8, Some("interface"))]);
    }

    #[test]
    fn skipped_kinds_warn() {
        for (extra, why) in [("type = RPC", "RPC"), ("flags = SENSOR", "SENSOR")] {
            let p = conf(&format!(
                "service echo\n{{\nid = echo-stream\n{extra}\nsocket_type = stream\n}}\n"
            ));
            assert!(p.errors.is_empty(), "{extra}: {:?}", p.errors);
            assert!(p.services.is_empty());
            assert_eq!(p.warnings.len(), 1);
            assert!(
                p.warnings[0].starts_with("x.conf:1: echo-stream: "),
                "{}",
                p.warnings[0]
            );
            assert!(p.warnings[0].contains(why), "{}", p.warnings[0]);
        }
        let p = p_err("type = WEIRD\n");
        assert_eq!(where_(&p), [(7, Some("type"))]);
    }

    #[test]
    fn exec_settings() {
        let p = p_err("umask = 027\nnice = -5\nrlimit_as = 64M\nrlimit_stack = 512k\nrlimit_cpu = 30\nrlimit_files = 256\nrlimit_data = UNLIMITED\nrlimit_rss = 1000\ngroup = daemon\ngroups = yes\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let s = &p.services[0];
        assert_eq!((s.exec.umask, s.exec.nice), (Some(0o27), Some(-5)));
        assert_eq!(s.group.as_deref(), Some("daemon"));
        assert!(s.init_groups);
        let r = |res: i32| {
            s.exec
                .rlimits
                .iter()
                .find(|r| r.resource == res)
                .map(|r| (r.soft, r.hard))
        };
        assert_eq!(r(libc::RLIMIT_AS as i32), Some((64 << 20, 64 << 20)));
        assert_eq!(r(libc::RLIMIT_STACK as i32), Some((512 << 10, 512 << 10)));
        assert_eq!(r(libc::RLIMIT_CPU as i32), Some((30, 30)));
        assert_eq!(r(libc::RLIMIT_NOFILE as i32), Some((256, 256)));
        assert_eq!(
            r(libc::RLIMIT_DATA as i32),
            Some((libc::RLIM_INFINITY, libc::RLIM_INFINITY))
        );
        assert_eq!(r(libc::RLIMIT_RSS as i32), Some((1000, 1000)));
        let p = p_err("rlimit_cpu = 5M\nrlimit_files = UNLIMITED\numask = 8\nnice = x\n");
        assert_eq!(
            where_(&p),
            [
                (7, Some("rlimit_cpu")),
                (8, Some("rlimit_files")),
                (9, Some("umask")),
                (10, Some("nice"))
            ]
        );
    }

    #[test]
    fn grammar_errors() {
        // `{` missing: reported at the service line; the next service is read.
        let p = conf(&format!("service a\nsocket_type = stream\n}}\n{ECHO}"));
        assert_eq!(where_(&p), [(1, Some("service"))]);
        assert_eq!(p.services.len(), 1);
        // `}` missing before the next service, and at the end of the file.
        let p = conf(&format!("service a\n{{\nwait = no\n{ECHO}service b\n{{\n"));
        assert_eq!(where_(&p), [(1, Some("service")), (11, Some("service"))]);
        assert_eq!(p.services.len(), 1);
        // Stray words, a second defaults block, include inside a block,
        // a line that is no assignment.
        let p = conf("bogus line\n{\nx = 1\n}\ndefaults\n{\n}\ndefaults\n{\n}\nservice\n}\n");
        assert_eq!(
            where_(&p),
            [(1, None), (8, Some("defaults")), (11, Some("service"))]
        );
        let p = p_err("include /etc/x\nwait no\n");
        assert_eq!(where_(&p), [(7, Some("include")), (8, None)]);
        let p = conf("}\nservice a b\n{\n}\n");
        assert_eq!(where_(&p), [(1, None), (2, Some("service"))]);
    }

    #[test]
    fn looks_like_xinetd() {
        assert!(looks_like("# c\n\n  service echo\n{\n}\n"));
        assert!(looks_like("defaults\n{\n}\n"));
        assert!(looks_like("defaults{\n}\n"));
        assert!(looks_like("includedir /etc/xinetd.d\n"));
        assert!(looks_like("include /etc/x.conf\n"));
        assert!(!looks_like("echo stream tcp nowait root internal\n"));
        assert!(!looks_like("# only comments\n"));
        assert!(!looks_like(""));
        assert!(!looks_like("services stream tcp nowait root /bin/x x\n"));
    }

    #[test]
    fn includedir_reads_files_in_order_and_skips_dotted_and_backups() {
        let d = TempDir::new("incdir");
        let svc = |name: &str| {
            format!("service {name}\n{{\nsocket_type = stream\nwait = no\nuser = nobody\nserver = /bin/x\nport = 1\n}}\n")
        };
        std::fs::create_dir(d.0.join("xinetd.d")).unwrap();
        std::fs::create_dir(d.0.join("xinetd.d/subdir")).unwrap();
        for name in [
            "zeta",
            "alpha",
            "Beta",
            "b.conf",
            "c~",
            ".hidden",
            "d.rpmsave",
        ] {
            d.write(
                &format!("xinetd.d/{name}"),
                &svc(&name.replace(['.', '~'], "_")),
            );
        }
        let names = |p: &Parsed| {
            p.services
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        };
        let p = parse_dir(&d.0.join("xinetd.d"));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(names(&p), ["Beta", "alpha", "zeta"]);
        // Through a config file, relative to it; defaults reach the files.
        let conf = d.write(
            "xinetd.conf",
            "defaults\n{\ninstances = 2\n}\nincludedir xinetd.d\ninclude extra\n",
        );
        d.write("extra", &svc("extra"));
        let p = parse_file(&conf);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(names(&p), ["Beta", "alpha", "zeta", "extra"]);
        assert!(p.services.iter().all(|s| s.limits.max_instances == Some(2)));
        assert_eq!(
            p.services[0].origin,
            Origin::new(d.0.join("xinetd.d/Beta"), 1)
        );
        // Missing targets are errors at the include line.
        let p = parse(&conf, "\nincludedir nosuchdir\ninclude nosuchfile\n");
        assert_eq!(where_(&p), [(2, Some("includedir")), (3, Some("include"))]);
        let p = parse_dir(&d.0.join("nosuchdir"));
        assert_eq!(where_(&p), [(0, None)]);
        let p = parse_file(&d.0.join("nosuchfile"));
        assert_eq!(where_(&p), [(0, None)]);
    }

    #[test]
    fn include_loops_are_bounded() {
        let d = TempDir::new("loop");
        let a = d.write("a", "include b\n");
        d.write("b", &format!("{ECHO}include a\n"));
        let p = parse_file(&a);
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert_eq!(p.errors[0].origin, Origin::new(d.0.join("b"), 8));
        assert!(p.errors[0].message.contains("include loop"));
        assert_eq!(p.services.len(), 1);
        // A file including itself; a directory including itself.
        let s = d.write("self", "include self\n");
        assert_eq!(parse_file(&s).errors.len(), 1);
        std::fs::create_dir(d.0.join("dir")).unwrap();
        d.write("dir/x", "includedir ../dir\n");
        assert_eq!(parse_dir(&d.0.join("dir")).errors.len(), 1);
        // A chain deeper than the limit, with no loop.
        for i in 0..20 {
            d.write(&format!("n{i}"), &format!("include n{}\n", i + 1));
        }
        d.write("n20", ECHO);
        let p = parse_file(&d.0.join("n0"));
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert!(p.errors[0].message.contains("nest more than 16"));
        assert_eq!(p.errors[0].field.as_deref(), Some("include"));
    }

    #[test]
    fn non_utf8_is_an_error_with_its_line() {
        let d = TempDir::new("utf8");
        let f = d.0.join("bad");
        std::fs::write(&f, b"# ok\n# \xff\n").unwrap();
        let p = parse_file(&f);
        assert_eq!(where_(&p), [(2, None)]);
    }
}

#[cfg(test)]
mod real_files {
    use super::*;

    fn debian() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/xinetd/debian")
    }

    /// Debian's shipped /etc/xinetd.conf and /etc/xinetd.d (xinetd
    /// 1:2.3.15.3-1): every service internal and disabled, so nothing to
    /// serve and nothing to say.
    #[test]
    fn debian_files_parse_clean() {
        let root = debian();
        let conf = root.join("etc/xinetd.conf");
        assert!(looks_like(&std::fs::read_to_string(&conf).unwrap()));
        let p = parse_file_in(&conf, Some(&root));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(p.services.is_empty());
        let p = parse_dir(&root.join("etc/xinetd.d"));
        assert!(p.errors.is_empty() && p.warnings.is_empty() && p.services.is_empty());
    }

    /// Enabled, each of them is an internal service doorman serves.
    #[test]
    fn debian_services_enabled_are_internal() {
        let dir = debian().join("etc/xinetd.d");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        assert_eq!(names.len(), 12);
        let mut warnings = 0;
        let mut internal = 0;
        for f in names {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(looks_like(&text), "{}", f.display());
            let enabled = text.replace("disable\t\t= yes", "disable\t\t= no");
            let p = parse(&f, &enabled);
            assert!(p.errors.is_empty(), "{}: {:?}", f.display(), p.errors);
            assert!(p.services.iter().all(|s| s.internal), "{}", f.display());
            warnings += p.warnings.len();
            internal += p.services.len();
        }
        assert_eq!(warnings, 0);
        // chargen, daytime, discard, echo, time: tcp and udp each, plus the
        // -udp files and `servers`, `services`.
        assert_eq!(internal, 17);
    }
}
