# -*- test-case-name: metaproxy.test.test_backend_failover -*-
"""
Failover of L{metaproxy.backend.cluster.MetaCluster} on one clock: a dead
or silent leader, elections, every meta refusing, recovery, in both address
orders, against L{metaproxy.sim} metas over in-memory connections.
"""

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.backend.cluster import MetaCluster
from metaproxy.errors import BackendUnavailable
from metaproxy.routes.route import MetaAddrs
from metaproxy.sim.server import SimulatedCluster
from metaproxy.test.test_backend_cluster import FakeNetwork, close_all
from metaproxy.wire import codes, querycfg

METAS = ("127.0.0.1:34601", "127.0.0.1:34602", "127.0.0.1:34603")


class _Failover:
    """A simulated cluster, its network and a L{MetaCluster}; C{dead} is the leader that fails."""

    dead = 0
    elected = 1

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.sim = SimulatedCluster(self.clock, METAS, leader_index=self.dead)
        self.sim.create_table("temp", 8)
        self.sim.startService()
        self.net = FakeNetwork(self.clock)
        self.net.add(self.sim)
        self.cluster = MetaCluster(
            self.clock, MetaAddrs.parse(",".join(METAS)), hedge_delay=1.0,
            connection_factory=self.net.connection_factory,
        )
        self.net.run(0.1)
        self.ok(self.query(), at_most=0.1)  # the cluster now believes in the leader
        self.addCleanup(self._close)

    def _close(self):
        close_all(self, self.cluster, self.sim, self.net)

    def query(self, timeout=2.7):
        d = self.cluster.query_config("temp", (), timeout)
        d.addBoth(lambda r: (self.clock.seconds(), r))
        self.net.flush()
        return d

    def ok(self, d, at_most=None, started=None):
        """Run until C{d} fires; assert it is ERR_OK (and in time). @return: when it fired."""
        for _ in range(200):
            if d.called:
                break
            self.net.run(0.05)
        when, response = self.successResultOf(d)
        self.assertNotIsInstance(response, Exception)
        if hasattr(response, "value"):
            self.fail(f"failed: {response.getErrorMessage()}")
        self.assertEqual(querycfg.peek_result(response.body).err, codes.ERR_OK)
        return when

    def kill_leader(self):
        """SIGKILL-like: the leader stops listening and drops its connections; followers still name it."""
        self.successResultOf(self.sim.stop_meta(self.dead))
        self.net.flush()

    def elect(self, after):
        self.clock.callLater(after, self.sim.set_leader, self.elected)


class DeadLeaderLowAddressTests(_Failover, SynchronousTestCase):
    """The leader that dies has the lowest address (the case that used to fail)."""

    dead = 0
    elected = 1

    def test_election_after_1s(self):
        """A 3000 ms client still gets ERR_OK when the new leader is elected 1 s after the kill."""
        self.kill_leader()
        start = self.clock.seconds()
        d = self.query(timeout=2.7)
        self.elect(1.0)
        when = self.ok(d)
        self.assertLess(when - start, 1.3)

    def test_election_after_3s_with_5s_client(self):
        """A 5000 ms (v1) client gets ERR_OK across a 3 s election."""
        self.kill_leader()
        start = self.clock.seconds()
        d = self.query(timeout=4.5)
        self.elect(3.0)
        self.assertLess(self.ok(d) - start, 3.3)

    def test_queries_during_election_keep_asking(self):
        """Queries sent all through a 1 s election all succeed within their 2.7 s budget."""
        self.kill_leader()
        self.elect(1.0)
        pending = []
        for _ in range(10):
            pending.append(self.query(timeout=2.7))
            self.net.run(0.1)
        for d in pending:
            self.ok(d)
        self.assertEqual(self.cluster.leader, METAS[self.elected])

    def test_forward_to_dead_leader_answers_in_time(self):
        """Without an election the caller hears L{BackendUnavailable} at its deadline, not later."""
        self.kill_leader()
        d = self.cluster.query_config("temp", (), 0.9)
        self.net.run(0.85)
        self.assertNoResult(d)
        self.net.run(0.1)
        f = self.failureResultOf(d, BackendUnavailable)
        self.assertIn("answered in time", f.getErrorMessage())

    def test_all_refusing_then_back(self):
        """
        Every meta refusing: retryable at the deadline (before the breaker's
        window); once they are back and a link has reconnected (at most the
        reconnect delay, 0.5 s here), the next query succeeds at once.
        """
        for i in range(3):
            self.successResultOf(self.sim.stop_meta(i))
        self.net.flush()
        d = self.cluster.query_config("temp", (), 1.8)
        self.net.run(1.75)
        self.assertNoResult(d)
        self.net.run(0.1)
        self.failureResultOf(d, BackendUnavailable)
        self.net.run(10.0)
        for i in range(3):
            self.sim.start_meta(i)
        self.net.run(0.6)
        start = self.clock.seconds()
        self.assertLess(self.ok(self.query(timeout=1.5)) - start, 1.0)

    def test_describe_and_up(self):
        """The cluster reports that a meta answered, the last error, and whether it is up."""
        state = self.cluster.describe()
        self.assertTrue(state["answered"])
        self.assertTrue(state["up"])
        for i in range(3):
            self.successResultOf(self.sim.stop_meta(i))
        self.net.flush()
        self.net.run(11.0)
        state = self.cluster.describe()
        self.assertFalse(state["up"])
        self.assertTrue(state["answered"])
        self.assertGreater(state["last_answer_age"], 10.0)
        self.assertEqual({m["state"] for m in state["metas"]} - {"connecting"}, {"down"})


class DeadLeaderHighAddressTests(DeadLeaderLowAddressTests):
    """The same with the dying leader at the highest address."""

    dead = 2
    elected = 0


class SilentLeaderTests(_Failover, SynchronousTestCase):
    """The leader hangs (SIGSTOP-like); followers still name it."""

    def test_new_leader_found_by_asking_again(self):
        """After an election the followers are asked again and name the new leader before the deadline."""
        self.sim.set_silent(True, index=self.dead)
        start = self.clock.seconds()
        d = self.query(timeout=2.7)
        self.elect(1.2)
        self.assertLess(self.ok(d) - start, 2.7)

    def test_silent_without_election_answers_at_deadline(self):
        """No election: the caller hears L{BackendUnavailable} at its deadline (the budget), not later."""
        self.sim.set_silent(True, index=self.dead)
        d = self.cluster.query_config("temp", (), 1.35)
        self.net.run(1.3)
        self.assertNoResult(d)
        self.net.run(0.1)
        self.failureResultOf(d, BackendUnavailable)


class NeverAnsweredTests(SynchronousTestCase):
    """A cluster whose metas never answered is not reported as up."""

    def test_never_answered(self):
        """Silent metas: C{answered} and C{up} stay false, and no answer age is made up."""
        clock = MemoryReactorClock()
        sim = SimulatedCluster(clock, METAS, silent=True)
        sim.startService()
        net = FakeNetwork(clock)
        net.add(sim)
        cluster = MetaCluster(clock, MetaAddrs.parse(",".join(METAS)), connection_factory=net.connection_factory,
                              cluster_name="c1")
        net.run(0.1)
        d = cluster.query_config("temp", (), 1.0)
        net.run(1.1)
        self.failureResultOf(d, BackendUnavailable)
        state = cluster.describe()
        self.assertEqual((state["cluster_name"], state["answered"], state["up"]), ("c1", False, False))
        self.assertIsNone(state["last_answer_age"])
        d = cluster.close()
        net.flush()
        self.successResultOf(d)
        sim.stopService()
        net.flush()
