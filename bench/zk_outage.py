"""
Issue 11, ZooKeeper outage: metaproxy must never freeze while ZooKeeper is
down, whatever names clients send.

    PYTHONPATH=src .venv/bin/python bench/zk_outage.py [--names 5000]

Starts a private ZooKeeper, C{twistd pegasus-sim} and C{twistd metaproxy}
(routes from ZooKeeper) on 127.0.0.1. Warms the cache with table t000,
stops ZooKeeper, then sends N distinct uncached names (Java 1.x framing,
client timeout 1000 ms, 100 at a time, 0.1 s apart) while t000 is probed every 10 ms
and /healthz every 100 ms; then SIGTERMs metaproxy. Prints the figures;
asserts nothing. Every process it starts is stopped by PID.
"""

import argparse
import collections

from twisted.internet import defer, task, threads

from metaproxy.testing.zkload import Processes, outage, percentile


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


@defer.inlineCallbacks
def main(reactor, args):
    procs = Processes(tables=2, drain_timeout=args.drain)
    try:
        yield threads.deferToThread(procs.start)
        f = yield outage(reactor, procs, names=args.names, window=args.window, pause=args.pause)
    finally:
        yield threads.deferToThread(procs.stop)
    probes, uncached, health = f["probes"], f["uncached"], f["health"]
    p = [s for _, s in probes]
    u = [s for _, s in uncached]
    print(f"uncached names sent while ZooKeeper was down: {len(uncached)} in {f['flood_seconds']:.2f} s")
    print(f"  answers: {dict(collections.Counter(e for e, _ in uncached))}")
    print(f"  latency p50 {ms(percentile(u, 50))}  p99 {ms(percentile(u, 99))}  max {ms(max(u))}"
          f"  (client timeout 1000 ms; answered before 950 ms: {sum(s < 0.95 for s in u)}/{len(u)})")
    print(f"cached table t000 probes: {len(probes)}  answers {dict(collections.Counter(e for e, _ in probes))}")
    print(f"  latency p50 {ms(percentile(p, 50))}  p99 {ms(percentile(p, 99))}  max {ms(max(p))}"
          f"  (under 100 ms: {sum(s < 0.1 for s in p)}/{len(p)})")
    h = [s for _, s in health]
    print(f"/healthz: {len(health)} requests, statuses {dict(collections.Counter(st for st, _ in health))},"
          f" max {ms(max(h))}")
    print(f"SIGTERM -> exit in {f['exit_seconds']:.2f} s (drain timeout {args.drain} s), exit code {f['exit_code']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--names", type=int, default=5000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between windows (spreads the outage)")
    parser.add_argument("--drain", type=float, default=5.0)
    task.react(main, [parser.parse_args()])
