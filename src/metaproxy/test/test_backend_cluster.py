# -*- test-case-name: metaproxy.test.test_backend_cluster -*-
"""
Tests for L{metaproxy.backend.cluster.MetaCluster}: leader following,
hedging and deadlines, against scripted in-memory connections.
"""

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from metaproxy.backend.client import CallTimedOut, NotConnected
from metaproxy.backend.cluster import MetaCluster
from metaproxy.backend.connection import MetaConnection
from metaproxy.errors import BackendUnavailable, ClusterDown, RouteLoop
from metaproxy.interfaces import IMetaCluster
from metaproxy.routes.route import MetaAddrs
from metaproxy.sim.server import SimulatedCluster
from metaproxy.wire import codes, querycfg
from metaproxy.wire.frame import Response
from metaproxy.wire.querycfg import QueryCfgResponse

OK = querycfg.encode_result(QueryCfgResponse(codes.ERR_OK, app_id=7, partition_count=4, is_stateful=True))
NOT_ACTIVE = querycfg.error_result(codes.ERR_SERVICE_NOT_ACTIVE)
NOT_FOUND = querycfg.error_result(codes.ERR_OBJECT_NOT_FOUND)


def forward(ip=None, port=None):
    """@return: a follower's answer naming C{ip:port} as leader (or none)."""
    return querycfg.forward_result(None if ip is None else querycfg.rpc_address(ip, port))


class FakeConnection:
    """A scripted connection: records calls and lets the test answer them."""

    def __init__(self, host, port, peer=None):
        self.host, self.port, self.peer_addr = host, port, peer
        self.pending = []
        self.sent = 0
        self.down = False
        self.started = self.stopped = False

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True
        pending, self.pending = self.pending, []
        for d in pending:
            d.errback(NotConnected("stopped"))
        return defer.succeed(None)

    def matches(self, ip, port):
        return port == self.port and (ip == self.host or self.peer_addr == (ip, port))

    def call(self, name, args, timeout=None, client_timeout_ms=0):
        self.last_args = args
        if self.down or self.stopped:
            return defer.fail(NotConnected("down"))
        self.sent += 1
        d = defer.Deferred(lambda d: self.pending.remove(d))
        self.pending.append(d)
        return d

    def answer(self, body, rpc_error="ERR_OK"):
        self.pending.pop(0).callback(Response(rpc_error, querycfg.QUERY_CFG_ACK, 1, body))

    def fail(self, exc):
        self.pending.pop(0).errback(exc)


class FakeCallbackConnection(FakeConnection):
    """A L{FakeConnection} that also has C{call_then}, as L{MetaConnection} does (the path queries take)."""

    def call_then(self, name, args, client_timeout_ms, done, arg):
        def failed(f):
            if not f.check(defer.CancelledError):
                done(arg, None, f.value)

        d = self.call(name, args, None, client_timeout_ms)
        d.addCallbacks(lambda response: done(arg, response, None), failed)
        return d


class ClusterFixture:
    """Builds a L{MetaCluster} over L{FakeConnection}s with a L{Clock}."""

    addrs = "10.0.0.1:34601,10.0.0.2:34601,10.0.0.3:34601"
    peers = {}
    connection_class = FakeConnection

    def setUp(self):
        self.clock = Clock()
        self.conns = {}

        def factory(host, port):
            conn = self.connection_class(host, port, self.peers.get(f"{host}:{port}"))
            self.conns[f"{host}:{port}"] = conn
            return conn

        self.cluster = MetaCluster(
            self.clock, MetaAddrs.parse(self.addrs), hedge_delay=1.0, connection_factory=factory
        )

    def query(self, timeout=5.0, indices=()):
        return self.cluster.query_config("temp", indices, timeout)

    def sent(self):
        return {a: c.sent for a, c in self.conns.items()}


class MetaClusterTests(ClusterFixture, SynchronousTestCase):
    """L{MetaCluster} asks the leader, follows forwards and hedges."""

    def test_interface(self):
        """L{MetaCluster} provides L{IMetaCluster}."""
        self.assertTrue(verifyObject(IMetaCluster, self.cluster))
        self.assertEqual(self.cluster.meta_addrs, MetaAddrs.parse(self.addrs))

    def test_connections_started(self):
        """Every configured meta gets a started connection."""
        self.assertEqual(sorted(self.conns), self.addrs.split(","))
        self.assertTrue(all(c.started for c in self.conns.values()))

    def test_leader_answer_wins(self):
        """The believed leader's answer is the result; nobody else is asked."""
        d = self.query()
        self.assertEqual(self.sent(), {"10.0.0.1:34601": 1, "10.0.0.2:34601": 0, "10.0.0.3:34601": 0})
        self.conns["10.0.0.1:34601"].answer(OK)
        self.assertEqual(self.successResultOf(d).body, OK)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_request_args(self):
        """The backend request carries the table and the partition indices."""
        self.query(indices=(2, 3))
        args = self.conns["10.0.0.1:34601"].last_args
        self.assertEqual(querycfg.decode_args(args), querycfg.QueryCfgRequest("temp", (2, 3)))

    def test_forward_is_followed(self):
        """A forward to another configured meta is followed at once and that meta becomes the leader."""
        d = self.query()
        self.conns["10.0.0.1:34601"].answer(forward("10.0.0.3", 34601))
        self.assertEqual(self.conns["10.0.0.3:34601"].sent, 1)
        self.assertEqual(self.conns["10.0.0.2:34601"].sent, 0)
        self.conns["10.0.0.3:34601"].answer(OK)
        self.assertEqual(self.successResultOf(d).body, OK)
        self.assertEqual(self.cluster.leader, "10.0.0.3:34601")
        self.query()
        self.assertEqual(self.conns["10.0.0.3:34601"].sent, 2)
        self.assertEqual(self.conns["10.0.0.1:34601"].sent, 1)

    def test_forward_never_returned(self):
        """Forwards from every meta never reach the caller; the deadline gives L{BackendUnavailable}."""
        d = self.query(timeout=2.0)
        self.conns["10.0.0.1:34601"].answer(forward())
        self.conns["10.0.0.2:34601"].answer(forward())
        self.conns["10.0.0.3:34601"].answer(forward())
        self.assertNoResult(d)
        self.clock.pump([0.25] * 8)
        self.failureResultOf(d, BackendUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_round_finds_new_leader(self):
        """While a leader is elected the metas are asked again until one answers."""
        d = self.query(timeout=5.0)
        for c in self.conns.values():
            c.answer(forward())
        self.clock.advance(0.25)
        self.assertEqual(set(self.sent().values()), {2})
        self.conns["10.0.0.2:34601"].answer(OK)
        self.assertEqual(self.successResultOf(d).body, OK)
        self.assertEqual(self.cluster.leader, "10.0.0.2:34601")

    def test_forward_to_unlisted_leader(self):
        """A forward to a meta outside the list opens a connection to it; it becomes the leader."""
        d = self.query()
        self.conns["10.0.0.1:34601"].answer(forward("10.0.0.9", 34601))
        extra = self.conns["10.0.0.9:34601"]
        self.assertTrue(extra.started)
        extra.answer(OK)
        self.assertEqual(self.successResultOf(d).body, OK)
        self.assertEqual(self.cluster.leader, "10.0.0.9:34601")
        self.query()
        self.assertEqual(extra.sent, 2)

    def test_describe(self):
        """C{describe} names the leader and every meta, extra ones marked as not configured."""
        d = self.query()
        self.conns["10.0.0.1:34601"].answer(forward("10.0.0.9", 34601))
        self.conns["10.0.0.9:34601"].answer(OK)
        self.successResultOf(d)
        info = self.cluster.describe()
        self.assertEqual(info["leader"], "10.0.0.9:34601")
        self.assertEqual(info["in_flight"], 0)
        self.assertEqual(
            [(m["address"], m["configured"]) for m in info["metas"]],
            [("10.0.0.1:34601", True), ("10.0.0.2:34601", True), ("10.0.0.3:34601", True),
             ("10.0.0.9:34601", False)],
        )

    def test_unlisted_leader_down_hedges_to_configured(self):
        """When an unlisted leader fails, the configured metas are asked."""
        d = self.query()
        self.conns["10.0.0.1:34601"].answer(forward("10.0.0.9", 34601))
        self.conns["10.0.0.9:34601"].answer(OK)
        self.successResultOf(d)
        d = self.query()
        self.conns["10.0.0.9:34601"].fail(CallTimedOut("x"))
        self.assertEqual(self.sent(), {
            "10.0.0.1:34601": 2, "10.0.0.2:34601": 1, "10.0.0.3:34601": 1, "10.0.0.9:34601": 2,
        })
        self.conns["10.0.0.2:34601"].answer(OK)
        self.successResultOf(d)
        self.assertEqual(self.cluster.leader, "10.0.0.2:34601")

    def test_extra_connections_bounded(self):
        """At most C{max_extra} connections to unlisted metas are kept; evicted ones are stopped."""
        self.cluster.max_extra = 2
        for i in range(4):
            d = self.query()
            self.conns[self.cluster.leader].answer(forward("10.0.1.%d" % i, 34601))
            self.conns["10.0.1.%d:34601" % i].answer(OK)
            self.successResultOf(d)
        self.assertEqual(len(self.cluster.connections()), 3 + 2)
        self.assertTrue(self.conns["10.0.1.0:34601"].stopped)
        self.assertTrue(self.conns["10.0.1.1:34601"].stopped)
        self.assertFalse(self.conns["10.0.1.3:34601"].stopped)

    def test_forwards_outside_the_route_bounded(self):
        """
        Metas that keep forwarding one query to addresses outside the route
        (each time another one, which never answers) get at most 3 copies
        of it sent outside and 3 connections opened there, over the whole
        budget; the forwards not followed are counted.
        """
        d = self.query(timeout=20.0)
        configured = set(self.addrs.split(","))
        outside = iter(range(60000))
        for _ in range(2000):
            if d.called:
                break
            for label, conn in list(self.conns.items()):
                while conn.pending:
                    if label in configured:
                        conn.answer(forward("10.%d.%d.9" % divmod(next(outside), 250), 34601))
                    else:
                        conn.fail(CallTimedOut("x"))
            self.clock.advance(0.1)
        self.failureResultOf(d, BackendUnavailable)
        extra = {a: c for a, c in self.conns.items() if a not in configured}
        self.assertLessEqual(len(extra), 3)
        self.assertLessEqual(sum(c.sent for c in extra.values()), 3)
        self.assertEqual(self.cluster.forwards_outside["followed"], 3)
        self.assertGreater(self.cluster.forwards_outside["refused"], 10)

    def test_forward_without_leader_hedges(self):
        """A forward naming no leader makes every other meta be asked at once."""
        self.query()
        self.conns["10.0.0.1:34601"].answer(forward())
        self.assertEqual(self.sent(), {"10.0.0.1:34601": 1, "10.0.0.2:34601": 1, "10.0.0.3:34601": 1})

    def test_forward_loop_hedges(self):
        """Two metas forwarding to each other do not loop: the others are asked."""
        d = self.query()
        self.conns["10.0.0.1:34601"].answer(forward("10.0.0.2", 34601))
        self.conns["10.0.0.2:34601"].answer(forward("10.0.0.1", 34601))
        self.assertEqual(self.conns["10.0.0.1:34601"].sent, 1)
        self.assertEqual(self.conns["10.0.0.3:34601"].sent, 1)
        self.conns["10.0.0.3:34601"].answer(OK)
        self.successResultOf(d)

    def test_hedge_after_delay(self):
        """A silent leader makes every other meta be asked after C{hedge_delay}; the first answer wins."""
        d = self.query()
        self.clock.advance(0.99)
        self.assertEqual(self.conns["10.0.0.2:34601"].sent, 0)
        self.clock.advance(0.01)
        self.assertEqual(self.sent(), {"10.0.0.1:34601": 1, "10.0.0.2:34601": 1, "10.0.0.3:34601": 1})
        self.conns["10.0.0.2:34601"].answer(forward("10.0.0.3", 34601))
        self.conns["10.0.0.3:34601"].answer(OK)
        self.assertEqual(self.successResultOf(d).body, OK)
        self.assertEqual(self.conns["10.0.0.1:34601"].pending, [])  # the slow attempt is cancelled
        self.assertEqual(self.cluster.leader, "10.0.0.3:34601")

    def test_short_deadline_hedges_at_half(self):
        """With a deadline shorter than twice C{hedge_delay}, the others are asked at half the deadline."""
        d = self.query(timeout=1.0)
        self.clock.advance(0.49)
        self.assertEqual(self.conns["10.0.0.2:34601"].sent, 0)
        self.clock.advance(0.01)
        self.assertEqual(self.conns["10.0.0.2:34601"].sent, 1)
        self.conns["10.0.0.2:34601"].answer(OK)
        self.successResultOf(d)

    def test_leader_failure_hedges_at_once(self):
        """A leader whose link is down is skipped without waiting for C{hedge_delay}."""
        self.conns["10.0.0.1:34601"].down = True
        d = self.query()
        self.assertEqual(self.sent(), {"10.0.0.1:34601": 0, "10.0.0.2:34601": 1, "10.0.0.3:34601": 1})
        self.conns["10.0.0.3:34601"].answer(OK)
        self.successResultOf(d)
        self.assertEqual(self.cluster.leader, "10.0.0.3:34601")

    def test_rpc_error_counts_as_failure(self):
        """An rpc-level error from a meta is not an answer: the others are asked."""
        d = self.query()
        self.conns["10.0.0.1:34601"].answer(None, "ERR_BUSY")
        self.assertNoResult(d)
        self.assertEqual(self.conns["10.0.0.2:34601"].sent, 1)

    def test_metaproxy_in_route_is_a_loop(self):
        """
        ERR_HANDLER_NOT_FOUND for query_cfg (what a metaproxy answers a
        marked query) fails the query at once with L{RouteLoop}.
        """
        d = self.query()
        self.conns["10.0.0.1:34601"].answer(None, "ERR_HANDLER_NOT_FOUND")
        self.assertIn("10.0.0.1:34601 is a metaproxy", str(self.failureResultOf(d, RouteLoop).value))

    def test_malformed_answer_counts_as_failure(self):
        """A body that cannot be decoded is not an answer: the others are asked."""
        d = self.query()
        self.conns["10.0.0.1:34601"].answer(b"\x01\x02")
        self.assertNoResult(d)
        self.assertEqual(self.conns["10.0.0.3:34601"].sent, 1)

    def test_app_level_errors_win(self):
        """C{ERR_SERVICE_NOT_ACTIVE} and C{ERR_OBJECT_NOT_FOUND} are answers, returned as they came."""
        for body in (NOT_ACTIVE, NOT_FOUND):
            d = self.query()
            self.conns[self.cluster.leader].answer(body)
            self.assertEqual(self.successResultOf(d).body, body)

    def test_all_down_retried_until_deadline(self):
        """
        With every link down each meta is asked again every retry round
        (a link may come back, an election may end) and the caller is told
        at the deadline, with the reason.
        """
        for c in self.conns.values():
            c.down = True
        d = self.query(timeout=1.0)
        self.clock.advance(0.95)
        self.assertNoResult(d)
        self.clock.advance(0.05)
        f = self.failureResultOf(d, BackendUnavailable)
        self.assertIn("down", f.getErrorMessage())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_link_back_within_deadline(self):
        """A link that comes back before the deadline is used by the next round."""
        for c in self.conns.values():
            c.down = True
        d = self.query(timeout=2.0)
        self.clock.advance(0.5)
        self.conns["10.0.0.2:34601"].down = False
        self.clock.advance(0.1)
        self.conns["10.0.0.2:34601"].answer(OK)
        self.assertEqual(self.successResultOf(d).body, OK)
        self.assertEqual(self.cluster.leader, "10.0.0.2:34601")

    def test_synchronous_failures_do_not_end_the_round(self):
        """
        Metas whose links are down fail synchronously inside the sending
        loop; the last meta is still asked and its answer wins.
        """
        self.conns["10.0.0.1:34601"].down = True
        self.conns["10.0.0.2:34601"].down = True
        d = self.query(timeout=1.0)
        self.assertEqual(self.conns["10.0.0.3:34601"].sent, 1)
        self.conns["10.0.0.3:34601"].answer(OK)
        self.assertEqual(self.successResultOf(d).body, OK)

    def test_cluster_name_labels_metrics(self):
        """Backend calls are reported under the route's cluster name, not the address list."""
        calls = []

        class Metrics:
            def backend_call(self, cluster, meta, outcome, seconds):
                calls.append((cluster, meta, outcome))

        self.cluster.metrics = Metrics()
        self.cluster.cluster_name = "onebox"
        d = self.query()
        self.conns["10.0.0.1:34601"].answer(OK)
        self.successResultOf(d)
        self.assertEqual(calls, [("onebox", "10.0.0.1:34601", "ERR_OK")])

    def test_deadline(self):
        """When no meta answers, the caller gets L{BackendUnavailable} at the deadline and every attempt is cancelled."""
        d = self.query(timeout=3.0)
        self.clock.advance(2.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.failureResultOf(d, BackendUnavailable)
        self.assertEqual([c.pending for c in self.conns.values()], [[], [], []])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.cluster.in_flight(), 0)

    def test_deadline_shorter_than_hedge(self):
        """A deadline shorter than C{hedge_delay} still fires on time."""
        d = self.query(timeout=0.5)
        self.clock.advance(0.5)
        self.failureResultOf(d, BackendUnavailable)

    def test_cancel(self):
        """Cancelling a query cancels its attempts and timers."""
        d = self.query()
        self.clock.advance(1.0)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual([c.pending for c in self.conns.values()], [[], [], []])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close(self):
        """Closing fails running queries, stops every connection and refuses new queries."""
        d = self.query()
        closed = self.cluster.close()
        self.failureResultOf(d, BackendUnavailable)
        self.successResultOf(closed)
        self.assertTrue(all(c.stopped for c in self.conns.values()))
        self.failureResultOf(self.query(), BackendUnavailable)

    def test_in_flight_and_last_used(self):
        """Running queries are counted and the time of the last one is kept."""
        self.clock.advance(10)
        d = self.query()
        self.assertEqual(self.cluster.in_flight(), 1)
        self.assertEqual(self.cluster.last_used, 10)
        self.conns["10.0.0.1:34601"].answer(OK)
        self.successResultOf(d)
        self.assertEqual(self.cluster.in_flight(), 0)


class HostNameClusterTests(ClusterFixture, SynchronousTestCase):
    """Metas configured by host name are recognised in forwards by their peer IP."""

    addrs = "meta-a.example:34601,meta-b.example:34601"
    peers = {"meta-b.example:34601": ("10.0.0.2", 34601)}

    def test_forward_to_peer_ip(self):
        """A forward to the IP of a named meta uses that meta's connection; no extra one is made."""
        d = self.query()
        self.conns["meta-a.example:34601"].answer(forward("10.0.0.2", 34601))
        self.assertEqual(self.conns["meta-b.example:34601"].sent, 1)
        self.assertNotIn("10.0.0.2:34601", self.conns)
        self.conns["meta-b.example:34601"].answer(OK)
        self.successResultOf(d)
        self.assertEqual(self.cluster.leader, "meta-b.example:34601")


class SingleMetaTests(ClusterFixture, SynchronousTestCase):
    """A cluster with a single meta works, with no hedging."""

    addrs = "127.0.0.1:34601"

    def test_single_meta(self):
        """The only meta is asked; its answer wins; no hedge timer is left."""
        d = self.query()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the deadline
        self.conns["127.0.0.1:34601"].answer(OK)
        self.successResultOf(d)

    def test_single_meta_silent(self):
        """A silent single meta gives L{BackendUnavailable} at the deadline."""
        d = self.query(timeout=1.5)
        self.clock.advance(1.5)
        self.failureResultOf(d, BackendUnavailable)

    def test_single_meta_failure_retries(self):
        """A failed call to the only meta is retried within the deadline."""
        d = self.query(timeout=2.0)
        self.conns["127.0.0.1:34601"].fail(CallTimedOut("x"))
        self.clock.advance(0.25)
        self.assertEqual(self.conns["127.0.0.1:34601"].sent, 2)
        self.conns["127.0.0.1:34601"].answer(OK)
        self.successResultOf(d)


# ---------------------------------------------------------------- full stack


class _PumpEndpoint:
    """
    A client endpoint that connects, through L{iosim}, to the simulated meta
    listening at C{host:port} on a L{FakeNetwork}, or is refused.
    """

    def __init__(self, network, host, port):
        self.network, self.host, self.port = network, host, port

    def connect(self, factory):
        meta = self.network.metas.get((self.host, self.port))
        if meta is None or not meta.running:
            return defer.fail(ConnectionRefusedError())
        peer = IPv4Address("TCP", meta.host, meta.port)
        local = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.network.pumps))
        server = meta.factory.buildProtocol(local)
        client = factory.buildProtocol(peer)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, True, hostAddress=peer, peerAddress=local),
            client,
            iosim.FakeTransport(client, False, hostAddress=local, peerAddress=peer),
            greet=False,
            clock=self.network.clock,
        )
        self.network.pumps.append(pump)
        return defer.succeed(client)


class FakeNetwork:
    """Simulated metas reachable through in-memory connections, on one clock."""

    def __init__(self, clock):
        self.clock = clock
        self.metas = {}
        self.pumps = []

    def add(self, sim):
        for meta in sim.servers:
            self.metas[(meta.host, meta.port)] = meta

    def connection_factory(self, host, port):
        return MetaConnection(
            self.clock, host, port, retry_policy=lambda attempt: 0.5,
            endpoint=_PumpEndpoint(self, host, port),
        )

    def flush(self):
        """Move bytes and disconnects until nothing moves."""
        for _ in range(100):
            moved = False
            for pump in list(self.pumps):
                if pump.flush():
                    moved = True
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
            self.clock.advance(0)
            if not moved:
                return
        raise AssertionError("the network never settled")

    def run(self, seconds, step=0.05):
        """Let C{seconds} pass in steps, flushing the network at each."""
        self.flush()
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)
            self.flush()


def close_all(test, closable, sim, net):
    """Close C{closable} (a cluster or the pools) and stop C{sim}, moving the bytes of C{net}."""
    d = closable.close()
    net.flush()
    test.successResultOf(d)
    sim.stopService()
    net.flush()


class SimulatedClusterTests(SynchronousTestCase):
    """
    L{MetaCluster} against a L{SimulatedCluster}, both on one clock, over
    in-memory connections (L{iosim}).
    """

    metas = ("127.0.0.1:34601", "127.0.0.1:34602", "127.0.0.1:34603")
    configured = metas

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.sim = SimulatedCluster(self.clock, self.metas)
        self.sim.create_table("temp", 8)
        self.sim.startService()
        self.net = FakeNetwork(self.clock)
        self.net.add(self.sim)
        self.cluster = MetaCluster(
            self.clock,
            MetaAddrs.parse(",".join(self.configured)),
            hedge_delay=1.0,
            connection_factory=self.net.connection_factory,
        )
        self.net.flush()
        self.addCleanup(self._close)

    def _close(self):
        close_all(self, self.cluster, self.sim, self.net)

    def query(self, table="temp", timeout=5.0, indices=()):
        d = self.cluster.query_config(table, indices, timeout)
        self.net.flush()
        return d

    def decoded(self, d):
        response = self.successResultOf(d)
        self.assertEqual(response.rpc_error, codes.ERR_OK)
        return querycfg.decode_result(response.body)

    def test_leader_answers(self):
        """The table's configuration comes back from the leader."""
        resp = self.decoded(self.query(indices=(1,)))
        self.assertEqual((resp.err, resp.partition_count), (codes.ERR_OK, 8))
        self.assertEqual([p.partition_index for p in resp.partitions], [1])
        self.assertEqual(self.sim.answered(), [1, 0, 0])

    def test_unknown_table(self):
        """An unknown table gives the leader's C{ERR_OBJECT_NOT_FOUND}."""
        self.assertEqual(self.decoded(self.query("nope")).err, codes.ERR_OBJECT_NOT_FOUND)

    def test_follows_new_leader(self):
        """After a leader change the follower's forward is followed inside the proxy."""
        self.sim.set_leader(2)
        resp = self.decoded(self.query())
        self.assertEqual(resp.err, codes.ERR_OK)
        self.assertEqual(self.cluster.leader, "127.0.0.1:34603")
        self.assertEqual(self.sim.answered(), [1, 0, 1])

    def test_leader_change_mid_stream(self):
        """Queries pipelined across a leader change all get a real answer, none a forward."""
        first = [self.cluster.query_config("temp", (), 5.0) for _ in range(5)]
        self.sim.set_leader(1)
        second = [self.cluster.query_config("temp", (), 5.0) for _ in range(5)]
        self.net.flush()
        for d in first + second:
            self.assertEqual(self.decoded(d).err, codes.ERR_OK)
        self.assertEqual(self.cluster.leader, "127.0.0.1:34602")

    def test_leader_down(self):
        """With the old leader down and a new one elected, queries are answered without waiting for the hedge."""
        self.decoded(self.query())
        self.successResultOf(self.sim.stop_meta(0))
        self.sim.set_leader(1)
        self.net.flush()
        resp = self.decoded(self.query())
        self.assertEqual(resp.err, codes.ERR_OK)
        self.assertEqual(self.cluster.leader, "127.0.0.1:34602")

    def test_meta_comes_back(self):
        """A stopped meta is reconnected once it listens again."""
        self.successResultOf(self.sim.stop_meta(0))
        self.net.flush()
        self.sim.start_meta(0)
        self.net.run(1.0)
        self.assertTrue(self.cluster.connections()["127.0.0.1:34601"].is_connected())

    def test_all_metas_down(self):
        """With every meta down (no breaker) the caller gets L{BackendUnavailable}, not a hang."""
        self.cluster.breaker_window = 0
        for i in range(3):
            self.successResultOf(self.sim.stop_meta(i))
        self.net.flush()
        d = self.query(timeout=3.0)
        self.net.run(2.9)
        self.assertNoResult(d)
        self.net.run(0.15)
        self.failureResultOf(d, BackendUnavailable)

    def test_breaker(self):
        """
        Every meta down: a fresh failure is hidden within the budget (a
        meta back in time answers); once down longer than
        C{breaker_window}, queries in flight and new ones fail at once with
        L{ClusterDown}, and the first meta back closes the breaker.
        """
        for i in range(3):
            self.successResultOf(self.sim.stop_meta(i))
        self.net.flush()
        d = self.query(timeout=10.0)
        self.net.run(1.0)
        self.assertNoResult(d)
        self.net.run(1.2)
        self.failureResultOf(d, ClusterDown)
        d = self.query(timeout=10.0)
        self.net.run(0.15)
        self.failureResultOf(d, ClusterDown)  # a probe: 0.1 s at most
        self.assertEqual(self.cluster.describe()["breaker_open"], True)
        self.sim.start_meta(0)
        self.net.run(1.5)  # the links keep probing
        self.assertIsNone(self.cluster.breaker_reason())
        d = self.query(timeout=5.0)
        self.net.run(0.5)
        self.assertEqual(self.successResultOf(d).rpc_error, "ERR_OK")
        self.assertGreaterEqual(self.cluster.fast_failures, 2)

    def test_slow_leader_within_deadline(self):
        """A slow leader's answer is still used when it comes before the deadline."""
        self.sim.set_delay(2.0, index=0)
        d = self.query(timeout=5.0)
        self.net.run(1.5)
        self.assertNoResult(d)
        self.net.run(0.6)
        self.assertEqual(self.decoded(d).err, codes.ERR_OK)

    def test_slow_leader_past_deadline(self):
        """A leader slower than the deadline gives L{BackendUnavailable} at the deadline."""
        self.sim.set_delay(2.0, index=0)
        d = self.query(timeout=1.5)
        self.net.run(1.5)
        self.failureResultOf(d, BackendUnavailable)

    def test_not_active(self):
        """The leader's C{ERR_SERVICE_NOT_ACTIVE} is an answer, passed on."""
        self.sim.set_not_active(True)
        self.assertEqual(self.decoded(self.query()).err, codes.ERR_SERVICE_NOT_ACTIVE)

    def test_silence(self):
        """A cluster that never answers gives L{BackendUnavailable} at the deadline."""
        self.sim.set_silent(True)
        d = self.query(timeout=2.0)
        self.net.run(1.9)
        self.assertNoResult(d)
        self.net.run(0.1)
        self.failureResultOf(d, BackendUnavailable)

    def test_leader_unknown_then_elected(self):
        """While no leader is known the query waits; once one is, it is answered."""
        self.sim.set_leader(None)
        d = self.query(timeout=5.0)
        self.net.run(1.0)
        self.assertNoResult(d)
        self.sim.set_leader(2)
        self.net.run(0.5)
        self.assertEqual(self.decoded(d).err, codes.ERR_OK)
        self.assertEqual(self.cluster.leader, "127.0.0.1:34603")


class UnlistedLeaderTests(SimulatedClusterTests):
    """The configured list misses the third meta; the same behaviours hold."""

    configured = SimulatedClusterTests.metas[:2]

    def test_forward_to_unlisted(self):
        """A forward to the unlisted meta makes a connection to it, and it answers."""
        self.sim.set_leader(2)
        resp = self.decoded(self.query())
        self.assertEqual(resp.err, codes.ERR_OK)
        self.assertEqual(self.cluster.leader, "127.0.0.1:34603")
        self.assertIn("127.0.0.1:34603", self.cluster.connections())
        self.decoded(self.query())
        self.assertEqual(self.sim.answered(), [1, 0, 2])


class CallThenMetaClusterTests(MetaClusterTests):
    """The same, over connections with C{call_then} (no Deferred per attempt)."""

    connection_class = FakeCallbackConnection


class CallThenSingleMetaTests(SingleMetaTests):
    """The same, over connections with C{call_then}."""

    connection_class = FakeCallbackConnection


class QueryThenTests(ClusterFixture, SynchronousTestCase):
    """L{MetaCluster.query_then}: the callback form of L{MetaCluster.query_config}."""

    connection_class = FakeCallbackConnection

    def setUp(self):
        ClusterFixture.setUp(self)
        self.results = []

    def done(self, arg, response, error):
        self.results.append((arg, response, error))

    def test_answer(self):
        """The winning answer goes to the callback with its argument; no timer is left."""
        self.cluster.query_then("temp", (), 5.0, self.done, "a")
        self.conns["10.0.0.1:34601"].answer(OK)
        [(arg, response, error)] = self.results
        self.assertEqual((arg, response.body, error), ("a", OK, None))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadline(self):
        """Nothing answers: L{BackendUnavailable} at the deadline, once."""
        self.cluster.query_then("temp", (), 2.0, self.done, "a")
        self.clock.advance(1.99)
        self.assertEqual(self.results, [])
        self.clock.advance(0.01)
        [(arg, response, error)] = self.results
        self.assertIsInstance(error, BackendUnavailable)
        self.clock.advance(10)
        self.assertEqual(len(self.results), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self):
        """A cancelled query stops every attempt and never calls back."""
        query = self.cluster.query_then("temp", (), 5.0, self.done, "a")
        self.clock.advance(1.0)  # hedged: every meta asked
        query.cancel()
        self.assertEqual([c.pending for c in self.conns.values()], [[], [], []])
        self.clock.advance(10)
        self.assertEqual(self.results, [])
        self.assertEqual(self.cluster.in_flight(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closed(self):
        """A closed pool calls back at once with L{BackendUnavailable}."""
        self.cluster.close()
        self.assertIsNone(self.cluster.query_then("temp", (), 5.0, self.done, "a"))
        self.assertIsInstance(self.results[0][2], BackendUnavailable)
