#!/usr/bin/env bash
# System calls per connection made by each super-server's own process
# (strace -c attached to the daemon alone, not its children), over N
# connections at c=1 with the static hello handler. Run after
# `bash benches/deps.sh` (peers) and from the top of a checkout:
#     bash benches/syscalls.sh [N]
# Loopback only; every process started here is stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
cargo build --release -q
cargo bench --bench spawn --no-run -q 2>/dev/null
gen=$(ls -t target/release/deps/spawn-* | grep -v '\.d$' | head -1)
mkdir -p target/release/bench-handlers
hello=$PWD/target/release/bench-handlers/hello
cc -O2 -static -o "$hello" benches/handlers/hello.c
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
port=17600

count() { # name pid port
    local name=$1 pid=$2 p=$3 s out
    for _ in $(seq 100); do "$gen" --load 127.0.0.1:"$p" -c 1 -n 1 >/dev/null 2>&1 && break; sleep 0.05; done
    strace -c -o "$tmp/$name.sc" -p "$pid" 2>"$tmp/$name.err" & s=$!
    for _ in $(seq 100); do grep -q attached "$tmp/$name.err" 2>/dev/null && break; sleep 0.05; done
    "$gen" --load 127.0.0.1:"$p" -c 1 -n "$n" >/dev/null
    kill -INT "$s"; wait "$s" || true
    out=$(python3 - "$tmp/$name.sc" "$n" <<'PY'
import sys
calls, total = {}, 0
n = int(sys.argv[2])
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[-1] == "total":
        total = int(f[3])
    elif len(f) >= 5 and f[0][0].isdigit() and f[2].isdigit():
        calls[f[-1]] = int(f[3])
top = sorted(calls.items(), key=lambda kv: -kv[1])[:7]
print("%.1f | %s" % (total / n, ", ".join("%s %.1f" % (k, v / n) for k, v in top)))
PY
)
    echo "| $name | $out |"
}

start() { # name cmd...
    local name=$1; shift
    "$@" </dev/null >/dev/null 2>&1 & pids+=($!)
    count "$name" "$!" "$port"
    port=$((port + 1))
}

echo "| daemon | syscalls/conn | the most frequent, per connection |"
echo "|---|---:|---|"
start doorman target/release/doorman -q --listen 127.0.0.1:$port -- "$hello"
start "doorman (fork)" env DOORMAN_SPAWN=fork target/release/doorman -q --listen 127.0.0.1:$port -- "$hello"
if command -v tcpserver >/dev/null; then
    start tcpserver tcpserver -H -R -l 0 -c 100000 127.0.0.1 $port "$hello"
fi
peers=/opt/doorman-peers/usr/sbin
if [ -x $peers/xinetd ]; then
    printf 'defaults\n{\n instances = UNLIMITED\n cps = 1000000 1\n log_on_success =\n log_on_failure =\n}\nservice b\n{\n type = UNLISTED\n socket_type = stream\n protocol = tcp\n port = %s\n bind = 127.0.0.1\n wait = no\n user = root\n server = %s\n}\n' $port "$hello" >"$tmp/x.conf"
    start xinetd $peers/xinetd -dontfork -f "$tmp/x.conf" -pidfile "$tmp/x.pid"
fi
if [ -x $peers/inetd ]; then
    echo "127.0.0.1:$port stream tcp nowait.100000000 root $hello hello" >"$tmp/i.conf"
    start openbsd-inetd $peers/inetd -i -R 100000000 "$tmp/i.conf"
fi
if command -v systemd-socket-activate >/dev/null; then
    start systemd-socket-activate systemd-socket-activate -l 127.0.0.1:$port -a --inetd "$hello"
fi
