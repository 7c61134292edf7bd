//! The INI subset systemd uses: sections, `\\` continuation, comments,
//! drop-in directories.

use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Origin};

/// One `Key=Value` as written, with where.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub section: String,
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

/// Reads a unit file and its drop-ins (`FILE.d/*.conf`, in name order).
pub fn read_unit(path: &Path, errors: &mut Vec<ConfigError>) -> Option<Vec<Assignment>> {
    let text = match crate::config::read_text_bounded(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError::new(&Origin::new(path, 0), None, e.to_string()));
            return None;
        }
    };
    let mut out = parse_ini(path, &text, errors);
    let mut dropin_dir = path.as_os_str().to_owned();
    dropin_dir.push(".d");
    if let Ok(entries) = std::fs::read_dir(&dropin_dir) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        files.sort();
        for f in files {
            match crate::config::read_text_bounded(&f) {
                Ok(t) => out.extend(parse_ini(&f, &t, errors)),
                Err(e) => errors.push(ConfigError::new(&Origin::new(&f, 0), None, e.to_string())),
            }
        }
    }
    Some(out)
}

/// The INI subset of systemd.syntax(7).
fn parse_ini(path: &Path, text: &str, errors: &mut Vec<ConfigError>) -> Vec<Assignment> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let origin = Origin::new(path, i + 1);
        let mut line = raw.trim().to_string();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        // Continuation: a trailing backslash joins the next line (comment
        // lines in between are skipped, as systemd does).
        while line.ends_with('\\') {
            line.pop();
            line.push(' ');
            match lines.next() {
                Some((_, next)) => {
                    let next = next.trim();
                    if next.starts_with('#') || next.starts_with(';') {
                        // A comment inside a continuation is skipped and the
                        // continuation goes on (systemd.syntax(7)).
                        line.pop();
                        line.push('\\');
                        continue;
                    }
                    line.push_str(next);
                }
                None => break,
            }
        }
        if let Some(name) = line.strip_prefix('[') {
            match name.strip_suffix(']') {
                Some(n) => section = n.to_string(),
                None => errors.push(ConfigError::new(
                    &origin,
                    None,
                    format!("bad section header {line:?}"),
                )),
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            errors.push(ConfigError::new(
                &origin,
                None,
                format!("expected Key=Value, found {line:?}"),
            ));
            continue;
        };
        if section.is_empty() {
            errors.push(ConfigError::new(
                &origin,
                Some(k.trim()),
                "assignment outside of a section",
            ));
            continue;
        }
        out.push(Assignment {
            section: section.clone(),
            key: k.trim().to_string(),
            value: v.trim().to_string(),
            origin,
        });
    }
    out
}
