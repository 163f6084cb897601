#!/usr/bin/env python3
"""Soak test: mixed traffic with faults through weir for a bounded time (10 minutes by
default), watching weir's RSS and open file descriptors, then checking that every request
the clients sent is in weir's counters and that every failure a client saw is counted as
one too.

Traffic, all at once: streamed chat (the bulk), non-streamed chat, streams that end in an
error event, streams whose backend connection breaks, streams that stall into the idle
timeout, a 2 % backend error rate, and clients that hang up mid-stream.

    python3 bench/soak.py                    # 10 minutes
    python3 bench/soak.py --minutes 2        # shorter
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import free_port, stop_all, wait_port  # noqa: E402
WEIR = os.path.join(ROOT, "target", "release", "weir")
PAGE = os.sysconf("SC_PAGE_SIZE")




def rss(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("weir_requests_total{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split(","))
            outcome = labels["outcome"].strip('"')
            out[outcome] = out.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
    return out


def hang_ups(port, stop, counter):
    """Clients that read a little of a stream and hang up."""
    body = json.dumps({"model": "tiny-llama", "stream": True, "max_tokens": 200, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "hang up on me"}]})
    while not stop.is_set():
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            r = c.getresponse()
            r.read(600)
            c.close()
            # A hang-up that got an error (the backend's error rate) saw a failure instead.
            counter[0 if r.status == 200 else 2] += 1
        except OSError:
            counter[1] += 1
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    seconds = int(args.minutes * 60)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)

    tmp = tempfile.mkdtemp(prefix="weir-soak-")
    sim_port, port, admin = free_port(), free_port(), free_port()
    conf = os.path.join(tmp, "weir.toml")
    with open(conf, "w") as f:
        f.write(f"""listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
models = ["tiny-llama"]
[[backends]]
url = "http://127.0.0.1:{sim_port}"
[timeouts]
first_token = "5s"
idle = "1s"
total = "60s"
[health]
passive_failures = 0
""")
    procs = []
    stop = threading.Event()
    try:
        sim = subprocess.Popen([WEIR, "sim", "--listen", f"127.0.0.1:{sim_port}", "--ttft", "20ms",
                                "--ttft-jitter", "20ms", "--itl", "10ms", "--itl-jitter", "5ms",
                                "--max-num-seqs", "100000", "--error-rate", "0.02"], stdout=subprocess.DEVNULL)
        procs.append(sim)
        wait_port(sim_port)
        weir = subprocess.Popen([WEIR, "--config", conf], stdout=subprocess.DEVNULL,
                                env=dict(os.environ, RUST_LOG="info"))
        procs.append(weir)
        wait_port(port)

        url = f"http://127.0.0.1:{port}"
        mixes = [
            ("streamed", 48, []),
            ("non-streamed", 4, ["--no-stream"]),
            ("error-event", 2, ["--header", "x-sim-fault:error-event=5"]),
            ("broken", 2, ["--header", "x-sim-fault:close=5"]),
            ("stalled", 2, ["--header", "x-sim-fault:stall=5"]),
        ]
        loads = []
        for name, conc, extra in mixes:
            out = os.path.join(tmp, f"{name}.json")
            cmd = [WEIR, "bench", "--url", url, "--concurrency", str(conc), "--duration", f"{seconds}s",
                   "--max-tokens", "40", "--prompt-tokens", "32", "--json", out] + extra
            loads.append((name, out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        hung = [0, 0, 0]
        threads = [threading.Thread(target=hang_ups, args=(port, stop, hung), daemon=True) for _ in range(2)]
        for t in threads:
            t.start()

        samples = []
        start = time.time()
        while any(p.poll() is None for _, _, p in loads):
            samples.append((time.time() - start, rss(weir.pid), fds(weir.pid)))
            time.sleep(5)
        stop.set()
        for t in threads:
            t.join()
        time.sleep(2)  # let the last hang-ups be recorded

        sent = errors = 0
        for name, out, p in loads:
            if p.returncode != 0:
                sys.exit(f"load {name} failed")
            with open(out) as f:
                r = json.load(f)["runs"][0]
            sent += r["requests"]
            errors += r["errors"]
            print(f"{name:<13} {r['requests']:>7} requests  {r['errors']:>6} errors seen by the client")
        print(f"{'hang-ups':<13} {hung[0] + hung[2]:>7} requests  {hung[2]:>6} errors seen by the client "
              f"(the rest closed mid-stream; {hung[1]} failed to start)")
        sent += hung[2]
        errors += hung[2]
        m = metrics(admin)
        counted = sum(m.values())
        failed = sum(v for k, v in m.items() if k not in ("ok", "cancelled"))
        print("weir counted:", {k: int(v) for k, v in sorted(m.items())})

        # Flat = no trend: the median of the last third of the samples after warm-up against
        # the median of the first third (open connections come and go with the traffic, so
        # single samples wander; a leak shows as growth between the thirds).
        warm = [s for s in samples if s[0] >= seconds * 0.2]
        third = max(len(warm) // 3, 1)

        def drift(i):
            first = statistics.median(s[i] for s in warm[:third])
            last = statistics.median(s[i] for s in warm[-third:])
            return first, last, abs(last - first) / max(first, 1)

        rss_first, rss_last, max_rss_dev = drift(1)
        fd_first, fd_last, max_fd_dev = drift(2)
        print(f"RSS after warm-up: {min(s[1] for s in warm) / 2**20:.1f}..{max(s[1] for s in warm) / 2**20:.1f} MiB; "
              f"median {rss_first / 2**20:.1f} MiB in the first third, {rss_last / 2**20:.1f} MiB in the last")
        print(f"open fds after warm-up: {min(s[2] for s in warm)}..{max(s[2] for s in warm)}; "
              f"median {fd_first:.0f} in the first third, {fd_last:.0f} in the last")
        checks = [
            ("every request counted", sent + hung[0] <= counted <= sent + hung[0] + hung[1], f"{counted:.0f} counted, {sent + hung[0]} sent (+{hung[1]} that may not have arrived)"),
            ("every client-seen failure counted", failed == errors, f"{failed:.0f} counted, {errors} seen"),
            ("every hang-up counted as cancelled", m.get("cancelled", 0) == hung[0], f"{m.get('cancelled', 0):.0f} vs {hung[0]}"),
            ("RSS flat after warm-up (5 %)", max_rss_dev <= 0.05, f"{max_rss_dev * 100:.1f} %"),
            ("fds flat after warm-up (5 %)", max_fd_dev <= 0.05, f"{max_fd_dev * 100:.1f} %"),
        ]
        ok = True
        for name, passed, detail in checks:
            ok &= passed
            print(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
        sys.exit(0 if ok else 1)
    finally:
        stop.set()
        stop_all(procs, 15)


if __name__ == "__main__":
    main()
