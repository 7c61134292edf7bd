//! Connection-to-handler benchmark: doorman (clone and fork spawn paths)
//! against the raw spawn limit of this machine, the network path alone,
//! and the super-servers Debian ships, measured interleaved (A B C, A B C,
//! ...) in one run and reported as medians and ratios in a markdown table.
//!
//! Run: `bash benches/deps.sh && cargo bench --bench spawn` (options after
//! `--`: `--rounds R` (default 3), `-n N` connections per point (default
//! 3000), `--smoke` (a few seconds, doorman alone: what CI runs),
//! `--no-peers`; or `--load ADDR [-c C] [-n N] [--request TEXT] [--expect
//! TEXT]` to run only the generator against a server of your own). Loopback only; every loop and wait is bounded; only the
//! processes this program starts are stopped, by pid.

mod load;
mod raw;
mod servers;

use std::collections::BTreeMap;
use std::time::Duration;

use load::{ms, Plan};
use servers::Server;

const REPLY: &[u8] = b"hello\n";
const CONCURRENCY: [usize; 3] = [1, 8, 64];

struct Args {
    /// `--load ADDR`: only run the generator against ADDR and print.
    load: Option<std::net::SocketAddr>,
    c: usize,
    request: Option<String>,
    expect: String,
    rounds: usize,
    n: usize,
    smoke: bool,
    peers: bool,
}

fn args() -> Args {
    let mut a = Args {
        load: None,
        c: 8,
        request: None,
        expect: "hello\n".into(),
        rounds: 3,
        n: 3000,
        smoke: false,
        peers: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.rounds),
            "-n" => a.n = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.n),
            "--smoke" => a.smoke = true,
            "--no-peers" => a.peers = false,
            "--load" => a.load = it.next().and_then(|v| v.parse().ok()),
            "-c" => a.c = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.c),
            "--request" => a.request = it.next(),
            "--expect" => a.expect = it.next().unwrap_or_default(),
            _ => {} // cargo bench passes --bench
        }
    }
    if a.smoke {
        a.rounds = 1;
        a.n = 300;
        a.peers = false;
    }
    a
}

/// One measured point.
#[derive(Clone, Default)]
struct Point {
    rate: f64,
    p99: Duration,
    errors: usize,
    cpu_ns: u64,
    conns: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

fn main() {
    let a = args();
    if let Some(addr) = a.load {
        let plan = Plan {
            request: a.request.as_deref().map(str::as_bytes),
            expect: a.expect.as_bytes(),
            timeout: Duration::from_secs(10),
        };
        let st = load::run(addr, a.n, a.c, plan);
        println!("c={} {}", a.c, st.summary());
        std::process::exit(if st.errors() > 0 { 1 } else { 0 });
    }
    let handlers = servers::build_handlers();
    let plan = Plan {
        request: None,
        expect: REPLY,
        timeout: Duration::from_secs(10),
    };
    println!(
        "doorman spawn benchmark: {} round(s), {} connections per point, handler {}",
        a.rounds,
        a.n,
        handlers.hello.display()
    );
    let machine = servers::machine();
    println!("machine: {machine}");

    // 1. The raw spawn limit, each variant serially and 2 at a time.
    let raw_n = if a.smoke { 200 } else { a.n };
    let hello = handlers.hello.to_str().unwrap();
    let mut raw1 = 0f64;
    let mut raw2 = 0f64;
    for v in raw::Variant::ALL {
        let r1 = raw::rate(hello, v, raw_n, 1);
        let r2 = raw::rate(hello, v, raw_n, 2);
        println!(
            "raw spawn+wait {:<24} serial {r1:>6.0}/s, 2 parallel {r2:>6.0}/s",
            v.name()
        );
        raw1 = raw1.max(r1);
        raw2 = raw2.max(r2);
    }

    // 2. The network path alone, and proof the generator is not the
    //    bottleneck: its rate against a server that spawns nothing.
    let nospawn = load::NoSpawn::start(REPLY, 1);
    let mut tcp = BTreeMap::new();
    for c in CONCURRENCY {
        let st = load::run(nospawn.addr, a.n.max(2000) * 2, c, plan);
        println!("no-spawn server c={c:<3} {}", st.summary());
        tcp.insert(c, st.rate());
    }
    drop(nospawn);
    // The TCP+spawn limit: the two costs in series.
    let limit = |c: usize| {
        let raw = if c == 1 { raw1 } else { raw2 };
        1.0 / (1.0 / raw + 1.0 / tcp[&c])
    };

    // 3. The servers, interleaved.
    let mut list: Vec<Server> = vec![
        Server::doorman("doorman", &handlers.hello, "auto"),
        Server::doorman("doorman (clone only)", &handlers.hello, "clone"),
        Server::doorman("doorman (vfork)", &handlers.hello, "vfork"),
        Server::doorman("doorman (fork)", &handlers.hello, "fork"),
    ];
    if let Some(m) = &handlers.minspawn {
        list.push(Server::minspawn(m, &handlers.hello));
    }
    if a.peers {
        list.extend(servers::peers(&handlers.hello));
    }
    let mut results: BTreeMap<(String, usize), Vec<Point>> = BTreeMap::new();
    for round in 0..a.rounds {
        for c in CONCURRENCY {
            // A B C, B C A, ...: no server always runs right after the same
            // other one, or first.
            let order = (0..list.len()).map(|k| &list[(k + round) % list.len()]);
            for s in order {
                let p = measure(s, a.n, c, plan);
                eprintln!(
                    "round {} c={c:<3} {:<24} {:>6.0} conn/s p99 {:.2} ms errors {}",
                    round + 1,
                    s.name,
                    p.rate,
                    ms(p.p99),
                    p.errors
                );
                results.entry((s.name.clone(), c)).or_default().push(p);
            }
        }
    }

    // 4. The libc-less handler at c=8: what is left is exec and exit.
    let mut nolibc: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    if let Some(h) = &handlers.nolibc {
        let mut list2 = vec![Server::doorman("doorman", h, "auto")];
        if let Some(m) = &handlers.minspawn {
            list2.push(Server::minspawn(m, h));
        }
        if a.peers {
            list2.extend(servers::peers(h));
        }
        for round in 0..a.rounds {
            for k in 0..list2.len() {
                let s = &list2[(k + round) % list2.len()];
                let p = measure(s, a.n, 8, plan);
                nolibc.entry(s.name.clone()).or_default().push(p.rate);
            }
        }
    }

    // 5. Idle footprint and start-up; and the benchmarked doorman's own,
    //    after all its connections.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", list[0].pid())).unwrap_or_default();
    let kb = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or(String::from("?"), |v| v.trim().to_string())
    };
    let after = format!(
        "VmRSS {}, RssAnon {}, RssFile {}",
        kb("VmRSS:"),
        kb("RssAnon:"),
        kb("RssFile:")
    );
    let (rss1, _) = servers::idle(&handlers.hello, 1);
    let (rss1000, ready1000) = servers::idle(&handlers.hello, 1000);

    print_table(&list, &results, &limit, &tcp, raw1, raw2);
    if !nolibc.is_empty() {
        println!("\nlibc-less handler, c=8 (median conn/s):\n");
        let d = median(nolibc["doorman"].clone());
        for (name, v) in &nolibc {
            let m = median(v.clone());
            println!("- {name}: {m:.0} (doorman {:.2}x)", d / m);
        }
    }
    println!(
        "\nidle RSS: {rss1} KiB with 1 service, {rss1000} KiB with 1,000 services; \
         1,000 ports listening {:.1} ms after exec",
        ms(ready1000)
    );
    println!("benchmarked doorman after all its connections: {after}");
    let errors: usize = results.values().flatten().map(|p| p.errors).sum();
    if a.smoke && errors > 0 {
        eprintln!("smoke: {errors} failed connections");
        std::process::exit(1);
    }
}

fn measure(s: &Server, n: usize, c: usize, plan: Plan<'_>) -> Point {
    let cpu0 = servers::cpu_ns(s.pid());
    let st = load::run(s.addr, n, c, plan);
    let cpu = servers::cpu_ns(s.pid()).saturating_sub(cpu0);
    Point {
        rate: st.rate(),
        p99: st.quantile(0.99),
        errors: st.errors(),
        cpu_ns: cpu,
        conns: n,
    }
}

fn print_table(
    list: &[Server],
    results: &BTreeMap<(String, usize), Vec<Point>>,
    limit: &dyn Fn(usize) -> f64,
    tcp: &BTreeMap<usize, f64>,
    raw1: f64,
    raw2: f64,
) {
    let med = |name: &str, c: usize| {
        median(
            results[&(name.to_string(), c)]
                .iter()
                .map(|p| p.rate)
                .collect(),
        )
    };
    println!("\nraw spawn limit (best variant): {raw1:.0}/s serial, {raw2:.0}/s 2 parallel");
    println!(
        "no-spawn TCP path: c=1 {:.0}, c=8 {:.0}, c=64 {:.0} conn/s",
        tcp[&1], tcp[&8], tcp[&64]
    );
    println!(
        "computed TCP+spawn limit: c=1 {:.0}, c=8 {:.0}, c=64 {:.0} conn/s\n",
        limit(1),
        limit(8),
        limit(64)
    );
    println!("| server | c=1 conn/s | c=8 conn/s | c=64 conn/s | p99 c=1 ms | errors c=64 | daemon CPU µs/conn c=1 | c=8 | c=64 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in list {
        // Daemon CPU per connection from the scheduler's account, the
        // median of the rounds, per concurrency.
        let cpu = |c: usize| {
            median(
                results[&(s.name.clone(), c)]
                    .iter()
                    .map(|p| p.cpu_ns as f64 / 1e3 / p.conns.max(1) as f64)
                    .collect(),
            )
        };
        let p99 = median(
            results[&(s.name.clone(), 1)]
                .iter()
                .map(|p| ms(p.p99))
                .collect(),
        );
        let err64: usize = results[&(s.name.clone(), 64)]
            .iter()
            .map(|p| p.errors)
            .sum();
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {:.1} | {:.1} | {:.1} |",
            s.name,
            med(&s.name, 1),
            med(&s.name, 8),
            med(&s.name, 64),
            p99,
            err64,
            cpu(1),
            cpu(8),
            cpu(64)
        );
    }
    println!("\nratios (medians):\n");
    for c in CONCURRENCY {
        let d = med("doorman", c);
        let f = med("doorman (fork)", c);
        let best = list
            .iter()
            .filter(|s| !s.name.starts_with("doorman") && s.name != servers::MINSPAWN)
            .map(|s| (med(&s.name, c), s.name.as_str()))
            .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        let mut line = format!(
            "- c={c}: doorman / TCP+spawn limit {:.2}, doorman / doorman (vfork) {:.2}, doorman / doorman (fork) {:.2}",
            d / limit(c),
            d / med("doorman (vfork)", c),
            d / f,
        );
        if list.iter().any(|s| s.name == servers::MINSPAWN) {
            let m = med(servers::MINSPAWN, c);
            line += &format!(
                ", minimal C spawner / TCP+spawn limit {:.2}, doorman / minimal C spawner {:.2}",
                m / limit(c),
                d / m
            );
        }
        if let Some((b, name)) = best {
            line += &format!(", doorman / best peer ({name}) {:.2}", d / b);
        }
        println!("{line}");
    }
}
