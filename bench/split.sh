#!/bin/bash
# Where the proxy's CPU goes, weir against nginx, on a machine of 2 cores or more: the user
# and system time (from /proc) each spends per request at a fixed rate, and with --strace the
# system calls each makes per request (strace -c over all its threads).
#
#   bench/split.sh WEIR [RATE] [SECONDS] [--strace]
#
# WEIR is a release build of weir (it also runs the simulator and the load). weir's proxy and
# nginx's one worker share core 1; the simulator and the load run on core 0. Non-streamed chat
# requests of one output token, Poisson arrivals at RATE a second (default 3000) for SECONDS
# (default 6) after a one-second warm-up, two rounds, weir first in each. It needs nginx,
# taskset, curl and python3 (and strace for --strace).
set -euo pipefail
W=$(realpath "$1"); R=${2:-3000}; D=${3:-6}; TRACE=${4:-}
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
fp() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SIM=$(fp); P=$(fp); A=$(fp); NP=$(fp)
taskset -c 0 "$W" sim --listen 127.0.0.1:$SIM --ttft 0ms --ttft-jitter 0ms --max-num-seqs 100000 >/dev/null 2>&1 & SP=$!
RUST_LOG=info taskset -c 1 "$W" --listen 127.0.0.1:$P --admin-listen 127.0.0.1:$A \
  --backend http://127.0.0.1:$SIM --model tiny-llama > "$TMP/access.log" 2>/dev/null & WP=$!
python3 -c "
import sys; sys.path.insert(0, '$HERE'); from procs import nginx_conf
open('$TMP/nginx.conf', 'w').write(nginx_conf('$TMP', $NP, '127.0.0.1:$SIM'))"
taskset -c 1 nginx -c "$TMP/nginx.conf" -p "$TMP" >/dev/null 2>&1 & NGP=$!
trap 'kill $SP $WP $NGP 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:$A/readyz >/dev/null && break; sleep 0.2; done
sleep 0.5
NGW=$(pgrep -P $NGP | head -1)
load() { taskset -c 0 "$W" bench --url "http://127.0.0.1:$1" --model tiny-llama --no-stream --max-tokens 1 \
  --prompt-tokens 8 --rate "$R" --duration "$2" "${@:3}" >/dev/null 2>&1; }
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for round in 1 2; do
  for x in "weir:$WP:$P" "nginx:$NGW:$NP"; do
    IFS=: read -r name pid port <<< "$x"
    load "$port" 1s
    if [ "$TRACE" = "--strace" ]; then
      strace -c -f -p "$pid" -o "$TMP/$name.strace" 2>/dev/null & ST=$!
      sleep 0.5
    fi
    read -r u0 s0 < <(ticks "$pid")
    load "$port" "${D}s" --json "$TMP/$name.json"
    read -r u1 s1 < <(ticks "$pid")
    n=$(python3 -c "import json; print(json.load(open('$TMP/$name.json'))['runs'][0]['requests'])")
    python3 -c "print(f'$name round $round: {$n} requests; per 10,000 requests user {($u1-$u0)/$hz/$n*1e4:.2f} s, system {($s1-$s0)/$hz/$n*1e4:.2f} s')"
    if [ "$TRACE" = "--strace" ]; then
      kill -INT $ST; wait $ST || true
      awk -v n="$n" 'NR > 2 && $0 !~ /^-/ && NF >= 5 { printf "    %-14s %6.2f per request\n", $NF, $4 / n }' "$TMP/$name.strace" | head -12
    fi
  done
done
