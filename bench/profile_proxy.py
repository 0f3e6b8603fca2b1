"""
Profile metaproxy's query path in one process (simulator, proxy and client
share the reactor): prints the functions with the most own time.

    .venv/bin/python bench/profile_proxy.py [queries]
"""

import cProfile
import pstats
import sys

from twisted.internet import defer, task

from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.routes.static import StaticRouteTable
from metaproxy.testing.harness import ProxyHarness, start_cluster


@defer.inlineCallbacks
def main(reactor, n):
    cluster = start_cluster(reactor, "a", {"temp": 8}, host_ports=False)
    proxy = ProxyHarness(reactor, StaticRouteTable({"temp": Route("a", MetaAddrs.parse(cluster.meta_addrs()))}))
    yield proxy.start()
    client = yield proxy.client("go")
    for _ in range(200):
        yield client.query("temp")
    profiler = cProfile.Profile()
    profiler.enable()
    start = reactor.seconds()
    for _ in range(n):
        yield client.query("temp")
    elapsed = reactor.seconds() - start
    profiler.disable()
    print(f"{n} sequential queries in {elapsed:.2f}s under the profiler ({n / elapsed:.0f}/s)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    client.transport.loseConnection()
    yield proxy.stop()
    yield cluster.stopService()


if __name__ == "__main__":
    task.react(main, [int(sys.argv[1]) if len(sys.argv) > 1 else 3000])
