//! One log line per event, with greppable `key=value` fields, or the same
//! event as one JSON object per line (`--log-format json`).
//!
//! Owns: the shapes of the event lines (`listen`, `ready`, `accept`,
//! `wake`, `exit`, `refuse`, `pause`, `resume`, `reload`, `stop`, `state`)
//! and JSON escaping. Must not: decide what to log or when.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

/// The `log` target of event records; the formatter in `main.rs` passes
/// their text through as it is.
pub const TARGET: &str = "doorman::event";

/// Milliseconds since `since`, with one decimal (`87.3`): the `took=`
/// field of the `ready` and `reload` lines.
pub fn took(since: std::time::Instant) -> String {
    let us = since.elapsed().as_micros();
    format!("{}.{}ms", us / 1000, us % 1000 / 100)
}

/// When this process started its work: what `ready`'s `took=` counts
/// from. Set first thing in `main`; unset (in tests of the library
/// parts), it counts from the first call.
pub fn started() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

/// Selects JSON lines instead of `key=value` text.
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A field's value: text, or a number (unquoted in JSON).
pub enum V<'a> {
    S(&'a str),
    O(String),
    N(i64),
}

impl V<'_> {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            V::S(s) => (*s).into(),
            V::O(s) => s.as_str().into(),
            V::N(n) => n.to_string().into(),
        }
    }
}

/// Whether an event at `level` would be logged: callers on the
/// per-connection path ask first, so as not to build fields (strings,
/// vectors) that `emit` would throw away.
pub fn enabled(level: log::Level) -> bool {
    log::log_enabled!(target: TARGET, level)
}

/// Logs `event` with its fields at `level`.
pub fn emit(level: log::Level, event: &str, fields: &[(&str, V<'_>)]) {
    if !enabled(level) {
        return;
    }
    if json() {
        let line = to_json(event, fields);
        log::log!(target: TARGET, level, "{line}");
        return;
    }
    // One buffer, reused: a line costs no allocation (two per connection
    // at the default level, `accept` and `exit`).
    thread_local! {
        static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    LINE.with(|b| {
        let Ok(mut s) = b.try_borrow_mut() else {
            return; // a line logged while one is built: not possible today
        };
        s.clear();
        s.push_str(event);
        for (k, v) in fields {
            let (k, ms) = match *k {
                "duration_ms" => ("duration", true),
                k => (k, false),
            };
            let _ = write!(s, " {k}=");
            match v {
                V::S(t) => s.push_str(t),
                V::O(t) => s.push_str(t),
                V::N(n) => {
                    let _ = write!(s, "{n}");
                }
            }
            if ms {
                s.push_str("ms");
            }
        }
        log::log!(target: TARGET, level, "{}", s.as_str());
    });
}

fn to_json(event: &str, fields: &[(&str, V<'_>)]) -> String {
    let mut s = String::from("\"event\":");
    escape_into(&mut s, event);
    for (k, v) in fields {
        s.push(',');
        escape_into(&mut s, k);
        s.push(':');
        match v {
            V::N(n) => {
                let _ = write!(s, "{n}");
            }
            other => escape_into(&mut s, &other.text()),
        }
    }
    s
}

/// Appends `text` as a JSON string.
pub fn escape_into(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields() {
        let s = to_json(
            "exit",
            &[
                ("service", V::S("a\"b/tcp")),
                ("pid", V::N(7)),
                ("reason", V::O("x\ny".into())),
            ],
        );
        assert_eq!(
            s,
            r#""event":"exit","service":"a\"b/tcp","pid":7,"reason":"x\ny""#
        );
    }
}

thread_local! {
    /// Log lines gathered while a load binds its sockets (see [`gather`]).
    static GATHERED: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// Gathered lines are written out once they fill this much.
const GATHER_BLOCK: usize = 64 * 1024;

/// While the returned guard lives, log lines on stderr are gathered and
/// written in blocks of [`GATHER_BLOCK`] (and the rest when it drops)
/// instead of one `write` each: a load of 10,000 services logs 10,000
/// `listen` lines, which cost 10,000 system calls otherwise. Lines keep
/// their order; nothing else is held back.
pub fn gather() -> Gathering {
    GATHERED.with(|g| {
        let mut g = g.borrow_mut();
        if g.is_none() {
            *g = Some(Vec::with_capacity(GATHER_BLOCK));
        }
    });
    Gathering(())
}

pub struct Gathering(());

impl Drop for Gathering {
    fn drop(&mut self) {
        if let Some(rest) = GATHERED.with(|g| g.borrow_mut().take()) {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), &rest);
        }
    }
}

/// doorman's stderr as the logger writes it: each line in one `write`,
/// or gathered (see [`gather`]).
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let gathered = GATHERED.with(|g| {
            let mut g = g.borrow_mut();
            let Some(buf) = g.as_mut() else {
                return false;
            };
            buf.extend_from_slice(data);
            if buf.len() >= GATHER_BLOCK {
                let _ = std::io::stderr().write_all(buf);
                buf.clear();
            }
            true
        });
        if !gathered {
            std::io::stderr().write_all(data)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
