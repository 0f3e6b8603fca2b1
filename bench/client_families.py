"""
Never worse than going direct: each client family's real frame shape and
retry behaviour, replayed against a simulated meta, direct and through a
real metaproxy process (its default config), side by side.

    PYTHONPATH=src python bench/client_families.py [--storm N] [--only COLUMN]

Rows: Go (5 s context), Java 1.x >= 1.11.4 and <= 1.11.3 (5000 ms
configured), NodeJS, pypegasus3, Java 2.x. Columns: a meta answering in
0.5 s, 1.7 s, 3.0 s; a silent meta; a cluster refusing connections (every
meta down longer than the breaker's window). Each cell: outcome and seconds
direct / through metaproxy. Every family queries its own table, so the
cells do not coalesce with each other; direct and proxied runs of a column
run at the same time.

Client models (from the clients' sources, pegasus-protocol.md and the
captures of issue 24; the real clients' meta lists are one address here):

 - Go: v0 all zero, timeout C{uint32(ns)/1e6} of what is left of its 5 s
   context (~705 ms); one call; C{ERR_SERVICE_NOT_ACTIVE} is final; gives up
   at its deadline; a refused dial fails at once.
 - Java 1.x: v0, gpid (-1, -1), thread hash -7921, timeout 5000 (>= 1.11.4)
   or 0 (<= 1.11.3), each attempt 5 s; 5 attempts; C{ERR_SERVICE_NOT_ACTIVE}
   retried after 1 s on the same connection, a timeout or a refused
   connection at once.
 - NodeJS: v0 all zero, timeout 0; each attempt up to 5 s (rpcTimeOut 5000
   as configured in the issue's runs); 5 attempts; C{ERR_SERVICE_NOT_ACTIVE}
   and timeouts retried after 1 s on the same connection.
 - pypegasus3: v0 all zero, timeout 0; a new connection per query; its 2 s
   timer starts once connected; one attempt.
 - Java 2.x: v1, timeout 5000 (metaQueryTimeout), otherwise as Java 1.x.

It prints the table (and, with C{--storm N}, N Go frames with the 4.3 s
wrap from N connections at once against a meta answering in 0.9 s). It
measures; it asserts nothing.
"""

import argparse
import os
import sys
import tempfile
import time

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from metaproxy.sim.server import SimulatedCluster
from metaproxy.testing.net import free_port, stop_process, wait_for_port
from metaproxy.testing.proxyproc import config_text, start_proxy
from metaproxy.wire import frame, querycfg

FAMILIES = ("go", "java1_new", "java1_old", "nodejs", "pypegasus3", "java2")
LABELS = {
    "go": "Go (ctx 5 s)",
    "java1_new": "Java 1.x >= 1.11.4",
    "java1_old": "Java 1.x <= 1.11.3",
    "nodejs": "NodeJS",
    "pypegasus3": "pypegasus3",
    "java2": "Java 2.x",
}
COLUMNS = ("0.5s", "1.7s", "3.0s", "silent", "refusing")


def go_wrap(seconds):
    return (int(seconds * 1e9) & 0xFFFFFFFF) // 1000000


class _Client(protocol.Protocol):
    """Sends raw THFT requests and matches replies by seqid."""

    def __init__(self):
        self.decoder = frame.ResponseDecoder()
        self.pending = {}
        self.seqid = 0
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        for response in self.decoder.feed(data):
            d = self.pending.pop(response.seqid, None)
            if d is not None:
                d.callback(response)

    def connectionLost(self, reason):
        for d in self.pending.values():
            d.errback(reason)
        self.pending.clear()

    def ask(self, table, version, app_id, pidx, timeout_ms, thread_hash):
        self.seqid += 1
        d = defer.Deferred()
        self.pending[self.seqid] = d
        self.transport.write(frame.encode_request(
            querycfg.QUERY_CFG, self.seqid, querycfg.encode_args(table), version=version, app_id=app_id,
            partition_index=pidx, client_timeout=timeout_ms, thread_hash=thread_hash,
        ))
        return d


def _connect(port):
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=3), _Client())


@defer.inlineCallbacks
def _attempt(conn, table, header, wait):
    """@return: the app error, "timeout" or "conn" (connection lost)."""
    d = conn.ask(table, *header)
    d.addTimeout(wait, reactor)
    try:
        response = yield d
    except defer.TimeoutError:
        return "timeout"
    except Exception:
        return "conn"
    if response.rpc_error != "ERR_OK":
        return response.rpc_error
    return querycfg.peek_result(response.body).err


@defer.inlineCallbacks
def run_family(family, port, table):
    """@return: (outcome, seconds)."""
    start = time.monotonic()

    def left(total):
        return total - (time.monotonic() - start)

    if family == "pypegasus3":
        try:
            conn = yield _connect(port)
        except Exception:
            return "refused", time.monotonic() - start
        err = yield _attempt(conn, table, (0, 0, 0, 0, 0), 2.0)
        conn.transport.loseConnection()
        return err, time.monotonic() - start
    if family == "go":
        try:
            conn = yield _connect(port)
        except Exception:
            return "refused", time.monotonic() - start
        err = yield _attempt(conn, table, (0, 0, 0, go_wrap(left(5.0)), 0), max(left(5.0), 0.0))
        conn.transport.loseConnection()
        return ("deadline" if err == "timeout" else err), time.monotonic() - start
    header = {
        "java1_new": (0, -1, -1, 5000, -7921),
        "java1_old": (0, -1, -1, 0, -7921),
        "nodejs": (0, 0, 0, 0, 0),
        "java2": (1, -1, -1, 5000, 0),
    }[family]
    conn, err = None, "refused"
    for attempt in range(5):
        if conn is None:
            try:
                conn = yield _connect(port)
            except Exception:
                err = "refused"
                if family == "nodejs":
                    yield task.deferLater(reactor, 1.0, lambda: None)
                continue
        err = yield _attempt(conn, table, header, 5.0)
        if err == "conn":
            conn = None
            continue
        if err == "ERR_OK" or err not in ("ERR_SERVICE_NOT_ACTIVE", "timeout"):
            break
        if attempt < 4 and (err == "ERR_SERVICE_NOT_ACTIVE" or family == "nodejs"):
            yield task.deferLater(reactor, 1.0, lambda: None)
    if conn is not None:
        conn.transport.loseConnection()
    return err, time.monotonic() - start


def _cell(outcome, seconds):
    short = {"ERR_OK": "OK", "ERR_SERVICE_NOT_ACTIVE": "NOT_ACTIVE"}.get(outcome, outcome)
    return f"{short} {seconds:.2f}s"


@defer.inlineCallbacks
def run_column(sim, column, meta_port, proxy_port):
    if column == "refusing":
        yield sim.stop_meta(0)
        yield task.deferLater(reactor, 3.0, lambda: None)  # longer than timeouts.breaker_window (2 s)
    else:
        sim.start_meta(0)
        sim.set_silent(column == "silent")
        sim.set_delay(0.0 if column == "silent" else float(column[:-1]))
    runs = []
    for family in FAMILIES:
        runs.append(run_family(family, meta_port, f"t_{family}"))
        runs.append(run_family(family, proxy_port, f"t_{family}"))
    results = yield defer.gatherResults(runs)
    return {f: (results[2 * i], results[2 * i + 1]) for i, f in enumerate(FAMILIES)}


@defer.inlineCallbacks
def storm(sim, proxy_port, count):
    sim.start_meta(0)
    sim.set_silent(False)
    sim.set_delay(0.9)
    conns = yield defer.gatherResults([_connect(proxy_port) for _ in range(count)])
    start = time.monotonic()
    errs = yield defer.gatherResults([
        _attempt(c, "t_go", (0, 0, 0, go_wrap(4.3), 0), 4.3) for c in conns
    ])
    took = time.monotonic() - start
    for c in conns:
        c.transport.loseConnection()
    failed = sum(1 for e in errs if e != "ERR_OK")
    print(f"\nstorm: {count} Go frames (4.3 s wrap: header {go_wrap(4.3)} ms) from {count} connections, "
          f"meta answering in 0.9 s: {failed} failed, all answered within {took:.2f} s")


@defer.inlineCallbacks
def main(args):
    meta_port = free_port()
    sim = SimulatedCluster(reactor, (f"127.0.0.1:{meta_port}",), cluster_name="bench")
    for family in FAMILIES:
        sim.create_table(f"t_{family}", 8)
    sim.startService()
    proxy_port, admin_port = free_port(), free_port()
    workdir = tempfile.mkdtemp(prefix="families-")
    path = os.path.join(workdir, "metaproxy.yaml")
    with open(path, "w") as f:
        f.write(config_text(
            f"tcp:{proxy_port}:interface=127.0.0.1", f"tcp:{admin_port}:interface=127.0.0.1",
            {f"t_{family}": ("bench", f"127.0.0.1:{meta_port}") for family in FAMILIES},
        ))
    out = open(os.path.join(workdir, "metaproxy.log"), "w")
    proc = start_proxy(path, workdir, out)
    try:
        wait_for_port(proxy_port, proc)
        columns = [c for c in COLUMNS if args.only is None or c == args.only]
        table = {}
        for column in columns:
            table[column] = yield run_column(sim, column, meta_port, proxy_port)
        print(f"{'client family':<20}" + "".join(f"| {c + ' (direct / metaproxy)':<39}" for c in columns))
        for family in FAMILIES:
            row = f"{LABELS[family]:<20}"
            for column in columns:
                direct, proxied = table[column][family]
                row += f"| {_cell(*direct):<18} / {_cell(*proxied):<18}"
            print(row)
        if args.storm:
            yield storm(sim, proxy_port, args.storm)
    finally:
        stop_process(proc)
        out.close()
        yield sim.stopService()
    print(f"\nload average: {os.getloadavg()}; proxy log: {workdir}/metaproxy.log")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storm", type=int, default=0, metavar="N")
    parser.add_argument("--only", choices=COLUMNS)
    options = parser.parse_args()
    task.react(lambda _: main(options))
    sys.exit(0)
