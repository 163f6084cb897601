#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s each; FUZZ_SECONDS to change).
# Needs cargo-fuzz (`cargo install cargo-fuzz`); it uses nightly-only flags, which the
# stable toolchain accepts with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/sse fuzz/corpus/inspect
# Seed the SSE corpus with vLLM's own captures.
for f in tests/fixtures/vllm-0.32.0/*.sse; do
  [ -f "$f" ] && { printf '\x80'; cat "$f"; } > "fuzz/corpus/sse/$(basename "$f")"
done
for t in sse inspect; do
  echo "== fuzzing $t for ${seconds}s"
  cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048
done
