"""
Tests for L{metaproxy.metrics}.
"""

from prometheus_client import generate_latest
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.metrics import OTHER_TABLE, Metrics


class _Routes:
    zk_state = "CONNECTED"
    zk_request_count = 7

    def describe(self):
        return [
            {"table": "a", "state": "ok", "age": 1.5, "stale": False},
            {"table": "b", "state": "ok", "age": 30.0, "stale": True},
            {"table": "c", "state": "missing", "age": 2.0, "stale": False},
        ]


def _value(metrics, name, **labels):
    v = metrics.registry.get_sample_value(name, labels)
    return v


class MetricsTests(SynchronousTestCase):
    def setUp(self):
        self.cached = {"temp", "stat"}
        self.m = Metrics(const_labels={"region": "r1"}, table_allowed=self.cached.__contains__)

    def test_go_names_and_const_labels(self):
        """The Go proxy's metric names exist and carry the config tags."""
        self.m.watch_connections(lambda: 3)
        self.m.watch_route_table(_Routes())
        self.m.query_received("temp")
        self.m.query_received("temp")
        self.assertEqual(_value(self.m, "client_connection_count", region="r1"), 3.0)
        self.assertEqual(_value(self.m, "zk_request_count_total", region="r1"), 7.0)
        self.assertEqual(_value(self.m, "client_query_config_count_total", region="r1", table="temp"), 2.0)

    def test_uncached_tables_share_one_label(self):
        """Tables the route table does not cache are counted as _other."""
        for name in ("x1", "x2", "x3"):
            self.m.query_received(name)
        self.assertEqual(
            _value(self.m, "client_query_config_count_total", region="r1", table=OTHER_TABLE), 3.0
        )
        self.assertIsNone(_value(self.m, "client_query_config_count_total", region="r1", table="x1"))

    def test_table_label_values_are_capped(self):
        """Past max_table_labels distinct tables, new ones go to _other."""
        m = Metrics(max_table_labels=2)
        for name in ("a", "b", "c", "a"):
            m.query_received(name)
        self.assertEqual(_value(m, "client_query_config_count_total", table="a"), 2.0)
        self.assertEqual(_value(m, "client_query_config_count_total", table=OTHER_TABLE), 1.0)

    def test_table_labels_off(self):
        """With table_labels off no series has a table label."""
        m = Metrics(table_labels=False)
        m.query_received("temp")
        m.coalesced("temp")
        self.assertEqual(_value(m, "client_query_config_count_total"), 1.0)
        self.assertNotIn(b"table=", generate_latest(m.registry))

    def test_answers_latency_and_coalescing(self):
        """Answers count by error name; latency lands in the histogram; coalescing counts."""
        self.m.query_answered("temp", "ERR_OK", 0.002)
        self.m.query_answered("temp", "ERR_OBJECT_NOT_FOUND", 0.004)
        self.m.coalesced("stat")
        self.m.upstream_query("stat")
        self.assertEqual(_value(self.m, "metaproxy_query_answers_total", region="r1", table="temp", err="ERR_OK"), 1.0)
        self.assertEqual(_value(self.m, "metaproxy_query_latency_seconds_count", region="r1"), 2.0)
        self.assertAlmostEqual(_value(self.m, "metaproxy_query_latency_seconds_sum", region="r1"), 0.006)
        self.assertEqual(_value(self.m, "metaproxy_coalesced_requests_total", region="r1", table="stat"), 1.0)
        self.assertEqual(_value(self.m, "metaproxy_upstream_queries_total", region="r1", table="stat"), 1.0)

    def test_backend_calls(self):
        """Backend latency is per cluster; only failed outcomes count as errors."""
        self.m.backend_call("c1", "10.0.0.1:34601", "ERR_OK", 0.001)
        self.m.backend_call("c1", "10.0.0.2:34601", "timeout", 1.0)
        self.assertEqual(_value(self.m, "metaproxy_backend_call_seconds_count", region="r1", cluster="c1"), 2.0)
        self.assertEqual(
            _value(self.m, "metaproxy_backend_errors_total", region="r1", cluster="c1", outcome="timeout"), 1.0
        )
        self.assertIsNone(
            _value(self.m, "metaproxy_backend_errors_total", region="r1", cluster="c1", outcome="ERR_OK")
        )

    def test_route_cache_gauges(self):
        """Cache size, stale entries, oldest age, states and ZK state come from the route table."""
        self.m.watch_route_table(_Routes())
        self.assertEqual(_value(self.m, "metaproxy_route_cache_size", region="r1"), 3.0)
        self.assertEqual(_value(self.m, "metaproxy_route_cache_stale", region="r1"), 1.0)
        self.assertEqual(_value(self.m, "metaproxy_route_cache_max_age_seconds", region="r1"), 30.0)
        self.assertEqual(_value(self.m, "metaproxy_route_cache_entries", region="r1", state="missing"), 1.0)
        self.assertEqual(_value(self.m, "metaproxy_zk_connected", region="r1"), 1.0)

    def test_snapshot_for_push(self):
        """The snapshot lists counters as COUNTER, gauges as GAUGE, histograms as count/sum/avg."""
        self.m.watch_connections(lambda: 5)
        self.m.query_received("temp")
        self.m.query_answered("temp", "ERR_OK", 0.5)
        self.m.query_answered("temp", "ERR_OK", 1.5)
        snap = {(n, tuple(sorted(l.items()))): (v, t) for n, l, v, t in self.m.snapshot()}
        self.assertEqual(snap[("client_connection_count", (("region", "r1"),))], (5.0, "GAUGE"))
        self.assertEqual(
            snap[("client_query_config_count_total", (("region", "r1"), ("table", "temp")))], (1.0, "COUNTER")
        )
        self.assertEqual(snap[("metaproxy_query_latency_seconds_count", (("region", "r1"),))], (2.0, "COUNTER"))
        self.assertEqual(snap[("metaproxy_query_latency_seconds_avg", (("region", "r1"),))], (1.0, "GAUGE"))
        self.assertFalse(any(n.endswith("_created") or n.endswith("_bucket") for n, _ in snap))
