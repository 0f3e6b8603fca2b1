"""
Instructions per query of the query path, counted by valgrind (callgrind),
for A/B comparisons of hot-path changes on a busy shared machine, where CPU
time per query varies by +-30 % between back-to-back runs and instruction
counts by about +-1 %.

The simulator, metaproxy and a client share one process and one reactor
(as in profile_proxy.py), so the figure includes the simulator's and the
client's work, which a proxy change does not touch: compare differences.

    PYTHONPATH=src python bench/instructions_per_query.py            # driver
    PYTHONPATH=src python bench/instructions_per_query.py --run N    # one run (no valgrind)

STALE_IF_ERROR=0 in the environment turns stale-if-error off (A/B).

The driver runs the loop under callgrind with 500 and 2500 measured queries
and prints the difference divided by 2000 (start-up cancels out).
"""

import os
import re
import subprocess
import sys

from twisted.internet import defer, task


@defer.inlineCallbacks
def run(reactor, n):
    from metaproxy.routes.route import MetaAddrs, Route
    from metaproxy.routes.static import StaticRouteTable
    from metaproxy.testing.harness import ProxyHarness, start_cluster

    cluster = start_cluster(reactor, "a", {"temp": 8}, host_ports=False)
    routes = StaticRouteTable({"temp": Route("a", MetaAddrs.parse(cluster.meta_addrs()))})
    proxy = ProxyHarness(reactor, routes, stale_if_error=float(os.environ.get("STALE_IF_ERROR", "600")))
    yield proxy.start()
    client = yield proxy.client("go")
    for _ in range(500 + n):
        yield client.query("temp")
    client.transport.loseConnection()
    yield proxy.stop()
    yield cluster.stopService()


def count(n):
    """@return: the instructions callgrind counted for a run of C{n} measured queries."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__, "--run", str(n)],
        capture_output=True, text=True, env=os.environ, check=True,
    ).stderr
    return int(re.search(r"Collected : (\d+)", out).group(1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        task.react(run, [int(sys.argv[2])])
    else:
        low, high = count(500), count(2500)
        print(f"{(high - low) / 2000 / 1000:.0f}k instructions per query (simulator + proxy + client, one process)")
