#!/usr/bin/env python3
"""Instructions per request and per streamed token of one or more weir builds, counted by
valgrind's callgrind (instruction counts do not drift with the machine's load, unlike time).

Each build serves the same `weir bench` load twice under callgrind — requests of 2 and of 32
output tokens — after a short warm-up that is not counted. The difference between the two
loads, over the tokens it adds, is the cost of a token; the short load, less its tokens, is
the cost of a request. The first build is the baseline; the others are given as ratios to it.
With `--mode requests` the load is non-streamed chat requests of one output token, and the
figure is the instructions per request (the path the requests mode of bench/overhead.py
measures in CPU time).

    python3 bench/instructions.py                              # target/release/weir alone
    python3 bench/instructions.py --mode requests --build base=/tmp/old/weir --build new=target/release/weir
    python3 bench/instructions.py --build base=/tmp/old/weir --build new=target/release/weir
    # the same with prompts of 2,000 words (about 11 KB of request body)
    python3 bench/instructions.py --mode requests --prompt-tokens 2000 --build base=/tmp/old/weir --build new=target/release/weir
    # one binary, with and without OTLP metrics (pushed every second to a local sink)
    python3 bench/instructions.py --build off=target/release/weir --build otlp=target/release/weir \
        --env otlp:OTEL_METRICS_EXPORTER=otlp --env otlp:OTEL_METRIC_EXPORT_INTERVAL=1000 \
        --env otlp:OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=http/protobuf \
        --env otlp:OTEL_EXPORTER_OTLP_METRICS_ENDPOINT={sink}/v1/metrics

`{sink}` in an --env value is the URL of an HTTP server started here that answers every POST
with 200 and an empty body (an OTLP/HTTP receiver that keeps nothing).

Needs valgrind (`apt-get install valgrind`). The simulator and the load run outside valgrind.
"""

import argparse
import glob
import http.server
import threading
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import free_port, stop_all, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIR = os.path.join(ROOT, "target", "release", "weir")


def wait_ready(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit("the gateway under valgrind did not become ready")


class Sink(http.server.BaseHTTPRequestHandler):
    """Takes a POST, reads its body and answers 200 with nothing."""
    posts = 0

    def do_POST(self):
        Sink.posts += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


def start_sink():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def count(build, sim_port, max_tokens, args, tmp, env, stream=True):
    """Instructions weir executed while serving args.requests requests of max_tokens tokens."""
    port, admin = free_port(), free_port()
    out = os.path.join(tmp, f"cg.{max_tokens}.out")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", build,
           "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
           "--backend", f"http://127.0.0.1:{sim_port}", "--model", "tiny-llama"]
    gw = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**os.environ, "RUST_LOG": "info", **env})
    try:
        wait_ready(admin)
        load = [args.weir, "bench", "--url", f"http://127.0.0.1:{port}", "--max-tokens", str(max_tokens),
                "--prompt-tokens", str(args.prompt_tokens)] + ([] if stream else ["--no-stream"])
        subprocess.run(load + ["--concurrency", "1", "--requests", "20"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["callgrind_control", "--zero", str(gw.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(load + ["--concurrency", str(args.concurrency), "--requests", str(args.requests)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["callgrind_control", "--dump", str(gw.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        stop_all([gw], 20)
    dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
    if not dumps:
        sys.exit("callgrind wrote no dump")
    total = 0
    with open(dumps[-1]) as f:
        for line in f:
            m = re.match(r"summary:\s+(\d+)", line) or re.match(r"totals:\s+(\d+)", line)
            if m:
                total = int(m.group(1))
    for d in glob.glob(out + "*"):
        os.remove(d)
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", default=[],
                    help="NAME=PATH of a weir binary; repeat; the first is the baseline")
    ap.add_argument("--env", action="append", default=[],
                    help="NAME:KEY=VALUE: an environment variable for build NAME; repeat")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=64,
                    help="the prompt's length in words (each about a token): a long prompt shows what reading the request body costs")
    ap.add_argument("--mode", choices=["streams", "requests"], default="streams",
                    help="streams: streamed chat, per request and per token; requests: non-streamed "
                         "chat requests of one output token, per request")
    ap.add_argument("--weir", default=WEIR,
                    help="the weir binary that runs the simulator and the load (default: %(default)s)")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is needed: apt-get install valgrind")
    builds = [b.split("=", 1) for b in args.build] or [["weir", WEIR]]
    sink, sink_url = start_sink()
    envs = {}
    for e in args.env:
        name, kv = e.split(":", 1)
        key, value = kv.split("=", 1)
        envs.setdefault(name, {})[key] = value.replace("{sink}", sink_url)
    tmp = tempfile.mkdtemp(prefix="weir-instr-")
    sim_port = free_port()
    # The simulator: 5 ms to the first token, 2 ms between tokens.
    sim = subprocess.Popen([args.weir, "sim", "--listen", f"127.0.0.1:{sim_port}", "--ttft", "5ms", "--itl", "2ms",
                            "--max-num-seqs", "100000", "--max-model-len", str(max(4096, 2 * args.prompt_tokens))],
                           stdout=subprocess.DEVNULL)
    rows = []
    try:
        wait_port(sim_port)
        for name, path in builds:
            env = envs.get(name, {})
            if args.mode == "requests":
                total = count(path, sim_port, 1, args, tmp, env, stream=False)
                rows.append((name, total / args.requests, None))
                continue
            short = count(path, sim_port, 2, args, tmp, env)
            long = count(path, sim_port, 32, args, tmp, env)
            per_token = (long - short) / (args.requests * 30)
            per_request = short / args.requests - 2 * per_token
            rows.append((name, per_request, per_token))
    finally:
        stop_all([sim], 10)
        sink.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]
    if args.mode == "requests":
        print(f"{args.requests} non-streamed one-token chat requests, {args.concurrency} at a time; "
              "instructions (callgrind Ir)")
        print(f"{'build':<12} {'per request':>12} {'ratio':>7}")
        for name, req, _ in rows:
            print(f"{name:<12} {req:>12,.0f} {req / base[1]:>7.3f}")
        return
    print(f"{args.requests} streamed chat requests, {args.concurrency} at a time; instructions (callgrind Ir)")
    print(f"{'build':<12} {'per request':>12} {'ratio':>7} {'per token':>10} {'ratio':>7}")
    for name, req, tok in rows:
        print(f"{name:<12} {req:>12,.0f} {req / base[1]:>7.3f} {tok:>10,.0f} {tok / base[2]:>7.3f}")
    if Sink.posts:
        print(f"the sink took {Sink.posts} POSTs")


if __name__ == "__main__":
    main()
