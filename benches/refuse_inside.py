#!/usr/bin/env python3
"""What a refusal and the internal services cost doorman (loopback only).

Run: cargo build --release && python3 benches/refuse_inside.py [N]

- N connections (default 20000) to a service whose access list denies
  everyone: connections per second and doorman's CPU per refusal, from
  /proc/PID/stat;
- internal echo: 64 MiB sent and read back on one connection;
- internal chargen: 256 MiB read from one connection.
Every loop is bounded; doorman is started here and stopped by its pid.
"""
import os, socket, subprocess, sys, tempfile, threading, time

BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "doorman")
HZ = os.sysconf("SC_CLK_TCK")


def ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(conf):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "doorman.conf")
    open(path, "w").write(conf)
    p = subprocess.Popen([BIN, "-q", "-f", path], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    port = free_port()
    p = start(f"127.0.0.1:{port} stream tcp nowait.0,deny=any root /bin/true\n")
    t0, w0 = ticks(p.pid), time.time()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.recv(1)
        s.close()
    dt, used = time.time() - w0, (ticks(p.pid) - t0) / HZ
    print(f"refused by access list: {n} conns in {dt:.2f}s = {n/dt:.0f}/s, daemon CPU {used/n*1e6:.1f} us/conn")
    p.terminate()
    p.wait()

    echo, chargen = free_port(), free_port()
    p = start(f"127.0.0.1:{echo} stream tcp nowait root internal echo\n"
              f"127.0.0.1:{chargen} stream tcp nowait root internal chargen\n")
    data = os.urandom(1 << 20)
    s = socket.create_connection(("127.0.0.1", echo))
    got = [0]

    def reader():
        while got[0] < 64 << 20:
            b = s.recv(1 << 16)
            if not b:
                break
            got[0] += len(b)

    t0, w0 = ticks(p.pid), time.time()
    th = threading.Thread(target=reader)
    th.start()
    for _ in range(64):
        s.sendall(data)
    th.join()
    dt, used = time.time() - w0, (ticks(p.pid) - t0) / HZ
    print(f"internal echo: 64 MiB round trip in {dt:.2f}s = {64/dt:.0f} MiB/s, daemon CPU {used:.2f}s")
    s.close()
    s = socket.create_connection(("127.0.0.1", chargen))
    n, t0, w0 = 0, ticks(p.pid), time.time()
    while n < 256 << 20:
        b = s.recv(1 << 16)
        if not b:
            break
        n += len(b)
    dt, used = time.time() - w0, (ticks(p.pid) - t0) / HZ
    print(f"internal chargen: {n >> 20} MiB in {dt:.2f}s = {(n >> 20)/dt:.0f} MiB/s, daemon CPU {used:.2f}s")
    s.close()
    p.terminate()
    p.wait()


if __name__ == "__main__":
    main()
