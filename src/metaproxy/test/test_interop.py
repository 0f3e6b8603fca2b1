"""
Interoperability with a real Pegasus client: the Python client pypegasus3
from PyPI, run in its own virtualenv (it pins Twisted 21.2 and thrift 0.13).

.ci/run installs it and sets METAPROXY_PYPEGASUS_PYTHON to its interpreter.
"""

import json
import os

from twisted.internet import defer, reactor, utils
from twisted.trial.unittest import TestCase

from metaproxy.route import MetaAddrs, Route
from metaproxy.staticroutes import StaticRouteTable
from metaproxy.testing.harness import ProxyHarness, start_cluster, stop_all
from metaproxy.wire.querycfg import address_host_port

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interop", "pypegasus_open_table.py")
PYTHON = os.environ.get("METAPROXY_PYPEGASUS_PYTHON")


class PyPegasusTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        if not PYTHON or not os.path.exists(PYTHON):
            raise self.skipTest("set METAPROXY_PYPEGASUS_PYTHON to a python with pypegasus3 (.ci/run does)")
        # The cluster sends hp_* fields, as Pegasus master does.
        self.cluster = start_cluster(reactor, "a", {"temp": (8, 2)}, host_ports=True)
        self.addCleanup(stop_all, self.cluster)
        routes = StaticRouteTable({"temp": Route("a", MetaAddrs.parse(self.cluster.meta_addrs()))})
        self.proxy = ProxyHarness(reactor, routes)
        yield self.proxy.start()
        self.addCleanup(self.proxy.stop)

    @defer.inlineCallbacks
    def open_table(self, address, table):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)  # the client writes pegasus.log into its cwd
        out, err, code = yield utils.getProcessOutputAndValue(
            PYTHON, [SCRIPT, address, table, "2000"], env={"PATH": os.environ.get("PATH", "")}, path=workdir
        )
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        self.assertTrue(lines, f"no result from the client (rc {code}): {err.decode()[-2000:]}")
        return code, json.loads(lines[-1])

    @defer.inlineCallbacks
    def test_open_table_through_proxy(self):
        """The real Python client opens a table through metaproxy and gets every partition."""
        code, result = yield self.open_table(f"127.0.0.1:{self.proxy.port}", "temp")
        self.assertEqual(code, 0, result)
        self.assertEqual((result["app_id"], result["partition_count"], result["is_stateful"]), (2, 8, True))
        self.assertEqual([p["pidx"] for p in result["partitions"]], list(range(8)))
        expected = ["%s:%d" % address_host_port(p.primary) for p in self.cluster.model.partitions("temp")]
        self.assertEqual([p["primary"] for p in result["partitions"]], expected)

    @defer.inlineCallbacks
    def test_direct_hp_fields_break_the_client(self):
        """
        The same client talking to the meta directly fails on the hp_*
        fields: this is why the proxy strips them.
        """
        leader = self.cluster.addresses()[0]
        code, result = yield self.open_table(leader, "temp")
        self.assertEqual(code, 1)
        self.assertFalse(result["ok"])
