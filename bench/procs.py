"""Helpers shared by the benchmark and soak scripts: ports and processes on 127.0.0.1."""

import os
import resource
import signal
import statistics
import socket
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


def stop_all(procs, timeout):
    """SIGTERM to every process, then waits for each; one that outlives `timeout` is killed."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start(cmd, cores, **kw):
    """Starts cmd pinned to `cores` (a core, or a taskset list such as "6-9"), with as many open
    files as the hard limit allows."""
    return subprocess.Popen(["taskset", "-c", str(cores)] + cmd, preexec_fn=raise_nofile, **kw)


def children(pid):
    """pid and all its descendants (nginx: master and worker)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_split(pid):
    """(user, system) CPU time of pid and its descendants, in seconds."""
    user = system = 0
    for p in children(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    return user / TICK, system / TICK


def cpu_since(pid, before):
    """(user, system) seconds pid has used since `before` (a `cpu_split`; None: from its start);
    (0, 0) without a pid (the direct runs)."""
    if not pid:
        return 0.0, 0.0
    (u1, s1), (u0, s0) = cpu_split(pid), before or (0.0, 0.0)
    return u1 - u0, s1 - s0


def rss_bytes(pid):
    total = 0
    for p in children(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def nginx_conf(tmp, port, upstream, workers=1):
    return f"""
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile 65535;
daemon off;
events {{ worker_connections 16384; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream vllm {{ server {upstream}; keepalive 4096; }}
    server {{
        listen 127.0.0.1:{port} backlog=8192;
        location / {{
            proxy_pass http://vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def median(xs):
    """The median of the values that are not None; None when there are none."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
