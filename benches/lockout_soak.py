#!/usr/bin/python3
"""The lock-out soak of issue 19 (not a test): SECONDS (default 600) of
mixed well-behaved and resetting clients, C (default 64) at once, against
three services of one doorman, all with their default limits except the
inetd rate limit (256 spawns a minute would pause a soak on purpose):

  echo   a handler that answers at once   (/bin/echo ok)
  reader a handler that reads its request first (sh: read l; echo ok)
  inside the internal echo service

Each client picks a service at random and is, half of the time,
well-behaved (sends a line, or nothing to the echo handler, which does not read; reads the whole answer, checks it, with a
10 s limit on every step) and otherwise resets: at once after connecting,
or after 0-5 ms, or after sending its request (SO_LINGER {1, 0}, close),
so that resets land before the accept, while the handler starts and
while it answers. At the end it prints the well-behaved clients served,
refused or timed out (the goal: none), the resets, the handlers started,
the dead-on-arrival count (metrics), the pauses logged, and doorman's
fds at the start and the end. Loopback only; every wait is bounded.

    cargo build --release && /usr/bin/python3 benches/lockout_soak.py target/release/doorman 600 64

Exit status 0 when no well-behaved client failed and nothing paused.
"""
import os, random, re, socket, struct, subprocess, sys, tempfile, threading, time
import urllib.request

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/doorman"
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 600
conc = int(sys.argv[3]) if len(sys.argv) > 3 else 64
share_good = float(os.environ.get("GOOD", "0.5"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


ports = {"echo": free_port(), "reader": free_port(), "inside": free_port()}
metrics = free_port()
tmp = tempfile.mkdtemp(prefix="doorman-lockout-soak-")
conf = os.path.join(tmp, "doorman.conf")
reader = os.path.join(tmp, "reader.sh")
with open(reader, "w") as f:
    f.write("read l\necho ok\n")
with open(conf, "w") as f:
    f.write("127.0.0.1:%d stream tcp nowait,rate=0 root /bin/echo echo ok\n" % ports["echo"])
    f.write("127.0.0.1:%d stream tcp nowait,rate=0 root /bin/sh sh %s\n"
            % (ports["reader"], reader))
    f.write("127.0.0.1:%d stream tcp nowait,rate=0 root internal echo\n" % ports["inside"])
log = open(os.path.join(tmp, "doorman.log"), "w+")
d = subprocess.Popen([binary, "-f", conf, "--metrics", "127.0.0.1:%d" % metrics],
                     stdin=subprocess.DEVNULL, stderr=log)


def fds():
    return len(os.listdir("/proc/%d/fd" % d.pid))


lock = threading.Lock()
stats = {"served": 0, "refused": 0, "timeout": 0, "wrong": 0, "resets": 0}
worst = [0.0]
errors = []
stop_at = 0.0


def rst(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def good(name):
    t = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", ports[name]), timeout=10)
        s.settimeout(10)
        if name != "echo":
            s.sendall(b"ok\n")
        out = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            out += b
            if name == "inside" and out == b"ok\n":
                break
        s.close()
        key = "served" if out == b"ok\n" else "wrong"
        if key == "wrong":
            errors.append("%s: %r" % (name, out))
    except socket.timeout:
        key = "timeout"
        errors.append("%s: timeout" % name)
    except OSError as e:
        key = "refused"
        errors.append("%s: %s" % (name, e))
    with lock:
        stats[key] += 1
        worst[0] = max(worst[0], time.time() - t)


def bad(name):
    try:
        s = socket.create_connection(("127.0.0.1", ports[name]), timeout=10)
    except OSError:
        return
    how = random.random()
    if how < 0.33:
        pass
    elif how < 0.66:
        time.sleep(random.random() * 0.005)
    else:
        try:
            s.sendall(b"req\n")
        except OSError:
            pass
    rst(s)
    with lock:
        stats["resets"] += 1


def worker():
    while time.time() < stop_at:
        name = random.choice(list(ports))
        (good if random.random() < share_good else bad)(name)


try:
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", ports["inside"]), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.2)
    fds_start = fds()
    stop_at = time.time() + seconds
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1)
    fds_end = fds()
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics, timeout=10).read().decode()
finally:
    d.terminate()
    d.wait()
log.seek(0)
lines = log.read()
doa = sum(int(float(v)) for v in
          re.findall(r'^doorman_connections_dead_on_arrival_total\{[^}]*\} (\S+)', text, re.M))
pauses = lines.count("pause service=")
print("%.0f s at c=%d: well-behaved served %d, refused %d, timed out %d, wrong %d "
      "(slowest %.3f s); resets %d, of which dead on arrival %d; handlers started %d; "
      "pauses %d; doorman fds %d -> %d"
      % (seconds, conc, stats["served"], stats["refused"], stats["timeout"], stats["wrong"],
         worst[0], stats["resets"], doa, lines.count("accept service=") -
         lines.count("internal=echo"), pauses, fds_start, fds_end))
for e in errors[:10]:
    print("  " + e)
for l in [l for l in lines.splitlines() if "pause service=" in l][:5]:
    print("  " + l)
ok = stats["refused"] + stats["timeout"] + stats["wrong"] == 0 and pauses == 0
sys.exit(0 if ok else 1)
