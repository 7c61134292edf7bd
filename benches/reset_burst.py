#!/usr/bin/python3
"""The reset burst of issue 19, for the closing note's numbers (not a test):
doorman --listen 127.0.0.1:PORT -- /bin/echo ok is stopped (SIGSTOP), 2,000
clients connect and reset (SO_LINGER {1, 0}, close) so that they wait in
the backlog together, doorman continues, and one real client connects.
Prints the handlers started, whether a pause was logged and how long the
real client waited.

    /usr/bin/python3 benches/reset_burst.py target/release/doorman 18101
"""
import os, signal, socket, struct, subprocess, sys, tempfile, time

binary, port = sys.argv[1], int(sys.argv[2])
log = tempfile.NamedTemporaryFile(prefix="reset-burst-", suffix=".log", delete=False)
p = subprocess.Popen([binary, "--listen", "127.0.0.1:%d" % port, "--", "/bin/echo", "ok"],
                     stdin=subprocess.DEVNULL, stderr=log)
try:
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGSTOP)
    for _ in range(2000):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    os.kill(p.pid, signal.SIGCONT)
    t = time.time()
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=45)
        answer = c.recv(100)
    except OSError as e:
        answer = repr(e)
    waited = time.time() - t
    time.sleep(1)
finally:
    os.kill(p.pid, signal.SIGCONT)
    p.terminate()
    p.wait()
text = open(log.name, errors="replace").read()
os.unlink(log.name)
print("handlers started: %d, paused: %s, the real client waited %.3f s for %r"
      % (text.count("accept service="), "pause service=" in text, waited, answer))
