#!/usr/bin/env python3
"""Gateway overhead benchmark: the same `weir bench` load sent three ways in interleaved
rounds — straight to `weir sim`, through weir, and through nginx (a plain proxy that measures
nothing) — at several concurrencies. Writes the table to BENCHMARKS.md.

Pinning (2 cores): the load generator and the simulator share core 0, the proxy under test
(weir, or nginx's single worker) has core 1 to itself, so its CPU time is its own and
neither proxy competes with the load for a core.

    python3 bench/overhead.py                     # defaults: 16,256,2048 streams, 3 rounds
    python3 bench/overhead.py --levels 16,256 --rounds 1 --duration 5   # quick look
    python3 bench/overhead.py --no-build --build pool=/tmp/a/weir --build legacy=/tmp/b/weir
                                                  # two weir builds (and nginx) in the same rounds
    python3 bench/overhead.py --mode requests --rates 2000   # the per-request path (bench/rate.py)
    python3 bench/overhead.py --mode requests --cores sim=0-5,proxy=6-9,load=10-15 --rates 10000
    cargo build --release --example floor    # the HTTP stack alone, as one more column:
    python3 bench/overhead.py --mode requests --build weir=target/release/weir \
        --build floor=target/release/examples/floor
"""

import argparse
import datetime
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rate  # noqa: E402
from procs import (cpu_since, cpu_split, free_port, median, nginx_conf, rss_bytes, start,  # noqa: E402
                   stop_all, wait_port)
WEIR = os.path.join(ROOT, "target", "release", "weir")


def histogram_quantiles(text, name, qs):
    """Quantiles of a Prometheus histogram (all series summed), as histogram_quantile does."""
    buckets = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[float(le)] = buckets.get(float(le), 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets, qs


def quantile_from_buckets(buckets, q):
    items = sorted(buckets.items())
    if not items or items[-1][1] == 0:
        return None
    rank = q * items[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return prev_le


def scrape(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return histogram_quantiles(text, name, None)[0]


def run_bench(url, level, args, tmp):
    out = os.path.join(tmp, "bench.json")
    # The simulated token rate is capped so that the load generator and the simulator (one
    # core between them) keep up: ITL grows with the number of streams beyond the cap.
    itl_ms = max(args.itl_ms, level * 1000.0 / args.max_token_rate)
    # Clients start spread over about one request's duration, so that identical requests do
    # not run in lock-step; the warm-up covers the ramp.
    ramp = itl_ms * args.max_tokens / 1000.0
    warmup = max(args.warmup, ramp + 1.0)
    cmd = [WEIR, "bench", "--url", url, "--concurrency", str(level), "--duration", f"{args.duration}s",
           "--warmup", f"{warmup * 1000:.0f}ms", "--ramp-up", f"{ramp * 1000:.0f}ms",
           "--max-tokens", str(args.max_tokens), "--prompt-tokens", "64",
           "--header", f"x-sim-itl-ms:{itl_ms:.3f}", "--json", out]
    p = start(cmd, 0, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, out, warmup


def measure(name, url, pid, level, args, tmp):
    p, out, warmup = run_bench(url, level, args, tmp)
    # CPU and RSS over the measured part only (the warm-up's requests are not counted).
    measured_from = time.time() + warmup
    cpu0, peak = None, 0
    while p.poll() is None:
        if pid and cpu0 is None and time.time() >= measured_from:
            cpu0 = cpu_split(pid)
        if pid and cpu0 is not None:
            peak = max(peak, rss_bytes(pid))
        time.sleep(0.2)
    if pid and cpu0 is None:
        cpu0 = cpu_split(pid)
    if p.returncode != 0:
        sys.exit(f"weir bench failed against {name}")
    user, system = cpu_since(pid, cpu0)
    with open(out) as f:
        r = json.load(f)["runs"][0]
    return {"target": name, "level": level, "cpu": user + system, "system": system, "rss": peak,
            "report": r}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["streams", "requests"], default="streams",
                    help="streams: streamed generations (this table); requests: non-streamed one-token "
                         "requests, max req/s and added e2e (bench/rate.py)")
    ap.add_argument("--levels", default=None,
                    help="streams (or requests in flight); default 16,256,2048 (requests: 64,512)")
    ap.add_argument("--rates", default="",
                    help="requests mode: Poisson rates (req/s) to measure added e2e at, e.g. 10000")
    ap.add_argument("--cores", default=None,
                    help="requests mode: core layout, e.g. sim=0-5,proxy=6-9,load=10-15 "
                         "(default sim=0,proxy=1,load=0)")
    ap.add_argument("--nginx", default="nginx", help="the nginx binary")
    ap.add_argument("--weir", default=WEIR,
                    help="requests mode: the weir binary that runs the simulator and the load")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--ttft", default="20ms")
    ap.add_argument("--ttft-jitter", default="0ms", help="uniform random extra TTFT")
    ap.add_argument("--itl-ms", type=float, default=20.0, help="simulated time per token")
    ap.add_argument("--max-token-rate", type=float, default=20000.0,
                    help="cap on the simulated tokens/s over all streams (ITL grows beyond it)")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of discarded load before each run")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=None,
                    help="requests mode: the prompt's length in words (default 8); a long prompt "
                         "shows what reading the request body costs")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--build", action="append", default=[],
                    help="NAME=PATH of a weir binary to measure; repeat; default weir=target/release/weir")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.build] or [["weir", WEIR]]
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    if not shutil.which(args.nginx):
        if os.geteuid() != 0:
            sys.exit("nginx is needed: apt-get install nginx")
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], check=True)

    if args.mode == "requests":
        args.tmp = tempfile.mkdtemp(prefix="weir-rate-")
        try:
            rate.run(args, args.weir, builds, ROOT)
        finally:
            shutil.rmtree(args.tmp, ignore_errors=True)
        return
    args.levels = args.levels or "16,256,2048"
    levels = [int(x) for x in args.levels.split(",")]
    tmp = tempfile.mkdtemp(prefix="weir-bench-")
    procs = []
    try:
        sim_port, nginx_port = free_port(), free_port()
        sim = start([WEIR, "sim", "--listen", f"127.0.0.1:{sim_port}", "--ttft", args.ttft,
                     "--ttft-jitter", args.ttft_jitter,
                     "--max-num-seqs", "100000"], 0, stdout=subprocess.DEVNULL)
        procs.append(sim)
        wait_port(sim_port)
        upstream = f"127.0.0.1:{sim_port}"
        weirs = {}  # name: (process, port, admin port)
        for name, path in builds:
            weir_port, admin_port = free_port(), free_port()
            weir = start([path, "--listen", f"127.0.0.1:{weir_port}", "--admin-listen", f"127.0.0.1:{admin_port}",
                          "--backend", f"http://{upstream}", "--model", "tiny-llama"], 1,
                         stdout=open(os.path.join(tmp, f"{name}-access.log"), "w"), env=dict(os.environ, RUST_LOG="info"))
            procs.append(weir)
            weirs[name] = (weir, weir_port, admin_port)
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(tmp, nginx_port, upstream))
        nginx = start([args.nginx, "-c", conf, "-p", tmp], 1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(nginx)
        ports = [w[1] for w in weirs.values()] + [nginx_port]
        for port in ports:
            wait_port(port)
        # The idle footprint: after a little traffic (pools, caches and metric series made
        # once), then quiet for longer than weir's pool idle timeout (4 s) and jemalloc's decay.
        for port in ports:
            subprocess.run(["taskset", "-c", "0", WEIR, "bench", "--url", f"http://127.0.0.1:{port}",
                            "--concurrency", "16", "--duration", "2s", "--max-tokens", str(args.max_tokens)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(6)
        idle_rss = {n: rss_bytes(w[0].pid) for n, w in weirs.items()}
        idle_rss["nginx"] = rss_bytes(nginx.pid)
        targets = {"direct": (f"http://{upstream}", None)}
        targets.update({n: (f"http://127.0.0.1:{w[1]}", w[0].pid) for n, w in weirs.items()})
        targets["nginx"] = (f"http://127.0.0.1:{nginx_port}", nginx.pid)
        results = []
        overhead = {}
        for level in levels:
            before = {n: scrape(w[2], "weir_gateway_overhead_seconds") for n, w in weirs.items()}
            for rnd in range(args.rounds):
                order = list(targets)
                random.shuffle(order)
                for name in order:
                    url, pid = targets[name]
                    r = measure(name, url, pid, level, args, tmp)
                    r["round"] = rnd
                    results.append(r)
                    rep = r["report"]
                    print(f"{level:>5} streams  round {rnd}  {name:<8}  TTFT p50 {rep['ttft']['p50']*1e3:7.2f} ms"
                          f"  p99 {rep['ttft']['p99']*1e3:7.2f} ms  ITL p99 {rep['itl']['p99']*1e3:7.2f} ms"
                          f"  errors {rep['errors']}  cpu {r['cpu']:.2f} s", flush=True)
            for n, w in weirs.items():
                after = scrape(w[2], "weir_gateway_overhead_seconds")
                delta = {le: after.get(le, 0) - before[n].get(le, 0) for le in after}
                overhead[(level, n)] = (quantile_from_buckets(delta, 0.5), quantile_from_buckets(delta, 0.99))
        # Pooled backend connections close after 4 s idle; jemalloc hands freed pages back
        # within about a second after that.
        time.sleep(15)
        settled_rss = {n: rss_bytes(w[0].pid) for n, w in weirs.items()}
        settled_rss["nginx"] = rss_bytes(nginx.pid)
        write_report(args, levels, [n for n, _ in builds], results, overhead, idle_rss, settled_rss)
    finally:
        stop_all(procs, 10)
        shutil.rmtree(tmp, ignore_errors=True)


def write_report(args, levels, weirs, results, overhead, idle_rss, settled_rss):
    proxies = weirs + ["nginx"]
    def pick(level, target, f):
        return median([f(r) for r in results if r["level"] == level and r["target"] == target])

    def paired(level, target, base, k):
        """The median over the rounds of target's percentile minus base's in the same round."""
        of = lambda t: {r["round"]: r["report"][k[0]][k[1]] for r in results
                        if r["level"] == level and r["target"] == t}
        a, b = of(target), of(base)
        return median([a[n] - b[n] for n in a if n in b])

    rows, checks = [], []
    ms = lambda v: "–" if v is None else f"{v * 1e3:.3f}"
    for level in levels:
        d = {t: {k: pick(level, t, lambda r, k=k: r["report"][k[0]][k[1]]) for k in
                 [("ttft", "p50"), ("ttft", "p99"), ("itl", "p50"), ("itl", "p99")]} for t in ["direct"] + proxies}
        tokens = {t: pick(level, t, lambda r: r["report"]["output_tokens"]) for t in proxies}
        reqs = {t: pick(level, t, lambda r: r["report"]["requests"]) for t in proxies}
        cpu = {t: pick(level, t, lambda r: r["cpu"]) for t in proxies}
        system = {t: pick(level, t, lambda r: r["system"]) for t in proxies}
        rss = {t: pick(level, t, lambda r: r["rss"]) for t in proxies}
        errors = {t: pick(level, t, lambda r: r["report"]["errors"]) for t in ["direct"] + proxies}
        for t in proxies:
            add = {k: paired(level, t, "direct", k) for k in d[t]}
            per_tok = cpu[t] / tokens[t] if tokens[t] else None
            rows.append({
                "level": level, "proxy": t,
                "ttft_p50": add[("ttft", "p50")], "ttft_p99": add[("ttft", "p99")],
                "itl_p50": add[("itl", "p50")], "itl_p99": add[("itl", "p99")],
                "cpu_per_1k_req": cpu[t] / reqs[t] * 1000 if reqs[t] else None,
                "cpu_per_100k_tok": per_tok * 1e5 if per_tok else None,
                "sys_per_100k_tok": system[t] / tokens[t] * 1e5 if tokens[t] else None,
                "tok_per_core_s": 1 / per_tok if per_tok else None,
                "rss": rss[t], "errors": errors[t],
            })
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [
        "# Benchmarks", "",
        f"Gateway overhead, measured {datetime.date.today().isoformat()} at commit `{commit}` on "
        f"{os.cpu_count()} cores ({cpu_model}) with:", "",
        f"    python3 bench/overhead.py {' '.join('--build ' + n + '=…' for n in weirs)} --levels {args.levels} --rounds {args.rounds} --duration {args.duration} "
        f"--ttft {args.ttft} --ttft-jitter {args.ttft_jitter} --itl-ms {args.itl_ms:g} --max-token-rate {args.max_token_rate:g} "
        f"--warmup {args.warmup} --max-tokens {args.max_tokens}", "",
        "`weir sim` is the backend (TTFT and ITL as above, every request streams its max_tokens; the ITL "
        "grows with the number of streams beyond the token-rate cap, so that the load generator and the "
        "simulator keep up on their one core). The simulator keeps the first token's deadline to the "
        "microsecond (its tokens after the first go on tokio's 1 ms timer ticks), so that what a proxy "
        "adds before the request reaches it moves the first token by that much. The `weir bench` clients start spread "
        "over one request's duration (`--ramp-up`) so that identical requests do not run in lock-step, "
        "and the load runs on from the discarded warm-up into the measured part without a pause. The "
        "same closed-loop load goes straight to the simulator (direct), through weir, and through "
        "nginx (`proxy_buffering off`, keepalive upstream, one worker) — in rounds, in shuffled order. "
        "The load generator and the simulator are pinned to core 0, the proxy under test to core 1 "
        "(`taskset`). Every figure is the median over the rounds; *added* latencies are the median over "
        "the rounds of the proxy's percentile minus the direct run's in the same round. CPU is the proxy's user+system time from /proc over the measured part "
        "(and the system part of it, the kernel's work, on its own); "
        "tokens per core-second is its reciprocal per token (the token rate the proxy could sustain "
        "with one core to itself). Both proxies write an access log. RSS per stream is the peak RSS at "
        "the top level minus the idle footprint, over the streams; the idle footprint is the RSS after "
        "a little traffic (16 streams for 2 s) and 6 s of quiet; *after the load* is 15 s after the "
        "last run.", "",
        "| streams | proxy | added TTFT p50 (ms) | added TTFT p99 (ms) | added ITL p50 (ms) | added ITL p99 (ms) "
        "| CPU s / 1k req | CPU s / 100k tokens | of which system | tokens per core-second | peak RSS (MiB) | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['level']} | {r['proxy']} | {ms(r['ttft_p50'])} | {ms(r['ttft_p99'])} | {ms(r['itl_p50'])} | "
            f"{ms(r['itl_p99'])} | {r['cpu_per_1k_req']:.3f} | {r['cpu_per_100k_tok']:.3f} | "
            f"{r['sys_per_100k_tok']:.3f} | {r['tok_per_core_s']:,.0f} | {r['rss'] / 2**20:.1f} | {r['errors']:.0f} |")
    lines += ["", "weir's own `weir_gateway_overhead_seconds` over the weir runs of each level "
              "(from its /metrics, interpolated in the histogram's buckets):", "",
              "| streams | build | p50 (ms) | p99 (ms) |", "|---:|---|---:|---:|"]
    for level in levels:
        for w in weirs:
            p50, p99 = overhead[(level, w)]
            lines.append(f"| {level} | {w} | {ms(p50)} | {ms(p99)} |")

    by = {(r["level"], r["proxy"]): r for r in rows}
    if len(weirs) > 1:
        lines += ["", f"CPU of each weir build as a ratio to `{weirs[0]}`'s (medians over the rounds):", "",
                  "| streams | build | CPU / request | CPU / token |", "|---:|---|---:|---:|"]
        for level in levels:
            base = by[(level, weirs[0])]
            for w in weirs[1:]:
                r = by[(level, w)]
                lines.append(f"| {level} | {w} | {r['cpu_per_1k_req'] / base['cpu_per_1k_req']:.3f} "
                             f"| {r['cpu_per_100k_tok'] / base['cpu_per_100k_tok']:.3f} |")
    def verdict(ok):
        return "met" if ok else "**not met**"
    targets = []
    for wn in weirs:
        targets += weir_targets(wn, levels, by, overhead, idle_rss, settled_rss, paired, ms)
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
    for name, measured, ok in targets:
        lines.append(f"| {name} | {measured} | {verdict(ok)} |")
    lines.append("")
    # Hand-written notes below the marker survive a new run.
    marker = "<!-- notes: kept by bench/overhead.py -->"
    try:
        with open(args.out) as f:
            old = f.read()
        if marker in old:
            lines += [marker + old.split(marker, 1)[1]]
    except OSError:
        pass
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def weir_targets(wn, levels, by, overhead, idle_rss, settled_rss, paired, ms):
    """The targets of one weir build (named wn), its name first in each."""
    targets = []
    if 256 in levels:
        w = by[(256, wn)]
        targets.append((f"{wn}: " + "Added TTFT p50 ≤ 0.1 ms at 256 streams", f"{ms(w['ttft_p50'])} ms", w["ttft_p50"] <= 0.0001))
        targets.append((f"{wn}: " + "Added TTFT p99 ≤ 1 ms at 256 streams", f"{ms(w['ttft_p99'])} ms", w["ttft_p99"] <= 0.001))
    vs = {l: paired(l, wn, "nginx", ("ttft", "p50")) for l in levels}
    worse = [l for l in levels if vs[l] > 0.00005]
    targets.append((f"{wn}: " + "Added TTFT p50 no worse than nginx's at every level (within 0.05 ms; weir − nginx, "
                    "median over the rounds)",
                    ", ".join(f"{l}: {ms(vs[l])} (weir {ms(by[(l, wn)]['ttft_p50'])} / nginx "
                              f"{ms(by[(l, 'nginx')]['ttft_p50'])})" for l in levels),
                    not worse))
    itl = max(by[(l, wn)]["itl_p99"] for l in levels)
    targets.append((f"{wn}: " + "Added ITL p99 ≤ 0.5 ms", f"worst {ms(itl)} ms", itl <= 0.0005))
    ratios = [by[(l, wn)]["cpu_per_100k_tok"] / by[(l, "nginx")]["cpu_per_100k_tok"] for l in levels]
    targets.append((f"{wn}: " + "CPU per streamed token ≤ 1.5× nginx", ", ".join(f"{l}: {x:.2f}×" for l, x in zip(levels, ratios)),
                    max(ratios) <= 1.5))
    top = max(levels)
    per_stream = (by[(top, wn)]["rss"] - idle_rss[wn]) / top
    targets.append((f"{wn}: " f"RSS ≤ 32 KiB per stream at {top} streams", f"{per_stream / 1024:.1f} KiB", per_stream <= 32 * 1024))
    back = settled_rss[wn] / max(idle_rss[wn], 1)
    targets.append((f"{wn}: " + "RSS returns to idle after the load (within 25 %)",
                    f"idle {idle_rss[wn] / 2**20:.1f} MiB, after {settled_rss[wn] / 2**20:.1f} MiB", back <= 1.25))
    agree = []
    for l in levels:
        own = overhead[(l, wn)][0]
        agree.append(own is not None and abs(own - by[(l, wn)]["ttft_p50"]) <= 0.0005)
    targets.append((f"{wn}: " + "weir_gateway_overhead_seconds p50 agrees with the measured added TTFT p50 (within 0.5 ms)",
                    ", ".join(f"{l}: {ms(overhead[(l, wn)][0])} vs {ms(by[(l, wn)]['ttft_p50'])}" for l in levels), all(agree)))
    return targets


if __name__ == "__main__":
    main()
