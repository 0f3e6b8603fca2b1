"""
PyPy memory over a long run: RSS of a metaproxy on PyPy at start and while
it forwards millions of queries of the 100-tables workload (100 connections,
one table each, sequential), with the GC settings that etc/metaproxy.service
and the README ship, or others given on the command line.

    PYTHONPATH=src /work/venvs/pypy/bin/python bench/pypy_memory.py \\
        --proxy-python /work/venvs/pypy/bin/python --queries 2000000 --max-seconds 900

It starts, by PID, one simulated meta cluster (C{twistd pegasus-sim},
C{--sim-python}) and one metaproxy on C{--proxy-python} with the
environment C{PYPY_GC_*} of L{SHIPPED} (each overridable: C{--env
PYPY_GC_NURSERY=4MB}; C{--env PYPY_GC_NURSERY=} leaves one unset), and
prints every C{--every} seconds the queries so far, the proxy's RSS, and
where the RSS is (from C{/proc/<pid>/smaps}: the GC's heap and malloc
arenas, the JIT's executable memory, files). At the start and at the end
it also measures the proxy's CPU per query against the simulator's own
when driven directly (20 000 queries each), the ratio of
C{bench/run_bench.py}. It stops after C{--queries} or C{--max-seconds},
whichever comes first, and says which.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_bench import connect, cpu_seconds, load1, rss_kib, sequential  # noqa: E402

from metaproxy.testing.net import free_port, stop_process, twistd_argv, wait_for_port  # noqa: E402

#: The settings shipped in etc/metaproxy.service and README.rst (keep in step).
SHIPPED = {
    "PYPY_GC_NURSERY": "16MB",
    "PYPY_GC_MIN": "48MB",
    "PYPY_GC_MAJOR_COLLECT": "1.4",
    "PYPY_GC_MAX": "160MB",
}


def smaps_summary(pid):
    """@return: MiB of RSS by kind: executable anonymous (JIT code), other anonymous (heaps), file-backed."""
    kinds = {"jit code (anon rwx/r-x)": 0, "anon (GC heap, malloc)": 0, "files (interpreter, libs)": 0}
    name, perms = None, ""
    try:
        lines = open(f"/proc/{pid}/smaps").read().splitlines()
    except OSError:
        return {}
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
            perms = parts[1]
            name = parts[5] if len(parts) > 5 else ""
            continue
        if parts[0] == "Rss:":
            kib = int(parts[1])
            if name and name.startswith("/"):
                kinds["files (interpreter, libs)"] += kib
            elif "x" in perms:
                kinds["jit code (anon rwx/r-x)"] += kib
            else:
                kinds["anon (GC heap, malloc)"] += kib
    return {k: v / 1024 for k, v in kinds.items()}


def fmt_smaps(pid):
    return ", ".join(f"{k} {v:.1f}" for k, v in smaps_summary(pid).items())


@defer.inlineCallbacks
def ratio_window(reactor, sim_port, sim_pid, proxy_port, proxy_pid, tables, per_conn):
    """@return: (proxy CPU per query / simulator CPU per query direct, load) over one window of each."""
    out = []
    for port, pid in ((sim_port, sim_pid), (proxy_port, proxy_pid)):
        clients = yield connect(reactor, port, len(tables))
        yield defer.gatherResults([sequential(c, t, 3) for c, t in zip(clients, tables)])
        before = sum(cpu_seconds(pid))
        yield defer.gatherResults([sequential(c, t, per_conn) for c, t in zip(clients, tables)])
        out.append(sum(cpu_seconds(pid)) - before)
        for c in clients:
            c.transport.loseConnection()
    return (out[1] / out[0] if out[0] else float("nan")), load1()


@defer.inlineCallbacks
def run(reactor, args, sim_port, sim_pid, port, pid, tables):
    print(f"RSS at start: {rss_kib(pid) / 1024:.1f} MiB ({fmt_smaps(pid)})", flush=True)
    r, load = yield ratio_window(reactor, sim_port, sim_pid, port, pid, tables, 200)
    print(f"CPU ratio to the simulator direct, first window: {r:.2f}x (load {load:.1f})", flush=True)
    clients = yield connect(reactor, port, len(tables))
    done = [0]
    stop = [False]

    @defer.inlineCallbacks
    def loop(client, table):
        while not stop[0]:
            yield sequential(client, table, 50)
            done[0] += 50

    start = time.monotonic()
    loops = [loop(c, t) for c, t in zip(clients, tables)]
    peak = 0
    why = "queries"
    while done[0] < args.queries:
        yield task.deferLater(reactor, args.every, lambda: None)
        rss = rss_kib(pid) / 1024
        peak = max(peak, rss)
        elapsed = time.monotonic() - start
        print(f"  {elapsed:6.0f} s  {done[0]:>9} queries  RSS {rss:6.1f} MiB  ({fmt_smaps(pid)})  load {load1():.1f}",
              flush=True)
        if elapsed > args.max_seconds:
            why = "time"
            break
    stop[0] = True
    yield defer.gatherResults(loops)
    for c in clients:
        c.transport.loseConnection()
    print(f"stopped by {why} after {done[0]} queries in {time.monotonic() - start:.0f} s; "
          f"RSS {rss_kib(pid) / 1024:.1f} MiB, peak sample {peak:.1f} MiB", flush=True)
    r, load = yield ratio_window(reactor, sim_port, sim_pid, port, pid, tables, 200)
    print(f"CPU ratio to the simulator direct, last window: {r:.2f}x (load {load:.1f}); "
          f"RSS {rss_kib(pid) / 1024:.1f} MiB", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy-python", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), ".venv-pypy", "bin", "python"))
    parser.add_argument("--sim-python", default=sys.executable)
    parser.add_argument("--queries", type=int, default=2_000_000)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--tables", type=int, default=100)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the proxy (empty: unset)")
    args = parser.parse_args()

    env = dict(os.environ)
    settings = dict(SHIPPED)
    for item in args.env:
        k, _, v = item.partition("=")
        settings[k] = v
    for k, v in settings.items():
        if v:
            env[k] = v
        else:
            env.pop(k, None)
    print("proxy environment: " + " ".join(f"{k}={env[k]}" for k in sorted(settings) if k in env), flush=True)

    tmp = tempfile.mkdtemp(prefix="metaproxy-pypymem-")
    metas = [free_port() for _ in range(3)]
    meta_list = ",".join(f"127.0.0.1:{p}" for p in metas)
    tables = [f"t{i:03d}" for i in range(args.tables)]
    sim_cmd = twistd_argv(args.sim_python) + ["pegasus-sim", "--metas", meta_list]
    for t in tables:
        sim_cmd += ["--table", f"{t}:8"]
    port, admin = free_port(), free_port()
    config = os.path.join(tmp, "metaproxy.yaml")
    with open(config, "w") as f:
        f.write(f"listen: tcp:{port}:interface=127.0.0.1\nadmin:\n  listen: tcp:{admin}:interface=127.0.0.1\n")
        f.write("metric:\n  type: prometheus\n  table_labels: false\n")
        f.write("limits:\n  max_connections_per_peer: 0\nroutes:\n")
        for t in tables:
            f.write(f"  {t}: {{cluster_name: sim, meta_addrs: '{meta_list}'}}\n")
    procs = []
    try:
        sim = subprocess.Popen(sim_cmd, stdout=open(os.path.join(tmp, "sim.log"), "w"), stderr=subprocess.STDOUT,
                               cwd=tmp)
        procs.append(sim)
        proxy = subprocess.Popen(twistd_argv(args.proxy_python) + ["metaproxy", f"--config={config}"], env=env,
                                 stdout=open(os.path.join(tmp, "proxy.log"), "w"), stderr=subprocess.STDOUT, cwd=tmp)
        procs.append(proxy)
        wait_for_port(metas[0], sim, timeout=60)
        wait_for_port(port, proxy, timeout=60)
        wait_for_port(admin, proxy, timeout=60)
        time.sleep(2)
        task.react(lambda reactor: run(reactor, args, metas[0], sim.pid, port, proxy.pid, tables))
    finally:
        for p in procs:
            stop_process(p)
        print(f"logs: {tmp}")


if __name__ == "__main__":
    main()
