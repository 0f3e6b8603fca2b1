"""
Issue 11, unknown-name flood: unknown table names must cost nothing that
stays (no watch, no memory, no eviction) and must not slow real tables.

    PYTHONPATH=src .venv/bin/python bench/flood_unknown.py [--unknown 50000] [--tables 20]

Starts a private ZooKeeper, C{twistd pegasus-sim} with 20 tables and
C{twistd metaproxy} (routes from ZooKeeper) on 127.0.0.1. Each real table
is queried on its own connection (Java 1.x framing, 1000 ms client
timeout, one query every 20 ms): first alone (baseline), then while
50 000 unknown names are sent on another connection (500 outstanding).
Prints ZooKeeper's watch count (C{wchs}), metaproxy's RSS growth, the real
tables' OK share and p99 against the baseline, and the share of unknown
names answered ERR_OBJECT_NOT_FOUND. Asserts nothing.
"""

import argparse
import collections

from twisted.internet import defer, task, threads

from metaproxy.testing.zkload import Processes, flood, percentile


def ok_share(answers, timeout=1.0):
    return 100.0 * sum(1 for e, s in answers if e == "ERR_OK" and s < timeout) / max(1, len(answers))


@defer.inlineCallbacks
def main(reactor, args):
    procs = Processes(tables=args.tables, capacity=args.capacity)
    try:
        yield threads.deferToThread(procs.start)
        f = yield flood(reactor, procs, unknown=args.unknown, window=args.window, baseline_seconds=args.baseline)
    finally:
        yield threads.deferToThread(procs.stop)
    base, during, unknown = f["baseline"], f["during"], f["unknown"]
    b99, d99 = percentile([s for _, s in base], 99), percentile([s for _, s in during], 99)
    (r0, r1), (w0, w1) = f["rss_kib"], f["watches"]
    print(f"unknown names: {len(unknown)} in {f['flood_seconds']:.1f} s"
          f" ({len(unknown) / f['flood_seconds']:.0f}/s), answers {dict(collections.Counter(e for e, _ in unknown))}")
    nf = 100.0 * sum(1 for e, _ in unknown if e == "ERR_OBJECT_NOT_FOUND") / max(1, len(unknown))
    print(f"  ERR_OBJECT_NOT_FOUND: {nf:.2f} %   (target >= 95 %)")
    print(f"ZooKeeper watches (wchs): {w0} before the flood, {w1} after"
          f"   (target <= cache capacity {args.capacity} + small constant)")
    print(f"metaproxy RSS: {r0 / 1024:.1f} -> {r1 / 1024:.1f} MiB, growth {(r1 - r0) / 1024:.1f} MiB   (target <= 40 MB)")
    print(f"real tables ({args.tables}): baseline {len(base)} queries, OK {ok_share(base):.2f} %, p99 {b99 * 1000:.1f} ms")
    print(f"  during the flood: {len(during)} queries, OK {ok_share(during):.2f} %, p99 {d99 * 1000:.1f} ms"
          f" ({d99 / b99:.1f}x baseline)   (target >= 99 % OK)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--unknown", type=int, default=50000)
    parser.add_argument("--tables", type=int, default=20)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--capacity", type=int, default=1024)
    parser.add_argument("--baseline", type=float, default=5.0)
    task.react(main, [parser.parse_args()])
