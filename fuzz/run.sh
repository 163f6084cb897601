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
# Seed the inspection corpus with request bodies of the shapes vLLM takes (duplicate keys,
# lax integers, stream_options in every form).
i=0
for b in '{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":8}' \
         '{"model":"m","stream":false,"stream":true,"max_tokens":8.0,"n":"2"}' \
         '{"model":"m","stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true}}' \
         '{"model":"m","stream":true,"stream_options":null,"prompt":"x"}'; do
  i=$((i + 1)); printf %s "$b" > "fuzz/corpus/inspect/seed-$i"
done
for t in sse inspect; do
  echo "== fuzzing $t for ${seconds}s"
  cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048
done
