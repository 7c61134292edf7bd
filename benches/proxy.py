#!/usr/bin/python3
"""The on-demand backend benchmark of issue 16 (not a test), side by side
in one run on loopback, ROUNDS interleaved rounds (default 3), medians:

- one SIZE-MiB transfer (default 1024) from a sender server, read by one
  client: directly, through doorman --proxy, through systemd-socket-proxyd
  (under systemd-socket-activate) and through socat (benches/deps.sh
  installs both);
- connections/s of small requests at c=1 and c=8 (the spawn benchmark's
  load generator against benches/handlers/hellod.c, a persistent epoll
  server that answers `hello` and closes) through the same four paths;
- the time to the first byte of a cold start through doorman against a
  backend ready in ~0 ms (the sender itself, started by doorman) compared
  with starting it directly.

    cargo build --release && cargo bench --bench spawn --no-run &&
        /usr/bin/python3 benches/proxy.py target/release/doorman 1024 3
"""
import glob, os, shutil, socket, statistics, subprocess, sys, tempfile, time

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/doorman"
size = (int(sys.argv[2]) if len(sys.argv) > 2 else 1024) << 20
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
here = os.path.dirname(os.path.abspath(__file__))
tmp = tempfile.mkdtemp(prefix="doorman-proxy-bench-")
sender = os.path.join(tmp, "sender.py")
with open(sender, "w") as f:
    f.write("""import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('127.0.0.1', int(sys.argv[1]))); l.listen(64)
buf = b'x' * (1 << 20); size = int(sys.argv[2])
while True:
    c, _ = l.accept()
    left = size
    try:
        while left > 0:
            n = c.send(buf[:min(left, len(buf))]); left -= n
    except OSError:
        pass
    c.close()
""")
hellod = os.path.join(tmp, "hellod")
subprocess.check_call(["cc", "-O2", "-o", hellod, os.path.join(here, "handlers", "hellod.c")])
gens = sorted((g for g in glob.glob(os.path.join(here, "..", "target", "release", "deps", "spawn-*"))
               if not g.endswith(".d")), key=os.path.getmtime)
gen = gens[-1] if gens else None


def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(p, t=10):
    end = time.time() + t
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", p), timeout=1).close(); return
        except OSError:
            time.sleep(0.01)
    raise SystemExit("port %d never opened" % p)


def listening(p):
    """Whether 127.0.0.1:p is in the kernel's listening table (without
    connecting to it)."""
    want = ":%04X" % p
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            x = line.split()
            if x[1].endswith(want) and x[3] == "0A":
                return True
    return False


def read_all(p):
    t = time.time()
    s = socket.create_connection(("127.0.0.1", p), timeout=30)
    first = None
    got = 0
    buf = bytearray(1 << 20)
    while True:
        n = s.recv_into(buf)
        if first is None:
            first = time.time() - t
        if not n:
            break
        got += n
    return got, time.time() - t, first


procs = []
def start(args, **kw):
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def load(p, c, n=3000):
    out = subprocess.run([gen, "--load", "127.0.0.1:%d" % p, "-c", str(c), "-n", str(n)],
                         capture_output=True, text=True, timeout=120).stdout.split()
    return float(out[1]) if len(out) > 1 else 0.0


def paths(target):
    """The four ways to reach `target`: (name, port), servers started."""
    out = [("direct", target)]
    dport = port()
    start([binary, "-q", "--listen", "127.0.0.1:%d" % dport, "--proxy", "127.0.0.1:%d" % target,
           "--", "/bin/sleep", "infinity"])
    out.append(("doorman --proxy", dport))
    sp = shutil.which("systemd-socket-proxyd", path="/lib/systemd:/usr/lib/systemd:/usr/bin")
    if sp and shutil.which("systemd-socket-activate"):
        sport = port()
        start(["systemd-socket-activate", "-l", "127.0.0.1:%d" % sport, sp,
               "127.0.0.1:%d" % target])
        out.append(("systemd-socket-proxyd", sport))
    else:
        print("systemd-socket-proxyd not found (apt-get install systemd): left out")
    if shutil.which("socat"):
        xport = port()
        start(["socat", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % xport,
               "TCP:127.0.0.1:%d" % target])
        out.append(("socat", xport))
    else:
        print("socat not found (apt-get install socat): left out")
    for _, p in out:
        wait_port(p)
    return out


try:
    bport, hport = port(), port()
    start(["/usr/bin/python3", sender, str(bport), str(size)])
    start([hellod, str(hport)])
    wait_port(bport)
    wait_port(hport)
    # The sleeper is each doorman's "backend process": the backends
    # already listen, so the first connect succeeds at once.
    bulk, small = paths(bport), paths(hport)
    # one connection each first: doorman's backend start is not measured
    for _, p in bulk:
        socket.create_connection(("127.0.0.1", p)).close()
    time.sleep(0.3)
    tput = {name: [] for name, _ in bulk}
    for _ in range(rounds):
        for name, p in bulk:
            got, t, _ = read_all(p)
            if got != size:
                raise SystemExit("%s: %d bytes of %d" % (name, got, size))
            tput[name].append(got / 2**20 / t)
    direct = statistics.median(tput["direct"])
    print("one %d MiB transfer, median of %d rounds (MiB/s):" % (size >> 20, rounds))
    for name, v in tput.items():
        m = statistics.median(v)
        print("  %-24s %8.1f MiB/s  %.2fx direct  (rounds: %s)"
              % (name, m, m / direct, " ".join("%.0f" % x for x in v)))
    if "socat" in tput:
        print("  doorman / socat: %.2fx" % (statistics.median(tput["doorman --proxy"])
                                            / statistics.median(tput["socat"])))
    if gen:
        for c in (1, 8):
            for _, p in small:
                load(p, c, 300)
            rate = {name: [] for name, _ in small}
            for _ in range(rounds):
                for name, p in small:
                    rate[name].append(load(p, c))
            print("small requests, c=%d, 3,000 connections, median of %d rounds (conn/s):"
                  % (c, rounds))
            d = statistics.median(rate["direct"])
            for name, v in rate.items():
                m = statistics.median(v)
                print("  %-24s %8.0f conn/s  %.2fx direct" % (name, m, m / d))
    else:
        print("connections/s left out: build the generator (cargo bench --bench spawn --no-run)")
    # Cold start: a backend ready in ~0 ms (hellod), its own start to
    # its first byte (polled every 0.2 ms) against the first byte of a
    # client of a fresh doorman that starts it.
    def first_byte(p, t0):
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", p), timeout=5)
                s.recv(16)
                s.close()
                return time.perf_counter() - t0
            except ConnectionRefusedError:
                time.sleep(0.0002)
            if time.perf_counter() - t0 > 10:
                raise SystemExit("no first byte on %d" % p)
    own, through = [], []
    for _ in range(max(rounds, 5)):
        tport = port()
        t0 = time.perf_counter()
        p = subprocess.Popen([hellod, str(tport)])
        own.append(first_byte(tport, t0))
        p.kill()
        p.wait()
        cport, tport = port(), port()
        d = start([binary, "-q", "--listen", "127.0.0.1:%d" % cport, "--proxy",
                   "127.0.0.1:%d" % tport, "--", hellod, str(tport)])
        until = time.perf_counter() + 5
        while time.perf_counter() < until:
            # doorman is listening once the port refuses no more; the
            # backend starts only with the measured connection
            if os.path.exists("/proc/%d" % d.pid) and listening(cport):
                break
            time.sleep(0.01)
        t0 = time.perf_counter()
        through.append(first_byte(cport, t0))
        d.terminate()  # doorman stops the backend it started
        d.wait()
        procs.remove(d)
    o, t = statistics.median(own), statistics.median(through)
    print("cold start, median of %d: the backend's own start to its first byte %.2f ms; "
          "through a doorman that starts it %.2f ms (%.2f ms more)"
          % (len(own), o * 1000, t * 1000, (t - o) * 1000))
finally:
    for p in procs:
        p.terminate()  # doorman stops its backend (here /bin/sleep) too
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    shutil.rmtree(tmp, ignore_errors=True)
