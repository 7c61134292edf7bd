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
