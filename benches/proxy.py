#!/usr/bin/python3
"""The on-demand backend benchmark of issue 16 (not a test), side by side
in one run on loopback: one SIZE-MiB transfer (default 1024) from a
sender server, read by one client, directly, through doorman --proxy,
through systemd-socket-proxyd (under systemd-socket-activate) and through
socat when installed; then the time to the first byte of a cold start
through doorman against a backend ready in ~0 ms (the sender itself,
started by doorman) compared with starting it directly.

    cargo build --release && /usr/bin/python3 benches/proxy.py target/release/doorman 1024
"""
import os, shutil, socket, subprocess, sys, tempfile, time

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/doorman"
size = (int(sys.argv[2]) if len(sys.argv) > 2 else 1024) << 20
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


try:
    bport = port()
    start(["/usr/bin/python3", sender, str(bport), str(size)])
    wait_port(bport)
    rows = []
    got, t, _ = read_all(bport)
    rows.append(("direct", got, t))
    dport = port()
    start([binary, "-q", "--listen", "127.0.0.1:%d" % dport, "--proxy", "127.0.0.1:%d" % bport,
           "--", "/bin/sleep", "infinity"])
    time.sleep(0.3)
    # the sleeper is the "backend process": the sender already listens, so
    # the first connect succeeds at once.
    got, t, _ = read_all(dport)
    rows.append(("doorman --proxy", got, t))
    sp = shutil.which("systemd-socket-proxyd", path="/lib/systemd:/usr/lib/systemd:/usr/bin")
    if sp and shutil.which("systemd-socket-activate"):
        sport = port()
        start(["systemd-socket-activate", "-l", "127.0.0.1:%d" % sport, sp, "127.0.0.1:%d" % bport])
        time.sleep(0.3)
        got, t, _ = read_all(sport)
        rows.append(("systemd-socket-proxyd", got, t))
    if shutil.which("socat"):
        xport = port()
        start(["socat", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % xport,
               "TCP:127.0.0.1:%d" % bport])
        wait_port(xport)
        got, t, _ = read_all(xport)
        rows.append(("socat", got, t))
    direct = rows[0][2]
    for name, got, t in rows:
        print("%-24s %6.0f MiB in %6.3f s  %8.1f MiB/s  %.2fx direct"
              % (name, got / 2**20, t, got / 2**20 / t, direct / t))
    # Cold start: doorman starts the sender on the first connection.
    cport, tport = port(), port()
    t0 = time.time()
    p = start(["/usr/bin/python3", sender, str(tport), "1"])
    wait_port(tport, 30)
    own = time.time() - t0
    p.kill()
    time.sleep(0.2)
    tport2 = port()
    start([binary, "-q", "--listen", "127.0.0.1:%d" % cport, "--proxy", "127.0.0.1:%d" % tport2,
           "--", "/usr/bin/python3", sender, str(tport2), "1"])
    time.sleep(0.3)
    _, _, first = read_all(cport)
    print("cold start: the backend's own start to listening %.1f ms; first byte through "
          "doorman %.1f ms (%.1f ms more)" % (own * 1000, first * 1000, (first - own) * 1000))
finally:
    for p in procs:
        p.kill()
        p.wait()
    shutil.rmtree(tmp, ignore_errors=True)
