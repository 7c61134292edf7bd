#!/usr/bin/env python3
"""A mixed soak (issue 9): N connections spread over per-connection TCP,
wait-mode TCP, unix and UDP services and misbehaving handlers (crashing,
exiting at once, never reading), with SIGHUP every 2 s. At the end it
checks that doorman's fds, RSS and children are back to their start values,
that no zombie is left, and that every refusal reason was counted (metrics)
and logged. Loopback only; every wait is bounded. Not run by CI.

    cargo build --release && python3 benches/soak_mix.py 200000

Exit status 0 when every check holds.
"""
import os, re, signal, socket, subprocess, sys, tempfile, threading, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tmp = tempfile.mkdtemp(prefix="doorman-soak-")


def write(name, text, mode=0o755):
    p = os.path.join(tmp, name)
    with open(p, "w") as f:
        f.write(text)
    os.chmod(p, mode)
    return p


# A wait-mode stream handler: accepts on the listening socket (fd 0) until
# idle for 0.2 s, answering each connection.
wait_tcp = write("wait_tcp.py", """
import socket, select
ls = socket.socket(fileno=0)
while select.select([ls], [], [], 0.2)[0]:
    try:
        c, _ = ls.accept()
    except OSError:
        continue
    c.sendall(b"wait\\n")
    c.close()
""")
# A wait-mode datagram handler: answers datagrams until idle for 0.2 s.
wait_udp = write("wait_udp.py", """
import socket, select
s = socket.socket(fileno=0)
while select.select([s], [], [], 0.2)[0]:
    try:
        d, a = s.recvfrom(512)
    except OSError:
        continue
    s.sendto(b"udp:" + d, a)
""")
crash = write("crash", "#!/bin/sh\nkill -SEGV $$\n")
unix_path = os.path.join(tmp, "s.sock")
services = [
    # name, line
    ("echo", "127.0.0.1:0 stream tcp nowait.0 root /bin/echo echo ok"),
    ("wait", f"127.0.0.1:0 stream tcp wait.0 root /usr/bin/python3 python3 {wait_tcp}"),
    ("udp", f"127.0.0.1:0 dgram udp wait.0 root /usr/bin/python3 python3 {wait_udp}"),
    ("crash", f"127.0.0.1:0 stream tcp nowait.0,crash=5/10/1/2,on-paused=close root {crash} crash"),
    ("true", "127.0.0.1:0 stream tcp nowait,rate=20/1/1,on-paused=close root /bin/true true"),
    ("srate", "127.0.0.1:0 stream tcp nowait.0,source-rate=5/1/5 root /bin/true true"),
    ("never", "127.0.0.1:0 stream tcp nowait.0,max-child=3,on-full=close,max-child-per-ip=2,timeout=1 root /bin/sleep sleep 30"),
    ("deny", "127.0.0.1:0 stream tcp nowait.0,deny=127.0.0.0/8 root /bin/true true"),
]
conf = write("doorman.conf", "\n".join(l for _, l in services) + f"\n{unix_path} stream unix nowait.0 root /bin/cat cat\n", 0o644)

probe = socket.socket()
probe.bind(("127.0.0.1", 0))
maddr = probe.getsockname()
probe.close()
log_path = os.path.join(tmp, "doorman.log")
log = open(log_path, "w")
p = subprocess.Popen([os.path.join(root, "target/release/doorman"), "-f", conf,
                      "--metrics", f"{maddr[0]}:{maddr[1]}"],
                     stderr=subprocess.PIPE, text=True, env=dict(os.environ, RUST_LOG="info"))
addrs = []
deadline = time.time() + 20
while time.time() < deadline:
    line = p.stderr.readline()
    log.write(line)
    m = re.search(r"listen service=\S+ .*addr=(\S+)", line)
    if m and not m.group(1).startswith("/"):
        host, port = m.group(1).rsplit(":", 1)
        addrs.append((host, int(port)))
    if "ready" in line or not line:
        break
assert len(addrs) == len(services), addrs


def pump():
    for line in p.stderr:
        log.write(line)


threading.Thread(target=pump, daemon=True).start()
addr = dict(zip([n for n, _ in services], addrs))


def usage():
    fds = len(os.listdir(f"/proc/{p.pid}/fd"))
    rss = int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0])
    return fds, rss


def children():
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[1]) == p.pid:
            out.append((int(pid), rest[0]))
    return out


def read_all(s):
    data = b""
    while True:
        try:
            b = s.recv(256)
        except (ConnectionResetError, socket.timeout):
            break
        if not b:
            break
        data += b
    return data


def tcp(name, send=None):
    s = socket.create_connection(addr[name], timeout=10)
    try:
        if send is not None:
            s.sendall(send)
            s.shutdown(socket.SHUT_WR)
        return read_all(s)
    finally:
        s.close()


def unix():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(unix_path)
    s.sendall(b"u")
    s.shutdown(socket.SHUT_WR)
    d = read_all(s)
    s.close()
    return d


def udp(i):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    msg = b"%d" % i
    try:
        for _ in range(5):  # a datagram may be lost while no instance runs
            s.sendto(msg, addr["udp"])
            try:
                d, _ = s.recvfrom(512)
                return d
            except socket.timeout:
                continue
        return b""
    finally:
        s.close()


def half_open(i):
    # Connects, sends nothing, never reads: the `never` handler is killed
    # at its timeout; extra clients are refused (instances, per source),
    # from two source addresses.
    src = ("127.0.0.%d" % (1 + i % 2), 0)
    s = socket.create_connection(addr["never"], timeout=10, source_address=src)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return s


time.sleep(0.3)
before = usage()
stop = False
reloads = 0


def reloader():
    global reloads
    while not stop:
        os.kill(p.pid, signal.SIGHUP)
        reloads += 1
        for _ in range(20):
            if stop:
                break
            time.sleep(0.1)


t = threading.Thread(target=reloader)
t.start()
bad = {}
held = []
t0 = time.time()
# The mix, out of 100: most traffic served normally, some misbehaving.
for i in range(N):
    k = i % 100
    try:
        if k < 40:
            ok = tcp("echo") == b"ok\n"
        elif k < 55:
            ok = tcp("wait") == b"wait\n"
        elif k < 70:
            ok = unix() == b"u"
        elif k < 80:
            ok = udp(i) == b"udp:%d" % i
        elif k < 86:
            tcp("crash"); ok = True     # EOF: crashed, or refused while paused
        elif k < 90:
            tcp("true"); ok = True      # EOF: exited, or refused (rate, then paused)
        elif k < 94:
            tcp("srate"); ok = True     # EOF: exited, or refused (per-source rate)
        elif k < 97:
            tcp("deny"); ok = True      # refused by the access list
        else:
            held.append(half_open(i // 100)); ok = True
            if len(held) > 6:
                held.pop(0).close()
    except OSError as e:
        ok = False
        bad[str(e)] = bad.get(str(e), 0) + 1
    if not ok:
        bad["wrong reply"] = bad.get("wrong reply", 0) + 1
    if i and i % 20000 == 0:
        print(f"  {i} connections, {time.time() - t0:.0f}s, fds/rss {usage()}", flush=True)
dt = time.time() - t0
for s in held:
    s.close()
stop = True
t.join()
# Let every handler end (the never-reading ones by their 1 s timeout, wait
# instances by their idleness), then measure.
deadline = time.time() + 30
while time.time() < deadline and children():
    time.sleep(0.2)
time.sleep(0.5)
after = usage()
left = children()
zombies = [c for c in left if c[1] == "Z"]
metrics = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://{maddr[0]}:{maddr[1]}/metrics"],
                         capture_output=True, text=True).stdout
refused = {}
for m in re.finditer(r'doorman_refused_total\{service="[^"]*",reason="([^"]+)"\} (\d+)', metrics):
    refused[m.group(1)] = refused.get(m.group(1), 0) + int(m.group(2))
p.send_signal(signal.SIGTERM)
p.wait(timeout=20)
log.close()
text = open(log_path).read()
logged = sorted(set(re.findall(r"(?:refuse|pause) .*reason=([a-z-]+)", text)))
warn = [l for l in text.splitlines() if ": warn: " in l or ": error: " in l]
wanted = ["access", "crash-loop", "instances", "paused", "per-source-instances",
          "per-source-rate", "rate"]
# The pauses themselves (rate, crash-loop) are counted as refusals of the
# connection that tripped them.
missing = [r for r in wanted if not refused.get(r)]
print(f"{N} connections in {dt:.0f}s ({N / dt:.0f}/s), {reloads} reloads; errors {bad or 0}")
print(f"fds {before[0]}->{after[0]}  rss_kb {before[1]}->{after[1]}  children left {len(left)}  zombies {len(zombies)}")
print(f"refused by reason (metrics): {refused}")
print(f"reasons in the log: {logged}; warn/error lines: {len(warn)}")
for l in warn[:10]:
    print("  ", l)
ok = (not bad and not zombies and not left and after[0] == before[0] and not missing)
if missing:
    print(f"reasons never counted: {missing}")
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
