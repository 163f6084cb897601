#!/bin/bash
# A profile-guided build of weir: an instrumented build serves a bounded training load from
# `weir bench` against `weir sim` (every API, streamed and not, short and long prompts), its
# profile is merged, and the release build is made again with it.
#
#   bench/pgo.sh                      # -> target/pgo/<host triple>/release/weir
#   bench/pgo.sh --out /tmp/weir-pgo  # and a copy there
#
# Needs rustup's llvm-tools (`rustup component add llvm-tools`: llvm-profdata of the same
# LLVM as rustc). The plain release build (target/release/weir) runs the simulator and the
# load, so only the gateway's work is in the profile. Every step runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=""
if [ "${1:-}" = "--out" ]; then OUT=$2; fi
SYSROOT=$(rustc --print sysroot)
PROFDATA=$(ls "$SYSROOT"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -1 || true)
if [ -z "$PROFDATA" ]; then
    rustup component add llvm-tools
    PROFDATA=$(ls "$SYSROOT"/lib/rustlib/*/bin/llvm-profdata | head -1)
fi
# With --target, RUSTFLAGS reach the binary's crates only: build scripts and proc macros are
# neither instrumented nor optimised with the profile.
HOST=$(rustc -vV | sed -n 's/^host: //p')
DATA=$PWD/target/pgo-data
rm -rf "$DATA"
mkdir -p "$DATA"

cargo build --release --locked --bin weir
RUSTFLAGS="-Cprofile-generate=$DATA" cargo build --release --locked --bin weir \
    --target "$HOST" --target-dir target/pgo-gen

W=target/release/weir
G=target/pgo-gen/$HOST/release/weir
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SIM=$(port); GW=$(port); ADMIN=$(port)
$W sim --listen 127.0.0.1:$SIM --ttft 1ms --itl 0ms --max-model-len 8192 >/dev/null 2>&1 &
SIM_PID=$!
$G --listen 127.0.0.1:$GW --admin-listen 127.0.0.1:$ADMIN --backend http://127.0.0.1:$SIM \
    --model tiny-llama >/dev/null 2>&1 &
GW_PID=$!
trap 'kill $SIM_PID $GW_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -sf http://127.0.0.1:$ADMIN/readyz >/dev/null && break
    sleep 0.1
done
L="$W bench --url http://127.0.0.1:$GW --model tiny-llama"
# Mostly the request and the token paths the benchmarks measure, and each API once.
$L --no-stream --max-tokens 1 --prompt-tokens 8 --concurrency 16 --requests 30000 >/dev/null
$L --no-stream --max-tokens 1 --prompt-tokens 2000 --concurrency 8 --requests 3000 >/dev/null
$L --max-tokens 64 --prompt-tokens 64 --concurrency 64 --requests 3000 >/dev/null
$L --no-stream --max-tokens 16 --prompt-tokens 64 --concurrency 8 --requests 3000 >/dev/null
for api in completions responses messages; do
    $L --api $api --max-tokens 16 --concurrency 8 --requests 500 >/dev/null
    $L --api $api --no-stream --max-tokens 16 --concurrency 8 --requests 500 >/dev/null
done
$L --api embeddings --concurrency 8 --requests 500 >/dev/null
for _ in $(seq 50); do curl -sf http://127.0.0.1:$ADMIN/metrics >/dev/null; done
# SIGTERM: the gateway drains and exits, and the profile is written at exit.
kill -TERM $GW_PID
wait $GW_PID || true
kill $SIM_PID 2>/dev/null || true

"$PROFDATA" merge -o "$DATA/weir.profdata" "$DATA"/*.profraw
RUSTFLAGS="-Cprofile-use=$DATA/weir.profdata" cargo build --release --locked --bin weir \
    --target "$HOST" --target-dir target/pgo
BIN=target/pgo/$HOST/release/weir
if [ -n "$OUT" ]; then cp "$BIN" "$OUT"; fi
echo "$BIN"
