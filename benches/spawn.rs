//! Connection-to-handler throughput: doorman against the raw fork+exec
//! limit of this machine, side by side in one run, reported as ratios.
//!
//! Run: `cargo bench --bench spawn` (optionally `-- N` connections per
//! point, default 3000). Loopback only; every loop is bounded.
//!
//! - raw: the handler spawned and waited for N times with no network
//!   (serially, and from 8 threads), the ceiling any super-server has;
//! - doorman: `--listen 127.0.0.1:0 -- HANDLER`, N connections at each
//!   concurrency (connect, read to EOF), with doorman's own CPU time per
//!   connection from /proc/PID/stat.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HANDLER: &[&str] = &["/bin/echo", "hello"];

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3000);
    println!("doorman spawn benchmark: {n} connections per point, handler {HANDLER:?}");
    let raw1 = raw_spawn(n, 1);
    let raw8 = raw_spawn(n, 8);
    println!("raw spawn+wait (no network): c=1 {raw1:.0}/s, c=8 {raw8:.0}/s");

    let (child, addr) = start_doorman();
    let pid = child.id();
    for c in [1usize, 8, 64] {
        let cpu0 = cpu_ticks(pid);
        let (rate, errors, p99) = load(addr, n, c);
        let cpu = cpu_ticks(pid) - cpu0;
        let tick_us = 1e6 / clk_tck();
        let per_conn_us = cpu as f64 * tick_us / n as f64;
        let raw = if c == 1 { raw1 } else { raw8 };
        println!(
            "doorman c={c:<3} {rate:>7.0} conn/s  ({:.2} x raw spawn)  p99 {:.2} ms  errors {errors}  daemon CPU {per_conn_us:.1} us/conn",
            rate / raw,
            p99.as_secs_f64() * 1e3
        );
    }
    stop(child);
}

/// Spawns and waits for the handler `n` times from `threads` threads.
fn raw_spawn(n: usize, threads: usize) -> f64 {
    let left = Arc::new(AtomicUsize::new(n));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let left = left.clone();
            std::thread::spawn(move || {
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                    .is_ok()
                {
                    let st = Command::new(HANDLER[0])
                        .args(&HANDLER[1..])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .status()
                        .unwrap();
                    assert!(st.success());
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn start_doorman() -> (std::process::Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_doorman"))
        .args(["-q", "--listen", "127.0.0.1:0", "--"])
        .args(HANDLER)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start doorman");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(i) = line.find("addr=") {
            addr = line[i + 5..]
                .split_whitespace()
                .next()
                .map(|a| a.parse().unwrap());
        }
        if line.contains("ready") {
            break;
        }
    }
    // Keep draining stderr so doorman never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr.expect("doorman printed no listen address"))
}

/// `n` connections from `c` client threads: rate, errors, p99 latency.
fn load(addr: SocketAddr, n: usize, c: usize) -> (f64, usize, Duration) {
    let left = Arc::new(AtomicUsize::new(n));
    let errors = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..c)
        .map(|_| {
            let left = left.clone();
            let errors = errors.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                    .is_ok()
                {
                    let t = Instant::now();
                    let ok = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(10)))?;
                            let mut buf = Vec::new();
                            s.read_to_end(&mut buf)?;
                            Ok(buf == b"hello\n")
                        })
                        .unwrap_or(false);
                    if !ok {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    lat.sort();
    let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or_default();
    (rate, errors.load(Ordering::SeqCst), p99)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

fn stop(mut child: std::process::Child) {
    // SAFETY: signalling the doorman we started, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}
