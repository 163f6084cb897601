"""The per-request path (`overhead.py --mode requests`): non-streamed requests of one output
token, straight to `weir sim`, through weir and through nginx, in shuffled rounds.

- Closed loop at each level of `--levels` (requests in flight): the most requests per second
  each target serves, and the proxy's CPU per request.
- Poisson at each rate of `--rates`: the e2e p50 and p99 each proxy adds (its percentile
  minus the direct run's in the same round) and its CPU per request.

`--cores sim=0-5,proxy=6-9,load=10-15` lays the processes out on a larger machine (taskset
lists); the proxy gets as many workers as it has cores (weir's runtime sizes itself from its
affinity; nginx gets one worker process per core). The table goes into BENCHMARKS.md between
markers named after the machine's and the proxy's core counts, so tables of several layouts
live side by side, below the streaming table's notes marker (which `overhead.py`'s streaming
mode keeps).

A `--build` may be any program that takes weir's `--listen`, `--admin-listen`, `--backend`
and `--model`: `examples/floor.rs` (hyper's server and client joined with nothing between,
laid out per core as weir's proxy is) is one, the floor of the stack weir is built on.
"""

import datetime
import json
import os
import random
import subprocess
import sys
import time

from procs import cpu_since, cpu_split, free_port, median, nginx_conf, start, stop_all, wait_port


def cores_of(spec):
    """Core numbers of a taskset list such as "6-9,12"."""
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def layout(spec):
    """{"sim": ..., "proxy": ..., "load": ...} from "sim=0-5,proxy=6-9,load=10-15"; the 2-core
    default shares core 0 between the simulator and the load and gives the proxy core 1."""
    lay = {"sim": "0", "proxy": "1", "load": "0"}
    for part in _split(spec):
        key, _, value = part.partition("=")
        if key not in lay:
            sys.exit(f"--cores: unknown part {key!r} (sim, proxy, load)")
        lay[key] = value
    return lay


def _split(spec):
    """Splits "sim=0-5,proxy=6-9,load=10-15" at the commas that start a new `key=`."""
    parts = []
    for piece in (spec or "").split(","):
        if "=" in piece or not parts:
            parts.append(piece)
        else:
            parts[-1] += "," + piece
    return [p for p in parts if p]


def bench(weir, url, load_cores, mode, value, args, out):
    """One `weir bench` run of non-streamed one-token requests; its JSON report."""
    load = ["--concurrency", str(value)] if mode == "closed" else ["--rate", str(value)]
    cmd = [weir, "bench", "--url", url, "--model", "tiny-llama", "--no-stream", "--max-tokens", "1",
           "--prompt-tokens", str(prompt_words(args)), "--duration", f"{args.duration}s", "--warmup", f"{args.warmup}s",
           "--json", out] + load
    p = start(cmd, load_cores, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p


def prompt_words(args):
    """The prompt's length in words (`--prompt-tokens`; 8 when not given)."""
    return args.prompt_tokens or 8


def measure(weir, name, url, pid, load_cores, mode, value, args, tmp):
    out = os.path.join(tmp, "rate.json")
    p = bench(weir, url, load_cores, mode, value, args, out)
    measured_from = time.time() + args.warmup
    cpu0 = None
    while p.poll() is None:
        if pid and cpu0 is None and time.time() >= measured_from:
            cpu0 = cpu_split(pid)
        time.sleep(0.1)
    if p.returncode != 0:
        sys.exit(f"weir bench failed against {name} ({mode} {value})")
    user, system = cpu_since(pid, cpu0)
    with open(out) as f:
        r = json.load(f)["runs"][0]
    return {"target": name, "mode": mode, "value": value, "cpu": user + system, "system": system,
            "report": r}


def run(args, weir, builds, root):
    lay = layout(args.cores)
    proxy_cores = len(cores_of(lay["proxy"]))
    levels = [int(x) for x in (args.levels or "64,512").split(",")]
    rates = [float(x) for x in args.rates.split(",")] if args.rates else []
    tmp = args.tmp
    procs = []
    try:
        sim_port, nginx_port = free_port(), free_port()
        sim = start([weir, "sim", "--listen", f"127.0.0.1:{sim_port}", "--ttft", "0ms", "--itl", "0ms",
                     "--max-num-seqs", "1000000", "--max-model-len", str(max(4096, 2 * prompt_words(args)))],
                    lay["sim"], stdout=subprocess.DEVNULL)
        procs.append(sim)
        wait_port(sim_port)
        upstream = f"127.0.0.1:{sim_port}"
        targets = {"direct": (f"http://{upstream}", None)}
        for name, path in builds:
            port, admin = free_port(), free_port()
            w = start([path, "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                       "--backend", f"http://{upstream}", "--model", "tiny-llama"], lay["proxy"],
                      stdout=open(os.path.join(tmp, f"{name}-access.log"), "w"),
                      env=dict(os.environ, RUST_LOG="info"))
            procs.append(w)
            wait_port(port)
            targets[name] = (f"http://127.0.0.1:{port}", w.pid)
        conf = os.path.join(tmp, "nginx-rate.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(tmp, nginx_port, upstream, workers=proxy_cores))
        nginx = start([args.nginx, "-c", conf, "-p", tmp], lay["proxy"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(nginx)
        wait_port(nginx_port)
        targets["nginx"] = (f"http://127.0.0.1:{nginx_port}", nginx.pid)
        runs = [("closed", l) for l in levels] + [("poisson", r) for r in rates]
        results = []
        for rnd in range(args.rounds):
            for mode, value in runs:
                order = list(targets)
                random.shuffle(order)
                for name in order:
                    url, pid = targets[name]
                    r = measure(weir, name, url, pid, lay["load"], mode, value, args, tmp)
                    r["round"] = rnd
                    results.append(r)
                    rep = r["report"]
                    print(f"round {rnd}  {mode} {value:>8g}  {name:<8}  {rep['request_throughput']:>10,.0f} req/s"
                          f"  e2e p50 {rep['e2e']['p50'] * 1e3:7.3f} ms  p99 {rep['e2e']['p99'] * 1e3:7.3f} ms"
                          f"  errors {rep['errors']}  cpu {r['cpu']:.2f} s", flush=True)
        block = table(args, lay, proxy_cores, [n for n, _ in builds], levels, rates, results, root)
        marker = f"requests-{os.cpu_count()}-cores-proxy-{proxy_cores}"
        if args.prompt_tokens:
            marker += f"-prompt-{args.prompt_tokens}"
        write_block(args.out, marker, block)
        print(block)
    finally:
        stop_all(procs, 10)


def table(args, lay, proxy_cores, weirs, levels, rates, results, root):
    proxies = weirs + ["nginx"]

    def pick(mode, value, target, f):
        return median([f(r) for r in results
                       if r["mode"] == mode and r["value"] == value and r["target"] == target])

    def added(mode, value, target, q):
        """Median over the rounds of target's e2e percentile minus direct's in the same round."""
        of = lambda t: {r["round"]: r["report"]["e2e"][q] for r in results
                        if r["mode"] == mode and r["value"] == value and r["target"] == t}
        a, b = of(target), of("direct")
        return median([a[n] - b[n] for n in a if n in b])

    def cpu_per_request(mode, value, t, key="cpu"):
        return pick(mode, value, t, lambda r: r[key] / max(r["report"]["requests"], 1))

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                            text=True).stdout.strip()
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                      if l.startswith("model name")), "?")
    lines = [
        f"## Non-streamed requests: {os.cpu_count()} cores, the proxy on {proxy_cores}"
        + (f", prompts of {args.prompt_tokens} words" if args.prompt_tokens else ""), "",
        f"Measured {datetime.date.today().isoformat()} at commit `{commit}` on {os.cpu_count()} cores "
        f"({cpu_model}); simulator on cores {lay['sim']}, proxy on {lay['proxy']} ({proxy_cores} "
        f"worker{'s' if proxy_cores > 1 else ''}), load on {lay['load']}, with:", "",
        f"    python3 bench/overhead.py --mode requests --cores sim={lay['sim']},proxy={lay['proxy']},"
        f"load={lay['load']} --levels {','.join(map(str, levels))}"
        + (f" --rates {','.join(f'{r:g}' for r in rates)}" if rates else "")
        + (f" --prompt-tokens {args.prompt_tokens}" if args.prompt_tokens else "")
        + f" --rounds {args.rounds} --duration {args.duration} --warmup {args.warmup}", "",
        f"Requests of one output token and a prompt of {prompt_words(args)} words, not streamed, to "
        "`weir sim` with no simulated delay. Medians "
        "over the rounds (targets in shuffled order each round); *added* e2e is the median over the "
        "rounds of the proxy's percentile minus the direct run's in the same round; CPU is the "
        "proxy's user+system time over the measured part, per request, and the system part of it.", "",
        "| load | direct | " + " | ".join(proxies) + " | " + " | ".join(f"{w} / nginx" for w in weirs) + " |",
        "|---|" + "---:|" * (1 + len(proxies) + len(weirs)),
    ]
    for l in levels:
        rps = {t: pick("closed", l, t, lambda r: r["report"]["request_throughput"]) for t in ["direct"] + proxies}
        lines.append(f"| max req/s, {l} in flight | {rps['direct']:,.0f} | "
                     + " | ".join(f"{rps[t]:,.0f}" for t in proxies) + " | "
                     + " | ".join(f"{rps[w] / rps['nginx']:.2f}" for w in weirs) + " |")
        cpu = {t: cpu_per_request("closed", l, t) for t in proxies}
        lines.append(f"| CPU ms per request, {l} in flight | — | "
                     + " | ".join(f"{cpu[t] * 1e3:.4f}" for t in proxies) + " | "
                     + " | ".join(f"{cpu[w] / cpu['nginx']:.2f}" for w in weirs) + " |")
        kernel = {t: cpu_per_request("closed", l, t, "system") for t in proxies}
        lines.append(f"| of which system (kernel), {l} in flight | — | "
                     + " | ".join(f"{kernel[t] * 1e3:.4f}" for t in proxies) + " | "
                     + " | ".join(f"{kernel[w] / kernel['nginx']:.2f}" if kernel["nginx"] else "—"
                                  for w in weirs) + " |")
    for r in rates:
        e = {t: (added("poisson", r, t, "p50"), added("poisson", r, t, "p99")) for t in proxies}
        lines.append(f"| {r:,.0f} req/s Poisson: added e2e p50 / p99 (ms) | — | "
                     + " | ".join(f"{e[t][0] * 1e3:.3f} / {e[t][1] * 1e3:.3f}" for t in proxies) + " | "
                     + " | ".join(f"{(e[w][1] - e['nginx'][1]) * 1e3:+.3f} ms at p99" for w in weirs) + " |")
        cpu = {t: cpu_per_request("poisson", r, t) for t in proxies}
        lines.append(f"| {r:,.0f} req/s: CPU ms per request | — | "
                     + " | ".join(f"{cpu[t] * 1e3:.4f}" for t in proxies) + " | "
                     + " | ".join(f"{cpu[w] / cpu['nginx']:.2f}" for w in weirs) + " |")
    errors = {t: sum(r["report"]["errors"] for r in results if r["target"] == t) for t in ["direct"] + proxies}
    lines += ["", "Errors over all runs: " + ", ".join(f"{t} {n}" for t, n in errors.items()) + "."]
    return "\n".join(lines)


def write_block(path, name, block):
    """Puts `block` between the markers named `name` in the file at `path`: replaced where they
    are, added at the end otherwise."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = ""
    new = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + new + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    with open(path, "w") as f:
        f.write(text)
