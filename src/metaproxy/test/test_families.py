# -*- test-case-name: metaproxy.test.test_families -*-
"""
Never worse than going direct, per client family: each family's real header
shape and retry behaviour, replayed against simulated metas on one clock
(L{QueryConfigResolver} over L{ClusterPools}, in-memory connections).

The header shapes are those of C{docs/clients.rst}: Go's wrapped timeout,
Java 1.x's gpid (-1, -1) and thread hash -7921 with a true timeout or 0,
the all-zero header of pypegasus3 and NodeJS, Java 2.x's v1 header.
"""

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.backend.lastgood import LastGoodAnswers
from metaproxy.frontend import families
from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.sim.server import SimulatedCluster
from metaproxy.test.test_backend_cluster import FakeNetwork, close_all
from metaproxy.test.test_budget import _Routes, resolver_over
from metaproxy.wire import codes, querycfg
from metaproxy.wire.frame import Request, RequestHeader
from metaproxy.wire.rdsn import RdsnHeader

METAS = ("127.0.0.1:34601", "127.0.0.1:34602", "127.0.0.1:34603")
OTHER_METAS = ("127.0.0.1:34701",)


def go_wrap(seconds):
    """@return: the header timeout Go's C{CallWithGpid} sends for a context of C{seconds}."""
    return (int(seconds * 1e9) & 0xFFFFFFFF) // 1000000


def go(seconds):
    return RequestHeader(0, 0, 0, go_wrap(seconds), 0, 0)


def java1(timeout_ms):
    return RequestHeader(0, -1, -1, timeout_ms, -7921, 0)


def java2(timeout_ms):
    return RequestHeader(1, -1, -1, timeout_ms, 0, 0)


ZERO = RequestHeader()  # pypegasus3, NodeJS


class _Connection:
    """Stands for one client connection (requests from it are retries of each other)."""


class ClassifyTests(SynchronousTestCase):
    """L{families.classify} tells the families apart by their header shape."""

    def test_go_wrap(self):
        """Go's wrapped values: 5 s -> ~705 ms, 10 s -> ~1410 ms, 4.3 s -> ~5 ms; all read as Go."""
        self.assertEqual((go_wrap(5), go_wrap(10), go_wrap(4.3)), (705, 1410, 5))
        for seconds in (0.5, 4.3, 5, 10, 20):
            self.assertEqual(families.classify(go(seconds)), (families.GO, None))

    def test_java1(self):
        """Java 1.x: a true timeout; 0 is its own family and suspicious."""
        self.assertEqual(families.classify(java1(5000)), (families.JAVA1, None))
        self.assertEqual(families.classify(RequestHeader(0, -1, -1, 1000, -7920)), (families.JAVA1, None))
        self.assertEqual(families.classify(java1(0)), (families.JAVA1_ZERO, families.JAVA1_NO_TIMEOUT))

    def test_others(self):
        """v1 is Java 2.x; all zero is pypegasus3/NodeJS; RDSN by framing; odd shapes are suspicious."""
        self.assertEqual(families.classify(java2(5000)), (families.JAVA2, None))
        self.assertEqual(families.classify(java2(0)), (families.JAVA2, families.V1_NO_TIMEOUT))
        self.assertEqual(families.classify(ZERO), (families.ZERO, None))
        self.assertEqual(families.classify(RdsnHeader(1, client_timeout=5000)), (families.RDSN, None))
        self.assertEqual(families.classify(RequestHeader(0, 0, 0, 9000)), (families.OTHER, families.UNKNOWN_SHAPE))
        self.assertEqual(families.classify(RequestHeader(0, 3, 1, -5)), (families.OTHER, families.NEGATIVE_TIMEOUT))
        self.assertEqual(families.classify(java2(2**31 - 1)), (families.JAVA2, families.HUGE_TIMEOUT))

    def test_budgets(self):
        """Untrusted timeouts get C{untrusted}; a first request keeps the connect margin."""
        b = families.FamilyBudgets(default=1.8, maximum=30.0, untrusted=30.0)
        self.assertEqual(b.budget(families.GO, 5), 30.0)
        self.assertEqual(b.budget(families.JAVA1_ZERO, 0), 30.0)
        self.assertEqual(b.budget(families.ZERO, 0), 1.8)
        self.assertAlmostEqual(b.budget(families.JAVA2, 1000), 0.9)
        self.assertAlmostEqual(b.budget(families.JAVA2, 1000, new_connection=True), 0.7)
        self.assertAlmostEqual(b.budget(families.JAVA1, 5000, new_connection=True), 4.3)


class FamilyReplayTests(SynchronousTestCase):
    """Each family's header and retries against a slow, silent or refusing cluster."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.sim = SimulatedCluster(self.clock, METAS)
        self.sim.create_table("temp", 8)
        self.other = SimulatedCluster(self.clock, OTHER_METAS)
        self.other.create_table("temp", 4)
        for sim in (self.sim, self.other):
            sim.startService()
        self.net = FakeNetwork(self.clock)
        self.net.add(self.sim)
        self.net.add(self.other)
        self.addrs = MetaAddrs.parse(",".join(METAS))
        self.routes = _Routes({"temp": Route("c1", self.addrs)})
        self.pools, self.resolver = resolver_over(self.clock, self.net, self.routes)
        self.addCleanup(self._close)
        self.net.run(0.1)

    def _close(self):
        close_all(self, self.pools, self.other, self.net)
        self.sim.stopService()
        self.net.flush()

    def send(self, header, connection=None, table="temp"):
        d = self.resolver.handle(Request(header, querycfg.QUERY_CFG, 1, querycfg.encode_args(table, ())), connection)
        sent = self.clock.seconds()
        d.addCallback(lambda reply: (self.clock.seconds() - sent, reply))
        return d

    def wait(self, d, most):
        """Run the network until C{d} fires (at most C{most} seconds); @return: (seconds, app error)."""
        took, reply = self.wait_reply(d, most)
        return took, reply.app_error

    def wait_reply(self, d, most):
        """Run the network until C{d} fires (at most C{most} seconds); @return: (seconds, reply)."""
        for _ in range(int(most / 0.01) + 2):
            if d.called:
                break
            self.net.run(0.01, step=0.01)
        return self.successResultOf(d)

    def retrying(self, header, pause, attempts, most=20.0):
        """
        A client that retries C{ERR_SERVICE_NOT_ACTIVE} on the same
        connection after C{pause} seconds (NodeJS: 1 s, up to 5 times).

        @return: (seconds from the first attempt, final app error).
        """
        conn = _Connection()
        start = self.clock.seconds()
        err = None
        for _ in range(attempts):
            _, err = self.wait(self.send(header, conn), most)
            if err != codes.ERR_SERVICE_NOT_ACTIVE:
                break
            self.net.run(pause, step=0.01)
        return self.clock.seconds() - start, err

    def test_go_wrapped_5s_10s_slow_meta(self):
        """Go frames with the 5 s and 10 s wrap get ERR_OK from a 1.7 s meta, after about 1.7 s."""
        self.sim.set_delay(1.7)
        for seconds in (5, 10):
            took, err = self.wait(self.send(go(seconds), _Connection()), 5.0)
            self.assertEqual(err, codes.ERR_OK)
            self.assertLess(took, 2.0)

    def test_go_storm_43(self):
        """1000 Go frames with the 4.3 s wrap (5 ms), each its own connection, meta within 1 s: 0 failures."""
        self.sim.set_delay(0.9)
        ds = [self.send(go(4.3), _Connection()) for _ in range(1000)]
        self.net.run(2.5, step=0.01)
        errs = [self.successResultOf(d)[1].app_error for d in ds]
        self.assertEqual(errs.count(codes.ERR_OK), 1000)
        self.assertEqual(self.resolver.family_counts, {families.GO: 1000})

    def test_nodejs_retries_slow_meta(self):
        """NodeJS (all-zero header, retries on its connection after 1 s): ERR_OK from 1.7 s and 3.0 s metas."""
        self.sim.set_delay(1.7)
        took, err = self.retrying(ZERO, 1.0, 5)
        self.assertEqual(err, codes.ERR_OK)
        self.assertLess(took, 2.0)
        self.sim.set_delay(3.0)
        took, err = self.retrying(ZERO, 1.0, 5)
        self.assertEqual(err, codes.ERR_OK)
        self.assertLess(took, 6.0)  # direct: OK after 6.0 s
        self.assertGreaterEqual(self.resolver.late_answers, 1)

    def test_java1_zero_not_cut(self):
        """A Java-1.x-shaped frame with timeout 0 is not cut at 1.5 s when the meta answers in 1.7 s."""
        self.sim.set_delay(1.7)
        took, err = self.wait(self.send(java1(0), _Connection()), 5.0)
        self.assertEqual(err, codes.ERR_OK)
        self.assertGreater(took, 1.5)
        self.assertEqual(self.resolver.suspicious_counts, {families.JAVA1_NO_TIMEOUT: 1})

    def test_silent_meta_truthful_timeouts(self):
        """
        A silent meta: the retryable error before 0.95 x a truthful v1
        timeout of 1000 or 5000 ms, on an established connection and on a
        new one whose request arrived 128 ms after the client's timer
        started.
        """
        self.sim.set_silent(True)
        for timeout_ms in (1000, 5000):
            for header in (java2(timeout_ms), java1(timeout_ms)):
                conn = _Connection()
                took, err = self.wait(self.send(header, conn), 6.0)  # a new connection
                self.assertEqual(err, codes.ERR_SERVICE_NOT_ACTIVE)
                self.assertLess(took + 0.128, 0.95 * timeout_ms / 1000.0)
                took, err = self.wait(self.send(header, conn), 6.0)  # established
                self.assertEqual(err, codes.ERR_SERVICE_NOT_ACTIVE)
                self.assertLess(took, 0.95 * timeout_ms / 1000.0)

    def test_late_answer_only_for_same_connection(self):
        """
        An answer that came after its only waiter left is kept for that
        connection's retry; another connection's request asks again.
        """
        self.sim.set_delay(1.9)
        first = _Connection()
        took, err = self.wait(self.send(ZERO, first), 3.0)
        self.assertEqual((round(took, 2), err), (1.8, codes.ERR_SERVICE_NOT_ACTIVE))
        self.net.run(1.0, step=0.01)  # the query answers at 1.9 s, nobody waits
        answered = sum(self.sim.answered())
        took, err = self.wait(self.send(ZERO, first), 3.0)
        self.assertEqual((took, err), (0.0, codes.ERR_OK))
        self.assertEqual(sum(self.sim.answered()), answered)
        d = self.send(ZERO, _Connection())
        self.net.run(0.5)
        self.assertNoResult(d)  # a fresh query for a new connection

    def test_late_answer_never_across_route_change(self):
        """After the table moves, a retry from the same connection is answered by the new cluster."""
        self.sim.set_delay(1.9)
        conn = _Connection()
        self.wait(self.send(ZERO, conn), 3.0)
        self.net.run(1.0, step=0.01)
        self.routes.routes["temp"] = Route("c2", MetaAddrs.parse(",".join(OTHER_METAS)))
        took, err = self.wait(self.send(ZERO, conn), 3.0)
        self.assertEqual(err, codes.ERR_OK)
        self.assertEqual(self.other.answered(), [1])

    def test_refusing_cluster_fails_fast(self):
        """Every meta refusing longer than the breaker's window: the retryable error within 0.2 s."""
        self.assertEqual(self.wait(self.send(ZERO, _Connection()), 1.0)[1], codes.ERR_OK)
        for i in range(3):
            self.successResultOf(self.sim.stop_meta(i))
        self.net.run(2.5)
        for header in (go(5), java1(0), java2(5000), ZERO):
            took, err = self.wait(self.send(header, _Connection()), 1.0)
            self.assertEqual(err, codes.ERR_SERVICE_NOT_ACTIVE)
            self.assertLess(took, 0.2)
        self.assertEqual(self.resolver.unavailable_answers, 4)

    def test_open_breaker_serves_last_good_at_once(self):
        """
        The breaker's fast answer goes through stale-if-error: once every
        meta refused longer than the breaker's window, a table served before
        gets its last good answer within 0.2 s, and a never-served table the
        retryable error within 0.2 s.
        """
        self.resolver.last_good = LastGoodAnswers(self.clock)
        self.routes.is_cached = lambda table: table in self.routes.routes  # routes known at once
        self.routes.routes["never-served"] = Route("c1", self.addrs)
        self.sim.create_table("never-served", 4)
        took, live = self.wait_reply(self.send(ZERO, _Connection()), 1.0)
        self.assertEqual(live.app_error, codes.ERR_OK)
        for i in range(3):
            self.successResultOf(self.sim.stop_meta(i))
        self.net.run(2.5)
        took, stale = self.wait_reply(self.send(ZERO, _Connection()), 1.0)
        self.assertEqual((stale.app_error, stale.body), (codes.ERR_OK, live.body))
        self.assertLess(took, 0.2)
        took, never = self.wait_reply(self.send(ZERO, _Connection(), "never-served"), 1.0)
        self.assertEqual(never.app_error, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertLess(took, 0.2)
        self.assertEqual(self.resolver.unavailable_answers, 2)
        self.assertEqual(self.resolver.last_good.served_by_cluster(), {"c1": 1})
