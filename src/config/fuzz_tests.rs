//! Generated-input tests of every configuration parser (issue 9).
//!
//! Owns: the properties every parser must keep whatever it is fed
//! (arbitrary bytes, lines made of the grammar's own words and of junk,
//! and structured mutations of valid files: a field dropped, duplicated,
//! swapped or truncated, huge numbers, NUL bytes, invalid UTF-8, 1 MB
//! lines): it returns (no panic, no hang), and every problem it reports
//! names the file and a line of it. A valid generated file must come back
//! through `--check`'s normalized listing as the services it was made from,
//! however it is spaced and commented.
//!
//! Two kinds of target, each one function in a table:
//! - [`TEXT_TARGETS`]: a whole file's text → the problems reported (with
//!   where); the harness checks every origin.
//! - [`VALUE_TARGETS`]: one value's bytes (an address, a duration, a size,
//!   a CIDR list, a `/etc/services` file...) → must not panic, and keeps
//!   the target's own property. A PROXY protocol header parser is one more
//!   entry here.
//!
//! cargo-fuzz: not set up. Its targets link against a library crate and
//! doorman is a binary crate only; a `src/lib.rs` would move the module
//! tree that other work is editing. The two tables below are the fuzz
//! entry points: a `fuzz_target!` per entry is all a later lib target
//! needs. Meanwhile a longer run is `PROPTEST_CASES=20000 cargo test
//! --bin doorman -- fuzz_tests props`.
//!
//! Bounded: each property runs a fixed number of cases (`PROPTEST_CASES`
//! overrides it, for a longer local run), all together well under a minute
//! in a debug build on two cores. Failures are not persisted to files; a
//! bug found here gets a plain regression test next to its fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use super::inetd::{self, RawBind};
use super::{acl, options, resolve, unit, xinetd, Sources};
use crate::error::ConfigError;

/// `n` cases, or `PROPTEST_CASES` when set (a longer local run).
pub(crate) fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A directory under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("doorman-fuzz-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn write(&self, name: &str, text: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a text target reported about one file's text.
struct Report {
    /// The files read, each with its number of lines.
    files: Vec<(PathBuf, usize)>,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    /// Whether line 0 (the file as a whole) is a valid place for an error:
    /// a unit pair's missing directives are reported at the unit, not a line.
    whole_file: bool,
}

fn lines_of(text: &str) -> usize {
    text.lines().count()
}

fn target_inetd(_dir: &Scratch, text: &str) -> Report {
    let path = Path::new("fuzz/inetd.conf");
    let p = inetd::parse(path, text);
    Report {
        files: vec![(path.to_path_buf(), lines_of(text))],
        errors: p.errors,
        warnings: p.warnings,
        whole_file: false,
    }
}

fn target_xinetd(dir: &Scratch, text: &str) -> Report {
    // A real path: `include` and `includedir` are read relative to it.
    let path = dir.0.join("xinetd.conf");
    let p = xinetd::parse(&path, text);
    Report {
        files: vec![(path, lines_of(text))],
        errors: p.errors,
        warnings: p.warnings,
        whole_file: false,
    }
}

/// The text as a `.socket` unit, paired with a fixed valid service.
fn target_socket_unit(dir: &Scratch, text: &str) -> Report {
    let sock = dir.write("f.socket", text.as_bytes());
    let svc_text = "[Service]\nExecStart=/bin/cat\n";
    let svc = dir.write("f.service", svc_text.as_bytes());
    let tsvc = dir.write("f@.service", svc_text.as_bytes());
    let p = unit::parse_socket_unit(&sock);
    Report {
        files: vec![(sock, lines_of(text)), (svc, 2), (tsvc, 2)],
        errors: p.errors,
        warnings: p.warnings,
        whole_file: true,
    }
}

/// The text as a `.service` unit and a drop-in, behind a fixed socket.
fn target_service_unit(dir: &Scratch, text: &str) -> Report {
    let sock_text = "[Socket]\nListenStream=127.0.0.1:0\nAccept=yes\n";
    let sock = dir.write("g.socket", sock_text.as_bytes());
    let svc = dir.write("g@.service", text.as_bytes());
    std::fs::create_dir_all(dir.0.join("g@.service.d")).unwrap();
    let dropin = dir.write("g@.service.d/10-x.conf", text.as_bytes());
    let p = unit::parse_socket_unit(&sock);
    Report {
        files: vec![(sock, 3), (svc, lines_of(text)), (dropin, lines_of(text))],
        errors: p.errors,
        warnings: p.warnings,
        whole_file: true,
    }
}

type TextTarget = fn(&Scratch, &str) -> Report;

/// Every parser of a whole configuration file.
const TEXT_TARGETS: &[(&str, TextTarget)] = &[
    ("inetd", target_inetd),
    ("xinetd", target_xinetd),
    ("socket-unit", target_socket_unit),
    ("service-unit", target_service_unit),
];

/// The harness's property over one report: every error names one of the
/// files read and a line that exists in it; every warning starts with
/// `file:line`.
fn check_report(name: &str, r: &Report) -> Result<(), TestCaseError> {
    for e in &r.errors {
        let Some((_, n)) = r.files.iter().find(|(f, _)| **f == *e.origin.file) else {
            return Err(TestCaseError::fail(format!(
                "{name}: error names no file read: {e}"
            )));
        };
        let ok = (1..=*n).contains(&e.origin.line) || (r.whole_file && e.origin.line == 0);
        prop_assert!(ok, "{name}: error at line {} of {n}: {e}", e.origin.line);
        prop_assert!(!e.message.is_empty(), "{name}: empty message: {e:?}");
    }
    for w in &r.warnings {
        let named = r.files.iter().any(|(f, n)| {
            let f = f.display().to_string();
            w.strip_prefix(&f)
                .and_then(|rest| rest.strip_prefix(':'))
                .and_then(|rest| rest.split(':').next())
                .and_then(|l| l.parse::<usize>().ok())
                .is_some_and(|l| l <= *n)
                || w.starts_with(&format!("{f}: "))
        });
        prop_assert!(named, "{name}: warning names no file:line: {w}");
    }
    Ok(())
}

fn run_text_targets(text: &str) -> Result<(), TestCaseError> {
    for (name, target) in TEXT_TARGETS {
        let dir = Scratch::new(name);
        let r = target(&dir, text);
        check_report(name, &r)?;
    }
    Ok(())
}

// ---- value parsers -------------------------------------------------------

fn value_listen(b: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(b);
    if let Ok(RawBind::Inet { port, .. }) = inetd::parse_listen(&s) {
        prop_assert!(!port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()));
    }
    Ok(())
}

fn value_secs(b: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(b);
    if let Ok(d) = options::secs(&s, "t", true) {
        prop_assert!(!d.is_zero());
    }
    Ok(())
}

fn value_timespan(b: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(b);
    if let Ok(Some(d)) = unit::parse_timespan(&s) {
        // A time span must be usable as a deadline from now.
        prop_assert!(std::time::Instant::now().checked_add(d).is_some());
    }
    Ok(())
}

fn value_cidrs(b: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(b);
    if let Ok(list) = acl::parse_list(s.split_whitespace()) {
        for c in list {
            let max = if c.addr.is_ipv4() { 32 } else { 128 };
            prop_assert!(c.len <= max);
            prop_assert!(c.contains(c.addr), "{c} does not contain its own address");
            // The listing's form parses back to the same prefix.
            prop_assert_eq!(acl::parse(&c.to_string()).unwrap(), vec![c]);
        }
    }
    Ok(())
}

fn value_services(b: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(b);
    for (name, _port, proto) in resolve::parse_services(&s) {
        prop_assert!(!name.is_empty() && !name.contains(char::is_whitespace));
        prop_assert!(!name.contains('#') && !proto.contains('#'));
    }
    Ok(())
}

fn value_message(b: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(b);
    if let Ok(m) = options::message(&s) {
        prop_assert!(!m.is_empty() && m.len() <= super::MAX_MESSAGE);
    }
    Ok(())
}

fn value_words(b: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(b);
    if let Ok(w) = unit::split_words(&s) {
        prop_assert!(w.len() <= s.len());
    }
    Ok(())
}

/// Every option of the one option grammar, through the inetd.conf wait
/// field (sizes, rlimits, counts, durations, lists).
fn value_option(b: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(b);
    let mut raw = inetd::RawService::new(
        crate::error::Origin::new("t", 1),
        "t",
        super::SockType::Stream,
        super::Mode::Accept,
    );
    for name in options::NAMES {
        let _ = options::apply(&mut raw, name, &s);
    }
    for r in &raw.exec.rlimits {
        prop_assert!(r.soft <= r.hard);
    }
    Ok(())
}

fn value_env_file(b: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(b);
    for (k, _) in resolve::parse_env_file(&s) {
        prop_assert!(!k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    }
    Ok(())
}

/// The PROXY header: any bytes, any prefix of them, any version: never a
/// panic, and a whole header is never longer than what was given nor than
/// the bound.
fn value_proxy(b: &[u8]) -> Result<(), TestCaseError> {
    use crate::config::ProxyVersion;
    use crate::proxy::{self, Header};
    // Also behind each signature, so that the parsers' insides are reached.
    let v1 = [b"PROXY ".as_slice(), b].concat();
    let v2 = [proxy::V2_SIG.as_slice(), b].concat();
    for buf in [b, &v1[..], &v2[..]] {
        for cut in [buf.len(), buf.len() / 2, buf.len().min(16)] {
            for v in [ProxyVersion::V1, ProxyVersion::V2, ProxyVersion::Any] {
                if let Ok(Header::Done { len, .. }) = proxy::parse(&buf[..cut], v) {
                    prop_assert!(len <= cut && len <= proxy::MAX);
                }
            }
        }
    }
    Ok(())
}

type ValueTarget = fn(&[u8]) -> Result<(), TestCaseError>;

/// Every parser of one value.
const VALUE_TARGETS: &[(&str, ValueTarget)] = &[
    ("proxy-header", value_proxy),
    ("--listen", value_listen),
    ("duration", value_secs),
    ("timespan", value_timespan),
    ("cidr-list", value_cidrs),
    ("/etc/services", value_services),
    ("message", value_message),
    ("exec-words", value_words),
    ("options", value_option),
    ("environment-file", value_env_file),
];

// ---- generators ----------------------------------------------------------

/// Words of every grammar, valid and not, with the hard cases: huge
/// numbers, NUL, non-ASCII, lone punctuation.
const WORDS: &[&str] = &[
    "echo",
    "9999",
    "0",
    "65536",
    "99999999999999999999",
    "-1",
    "127.0.0.1:0",
    "[::1]:0",
    "[::1",
    "*:",
    "*:0",
    "10.0.0.1:",
    "/run/x.sock",
    ":root:root:0600:/tmp/x.sock",
    ":::9999:/x",
    "unix:/x",
    "stream",
    "dgram",
    "seqpacket",
    "raw",
    "tcp",
    "tcp4",
    "tcp6",
    "tcp46",
    "udp",
    "udp46",
    "unix",
    "rpc/tcp",
    "tcp,sndbuf=64k",
    "tcp,rcvbuf=99999999m",
    "nowait",
    "wait",
    "nowait.0",
    "nowait.99999999999",
    "nowait/4/60/2",
    "nowait/1/2/3/4",
    "wait/",
    "nowait,",
    "nowait,handover=fd3",
    "nowait,timeout=30",
    "nowait,timeout=9999999999h",
    "nowait,message=a\\,b\\x4",
    "nowait,allow=10.0.0.0/33",
    "nowait,crash=3/10s/1s/5s",
    "nowait,nofile=1:0",
    "nowait,source-rate=5/0s",
    "nowait,rate=1/1ms",
    "root",
    "nobody",
    "nobody:nogroup",
    "root.root",
    "root/class",
    ":",
    "/bin/cat",
    "internal",
    "cat",
    "-n",
    "\0",
    "é",
    "\u{feff}",
    "#",
    "=",
    "+=",
    "-=",
    "{",
    "}",
    "service",
    "defaults",
    "service echo",
    "include",
    "includedir",
    "nothere",
    "socket_type",
    "wait = no",
    "user = root",
    "server = /bin/cat",
    "server_args = -n",
    "port = 99999999999",
    "cps = 1 99999999999",
    "instances = UNLIMITED",
    "instances = 99999999999",
    "only_from = 10.0.0.{1,2} ::1",
    "no_access = 0.0.0.0",
    "flags = IPv4 IPv6",
    "env = A=b",
    "passenv += PATH",
    "disable = yes",
    "bind = 127.0.0.1",
    "bind = ::1",
    "rlimit_as = 99999999999G",
    "nice = -99999999999",
    "doorman_options = timeout=3 allow=",
    "type = INTERNAL UNLISTED",
    "protocol = udp",
    "redirect = 1.2.3.4 5",
    "v6only = maybe",
    "id = x",
    "[Socket]",
    "[Service]",
    "[Unit]",
    "[Install",
    "ListenStream=127.0.0.1:0",
    "ListenStream=99999999999",
    "ListenDatagram=[::1]:0",
    "ListenSequentialPacket=/run/y",
    "ListenStream=@abstract",
    "ListenStream=vsock:1:2",
    "Accept=yes",
    "Accept=maybe",
    "MaxConnections=99999999999",
    "MaxConnectionsPerSource=3",
    "TriggerLimitIntervalSec=99999999999999999999",
    "TriggerLimitBurst=2",
    "PollLimitIntervalSec=1e9",
    "Backlog=-1",
    "SocketMode=0999",
    "ExecStart=/bin/cat",
    "ExecStart=-/bin/cat \"a b",
    "ExecStart=@/bin/cat cat %i %Z",
    "ExecStart=",
    "User=nobody",
    "Group=nogroup",
    "SupplementaryGroups=root nogroup",
    "RuntimeMaxSec=99999999999999999999999",
    "RuntimeMaxSec=0.0000001us",
    "TimeoutStopSec=infinity",
    "TimeoutStopSec=1.5.5s",
    "LimitNOFILE=2:1",
    "LimitCPU=99999999999999999999999",
    "LimitRTTIME=18446744073709551615",
    "LimitAS=17179869184G",
    "KillSignal=SIGFOO",
    "KillSignal=99",
    "Environment=\"A=b c\"",
    "Environment=A",
    "EnvironmentFile=-nothere",
    "StandardInput=socket",
    "StandardOutput=null",
    "X-Doorman-Options=timeout=3",
    "Service=missing.service",
    "Foo=bar",
    "no equals sign",
    "trailing \\",
    "\\",
    ";comment",
    "Nice=-99999999999",
    "UMask=8888",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(WORDS).prop_map(str::to_string),
        1 => "[ -~]{0,12}",
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

/// A line of words joined by spaces or tabs.
fn line() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (word(), prop_oneof![Just(" "), Just("\t"), Just("  ")]),
        0..8,
    )
    .prop_map(|ws| {
        ws.into_iter()
            .map(|(w, sep)| format!("{w}{sep}"))
            .collect::<String>()
    })
}

fn text_of_lines() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..24).prop_map(|ls| ls.join("\n"))
}

/// A valid inetd.conf service line, as fields.
fn inetd_fields() -> impl Strategy<Value = Vec<String>> {
    (
        prop_oneof![
            Just("127.0.0.1:0"),
            Just("[::1]:0"),
            Just("*:9"),
            Just("echo")
        ],
        prop_oneof![
            Just("nowait"),
            Just("nowait/4/60/2"),
            Just("nowait.10,timeout=5")
        ],
        prop_oneof![Just("root"), Just("nobody"), Just("nobody:root")],
        prop::collection::vec("[a-z]{1,6}", 0..3),
    )
        .prop_map(|(addr, wait, user, args)| {
            let mut f: Vec<String> = [addr, "stream", "tcp", wait, user, "/bin/cat", "cat"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            f.extend(args);
            f
        })
}

/// One structured mutation of a valid file's fields.
#[derive(Clone, Debug)]
enum Mutation {
    Drop(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Truncate(usize, usize),
    HugeNumber(usize),
    Nul(usize, usize),
    /// A field one mebibyte long.
    Mebibyte(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = 0usize..12;
    prop_oneof![
        4 => i.clone().prop_map(Mutation::Drop),
        4 => i.clone().prop_map(Mutation::Duplicate),
        4 => (i.clone(), i.clone()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        4 => (i.clone(), 0usize..8).prop_map(|(a, b)| Mutation::Truncate(a, b)),
        4 => i.clone().prop_map(Mutation::HugeNumber),
        4 => (i.clone(), 0usize..8).prop_map(|(a, b)| Mutation::Nul(a, b)),
        1 => i.prop_map(Mutation::Mebibyte),
    ]
}

fn apply_mutation(f: &mut Vec<String>, m: &Mutation) {
    if f.is_empty() {
        return;
    }
    let at = |i: usize| i % f.len();
    let cut = |s: &str, n: usize| {
        let mut k = n.min(s.len());
        while !s.is_char_boundary(k) {
            k -= 1;
        }
        k
    };
    match *m {
        Mutation::Drop(i) => {
            f.remove(at(i));
        }
        Mutation::Duplicate(i) => {
            let i = at(i);
            f.insert(i, f[i].clone());
        }
        Mutation::Swap(a, b) => {
            let (a, b) = (at(a), at(b));
            f.swap(a, b);
        }
        Mutation::Truncate(i, n) => {
            let i = at(i);
            let k = cut(&f[i], n);
            f[i].truncate(k);
        }
        Mutation::HugeNumber(i) => {
            let i = at(i);
            // Every digit run becomes a number no integer type holds.
            let mut out = String::new();
            let mut in_digits = false;
            for c in f[i].chars() {
                if c.is_ascii_digit() {
                    if !in_digits {
                        out.push_str("184467440737095516160000");
                    }
                    in_digits = true;
                } else {
                    in_digits = false;
                    out.push(c);
                }
            }
            if out == f[i] {
                out.push_str("99999999999999999999999");
            }
            f[i] = out;
        }
        Mutation::Nul(i, n) => {
            let i = at(i);
            let k = cut(&f[i], n);
            f[i].insert(k, '\0');
        }
        Mutation::Mebibyte(i) => {
            let i = at(i);
            f[i] = f[i].repeat((1 << 20) / f[i].len().max(1) + 1);
        }
    }
}

/// A valid xinetd service block as attribute lines.
fn xinetd_block() -> impl Strategy<Value = Vec<String>> {
    (
        "[a-z]{1,8}",
        prop_oneof![Just("no"), Just("yes")],
        prop_oneof![Just("root"), Just("nobody")],
    )
        .prop_map(|(name, wait, user)| {
            vec![
                format!("service {name}"),
                "{".into(),
                "socket_type = stream".into(),
                format!("wait = {wait}"),
                format!("user = {user}"),
                "port = 0".into(),
                "bind = 127.0.0.1".into(),
                "server = /bin/cat".into(),
                "server_args = -n".into(),
                "instances = 5".into(),
                "cps = 10 5".into(),
                "}".into(),
            ]
        })
}

/// A valid unit file as lines.
fn unit_lines() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![Just("yes"), Just("no")].prop_map(|accept| {
        vec![
            "[Socket]".into(),
            "ListenStream=127.0.0.1:0".into(),
            format!("Accept={accept}"),
            "MaxConnections=5".into(),
            "TriggerLimitIntervalSec=2s".into(),
            "[Install]".into(),
            "WantedBy=sockets.target".into(),
        ]
    })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Arbitrary bytes (invalid UTF-8 replaced, as the readers refuse it
    /// earlier with its line) into every whole-file parser.
    #[test]
    fn text_parsers_take_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..2048)) {
        run_text_targets(&String::from_utf8_lossy(&b))?;
    }

    /// Lines made of every grammar's words, in any order.
    #[test]
    fn text_parsers_take_lines_of_grammar_words(text in text_of_lines()) {
        run_text_targets(&text)?;
    }

    /// Valid inetd.conf lines with structured mutations.
    #[test]
    fn inetd_lines_survive_mutations(
        lines in prop::collection::vec((inetd_fields(), prop::collection::vec(mutation(), 0..3)), 1..5),
    ) {
        let text: Vec<String> = lines
            .into_iter()
            .map(|(mut f, ms)| {
                for m in &ms {
                    apply_mutation(&mut f, m);
                }
                f.join(" ")
            })
            .collect();
        let dir = Scratch::new("inetd-mut");
        check_report("inetd", &target_inetd(&dir, &text.join("\n")))?;
    }

    /// Valid xinetd blocks with their lines dropped, duplicated, swapped,
    /// truncated, NUL-ed or grown to a mebibyte.
    #[test]
    fn xinetd_blocks_survive_mutations(
        blocks in prop::collection::vec(xinetd_block(), 1..4),
        ms in prop::collection::vec(mutation(), 0..4),
    ) {
        let mut lines: Vec<String> = blocks.concat();
        for m in &ms {
            apply_mutation(&mut lines, m);
        }
        let dir = Scratch::new("xinetd-mut");
        check_report("xinetd", &target_xinetd(&dir, &lines.join("\n")))?;
    }

    /// Valid unit files with their lines mutated.
    #[test]
    fn units_survive_mutations(
        lines in unit_lines(),
        ms in prop::collection::vec(mutation(), 0..4),
    ) {
        let mut lines = lines;
        for m in &ms {
            apply_mutation(&mut lines, m);
        }
        let dir = Scratch::new("unit-mut");
        check_report("socket-unit", &target_socket_unit(&dir, &lines.join("\n")))?;
    }

    /// Arbitrary bytes and grammar words into every value parser.
    #[test]
    fn value_parsers_take_anything(
        b in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            word().prop_map(String::into_bytes),
            line().prop_map(String::into_bytes),
            "[0-9.]{1,40}[a-z]{0,4}".prop_map(String::into_bytes),
        ],
    ) {
        for (_, target) in VALUE_TARGETS {
            target(&b)?;
        }
    }
}

// ---- round trip through the normalized listing ---------------------------

/// One service as the generator means it.
#[derive(Clone, Debug)]
struct Model {
    port: u16,
    v6: bool,
    wait: bool,
    user: &'static str,
    max_child: Option<u32>,
    args: Vec<String>,
}

fn model() -> impl Strategy<Value = Model> {
    (
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just("root"), Just("nobody")],
        prop::option::of(1u32..1000),
        prop::collection::vec("[a-z0-9]{1,6}", 0..3),
    )
        .prop_map(|(v6, wait, user, max_child, args)| Model {
            port: 0,
            v6,
            wait,
            user,
            max_child,
            args,
        })
}

/// Renders the services as inetd.conf, with `noise` choosing extra blank
/// lines, comments and white space (none of which may change anything).
fn render_inetd(ms: &[Model], noise: &[u8]) -> String {
    let mut out = String::new();
    let pick = |i: usize| noise.get(i % noise.len().max(1)).copied().unwrap_or(0);
    for (i, m) in ms.iter().enumerate() {
        let n = pick(i);
        if n & 1 != 0 {
            out.push_str("# a comment line\n\n");
        }
        let sep = if n & 2 != 0 { " \t " } else { " " };
        let addr = if m.v6 {
            format!("[::1]:{}", m.port)
        } else {
            format!("127.0.0.1:{}", m.port)
        };
        let proto = if m.v6 { "tcp6" } else { "tcp4" };
        let mut wait = if m.wait {
            "wait".to_string()
        } else {
            "nowait".to_string()
        };
        if let Some(c) = m.max_child {
            wait.push_str(&format!(",max-child={c}"));
        }
        let mut fields = vec![addr, "stream".into(), proto.into(), wait, m.user.into()];
        fields.push("/bin/cat".into());
        fields.push("cat".into());
        fields.extend(m.args.iter().cloned());
        if n & 4 != 0 {
            out.push_str("   ");
        }
        out.push_str(&fields.join(sep));
        out.push('\n');
    }
    out
}

/// What the listing must say for one model.
fn expected_parts(m: &Model) -> Vec<String> {
    let listen = if m.v6 {
        format!("listen=stream:tcp6:[::1]:{}", m.port)
    } else {
        format!("listen=stream:tcp4:127.0.0.1:{}", m.port)
    };
    let mut argv = vec!["cat".to_string()];
    argv.extend(m.args.iter().cloned());
    vec![
        listen,
        format!("mode={}", if m.wait { "wait" } else { "nowait" }),
        format!("user={}(", m.user),
        format!(
            "max-child={}",
            m.max_child.map_or("-".to_string(), |c| c.to_string())
        ),
        format!("program=/bin/cat argv=[{}]", argv.join(" ")),
    ]
}

fn listing(path: &Path) -> Result<Vec<String>, String> {
    let sources = Sources {
        files: vec![path.to_path_buf()],
        ..Sources::default()
    };
    match super::load(&sources) {
        Ok(l) => Ok(l.services.iter().map(|s| s.to_string()).collect()),
        Err(e) => Err(e
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

proptest! {
    #![proptest_config(cases(64))]

    /// A valid file loads as exactly its services, in order, and spacing
    /// and comments change nothing in the listing.
    #[test]
    fn valid_inetd_files_round_trip_through_the_listing(
        ms in prop::collection::vec(model(), 1..6),
        noise in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let mut ms = ms;
        for (i, m) in ms.iter_mut().enumerate() {
            m.port = 20000 + i as u16;
        }
        let dir = Scratch::new("round");
        let plain = dir.write("plain.conf", render_inetd(&ms, &[0]).as_bytes());
        let noisy = dir.write("noisy.conf", render_inetd(&ms, &noise).as_bytes());
        let a = listing(&plain).map_err(TestCaseError::fail)?;
        let b = listing(&noisy).map_err(TestCaseError::fail)?;
        prop_assert_eq!(a.len(), ms.len());
        for (line, m) in a.iter().zip(&ms) {
            for part in expected_parts(m) {
                prop_assert!(line.contains(&part), "{part:?} not in {line:?}");
            }
        }
        // Same services, whatever the spacing (the origin is not listed).
        prop_assert_eq!(&a, &b);
    }
}

/// The bounds the generated tests rely on hold for the worst single
/// inputs too (kept as plain tests: they are what a fuzzer finds first).
#[test]
fn mebibyte_lines_and_nul_bytes_are_errors_with_their_line() {
    let big = "x".repeat(1 << 20);
    let text = format!("# ok\n{big} stream tcp nowait root /bin/cat\n127.0.0.1:0\0 stream tcp nowait root /bin/cat\n");
    let dir = Scratch::new("big");
    for (name, target) in TEXT_TARGETS {
        let r = target(&dir, &text);
        check_report(name, &r).unwrap();
    }
    // Both lines parse; resolving refuses each, naming its line.
    let path = dir.write("big.conf", text.as_bytes());
    let e = listing(&path).unwrap_err();
    assert_eq!(e.lines().count(), 2, "{}", &e[..e.len().min(500)]);
    assert!(e
        .lines()
        .next()
        .unwrap()
        .contains("big.conf:2: service: unknown service"));
    assert!(
        e.lines()
            .nth(1)
            .unwrap()
            .contains("big.conf:3: service: unknown service \"0\\0\""),
        "{e}"
    );
}

#[test]
fn invalid_utf8_is_refused_with_its_line() {
    let dir = Scratch::new("utf8");
    let p = dir.write(
        "bad.conf",
        b"# fine\n# fine\n127.0.0.1:0 stream tcp nowait root /bin/cat \xff\n",
    );
    let e = listing(&p).unwrap_err();
    assert!(e.contains("bad.conf:3: not valid UTF-8"), "{e}");
}

#[test]
fn huge_time_spans_are_errors_not_panics() {
    for v in [
        "99999999999999999999999",
        "18446744073709551616s",
        "9999999999999999999d",
        "99999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999",
        "5000000000000000000 5000000000000000000",
    ] {
        assert!(unit::parse_timespan(v).is_err(), "{v}");
    }
    // The longest span systemd accepts (a 64-bit count of microseconds)
    // still parses, and is a usable deadline.
    let d = unit::parse_timespan("18446744073709551614us")
        .unwrap()
        .unwrap();
    assert!(std::time::Instant::now().checked_add(d).is_some());
    assert_eq!(
        unit::parse_timespan("1h 1s").unwrap(),
        Some(Duration::from_secs(3601))
    );
}

#[test]
fn a_missing_service_file_is_the_error_of_the_line_naming_it() {
    // Found by text_parsers_take_lines_of_grammar_words: the error named
    // the missing file, line 0, instead of the `Service=` line.
    let dir = Scratch::new("svcline");
    let sock = dir.write(
        "m.socket",
        b"[Socket]\nListenStream=127.0.0.1:0\nService=gone.service\n",
    );
    let p = unit::parse_socket_unit(&sock);
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    let e = &p.errors[0];
    assert_eq!((&*e.origin.file, e.origin.line), (sock.as_path(), 3), "{e}");
    assert!(e.message.contains("gone.service: No such file"), "{e}");
}

#[test]
fn a_service_without_exec_start_names_its_full_path() {
    // Found by text_parsers_take_arbitrary_bytes: the error named the
    // service file without its directory.
    let dir = Scratch::new("noexec");
    let sock = dir.write("n.socket", b"[Socket]\nListenStream=127.0.0.1:0\n");
    let svc = dir.write("n.service", b"[Service]\n");
    let p = unit::parse_socket_unit(&sock);
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    assert_eq!(*p.errors[0].origin.file, *svc, "{}", p.errors[0]);
}

#[test]
fn endless_files_are_errors_not_allocations() {
    // `-f /dev/zero`, an `include` of it, a unit or drop-in that is a
    // device: each read stops at MAX_FILE (found by review of the readers
    // while writing these targets; each used to read until memory ran out).
    let zero = Path::new("/dev/zero");
    let e = super::read_file(zero).unwrap_err();
    assert!(e.to_string().contains("larger than 16 MiB"), "{e}");
    let dir = Scratch::new("zero");
    let conf = dir.write("x.conf", b"include /dev/zero\nservice a\n{\n}\n");
    let p = xinetd::parse(
        &conf,
        &String::from_utf8_lossy(&std::fs::read(&conf).unwrap()),
    );
    assert!(
        p.errors
            .iter()
            .any(|e| e.origin.line == 1 && e.message.contains("larger than 16 MiB")),
        "{:?}",
        p.errors
    );
    std::os::unix::fs::symlink(zero, dir.0.join("z.socket")).unwrap();
    let p = unit::parse_socket_unit(&dir.0.join("z.socket"));
    assert!(
        p.errors[0].message.contains("larger than 16 MiB"),
        "{:?}",
        p.errors
    );
}

#[test]
fn a_missing_paired_service_file_is_still_an_error() {
    // The negative control of the test above: without Service=, the
    // missing NAME.service is reported at that file.
    let dir = Scratch::new("lone");
    let sock = dir.write("lone.socket", b"[Socket]\nListenStream=127.0.0.1:0\n");
    let p = unit::parse_socket_unit(&sock);
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    assert_eq!(*p.errors[0].origin.file, *dir.0.join("lone.service"));
}
