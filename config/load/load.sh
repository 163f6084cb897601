#!/bin/sh
# The stack's `load` service: a few streamed chat requests a second through weir, for the
# dashboard and Jaeger to show something. One request in twenty asks the simulator for a
# slow first token (x-sim-ttft-ms), so the TTFT panels and the goodput show misses.
# The model is the first one weir's backend lists.
set -u
until model=$(curl -sf "$WEIR_URL/v1/models" | sed -n 's/.*"data": *\[ *{ *"id": *"\([^"]*\)".*/\1/p') && [ -n "$model" ]; do
  sleep 2
done
echo "sending load to $WEIR_URL for model $model"
i=0
while true; do
  i=$((i + 1))
  slow=""
  [ $((i % 20)) -eq 0 ] && slow="x-sim-ttft-ms: 800"
  curl -sS -o /dev/null -H "content-type: application/json" ${slow:+-H "$slow"} \
    -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"How high is the weir?\"}],\"max_tokens\":48,\"stream\":true}" \
    "$WEIR_URL/v1/chat/completions" &
  sleep 0.3
  [ $((i % 10)) -eq 0 ] && wait
done
