"""What checking a tenant's limits in Redis adds to a request's latency.

Starts redis-server on a free port, `weir sim` (no simulated delay) and two weirs in front of
it, both with the same API key: `plain`, whose key has no limits, and `redis`, whose key has
requests- and tokens-per-minute limits held in that Redis ([limits.redis]), set so high that
nothing is refused. The same `weir bench` load (non-streamed requests of one output token,
Poisson arrivals at `--rate`) runs against each, in interleaved rounds (order shuffled each
round). Prints, per target, the median over the rounds of its e2e p50 and p99, and the median
over the rounds of `redis` minus `plain` in the same round: the round trip to Redis (one Lua
script by EVALSHA) on the request's path, and the second script after the response, off it.

    python3 bench/tenants.py [--rounds 5] [--duration 10] [--rate 200]

On the 2-core default layout the simulator, Redis and the load share core 0, both weirs get
core 1 (one at a time runs).
"""

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import free_port, start, stop_all, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk-bench-tenant"


def weir_config(port, admin, sim_port, limits, redis_url):
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    lines = [
        f'listen = "127.0.0.1:{port}"',
        f'admin_listen = "127.0.0.1:{admin}"',
        'models = ["tiny-llama"]',
        "[[backends]]",
        f'url = "http://127.0.0.1:{sim_port}"',
    ]
    if redis_url:
        lines += ["[limits.redis]", f'url = "{redis_url}"']
    key = f'{{ name = "bench", sha256 = "{sha}"'
    if limits:
        key += ", limits = { requests_per_minute = 1000000000, tokens_per_minute = 1000000000000 }"
    lines += ["[auth]", f"keys = [{key} }}]"]
    return "\n".join(lines) + "\n"


def bench(weir, url, core, args, out):
    cmd = [weir, "bench", "--url", url, "--model", "tiny-llama", "--no-stream", "--max-tokens", "1",
           "--prompt-tokens", "8", "--rate", str(args.rate), "--duration", f"{args.duration}s",
           "--warmup", f"{args.warmup}s", "--header", f"authorization:Bearer {KEY}", "--json", out]
    p = start(cmd, core, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=args.duration + args.warmup + 120)
    if p.returncode != 0:
        sys.exit(f"weir bench failed against {url}:\n{err.decode(errors='replace')}")
    with open(out) as f:
        return json.load(f)["runs"][0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weir", default=os.path.join(ROOT, "target/release/weir"))
    ap.add_argument("--redis-server", default="redis-server")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of discarded load before each run")
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second (Poisson)")
    ap.add_argument("--cores", default="0,1,0", help="taskset lists: sim and redis, weir, load")
    args = ap.parse_args()
    sim_core, weir_core, load_core = args.cores.split(",")
    procs = []
    with tempfile.TemporaryDirectory(prefix="weir-tenants-") as tmp:
        try:
            redis_port, sim_port = free_port(), free_port()
            procs.append(start([args.redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", tmp], sim_core,
                               stdout=subprocess.DEVNULL))
            procs.append(start([args.weir, "sim", "--listen", f"127.0.0.1:{sim_port}", "--ttft", "0ms",
                                "--itl", "0ms", "--max-num-seqs", "1000000"], sim_core,
                               stdout=subprocess.DEVNULL))
            wait_port(redis_port)
            wait_port(sim_port)
            targets = {}
            for name, limits, redis in [("plain", False, None),
                                        ("redis", True, f"redis://127.0.0.1:{redis_port}/0")]:
                port, admin = free_port(), free_port()
                path = os.path.join(tmp, f"{name}.toml")
                with open(path, "w") as f:
                    f.write(weir_config(port, admin, sim_port, limits, redis))
                procs.append(start([args.weir, "--config", path], weir_core, stdout=subprocess.DEVNULL))
                wait_port(port)
                targets[name] = (f"http://127.0.0.1:{port}", admin)
            results = {name: [] for name in targets}
            for rnd in range(args.rounds):
                order = list(targets)
                random.shuffle(order)
                for name in order:
                    r = bench(args.weir, targets[name][0], load_core, args, os.path.join(tmp, "run.json"))
                    if r["errors"]:
                        sys.exit(f"{name}: {r['errors']} errors in round {rnd}: {r.get('errors_by_cause')}")
                    results[name].append((r["e2e"]["p50"], r["e2e"]["p99"]))
                    print(f"round {rnd}  {name:<6} {r['request_throughput']:8.1f} req/s  e2e p50 "
                          f"{r['e2e']['p50'] * 1e3:7.3f} ms  p99 {r['e2e']['p99'] * 1e3:7.3f} ms", flush=True)
            # The limits were checked: the redis weir's key has counts in Redis.
            keys = subprocess.run(["redis-cli", "-p", str(redis_port), "--scan"], capture_output=True,
                                  text=True).stdout.split()
            if not keys:
                sys.exit("nothing was counted in Redis: the limits were not checked there")
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{targets['redis'][1]}/metrics").read().decode()
            failed = [l for l in metrics.splitlines()
                      if l.startswith("weir_limit_store_errors_total") and float(l.split()[-1]) > 0]
            if failed:
                sys.exit(f"checks in Redis failed (served unchecked): {failed}")
        finally:
            stop_all(procs, 10)
    med = lambda xs: statistics.median(xs) * 1e3
    print(f"\n{args.rounds} rounds of {args.duration} s at {args.rate:g} req/s (Poisson), non-streamed, "
          "medians over the rounds:")
    print("| weir | e2e p50 (ms) | e2e p99 (ms) |\n|---|---:|---:|")
    for name in targets:
        print(f"| {name} | {med([r[0] for r in results[name]]):.3f} | {med([r[1] for r in results[name]]):.3f} |")
    d50 = med([b[0] - a[0] for a, b in zip(results["plain"], results["redis"])])
    d99 = med([b[1] - a[1] for a, b in zip(results["plain"], results["redis"])])
    print(f"| added by the Redis check | {d50:+.3f} | {d99:+.3f} |")


if __name__ == "__main__":
    main()
