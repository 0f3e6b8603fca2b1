"""
Interoperability with a real Pegasus client: the Python client pypegasus3
from PyPI, run in its own virtualenv (it pins Twisted 21.2 and thrift 0.13).

.ci/run installs it and sets METAPROXY_PYPEGASUS_PYTHON to its interpreter.
"""

import json
import os

from twisted.internet import defer, reactor, task, utils
from twisted.trial.unittest import TestCase

from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.routes.static import StaticRouteTable
from metaproxy.testing.harness import ProxyHarness, start_cluster, stop_all
from metaproxy.wire.querycfg import address_host_port

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interop", "pypegasus_open_table.py")
PYTHON = os.environ.get("METAPROXY_PYPEGASUS_PYTHON")


@defer.inlineCallbacks
def open_table(case, address, table, handshake=None):
    """
    Open C{table} with pypegasus3 (2000 ms timeout) in a subprocess, in a
    work directory of the test case C{case}.

    @return: a L{Deferred} firing with C{(exit status, the client's JSON line)}.
    """
    workdir = os.path.abspath(case.mktemp())
    os.makedirs(workdir)  # the client writes pegasus.log into its cwd
    args = [SCRIPT, address, table, "2000"] + ([handshake] if handshake else [])
    out, err, code = yield utils.getProcessOutputAndValue(
        PYTHON, args, env={"PATH": os.environ.get("PATH", "")}, path=workdir
    )
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    case.assertTrue(lines, f"no result from the client (rc {code}): {err.decode()[-2000:]}")
    return code, json.loads(lines[-1])


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

    def open_table(self, address, table, handshake=None):
        return open_table(self, address, table, handshake)

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

    @defer.inlineCallbacks
    def test_silent_metas_init_returns_in_time(self):
        """
        With every meta silent, the client's init() returns within its 2 s
        (metaproxy answers the retryable error first); once the metas answer
        again, a later init() on the same client opens the table.
        """
        self.cluster.set_silent(True)
        handshake = os.path.abspath(self.mktemp())
        os.makedirs(handshake)
        first_path = os.path.join(handshake, "first.json")

        def poll():
            if os.path.exists(first_path):
                watcher.stop()
                self.cluster.set_silent(False)
                with open(os.path.join(handshake, "go"), "w"):
                    pass

        watcher = task.LoopingCall(poll)
        watcher.start(0.05)
        self.addCleanup(lambda: watcher.running and watcher.stop())
        code, result = yield self.open_table(f"127.0.0.1:{self.proxy.port}", "temp", handshake)
        first = result["first"]
        self.assertFalse(first["ok"], first)
        self.assertLess(first["elapsed"], 2.0, first)
        self.assertEqual(code, 0, result)
        self.assertEqual(result["partition_count"], 8)
