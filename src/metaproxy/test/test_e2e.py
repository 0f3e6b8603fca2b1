"""
End-to-end tests: Pegasus clients -> metaproxy -> simulated meta clusters,
over loopback in one reactor.
"""

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.routes.static import StaticRouteTable
from metaproxy.testing.harness import ProxyHarness, start_cluster, stop_all
from metaproxy.testing.pegasus_client import FLAVOURS
from metaproxy.wire import codes, querycfg
from metaproxy.wire.negotiation import NEGOTIATION


def _decode(response):
    assert response.rpc_error == codes.ERR_OK, response.rpc_error
    return querycfg.decode_result(response.body)


class _E2EBase(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.a = start_cluster(reactor, "a", {"temp": (8, 2), "stat": (4, 3)}, replica_base=34801)
        self.b = start_cluster(reactor, "b", {"other": (16, 5), "temp": (16, 6)}, metas=2, replica_base=35801)
        self.addCleanup(stop_all, self.a, self.b)
        self.routes = self.make_routes()
        self.proxy = ProxyHarness(reactor, self.routes)
        yield self.proxy.start()
        self.addCleanup(self.proxy.stop)

    def make_routes(self):
        return StaticRouteTable(
            {
                "temp": Route("a", MetaAddrs.parse(self.a.meta_addrs())),
                "stat": Route("a", MetaAddrs.parse(self.a.meta_addrs())),
                "other": Route("b", MetaAddrs.parse(self.b.meta_addrs())),
            }
        )

    @defer.inlineCallbacks
    def connected(self, flavour="go"):
        client = yield self.proxy.client(flavour)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        return client


class _FlavourCases:
    """Cases run once per client flavour (v0 and v1 framings)."""

    flavour = None

    @defer.inlineCallbacks
    def test_open_table(self):
        """The client gets the leader's full configuration, without hp_* fields, with its own seqid."""
        client = yield self.connected(self.flavour)
        first_seqid = FLAVOURS[self.flavour][4]
        response = yield client.query("temp")
        self.assertEqual(response.seqid, first_seqid)
        self.assertEqual(response.name, querycfg.QUERY_CFG_ACK)
        resp = _decode(response)
        self.assertEqual((resp.err, resp.app_id, resp.partition_count, resp.is_stateful), ("ERR_OK", 2, 8, True))
        self.assertEqual([p.partition_index for p in resp.partitions], list(range(8)))
        self.assertTrue(all(p.primary != 0 for p in resp.partitions))
        self.assertTrue(all(p.hp_primary is None and p.hp_secondaries is None for p in resp.partitions))
        expected = querycfg.strip_host_port(self.a.model.query_body("temp"))
        self.assertEqual(response.body, expected)

    @defer.inlineCallbacks
    def test_partition_indices_honoured(self):
        """Requested partition indices are passed through and honoured."""
        client = yield self.connected(self.flavour)
        resp = _decode((yield client.query("temp", (3, 5))))
        self.assertEqual([p.partition_index for p in resp.partitions], [3, 5])

    @defer.inlineCallbacks
    def test_pipelined(self):
        """Many pipelined queries over several tables are all answered, each with its seqid."""
        client = yield self.connected(self.flavour)
        tables = ["temp", "stat", "other", "nope"] * 50
        answers = yield defer.gatherResults([client.query(t) for t in tables])
        first = FLAVOURS[self.flavour][4]
        self.assertEqual(sorted(a.seqid for a in answers), list(range(first, first + len(tables))))
        by_seqid = {a.seqid: a for a in answers}
        expect = {"temp": (2, 8), "stat": (3, 4), "other": (5, 16)}
        for i, table in enumerate(tables):
            resp = _decode(by_seqid[first + i])
            if table == "nope":
                self.assertEqual(resp.err, codes.ERR_OBJECT_NOT_FOUND)
            else:
                self.assertEqual((resp.app_id, resp.partition_count), expect[table])


class GoClientTests(_FlavourCases, _E2EBase):
    """
    Replays the request framing of the Go client (pegasus-go-client) (header v0, app_id 0,
    partition_index 0, no client timeout, seqids from 1; see
    L{metaproxy.testing.pegasus_client.FLAVOURS}) through the proxy. It is not that client itself
    (only the Python client runs for real, in L{metaproxy.test.test_interop}).
    """

    flavour = "go"


class Java1ClientTests(_FlavourCases, _E2EBase):
    """
    Replays the request framing of the Java 1.x client (header v0, app_id -1, partition_index -1, a
    1000 ms client timeout, seqids from 0; see L{metaproxy.testing.pegasus_client.FLAVOURS}) through
    the proxy. It is not that client itself (only the Python client runs for real, in
    L{metaproxy.test.test_interop}).
    """

    flavour = "java1"


class NodeClientTests(_FlavourCases, _E2EBase):
    """
    Replays the request framing of the NodeJS client (header v0, app_id -1, partition_index -1, no
    client timeout, seqids from 0; see L{metaproxy.testing.pegasus_client.FLAVOURS}) through the
    proxy. It is not that client itself (only the Python client runs for real, in
    L{metaproxy.test.test_interop}).
    """

    flavour = "nodejs"


class Java2ClientTests(_FlavourCases, _E2EBase):
    """
    Replays the request framing of the Java 2.x client (header v1, app_id -1, partition_index -1, a
    5000 ms client timeout, seqids from 0; see L{metaproxy.testing.pegasus_client.FLAVOURS}) through
    the proxy. It is not that client itself (only the Python client runs for real, in
    L{metaproxy.test.test_interop}).
    """

    flavour = "java2"


class ProtocolEdgeTests(_E2EBase):
    @defer.inlineCallbacks
    def test_unknown_table(self):
        """An unknown table is ERR_OBJECT_NOT_FOUND, as from a real meta."""
        client = yield self.connected()
        self.assertEqual(_decode((yield client.query("no_such_table"))).err, codes.ERR_OBJECT_NOT_FOUND)

    @defer.inlineCallbacks
    def test_negotiation_and_unknown_rpc(self):
        """RPC_NEGOTIATION gets SASL_AUTH_DISABLE; an unknown RPC gets ERR_HANDLER_NOT_FOUND, no body."""
        client = yield self.connected("java2")
        nego = yield client.query("", name=NEGOTIATION, args=b"\x0c\x00\x01\x08\x00\x01\x00\x00\x00\x01\x0c\x00\x02\x00\x00\x00\x00\x00\x00")
        self.assertEqual((nego.rpc_error, nego.name), ("ERR_OK", "RPC_NEGOTIATION_ACK"))
        self.assertIn(b"\x08\x00\x01\x00\x00\x00\x09", nego.body)
        other = yield client.query("", name="RPC_CM_LIST_APPS", args=b"\x0c\x00\x01\x00\x00")
        self.assertEqual((other.rpc_error, other.name, other.body), ("ERR_HANDLER_NOT_FOUND", "RPC_CM_LIST_APPS_ACK", b""))
        still = yield client.query("temp")
        self.assertEqual(_decode(still).err, "ERR_OK")

    @defer.inlineCallbacks
    def test_bad_magic_closes_connection(self):
        """A frame with a bad signature closes that connection (and only that one)."""
        bad = yield self.connected()
        good = yield self.connected()
        bad.send_raw(b"GARBAGE-GARBAGE-GARBAGE")
        yield bad.closed
        self.assertEqual(_decode((yield good.query("temp"))).err, "ERR_OK")

    @defer.inlineCallbacks
    def test_mixed_framing_on_one_connection(self):
        """v0 and v1 messages may alternate on one connection."""
        client = yield self.connected("go")
        a, b, c = yield defer.gatherResults(
            [client.query("temp"), client.query("stat", version=1), client.query("other", version=0)]
        )
        self.assertEqual([_decode(x).app_id for x in (a, b, c)], [2, 3, 5])
        self.assertEqual([x.seqid for x in (a, b, c)], [1, 2, 3])


class BackendFaultTests(_E2EBase):
    @defer.inlineCallbacks
    def load(self, client, n, table="temp"):
        answers = yield defer.gatherResults([client.query(table) for _ in range(n)])
        return [_decode(a).err for a in answers]

    @defer.inlineCallbacks
    def test_leader_change_under_load(self):
        """Moving the leader while queries flow loses none: FORWARD is followed inside the proxy."""
        client = yield self.connected()
        yield self.load(client, 1)  # the pool now believes in meta 0, the leader
        first = self.load(client, 100)
        self.a.set_leader(1)
        second = self.load(client, 100)
        errs = (yield first) + (yield second)
        self.assertEqual(set(errs), {"ERR_OK"})
        self.assertEqual(self.proxy.pools.get(MetaAddrs.parse(self.a.meta_addrs())).leader, self.a.addresses()[1])
        registry = self.proxy.metrics.registry
        labels = {"cluster_name": "a"}  # the route's cluster name, never the address list
        self.assertGreaterEqual(
            registry.get_sample_value("metaproxy_backend_errors_total", dict(labels, outcome="ERR_FORWARD_TO_OTHERS")),
            1.0,
        )
        self.assertGreaterEqual(registry.get_sample_value("metaproxy_backend_call_seconds_count", labels), 3.0)

    @defer.inlineCallbacks
    def test_leader_down(self):
        """With the leader's process gone, the proxy hedges to the others and finds the new leader."""
        client = yield self.connected()
        self.assertEqual((yield self.load(client, 5)), ["ERR_OK"] * 5)
        yield self.a.stop_meta(0)
        self.a.set_leader(2)
        self.assertEqual(set((yield self.load(client, 20))), {"ERR_OK"})

    @defer.inlineCallbacks
    def test_all_metas_down_is_retryable_not_a_hang(self):
        """With every meta down the client gets ERR_SERVICE_NOT_ACTIVE within the deadline."""
        client = yield self.connected("java2")
        for i in range(3):
            yield self.a.stop_meta(i)
        started = reactor.seconds()
        self.assertEqual((yield self.load(client, 3)), [codes.ERR_SERVICE_NOT_ACTIVE] * 3)
        self.assertLess(reactor.seconds() - started, 5 + 1)

    @defer.inlineCallbacks
    def test_silent_cluster_is_answered_by_deadline(self):
        """Metas that accept but never answer still get the client a retryable answer."""
        client = yield self.connected("go")
        self.a.set_silent(True)
        self.assertEqual((yield self.load(client, 2)), [codes.ERR_SERVICE_NOT_ACTIVE] * 2)

    @defer.inlineCallbacks
    def test_herd_is_coalesced(self):
        """500 concurrent queries for one table cost at most two upstream queries per batch window."""
        clients = yield defer.gatherResults([self.connected() for _ in range(50)])
        self.a.set_delay(0.05)
        answers = yield defer.gatherResults([c.query("temp") for c in clients for _ in range(10)])
        self.assertEqual({_decode(a).err for a in answers}, {"ERR_OK"})
        upstream = self.proxy.metrics.registry.get_sample_value("metaproxy_upstream_queries_total", {"table": "temp"})
        self.assertLessEqual(upstream, 2.0)


class DrainTests(_E2EBase):
    @defer.inlineCallbacks
    def test_drain_answers_in_flight_then_closes(self):
        """Stopping the proxy stops accepting, answers what is in flight, then closes."""
        client = yield self.connected()
        self.a.set_delay(0.3)
        pending = [client.query("temp") for _ in range(5)]
        yield task.deferLater(reactor, 0.05, lambda: None)
        stopping = self.proxy.service.stopService()
        answers = yield defer.gatherResults(pending)
        self.assertEqual({_decode(a).err for a in answers}, {"ERR_OK"})
        yield stopping
        yield client.closed
        self.assertFalse(self.proxy.listener.listening)


class ZooKeeperE2ETests(_E2EBase):
    """The full path with routes from a real ZooKeeper server."""

    timeout = 60

    def make_routes(self):
        import json

        from kazoo.client import KazooClient

        from metaproxy.testing.zookeeper import ZooKeeperServer
        from metaproxy.routes.zookeeper import ZooKeeperRouteTable

        self.zk = ZooKeeperServer()
        self.zk.start()
        self.addCleanup(self.zk.destroy)
        self.admin = KazooClient(hosts=self.zk.hosts)
        self.admin.start(timeout=15)
        self.addCleanup(lambda: (self.admin.stop(), self.admin.close()))
        self.node = lambda cluster: json.dumps(
            {"cluster_name": cluster.cluster_name, "meta_addrs": cluster.meta_addrs()}
        ).encode()
        self.admin.create("/pegasus/temp", self.node(self.a), makepath=True)
        self.admin.create("/pegasus/stat", self.node(self.a), makepath=True)
        return ZooKeeperRouteTable([self.zk.hosts], "/pegasus", reactor, session_timeout=4.0, read_timeout=3.0)

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        from metaproxy.test.test_zkroutes import wait_until

        self.wait_until = wait_until
        yield wait_until(self.routes.is_ready)

    @defer.inlineCallbacks
    def test_switch_under_load(self):
        """
        Rewriting a table's node moves the next queries to the new cluster
        (another app_id and partition count) while queries keep flowing,
        and no query fails.
        """
        client = yield self.connected("java2")
        seen = []
        stop = []

        @defer.inlineCallbacks
        def load():
            while not stop:
                answers = yield defer.gatherResults([client.query("temp") for _ in range(20)])
                seen.extend((_decode(a).err, _decode(a).app_id, _decode(a).partition_count) for a in answers)

        running = load()
        yield self.wait_until(lambda: len(seen) >= 100)
        yield threads.deferToThread(self.admin.set, "/pegasus/temp", self.node(self.b))
        yield self.wait_until(lambda: seen[-1][1:] == (6, 16))
        stop.append(True)
        yield running
        self.assertEqual({s[0] for s in seen}, {"ERR_OK"})
        self.assertEqual({s[1:] for s in seen}, {(2, 8), (6, 16)})
        first_new = next(i for i, s in enumerate(seen) if s[1] == 6)
        self.assertTrue(all(s[1] == 6 for s in seen[first_new:]), "a query went back to the old cluster")

    @defer.inlineCallbacks
    def test_zookeeper_restart_under_load(self):
        """While ZooKeeper restarts, cached tables keep being served without errors."""
        client = yield self.connected("go")
        self.assertEqual(_decode((yield client.query("temp"))).app_id, 2)
        self.assertEqual(_decode((yield client.query("stat"))).app_id, 3)
        yield threads.deferToThread(self.zk.stop)
        yield self.wait_until(lambda: self.routes.zk_state != "CONNECTED")
        answers = yield defer.gatherResults([client.query(t) for t in ("temp", "stat") * 50])
        self.assertEqual({_decode(a).err for a in answers}, {"ERR_OK"})
        yield threads.deferToThread(self.zk.start)
        yield self.wait_until(lambda: self.routes.zk_state == "CONNECTED")
        answers = yield defer.gatherResults([client.query(t) for t in ("temp", "stat") * 50])
        self.assertEqual({_decode(a).err for a in answers}, {"ERR_OK"})
