"""
metaproxy benchmark: the simulated meta cluster directly vs through metaproxy,
side by side in one run, on 127.0.0.1 only.

    .venv/bin/python bench/run_bench.py            # full run (about a minute)
    .venv/bin/python bench/run_bench.py --quick    # smaller counts

Starts two processes with the installed package: a simulated Pegasus meta
cluster (C{twistd pegasus-sim}, 3 metas) and metaproxy with static routes to
it. This process is the load generator (Pegasus THFT clients, pipelined where
a scenario says so). For each scenario it prints queries per second,
p50/p99 latency, and the CPU each server process spent per 1000 queries
(from /proc), then the ratio proxy/direct.

Scenarios (issue 8):
 a) one connection, sequential queries;
 b) 100 connections over 100 distinct tables, each sequential;
 c) one-table storm: 1000 connections each send one query for the same
    table at once; reports upstream queries per client query;
 d) 10k idle client connections: RSS of the server process.

It measures; it asserts nothing. Every process it starts is stopped by PID.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.internet import defer, task

from metaproxy.testing.net import free_port, wait_for_port
from metaproxy.testing.pegasus_client import PegasusTestClient
from metaproxy.wire import querycfg

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return totals


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100.0 * len(values)))]


class Result:
    def __init__(self, n, elapsed, latencies, cpu):
        self.n, self.elapsed, self.latencies, self.cpu = n, elapsed, latencies, cpu

    @property
    def qps(self):
        return self.n / self.elapsed if self.elapsed else float("nan")

    def cpu_per_1k(self):
        return {k: v * 1000.0 / self.n * 1000.0 for k, v in self.cpu.items()}  # ms per 1k queries


@defer.inlineCallbacks
def connect(reactor, port, n, flavour="go"):
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    clients = []
    batch = 500
    for start in range(0, n, batch):
        ds = [
            connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), PegasusTestClient(flavour))
            for _ in range(min(batch, n - start))
        ]
        clients.extend((yield defer.gatherResults(ds)))
    return clients


@defer.inlineCallbacks
def sequential(client, table, n):
    for _ in range(n):
        r = yield client.query(table)
        if r.rpc_error != "ERR_OK" or querycfg.peek_result(r.body).err != "ERR_OK":
            raise RuntimeError(f"bad answer for {table}: {r.rpc_error} {querycfg.peek_result(r.body)}")


def measured(pids):
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    start = time.perf_counter()

    def done(n, latencies):
        elapsed = time.perf_counter() - start
        return Result(n, elapsed, latencies, {k: cpu_seconds(p) - before[k] for k, p in pids.items()})

    return done


@defer.inlineCallbacks
def scenario_a(reactor, port, pids, n, flavour):
    [c] = yield connect(reactor, port, 1, flavour)
    yield sequential(c, "t000", min(200, n))  # warm-up: pools, routes
    c.latencies.clear()
    done = measured(pids)
    yield sequential(c, "t000", n)
    result = done(n, list(c.latencies))
    c.transport.loseConnection()
    return result


@defer.inlineCallbacks
def scenario_b(reactor, port, pids, tables, per_conn):
    clients = yield connect(reactor, port, tables)
    yield defer.gatherResults([sequential(c, f"t{i:03d}", 5) for i, c in enumerate(clients)])
    for c in clients:
        c.latencies.clear()
    done = measured(pids)
    yield defer.gatherResults([sequential(c, f"t{i:03d}", per_conn) for i, c in enumerate(clients)])
    result = done(tables * per_conn, [x for c in clients for x in c.latencies])
    for c in clients:
        c.transport.loseConnection()
    return result


@defer.inlineCallbacks
def scenario_c(reactor, port, pids, storm):
    clients = yield connect(reactor, port, storm)
    yield sequential(clients[0], "temp", 3)
    clients[0].latencies.clear()
    done = measured(pids)
    answers = yield defer.gatherResults([c.query("temp") for c in clients])
    result = done(storm, [x for c in clients for x in c.latencies])
    bad = [a for a in answers if querycfg.peek_result(a.body).err != "ERR_OK"]
    for c in clients:
        c.transport.loseConnection()
    if bad:
        raise RuntimeError(f"{len(bad)} storm answers were not ERR_OK")
    return result


@defer.inlineCallbacks
def scenario_d(reactor, port, pid, idle):
    before = rss_kib(pid)
    clients = yield connect(reactor, port, idle)
    yield task.deferLater(reactor, 1.0, lambda: None)
    after = rss_kib(pid)
    for c in clients:
        c.transport.loseConnection()
    yield task.deferLater(reactor, 1.0, lambda: None)
    return before, after


def fmt_ms(s):
    return f"{s * 1000:8.3f}"


def report(name, direct, proxied, extra=""):
    print(f"\n({name})")
    print(f"  {'path':<8} {'queries':>8} {'qps':>9} {'p50 ms':>8} {'p99 ms':>8} {'sim CPU ms/1k':>14} {'proxy CPU ms/1k':>16}")
    for label, r in (("direct", direct), ("proxy", proxied)):
        cpu = r.cpu_per_1k()
        print(
            f"  {label:<8} {r.n:>8} {r.qps:>9.0f} {fmt_ms(pct(r.latencies, 50))} {fmt_ms(pct(r.latencies, 99))}"
            f" {cpu.get('sim', 0):>14.1f} {cpu.get('proxy', 0):>16.1f}"
        )
    print(
        f"  ratio proxy/direct: qps {proxied.qps / direct.qps:.2f}, "
        f"p50 {pct(proxied.latencies, 50) / pct(direct.latencies, 50):.2f}, "
        f"p99 {pct(proxied.latencies, 99) / pct(direct.latencies, 99):.2f}{extra}"
    )


@defer.inlineCallbacks
def run(reactor, args, ports, pids):
    sim_port, proxy_port, admin_port = ports["sim"], ports["proxy"], ports["admin"]
    both = {"sim": pids["sim"], "proxy": pids["proxy"]}
    print(f"metaproxy benchmark  python {sys.version.split()[0]}  cores {os.cpu_count()}  "
          f"load generator, simulator and proxy share this machine")

    d = yield scenario_a(reactor, sim_port, both, args.requests, "go")
    p = yield scenario_a(reactor, proxy_port, both, args.requests, "go")
    report("a) one connection, sequential, v0", d, p)
    d = yield scenario_a(reactor, sim_port, both, args.requests, "java2")
    p = yield scenario_a(reactor, proxy_port, both, args.requests, "java2")
    report("a') one connection, sequential, v1 (Java 2.x framing)", d, p)

    d = yield scenario_b(reactor, sim_port, both, args.tables, args.per_conn)
    p = yield scenario_b(reactor, proxy_port, both, args.tables, args.per_conn)
    report(f"b) {args.tables} connections over {args.tables} tables, sequential each", d, p)

    d = yield scenario_c(reactor, sim_port, both, args.storm)
    m0 = scrape(admin_port)
    p = yield scenario_c(reactor, proxy_port, both, args.storm)
    m1 = scrape(admin_port)
    client_q = m1.get("client_query_config_count_total", 0) - m0.get("client_query_config_count_total", 0)
    upstream = m1.get("metaproxy_upstream_queries_total", 0) - m0.get("metaproxy_upstream_queries_total", 0)
    report(
        f"c) one-table storm: {args.storm} concurrent queries for one table",
        d, p,
        f"\n  upstream queries per client query: direct 1.000, proxy {upstream / client_q:.4f} "
        f"({int(upstream)} upstream for {int(client_q)} client queries)",
    )

    sb, sa = yield scenario_d(reactor, sim_port, pids["sim"], args.idle)
    pb, pa = yield scenario_d(reactor, proxy_port, pids["proxy"], args.idle)
    print(f"\n(d) {args.idle} idle client connections: RSS")
    print(f"  direct (simulator): {sb / 1024:.1f} -> {sa / 1024:.1f} MiB ({(sa - sb) / args.idle:.2f} KiB per connection)")
    print(f"  proxy:              {pb / 1024:.1f} -> {pa / 1024:.1f} MiB ({(pa - pb) / args.idle:.2f} KiB per connection)")
    print(f"  ratio proxy/direct per connection: {((pa - pb) / max(1, sa - sb)):.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--tables", type=int, default=100)
    parser.add_argument("--per-conn", type=int, default=200)
    parser.add_argument("--storm", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=10000)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.per_conn, args.storm, args.idle = 2000, 20, 200, 1000

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.idle + 2000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))

    tmp = tempfile.mkdtemp(prefix="metaproxy-bench-")
    metas = [free_port() for _ in range(3)]
    ports = {"sim": metas[0], "proxy": free_port(), "admin": free_port()}
    meta_list = ",".join(f"127.0.0.1:{p}" for p in metas)
    tables = [f"t{i:03d}" for i in range(args.tables)] + ["temp"]
    sim_cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "pegasus-sim", "--metas", meta_list]
    for t in tables:
        sim_cmd += ["--table", f"{t}:8"]
    config = os.path.join(tmp, "metaproxy.yaml")
    with open(config, "w") as f:
        f.write(f"listen: tcp:{ports['proxy']}:interface=127.0.0.1\n")
        f.write(f"admin:\n  listen: tcp:{ports['admin']}:interface=127.0.0.1\n")
        f.write("metric:\n  type: prometheus\n  table_labels: false\n")
        # All load comes from this one address: no per-peer cap.
        f.write(f"limits:\n  max_connections: {args.idle + 2000}\n  max_connections_per_peer: 0\n")
        f.write("routes:\n")
        for t in tables:
            f.write(f"  {t}: {{cluster_name: sim, meta_addrs: '{meta_list}'}}\n")
    proxy_cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "metaproxy", f"--config={config}"]

    procs = []
    try:
        for name, cmd in (("sim", sim_cmd), ("proxy", proxy_cmd)):
            log = open(os.path.join(tmp, f"{name}.log"), "w")
            procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)))
        wait_for_port(metas[0], procs[0][1])
        wait_for_port(ports["proxy"], procs[1][1])
        wait_for_port(ports["admin"], procs[1][1])
        pids = {name: p.pid for name, p in procs}
        task.react(lambda reactor: run(reactor, args, ports, pids))
    finally:
        for name, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        print(f"\nlogs: {tmp}")


if __name__ == "__main__":
    main()
