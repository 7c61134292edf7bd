#!/usr/bin/env python3
"""A bounded soak: N connections alternating two services while doorman
reloads every 0.5 s; prints replies that were wrong, doorman's fd count and
RSS before and after, and zombies left. Loopback only.

    cargo build --release && python3 benches/soak.py 10000
"""
import os, re, signal, socket, subprocess, sys, tempfile, threading, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
conf.write("127.0.0.1:0 stream tcp nowait.0 root /bin/echo echo ok\n"
           "127.0.0.2:0 stream tcp nowait/4,rate=0 root /bin/cat cat\n")
conf.close()
p = subprocess.Popen([os.path.join(root, "target/release/doorman"), "-f", conf.name],
                     stderr=subprocess.PIPE, text=True)
addrs = []
while True:
    line = p.stderr.readline()
    m = re.search(r"addr=(\S+)", line)
    if m:
        addrs.append(m.group(1))
    if "ready" in line or not line:
        break
threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()


def usage():
    fds = len(os.listdir(f"/proc/{p.pid}/fd"))
    rss = int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0])
    return fds, rss


echo, cat = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in addrs]
time.sleep(0.2)
before = usage()
stop = False


def reloader():
    while not stop:
        os.kill(p.pid, signal.SIGHUP)
        time.sleep(0.5)


t = threading.Thread(target=reloader)
t.start()
n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
bad = 0
t0 = time.time()
for i in range(n):
    addr = echo if i % 2 == 0 else cat
    s = socket.create_connection(addr, timeout=10)
    if addr == cat:
        s.sendall(b"x")
        s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        b = s.recv(100)
        if not b:
            break
        data += b
    s.close()
    if data not in (b"ok\n", b"x"):
        bad += 1
dt = time.time() - t0
stop = True
t.join()
time.sleep(0.5)
after = usage()
zombies = [l for l in os.popen(f"ps -o stat= --ppid {p.pid}") if l.startswith("Z")]
print(f"{n} connections in {dt:.1f}s ({n / dt:.0f}/s) with SIGHUP every 0.5s: "
      f"bad={bad} fds {before[0]}->{after[0]} rss_kb {before[1]}->{after[1]} zombies={len(zombies)}")
p.send_signal(signal.SIGTERM)
p.wait()
os.unlink(conf.name)
sys.exit(1 if bad or zombies or after[0] != before[0] else 0)
