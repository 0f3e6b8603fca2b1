# -*- test-case-name: metaproxy.test.test_zkload -*-
"""
Process-level ZooKeeper outage and flood tests: real ZooKeeper, a real
C{twistd pegasus-sim} and a real C{twistd metaproxy}. The outage uses the
issue's 5000 names in one burst; the flood is cut to 5000 names and 5
tables so each test stays well under 30 s on a busy 2-core machine. The
paced outage and the 50 000-name flood with 20 tables run in
C{bench/zk_outage.py} and C{bench/flood_unknown.py}.
"""

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from metaproxy.testing.zkload import Processes, flood, outage


class _ProcessCase(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def start(self, **kw):
        procs = Processes(**kw)
        self.addCleanup(lambda: threads.deferToThread(procs.stop))
        yield threads.deferToThread(procs.start)
        return procs


class OutageTests(_ProcessCase):
    @defer.inlineCallbacks
    def test_zookeeper_down_never_freezes(self):
        """
        With ZooKeeper down, 5000 distinct uncached names (about 18 times
        what used to freeze the reactor) are all answered with the retryable
        error well before the client's 1000 ms; the cached table keeps
        answering ERR_OK, /healthz answers, and SIGTERM ends the process
        within its drain timeout.
        """
        procs = yield self.start(tables=2, drain_timeout=2.0)
        figures = yield outage(reactor, procs, names=5000, window=250)
        uncached = figures["uncached"]
        self.assertEqual(len(uncached), 5000)
        self.assertEqual({err for err, _ in uncached}, {"ERR_SERVICE_NOT_ACTIVE"})
        self.assertLess(max(s for _, s in uncached), 0.95)
        probes = figures["probes"]
        self.assertTrue(probes)
        self.assertEqual({err for err, _ in probes}, {"ERR_OK"})
        self.assertLess(max(s for _, s in probes), 0.5)  # generous: the bench reports the real figure
        self.assertTrue(figures["health"])
        self.assertEqual({status for status, _ in figures["health"]}, {200})
        self.assertIsNotNone(figures["exit_code"])
        self.assertLess(figures["exit_seconds"], 2.0 + 5.0)
        log = procs.log_text()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Transition to CONNECTING", log)


class FloodTests(_ProcessCase):
    @defer.inlineCallbacks
    def test_unknown_names_cost_no_watch(self):
        """
        5000 unknown names while 5 real tables are queried: every unknown
        name is ERR_OBJECT_NOT_FOUND, ZooKeeper's watch count does not grow,
        and the real tables keep answering ERR_OK.
        """
        procs = yield self.start(tables=5)
        figures = yield flood(reactor, procs, unknown=5000, window=250, baseline_seconds=1.0, pause=0.05)
        self.assertEqual({err for err, _ in figures["unknown"]}, {"ERR_OBJECT_NOT_FOUND"})
        self.assertEqual(len(figures["unknown"]), 5000)
        w0, w1 = figures["watches"]
        self.assertLessEqual(w1, 5 + 1)
        self.assertEqual(w0, w1)
        during = figures["during"]
        self.assertTrue(during)
        self.assertEqual({err for err, _ in during}, {"ERR_OK"})
