# -*- test-case-name: metaproxy.test.test_app_backend -*-
"""
L{metaproxy.app.build_service} wires the backend state into metrics and the
admin page: C{metaproxy_backend_up{cluster_name}},
C{metaproxy_upstream_inflight}, and each route's C{backend} in C{/routes}.
"""

import json

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from metaproxy.app import build_service
from metaproxy.config import parse_config
from metaproxy.routes.route import MetaAddrs
from metaproxy.wire.frame import Request, RequestHeader

CONFIG = (
    "listen: tcp:0:interface=127.0.0.1\nadmin: {listen: 'tcp:0:interface=127.0.0.1'}\n"
    "metric: {type: prometheus, tags: {service: mp}}\n"
    "routes: {temp: {cluster_name: onebox, meta_addrs: '127.0.0.1:34601,127.0.0.1:34602'}}\n"
)


class BackendWiringTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.top = build_service(parse_config(CONFIG), self.reactor)
        self.addCleanup(self.top.pools.close)

    def sample(self, name, **labels):
        return self.top.metrics.registry.get_sample_value(name, dict(labels, service="mp"))

    def test_budget_settings_reach_the_resolver(self):
        """The resolver gets the default budget of 1.8 s, the 10 % / 100 ms margin and the family settings."""
        resolver = self.top.resolver
        self.assertEqual((resolver.default_timeout, resolver.margin_ratio, resolver.margin_min), (1.8, 0.1, 0.1))
        self.assertEqual((resolver.untrusted_timeout, resolver.new_connection_margin, resolver.late_answer),
                         (30.0, 0.2, 5.0))
        self.assertEqual((self.top.pools.idle_close, self.top.pools.breaker_window), (10.0, 2.0))
        self.assertIs(resolver.clock, self.reactor)

    def test_family_counts_exported(self):
        """Client families and suspicious headers are counted on /metrics."""
        resolver = self.top.resolver
        for header in (RequestHeader(0, 0, 0, 705), RequestHeader(0, -1, -1, 0, -7921)):
            resolver.budget(Request(header, "RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX", 1, b""))
        self.assertEqual(self.sample("metaproxy_client_family_requests_total", family="go"), 1.0)
        self.assertEqual(self.sample("metaproxy_client_family_requests_total", family="java1_zero_timeout"), 1.0)
        self.assertEqual(self.sample("metaproxy_suspicious_headers_total", reason="java1_zero_timeout"), 1.0)
        self.assertEqual(self.sample("metaproxy_pools"), 0.0)

    def test_gauges(self):
        """A cluster that never answered is down, labelled by its cluster_name; nothing runs upstream."""
        self.top.pools.get(MetaAddrs.parse("127.0.0.1:34601,127.0.0.1:34602"), "onebox")
        self.assertEqual(self.sample("metaproxy_backend_up", cluster_name="onebox"), 0.0)
        self.assertEqual(self.sample("metaproxy_upstream_inflight"), 0.0)

    def test_routes_page_shows_backend(self):
        """/routes shows the cluster's state and no leader while no meta has answered."""
        self.top.pools.get(MetaAddrs.parse("127.0.0.1:34601,127.0.0.1:34602"), "onebox")
        admin = self.top.getServiceNamed("admin")
        root = admin.factory.wrappedFactory.resource  # the Site inside the connection limit
        request = DummyRequest([b"routes"])
        body = getChildForRequest(root, request).render(request)
        [entry] = json.loads(body)["routes"]
        self.assertIsNone(entry["leader"])
        self.assertEqual(entry["backend"]["answered"], False)
        self.assertEqual(entry["backend"]["up"], False)
        self.assertIn("last_good_age", entry)
        self.assertIsNone(entry["last_good_age"])

    def readyz(self):
        root = self.top.getServiceNamed("admin").factory.wrappedFactory.resource
        request = DummyRequest([b"readyz"])
        body = getChildForRequest(root, request).render(request)
        return request.responseCode or 200, json.loads(body)

    def test_readyz_conditions_are_separate(self):
        """
        An unready route source (e.g. zookeeper.root missing) is blamed
        alone, with its cause; the listener is its own condition, with its own cause.
        """
        routes = self.top.route_table
        code, doc = self.readyz()
        self.assertEqual((code, doc["unmet"]), (503, ["proxy"]))
        self.assertEqual(doc["causes"], {"proxy": "the client listener (tcp:0:interface=127.0.0.1) is not bound yet"})
        self.top.startService()
        self.addCleanup(self.top.stopService)
        self.patch(routes, "is_ready", lambda: False)
        routes.unready_reason = lambda: "zookeeper.root /mp does not exist"
        code, doc = self.readyz()
        self.assertEqual(code, 503)
        self.assertEqual(doc["checks"], {"proxy": True, "route_source": False})
        self.assertEqual(doc["causes"], {"route_source": "zookeeper.root /mp does not exist"})

    def test_stale_if_error_wiring(self):
        """stale_if_error reaches the resolver's last good answers; their size and stale answers are metrics."""
        last_good = self.top.resolver.last_good
        self.assertEqual((last_good.max_age, last_good.capacity), (600.0, 1024))
        self.assertEqual(self.sample("metaproxy_last_good_answers"), 0.0)
        self.assertEqual(self.sample("metaproxy_last_good_answer_bytes"), 0.0)
        last_good.cluster_answered("onebox")
        self.assertEqual(self.sample("metaproxy_stale_answers_total", cluster_name="onebox"), 0.0)
        off = build_service(parse_config(CONFIG + "stale_if_error: 0\n"), MemoryReactorClock())
        self.addCleanup(off.pools.close)
        self.assertEqual(off.resolver.last_good.max_age, 0.0)
