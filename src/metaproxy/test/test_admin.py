# -*- test-case-name: metaproxy.test.test_admin -*-
"""
Tests for L{metaproxy.ops.admin}.
"""

import json

import socket

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import Logger, formatEvent

from metaproxy.ops import admin as adminmod
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from metaproxy.ops.admin import QuietSite, build_admin_root, build_admin_site
from metaproxy.reporters.falcon import _BodyCollector

_A = ["10.0.0.1:34601", "10.0.0.2:34601"]
_B = ["10.0.1.1:34601"]


class _Routes:
    """A route table fake with two clusters and a ZooKeeper state."""

    zk_state = "CONNECTED"

    def __init__(self):
        self.ready = True

    def is_ready(self):
        return self.ready

    def describe(self):
        return [
            {"table": "temp", "cluster_name": "c1", "meta_addrs": _A,
             "state": "ok", "age": 1.0, "stale": False, "error": None},
            {"table": "stat", "cluster_name": "c1", "meta_addrs": _A,
             "state": "ok", "age": 2.0, "stale": True, "error": "zookeeper SUSPENDED"},
            {"table": "gone", "cluster_name": None, "meta_addrs": [],
             "state": "missing", "age": 3.0, "stale": False, "error": None},
            {"table": "other", "cluster_name": "c2", "meta_addrs": _B,
             "state": "ok", "age": 0.5, "stale": False, "error": None},
        ]


def _get(root, path, method=b"GET"):
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    resource = getChildForRequest(root, request)
    body = resource.render(request)
    return request.responseCode or 200, body, request


class AdminTests(SynchronousTestCase):
    def setUp(self):
        self.routes = _Routes()
        self.is_ready = True
        self.asked = []

        def leaders(addrs):
            self.asked.append(addrs)
            return "10.0.0.2:34601" if addrs == ",".join(_A) else None

        self.root = build_admin_root(self.routes, lambda: self.is_ready, leaders=leaders)

    def test_healthz(self):
        """/healthz answers 200 ok."""
        code, body, _ = _get(self.root, b"/healthz")
        self.assertEqual((code, body), (200, b"ok\n"))

    def test_healthz_extra_checks(self):
        """A failing extra health check makes /healthz 503 and names it."""
        state = {"ok": True}
        root = build_admin_root(self.routes, lambda: True, health={"watchdog": lambda: state["ok"]})
        self.assertEqual(_get(root, b"/healthz")[0], 200)
        state["ok"] = False
        code, body, _ = _get(root, b"/healthz")
        self.assertEqual((code, body), (503, b"failing: watchdog\n"))

    def test_readyz_ready(self):
        """/readyz answers 200 when every condition holds."""
        code, body, _ = _get(self.root, b"/readyz")
        self.assertEqual(code, 200)
        self.assertEqual(
            json.loads(body), {"ready": True, "checks": {"proxy": True, "route_source": True}, "unmet": []}
        )

    def test_readyz_says_which_condition_is_unmet(self):
        """/readyz answers 503 and names the unmet condition."""
        self.routes.ready = False
        code, body, _ = _get(self.root, b"/readyz")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["unmet"], ["route_source"])

    def test_readyz_named_conditions(self):
        """Named readiness conditions are each reported; a raising one counts as unmet."""

        def broken():
            raise RuntimeError("boom")

        root = build_admin_root(self.routes, {"listener": lambda: False, "pools": broken})
        code, body, _ = _get(root, b"/readyz")
        doc = json.loads(body)
        self.assertEqual(code, 503)
        self.assertEqual(doc["unmet"], ["listener", "pools"])
        self.assertEqual(doc["checks"]["route_source"], True)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_every_unmet_condition_has_a_cause(self):
        """
        /readyz names a cause for each unmet condition: the route source's
        own reason, a condition's explanation, or a fallback naming it.
        """
        self.routes.ready = False
        self.routes.unready_reason = lambda: "zookeeper.root /x does not exist"
        root = build_admin_root(
            self.routes, {"proxy": lambda: False, "pools": lambda: False},
            causes={"proxy": lambda: "the client listener is not bound yet"},
        )
        code, body, _ = _get(root, b"/readyz")
        doc = json.loads(body)
        self.assertEqual(code, 503)
        self.assertEqual(doc["causes"], {
            "route_source": "zookeeper.root /x does not exist",
            "proxy": "the client listener is not bound yet",
            "pools": "pools is not ready (no cause reported)",
        })

    def test_route_source_without_reason(self):
        """A route source that gives no reason still gets a cause line."""
        self.routes.ready = False
        doc = json.loads(_get(self.root, b"/readyz")[1])
        self.assertEqual(doc["causes"], {"route_source": "route_source is not ready (no cause reported)"})

    def test_routes_with_leader(self):
        """/routes lists cached tables with cluster, metas, leader, age, staleness and last error."""
        code, body, request = _get(self.root, b"/routes")
        self.assertEqual(code, 200)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        doc = json.loads(body)
        self.assertEqual((doc["count"], doc["zk_state"], doc["ready"]), (4, "CONNECTED", True))
        by_table = {e["table"]: e for e in doc["routes"]}
        self.assertEqual([e["table"] for e in doc["routes"]], ["gone", "other", "stat", "temp"])
        temp = by_table["temp"]
        self.assertEqual(
            (temp["cluster_name"], temp["meta_addrs"], temp["leader"], temp["age"]), ("c1", _A, "10.0.0.2:34601", 1.0)
        )
        self.assertEqual((by_table["stat"]["stale"], by_table["stat"]["error"]), (True, "zookeeper SUSPENDED"))
        self.assertIsNone(by_table["other"]["leader"])
        self.assertIsNone(by_table["gone"]["leader"])

    def test_routes_of_one_table(self):
        """/routes?table=NAME shows that table only, and asks only its cluster for a leader."""
        request = DummyRequest([b"routes"])
        request.args = {b"table": [b"other"]}
        body = getChildForRequest(self.root, request).render(request)
        doc = json.loads(body)
        self.assertEqual((request.responseCode or 200, doc["count"]), (200, 1))
        self.assertEqual([(e["table"], e["cluster_name"]) for e in doc["routes"]], [("other", "c2")])
        self.assertEqual(self.asked, [",".join(_B)])

    def test_routes_of_an_unknown_table(self):
        """/routes?table=NAME for a table not in the cache is a 404 whose JSON names it."""
        request = DummyRequest([b"routes"])
        request.args = {b"table": [b"temp", b"nope"]}
        body = getChildForRequest(self.root, request).render(request)
        doc = json.loads(body)
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(doc["missing"], ["nope"])
        self.assertIn("not in the route cache: 'nope'", doc["error"])

    def test_unknown_table_name_is_bounded(self):
        """A huge table name asked for is echoed truncated, never whole."""
        request = DummyRequest([b"routes"])
        request.args = {b"table": [b"x" * 100000]}
        body = getChildForRequest(self.root, request).render(request)
        self.assertEqual(request.responseCode, 404)
        self.assertLess(len(body), 1000)

    def test_routes_asks_each_cluster_once(self):
        """/routes asks for the leader once per cluster, not per table, and never for no metas."""
        _get(self.root, b"/routes")
        self.assertEqual(sorted(self.asked), [",".join(_A), ",".join(_B)])

    def test_routes_survive_a_failing_leader_lookup(self):
        """A leader lookup that raises gives leader null, not an error page."""

        def leaders(addrs):
            raise KeyError(addrs)

        code, body, _ = _get(build_admin_root(self.routes, lambda: True, leaders=leaders), b"/routes")
        self.assertEqual(code, 200)
        self.assertEqual({e["leader"] for e in json.loads(body)["routes"]}, {None})
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 2)

    def test_routes_without_leaders(self):
        """Without a leaders callable the entries are describe()'s own."""
        code, body, _ = _get(build_admin_root(self.routes, lambda: True), b"/routes")
        self.assertNotIn("leader", json.loads(body)["routes"][0])

    def test_routes_show_cluster_state(self):
        """
        With a clusters callable each entry shows the cluster's state, and a
        leader only once a meta has answered (never one that never did).
        """
        states = {
            ",".join(_A): {"leader": "10.0.0.1:34601", "answered": False, "last_answer_age": None,
                           "last_error": "10.0.0.1:34601: connection refused", "last_error_age": 0.5, "up": False},
            ",".join(_B): {"leader": "10.0.1.1:34601", "answered": True, "last_answer_age": 1.0,
                           "last_error": None, "last_error_age": None, "up": True},
        }
        root = build_admin_root(self.routes, lambda: True, clusters=states.get)
        code, body, _ = _get(root, b"/routes")
        entries = {e["table"]: e for e in json.loads(body)["routes"]}
        self.assertEqual(code, 200)
        self.assertIsNone(entries["temp"]["leader"])
        self.assertEqual(entries["temp"]["backend"]["last_error"], "10.0.0.1:34601: connection refused")
        self.assertFalse(entries["temp"]["backend"]["answered"])
        self.assertFalse(entries["temp"]["backend"]["up"])
        self.assertEqual(entries["other"]["leader"], "10.0.1.1:34601")
        self.assertEqual(entries["other"]["backend"]["last_answer_age"], 1.0)

    def test_root_lists_endpoints(self):
        """The root lists what is served, including resources mounted later."""
        self.root.putChild(b"metrics", build_admin_root(self.routes, lambda: True))
        code, body, _ = _get(self.root, b"/")
        self.assertIn("/metrics", json.loads(body)["endpoints"])
        self.assertIn("/routes", json.loads(body)["endpoints"])

    def test_post_not_allowed(self):
        """The endpoints are read-only: POST is refused (twisted.web answers 405)."""
        e = self.assertRaises(UnsupportedMethod, _get, self.root, b"/readyz", method=b"POST")
        self.assertEqual(sorted(e.allowedMethods), [b"GET", b"HEAD"])


class AdminLimitTests(SynchronousTestCase):
    """The admin listener caps its connections and closes idle ones."""

    def setUp(self):
        self.clock = task.Clock()
        self.events = []
        self.patch(adminmod, "log", Logger(observer=self.events.append))
        self.site = build_admin_site(
            build_admin_root(_Routes(), lambda: True), self.clock, max_connections=2, idle_timeout=30.0
        )

    def connect(self, port=50000):
        addr = IPv4Address("TCP", "127.0.0.1", port)
        proto = self.site.buildProtocol(addr)
        if proto is None:
            return None, None
        transport = StringTransportWithDisconnection(peerAddress=addr)
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto, transport

    def test_connections_beyond_the_limit_are_refused(self):
        """The third connection is refused and counted; once one closes, a new one is accepted."""
        first, first_t = self.connect(1)
        self.connect(2)
        self.assertEqual(self.connect(3), (None, None))
        self.assertEqual(self.connect(4), (None, None))
        self.assertEqual(self.site.refused, 2)
        [warning] = [formatEvent(e) for e in self.events]
        self.assertIn("refusing an admin connection from 127.0.0.1: 2 open", warning)
        first_t.loseConnection()
        self.assertIsNotNone(self.connect(5)[0])

    def test_idle_connection_is_closed(self):
        """An admin connection idle for idle_timeout is closed."""
        _, transport = self.connect()
        self.clock.advance(29)
        self.assertTrue(transport.connected)
        self.clock.advance(1)
        self.assertFalse(transport.connected)

    def test_request_is_answered_through_the_wrapper(self):
        """A request on a counted connection is served normally."""
        proto, transport = self.connect()
        proto.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b"ok\n", transport.value())


class AdminLoopbackTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_served_by_a_real_site(self):
        """The admin root behind QuietSite answers a real HTTP client on loopback."""
        port = reactor.listenTCP(0, QuietSite(build_admin_root(_Routes(), lambda: True)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        response = yield agent.request(b"GET", f"http://127.0.0.1:{port.getHost().port}/readyz".encode())
        collector = _BodyCollector()
        response.deliverBody(collector)
        body = yield collector.done
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["ready"], True)

    @defer.inlineCallbacks
    def test_limit_and_idle_timeout_on_a_real_port(self):
        """
        On a real port, 300 idle admin connections cannot pile up: beyond
        max_connections they are closed at once, and the rest are closed
        once idle for idle_timeout.
        """
        site = build_admin_site(build_admin_root(_Routes(), lambda: True), reactor, max_connections=5, idle_timeout=0.5)
        self.patch(adminmod, "log", Logger(observer=lambda e: None))
        port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=512)
        self.addCleanup(port.stopListening)
        socks = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port.getHost().port))
            s.setblocking(False)
            socks.append(s)
        self.addCleanup(lambda: [s.close() for s in socks])

        def closed():
            out = 0
            for s in socks:
                try:
                    if s.recv(1) == b"":
                        out += 1
                except BlockingIOError:
                    pass
                except OSError:
                    out += 1
            return out

        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertGreaterEqual(closed(), 295)
        self.assertLessEqual(len(site.protocols), 5)
        for _ in range(50):
            yield task.deferLater(reactor, 0.1, lambda: None)
            if not site.protocols:
                break
        self.assertEqual(len(site.protocols), 0)
