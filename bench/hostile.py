#!/usr/bin/env python3
"""Hostile backends and clients against weir held to 1 GiB of address space.

Each behaviour is a phase of its own, with a fresh weir (run as `prlimit --as=1073741824`,
TOKIO_WORKER_THREADS=2, RUST_LOG=warn) in front of two `weir sim`s: a normal one serving
"tiny-llama" and a hostile one serving "hostile" (faults asked for with `x-sim-fault`).
During each phase a light steady load (4 clients, streamed chat for "tiny-llama") measures
whether weir keeps serving; weir's RSS is sampled every 200 ms from /proc/PID/status.

    endless-event  8 streams: `data:` lines for ever, no blank line      (first_token timeout)
    finish-flood   8 streams: chunks with a finish_reason, no [DONE]      (first_token timeout)
    token-flood    8 streams: one-character tokens as fast as possible    (total timeout)
    junk-flood     8 streams: SSE comment lines as fast as possible       (first_token timeout)
    huge-json      40 non-streamed 15 MiB answers at once, re-sent
    big-bodies     64 clients each POSTing a 31 MiB JSON body
    slow-bodies    up to 4200 connections sending a 100-byte body one byte every 5 s
    stop-reading   32 streamed token floods whose clients never read    (total timeout closes
                   the upstream though weir is never asked for the body again)

Prints a Markdown table (peak RSS, survived, legitimate requests, weir's counters) and exits
non-zero when weir died in a phase or served no legitimate request in one.

    python3 bench/hostile.py                          # 60 s per phase
    python3 bench/hostile.py --seconds 20 --only huge-json,big-bodies --out /tmp/hostile.md
"""

import argparse
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
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
AS_LIMIT = 1 << 30
CHAT = "/v1/chat/completions"
JSON_HEADERS = {"content-type": "application/json"}
PHASES = ["endless-event", "finish-flood", "token-flood", "junk-flood", "huge-json",
          "big-bodies", "slow-bodies", "stop-reading"]
FAMILIES = ("weir_errors_total", "weir_timeouts_total", "weir_rejected_total")


def chat(model, stream, **extra):
    return json.dumps(dict({"model": model, "stream": stream,
                            "messages": [{"role": "user", "content": "Tell me about weirs."}]},
                           **extra)).encode()


class Phase:
    """What the threads of one phase share: where weir is, when to stop, what was seen."""

    def __init__(self, port, seconds):
        self.port = port
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {}
        self.socks = set()

    def running(self):
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def conn(self, timeout=15, rcvbuf=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.sock = socket.socket()
        if rcvbuf:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        c.sock.settimeout(timeout)
        c.sock.connect(("127.0.0.1", self.port))
        with self.lock:
            self.socks.add(c.sock)
        return c

    def close(self, c):
        with self.lock:
            self.socks.discard(c.sock)
        c.close()

    def close_all(self):
        """Ends every client socket still open (unblocks threads waiting in recv)."""
        self.stop.set()
        with self.lock:
            socks, self.socks = list(self.socks), set()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def drain(ph, resp, limit_s):
    """Reads a response until it ends, the phase ends or `limit_s` passed; returns
    (bytes read, the last bytes)."""
    total, tail, end = 0, b"", time.monotonic() + limit_s
    while ph.running() and time.monotonic() < end:
        data = resp.read1(1 << 16)
        if not data:
            break
        total += len(data)
        tail = (tail + data)[-512:]
    return total, tail


def request(ph, body, headers, limit_s, key, rcvbuf=None):
    """One request on a new connection, read to its end; counts `key status` or `key error`."""
    c = None
    try:
        c = ph.conn(rcvbuf=rcvbuf)
        c.request("POST", CHAT, body, headers)
        resp = c.getresponse()
        _, tail = drain(ph, resp, limit_s)
        ph.count(f"{key} {resp.status}")
        return resp.status, tail
    except (OSError, http.client.HTTPException) as e:
        if ph.running():
            ph.count(f"{key} {type(e).__name__}")
        return None, b""
    finally:
        if c is not None:
            ph.close(c)


def legit(ph):
    """The steady light load: streamed chat for the normal model, one request at a time."""
    body = chat("tiny-llama", True, max_tokens=32)
    while ph.running():
        status, tail = request(ph, body, JSON_HEADERS, 15, "legit")
        if not ph.running():
            break  # cut by the end of the phase: neither
        good = status == 200 and tail.rstrip().endswith(b"data: [DONE]") and b'"error"' not in tail
        ph.count("legit ok" if good else "legit failed")
        if status is None:
            time.sleep(0.05)


def hostile_loop(ph, body, fault, limit_s):
    headers = dict(JSON_HEADERS, **{"x-sim-fault": fault})
    while ph.running():
        status, tail = request(ph, body, headers, limit_s, "sent")
        if b'"error"' in tail and tail.rstrip().endswith(b"data: [DONE]"):
            ph.count("ended by an error event")
        if status is None:
            time.sleep(0.05)


def big_body_loop(ph, body):
    while ph.running():
        status, _ = request(ph, body, JSON_HEADERS, 30, "sent")
        if status is None:
            time.sleep(0.05)


def big_body():
    head = b'{"model":"hostile","messages":[{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"x" * (31 * 2**20 - len(head) - len(tail)) + tail


def slow_bodies(ph):
    """Connections sending a 100-byte body one byte every 5 s; one answered or closed is
    replaced, within bounds."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    target = max(0, min(4200, soft - 256))
    body = json.dumps({"model": "hostile", "messages": [{"role": "user", "content": "x"}]}).encode()
    body = body[:-1].ljust(99) + b"}"
    head = (f"POST {CHAT} HTTP/1.1\r\nhost: weir\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    conns, opened = {}, 0  # socket -> bytes of the body sent

    def open_one():
        nonlocal opened
        opened += 1
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", ph.port))
            s.sendall(head)
        except OSError:
            s.close()
            ph.count("connect failed")
            return
        s.setblocking(False)
        conns[s] = 0
        ph.count("opened")

    while ph.running() and len(conns) < target and opened < 2 * target:
        open_one()
    ph.count("open at once", len(conns))
    next_tick = time.monotonic()
    while ph.running():
        time.sleep(max(0.0, min(next_tick - time.monotonic(), 0.2)))
        if time.monotonic() < next_tick:
            continue
        next_tick += 5
        for s in list(conns):
            try:
                data = s.recv(4096)
                m = re.match(rb"HTTP/1\.1 (\d+)", data)
                ph.count(f"answered {m.group(1).decode()}" if m else "closed")
            except BlockingIOError:
                try:
                    if conns[s] < len(body) - 1:  # never the last byte
                        s.send(body[conns[s]:conns[s] + 1])
                        conns[s] += 1
                    continue
                except OSError:
                    ph.count("send failed")
            except OSError:
                ph.count("reset")
            s.close()
            del conns[s]
            if ph.running() and opened < 4 * target:
                open_one()
    ph.count("open at the end", len(conns))
    for s in conns:
        s.close()


def stop_reading(ph, seconds):
    """32 streamed token floods whose clients never read, opened over the run and held open:
    the socket buffers fill, weir stops being asked for more, and only the total timeout
    closes the backend's side."""
    body = chat("hostile", True)
    headers = dict(JSON_HEADERS, **{"x-sim-fault": "token-flood"})
    for _ in range(32):
        try:
            c = ph.conn(rcvbuf=4096)
            c.request("POST", CHAT, body, headers)
            ph.count("sent")
        except OSError:
            ph.count("connect failed")
        ph.stop.wait(seconds / 32)
        if not ph.running():
            break


def attackers(name, ph, seconds):
    """The threads of one behaviour: (count, target, args)."""
    if name in PHASES[:4]:
        return 8, hostile_loop, (ph, chat("hostile", True), name, 60)
    if name == "huge-json":
        return 40, hostile_loop, (ph, chat("hostile", False), "huge-json=15", 60)
    if name == "big-bodies":
        return 64, big_body_loop, (ph, big_body())
    if name == "slow-bodies":
        return 1, slow_bodies, (ph,)
    return 1, stop_reading, (ph, seconds)


def config(tmp, port, admin, normal, hostile):
    path = os.path.join(tmp, "weir.toml")
    with open(path, "w") as f:
        f.write(f"""listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[[backends]]
name = "normal"
url = "http://127.0.0.1:{normal}"
models = ["tiny-llama"]

[[backends]]
name = "hostile"
url = "http://127.0.0.1:{hostile}"
models = ["hostile"]

# Short enough that a timeout shows within a phase of 20 s.
[timeouts]
first_token = "5s"
total = "10s"

[limits]
body_read_timeout = "10s"
""")
    return path


def vm_rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def address_space_limit(pid):
    """weir's own address-space limit (prlimit execs it, so weir has prlimit's pid)."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max address space"):
                    return line.split()[3]
    except OSError:
        pass
    return "?"


def get(port, path, timeout=3):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except OSError:
        return None, ""


def counters(text):
    """weir's error, timeout and rejection counters and its requests by backend, outcome and
    code, the non-zero ones only."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(\w+)\{(.*)\} (\S+)$", line)
        if not m or float(m.group(3)) == 0:
            continue
        name, labels, value = m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))), float(m.group(3))
        if name in FAMILIES:
            key = f"{name[5:-6]}{{{','.join(labels.values())}}}"
        elif name == "weir_requests_total":
            key = f"requests{{{labels.get('backend')},{labels.get('outcome')},{labels.get('code')}}}"
        else:
            continue
        out[key] = out.get(key, 0) + value
    return out


def tail_of(path, lines=8):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def run_phase(name, args, tmp):
    port, admin, normal, hostile = (free_port() for _ in range(4))
    conf = config(tmp, port, admin, normal, hostile)
    procs, threads, weir = [], [], None
    logs = {k: os.path.join(tmp, f"{name}.{k}") for k in ("stdout", "stderr")}
    result = {"name": name, "peak": 0, "survived": False, "counts": {}, "counters": {}}
    ph = Phase(port, args.seconds)
    try:
        for p, model in ((normal, "tiny-llama"), (hostile, "hostile")):
            procs.append(subprocess.Popen([args.weir, "sim", "--listen", f"127.0.0.1:{p}", "--model", model,
                                           "--max-num-seqs", "100000"], stdout=subprocess.DEVNULL))
            wait_port(p)
        env = dict(os.environ, TOKIO_WORKER_THREADS="2", RUST_LOG="warn")
        with open(logs["stdout"], "w") as out, open(logs["stderr"], "w") as err:
            weir = subprocess.Popen(["prlimit", f"--as={AS_LIMIT}", "--", args.weir, "--config", conf],
                                    stdout=out, stderr=err, env=env)
        procs.append(weir)
        wait_port(port)
        wait_port(admin)
        result["limit"] = address_space_limit(weir.pid)
        for _ in range(100):  # until both backends are up (at most 10 s)
            if get(admin, "/readyz")[0] == 200:
                break
            time.sleep(0.1)
        ph = Phase(port, args.seconds)
        n, target, targs = attackers(name, ph, args.seconds)
        for _ in range(4):
            threads.append(threading.Thread(target=legit, args=(ph,), daemon=True))
        for _ in range(n):
            threads.append(threading.Thread(target=target, args=targs, daemon=True))
        for t in threads:
            t.start()
        while ph.running() and weir.poll() is None:
            result["peak"] = max(result["peak"], vm_rss(weir.pid))
            time.sleep(0.2)
        result["peak"] = max(result["peak"], vm_rss(weir.pid))
        ph.close_all()
        end = time.monotonic() + 10
        for t in threads:
            t.join(timeout=max(0.0, end - time.monotonic()))
        result["survived"] = weir.poll() is None and get(admin, "/healthz")[0] == 200
        time.sleep(1)  # the requests cut just now are recorded
        result["counters"] = counters(get(admin, "/metrics", timeout=10)[1])
    finally:
        ph.close_all()
        stop_all(procs, 5)
    result["counts"] = dict(sorted(ph.counts.items()))
    result["rc"] = weir.returncode if weir else None
    if not result["survived"]:
        result["weir_tail"] = tail_of(logs["stdout"]) + tail_of(logs["stderr"])
    return result


def table(results):
    rows = ["| behaviour | peak RSS MiB | survived | legitimate OK / failed | hostile traffic (client side) "
            "| weir counters after the phase |", "| --- | ---: | --- | ---: | --- | --- |"]
    for r in results:
        c = r["counts"]
        legit = f"{c.get('legit ok', 0)} / {c.get('legit failed', 0)}"
        seen = ", ".join(f"{k} {v}" for k, v in c.items() if not k.startswith("legit"))
        counted = ", ".join(f"{k} {v:g}" for k, v in sorted(r["counters"].items()))
        rows.append(f"| {r['name']} | {r['peak'] / 2**20:.0f} | {'yes' if r['survived'] else 'NO'} "
                    f"| {legit} | {seen} | {counted} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each phase (default 60)")
    ap.add_argument("--out", help="also write the table and the command line to this file")
    ap.add_argument("--only", help="comma-separated behaviours to run (default: all)")
    ap.add_argument("--weir", default=WEIR, help="the weir binary (default target/release/weir)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else PHASES
    if unknown := [n for n in names if n not in PHASES]:
        sys.exit(f"unknown behaviour {unknown}; known: {', '.join(PHASES)}")
    if not shutil.which("prlimit"):
        sys.exit("prlimit (util-linux) is needed")
    if not os.access(args.weir, os.X_OK):
        sys.exit(f"{args.weir} not found: cargo build --release --bin weir")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Ctrl-C and SIGTERM both end the run through the `finally` blocks that clean up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    command = " ".join(shlex.quote(a) for a in ["python3"] + sys.argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="weir-hostile-") as tmp:
        for name in names:
            print(f"== {name} ({args.seconds:g} s)", flush=True)
            r = run_phase(name, args, tmp)
            results.append(r)
            print(f"   address-space limit {r.get('limit')}, peak RSS {r['peak'] / 2**20:.0f} MiB, "
                  f"survived: {r['survived']}, {r['counts']}", flush=True)
            print(f"   weir: {r['counters']}", flush=True)
            if not r["survived"]:
                print(f"   weir exit status {r['rc']}; its last lines:\n{r['weir_tail']}", flush=True)
    report = f"Command: `{command}`\n\n{table(results)}\n"
    print("\n" + report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
            for r in results:
                if not r["survived"]:
                    f.write(f"\n{r['name']}: weir exit status {r['rc']}; its last lines:\n```\n{r['weir_tail']}```\n")
    bad = [r["name"] for r in results if not r["survived"] or not r["counts"].get("legit ok")]
    if bad:
        sys.exit(f"weir died or served no legitimate request in: {', '.join(bad)}")


if __name__ == "__main__":
    main()
