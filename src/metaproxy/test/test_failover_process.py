# -*- test-case-name: metaproxy.test.test_failover_process -*-
"""
Failover with real processes: simulated metas each in their own process
(SIGKILL really kills one), metaproxy's real parts in this reactor, Go-profile
clients (THFT v0, header 3000 ms, each waiting 3 s) querying steadily.

Bounded versions of the benchmark in C{bench/failover.py}: a leader SIGKILL
with an election 1 s later, in both address orders, and all metas down
3 s then back. Bounds are generous (fractions of queries answered ERR_OK
within the client's own timeout), so a slow, busy machine passes.
"""

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.routes.static import StaticRouteTable
from metaproxy.testing.harness import ProxyHarness
from metaproxy.testing.load import connect_clients, ok_fraction, steady_load
from metaproxy.testing.metaprocs import MetaProcesses

GO_TIMEOUT_MS = 3000
GO_WAITS = 3.0


def _sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class _ProcessFailover:
    timeout = 40
    dead_sorts_first = True

    @defer.inlineCallbacks
    def setUp(self):
        self.metas = MetaProcesses(leader=None)
        self.addCleanup(self.metas.stop_all)
        by_port = sorted(range(3), key=lambda i: self.metas.ports[i])
        self.leader = by_port[0] if self.dead_sorts_first else by_port[-1]
        self.elected = by_port[1]
        self.metas.set_leader(self.leader)
        self.metas.start_all()
        routes = StaticRouteTable({"temp": Route("sim", MetaAddrs.parse(self.metas.meta_addrs()))})
        self.proxy = ProxyHarness(reactor, routes, default_timeout=1.5, hedge_delay=1.0)
        yield self.proxy.start()
        self.addCleanup(self.proxy.stop)
        self.clients = yield connect_clients(reactor, self.proxy.port, 4, "go", GO_TIMEOUT_MS)
        for c in self.clients:
            self.addCleanup(lambda c=c: c.transport.loseConnection() or c.closed)
        warm = yield steady_load(reactor, self.clients[:1], reactor.seconds() + 0.2, GO_WAITS)
        self.assertEqual({s.err for s in warm}, {"ERR_OK"})


class _Election(_ProcessFailover):
    """The leader is SIGKILLed; another meta is elected later."""

    @defer.inlineCallbacks
    def test_leader_sigkill_election_after_1s(self):
        """>= 95 % of Go-profile queries get ERR_OK within 3 s across a leader SIGKILL and a 1 s election."""
        start = reactor.seconds()
        load = steady_load(reactor, self.clients, start + 4.0, GO_WAITS)
        yield _sleep(0.5)
        self.metas.kill(self.leader)
        yield _sleep(1.0)
        self.metas.set_leader(self.elected)
        samples = yield load
        ok, total = ok_fraction(samples, GO_WAITS)
        self.assertGreaterEqual(ok / total, 0.95, f"{ok}/{total} ERR_OK in time")

class DeadLeaderSortsFirstTests(_Election, TestCase):
    """The killed leader has the lowest address (first in the normalised list)."""

    dead_sorts_first = True


class DeadLeaderSortsLastTests(_Election, TestCase):
    """The killed leader has the highest address."""

    dead_sorts_first = False


class AllMetasDownTests(_ProcessFailover, TestCase):
    """Every meta is killed, then restarted on its port."""

    @defer.inlineCallbacks
    def test_all_metas_down_then_back(self):
        """
        All metas SIGKILLed for 3 s, then back: every query sent meanwhile is
        answered before the client gives up, and >= 99 % of those sent from
        1 s after their return get ERR_OK in time.
        """
        for i in range(3):
            self.metas.kill(i)
        end = [float("inf")]
        load = steady_load(reactor, self.clients, lambda: end[0], GO_WAITS)
        yield _sleep(3.0)
        self.metas.start_all(wait=False)  # blocking here would delay the clients' answers
        yield threads.deferToThread(self.metas.wait_listening)
        back = reactor.seconds()
        end[0] = back + 4.0
        samples = yield load
        ok, total = ok_fraction(samples, GO_WAITS, since=back + 1.0)
        bad = [(round(s.sent - back, 3), s.latency, s.err) for s in samples if s.sent >= back + 1.0 and s.err != "ERR_OK"]
        self.assertGreater(total, 10)
        self.assertGreaterEqual(ok / total, 0.99, f"{ok}/{total} ERR_OK in time; not: {bad}")
        # The budget ends at 0.9 x; on a loaded machine the reactor may lag,
        # so this bound is the client's own timeout (the 0.95 x bound is
        # checked on a Clock in test_budget and measured by the benchmark).
        late = [s for s in samples if s.sent < back and (s.latency is None or s.latency >= GO_WAITS)]
        self.assertEqual(late, [], "a client timed out while the metas were down")
