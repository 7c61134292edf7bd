#!/usr/bin/env bash
# System calls per connection made by each super-server's own process (not
# its children), over N connections at c=1 and at c=8 with the static hello
# handler. Counted with perf's syscall tracepoints (counters, no stop per
# call, so the daemon batches as it does unobserved) when perf works here,
# otherwise with strace -c (whose stops change the batching). Run after
# `bash benches/deps.sh` (peers) and from the top of a checkout:
#     bash benches/syscalls.sh [N]
# Loopback only; every process started here is stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
cargo build --release -q
cargo bench --bench spawn --no-run -q 2>/dev/null
gen=$(ls -t target/release/deps/spawn-* | grep -v '\.d$' | head -1)
mkdir -p target/release/bench-handlers
hello=$PWD/target/release/bench-handlers/hello
minspawn=$PWD/target/release/bench-handlers/minspawn
cc -O2 -static -o "$hello" benches/handlers/hello.c
cc -O2 -o "$minspawn" benches/handlers/minspawn.c
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
port=17600
if perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
    tool=perf
else
    tool=strace
fi

# Prints "total | top calls" per connection for one run of n at c.
measure() { # name pid port c
    local name=$1 pid=$2 p=$3 c=$4 s f=$tmp/$1.$4
    "$gen" --load 127.0.0.1:"$p" -c "$c" -n 200 >/dev/null
    if [ $tool = perf ]; then
        perf stat --no-inherit -e 'syscalls:sys_enter_*' -p "$pid" -o "$f" & s=$!
        sleep 0.5
    else
        strace -c -o "$f" -p "$pid" 2>"$f.err" & s=$!
        for _ in $(seq 100); do grep -q attached "$f.err" 2>/dev/null && break; sleep 0.05; done
    fi
    "$gen" --load 127.0.0.1:"$p" -c "$c" -n "$n" >/dev/null
    kill -INT "$s"; wait "$s" || true
    python3 - "$f" "$n" "$tool" <<'PY'
import sys
path, n, tool = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = {}
for line in open(path):
    f = line.split()
    if tool == "perf":
        if len(f) >= 2 and f[1].startswith("syscalls:sys_enter_") and f[0][0].isdigit():
            v = int(f[0].replace(",", ""))
            if v:
                calls[f[1][len("syscalls:sys_enter_"):]] = v
    elif len(f) >= 5 and f[0][0].isdigit() and f[2].isdigit() and f[-1] != "total":
        calls[f[-1]] = int(f[3])
total = sum(calls.values())
top = sorted(calls.items(), key=lambda kv: -kv[1])[:7]
print("%.1f | %s" % (total / n, ", ".join("%s %.2f" % (k, v / n) for k, v in top)))
PY
}

count() { # name pid port
    local name=$1 pid=$2 p=$3 one eight
    for _ in $(seq 100); do "$gen" --load 127.0.0.1:"$p" -c 1 -n 1 >/dev/null 2>&1 && break; sleep 0.05; done
    one=$(measure "$name" "$pid" "$p" 1)
    eight=$(measure "$name" "$pid" "$p" 8)
    echo "| $name | ${one%% |*} | ${eight%% |*} | ${one#* | } |"
}

start() { # name cmd...
    local name=$1; shift
    "$@" </dev/null >/dev/null 2>&1 & pids+=($!)
    count "$name" "$!" "$port"
    port=$((port + 1))
}

echo "counted with $tool, $n connections per point"
echo
echo "| daemon | syscalls/conn c=1 | c=8 | the most frequent at c=1, per connection |"
echo "|---|---:|---:|---|"
start doorman target/release/doorman -q --listen 127.0.0.1:$port -- "$hello"
start "doorman (vfork)" env DOORMAN_SPAWN=vfork target/release/doorman -q --listen 127.0.0.1:$port -- "$hello"
start "doorman (fork)" env DOORMAN_SPAWN=fork target/release/doorman -q --listen 127.0.0.1:$port -- "$hello"
start "minimal C spawner (reference)" "$minspawn" $port "$hello"
if command -v tcpserver >/dev/null; then
    start tcpserver tcpserver -H -R -l 0 -c 100000 -b 1024 127.0.0.1 $port "$hello"
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
