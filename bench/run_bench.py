"""
metaproxy benchmark: the simulated meta cluster directly, and through
metaproxy on CPython and on PyPy, side by side in one run, on 127.0.0.1 only.

    .venv/bin/python bench/run_bench.py            # full run (a few minutes)
    .venv/bin/python bench/run_bench.py --quick    # smaller counts (a smoke run)
    .venv/bin/python bench/run_bench.py --cpython A/bin/python --pypy B/bin/python
    .venv/bin/python bench/run_bench.py --only abc --runs 3   # ratio ranges over 3 runs

The two runtimes are two venvs with metaproxy installed (defaults: C{.venv}
and C{.venv-pypy} of this checkout, as C{.ci/run} creates them); a runtime
whose interpreter is missing, or given as C{--pypy ''}, is left out. This
process is the load generator (Pegasus THFT clients); it starts, by PID, one
simulated Pegasus meta cluster (C{twistd pegasus-sim}, 3 metas, with
C{--sim-python}, default the CPython venv) and one metaproxy per runtime with
static routes to it. Both proxies are warmed up with the same queries before
anything is measured (PyPy's JIT compiles the hot loops during that warm-up;
the output says how many queries it took).

Workloads, each against the simulator directly and through each proxy:
 a) one connection, sequential queries;
 b) 100 connections over 100 distinct tables, each sequential (nothing
    to coalesce: pure forwarding);
 c) 64 connections on one table, each sequential (coalescing);
 d) one-table storm: 1000 connections each send one query at once;
 e) burst accept (first, on the fresh processes): 10 000 connections
    opened at once; time until the server has accepted them all, and
    RSS per idle connection.

With C{--runs N} the processes are started and warmed up once, then every
chosen workload is measured N times in turn; each figure is printed with the
1-minute load average at the time, and a summary gives, per workload and
proxy, the range over the runs of the B{ratio} of the proxy's CPU per query
to the simulator's own CPU per query when driven directly in the same run
(the figure that survives a busy machine; absolute milliseconds do not).

For a)-d) it prints queries per second, p50/p99 latency, the CPU each server
process spent per 1000 queries (utime+stime from /proc/<pid>/stat, and
for the proxies also split into user/system), the
proxy's RSS (VmRSS from /proc/<pid>/status) after the workload, and for the
proxies the upstream queries per client query. It measures; it asserts
nothing.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.internet import defer, task, threads

from metaproxy.testing.net import free_port, stop_process, twistd_argv, wait_for_port
from metaproxy.testing.pegasus_client import PegasusTestClient
from metaproxy.wire import querycfg

_TICK = os.sysconf("SC_CLK_TCK")
#: the proxies' listen backlog: Twisted's default (50) makes a 10k burst of
#: silent clients lose connections the kernel completed but could not queue
BACKLOG = 4096
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: metric names before and after issue 14's renames
_QUERIES = ("metaproxy_client_queries_total", "client_query_config_count_total")
_UPSTREAM = ("metaproxy_upstream_queries_total",)
_OPEN = ("metaproxy_client_connections", "client_connection_count")


def cpu_seconds(pid):
    """(utime, stime) of C{pid}, in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def rss_kib(pid):
    """VmRSS of C{pid}, in KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scrape(port):
    """Sum of every sample per metric name on the admin endpoint's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    totals = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return totals


def first(totals, names):
    for name in names:
        if name in totals:
            return totals[name]
    return float("nan")


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100.0 * len(values)))]


class Target:
    """One thing the clients talk to: the simulator, or a proxy on one runtime."""

    def __init__(self, label, port, pid, admin=None):
        self.label, self.port, self.pid, self.admin = label, port, pid, admin


class Result:
    """One measured run of one workload against one target."""

    def __init__(self, n, elapsed, latencies, cpu, rss=None, upstream=None):
        self.n, self.elapsed, self.latencies, self.cpu = n, elapsed, latencies, cpu
        self.rss, self.upstream = rss, upstream

    @property
    def qps(self):
        return self.n / self.elapsed if self.elapsed else float("nan")

    def cpu_per_1k(self, pid, part=None):
        """ms of CPU per 1k queries: user + system, or only C{part} (0 user, 1 system)."""
        cpu = sum(self.cpu[pid]) if part is None else self.cpu[pid][part]
        return cpu * 1000.0 / self.n * 1000.0


@defer.inlineCallbacks
def connect(reactor, port, n, flavour="go", batch=500):
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    clients = []
    for start in range(0, n, batch):
        ds = [
            connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=60), PegasusTestClient(flavour))
            for _ in range(min(batch, n - start))
        ]
        clients.extend((yield defer.gatherResults(ds, consumeErrors=True)))
    return clients


@defer.inlineCallbacks
def sequential(client, table, n):
    for _ in range(n):
        r = yield client.query(table)
        if r.rpc_error != "ERR_OK" or querycfg.peek_result(r.body).err != "ERR_OK":
            raise RuntimeError(f"bad answer for {table}: {r.rpc_error} {querycfg.peek_result(r.body)}")


def close(clients):
    for c in clients:
        c.transport.loseConnection()


@defer.inlineCallbacks
def measured(target, pids, n_of, body):
    """
    Run C{body()} (a Deferred firing with the clients used) and return its
    L{Result}: CPU of every process in C{pids}, and for a proxy its RSS and
    upstream queries per client query.
    """
    m0 = (yield threads.deferToThread(scrape, target.admin)) if target.admin else None
    before = {p: cpu_seconds(p) for p in pids}
    start = time.perf_counter()
    clients = yield body()
    elapsed = time.perf_counter() - start
    cpu = {p: tuple(a - b for a, b in zip(cpu_seconds(p), before[p])) for p in pids}
    n = n_of(clients)
    rss = rss_kib(target.pid)
    upstream = None
    if m0 is not None:
        m1 = yield threads.deferToThread(scrape, target.admin)
        q = first(m1, _QUERIES) - first(m0, _QUERIES)
        upstream = (first(m1, _UPSTREAM) - first(m0, _UPSTREAM)) / q if q else float("nan")
    result = Result(n, elapsed, [x for c in clients for x in c.latencies], cpu, rss, upstream)
    close(clients)
    return result


@defer.inlineCallbacks
def parallel_sequential(reactor, target, conns, tables, per_conn, warm=5):
    """C{conns} connections, connection i querying C{tables[i % len]} sequentially."""
    clients = yield connect(reactor, target.port, conns)
    yield defer.gatherResults([sequential(c, tables[i % len(tables)], warm) for i, c in enumerate(clients)])
    for c in clients:
        c.latencies.clear()
    return clients


def workload_a(n):
    @defer.inlineCallbacks
    def run(reactor, target, pids):
        [c] = yield connect(reactor, target.port, 1)
        yield sequential(c, "t000", min(200, n))  # pools, routes
        c.latencies.clear()

        def body():
            return sequential(c, "t000", n).addCallback(lambda _: [c])

        return (yield measured(target, pids, lambda cs: n, body))

    return run


def workload_parallel(conns, tables, per_conn):
    @defer.inlineCallbacks
    def run(reactor, target, pids):
        clients = yield parallel_sequential(reactor, target, conns, tables, per_conn)

        def body():
            return defer.gatherResults(
                [sequential(c, tables[i % len(tables)], per_conn) for i, c in enumerate(clients)]
            ).addCallback(lambda _: clients)

        return (yield measured(target, pids, lambda cs: conns * per_conn, body))

    return run


def workload_storm(storm):
    @defer.inlineCallbacks
    def run(reactor, target, pids):
        clients = yield connect(reactor, target.port, storm)
        yield sequential(clients[0], "temp", 3)
        clients[0].latencies.clear()

        @defer.inlineCallbacks
        def body():
            answers = yield defer.gatherResults([c.query("temp") for c in clients])
            bad = [a for a in answers if querycfg.peek_result(a.body).err != "ERR_OK"]
            if bad:
                raise RuntimeError(f"{len(bad)} storm answers were not ERR_OK")
            return clients

        return (yield measured(target, pids, lambda cs: storm, body))

    return run


@defer.inlineCallbacks
def burst_accept(reactor, target, n, patience=30.0):
    """
    Open C{n} connections at once. Returns (seconds until the server counts
    them all open, or until all connected for the simulator; connections
    the server counts open; RSS before; RSS with all idle). Gives up
    waiting after C{patience} seconds.
    """
    before = rss_kib(target.pid)
    start = time.perf_counter()
    clients = yield connect(reactor, target.port, n, batch=n)
    accepted = n
    if target.admin:
        while True:
            m = yield threads.deferToThread(scrape, target.admin)
            accepted = int(first(m, _OPEN))
            if accepted >= n or time.perf_counter() - start > patience:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
    elapsed = time.perf_counter() - start
    yield task.deferLater(reactor, 1.0, lambda: None)
    after = rss_kib(target.pid)
    close(clients)
    yield task.deferLater(reactor, 2.0, lambda: None)
    return elapsed, accepted, before, after


def load1():
    """The 1-minute load average."""
    return os.getloadavg()[0]


def ratio(results, sim_pid, target):
    """CPU per query of C{target} (a proxy) over the simulator's when driven directly, from one run's C{results}."""
    direct = next(r for t, r in results if t.admin is None)
    mine = next(r for t, r in results if t is target)
    sim = direct.cpu_per_1k(sim_pid)
    return mine.cpu_per_1k(target.pid) / sim if sim else float("nan")


def fmt_ms(s):
    return f"{s * 1000:8.3f}"


def report(title, sim_pid, results, loads):
    print(f"\n({title})")
    print(f"  {'path':<22} {'queries':>8} {'qps':>8} {'p50 ms':>8} {'p99 ms':>8} {'sim CPU':>8}"
          f" {'proxy CPU':>10} {'ratio to':>9} {'user/sys':>11} {'proxy RSS':>10} {'upstream':>9} {'load':>5}")
    print(f"  {'':<22} {'':>8} {'':>8} {'':>8} {'':>8} {'ms/1k':>8} {'ms/1k':>10} {'direct':>9} {'ms/1k':>11}"
          f" {'MiB':>10} {'per query':>9} {'1 min':>5}")
    for (target, r), load in zip(results, loads):
        proxy = target.admin is not None
        print(
            f"  {target.label:<22} {r.n:>8} {r.qps:>8.0f} {fmt_ms(pct(r.latencies, 50))} {fmt_ms(pct(r.latencies, 99))}"
            f" {r.cpu_per_1k(sim_pid):>8.1f}"
            + (f" {r.cpu_per_1k(target.pid):>10.1f} {ratio(results, sim_pid, target):>8.2f}x"
               f" {f'{r.cpu_per_1k(target.pid, 0):.0f}/{r.cpu_per_1k(target.pid, 1):.0f}':>11}"
               f" {r.rss / 1024:>10.1f} {r.upstream:>9.4f}" if proxy else f" {'':>10} {'':>9} {'':>11} {'':>10} {'':>9}")
            + f" {load:>5.2f}"
        )


@defer.inlineCallbacks
def run(reactor, args, sim, proxies):
    pids = [sim.pid] + [p.pid for p in proxies]
    print(f"metaproxy benchmark  driver {sys.implementation.name} {sys.version.split()[0]}  cores {os.cpu_count()}  "
          f"load generator, simulator and proxies share this machine")
    for p in proxies:
        print(f"  {p.label}: RSS at start {rss_kib(p.pid) / 1024:.1f} MiB")

    tables = [f"t{i:03d}" for i in range(args.tables)]
    workloads = [
        (f"a) 1 connection, sequential ({args.requests} queries)", workload_a(args.requests)),
        (f"b) {args.tables} connections x {args.tables} tables, sequential each ({args.per_conn} per connection)",
         workload_parallel(args.tables, tables, args.per_conn)),
        (f"c) {args.clients} connections on one table, sequential each ({args.per_client} per connection)",
         workload_parallel(args.clients, ["temp"], args.per_client)),
        (f"d) storm: {args.storm} connections, one query each for one table at once", workload_storm(args.storm)),
    ]

    if "e" in args.only:
        print(f"\n(e) burst accept: {args.burst} connections opened at once, then idle; on the fresh processes, "
              f"before any warm-up.\n    The proxies listen with backlog={BACKLOG}; the simulator with Twisted's "
              f"default 50, and its time is the clients' connect time.")
        for target in [sim] + proxies:
            elapsed, accepted, before, after = yield burst_accept(reactor, target, args.burst)
            print(f"  {target.label:<22} {accepted} accepted in {elapsed:6.2f} s   RSS {before / 1024:7.1f} -> "
                  f"{after / 1024:7.1f} MiB   {(after - before) / args.burst:6.2f} KiB per idle connection")

    workloads = [(t, w) for t, w in workloads if t[0] in args.only]
    print()
    # The same warm-up for every proxy: PyPy's JIT compiles what it runs here.
    warm = 0
    start = time.perf_counter()
    for _ in range(args.warmup_rounds):
        for p in proxies:
            for _, w in workloads:
                r = yield w(reactor, p, pids)
                warm += r.n
    print(f"  warm-up before measuring: {warm // max(1, len(proxies))} queries per proxy "
          f"({args.warmup_rounds} round(s) of every workload; PyPy's JIT compiles during it) "
          f"in {time.perf_counter() - start:.0f} s")
    for p in proxies:
        print(f"  {p.label}: RSS after warm-up {rss_kib(p.pid) / 1024:.1f} MiB")

    summary = []  # (workload, run, results, loads)
    for run_no in range(1, args.runs + 1):
        for title, w in workloads:
            results, loads = [], []
            for target in [sim] + proxies:
                results.append((target, (yield w(reactor, target, pids))))
                loads.append(load1())
            report(f"{title}, run {run_no} of {args.runs}" if args.runs > 1 else title, sim.pid, results, loads)
            summary.append((title.split(")")[0], run_no, results, loads))

    print("\nsummary: CPU ms per 1k queries (qps) of the proxy; in the direct column, of the simulator; "
          "[ratio to direct] load")
    print(f"  {'workload':<14}" + "".join(f" {t.label:>34}" for t in [sim] + proxies))
    for name, run_no, results, loads in summary:
        cells = []
        for (target, r), load in zip(results, loads):
            cpu = r.cpu_per_1k(target.pid)
            rat = f" [{ratio(results, sim.pid, target):.2f}x]" if target.admin else ""
            cells.append(f" {f'{cpu:.1f} ({r.qps:.0f} q/s){rat} {load:.1f}':>34}")
        print(f"  {f'{name} run {run_no}':<14}" + "".join(cells))

    print(f"\nratios over {args.runs} run(s): proxy CPU per query / simulator-direct CPU per query (same run); "
          "load = 1-minute load average")
    for name in dict.fromkeys(n for n, _, _, _ in summary):
        runs = [(results, loads) for n, _, results, loads in summary if n == name]
        for p in proxies:
            ratios = [ratio(results, sim.pid, p) for results, _ in runs]
            ups = [r.upstream for results, _ in runs for t, r in results if t is p]
            load_all = [l for _, loads in runs for l in loads]
            print(f"  {name:<3} {p.label:<24} ratio {min(ratios):.2f}-{max(ratios):.2f}x"
                  f"  ({', '.join(f'{x:.2f}' for x in ratios)})"
                  f"  upstream/query {min(ups):.4f}-{max(ups):.4f}"
                  f"  load {min(load_all):.1f}-{max(load_all):.1f}")
    for p in proxies:
        print(f"  {p.label}: RSS at the end {rss_kib(p.pid) / 1024:.1f} MiB")


def runtime_label(python):
    out = subprocess.run(
        [python, "-c", "import platform, sys; v = sys.version_info; "
         "print(platform.python_implementation(), '%d.%d' % v[:2], "
         "'.'.join(map(str, sys.pypy_version_info[:3])) if hasattr(sys, 'pypy_version_info') else '')"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return " ".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    parser.add_argument("--cpython", default=os.path.join(_CHECKOUT, ".venv", "bin", "python"),
                        help="CPython interpreter with metaproxy installed ('' to leave out)")
    parser.add_argument("--pypy", default=os.path.join(_CHECKOUT, ".venv-pypy", "bin", "python"),
                        help="PyPy interpreter with metaproxy installed ('' to leave out)")
    parser.add_argument("--sim-python", default=None, help="interpreter for the simulator (default: --cpython)")
    parser.add_argument("--requests", type=int, default=20000, help="a) queries")
    parser.add_argument("--tables", type=int, default=100, help="b) connections = tables")
    parser.add_argument("--per-conn", type=int, default=200, help="b) queries per connection")
    parser.add_argument("--clients", type=int, default=64, help="c) connections on one table")
    parser.add_argument("--per-client", type=int, default=200, help="c) queries per connection")
    parser.add_argument("--storm", type=int, default=1000, help="d) connections")
    parser.add_argument("--burst", type=int, default=10000, help="e) connections")
    parser.add_argument("--warmup-rounds", type=int, default=2, help="rounds of every workload before measuring")
    parser.add_argument("--runs", type=int, default=1, help="measure every workload this many times (ranges)")
    parser.add_argument("--only", default="abcde", help="the workloads to run, e.g. 'b' or 'ae'")
    parser.add_argument("--profile", metavar="DIR",
                        help="run the CPython proxy under cProfile (twistd --profiler), stats in DIR/proxy-0.prof")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.per_conn, args.per_client, args.storm, args.burst = 2000, 20, 20, 200, 1000
        args.warmup_rounds = 1

    runtimes = [py for py in (args.cpython, args.pypy) if py and os.path.exists(py)]
    if not runtimes:
        sys.exit("no interpreter found: pass --cpython and/or --pypy (venvs with metaproxy installed)")
    sim_python = args.sim_python or runtimes[0]

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.burst + 2000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))

    tmp = tempfile.mkdtemp(prefix="metaproxy-bench-")
    metas = [free_port() for _ in range(3)]
    meta_list = ",".join(f"127.0.0.1:{p}" for p in metas)
    tables = [f"t{i:03d}" for i in range(args.tables)] + ["temp"]
    sim_cmd = twistd_argv(sim_python) + ["pegasus-sim", "--metas", meta_list]
    for t in tables:
        sim_cmd += ["--table", f"{t}:8"]

    procs = []

    def start(name, cmd):
        log = open(os.path.join(tmp, f"{name}.log"), "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        procs.append(p)
        return p

    try:
        sim_proc = start("sim", sim_cmd)
        sim = Target(f"direct ({runtime_label(sim_python).split()[0]} sim)", metas[0], sim_proc.pid)
        proxies = []
        for i, python in enumerate(runtimes):
            port, admin = free_port(), free_port()
            config = os.path.join(tmp, f"metaproxy-{i}.yaml")
            with open(config, "w") as f:
                f.write(f"listen: tcp:{port}:interface=127.0.0.1:backlog={BACKLOG}\n")
                f.write(f"admin:\n  listen: tcp:{admin}:interface=127.0.0.1\n")
                f.write("metric:\n  type: prometheus\n  table_labels: false\n")
                # All load comes from this one address: no per-peer cap.
                f.write(f"limits:\n  max_connections: {args.burst + 2000}\n  max_connections_per_peer: 0\n")
                f.write("routes:\n")
                for t in tables:
                    f.write(f"  {t}: {{cluster_name: sim, meta_addrs: '{meta_list}'}}\n")
            profile = []
            if args.profile and runtime_label(python).startswith("CPython"):
                profile = [f"--profile={os.path.abspath(args.profile)}/proxy-{i}.prof", "--profiler=cprofile", "--savestats"]
            p = start(f"proxy-{i}", twistd_argv(python) + profile + ["metaproxy", f"--config={config}"])
            proxies.append(Target(f"proxy {runtime_label(python)}", port, p.pid, admin))
        wait_for_port(metas[0], sim_proc, timeout=60)
        for target, p in zip(proxies, procs[1:]):
            wait_for_port(target.port, p, timeout=60)
            wait_for_port(target.admin, p, timeout=60)
        for k, v in sorted(os.environ.items()):
            if k.startswith("PYPY_GC"):
                print(f"environment: {k}={v}")
        task.react(lambda reactor: run(reactor, args, sim, proxies))
    finally:
        for p in procs:
            stop_process(p)
        print(f"\nlogs: {tmp}")


if __name__ == "__main__":
    main()
