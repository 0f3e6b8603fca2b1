# -*- test-case-name: metaproxy.test.test_zkload -*-
"""
Process-level ZooKeeper scenarios, shared by the test suite (small counts)
and the benchmark scripts (the issue's full counts):

 - L{outage}: ZooKeeper is stopped while many distinct uncached names are
   queried and a cached table and C{/healthz} are probed; then SIGTERM.
 - L{flood}: unknown names pour in while real tables are queried.

L{Processes} starts a private ZooKeeper, a simulated meta cluster
(C{twistd pegasus-sim}) and metaproxy (C{twistd metaproxy}), all on
127.0.0.1 and free ports, and stops only what it started, by PID.
Everything here measures and returns figures; callers decide what passes.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from twisted.internet import defer, task, threads

from metaproxy.routes.route import Route, MetaAddrs
from metaproxy.testing.net import free_port, twistd_argv, wait_for_port
from metaproxy.testing.pegasus_client import connect_client
from metaproxy.testing.zookeeper import ZooKeeperServer, four_letter, quiet_client
from metaproxy.wire import querycfg

_TWISTD = twistd_argv()
ROOT = "/mp"


def rss_kib(pid):
    """@return: the resident set size of process C{pid} in KiB (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(values, p):
    """@return: the C{p}th percentile of C{values} (nan when empty)."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100.0 * len(values)))]


def answer_err(response):
    """@return: the error a client sees in a query_cfg response (rpc-level first)."""
    if response.rpc_error != "ERR_OK":
        return response.rpc_error
    return querycfg.peek_result(response.body).err


class Processes:
    """
    ZooKeeper, a simulated cluster with C{tables} tables C{t000...}, and
    metaproxy routing them through ZooKeeper node C{/mp/<table>}.

    @ivar port: metaproxy's client port; C{admin}: its admin port.
    """

    def __init__(self, tables=20, capacity=1024, drain_timeout=2.0, extra_config=""):
        self.dir = tempfile.mkdtemp(prefix="metaproxy-zkload-")
        self.tables = [f"t{i:03d}" for i in range(tables)]
        self.capacity = capacity
        self.drain_timeout = drain_timeout
        self.extra_config = extra_config
        self.zk = None
        self.procs = {}

    def start(self):
        """Start everything; blocks until metaproxy is ready (call it from a thread in a reactor)."""
        self.zk = ZooKeeperServer()
        self.zk.start()
        sim_port = free_port()
        metas = f"127.0.0.1:{sim_port}"
        admin = quiet_client(self.zk.hosts)
        admin.start(timeout=15)
        try:
            admin.ensure_path(ROOT)
            for t in self.tables:
                admin.create(f"{ROOT}/{t}", Route("sim", MetaAddrs.parse(metas)).to_json())
        finally:
            admin.stop()
            admin.close()
        cmd = _TWISTD + ["pegasus-sim", "--metas", metas] + [a for t in self.tables for a in ("--table", f"{t}:4")]
        self._spawn("sim", cmd)
        wait_for_port(sim_port, self.procs["sim"])
        self.port, self.admin = free_port(), free_port()
        config = os.path.join(self.dir, "metaproxy.yaml")
        with open(config, "w") as f:
            f.write(
                f"listen: tcp:{self.port}:interface=127.0.0.1\n"
                f"admin: {{listen: 'tcp:{self.admin}:interface=127.0.0.1'}}\n"
                "metric: {type: prometheus}\n"
                f"zookeeper: {{address: ['{self.zk.hosts}'], root: {ROOT}, timeout: 4000,"
                f" table_watcher_cache_capacity: {self.capacity}, read_timeout: 3.0}}\n"
                f"drain_timeout: {self.drain_timeout}\n"
                "timeouts: {client_default: 1.5, hedge_delay: 0.2, connect: 1.0}\n" + self.extra_config
            )
        self._spawn("proxy", _TWISTD + ["metaproxy", f"--config={config}"])
        wait_for_port(self.port, self.procs["proxy"])
        end = time.monotonic() + 30
        while self.http("/readyz")[0] != 200:
            if time.monotonic() > end or self.procs["proxy"].poll() is not None:
                raise RuntimeError(f"metaproxy not ready; see {self.dir}/proxy.log")
            time.sleep(0.1)

    def _spawn(self, name, cmd):
        with open(os.path.join(self.dir, f"{name}.log"), "ab") as log:
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)

    @property
    def proxy_pid(self):
        """@return: metaproxy's process id."""
        return self.procs["proxy"].pid

    def http(self, path, timeout=5.0):
        """@return: C{(status, body text, seconds)} of a GET on the admin port (blocking)."""
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=timeout) as r:
                return r.status, r.read().decode(), time.perf_counter() - start
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), time.perf_counter() - start
        except OSError as e:
            return None, str(e), time.perf_counter() - start

    def watches(self):
        """@return: ZooKeeper's total watch count (the C{wchs} command), or L{None}."""
        m = re.search(rb"Total watches:\s*(\d+)", four_letter(self.zk.port, b"wchs"))
        return int(m.group(1)) if m else None

    def log_text(self):
        """@return: what metaproxy logged so far."""
        with open(os.path.join(self.dir, "proxy.log"), errors="replace") as f:
            return f.read()

    def stop(self):
        """Stop every process started here (by PID) and ZooKeeper; remove the temporary files."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self.zk is not None:
            self.zk.destroy()
        shutil.rmtree(self.dir, ignore_errors=True)


@defer.inlineCallbacks
def _burst(reactor, client, names, window, deadline, pause=0.0):
    """
    Query C{names} with at most C{window} outstanding, C{pause} seconds
    between windows; @return: list of (err, seconds).
    """
    out = []

    def one(name):
        start = time.perf_counter()

        def done(response):
            out.append((answer_err(response), time.perf_counter() - start))

        return client.query(name).addCallback(done)

    names = list(names)
    for i in range(0, len(names), window):
        yield defer.gatherResults([one(n) for n in names[i:i + window]], consumeErrors=True)
        if time.monotonic() > deadline:
            break
        if pause:
            yield task.deferLater(reactor, pause, lambda: None)
    return out


@defer.inlineCallbacks
def _probe(reactor, client, table, stop, pause):
    """Query C{table} sequentially until C{stop[0]}; @return: list of (err, seconds)."""
    out = []
    while not stop[0]:
        start = time.perf_counter()
        response = yield client.query(table)
        out.append((answer_err(response), time.perf_counter() - start))
        yield task.deferLater(reactor, pause, lambda: None)
    return out


@defer.inlineCallbacks
def _health(reactor, procs, stop, pause=0.1):
    out = []
    while not stop[0]:
        status, _, seconds = yield threads.deferToThread(procs.http, "/healthz", 2.0)
        out.append((status, seconds))
        yield task.deferLater(reactor, pause, lambda: None)
    return out


@defer.inlineCallbacks
def outage(reactor, procs, names=5000, window=250, flavour="java1", max_seconds=120.0, pause=0.0):
    """
    Stop ZooKeeper, then query C{names} distinct uncached names (C{window}
    at a time, C{pause} seconds apart) while the cached table C{t000} and
    C{/healthz} are probed; then SIGTERM metaproxy.

    @return: a L{dict} of figures: C{probes} and C{uncached} (lists of
        C{(err, seconds)}), C{health} (list of C{(status, seconds)}),
        C{exit_seconds} and C{exit_code} after SIGTERM.
    """
    probe = yield connect_client(reactor, "127.0.0.1", procs.port, flavour)
    flood = yield connect_client(reactor, "127.0.0.1", procs.port, flavour)
    first = yield probe.query("t000")
    if answer_err(first) != "ERR_OK":
        raise RuntimeError(f"t000 answered {answer_err(first)} before the outage")
    yield threads.deferToThread(procs.zk.stop)
    while '"zk_state": "CONNECTED"' in (yield threads.deferToThread(procs.http, "/routes"))[1]:
        yield task.deferLater(reactor, 0.05, lambda: None)
    stop = [False]
    probing = _probe(reactor, probe, "t000", stop, 0.01)
    health = _health(reactor, procs, stop)
    started = time.monotonic()
    uncached = yield _burst(
        reactor, flood, (f"u{i:05d}" for i in range(names)), window, started + max_seconds, pause
    )
    flood_seconds = time.monotonic() - started
    stop[0] = True
    probes = yield probing
    healths = yield health
    proc = procs.procs["proxy"]
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = yield threads.deferToThread(proc.wait, procs.drain_timeout + 20)
    except subprocess.TimeoutExpired:
        code = None
    return {
        "probes": probes, "uncached": uncached, "health": healths, "flood_seconds": flood_seconds,
        "exit_seconds": time.monotonic() - start, "exit_code": code,
    }


@defer.inlineCallbacks
def flood(reactor, procs, unknown=50000, window=500, baseline_seconds=5.0, pause=0.02, flavour="java1",
          max_seconds=300.0):
    """
    Query every real table (one connection each, sequential with C{pause})
    for C{baseline_seconds}, then again while C{unknown} unknown names are
    sent (C{window} outstanding).

    @return: a L{dict}: C{baseline} and C{during} (lists of C{(err,
        seconds)} for the real tables), C{unknown} (the same for the
        flood), C{rss_kib} (before, after), C{watches} (before, after).
    """
    clients = []
    for _ in procs.tables:
        clients.append((yield connect_client(reactor, "127.0.0.1", procs.port, flavour)))
    flooder = yield connect_client(reactor, "127.0.0.1", procs.port, flavour)
    for c, t in zip(clients, procs.tables):
        yield c.query(t)

    @defer.inlineCallbacks
    def real_phase(seconds=None, until=None):
        stop = [False]
        loops = [_probe(reactor, c, t, stop, pause) for c, t in zip(clients, procs.tables)]
        if until is None:
            yield task.deferLater(reactor, seconds, lambda: None)
            extra = None
        else:
            extra = yield until
        stop[0] = True
        results = yield defer.gatherResults(loops)
        return [x for r in results for x in r], extra

    baseline, _ = yield real_phase(seconds=baseline_seconds)
    rss0, w0 = rss_kib(procs.proxy_pid), (yield threads.deferToThread(procs.watches))
    start = time.monotonic()
    names = (f"x{i:06d}-nosuch" for i in range(unknown))
    during, answers = yield real_phase(until=_burst(reactor, flooder, names, window, start + max_seconds))
    flood_seconds = time.monotonic() - start
    yield task.deferLater(reactor, 1.0, lambda: None)
    rss1, w1 = rss_kib(procs.proxy_pid), (yield threads.deferToThread(procs.watches))
    for c in clients + [flooder]:
        c.transport.loseConnection()
    return {
        "baseline": baseline, "during": during, "unknown": answers, "flood_seconds": flood_seconds,
        "rss_kib": (rss0, rss1), "watches": (w0, w1),
    }
