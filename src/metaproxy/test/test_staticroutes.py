"""
Tests for L{metaproxy.routes.static}.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from metaproxy.errors import TableNotFound
from metaproxy.interfaces import IRouteTable
from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.routes.static import StaticRouteTable

A = MetaAddrs.parse("127.0.0.1:34601, 127.0.0.1:34602")
B = MetaAddrs.parse("127.0.0.1:34701")


class StaticRouteTableTests(SynchronousTestCase):
    def setUp(self):
        self.table = StaticRouteTable({"temp": Route("a", A), "stat": Route("a", A), "x": Route("b", B)})

    def test_interface(self):
        """The static table provides IRouteTable."""
        verifyObject(IRouteTable, self.table)

    def test_lookup(self):
        """A configured table resolves to its route at once."""
        self.assertEqual(self.successResultOf(self.table.lookup("temp")), Route("a", A))

    def test_unknown(self):
        """An unconfigured table fails with TableNotFound."""
        self.failureResultOf(self.table.lookup("nope"), TableNotFound)

    def test_ready_and_clusters(self):
        """It is always ready and references each meta set once."""
        self.assertTrue(self.table.is_ready())
        self.assertEqual(self.table.clusters(), frozenset({A, B}))
        self.assertTrue(self.table.is_cached("x"))
        self.assertFalse(self.table.is_cached("nope"))

    def test_describe(self):
        """describe() lists every table with its cluster and metas."""
        entries = {e["table"]: e for e in self.table.describe()}
        self.assertEqual(sorted(entries), ["stat", "temp", "x"])
        self.assertEqual(entries["temp"]["meta_addrs"], ["127.0.0.1:34601", "127.0.0.1:34602"])
        self.assertEqual(entries["x"]["state"], "ok")
