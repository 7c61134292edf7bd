#!/usr/bin/env bash
# One measurement point, for quick comparisons outside the full benchmark:
# starts a server command, warms it up, runs the benchmark's load
# generator against 127.0.0.1:PORT with C connections in flight for N
# connections, and prints the rate, the p99 latency and the server's own
# CPU per connection (utime+stime from /proc/PID/stat). The server is
# stopped by its pid. Loopback only.
#
#     bash benches/point.sh PORT C N -- COMMAND ARGS...
#
# e.g. (after `cargo bench --bench spawn --no-run` has built the generator
# and the handlers):
#     h=target/release/bench-handlers/hello
#     bash benches/point.sh 17700 8 5000 -- target/release/doorman -q --listen 127.0.0.1:17700 -- $h
#     DOORMAN_SPAWN=vfork bash benches/point.sh 17701 8 5000 -- target/release/doorman -q --listen 127.0.0.1:17701 -- $h
#     bash benches/point.sh 17702 8 5000 -- tcpserver -H -R -l 0 -c 100000 -b 1024 127.0.0.1 17702 $h
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 5 ] || [ "$4" != "--" ]; then
    echo "usage: bash benches/point.sh PORT C N -- COMMAND ARGS..." >&2
    exit 2
fi
port=$1 c=$2 n=$3
shift 4
gen=$(ls -t target/release/deps/spawn-* 2>/dev/null | grep -v '\.d$' | head -1)
if [ -z "$gen" ]; then
    echo "build the generator first: cargo bench --bench spawn --no-run" >&2
    exit 2
fi
"$@" </dev/null >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do "$gen" --load 127.0.0.1:"$port" -c 1 -n 1 >/dev/null 2>&1 && break; sleep 0.05; done
"$gen" --load 127.0.0.1:"$port" -c "$c" -n 500 >/dev/null 2>&1
ticks() { awk '{print $14 + $15}' /proc/$pid/stat; }
t0=$(ticks)
line=$("$gen" --load 127.0.0.1:"$port" -c "$c" -n "$n" | tail -1)
t1=$(ticks)
hz=$(getconf CLK_TCK)
rate=$(echo "$line" | awk '{print $2}')
p99=$(echo "$line" | awk '{for (i = 1; i < NF; i++) if ($i == "p99") print $(i + 1)}')
echo "c=$c $rate conn/s, p99 $p99 ms, server CPU $(( (t1 - t0) * 1000000 / hz / n )) us/conn"
