# -*- test-case-name: metaproxy.test.test_sim -*-
"""
Tests for the simulated meta cluster (L{metaproxy.sim}) and the in-memory
fakes of L{metaproxy.testing.fakemeta}.
"""

import functools
import os
import signal
import socket
import sys

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from metaproxy.backend.pools import ClusterPools
from metaproxy.errors import BackendUnavailable
from metaproxy.interfaces import IClusterPools, IMetaCluster
from metaproxy.routes.route import MetaAddrs
from metaproxy.sim import tap
from metaproxy.testing.net import twistd_argv
from metaproxy.sim.model import SimModel, select_partitions
from metaproxy.sim.server import SimulatedCluster, build_simulator_service
from metaproxy.testing import fakemeta
from metaproxy.wire import codes, querycfg
from metaproxy.wire.frame import Request, RequestHeader


def ensure_deferred(method):
    """Run an C{async def} test method as a L{Deferred} trial can wait for."""

    @functools.wraps(method)
    def run(*args, **kwargs):
        return defer.Deferred.fromCoroutine(method(*args, **kwargs))

    return run

REPLICAS = [querycfg.rpc_address("127.0.0.1", p) for p in (34801, 34802, 34803)]


class SimModelTests(SynchronousTestCase):
    """L{SimModel} answers like a onebox leader."""

    def setUp(self):
        self.model = SimModel()
        self.model.create_table("temp", 8)

    def decode(self, *indices, name="temp"):
        return querycfg.decode_result(self.model.query_body(name, indices))

    def test_onebox_shape(self):
        """Every partition has a primary and two secondaries on the three replicas, primaries spread."""
        resp = self.decode()
        self.assertEqual(
            (resp.err, resp.app_id, resp.partition_count, resp.is_stateful),
            (codes.ERR_OK, 1, 8, True),
        )
        self.assertEqual([p.partition_index for p in resp.partitions], list(range(8)))
        for p in resp.partitions:
            self.assertEqual(sorted((p.primary,) + p.secondaries), sorted(REPLICAS))
            self.assertEqual((p.app_id, p.max_replica_count), (1, 3))
            self.assertTrue(p.ballot > 0)
        primaries = [p.primary for p in resp.partitions]
        self.assertEqual({primaries.count(r) for r in REPLICAS}, {2, 3})

    def test_app_ids_assigned(self):
        """App ids are assigned 1, 2, ... unless given."""
        self.assertEqual(self.model.create_table("b", 4).app_id, 2)
        self.assertEqual(self.model.create_table("c", 4, app_id=10).app_id, 10)
        self.assertEqual(self.model.create_table("d", 4).app_id, 11)

    def test_partition_count_power_of_two(self):
        """A partition count that is not a power of two is refused."""
        self.assertRaises(ValueError, self.model.create_table, "x", 6)
        self.assertRaises(ValueError, self.model.set_partition_count, "temp", 0)

    def test_unknown_table(self):
        """An unknown (or dropped) table gives C{ERR_OBJECT_NOT_FOUND}."""
        self.assertEqual(self.decode(name="nope").err, codes.ERR_OBJECT_NOT_FOUND)
        self.model.drop_table("temp")
        self.assertEqual(self.decode().err, codes.ERR_OBJECT_NOT_FOUND)

    def test_partition_indices(self):
        """Only the valid requested indices come back, in the order asked."""
        resp = self.decode(5, 99, 2, -1)
        self.assertEqual([p.partition_index for p in resp.partitions], [5, 2])
        self.assertEqual(resp.partition_count, 8)

    def test_no_valid_index_means_all(self):
        """If no requested index is valid, every partition comes back."""
        self.assertEqual(len(self.decode(8, -3).partitions), 8)

    def test_select_partitions_keeps_repeats(self):
        """Repeated indices are repeated, as the meta server's loop does."""
        self.assertEqual(select_partitions("abcd", (1, 1, 9)), ("b", "b"))
        self.assertEqual(select_partitions("abcd", ()), tuple("abcd"))

    def test_full_answer_encoded_once(self):
        """The full answer is encoded once and re-encoded only after a change."""
        first = self.model.query_body("temp")
        self.assertIs(self.model.query_body("temp"), first)
        self.assertEqual(self.model.encodes, 1)
        self.model.move_primary("temp", 0)
        changed = self.model.query_body("temp")
        self.assertEqual(self.model.encodes, 2)
        self.assertNotEqual(changed, first)

    def test_move_primary(self):
        """Moving a primary changes it and raises the partition's ballot."""
        before = self.decode().partitions[3]
        self.model.move_primary("temp", 3)
        after = self.decode().partitions[3]
        self.assertNotEqual(after.primary, before.primary)
        self.assertEqual(after.ballot, before.ballot + 1)

    def test_set_partition_count(self):
        """A new partition count gives that many partitions with higher ballots."""
        old_ballot = self.decode().partitions[0].ballot
        self.model.set_partition_count("temp", 16)
        resp = self.decode()
        self.assertEqual((resp.partition_count, len(resp.partitions)), (16, 16))
        self.assertTrue(all(p.ballot > old_ballot for p in resp.partitions))

    def test_host_ports(self):
        """With C{host_ports} the C{hp_*} fields are sent, naming the same replicas."""
        model = SimModel(host_ports=True)
        model.create_table("t", 2)
        p = querycfg.decode_result(model.query_body("t")).partitions[0]
        self.assertEqual(p.hp_primary, querycfg.HostPort("127.0.0.1", 34801))
        self.assertEqual(len(p.hp_secondaries), 2)
        self.assertEqual(p.hp_last_drops, ())


class FakeMetaTests(SynchronousTestCase):
    """The in-memory fakes behave as their interfaces promise."""

    def setUp(self):
        self.pools = fakemeta.FakeClusterPools()
        self.addrs = MetaAddrs.parse("10.0.0.1:34601")
        self.cluster = self.pools.get(self.addrs)
        self.cluster.model.create_table("temp", 4)

    def test_interfaces(self):
        """The fakes provide L{IClusterPools} and L{IMetaCluster}."""
        self.assertTrue(verifyObject(IClusterPools, self.pools))
        self.assertTrue(verifyObject(IMetaCluster, self.cluster))

    def test_same_cluster_per_meta_set(self):
        """The same meta set, spelled differently, gives the same fake."""
        self.assertIs(self.pools.get(" 10.0.0.1:34601 "), self.cluster)

    def test_answers_from_model(self):
        """In answer mode a query gets the model's answer and is recorded."""
        resp = self.successResultOf(self.cluster.query_config("temp", (), 5.0))
        self.assertEqual(querycfg.decode_result(resp.body).partition_count, 4)
        self.assertEqual(self.cluster.calls[0].app_name, "temp")

    def test_hold_and_answer(self):
        """In hold mode queries wait until the test answers them."""
        self.cluster.mode = fakemeta.HOLD
        d = self.cluster.query_config("temp", (1,), 5.0)
        self.assertNoResult(d)
        self.assertEqual(self.cluster.in_flight(), 1)
        self.assertEqual(self.cluster.answer_pending(), 1)
        resp = querycfg.decode_result(self.successResultOf(d).body)
        self.assertEqual([p.partition_index for p in resp.partitions], [1])

    def test_unavailable(self):
        """In unavailable mode queries fail with L{BackendUnavailable}."""
        self.cluster.mode = fakemeta.UNAVAILABLE
        self.failureResultOf(self.cluster.query_config("temp", (), 5.0), BackendUnavailable)

    def test_close(self):
        """Closing the pools fails held queries and refuses new ones."""
        self.cluster.mode = fakemeta.HOLD
        d = self.cluster.query_config("temp", (), 5.0)
        self.successResultOf(self.pools.close())
        self.failureResultOf(d, BackendUnavailable)
        self.failureResultOf(self.cluster.query_config("temp", (), 5.0), BackendUnavailable)


class OptionsTests(SynchronousTestCase):
    """C{twistd pegasus-sim} options are validated in C{postOptions}."""

    def parse(self, *argv):
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self):
        """By default three metas on 34611-34613 and no table."""
        options = self.parse()
        self.assertEqual(
            options["metas"], ("127.0.0.1:34611", "127.0.0.1:34612", "127.0.0.1:34613")
        )
        self.assertEqual(options["tables"], {})

    def test_tables(self):
        """C{--table} is repeatable and takes an optional app id."""
        options = self.parse("--table", "temp:8", "-t", "stat:4:7", "--metas", " 127.0.0.1:1 ")
        self.assertEqual(
            options["tables"], {"temp": tap.TableSpec(8), "stat": tap.TableSpec(4, 7)}
        )
        self.assertEqual(options["metas"], ("127.0.0.1:1",))

    def test_bad_tables(self):
        """Malformed tables, non-powers of two and repeats are usage errors."""
        for argv in (
            ["--table", "temp"],
            ["--table", "temp:x"],
            ["--table", "temp:6"],
            ["--table", ":8"],
            ["--table", "t:8:0"],
            ["--table", "t:8", "--table", "t:4"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *argv)

    def test_bad_metas(self):
        """Host names, missing ports, repeats and empty lists are usage errors."""
        for metas in ("localhost:1", "127.0.0.1", "127.0.0.1:1,127.0.0.1:1", " , "):
            self.assertRaises(usage.UsageError, self.parse, "--metas", metas)


def _request(table="temp", indices=()):
    return Request(RequestHeader(), querycfg.QUERY_CFG, 1, querycfg.encode_args(table, indices))


class SimulatedClusterUnitTests(SynchronousTestCase):
    """L{SimulatedCluster}'s metas answer as a leader or a follower, with faults."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.sim = SimulatedCluster(
            self.reactor, ("127.0.0.1:34601", "127.0.0.1:34602", "127.0.0.1:34603")
        )
        self.sim.create_table("temp", 4)
        self.sim.startService()

    def answer(self, index, table="temp", indices=()):
        result = self.sim.servers[index].handle_query(_request(table, indices), None)
        if isinstance(result, defer.Deferred):
            result = self.successResultOf(result)
        return result

    def test_listens_on_every_meta(self):
        """Starting listens on each meta's interface and port."""
        self.assertEqual(
            [(port, interface) for port, _, _, interface in self.reactor.tcpServers],
            [(34601, "127.0.0.1"), (34602, "127.0.0.1"), (34603, "127.0.0.1")],
        )
        self.assertEqual(self.sim.meta_addrs(), "127.0.0.1:34601,127.0.0.1:34602,127.0.0.1:34603")

    def test_leader_answers_from_model(self):
        """The leader answers the table's configuration, honouring partition_indices."""
        reply = self.answer(0, indices=(2,))
        self.assertEqual(reply.rpc_error, codes.ERR_OK)
        resp = querycfg.decode_result(reply.body)
        self.assertEqual((resp.err, resp.partition_count), (codes.ERR_OK, 4))
        self.assertEqual([p.partition_index for p in resp.partitions], [2])

    def test_follower_forwards_to_leader(self):
        """A follower answers C{ERR_FORWARD_TO_OTHERS} naming the leader, other fields default."""
        self.sim.set_leader(2)
        resp = querycfg.decode_result(self.answer(0).body)
        self.assertEqual(resp.err, codes.ERR_FORWARD_TO_OTHERS)
        self.assertEqual((resp.app_id, resp.partition_count, resp.is_stateful), (0, 0, False))
        self.assertEqual(
            querycfg.address_host_port(resp.partitions[0].primary), ("127.0.0.1", 34603)
        )
        self.assertEqual(querycfg.decode_result(self.answer(2).body).err, codes.ERR_OK)

    def test_leader_unknown(self):
        """While the leader is unknown, followers forward with an empty partition list."""
        self.sim.set_leader(None)
        resp = querycfg.decode_result(self.answer(1).body)
        self.assertEqual((resp.err, resp.partitions), (codes.ERR_FORWARD_TO_OTHERS, ()))

    def test_unknown_table(self):
        """An unknown table is C{ERR_OBJECT_NOT_FOUND} from the leader."""
        self.assertEqual(
            querycfg.peek_result(self.answer(0, "nope").body).err, codes.ERR_OBJECT_NOT_FOUND
        )

    def test_not_active(self):
        """With C{set_not_active} the leader answers C{ERR_SERVICE_NOT_ACTIVE}."""
        self.sim.set_not_active(True)
        self.assertEqual(querycfg.peek_result(self.answer(0).body).err, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual(querycfg.peek_result(self.answer(1).body).err, codes.ERR_FORWARD_TO_OTHERS)

    def test_delay(self):
        """With C{set_delay} the answer comes after that many seconds."""
        self.sim.set_delay(2.0)
        d = self.sim.servers[0].handle_query(_request(), None)
        self.reactor.advance(1.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.assertEqual(self.successResultOf(d).rpc_error, codes.ERR_OK)

    def test_silent(self):
        """With C{set_silent} no meta answers, however long one waits."""
        self.sim.set_silent(True, index=1)
        self.assertEqual(self.answer(0).rpc_error, codes.ERR_OK)
        d = self.sim.servers[1].handle_query(_request(), None)
        self.reactor.advance(3600)
        self.assertNoResult(d)

    def test_stop_meta_drops_connections(self):
        """Stopping a meta stops it listening and drops its connections; it can restart."""
        meta = self.sim.servers[1]
        proto = meta.factory.buildProtocol(None)
        transport = iosim.FakeTransport(proto, True)
        proto.makeConnection(transport)
        self.successResultOf(self.sim.stop_meta(1))
        self.assertFalse(meta.running)
        self.assertTrue(transport.disconnecting)
        self.sim.start_meta(1)
        self.assertTrue(meta.running)
        self.assertEqual(self.reactor.tcpServers[-1][0], 34602)

    def test_answers_reuse_encoded_body(self):
        """Repeated queries reuse the pre-encoded answer (no re-encoding)."""
        first = self.answer(0).body
        self.assertIs(self.answer(0).body, first)
        self.assertEqual(self.sim.model.encodes, 1)

    def test_host_names_refused(self):
        """Simulated metas must be IPv4 addresses (followers name the leader by IP)."""
        self.assertRaises(ValueError, SimulatedCluster, self.reactor, ("localhost:1",))


class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class BuildServiceTests(SynchronousTestCase):
    """L{build_simulator_service} and the C{pegasus-sim} tap build simulated clusters."""

    def test_from_config_shape(self):
        """Every configured cluster is started with its tables; app ids are assigned when unset."""
        config = _Obj(
            clusters=[
                _Obj(
                    name="c1",
                    metas=("127.0.0.1:34601",),
                    tables={
                        "a": _Obj(partition_count=4, app_id=None),
                        "b": _Obj(partition_count=8, app_id=9),
                    },
                ),
                _Obj(name="c2", metas=("127.0.0.1:35601", "127.0.0.1:35602"), tables={}),
            ]
        )
        reactor = MemoryReactorClock()
        top = build_simulator_service(config, reactor)
        top.startService()
        c1 = top.getServiceNamed("c1")
        self.assertEqual({n: t.app_id for n, t in c1.model.tables().items()}, {"a": 1, "b": 9})
        self.assertEqual(top.getServiceNamed("c2").addresses(), ["127.0.0.1:35601", "127.0.0.1:35602"])
        self.assertEqual(len(reactor.tcpServers), 3)
        self.assertNotEqual(
            top.getServiceNamed("c1").model.replicas, top.getServiceNamed("c2").model.replicas
        )
        self.successResultOf(defer.maybeDeferred(top.stopService))

    def test_tap(self):
        """The tap builds one cluster from the options."""
        options = tap.Options()
        options.parseOptions(["--metas", "127.0.0.1:34611,127.0.0.1:34612", "--table", "temp:8", "--host-ports"])
        reactor = MemoryReactorClock()
        top = tap.makeService(options, reactor)
        sim = top.getServiceNamed("sim")
        self.assertEqual(sim.addresses(), ["127.0.0.1:34611", "127.0.0.1:34612"])
        self.assertEqual(sim.model.tables()["temp"].partition_count, 8)
        self.assertTrue(sim.model.host_ports)

    def test_tap_auth(self):
        """--enable-auth/--mandatory-auth/--keytab/--allow reach the cluster; the others need --enable-auth."""
        options = tap.Options()
        options.parseOptions(["--metas", "127.0.0.1:34611", "--enable-auth", "--mandatory-auth",
                              "--keytab", "/etc/meta.keytab", "--allow", "alice, metaproxy"])
        sim = tap.makeService(options, MemoryReactorClock()).getServiceNamed("sim")
        self.assertEqual((sim.enable_auth, sim.mandatory_auth, sim.keytab, sim.allow),
                         (True, True, "/etc/meta.keytab", ("alice", "metaproxy")))
        self.assertTrue(sim.servers[0].handler.mandatory)
        self.assertRaises(tap.usage.UsageError, tap.Options().parseOptions, ["--mandatory-auth"])

    def test_plugin(self):
        """The C{pegasus-sim} twistd plugin is discoverable and points at the tap."""
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("pegasus-sim", makers)
        self.assertEqual(makers["pegasus-sim"].module, "metaproxy.sim.tap")


class LoopbackTests(TestCase):
    """
    A L{ClusterPools} against a L{SimulatedCluster} on real loopback sockets
    (every wait bounded, so a failure cannot hang).
    """

    timeout = 20

    def setUp(self):
        self.sim = SimulatedCluster(reactor, ("127.0.0.1:0",) * 3)
        self.sim.create_table("temp", 8)
        self.sim.startService()
        self.addCleanup(self.sim.stopService)
        self.pools = ClusterPools(reactor, hedge_delay=0.2, connect_timeout=1.0, idle_close=0.3, sweep_interval=0.1)
        self.addCleanup(self.pools.close)

    async def query(self, addrs, table="temp", timeout=3.0):
        return await self.pools.get(MetaAddrs.parse(addrs)).query_config(table, (), timeout)

    async def wait_until(self, predicate, seconds=5.0):
        for _ in range(int(seconds / 0.05)):
            if predicate():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail("condition not reached in time")

    def _ok(self, response):
        resp = querycfg.decode_result(response.body)
        self.assertEqual((response.rpc_error, resp.err, resp.partition_count), (codes.ERR_OK, codes.ERR_OK, 8))

    @ensure_deferred
    async def test_query_and_leader_change(self):
        """Queries are answered; after a leader change the new leader answers, with no forward out."""
        addrs = self.sim.meta_addrs()
        self._ok(await self.query(addrs))
        self.sim.set_leader(2)
        self._ok(await self.query(addrs))
        self.assertEqual(self.pools.get(MetaAddrs.parse(addrs)).leader, self.sim.servers[2].address)

    @ensure_deferred
    async def test_leader_down(self):
        """With the leader down and another elected, queries are still answered."""
        addrs = self.sim.meta_addrs()
        self._ok(await self.query(addrs))
        await self.sim.stop_meta(0)
        self.sim.set_leader(1)
        self._ok(await self.query(addrs))

    @ensure_deferred
    async def test_all_down(self):
        """With every meta down the caller gets L{BackendUnavailable} within the deadline."""
        addrs = self.sim.meta_addrs()
        for i in range(3):
            await self.sim.stop_meta(i)
        started = reactor.seconds()
        with self.assertRaises(BackendUnavailable):
            await self.query(addrs, timeout=2.0)
        self.assertLess(reactor.seconds() - started, 2.5)

    @ensure_deferred
    async def test_forward_to_unlisted(self):
        """A route listing only two metas still reaches a leader that is the third one."""
        listed = ",".join(self.sim.addresses()[:2])
        self.sim.set_leader(2)
        self._ok(await self.query(listed))
        answered = self.sim.answered()
        self.assertEqual((sum(answered[:2]), answered[2]), (1, 1))

    @ensure_deferred
    async def test_pool_reuse_and_cleanup(self):
        """Reordered lists share one pool; an unreferenced idle pool is closed with its connections."""
        addrs = self.sim.addresses()
        self._ok(await self.query(",".join(addrs)))
        self._ok(await self.query(" , ".join(reversed(addrs))))
        self.assertEqual(len(self.pools.pools()), 1)
        await self.wait_until(lambda: not self.pools.pools())
        await self.wait_until(lambda: all(not m.factory.protocols for m in self.sim.servers))


def _free_port():
    """@return: a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Ended(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()
        self.output = []

    def outReceived(self, data):
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback((reason.value.exitCode, reason.value.signal))


class TwistdSmokeTests(TestCase):
    """The one end-to-end run of C{twistd -n pegasus-sim} in a subprocess."""

    timeout = 30

    @ensure_deferred
    async def test_twistd_pegasus_sim(self):
        """C{twistd -n pegasus-sim} serves the tables it was given and stops on SIGTERM."""
        port = _free_port()
        proc = _Ended()
        argv = twistd_argv() + ["pegasus-sim", "--metas", f"127.0.0.1:{port}", "--table", "temp:8"]
        transport = reactor.spawnProcess(proc, sys.executable, argv, env=os.environ)
        pools = ClusterPools(reactor, connect_timeout=1.0)
        try:
            cluster = pools.get(MetaAddrs.parse(f"127.0.0.1:{port}"))
            for _ in range(100):
                if proc.ended.called:
                    break
                try:
                    response = await cluster.query_config("temp", (), 1.0)
                    break
                except BackendUnavailable:
                    await task.deferLater(reactor, 0.1, lambda: None)
            else:
                self.fail("pegasus-sim never answered: %r" % b"".join(proc.output))
            resp = querycfg.decode_result(response.body)
            self.assertEqual((resp.err, resp.partition_count), (codes.ERR_OK, 8))
        finally:
            await pools.close()
            if not proc.ended.called:
                transport.signalProcess("TERM")
        exit_code, sig = await proc.ended
        # twistd stops cleanly, then re-raises the signal that stopped it.
        self.assertIn((exit_code, sig), [(0, None), (None, signal.SIGTERM)])
        self.assertIn(b"simulated meta cluster sim", b"".join(proc.output))
