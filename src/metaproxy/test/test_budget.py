# -*- test-case-name: metaproxy.test.test_budget -*-
"""
The answer budget end to end on one clock: L{QueryConfigResolver} over
L{ClusterPools} and simulated metas reached through in-memory connections.
For every client profile and every way the backend can fail, the retryable
C{ERR_SERVICE_NOT_ACTIVE} must arrive before 0.95 x the client's own
timeout.
"""

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from metaproxy import errors
from metaproxy.backend.cluster import MetaCluster
from metaproxy.backend.pools import ClusterPools
from metaproxy.interfaces import IRouteTable
from metaproxy.frontend.resolver import QueryConfigResolver
from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.sim.server import SimulatedCluster
from metaproxy.test.test_backend_cluster import FakeNetwork, close_all
from metaproxy.wire import codes, querycfg
from metaproxy.wire.frame import Request, RequestHeader

METAS = ("127.0.0.1:34601", "127.0.0.1:34602", "127.0.0.1:34603")

#: (name, header version, header client_timeout ms, seconds the client
#: waits): the families whose header timeout is true (Go's is not, see
#: test_families).
PROFILES = (
    ("v0 1000 ms (Java 1.x)", 0, 1000, 1.0),
    ("v0 3000 ms (Java 1.x)", 0, 3000, 3.0),
    ("v1 5000 ms (Java 2.x)", 1, 5000, 5.0),
    ("0 (pypegasus3, NodeJS: 2000 ms)", 0, 0, 2.0),
)


def header_for(version, timeout_ms):
    """@return: the header a client of that profile sends (Java 1.x's gpid and thread hash on v0 timeouts)."""
    if version == 0 and timeout_ms:
        return RequestHeader(0, -1, -1, timeout_ms, -7921)
    return RequestHeader(version=version, client_timeout=timeout_ms)


@implementer(IRouteTable)
class _Routes:
    """Static routes; C{hang} tables never resolve (ZooKeeper down, first read), C{down} ones fail fast."""

    def __init__(self, routes):
        self.routes = routes
        self.hang = set()
        self.down = set()
        self.cancelled = 0

    def lookup(self, table):
        if table in self.hang:
            def cancel(d):
                self.cancelled += 1

            return defer.Deferred(cancel)
        if table in self.down:
            return defer.fail(errors.RouteUnavailable("ZooKeeper is not connected"))
        return defer.succeed(self.routes[table])

    def is_ready(self):
        return True

    def clusters(self):
        return frozenset(r.meta_addrs for r in self.routes.values())

    def describe(self):
        return []


def resolver_over(clock, net, routes):
    """@return: C{(pools, resolver)}: a L{QueryConfigResolver} over pools reaching C{net}'s metas, on C{clock}."""
    pools = ClusterPools(
        clock,
        cluster_factory=lambda a: MetaCluster(clock, a, connection_factory=net.connection_factory),
    )
    return pools, QueryConfigResolver(routes, pools, clock=clock)


class BudgetTests(SynchronousTestCase):
    """Each failure, each profile: answered in time with the retryable error."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.sim = SimulatedCluster(self.clock, METAS)
        self.sim.create_table("temp", 8)
        self.sim.startService()
        self.net = FakeNetwork(self.clock)
        self.net.add(self.sim)
        addrs = MetaAddrs.parse(",".join(METAS))
        self.routes = _Routes({"temp": Route("c1", addrs), "fresh": Route("c1", addrs)})
        self.pools, self.resolver = resolver_over(self.clock, self.net, self.routes)
        self.addCleanup(self._close)
        self.net.run(0.1)

    def _close(self):
        close_all(self, self.pools, self.sim, self.net)

    def send(self, table, version, timeout_ms):
        header = header_for(version, timeout_ms)
        d = self.resolver.handle(Request(header, querycfg.QUERY_CFG, 1, querycfg.encode_args(table, ())), None)
        sent = self.clock.seconds()
        d.addCallback(lambda reply: (self.clock.seconds() - sent, reply))
        return d

    def answered_in_time(self, d, waits, err=codes.ERR_SERVICE_NOT_ACTIVE):
        for _ in range(int(waits / 0.01) + 10):
            if d.called:
                break
            self.net.run(0.01, step=0.01)
        took, reply = self.successResultOf(d)
        self.assertEqual(reply.app_error, err)
        self.assertLess(took, 0.95 * waits)
        return took

    def each_profile(self, table="temp"):
        for name, version, timeout_ms, waits in PROFILES:
            with self.subTest(profile=name) if hasattr(self, "subTest") else _null():
                self.answered_in_time(self.send(table, version, timeout_ms), waits)

    def test_silent_metas(self):
        """Every meta silent."""
        self.sim.set_silent(True)
        self.each_profile()

    def test_forward_to_dead_leader(self):
        """The leader is gone (refusing) and the followers still name it."""
        self.successResultOf(self.sim.stop_meta(0))
        self.net.flush()
        self.each_profile()

    def test_all_refusing(self):
        """Every meta refuses connections."""
        for i in range(3):
            self.successResultOf(self.sim.stop_meta(i))
        self.net.flush()
        self.each_profile()

    def test_zookeeper_down_uncached(self):
        """A first route read that never finishes is cancelled at the budget; a fast failure is relayed at once."""
        self.routes.hang.add("fresh")
        self.each_profile("fresh")
        self.assertEqual(self.routes.cancelled, len(PROFILES))
        self.routes.hang.clear()
        self.routes.down.add("fresh")
        for _, version, timeout_ms, _ in PROFILES:
            self.assertEqual(self.answered_in_time(self.send("fresh", version, timeout_ms), 1.0), 0.0)

    def test_coalesced_second_query(self):
        """A request that joins a queued batch behind a running query is answered at its own deadline."""
        self.sim.set_silent(True)
        for name, version, timeout_ms, waits in PROFILES:
            first = self.send("temp", 0, 5000)
            self.net.run(0.5)
            second = self.send("temp", version, timeout_ms)
            self.assertEqual(self.resolver.in_flight(), 1)
            self.answered_in_time(second, waits)
            self.answered_in_time(first, 5.0)

    def test_answer_when_metas_recover(self):
        """Silent metas that answer again within the budget still give ERR_OK."""
        self.sim.set_silent(True)
        d = self.send("temp", 0, 3000)
        self.net.run(1.0)
        self.sim.set_silent(False)
        self.answered_in_time(d, 3.0, err=codes.ERR_OK)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
