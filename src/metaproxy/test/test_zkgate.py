# -*- test-case-name: metaproxy.test.test_zkgate -*-
"""
Tests for the reactor side of L{metaproxy.routes.zkbridge} and L{metaproxy.routes.zookeeper}
with fakes (no ZooKeeper, no threads, a fake clock): the gate in front of
kazoo, failing fast while disconnected, waiter cancellation, the error
state, last-known-good on bad data, positional parse errors and quiet,
reasoned log lines.
"""

import json

from kazoo.client import KazooState
from kazoo.exceptions import ConnectionLoss, NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent, ZnodeStat
from twisted.internet import defer, task
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.errors import InvalidRoute, RouteUnavailable, TableNotFound
from metaproxy.routes.route import MetaAddrs, Route, SelfAddresses
from metaproxy.routes.zkbridge import (
    CONNECTED, LOST, SUSPENDED, OneAtATime, TxZooKeeper, ZooKeeperUnavailable, failure_reason,
)
from metaproxy.routes.zookeeper import ZooKeeperRouteTable, route_changes


def node(cluster, addrs):
    return json.dumps({"cluster_name": cluster, "meta_addrs": addrs}).encode()


def stat(version):
    return ZnodeStat(1, version, 0, 0, version, 0, 0, 0, 10, 0, 1)


class _Clock(task.Clock):
    """A clock whose callFromThread runs at once (the fakes have no threads)."""

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


class _AsyncResult:
    def __init__(self):
        self.links = []
        self.value = self.exc = None

    def rawlink(self, f):
        self.links.append(f)

    def get_nowait(self):
        if self.exc is not None:
            raise self.exc
        return self.value

    def fire(self, value=None, exc=None):
        self.value, self.exc = value, exc
        for f in self.links:
            f(self)


class _FakeKazoo:
    """What TxZooKeeper uses of a KazooClient; records every request sent."""

    client_id = (0x42, b"")

    def __init__(self):
        self.sent = []
        self.listener = None

    def add_listener(self, f):
        self.listener = f

    def start_async(self):
        pass

    def get_async(self, path, watch=None):
        r = _AsyncResult()
        self.sent.append((path, r))
        return r


class GateTests(SynchronousTestCase):
    def setUp(self):
        self.clock = _Clock()
        self.kazoo = _FakeKazoo()
        self.zk = TxZooKeeper(["127.0.0.1:1"], self.clock, client=self.kazoo, max_inflight=2, max_queued=3,
                              reminder=10.0)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.zk.start()

    def test_not_connected_fails_fast_without_touching_kazoo(self):
        """While the session is not CONNECTED a read fails at once with the reason, and kazoo is not called."""
        for i in range(1000):
            self.failureResultOf(self.zk.get(f"/r/t{i}"), ZooKeeperUnavailable)
        self.assertEqual(self.kazoo.sent, [])

    def test_inflight_capped_and_queue_bounded(self):
        """At most max_inflight reads reach kazoo; the rest wait in a bounded queue and go on as slots free."""
        self.kazoo.listener(KazooState.CONNECTED)
        ds = [self.zk.get(f"/r/t{i}") for i in range(6)]
        self.assertEqual(len(self.kazoo.sent), 2)
        self.failureResultOf(ds[5], ZooKeeperUnavailable)  # 2 in flight + 3 queued
        self.kazoo.sent[0][1].fire((b"x", None))
        self.assertEqual(self.successResultOf(ds[0]), (b"x", None))
        self.assertEqual((len(self.kazoo.sent), self.zk.inflight), (3, 2))

    def test_queue_failed_when_connection_goes(self):
        """Queued reads fail as soon as the session is suspended; nothing more is sent."""
        self.kazoo.listener(KazooState.CONNECTED)
        ds = [self.zk.get(f"/r/t{i}") for i in range(4)]
        self.kazoo.listener(KazooState.SUSPENDED)
        self.failureResultOf(ds[2], ZooKeeperUnavailable)
        self.failureResultOf(ds[3], ZooKeeperUnavailable)
        self.kazoo.sent[0][1].fire(exc=ConnectionLoss())
        self.failureResultOf(ds[0], ConnectionLoss)
        self.assertEqual(len(self.kazoo.sent), 2)

    def test_one_line_per_state_change_with_reason_and_reminder(self):
        """kazoo's chatter is folded: one warning per state change with kazoo's reason, then a reminder."""
        self.assertEqual(self.zk.reason, "")  # empty until kazoo says something
        self.kazoo.listener(KazooState.CONNECTED)
        logger = TxZooKeeper(["127.0.0.1:1"], self.clock).client.logger
        for _ in range(20):  # what kazoo logs while ZooKeeper is down: dropped, not logged
            logger.warning("Connection dropped: %s", "socket connection error: Connection refused")
            logger.warning("Transition to CONNECTING")
        self.zk.reason = "Connection dropped: socket connection error: Connection refused"
        self.kazoo.listener(KazooState.SUSPENDED)
        self.clock.pump([10, 10, 5])
        lines = [e for e in self.log if e.get("log_namespace") == "metaproxy.routes.zkbridge"]
        texts = [e["log_format"].format(**e) for e in lines]
        self.assertEqual(texts[0], "zookeeper CONNECTED (session 42, no credential)")
        self.assertIn("zookeeper SUSPENDED: Connection dropped: socket connection error: Connection refused",
                      texts)
        self.assertEqual([t for t in texts if "still" in t][-1],
                         "zookeeper still SUSPENDED after 20s: Connection dropped: socket connection error: "
                         "Connection refused")
        self.assertEqual(sum("still SUSPENDED" in t for t in texts), 2)
        self.assertFalse([e for e in self.log if "Transition" in str(e.get("text", ""))])

    def test_kazoo_logger_keeps_reason(self):
        """The logger given to kazoo records its last warning as the reason and logs none of them."""
        zk = TxZooKeeper(["127.0.0.1:1"], self.clock)
        zk.client.logger.warning("Connection dropped: %s", "boom")
        zk.client.logger.warning("Transition to CONNECTING")
        self.assertEqual(zk.reason, "Connection dropped: boom")
        self.assertFalse([e for e in self.log if "boom" in str(e.get("text", ""))])

    def test_failure_reason_never_empty(self):
        """An exception without a message is named by its type."""
        self.assertEqual(failure_reason(ConnectionLoss()), "ConnectionLoss()")
        self.assertEqual(failure_reason(ValueError("bad\nmore")), "bad")


class OneAtATimeTests(SynchronousTestCase):
    def setUp(self):
        self.started = []
        self.allowed = True
        self.one = OneAtATime(self.start, lambda: self.allowed)

    def start(self):
        d = defer.Deferred()
        self.started.append(d)
        return d

    def test_requests_while_running_run_once_more(self):
        """Any number of requests during a read cause exactly one more read after it."""
        self.one.request()
        self.one.request()
        self.one.request()
        self.assertEqual(len(self.started), 1)
        self.started[0].callback(None)
        self.assertEqual(len(self.started), 2)
        self.started[1].callback(None)
        self.assertEqual((len(self.started), self.one.running), (2, False))

    def test_no_rerun_when_not_allowed(self):
        """A pending request waits while may_rerun says no (the owner re-reads on reconnect)."""
        self.one.request()
        self.one.request()
        self.allowed = False
        self.started[0].callback(None)
        self.assertEqual((len(self.started), self.one.running), (1, False))

    def test_reset_forgets_the_running_read(self):
        """After reset a new read starts at once; the old read's late answer does not disturb it."""
        self.one.request()
        self.one.reset()
        self.one.request()
        self.assertEqual(len(self.started), 2)
        self.started[0].callback(None)
        self.one.request()
        self.assertEqual(len(self.started), 2)  # the second read still runs
        self.started[1].callback(None)
        self.assertEqual(len(self.started), 3)


class _FakeZK:
    """A TxZooKeeper stand-in: records reads, lets the test answer them."""

    def __init__(self):
        self.state = LOST
        self.reason = "Connection refused"
        self.inflight = 0
        self.reads = []
        self.listeners = []
        self.watch = None

    def watcher(self, callback):
        self.watch = callback
        return callback

    def add_state_listener(self, f):
        self.listeners.append(f)

    def start(self):
        pass

    def stop(self):
        return defer.succeed(None)

    def set_state(self, state, session=1):
        self.state = state
        if state == CONNECTED:
            self.reason = ""
        for f in self.listeners:
            f(state, session)

    def _read(self, op, path):
        if self.state != CONNECTED:
            return defer.fail(ZooKeeperUnavailable(f"ZooKeeper is {self.state}"))
        d = defer.Deferred()
        self.reads.append((op, path, d))
        return d

    def get(self, path, watch=None):
        return self._read("get", path)

    def exists(self, path, watch=None):
        return self._read("exists", path)

    def get_children(self, path, watch=None):
        return self._read("ls", path)

    def sync(self, path):
        return self._read("sync", path)

    def answer(self, op, path, result=None, exc=None):
        for i, (o, p, d) in enumerate(self.reads):
            if (o, p) == (op, path):
                del self.reads[i]
                d.errback(exc) if exc is not None else d.callback(result)
                return
        raise AssertionError(f"no pending {op} {path}: {[(o, p) for o, p, _ in self.reads]}")


class RouteTableFakeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.zk = _FakeZK()
        self.guard = SelfAddresses(is_local=lambda ip: ip.startswith("127.") or ip == "10.9.9.9")
        self.routes = ZooKeeperRouteTable([], "/pc", self.clock, zk=self.zk, read_timeout=5.0,
                                          self_addresses=self.guard)
        self.routes.startService()
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def connect(self, tables=("t",)):
        self.zk.set_state(CONNECTED)
        self.zk.answer("ls", "/pc", list(tables))

    def load(self, table, data, version=1):
        d = self.routes.lookup(table)
        self.zk.answer("get", f"/pc/{table}", (data, stat(version)))
        return d

    def warnings(self):
        return [e for e in self.log if e["log_level"] == LogLevel.warn]

    def current(self, tables=("t",)):
        """Answer the sync and the listing that confirm names missing from the listing."""
        self.zk.answer("sync", "/pc", "/pc")
        self.zk.answer("ls", "/pc", list(tables))

    def test_uncached_fails_fast_while_not_connected(self):
        """Before any session, and during an outage, uncached tables fail at once, never waiting."""
        f = self.failureResultOf(self.routes.lookup("t"), RouteUnavailable)
        self.assertIn("ZooKeeper is LOST: Connection refused", str(f.value))
        self.connect()
        self.successResultOf(self.load("t", node("c1", "10.0.0.1:1")))
        self.zk.set_state(SUSPENDED)
        for i in range(5000):
            self.failureResultOf(self.routes.lookup(f"u{i}"), RouteUnavailable)
        self.assertEqual(self.successResultOf(self.routes.lookup("t")).cluster_name, "c1")
        self.assertEqual(self.zk.reads, [])
        self.assertEqual(len(self.routes.describe()), 1)

    def test_unlisted_name_not_found_without_read(self):
        """
        A name absent from the root's listing is not found once a current
        listing (a sync and a list sent behind it) says so: no read of its
        node, no entry. One confirmation runs at a time; names arriving
        meanwhile share the next.
        """
        self.connect(["t"])
        d1, d2, d3 = (self.routes.lookup(n) for n in ("nope1", "nope2", "nope3"))
        self.assertNoResult(d1)
        self.assertEqual([(o, p) for o, p, _ in self.zk.reads], [("sync", "/pc"), ("ls", "/pc")])
        self.current(["t"])
        self.failureResultOf(d1, TableNotFound)
        self.assertNoResult(d2)  # asked while that confirmation ran: the next one answers it
        self.current(["t"])
        self.failureResultOf(d2, TableNotFound)
        self.failureResultOf(d3, TableNotFound)
        self.assertEqual((self.zk.reads, self.routes.describe()), ([], []))

    def test_name_created_a_moment_ago_is_found(self):
        """A name the (lagging) listing lacks but the current one has is read and served, never denied."""
        self.connect(["t"])
        d = self.routes.lookup("fresh")
        self.current(["t", "fresh"])
        self.zk.answer("get", "/pc/fresh", (node("c1", "10.0.0.1:1"), stat(1)))
        self.assertEqual(self.successResultOf(d).cluster_name, "c1")

    def test_names_arriving_during_a_confirmation_wait_for_the_next(self):
        """A lookup made while a confirmation runs is answered by the next one (sent after it), not that one."""
        self.connect(["t"])
        first = self.routes.lookup("a")
        self.zk.answer("sync", "/pc", "/pc")
        second = self.routes.lookup("b")
        self.zk.answer("ls", "/pc", ["t"])
        self.failureResultOf(first, TableNotFound)
        self.assertNoResult(second)
        self.current(["t", "b"])
        self.zk.answer("get", "/pc/b", (node("c2", "10.0.0.2:1"), stat(1)))
        self.assertEqual(self.successResultOf(second).cluster_name, "c2")

    def test_confirmation_cut_by_outage_is_retryable(self):
        """ZooKeeper going away while a name is being confirmed answers the retryable error, not 'no such table'."""
        self.connect(["t"])
        d = self.routes.lookup("maybe")
        self.zk.set_state(SUSPENDED)
        self.failureResultOf(d, RouteUnavailable)

    def test_lookups_wait_for_listing(self):
        """Lookups made before the listing arrives are answered from it."""
        self.zk.set_state(CONNECTED)
        d1, d2 = self.routes.lookup("t"), self.routes.lookup("nope")
        self.assertNoResult(d1)
        self.zk.answer("ls", "/pc", ["t"])
        self.zk.answer("ls", "/pc", ["t"])  # the listing asked for again meanwhile
        self.current(["t"])
        self.failureResultOf(d2, TableNotFound)
        self.zk.answer("get", "/pc/t", (node("c1", "10.0.0.1:1"), stat(1)))
        self.assertEqual(self.successResultOf(d1).cluster_name, "c1")

    def test_missing_root_not_ready_with_cause(self):
        """A missing root is a warned, named unreadiness and a retryable error, not 'no such table'."""
        self.zk.set_state(CONNECTED)
        d = self.routes.lookup("t")
        self.zk.answer("ls", "/pc", exc=NoNodeError())
        self.failureResultOf(d, RouteUnavailable)
        self.assertFalse(self.routes.is_ready())
        self.assertEqual(self.routes.unready_reason(), "zookeeper.root /pc does not exist")
        self.assertEqual(len([w for w in self.warnings() if w.get("root") == "/pc"]), 1)
        self.failureResultOf(self.routes.lookup("t"), RouteUnavailable)
        self.zk.answer("exists", "/pc", ZnodeStat(1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1))
        self.zk.answer("ls", "/pc", ["t"])
        self.assertTrue(self.routes.is_ready())

    def test_cancel_one_waiter_keeps_shared_read(self):
        """A waiter that gives up (the request's deadline) leaves the shared read to the others."""
        self.connect()
        d1, d2 = self.routes.lookup("t"), self.routes.lookup("t")
        d1.cancel()
        self.failureResultOf(d1, defer.CancelledError)
        self.zk.answer("get", "/pc/t", (node("c1", "10.0.0.1:1"), stat(1)))
        self.assertEqual(self.successResultOf(d2).cluster_name, "c1")

    def test_first_read_times_out_alone(self):
        """A waiter past read_timeout fails retryably; the read goes on and serves later lookups."""
        self.connect()
        d1 = self.routes.lookup("t")
        self.clock.advance(4)
        d2 = self.routes.lookup("t")
        self.clock.advance(1)
        f = self.failureResultOf(d1, RouteUnavailable)
        self.assertEqual(str(f.value), "ZooKeeper did not answer for /pc/t in time")
        self.assertNoResult(d2)
        self.zk.answer("get", "/pc/t", (node("c1", "10.0.0.1:1"), stat(1)))
        self.assertEqual(self.successResultOf(d2).cluster_name, "c1")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_event_overtaking_a_read_is_not_lost(self):
        """A change event that arrives before the answer to a running read causes one more read."""
        self.connect()
        self.successResultOf(self.load("t", node("c1", "10.0.0.1:1")))
        self.zk.watch(WatchedEvent(EventType.CHANGED, CONNECTED, "/pc/t"))
        self.zk.watch(WatchedEvent(EventType.CHANGED, CONNECTED, "/pc/t"))  # overtakes the answer
        self.assertEqual([(o, p) for o, p, _ in self.zk.reads], [("get", "/pc/t")])
        self.zk.answer("get", "/pc/t", (node("c1", "10.0.0.1:1"), stat(1)))
        self.zk.answer("get", "/pc/t", (node("c2", "10.0.0.2:1"), stat(2)))
        self.assertEqual(self.successResultOf(self.routes.lookup("t")).cluster_name, "c2")
        self.assertEqual(self.zk.reads, [])

    def test_child_event_overtaking_a_listing_is_not_lost(self):
        """A child event that arrives before the answer to a running listing causes one more listing."""
        self.connect(["t"])
        self.zk.watch(WatchedEvent(EventType.CHILD, CONNECTED, "/pc"))
        self.zk.watch(WatchedEvent(EventType.CHILD, CONNECTED, "/pc"))
        self.zk.answer("ls", "/pc", ["t"])
        self.zk.answer("ls", "/pc", ["t", "new"])
        d = self.routes.lookup("new")
        self.zk.answer("get", "/pc/new", (node("c3", "10.0.0.3:1"), stat(1)))
        self.assertEqual(self.successResultOf(d).cluster_name, "c3")

    def test_missing_node_not_found_quickly(self):
        """A listed table whose node is gone is not found as soon as ZooKeeper says NoNode."""
        self.connect()
        d = self.routes.lookup("t")
        self.zk.answer("get", "/pc/t", exc=NoNodeError())
        self.failureResultOf(d, TableNotFound)
        d = self.routes.lookup("t")
        self.current([])
        self.failureResultOf(d, TableNotFound)

    def test_first_read_cut_by_outage_shows_error(self):
        """A first read pending when ZooKeeper goes away answers at once and shows state error with a reason."""
        self.connect()
        d = self.routes.lookup("t")
        self.zk.reason = "Connection dropped: socket connection broken"
        self.zk.set_state(SUSPENDED)
        f = self.failureResultOf(d, RouteUnavailable)
        self.assertIn("ZooKeeper is SUSPENDED: Connection dropped", str(f.value))
        [entry] = self.routes.describe()
        self.assertEqual(entry["state"], "error")
        self.assertIn("socket connection broken", entry["error"])
        self.zk.answer("get", "/pc/t", exc=ConnectionLoss())
        [entry] = self.routes.describe()
        self.assertEqual(entry["error"], "reading /pc/t failed: ConnectionLoss()")

    def test_last_known_good_on_bad_data(self):
        """Unparsable data keeps the last good route (stale, with a positional reason); a valid value replaces it."""
        self.connect()
        self.successResultOf(self.load("t", node("c1", "10.0.0.1:1")))
        secret = b'{"cluster_name": "c1", "password": "hunter2", '
        self.zk.watch(WatchedEvent(EventType.CHANGED, CONNECTED, "/pc/t"))
        self.zk.answer("get", "/pc/t", (secret, stat(2)))
        self.assertEqual(self.successResultOf(self.routes.lookup("t")).cluster_name, "c1")
        [entry] = self.routes.describe()
        self.assertEqual((entry["state"], entry["stale"]), ("stale", True))
        self.assertTrue(entry["error"].startswith("invalid JSON at line 1 column "), entry["error"])
        [warning] = [w for w in self.warnings() if w.get("node") == "/pc/t"]
        self.assertNotIn("hunter2", json.dumps({k: str(v) for k, v in warning.items()}))
        self.assertNotIn("hunter2", json.dumps(self.routes.describe()))
        self.zk.watch(WatchedEvent(EventType.CHANGED, CONNECTED, "/pc/t"))
        self.zk.answer("get", "/pc/t", (node("c2", "10.0.0.2:1"), stat(3)))
        self.assertEqual(self.successResultOf(self.routes.lookup("t")).cluster_name, "c2")
        self.zk.watch(WatchedEvent(EventType.DELETED, CONNECTED, "/pc/t"))
        self.zk.answer("get", "/pc/t", exc=NoNodeError())
        d = self.routes.lookup("t")
        self.current([])
        self.failureResultOf(d, TableNotFound)

    def test_bad_first_value_is_invalid(self):
        """A table never read well fails with InvalidRoute naming the node and the position, not the content."""
        self.connect()
        f = self.failureResultOf(self.load("t", node("c1", "10.0.0.1:1,sekrit-host")), InvalidRoute)
        self.assertEqual(str(f.value), "/pc/t: meta_addrs: address 2 of 2 is not host:port")

    def test_moved_says_what_changed(self):
        """A change of metas alone is logged as such, not as 'moved: D -> D'."""
        old = Route("D", MetaAddrs.parse("10.0.0.1:1"))
        self.assertEqual(route_changes(old, Route("D", MetaAddrs.parse("10.0.0.2:1"))),
                         "metas 10.0.0.1:1 -> 10.0.0.2:1")
        self.assertEqual(route_changes(old, Route("E", MetaAddrs.parse("10.0.0.1:1"))), "cluster D -> E")

    def test_self_loop_refused(self):
        """A route naming the proxy's own listening address fails with InvalidRoute and a warning."""
        self.guard.add("0.0.0.0", 34601)
        self.connect(["t", "u"])
        f = self.failureResultOf(self.load("t", node("c1", "10.0.0.1:34601,10.9.9.9:34601")), InvalidRoute)
        self.assertIn("10.9.9.9:34601 is this proxy's own listening address", str(f.value))
        self.assertEqual(self.successResultOf(self.load("u", node("c2", "10.0.0.1:34601"))).cluster_name, "c2")
        states = {e["table"]: e["state"] for e in self.routes.describe()}
        self.assertEqual(states, {"t": "invalid", "u": "ok"})
        self.assertEqual(len([w for w in self.warnings() if "self-loop" in str(w.get("problem"))]), 1)

    def test_metrics(self):
        """The route cache's states (stale and error included), reads in flight and watches are exported."""
        from metaproxy.ops.metrics import Metrics

        metrics = Metrics()
        metrics.watch_route_table(self.routes)
        self.connect(["t", "u", "v"])
        self.successResultOf(self.load("t", node("c1", "10.0.0.1:1")))
        self.zk.watch(WatchedEvent(EventType.CHANGED, CONNECTED, "/pc/t"))
        self.zk.answer("get", "/pc/t", (b"{", stat(2)))
        d = self.routes.lookup("u")
        self.zk.answer("get", "/pc/u", exc=ConnectionLoss())
        self.failureResultOf(d, RouteUnavailable)
        self.assertNoResult(self.routes.lookup("v"))
        self.zk.inflight = 1

        def value(name, **labels):
            return metrics.registry.get_sample_value(name, labels)

        states = {s: value("metaproxy_route_cache_entries", state=s)
                  for s in ("ok", "stale", "missing", "invalid", "loading", "error")}
        self.assertEqual(states, {"ok": 0, "stale": 1, "missing": 0, "invalid": 0, "loading": 1, "error": 1})
        self.assertEqual(value("metaproxy_zk_reads_inflight"), 1.0)
        self.assertEqual(value("metaproxy_zk_watches"), 2.0)  # the root, and t (re-armed by its last read)


class ConfigTests(SynchronousTestCase):
    def test_max_reads_inflight(self):
        """zookeeper.max_reads_inflight defaults to 32 and is refused, located, outside 1..128."""
        from metaproxy.config import ConfigError, parse_config

        base = "zookeeper:\n  address: [127.0.0.1:2181]\n"
        self.assertEqual(parse_config(base).zookeeper.max_reads_inflight, 32)
        e = self.assertRaises(ConfigError, parse_config, base + "  max_reads_inflight: 500\n", "c.yaml")
        self.assertIn("c.yaml:3:23: must be 1..128 @ $.zookeeper.max_reads_inflight", str(e))
