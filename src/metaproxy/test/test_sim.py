# -*- test-case-name: metaproxy.test.test_sim -*-
"""
Tests for the simulated meta cluster (L{metaproxy.sim}) and the in-memory
fakes of L{metaproxy.testing.fakemeta}.
"""

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from metaproxy.errors import BackendUnavailable
from metaproxy.interfaces import IClusterPools, IMetaCluster
from metaproxy.route import MetaAddrs
from metaproxy.sim import tap
from metaproxy.sim.model import SimModel, select_partitions
from metaproxy.testing import fakemeta
from metaproxy.wire import codes, querycfg

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
