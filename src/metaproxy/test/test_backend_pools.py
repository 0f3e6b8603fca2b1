# -*- test-case-name: metaproxy.test.test_backend_pools -*-
"""
Tests for L{metaproxy.backend.pools}: one pool per meta set, idle sweep,
close, and L{answer_budget}.
"""

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from metaproxy.backend.cluster import MetaCluster
from metaproxy.backend.connection import DownReports, MetaConnection
from metaproxy.backend.pools import ClusterPools, answer_budget
from metaproxy.interfaces import IClusterPools
from metaproxy.routes.route import MetaAddrs


class FakePool:
    """Stands in for a L{MetaCluster}: idle tracking and close only."""

    def __init__(self, meta_addrs, clock):
        self.meta_addrs = meta_addrs
        self.cluster_name = ""
        self.last_used = clock.seconds()
        self.running = 0
        self.closed = False

    def in_flight(self):
        return self.running

    def close(self):
        self.closed = True
        return defer.succeed(None)


class AnswerBudgetTests(SynchronousTestCase):
    """L{answer_budget} leaves a margin before the client's own timeout."""

    def test_margin(self):
        """The margin is the larger of 10 % and 100 ms."""
        self.assertAlmostEqual(answer_budget(1000, 1.5, 30.0), 0.9)
        self.assertAlmostEqual(answer_budget(3000, 1.5, 30.0), 2.7)
        self.assertAlmostEqual(answer_budget(5000, 1.5, 30.0), 4.5)
        self.assertAlmostEqual(answer_budget(500, 1.5, 30.0), 0.4)

    def test_tiny_timeout_keeps_half(self):
        """A timeout at or below the minimum margin keeps half of itself."""
        self.assertAlmostEqual(answer_budget(100, 1.5, 30.0), 0.05)

    def test_capped(self):
        """A header timeout above the maximum is capped."""
        self.assertEqual(answer_budget(60_000, 5.0, 30.0), 30.0)

    def test_unset_or_absurd(self):
        """Zero, negative and absurd values mean the default budget (itself capped)."""
        for value in (0, -1, -2_000_000_000, 4_000_000_000):
            self.assertEqual(answer_budget(value, 1.5, 30.0), 1.5)
        self.assertEqual(answer_budget(0, 50.0, 30.0), 30.0)

    def test_every_profile_answers_before_095(self):
        """For each client profile the budget ends before 0.95 x the client's timeout."""
        for header, client_waits in ((1000, 1.0), (3000, 3.0), (5000, 5.0), (0, 2.0)):
            self.assertLess(answer_budget(header, 1.5, 30.0), 0.95 * client_waits)


class ClusterPoolsTests(SynchronousTestCase):
    """L{ClusterPools} shares one pool per meta set and closes unused ones."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.referenced = frozenset()
        self.pools = ClusterPools(
            self.reactor,
            referenced=lambda: self.referenced,
            idle_close=300.0,
            sweep_interval=60.0,
            cluster_factory=lambda addrs: FakePool(addrs, self.reactor),
        )

    def test_interface(self):
        """L{ClusterPools} provides L{IClusterPools}."""
        self.assertTrue(verifyObject(IClusterPools, self.pools))

    def test_cluster_name_and_backend_up(self):
        """A pool takes the route's cluster name; backend_up reports per cluster_name."""
        a = self.pools.get(MetaAddrs.parse("10.0.0.1:34601"), "alpha")
        b = self.pools.get(MetaAddrs.parse("10.0.0.2:34601"), "beta")
        a.is_up = lambda: True
        b.is_up = lambda: False
        self.assertEqual((a.cluster_name, b.cluster_name), ("alpha", "beta"))
        self.assertEqual(self.pools.backend_up(), {"alpha": 1, "beta": 0})
        self.assertIs(self.pools.get(MetaAddrs.parse("10.0.0.2:34601"), "gamma"), b)
        self.assertEqual(b.cluster_name, "gamma")

    def test_one_pool_per_meta_set(self):
        """Lists naming the same metas in another order or spacing share one pool."""
        a = self.pools.get(MetaAddrs.parse("10.0.0.1:34601,10.0.0.2:34601"))
        b = self.pools.get(MetaAddrs.parse(" 10.0.0.2:34601 , 10.0.0.1:34601"))
        c = self.pools.get("10.0.0.2:34601,10.0.0.1:34601")
        self.assertIs(a, b)
        self.assertIs(a, c)
        self.assertIsNot(a, self.pools.get(MetaAddrs.parse("10.0.0.1:34601")))
        self.assertEqual(len(self.pools.pools()), 2)

    def test_sweep_closes_idle_unreferenced(self):
        """A pool no route references is closed once idle for C{idle_close}."""
        pool = self.pools.get(MetaAddrs.parse("10.0.0.1:34601"))
        self.reactor.advance(240)
        self.assertFalse(pool.closed)
        self.reactor.advance(60)
        self.assertTrue(pool.closed)
        self.assertEqual(self.pools.pools(), {})

    def test_referenced_pool_kept(self):
        """A pool a route references is never swept, however idle."""
        addrs = MetaAddrs.parse("10.0.0.1:34601")
        self.referenced = frozenset({addrs})
        pool = self.pools.get(addrs)
        self.reactor.advance(3600)
        self.assertFalse(pool.closed)

    def test_recently_used_pool_kept(self):
        """Use within C{idle_close} keeps an unreferenced pool open."""
        pool = self.pools.get(MetaAddrs.parse("10.0.0.1:34601"))
        self.reactor.advance(200)
        pool.last_used = self.reactor.seconds()
        self.reactor.advance(200)
        self.assertFalse(pool.closed)
        self.reactor.advance(120)
        self.assertTrue(pool.closed)

    def test_busy_pool_kept(self):
        """A pool with queries running is not swept."""
        pool = self.pools.get(MetaAddrs.parse("10.0.0.1:34601"))
        pool.running = 1
        self.reactor.advance(600)
        self.assertFalse(pool.closed)

    def test_swept_pool_recreated(self):
        """After a sweep, asking again for the meta set gives a fresh pool."""
        addrs = MetaAddrs.parse("10.0.0.1:34601")
        old = self.pools.get(addrs)
        self.reactor.advance(300)
        new = self.pools.get(addrs)
        self.assertIsNot(old, new)
        self.assertFalse(new.closed)

    def test_referenced_failure_sweeps_nothing(self):
        """If the route table cannot say what it references, nothing is closed."""

        def broken():
            raise RuntimeError("boom")

        self.pools.referenced = broken
        pool = self.pools.get(MetaAddrs.parse("10.0.0.1:34601"))
        self.reactor.pump([60.0] * 10)
        self.assertFalse(pool.closed)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 10)

    def test_close(self):
        """Closing closes every pool, stops the sweep and refuses new pools."""
        a = self.pools.get(MetaAddrs.parse("10.0.0.1:34601"))
        b = self.pools.get(MetaAddrs.parse("10.0.0.2:34601"))
        self.successResultOf(self.pools.close())
        self.assertTrue(a.closed and b.closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertRaises(RuntimeError, self.pools.get, MetaAddrs.parse("10.0.0.3:34601"))

    def test_default_cluster(self):
        """By default a pool is a L{MetaCluster} dialling every configured meta."""
        pools = ClusterPools(self.reactor, hedge_delay=0.5, connect_timeout=2.0)
        cluster = pools.get(MetaAddrs.parse("10.0.0.1:34601,10.0.0.2:34602"))
        self.assertIsInstance(cluster, MetaCluster)
        self.assertEqual(cluster.hedge_delay, 0.5)
        dialled = sorted((h, p, t) for h, p, _, t, _ in self.reactor.tcpClients)
        self.assertEqual(dialled, [("10.0.0.1", 34601, 2.0), ("10.0.0.2", 34602, 2.0)])
        [info] = pools.describe()
        self.assertEqual(info["meta_addrs"], "10.0.0.1:34601,10.0.0.2:34602")
        self.assertEqual({m["state"] for m in info["metas"]}, {"connecting"})
        self.successResultOf(pools.close())


class _RefusingEndpoint:
    """Every connection attempt to one address is refused; attempts are counted."""

    def __init__(self, attempts, address):
        self.attempts = attempts
        self.address = address

    def connect(self, factory):
        self.attempts[self.address] = self.attempts.get(self.address, 0) + 1
        return defer.fail(ConnectionRefusedError("Connection refused"))


class SwitchAwayTests(SynchronousTestCase):
    """
    After a switch away from a dead cluster its pool is closed within the
    grace period (and stops reconnecting); a meta shared by two pools is
    logged down once.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.attempts = {}
        self.reports = DownReports()
        self.referenced = frozenset()

        def connection(host, port):
            return MetaConnection(
                self.reactor, host, port, retry_policy=lambda n: 0.5, down_reports=self.reports,
                endpoint=_RefusingEndpoint(self.attempts, f"{host}:{port}"),
            )

        self.pools = ClusterPools(
            self.reactor,
            referenced=lambda: self.referenced,
            idle_close=10.0,
            cluster_factory=lambda addrs: MetaCluster(self.reactor, addrs, connection_factory=connection),
        )
        self.addCleanup(lambda: self.successResultOf(self.pools.close()))
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def test_pool_closed_after_switch(self):
        """The switched-away pool is gone within grace + one sweep; its connection attempts stop."""
        dead = MetaAddrs.parse("10.0.0.1:34601,10.0.0.9:34601")
        live = MetaAddrs.parse("10.0.0.2:34601,10.0.0.9:34601")
        self.referenced = frozenset({dead})
        self.pools.get(dead, "B")
        self.reactor.pump([0.5] * 20)
        self.assertGreater(self.attempts["10.0.0.1:34601"], 10)
        self.referenced = frozenset({live})  # the switch
        self.pools.get(live, "C")
        self.assertEqual(len(self.pools.pools()), 2)
        self.reactor.pump([0.5] * 25)  # grace (10 s) + one sweep (2.5 s)
        self.assertEqual(list(self.pools.pools()), [live])
        self.assertEqual(self.pools.closed_count, 1)
        before = dict(self.attempts)
        self.reactor.pump([0.5] * 20)
        self.assertEqual(self.attempts["10.0.0.1:34601"], before["10.0.0.1:34601"])
        self.assertGreater(self.attempts["10.0.0.2:34601"], before["10.0.0.2:34601"])

    def test_shared_dead_meta_logged_once(self):
        """10.0.0.9 is in both pools' lists: one "is down" line for it, however many links fail."""
        self.referenced = frozenset({MetaAddrs.parse("10.0.0.1:34601,10.0.0.9:34601"),
                                     MetaAddrs.parse("10.0.0.2:34601,10.0.0.9:34601")})
        for addrs in self.referenced:
            self.pools.get(addrs)
        self.reactor.pump([0.5] * 10)
        down = [e for e in self.logged if e.get("log_format", "").startswith("meta {meta} is down")]
        self.assertEqual(sorted(e["meta"] for e in down), ["10.0.0.1:34601", "10.0.0.2:34601", "10.0.0.9:34601"])
