"""
Tests for L{metaproxy.routes.zookeeper} and L{metaproxy.routes.zkbridge} against a real
ZooKeeper server (Debian's jar on 127.0.0.1, a free port).
"""

import itertools
import json
import time

from kazoo.exceptions import ConnectionLoss, SessionExpiredError

from twisted.internet import defer, reactor, task, threads
from twisted.logger import LogLevel, globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from metaproxy.errors import InvalidRoute, RouteUnavailable, TableNotFound
from metaproxy.interfaces import IRouteTable
from metaproxy.routes.route import MetaAddrs, Route, SelfAddresses
from metaproxy.testing.zookeeper import ZooKeeperServer, quiet_client, shared_server
from metaproxy.routes.zookeeper import ZooKeeperRouteTable, valid_table_name

_roots = itertools.count()


def node(cluster, addrs):
    return json.dumps({"cluster_name": cluster, "meta_addrs": addrs}).encode()


@defer.inlineCallbacks
def wait_until(predicate, timeout=20.0, step=0.02):
    """Poll C{predicate} (which may return a Deferred) until true; fail after C{timeout}."""
    end = reactor.seconds() + timeout
    while True:
        value = yield defer.maybeDeferred(predicate)
        if value:
            return value
        if reactor.seconds() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        yield task.deferLater(reactor, step, lambda: None)


class NameTests(SynchronousTestCase):
    def test_valid_table_names(self):
        """Only names that are one ZooKeeper path component are looked up."""
        self.assertTrue(valid_table_name("temp"))
        self.assertTrue(valid_table_name("a.b-c_d"))
        for bad in ("", ".", "..", "a/b", "/", "x\x00", "x\n"):
            self.assertFalse(valid_table_name(bad), bad)


class _ZKBase(TestCase):
    timeout = 60

    def setUp(self):
        self.server = self.make_server()
        self.root = f"/mp{next(_roots)}"
        self.admin = quiet_client(self.server.hosts)
        self.admin.start(timeout=15)
        self.addCleanup(self.stop_admin)
        self.admin.ensure_path(self.root)

    def make_server(self):
        return shared_server()

    def stop_admin(self):
        return threads.deferToThread(lambda: (self.admin.stop(), self.admin.close()))

    def _admin(self, f):
        """Run C{f} with the set-up client in a thread, retried while its own session recovers from an outage."""

        def attempt():
            for _ in range(100):
                try:
                    return f()
                except (ConnectionLoss, SessionExpiredError):
                    time.sleep(0.1)
            return f()

        return threads.deferToThread(attempt)

    def write(self, table, data):
        path = f"{self.root}/{table}"
        return self._admin(
            lambda: self.admin.set(path, data) if self.admin.exists(path) else self.admin.create(path, data)
        )

    def delete(self, table):
        return self._admin(lambda: self.admin.delete(f"{self.root}/{table}"))

    @defer.inlineCallbacks
    def table(self, **kw):
        kw.setdefault("session_timeout", 4.0)
        kw.setdefault("read_timeout", 3.0)
        kw.setdefault("max_suspended", 30.0)
        routes = ZooKeeperRouteTable([self.server.hosts], self.root, reactor, **kw)
        routes.startService()
        self.addCleanup(routes.stopService)
        yield wait_until(lambda: routes.is_ready() and routes._listing.names is not None)
        return routes

    @defer.inlineCallbacks
    def cluster_of(self, routes, table):
        try:
            route = yield routes.lookup(table)
        except (TableNotFound, InvalidRoute, RouteUnavailable):
            return None
        return route.cluster_name


class RouteTableTests(_ZKBase):
    @defer.inlineCallbacks
    def test_lookup_and_interface(self):
        """A table's node is read on first query and decoded into a Route."""
        yield self.write("temp", node("c1", "10.0.0.2:34601, 10.0.0.1:34601"))
        routes = yield self.table()
        verifyObject(IRouteTable, routes)
        route = yield routes.lookup("temp")
        self.assertEqual(route, Route("c1", MetaAddrs.parse("10.0.0.1:34601,10.0.0.2:34601")))
        self.assertEqual(routes.clusters(), frozenset({route.meta_addrs}))
        [entry] = routes.describe()
        self.assertEqual((entry["state"], entry["stale"], entry["cluster_name"]), ("ok", False, "c1"))
        self.assertEqual(routes.zk_state, "CONNECTED")

    @defer.inlineCallbacks
    def test_loops_keep_last_good_route(self):
        """
        A node rewritten to the proxy's own address, or to metas found to be
        a metaproxy (reject_route), keeps the last good route, reported
        stale with the reason; a good node afterwards is served again.
        """
        own = SelfAddresses(is_local=lambda ip: ip == "127.0.0.1")
        own.add("127.0.0.1", 34999)
        yield self.write("temp", node("c1", "10.0.0.1:34601"))
        routes = yield self.table(self_addresses=own)
        self.assertEqual((yield self.cluster_of(routes, "temp")), "c1")
        yield self.write("temp", node("self", "127.0.0.1:34999"))
        yield wait_until(lambda: routes.describe()[0]["stale"])
        [entry] = routes.describe()
        self.assertEqual((entry["cluster_name"], entry["state"]), ("c1", "stale"))
        self.assertIn("own listening address", entry["error"])
        self.assertEqual((yield self.cluster_of(routes, "temp")), "c1")
        yield self.write("temp", node("c2", "10.0.0.2:34601"))
        yield wait_until(lambda: self.cluster_of(routes, "temp").addCallback(lambda c: c == "c2"))
        routes.reject_route("temp", MetaAddrs.parse("10.0.0.2:34601"), "10.0.0.2:34601 is a metaproxy")
        self.assertEqual((yield self.cluster_of(routes, "temp")), "c1")
        [entry] = routes.describe()
        self.assertEqual((entry["state"], entry["stale"], entry["error"]), ("stale", True, "10.0.0.2:34601 is a metaproxy"))
        yield self.write("temp", node("c3", "10.0.0.3:34601"))
        yield wait_until(lambda: self.cluster_of(routes, "temp").addCallback(lambda c: c == "c3"))
        self.assertEqual(routes.describe()[0]["state"], "ok")

    @defer.inlineCallbacks
    def test_concurrent_first_queries_share_one_read(self):
        """Many concurrent first queries for one table cost exactly one ZooKeeper read."""
        yield self.write("temp", node("c1", "10.0.0.1:34601"))
        routes = yield self.table()
        listed = routes.zk_request_count
        results = yield defer.gatherResults([routes.lookup("temp") for _ in range(200)])
        self.assertEqual({r.cluster_name for r in results}, {"c1"})
        self.assertEqual(routes.zk_request_count, listed + 1)
        yield routes.lookup("temp")
        self.assertEqual(routes.zk_request_count, listed + 1)

    @defer.inlineCallbacks
    def test_change_is_seen(self):
        """Rewriting the node moves the next queries (the watch is re-armed each time)."""
        yield self.write("temp", node("c1", "10.0.0.1:34601"))
        routes = yield self.table()
        self.assertEqual((yield self.cluster_of(routes, "temp")), "c1")
        for n in range(2, 5):
            yield self.write("temp", node(f"c{n}", f"10.0.0.{n}:34601"))
            yield wait_until(lambda n=n: self.cluster_of(routes, "temp").addCallback(lambda c: c == f"c{n}"))

    @defer.inlineCallbacks
    def test_delete_and_recreate(self):
        """A deleted node removes the route; re-creating it is noticed (exists-watch)."""
        yield self.write("temp", node("c1", "10.0.0.1:34601"))
        routes = yield self.table()
        yield routes.lookup("temp")
        yield self.delete("temp")
        yield wait_until(lambda: self.cluster_of(routes, "temp").addCallback(lambda c: c is None))
        yield self.write("temp", node("c2", "10.0.0.2:34601"))
        yield wait_until(lambda: self.cluster_of(routes, "temp").addCallback(lambda c: c == "c2"))

    @defer.inlineCallbacks
    def test_unknown_names_cost_no_read(self):
        """
        Names not listed under the root are not found with no read of their
        own and no watch: concurrent ones share one current listing (a sync
        and a list); a creation is noticed.
        """
        routes = yield self.table()
        yield self.assertFailure(routes.lookup("ghost0"), TableNotFound)
        reads = routes.zk_request_count
        lookups = [self.assertFailure(routes.lookup(f"ghost{n}"), TableNotFound) for n in range(200)]
        yield defer.gatherResults(lookups)
        self.assertLessEqual(routes.zk_request_count, reads + 4)  # one round, then one for the rest
        self.assertEqual((routes.describe(), routes.zk_watches), ([], 1))
        yield self.write("ghost7", node("c9", "10.0.0.9:34601"))
        yield wait_until(lambda: self.cluster_of(routes, "ghost7").addCallback(lambda c: c == "c9"))

    @defer.inlineCallbacks
    def _created_then_queried(self, routes, tables, prefix):
        """
        Create each table's node, and from the moment the create returned
        query it every 1 ms for 50 ms.

        @return: how many lookups failed with L{TableNotFound}, and how many were made.
        """
        denied = made = 0
        for n in range(tables):
            name = f"{prefix}{n}"
            yield self.write(name, node("c1", "10.0.0.1:34601"))
            for _ in range(50):
                made += 1
                try:
                    yield routes.lookup(name)
                except TableNotFound:
                    denied += 1
                yield task.deferLater(reactor, 0.001, lambda: None)
        return denied, made

    @defer.inlineCallbacks
    def test_new_table_never_denied(self):
        """
        A node created by another client and queried at once, then every
        1 ms: never "no such table", idle or with 2 000 lookups of unknown
        names in flight all along.
        """
        routes = yield self.table(max_waiting=5000)
        denied, made = yield self._created_then_queried(routes, 10, "new")
        self.assertEqual((denied, made), (0, 500))

        busy = {"on": True, "answered": 0}

        def keep_one_going(n):
            if not busy["on"]:
                return None
            d = routes.lookup(f"unknown{n % 100000}")

            def again(result):
                busy["answered"] += 1
                reactor.callLater(0, keep_one_going, n + 2000)

            d.addBoth(again)
            return None

        for n in range(2000):
            keep_one_going(n)
        denied, made = yield self._created_then_queried(routes, 10, "busy")
        busy["on"] = False
        self.assertEqual((denied, made), (0, 500))
        self.assertGreater(busy["answered"], 2000)

    @defer.inlineCallbacks
    def test_bad_data_isolated(self):
        """Bad JSON fails only that table, with a warning naming the node; fixing it heals it."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        yield self.write("good", node("c1", "10.0.0.1:34601"))
        yield self.write("bad", b"{not json")
        yield self.write("badaddr", node("c1", "no-port-here"))
        routes = yield self.table()
        f = yield self.assertFailure(routes.lookup("bad"), InvalidRoute)
        self.assertIn(f"{self.root}/bad", str(f))
        yield self.assertFailure(routes.lookup("badaddr"), InvalidRoute)
        self.assertEqual((yield self.cluster_of(routes, "good")), "c1")
        warnings = [e for e in observer if e["log_level"] == LogLevel.warn and e.get("node") == f"{self.root}/bad"]
        self.assertEqual(len(warnings), 1)
        yield self.write("bad", node("c2", "10.0.0.2:34601"))
        yield wait_until(lambda: self.cluster_of(routes, "bad").addCallback(lambda c: c == "c2"))

    @defer.inlineCallbacks
    def test_invalid_names_never_reach_zookeeper(self):
        """Names that are not one path component are not found, without a read."""
        routes = yield self.table()
        listed = routes.zk_request_count
        for bad in ("", "..", "a/b"):
            yield self.assertFailure(routes.lookup(bad), TableNotFound)
        self.assertEqual(routes.zk_request_count, listed)

    @defer.inlineCallbacks
    def test_capacity_eviction(self):
        """The cache keeps the most recently used tables; an evicted one stops being watched."""
        for t in ("a", "b", "c"):
            yield self.write(t, node(f"c_{t}", "10.0.0.1:34601"))
        routes = yield self.table(capacity=2)
        yield routes.lookup("a")
        yield routes.lookup("b")
        yield routes.lookup("a")
        yield routes.lookup("c")
        self.assertEqual(sorted(e["table"] for e in routes.describe()), ["a", "c"])
        reads = routes.zk_request_count
        yield self.write("b", node("c_b2", "10.0.0.1:34601"))
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(routes.zk_request_count, reads)
        self.assertEqual((yield self.cluster_of(routes, "b")), "c_b2")


class OutageTests(_ZKBase):
    """Destructive cases, each with its own ZooKeeper server."""

    def make_server(self):
        server = ZooKeeperServer()
        server.start()
        self.addCleanup(server.destroy)
        return server

    @defer.inlineCallbacks
    def test_restart_serves_stale_then_refreshes(self):
        """While ZooKeeper is down cached routes are served (stale); after it returns, changes are seen."""
        yield self.write("temp", node("c1", "10.0.0.1:34601"))
        routes = yield self.table()
        yield routes.lookup("temp")
        yield threads.deferToThread(self.server.stop)
        yield wait_until(lambda: routes.zk_state != "CONNECTED")
        self.assertEqual((yield self.cluster_of(routes, "temp")), "c1")
        self.assertTrue(routes.describe()[0]["stale"])
        yield threads.deferToThread(self.server.start)
        yield wait_until(lambda: routes.zk_state == "CONNECTED")
        yield self.write("temp", node("c2", "10.0.0.2:34601"))
        yield wait_until(lambda: self.cluster_of(routes, "temp").addCallback(lambda c: c == "c2"))
        yield wait_until(lambda: not routes.describe()[0]["stale"])

    @defer.inlineCallbacks
    def test_session_expiry_rearms(self):
        """After a real session expiry the watches are re-armed (no stale-forever)."""
        yield self.write("temp", node("c1", "10.0.0.1:34601"))
        routes = yield self.table()
        yield routes.lookup("temp")
        old = routes._zk.client.client_id

        def steal():
            thief = quiet_client(self.server.hosts, client_id=old)
            thief.start(timeout=15)
            thief.stop()
            thief.close()

        yield threads.deferToThread(steal)
        yield wait_until(lambda: routes._zk.client.client_id not in (None, old) and routes.zk_state == "CONNECTED")
        yield self.write("temp", node("c2", "10.0.0.2:34601"))
        yield wait_until(lambda: self.cluster_of(routes, "temp").addCallback(lambda c: c == "c2"))

    @defer.inlineCallbacks
    def test_wiped_server_recovers_via_watchdog(self):
        """A server that lost its data is rejoined through a forced new session."""
        yield self.write("temp", node("c1", "10.0.0.1:34601"))
        routes = yield self.table(max_suspended=1.0)
        yield routes.lookup("temp")
        yield self.stop_admin()
        yield threads.deferToThread(self.server.wipe)
        self.admin = quiet_client(self.server.hosts)
        yield threads.deferToThread(self.admin.start, 15)
        yield wait_until(lambda: not routes.is_ready(), timeout=40)
        self.assertEqual(routes.unready_reason(), f"zookeeper.root {self.root} does not exist")
        yield threads.deferToThread(self.admin.ensure_path, self.root)
        yield self.write("temp", node("c3", "10.0.0.3:34601"))
        yield wait_until(lambda: self.cluster_of(routes, "temp").addCallback(lambda c: c == "c3"))

    @defer.inlineCallbacks
    def test_zookeeper_down_at_start(self):
        """With ZooKeeper down, the table starts, is not ready, and a query fails retryably in time."""
        yield threads.deferToThread(self.server.stop)
        routes = ZooKeeperRouteTable([self.server.hosts], self.root, reactor, read_timeout=0.5)
        routes.startService()
        self.addCleanup(routes.stopService)
        self.assertFalse(routes.is_ready())
        yield self.assertFailure(routes.lookup("temp"), RouteUnavailable)
        yield threads.deferToThread(self.server.start)
        yield wait_until(routes.is_ready)
        yield self.assertFailure(routes.lookup("temp"), TableNotFound)


class HealthTests(_ZKBase):
    @defer.inlineCallbacks
    def test_missing_root_makes_readyz_false_with_cause(self):
        """A zookeeper.root that does not exist: /readyz 503 naming it, a retryable error; creating it heals."""
        from metaproxy.ops.admin import build_admin_root
        from metaproxy.test.test_admin import _get

        routes = ZooKeeperRouteTable([self.server.hosts], self.root + "/typo", reactor, read_timeout=3.0)
        routes.startService()
        self.addCleanup(routes.stopService)
        yield wait_until(lambda: routes.unready_reason() == f"zookeeper.root {self.root}/typo does not exist")
        code, body, _ = _get(build_admin_root(routes, {}), b"/readyz")
        doc = json.loads(body)
        self.assertEqual((code, doc["unmet"]), (503, ["route_source"]))
        self.assertEqual(doc["causes"], {"route_source": f"zookeeper.root {self.root}/typo does not exist"})
        yield self.assertFailure(routes.lookup("temp"), RouteUnavailable)
        yield threads.deferToThread(self.admin.ensure_path, self.root + "/typo")
        yield wait_until(routes.is_ready)
        yield self.assertFailure(routes.lookup("temp"), TableNotFound)

    @defer.inlineCallbacks
    def test_last_known_good_survives_bad_write(self):
        """A truncated write keeps the table's last good route (stale, reason by position); a fix replaces it."""
        yield self.write("temp", node("c1", "10.0.0.1:34601"))
        routes = yield self.table()
        yield routes.lookup("temp")
        yield self.write("temp", b'{"cluster_name": "c2", "meta_a')
        yield wait_until(lambda: routes.describe()[0]["state"] == "stale")
        [entry] = routes.describe()
        self.assertTrue(entry["error"].startswith("invalid JSON at line 1 column"), entry["error"])
        self.assertEqual((yield self.cluster_of(routes, "temp")), "c1")
        yield self.write("temp", node("c2", "10.0.0.2:34601"))
        yield wait_until(lambda: self.cluster_of(routes, "temp").addCallback(lambda c: c == "c2"))
        self.assertEqual(routes.describe()[0]["state"], "ok")
