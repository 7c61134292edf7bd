#!/usr/bin/python3
"""The scaling benchmark of issue 20 (not a test): N = 100, 1,000, 10,000
services, each its own loopback port running /bin/true, side by side with
openbsd-inetd and xinetd when benches/deps.sh has unpacked them (same N,
same ports). For each: time from exec to ready (doorman: --ready-fd;
peers: until all N ports are listening in /proc/net/tcp), RSS then and
0.5 s later, `--check` time, and for doorman a SIGHUP reload with one
line's port changed (time from the signal to the `reload` line, and how
many listening sockets changed: it must be exactly one).

Then, when `cargo bench --bench spawn --no-run` has built the load
generator and the `hello` handler: what a connection costs doorman with
N services: one `hello` service more (port 19999), 2,000 connections at
c=1 and at c=8 after 200 to warm up, daemon CPU per connection from
/proc/PID/task/*/schedstat (nanoseconds, the daemon's own threads) and
the connection rate. It must not grow with N.

    cargo build --release && cargo bench --bench spawn --no-run &&
        /usr/bin/python3 benches/scale.py target/release/doorman
"""
import glob
import os, resource, signal, subprocess, sys, tempfile, time

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/doorman"
sizes = [int(x) for x in sys.argv[2:]] or [100, 1000, 10000]
BASE = 20000  # 20000-30000: below the ephemeral ports (32768-)
PEERS = "/opt/doorman-peers/usr/sbin"
tmp = tempfile.mkdtemp(prefix="doorman-scale-")
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def inetd_conf(n, shift=None):
    lines = []
    for i in range(n):
        port = BASE + i if i != shift else BASE + n + 1
        lines.append("127.0.0.1:%d stream tcp nowait root /bin/true true\n" % port)
    return "".join(lines)


def xinetd_conf(n):
    out = ["defaults\n{\n instances = UNLIMITED\n cps = 100000 1\n}\n"]
    for i in range(n):
        out.append("service s%d\n{\n type = UNLISTED\n port = %d\n socket_type = stream\n"
                   " protocol = tcp\n wait = no\n user = root\n server = /bin/true\n"
                   " bind = 127.0.0.1\n}\n" % (i, BASE + i))
    return "".join(out)


def listening(lo, hi):
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            x = line.split()
            if x[3] == "0A":
                p = int(x[1].rsplit(":", 1)[1], 16)
                if lo <= p < hi:
                    n += 1
    return n


def inodes(pid):
    out = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if t.startswith("socket:"):
            out.add(t)
    return out


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tail(path, pos):
    with open(path) as f:
        f.seek(pos)
        return f.read()


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def doorman(n):
    conf = os.path.join(tmp, "d%d.conf" % n)
    with open(conf, "w") as f:
        f.write(inetd_conf(n))
    t = time.perf_counter()
    subprocess.run([binary, "--check", "-f", conf], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    check = time.perf_counter() - t
    r, w = os.pipe()
    log = open(os.path.join(tmp, "d%d.log" % n), "w+")
    t = time.perf_counter()
    p = subprocess.Popen([binary, "--ready-fd", str(w), "-f", conf], pass_fds=(w,),
                         stdout=subprocess.DEVNULL, stderr=log)
    os.close(w)
    if not os.read(r, 64):
        raise SystemExit("doorman did not get ready: " + open(log.name).read()[-600:])
    ready = time.perf_counter() - t
    rss0 = rss(p.pid)
    time.sleep(0.5)
    rss1 = rss(p.pid)
    before = inodes(p.pid)
    with open(conf, "w") as f:
        f.write(inetd_conf(n, shift=n // 2))
    # Only what the reload writes is read (reading a 10,000-line log
    # every half millisecond would compete with doorman for the CPU).
    pos = os.path.getsize(log.name)
    t = time.perf_counter()
    p.send_signal(signal.SIGHUP)
    while "reload result=" not in tail(log.name, pos):
        if time.perf_counter() - t > 30:
            raise SystemExit("no reload line: " + open(log.name).read()[-600:])
        time.sleep(0.0005)
    reload = time.perf_counter() - t
    after = inodes(p.pid)
    changed = len(before - after)
    stop(p)
    return ready, rss0, rss1, check, reload, changed


def peer(name, argv, conf_text, n):
    conf = os.path.join(tmp, "%s%d.conf" % (name, n))
    with open(conf, "w") as f:
        f.write(conf_text)
    t = time.perf_counter()
    p = subprocess.Popen(argv + [conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while listening(BASE, BASE + n) < n:
        if p.poll() is not None or time.perf_counter() - t > 60:
            stop(p)
            return None
        time.sleep(0.002)
    ready = time.perf_counter() - t
    rss0 = rss(p.pid)
    time.sleep(0.5)
    rss1 = rss(p.pid)
    stop(p)
    time.sleep(0.2)
    return ready, rss0, rss1


print("%-16s %7s %10s %10s %10s %9s %10s %8s  %s" % (
    "server", "N", "ready ms", "RSS KiB", "idle KiB", "KiB/svc", "check ms", "reload ms",
    "sockets changed by the reload"))
# The floor under any of them: benches/handlers/bindfloor.c makes the N
# listening sockets with the five system calls doorman needs per socket
# (socket, SO_REUSEADDR, bind, listen, epoll_ctl) and nothing else.
floor = os.path.join(tmp, "bindfloor")
here = os.path.dirname(os.path.abspath(__file__))
if subprocess.run(["cc", "-O2", "-o", floor, os.path.join(here, "handlers", "bindfloor.c")]).returncode:
    floor = None
for n in sizes:
    if floor:
        ms = float(subprocess.run([floor, str(BASE), str(n)], stdout=subprocess.PIPE,
                                  text=True, check=True).stdout)
        print("%-16s %7d %10.1f" % ("raw bind floor", n, ms))
    ready, r0, r1, check, reload, changed = doorman(n)
    print("%-16s %7d %10.1f %10d %10d %9.2f %10.1f %8.1f  %d" % (
        "doorman", n, ready * 1000, r0, r1, r1 / n, check * 1000, reload * 1000, changed))
    for name, argv, text in [
        ("openbsd-inetd", [PEERS + "/inetd", "-d"], inetd_conf(n)),
        ("xinetd", [PEERS + "/xinetd", "-dontfork", "-f"], xinetd_conf(n)),
    ]:
        if not os.path.exists(argv[0]):
            continue
        got = peer(name, argv, text, n)
        if got is None:
            print("%-16s %7d  did not listen on all ports" % (name, n))
            continue
        ready, r0, r1 = got
        print("%-16s %7d %10.1f %10d %10d %9.2f %10s %8s" % (
            name, n, ready * 1000, r0, r1, r1 / n, "-", "-"))


def daemon_ns(pid):
    total = 0
    for t in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
            total += int(f.read().split()[0])
    return total


def connection_cost(n, gen, hello):
    conf = os.path.join(tmp, "c%d.conf" % n)
    with open(conf, "w") as f:
        f.write("127.0.0.1:%d stream tcp nowait.10000000 root %s hello\n" % (BASE - 1, hello))
        f.write(inetd_conf(n))
    r, w = os.pipe()
    log = open(os.path.join(tmp, "c%d.log" % n), "w")
    # Log lines on, as users run it.
    p = subprocess.Popen([binary, "--ready-fd", str(w), "-f", conf], pass_fds=(w,),
                         stdout=subprocess.DEVNULL, stderr=log)
    os.close(w)
    if not os.read(r, 64):
        raise SystemExit("doorman did not get ready")
    out = []
    try:
        for c in (1, 8):
            load = [gen, "--load", "127.0.0.1:%d" % (BASE - 1), "-c", str(c)]
            subprocess.run(load + ["-n", "200"], stdout=subprocess.DEVNULL, check=True)
            ns0 = daemon_ns(p.pid)
            t = time.perf_counter()
            res = subprocess.run(load + ["-n", "2000"], stdout=subprocess.PIPE, text=True,
                                 check=True).stdout
            dt = time.perf_counter() - t
            ns = daemon_ns(p.pid) - ns0
            if " ok 2000 " not in res:
                raise SystemExit("connections failed: " + res)
            out.append((ns / 2000 / 1000, 2000 / dt))
    finally:
        stop(p)
    return out


gens = [g for g in glob.glob(os.path.join(os.path.dirname(binary), "deps", "spawn-*"))
        if os.access(g, os.X_OK) and not g.endswith(".d")]
hello = os.path.abspath(os.path.join(os.path.dirname(binary), "bench-handlers", "hello"))
if gens and os.path.exists(hello):
    print()
    print("%-16s %7s %14s %12s %14s %12s" % (
        "connections", "N", "c=1 CPU us", "c=1 conn/s", "c=8 CPU us", "c=8 conn/s"))
    for n in [0] + sizes:
        (u1, r1), (u8, r8) = connection_cost(n, gens[0], hello)
        print("%-16s %7d %14.1f %12.0f %14.1f %12.0f" % ("doorman", n, u1, r1, u8, r8))
else:
    print("\n(connection cost skipped: run cargo bench --bench spawn --no-run first)")
