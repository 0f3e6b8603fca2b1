"""
metaproxy failover benchmark: a leader SIGKILL with an election, in both
address orders, and all metas down for a while then back. On 127.0.0.1 only.

    PYTHONPATH=src python bench/failover.py            # full run (about 3 minutes)
    PYTHONPATH=src python bench/failover.py --quick    # shorter windows
    PYTHONPATH=src python bench/failover.py --only outage

Processes: three simulated metas, each its own process
(L{metaproxy.testing.metaprocs}; the leader is switched by a control file,
i.e. an "election"), and metaproxy (C{twistd metaproxy}, static routes,
default timeouts). This process is the load generator: Go-profile clients
(THFT v0, header C{client_timeout}; each waits that long for an answer, then
gives up and sends the next query after 50 ms).

For each scenario it prints how many queries were sent, the fraction
answered ERR_OK within the client's timeout, the retryable answers and the
client timeouts. It measures; it asserts nothing. Every process it starts is
ended by PID.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile

from twisted.internet import defer, task, threads

from metaproxy.testing.load import connect_clients, ok_fraction, steady_load
from metaproxy.testing.metaprocs import MetaProcesses
from metaproxy.testing.net import free_port, wait_for_port


def start_proxy(meta_addrs, tmp):
    port, admin = free_port(), free_port()
    config = os.path.join(tmp, "metaproxy.yaml")
    with open(config, "w") as f:
        f.write(f"listen: tcp:{port}:interface=127.0.0.1\n")
        f.write(f"admin:\n  listen: tcp:{admin}:interface=127.0.0.1\n")
        f.write("routes:\n")
        f.write(f"  temp: {{cluster_name: sim, meta_addrs: '{meta_addrs}'}}\n")
    cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
           "metaproxy", f"--config={config}"]
    log = open(os.path.join(tmp, "proxy.log"), "a")
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in paths)  # it runs in tmp
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=env)
    wait_for_port(port, proc)
    return proc, port


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summary(name, samples, waits, since=None):
    chosen = [s for s in samples if since is None or s.sent >= since]
    ok, total = ok_fraction(chosen, waits)
    retry = sum(1 for s in chosen if s.err == "ERR_SERVICE_NOT_ACTIVE")
    late = sum(1 for s in chosen if s.latency is None)
    worst = max((s.latency for s in chosen if s.latency is not None), default=float("nan"))
    pct = 100.0 * ok / total if total else float("nan")
    print(f"  {name:<52} {total:>6} {pct:>7.2f} % {retry:>6} {late:>6} {worst * 1000:>9.0f}")


def header():
    print(f"  {'scenario':<52} {'sent':>6} {'ERR_OK in time':>9} {'retry':>6} {'tmout':>6} {'max ms':>9}")


@defer.inlineCallbacks
def scenario(reactor, args, timeout_ms, pick_leader, body):
    """
    Start three metas (the leader chosen by C{pick_leader(metas)}), a proxy
    and the clients, warm up, run C{body(metas, clients, waits)}, and end
    every process.
    """
    waits = timeout_ms / 1000.0 if timeout_ms else 2.0
    metas = MetaProcesses(leader=None)
    proxy = None
    try:
        metas.set_leader(pick_leader(metas))
        metas.start_all()
        proxy, port = start_proxy(metas.meta_addrs(), tempfile.mkdtemp(prefix="failover-bench-"))
        clients = yield connect_clients(reactor, port, args.clients, "go", timeout_ms)
        yield steady_load(reactor, clients[:1], reactor.seconds() + 0.5, waits)  # the proxy finds the leader
        yield body(metas, clients, waits)
        for c in clients:
            c.transport.loseConnection()
    finally:
        if proxy is not None:
            stop(proxy)
        metas.stop_all()


def _by_port(metas):
    return sorted(range(3), key=lambda i: metas.ports[i])


def election(reactor, args, dead_first, elect_after, timeout_ms):
    """The leader (lowest or highest address) is SIGKILLed; another is elected C{elect_after} s later."""

    def pick(metas):
        return _by_port(metas)[0] if dead_first else _by_port(metas)[-1]

    @defer.inlineCallbacks
    def body(metas, clients, waits):
        load = steady_load(reactor, clients, reactor.seconds() + args.window, waits)
        yield task.deferLater(reactor, args.kill_at, lambda: None)
        metas.kill(pick(metas))
        yield task.deferLater(reactor, elect_after, lambda: None)
        metas.set_leader(_by_port(metas)[1])
        samples = yield load
        order = "lowest" if dead_first else "highest"
        summary(f"kill leader ({order} addr), election +{elect_after:g}s, {timeout_ms} ms", samples, waits)

    return scenario(reactor, args, timeout_ms, pick, body)


def outage(reactor, args, down_for, timeout_ms):
    """Every meta is SIGKILLed, and restarted on its port C{down_for} s later."""

    @defer.inlineCallbacks
    def body(metas, clients, waits):
        for i in range(3):
            metas.kill(i)
        end = [float("inf")]
        load = steady_load(reactor, clients, lambda: end[0], waits)
        yield task.deferLater(reactor, down_for, lambda: None)
        metas.start_all(wait=False)  # blocking here would delay the clients' answers
        yield threads.deferToThread(metas.wait_listening)
        back = reactor.seconds()
        end[0] = back + args.after
        samples = yield load
        summary(f"all metas down {down_for:g}s, {timeout_ms} ms: sent while down",
                [s for s in samples if s.sent < back], waits)
        summary("  sent 0-1 s after their return", [s for s in samples if back <= s.sent < back + 1.0], waits)
        summary("  sent from 1 s after their return", samples, waits, since=back + 1.0)

    return scenario(reactor, args, timeout_ms, lambda metas: 0, body)


@defer.inlineCallbacks
def run(reactor, args):
    print(f"metaproxy failover benchmark  python {sys.version.split()[0]}  cores {os.cpu_count()}  "
          f"{args.clients} Go-profile connections, window {args.window:g}s, kill at +{args.kill_at:g}s")
    header()
    if args.only in (None, "election"):
        for timeout_ms in args.timeouts:
            for elect_after in (1.0, 3.0):
                for dead_first in (True, False):
                    yield election(reactor, args, dead_first, elect_after, timeout_ms)
    if args.only in (None, "outage"):
        for timeout_ms in args.timeouts:
            yield outage(reactor, args, args.down, timeout_ms)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, one client timeout")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--only", choices=("election", "outage"), help="run one kind of scenario")
    args = parser.parse_args()
    args.window, args.kill_at, args.down, args.after = (10.0, 2.0, 10.0, 6.0) if args.quick else (30.0, 5.0, 10.0, 10.0)
    args.timeouts = (3000,) if args.quick else (3000, 1000)
    task.react(lambda reactor: run(reactor, args))


if __name__ == "__main__":
    main()
