"""
Tests for L{metaproxy.reporters}: discovery, Prometheus page, Falcon push.
"""

import importlib
import json
import os
import sys

import attrs
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from metaproxy.interfaces import IMetricsReporter
from metaproxy.metrics import Metrics
from metaproxy.reporters import available_reporters, find_reporter
from metaproxy.reporters.falcon import FalconPusher, falcon_payload, make_service
from metaproxy.reporters.prometheus import MetricsPage

_PLUGIN_SOURCE = '''
from twisted.plugin import IPlugin
from zope.interface import implementer
from metaproxy.interfaces import IMetricsReporter

@implementer(IPlugin, IMetricsReporter)
class _Site:
    name = "site-statsd"
    def makeService(self, metrics, metric_config, reactor, admin_root):
        return None

site = _Site()
'''


@attrs.frozen
class _Falcon:
    url: str = "http://127.0.0.1:1/v1/push"
    endpoint: str = "host-a"
    step: int = 60
    timeout: float = 5.0


@attrs.frozen
class _MetricConfig:
    type: str = "falcon"
    tags: dict = attrs.Factory(dict)
    table_labels: bool = True
    falcon: _Falcon = _Falcon()


class DiscoveryTests(SynchronousTestCase):
    def test_builtins_are_plugins(self):
        """Both built-in reporters are found as IMetricsReporter plugins."""
        found = available_reporters()
        self.assertIn("prometheus", found)
        self.assertIn("falcon", found)
        for plugin in found.values():
            verifyObject(IMetricsReporter, plugin)

    def test_site_reporter_discovered(self):
        """A reporter a site drops into a plugin package is found by name."""
        base = self.mktemp()
        pkg = os.path.join(base, "mpx_site_plugins")
        os.makedirs(pkg)
        with open(os.path.join(pkg, "__init__.py"), "w") as f:
            f.write("")
        with open(os.path.join(pkg, "site_reporter.py"), "w") as f:
            f.write(_PLUGIN_SOURCE)
        sys.path.insert(0, base)
        self.addCleanup(sys.path.remove, base)
        self.addCleanup(sys.modules.pop, "mpx_site_plugins", None)
        package = importlib.import_module("mpx_site_plugins")
        self.assertEqual(find_reporter("site-statsd", package).name, "site-statsd")

    def test_unknown_reporter_names_available_ones(self):
        """An unknown metric.type names the reporters that exist."""
        e = self.assertRaises(ValueError, find_reporter, "graphite")
        self.assertIn("'graphite'", str(e))
        self.assertIn("prometheus", str(e))


class PrometheusTests(SynchronousTestCase):
    def test_plugin_mounts_metrics_page(self):
        """The prometheus reporter mounts /metrics and needs no service."""
        root = Resource()
        metrics = Metrics()
        self.assertIsNone(find_reporter("prometheus").makeService(metrics, _MetricConfig(), Clock(), root))
        self.assertIsInstance(root.children[b"metrics"], MetricsPage)

    def test_scrape_after_traffic(self):
        """A scrape shows each metric with the values of the traffic so far."""
        metrics = Metrics(const_labels={"service": "meta_proxy"})
        metrics.watch_connections(lambda: 2)
        for _ in range(3):
            metrics.query_received("temp")
        metrics.query_answered("temp", "ERR_OK", 0.001)
        request = DummyRequest([b"metrics"])
        body = MetricsPage(metrics.registry).render_GET(request)
        text = body.decode()
        self.assertIn('client_connection_count{service="meta_proxy"} 2.0', text)
        self.assertIn('client_query_config_count_total{service="meta_proxy",table="temp"} 3.0', text)
        self.assertIn('zk_request_count_total{service="meta_proxy"} 0.0', text)
        self.assertIn('metaproxy_query_latency_seconds_count{service="meta_proxy"} 1.0', text)
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))


class _StuckAgent:
    def __init__(self):
        self.requests = []

    def request(self, method, uri, headers, body):
        d = defer.Deferred()
        self.requests.append(d)
        return d


class FalconUnitTests(SynchronousTestCase):
    def test_payload_shape(self):
        """Each sample becomes one falcon item with sorted k=v tags."""
        items = falcon_payload([("m", {"b": "2", "a": "1"}, 3.0, "GAUGE")], "h", 60, 1000.7)
        self.assertEqual(
            items,
            [{"endpoint": "h", "metric": "m", "timestamp": 1000, "step": 60, "value": 3.0,
              "counterType": "GAUGE", "tags": "a=1,b=2"}],
        )

    def test_stuck_agent_never_blocks(self):
        """A push that hangs makes the next be skipped, then times out; the timer never waits on it."""
        clock = Clock()
        agent = _StuckAgent()
        pusher = FalconPusher(Metrics(), "http://x/v1/push", "h", 60, 5.0, clock, agent=agent)
        first = pusher.push()
        self.assertNoResult(first)
        self.successResultOf(pusher.push())
        self.assertEqual((pusher.skipped, len(agent.requests)), (1, 1))
        clock.advance(5.0)
        self.successResultOf(first)
        self.assertEqual(pusher.failed, 1)
        pusher.push()
        self.assertEqual(len(agent.requests), 2)

    def test_timer_service_does_not_wait(self):
        """
        A hanging agent never stalls the periodic pushes: each stuck push
        times out and the next tick pushes again on schedule.
        """
        clock = Clock()
        service = make_service(Metrics(), _MetricConfig(), clock)
        service.pusher.agent = _StuckAgent()
        service.startService()
        self.assertEqual(len(service.pusher.agent.requests), 1)
        clock.advance(60)
        clock.advance(60)
        self.assertEqual(len(service.pusher.agent.requests), 3)
        self.assertEqual(service.pusher.failed, 2)
        self.successResultOf(defer.maybeDeferred(service.stopService))


class _Receiver(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.got = defer.Deferred()

    def render_POST(self, request):
        self.got.callback((request.getHeader(b"content-type"), request.content.read()))
        return b"success"


class FalconLoopbackTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_push_to_local_agent(self):
        """A push POSTs JSON items for every metric to the agent URL."""
        receiver = _Receiver()
        port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        metrics = Metrics(const_labels={"region": "local"})
        metrics.query_received("temp")
        url = f"http://127.0.0.1:{port.getHost().port}/v1/push"
        pusher = FalconPusher(metrics, url, "host-a", 10, 5.0, reactor)
        self.addCleanup(pusher.agent._pool.closeCachedConnections)
        yield pusher.push()
        ctype, body = yield receiver.got
        self.assertEqual(ctype, b"application/json")
        items = json.loads(body)
        by_metric = {i["metric"]: i for i in items}
        item = by_metric["client_query_config_count"]
        self.assertEqual((item["endpoint"], item["value"], item["counterType"], item["step"]), ("host-a", 1.0, "COUNTER", 10))
        self.assertEqual(item["tags"], "region=local,table=temp")
        self.assertEqual(pusher.pushed, 1)
