#!/usr/bin/env python3
"""OpenAI's Python SDK against weir, for tests/it/openai_sdk.rs: prints as JSON what the SDK
saw, for the Rust test to compare with what weir sent.

  openai_sdk.py calls BASE_URL KEY N
      N chat completions with max_retries=0: for each, the status, the rate-limit headers
      the SDK handed back (raw response, or the RateLimitError's response) and, when
      refused, the error's class and message.
  openai_sdk.py retry BASE_URL KEY
      one chat completion with max_retries=1: each HTTP attempt the SDK made (status,
      rate-limit headers, when it was sent and when its answer came, monotonic seconds) and
      the final status.
"""

import json
import sys
import time

import openai

HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after",
    "retry-after-ms",
)
# Bounds every request: a hung gateway fails the test instead of holding it.
TIMEOUT = 20.0


def pick(headers):
    return {h: headers[h] for h in HEADERS if h in headers}


def create(client):
    return client.chat.completions.with_raw_response.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "How high is the weir?"}],
        max_tokens=3,
    )


def calls(base_url, key, n):
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=TIMEOUT)
    out = []
    for _ in range(n):
        try:
            raw = create(client)
            completion = raw.parse()
            out.append(
                {
                    "status": raw.status_code,
                    "headers": pick(raw.headers),
                    "content": completion.choices[0].message.content,
                }
            )
        except openai.RateLimitError as e:
            out.append(
                {
                    "status": e.status_code,
                    "headers": pick(e.response.headers),
                    "error": type(e).__name__,
                    "message": e.message,
                }
            )
    return out


def retry(base_url, key):
    attempts = []

    def on_request(request):
        attempts.append({"sent": time.monotonic()})

    def on_response(response):
        attempts[-1].update(
            {
                "answered": time.monotonic(),
                "status": response.status_code,
                "headers": pick(response.headers),
            }
        )

    http = openai.DefaultHttpxClient(
        event_hooks={"request": [on_request], "response": [on_response]}
    )
    client = openai.OpenAI(
        base_url=base_url, api_key=key, max_retries=1, timeout=TIMEOUT, http_client=http
    )
    try:
        raw = create(client)
        raw.parse()
        final = raw.status_code
    except openai.APIStatusError as e:
        final = e.status_code
    return {"attempts": attempts, "final": final}


def main():
    mode, base_url, key = sys.argv[1:4]
    if mode == "calls":
        out = calls(base_url, key, int(sys.argv[4]))
    elif mode == "retry":
        out = retry(base_url, key)
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
