# -*- test-case-name: metaproxy.test.test_reporters -*-
"""
Tests for L{metaproxy.reporters}: discovery, Prometheus page, Falcon push.
"""

import gzip
import importlib
import json
import os
import subprocess
import sys

import attrs
from twisted.internet import defer, reactor
from twisted.logger import capturedLogs, formatEvent
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from metaproxy.interfaces import IMetricsReporter
from metaproxy.ops.metrics import Metrics
from metaproxy.reporters import UnknownReporter, available_reporters, find_reporter
from metaproxy.reporters.falcon import (
    GO_NAMES,
    FalconPusher,
    FalconService,
    _BodyCollector,
    falcon_payload,
    make_service,
    tags_string,
)
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

_IMPORT_CHECK = '''
import sys
import twisted.plugins.metaproxy_reporters
light = sorted(m for m in ("prometheus_client", "twisted.web.client", "metaproxy.ops.metrics",
                           "metaproxy.reporters.falcon") if m in sys.modules)
import metaproxy.reporters.prometheus
print(light, "prometheus_client.twisted" in sys.modules, "twisted.internet.reactor" in sys.modules)
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


class _Routes:
    """A ZooKeeper-backed route table fake, for the gauges."""

    zk_state = "CONNECTED"
    zk_request_count = 2

    def describe(self):
        return [{"table": "temp", "state": "ok", "age": 4.0, "stale": False}]

    def is_ready(self):
        return True


def _traffic(metrics):
    """Scripted traffic: 3 queries for temp (one coalesced), answers, backend calls."""
    metrics.watch_connections(lambda: 2)
    metrics.watch_route_table(_Routes())
    for _ in range(3):
        metrics.query_received("temp")
    metrics.upstream_query("temp")
    metrics.coalesced("temp")
    metrics.query_answered("temp", "ERR_OK", 0.001)
    metrics.query_answered("temp", "ERR_OK", 0.003)
    metrics.query_answered("temp", "ERR_OBJECT_NOT_FOUND", 0.002)
    metrics.backend_call("c1", "10.0.0.1:34601", "ERR_OK", 0.001)
    metrics.backend_call("c1", "10.0.0.2:34601", "ERR_FORWARD_TO_OTHERS", 0.002)


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
        # Absolute: Twisted's plugin walk looks the entry up in
        # sys.path_importer_cache by its absolute name (else a PEP 302 warning).
        base = os.path.abspath(self.mktemp())
        pkg = os.path.join(base, "mpx_site_plugins")
        os.makedirs(pkg)
        with open(os.path.join(pkg, "__init__.py"), "w") as f:
            f.write("")
        with open(os.path.join(pkg, "site_reporter.py"), "w") as f:
            f.write(_PLUGIN_SOURCE)
        sys.path.insert(0, base)
        self.addCleanup(sys.path.remove, base)
        self.addCleanup(sys.modules.pop, "mpx_site_plugins", None)
        self.addCleanup(sys.modules.pop, "mpx_site_plugins.site_reporter", None)
        package = importlib.import_module("mpx_site_plugins")
        plugin = find_reporter("site-statsd", package)
        self.assertEqual(plugin.name, "site-statsd")
        verifyObject(IMetricsReporter, plugin)

    def test_unknown_reporter_names_available_ones(self):
        """An unknown metric.type is a ValueError naming the reporters that exist and 'none'."""
        e = self.assertRaises(UnknownReporter, find_reporter, "graphite")
        self.assertIsInstance(e, ValueError)
        self.assertIn("'graphite'", str(e))
        self.assertIn("'prometheus'", str(e))
        self.assertIn("'falcon'", str(e))
        self.assertIn("'none'", str(e))

    def test_plugin_module_is_light(self):
        """
        Importing the plugin module (done by every twistd run) loads no
        reporter machinery, and the Prometheus reporter never imports
        prometheus_client.twisted or the global reactor.
        """
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.assertEqual(out, "[] False False")


class PrometheusTests(SynchronousTestCase):
    def test_plugin_mounts_metrics_page(self):
        """The prometheus reporter mounts /metrics and needs no service."""
        root = Resource()
        metrics = Metrics()
        self.assertIsNone(find_reporter("prometheus").makeService(metrics, _MetricConfig(), Clock(), root))
        self.assertIsInstance(root.children[b"metrics"], MetricsPage)

    def test_scrape_after_traffic(self):
        """A scrape shows each metric with the values of the scripted traffic."""
        metrics = Metrics(const_labels={"service": "meta_proxy"})
        _traffic(metrics)
        request = DummyRequest([b"metrics"])
        text = MetricsPage(metrics.registry).render_GET(request).decode()
        c = 'cluster_name="c1",'
        for line in (
            'metaproxy_client_connections{service="meta_proxy"} 2.0',
            'metaproxy_client_queries_total{service="meta_proxy",table="temp"} 3.0',
            'metaproxy_zk_requests_total{service="meta_proxy"} 2.0',
            'metaproxy_query_answers_total{err="ERR_OK",service="meta_proxy",table="temp"} 2.0',
            'metaproxy_query_answers_total{err="ERR_OBJECT_NOT_FOUND",service="meta_proxy",table="temp"} 1.0',
            'metaproxy_query_latency_seconds_count{service="meta_proxy"} 3.0',
            'metaproxy_query_latency_seconds_bucket{le="0.001",service="meta_proxy"} 1.0',
            'metaproxy_coalesced_requests_total{service="meta_proxy",table="temp"} 1.0',
            'metaproxy_upstream_queries_total{service="meta_proxy",table="temp"} 1.0',
            "metaproxy_backend_call_seconds_count{" + c + 'service="meta_proxy"} 2.0',
            "metaproxy_backend_errors_total{" + c + 'outcome="ERR_FORWARD_TO_OTHERS",service="meta_proxy"} 1.0',
            'metaproxy_route_cache_size{service="meta_proxy"} 1.0',
            'metaproxy_route_cache_max_age_seconds{service="meta_proxy"} 4.0',
            'metaproxy_zk_connected{service="meta_proxy"} 1.0',
            'metaproxy_zk_state{service="meta_proxy",state="CONNECTED"} 1.0',
        ):
            self.assertIn(line, text)
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))

    def test_openmetrics_when_asked(self):
        """A scraper asking for OpenMetrics (as Prometheus does) gets it."""
        metrics = Metrics()
        metrics.query_received("temp")
        request = DummyRequest([b"metrics"])
        request.requestHeaders.setRawHeaders(b"accept", [b"application/openmetrics-text;version=1.0.0,*/*;q=0.1"])
        body = MetricsPage(metrics.registry).render_GET(request)
        ctype = request.responseHeaders.getRawHeaders(b"content-type")[0]
        self.assertTrue(ctype.startswith(b"application/openmetrics-text"))
        self.assertIn(b'metaproxy_client_queries_total{table="temp"} 1.0', body)
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_gzip_when_accepted(self):
        """A scraper accepting gzip gets the page compressed."""
        metrics = Metrics()
        metrics.query_received("temp")
        request = DummyRequest([b"metrics"])
        request.requestHeaders.setRawHeaders(b"accept-encoding", [b"gzip"])
        body = MetricsPage(metrics.registry).render_GET(request)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertIn(b'metaproxy_client_queries_total{table="temp"} 1.0', gzip.decompress(body))

    def test_broken_collector_gives_500(self):
        """A route table that fails while scraped gives a 500 and a logged error, not a crash."""

        class Broken(_Routes):
            def describe(self):
                raise RuntimeError("boom")

        metrics = Metrics()
        metrics.watch_route_table(Broken())
        request = DummyRequest([b"metrics"])
        MetricsPage(metrics.registry).render_GET(request)
        self.assertEqual(request.responseCode, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _StuckAgent:
    """An agent whose requests never answer."""

    def __init__(self):
        self.requests = []
        self.cancelled = 0

    def request(self, method, uri, headers, body):
        d = defer.Deferred(self._cancel)
        self.requests.append(d)
        return d

    def _cancel(self, d):
        self.cancelled += 1


class _Transport:
    def __init__(self):
        self.lost = False

    def loseConnection(self):
        self.lost = True


class _Response:
    def __init__(self, code, body):
        self.code = code
        self._body = body

    def deliverBody(self, protocol):
        protocol.makeConnection(_Transport())
        protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


class _AnsweringAgent:
    """An agent answering every request at once, recording the JSON bodies."""

    def __init__(self, code=200):
        self.code = code
        self.bodies = []

    def request(self, method, uri, headers, body):
        chunks = []

        class Consumer:
            write = chunks.append

        body.startProducing(Consumer())
        self.bodies.append(json.loads(b"".join(chunks)))
        return defer.succeed(_Response(self.code, b"success"))


class FalconUnitTests(SynchronousTestCase):
    def pusher(self, agent, metrics=None, clock=None, **kw):
        return FalconPusher(metrics or Metrics(), "http://x/v1/push", "h", 60, 5.0, clock or Clock(), agent=agent, **kw)

    def test_payload_shape(self):
        """Each sample becomes one falcon item with sorted k=v tags."""
        items = falcon_payload([("m", {"b": "2", "a": "1"}, 3.0, "GAUGE")], "h", 60, 1000.7)
        self.assertEqual(
            items,
            [{"endpoint": "h", "metric": "m", "timestamp": 1000, "step": 60, "value": 3.0,
              "counterType": "GAUGE", "tags": "a=1,b=2"}],
        )

    def test_tags_keep_falcon_separators_out(self):
        """Commas and equal signs inside label values cannot split falcon tags."""
        self.assertEqual(tags_string({"cluster": "a:1,b:2", "x": "k=v"}), "cluster=a:1;b:2,x=k:v")

    def test_items_types_and_go_compat(self):
        """Counters go as COUNTER, gauges as GAUGE, plus the Go proxy's count/rate/sum items."""
        clock = Clock()
        metrics = Metrics(const_labels={"region": "r1"})
        _traffic(metrics)
        pusher = self.pusher(_AnsweringAgent(), metrics, clock)
        clock.advance(1000)
        pusher.items()
        for _ in range(120):
            metrics.query_received("temp")
        clock.advance(60)
        items = {(i["metric"], i["tags"]): i for i in pusher.items()}
        self.assertEqual(items[("client_query_config_count", "region=r1,table=temp")]["counterType"], "COUNTER")
        self.assertEqual(items[("client_query_config_count", "region=r1,table=temp")]["value"], 123.0)
        self.assertEqual(items[("client_connection_count", "region=r1")]["counterType"], "GAUGE")
        self.assertEqual(items[("count", "name=client_connection_count,region=r1")]["value"], 2.0)
        self.assertEqual(items[("rate", "name=client_query_config_count,region=r1")]["value"], 2.0)
        self.assertEqual(items[("sum", "name=client_query_config_count,region=r1")]["value"], 123.0)
        self.assertEqual(items[("sum", "name=zk_request_count,region=r1")]["value"], 2.0)
        self.assertEqual({i["timestamp"] for i in items.values()}, {1060})
        pushed = {metric for metric, _ in items}
        self.assertFalse(pushed & set(GO_NAMES), "metaproxy's names of the Go items are not pushed")
        self.assertIn("process_resident_memory_bytes", pushed)
        self.assertIn("metaproxy_build_info", pushed)

    def test_batches(self):
        """A push sends at most `batch` items per request."""
        agent = _AnsweringAgent()
        pusher = self.pusher(agent, batch=5)
        total = len(pusher.items())
        self.successResultOf(pusher.push())
        self.assertEqual([len(b) for b in agent.bodies][:-1], [5] * (len(agent.bodies) - 1))
        self.assertEqual(sum(len(b) for b in agent.bodies), total)
        self.assertEqual(pusher.counts, {"ok": 1, "failed": 0, "skipped": 0})

    def test_error_status_counts_as_failed(self):
        """A non-2xx answer counts as a failed push and is logged once."""
        pusher = self.pusher(_AnsweringAgent(code=500))
        self.successResultOf(pusher.push())
        self.successResultOf(pusher.push())
        self.assertEqual(pusher.counts["failed"], 2)

    def test_push_counts_are_exported(self):
        """Push results are themselves metrics (metaproxy_falcon_pushes_total)."""
        metrics = Metrics()
        pusher = self.pusher(_AnsweringAgent(), metrics)
        self.successResultOf(pusher.push())
        self.assertEqual(
            metrics.registry.get_sample_value("metaproxy_falcon_pushes_total", {"result": "ok"}), 1.0
        )

    def test_stuck_agent_never_blocks(self):
        """A push that hangs makes the next be skipped, then times out; the one after goes out."""
        clock = Clock()
        agent = _StuckAgent()
        pusher = self.pusher(agent, clock=clock)
        first = pusher.push()
        self.assertNoResult(first)
        self.successResultOf(pusher.push())
        self.assertEqual((pusher.counts["skipped"], len(agent.requests)), (1, 1))
        clock.advance(5.0)
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(pusher.counts["failed"], 1)
        self.assertEqual(agent.cancelled, 1)
        pusher.push()
        self.assertEqual(len(agent.requests), 2)

    def test_unreadable_metrics_fail_the_push_only(self):
        """If the metrics cannot be read, that push fails; nothing raises."""
        metrics = Metrics()

        class Broken(_Routes):
            def describe(self):
                raise RuntimeError("boom")

        metrics.watch_route_table(Broken())
        pusher = self.pusher(_AnsweringAgent(), metrics)
        self.successResultOf(pusher.push())
        self.assertEqual(pusher.counts["failed"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FalconServiceTests(SynchronousTestCase):
    def test_plugin_makes_pushing_service(self):
        """The falcon plugin builds a FalconService from config.metric.falcon."""
        service = find_reporter("falcon").makeService(Metrics(), _MetricConfig(), Clock(), Resource())
        self.assertIsInstance(service, FalconService)
        self.assertEqual((service.pusher.url, service.pusher.step, service.pusher.endpoint),
                         (b"http://127.0.0.1:1/v1/push", 60, "host-a"))

    def test_empty_endpoint_is_host_name(self):
        """An empty endpoint means this host's name."""
        import socket

        service = make_service(Metrics(), _MetricConfig(falcon=_Falcon(endpoint="")), Clock())
        self.assertEqual(service.pusher.endpoint, socket.gethostname())

    def test_timer_does_not_wait_on_stuck_pushes(self):
        """
        A hanging agent never stalls the periodic pushes: each stuck push
        times out and the next tick pushes again on schedule.
        """
        clock = Clock()
        service = make_service(Metrics(), _MetricConfig(), clock)
        service.pusher.agent = _StuckAgent()
        service.startService()
        self.assertEqual(len(service.pusher.agent.requests), 0)
        for _ in range(3):
            clock.advance(60)
        self.assertEqual(len(service.pusher.agent.requests), 3)
        self.assertEqual(service.pusher.counts["failed"], 2)
        self.successResultOf(defer.maybeDeferred(service.stopService))
        self.assertEqual(service.pusher.counts["failed"], 3)
        clock.advance(600)
        self.assertEqual(len(service.pusher.agent.requests), 3)

    def test_timer_survives_a_failing_tick(self):
        """An exception while pushing does not stop the periodic pushes."""
        clock = Clock()
        calls = []

        class Pusher:
            step = 60

            def push(self):
                calls.append(clock.seconds())
                raise RuntimeError("boom")

            def close(self):
                return defer.succeed(None)

        service = FalconService(Pusher(), clock)
        service.startService()
        clock.advance(60)
        clock.advance(60)
        self.assertEqual(calls, [60, 120])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        service.stopService()


class _Receiver(Resource):
    """A falcon-agent stand-in: records each push; can hang instead of answering."""

    isLeaf = True

    def __init__(self, hang=False):
        super().__init__()
        self.hang = hang
        self.got = defer.Deferred()
        self.gone = defer.Deferred()

    def render_POST(self, request):
        self.got.callback((request.getHeader(b"content-type"), request.content.read()))
        if self.hang:
            request.notifyFinish().addErrback(lambda f: self.gone.callback(f.type))
            return NOT_DONE_YET
        return b"success"


class FalconLoopbackTests(TestCase):
    timeout = 20

    def listen(self, resource):
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/v1/push"

    @defer.inlineCallbacks
    def test_push_to_local_agent(self):
        """A push POSTs JSON items for every metric to the agent URL, logging no factory reprs."""
        receiver = _Receiver()
        metrics = Metrics(const_labels={"region": "local"})
        metrics.query_received("temp")
        pusher = FalconPusher(metrics, self.listen(receiver), "host-a", 10, 5.0, reactor)
        self.addCleanup(pusher.close)
        with capturedLogs() as events:
            yield pusher.push()
        self.assertEqual([formatEvent(e) for e in events if "factory" in formatEvent(e)], [],
                         "no Starting factory <repr> lines")
        ctype, body = yield receiver.got
        self.assertEqual(ctype, b"application/json")
        items = json.loads(body)
        by_metric = {(i["metric"], i["tags"]): i for i in items}
        item = by_metric[("client_query_config_count", "region=local,table=temp")]
        self.assertEqual((item["endpoint"], item["value"], item["counterType"], item["step"]),
                         ("host-a", 1.0, "COUNTER", 10))
        self.assertEqual(
            set(item), {"endpoint", "metric", "timestamp", "step", "value", "counterType", "tags"}
        )
        self.assertEqual(pusher.counts["ok"], 1)

    @defer.inlineCallbacks
    def test_given_up_push_drops_its_connection(self):
        """Giving up a push the agent never answers closes its connection and counts a failure."""
        receiver = _Receiver(hang=True)
        pusher = FalconPusher(Metrics(), self.listen(receiver), "h", 10, 5.0, reactor)
        self.addCleanup(pusher.close)
        pushed = pusher.push()
        yield receiver.got
        pusher.cancel()
        yield pushed
        lost = yield receiver.gone
        self.assertTrue(issubclass(lost, Exception))
        self.assertEqual(pusher.counts["failed"], 1)

    @defer.inlineCallbacks
    def test_scrape_over_http(self):
        """/metrics served by a real Site answers a real HTTP client."""
        metrics = Metrics()
        metrics.query_received("temp")
        root = Resource()
        find_reporter("prometheus").makeService(metrics, _MetricConfig(), reactor, root)
        url = self.listen(root).replace("/v1/push", "/metrics")
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = yield Agent(reactor, pool=pool).request(b"GET", url.encode())
        collector = _BodyCollector()
        response.deliverBody(collector)
        body = yield collector.done
        self.assertEqual(response.code, 200)
        self.assertIn(b'metaproxy_client_queries_total{table="temp"} 1.0', body)
