# -*- test-case-name: metaproxy.test.test_metrics -*-
"""
Tests for L{metaproxy.ops.metrics}.
"""

import platform
import re

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from metaproxy import __version__
from metaproxy.ops.metrics import OTHER_TABLE, PENDING_NAME_BYTES, Metrics, SnapshotWindow, const_label_problem
from metaproxy.routes.route import MAX_TABLE_NAME


class _Routes:
    """A route table fake: C{describe}, C{is_ready}, C{zk_state}, C{zk_request_count}."""

    def __init__(self, entries=None, zk_state="CONNECTED", zk_request_count=7, ready=True):
        self.entries = entries if entries is not None else [
            {"table": "a", "state": "ok", "age": 1.5, "stale": False},
            {"table": "b", "state": "ok", "age": 30.0, "stale": True},
            {"table": "c", "state": "missing", "age": 2.0, "stale": False},
        ]
        self.zk_state = zk_state
        self.zk_request_count = zk_request_count
        self.ready = ready

    def describe(self):
        return self.entries

    def is_ready(self):
        return self.ready


class _StaticRoutes:
    """A route table with no ZooKeeper (no C{zk_state})."""

    def describe(self):
        return [{"table": "t", "state": "ok", "age": 0.0, "stale": False}]

    def is_ready(self):
        return True


def _value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


class GoNamesTests(SynchronousTestCase):
    def test_go_names_and_const_labels(self):
        """The Go proxy's three metrics, under their Prometheus names, carry the config tags."""
        m = Metrics(const_labels={"region": "r1", "service": "meta_proxy"})
        m.watch_connections(lambda: 3)
        m.watch_route_table(_Routes())
        m.query_received("temp")
        m.query_received("temp")
        labels = {"region": "r1", "service": "meta_proxy"}
        self.assertEqual(_value(m, "metaproxy_client_connections", **labels), 3.0)
        self.assertEqual(_value(m, "metaproxy_zk_requests_total", **labels), 7.0)
        self.assertEqual(_value(m, "metaproxy_client_queries_total", table="temp", **labels), 2.0)

    def test_own_registry(self):
        """Each Metrics has a registry of its own, so two never collide."""
        first, second = Metrics(registry=None), Metrics()
        first.query_received("t")
        self.assertIsNot(first.registry, second.registry)
        self.assertIsNone(_value(second, "metaproxy_client_queries_total", table="t"))

    def test_given_registry(self):
        """A registry passed in receives every metric."""
        registry = CollectorRegistry()
        m = Metrics(registry=registry)
        m.query_received("t")
        self.assertEqual(registry.get_sample_value("metaproxy_client_queries_total", {"table": "t"}), 1.0)


class ConnectionTests(SynchronousTestCase):
    def test_opened_and_closed(self):
        """Without a watched count, open connections are the opened minus the closed ones."""
        m = Metrics()
        m.connection_opened()
        m.connection_opened()
        m.connection_closed()
        self.assertEqual(_value(m, "metaproxy_client_connections"), 1.0)
        self.assertEqual(_value(m, "metaproxy_client_connections_accepted_total"), 2.0)

    def test_watched_count_is_read_at_scrape(self):
        """A watched count is read when metrics are collected, not when it is registered."""
        m = Metrics()
        count = [0]
        m.watch_connections(lambda: count[0])
        count[0] = 12
        self.assertEqual(_value(m, "metaproxy_client_connections"), 12.0)

    def test_accepted_connections_watched(self):
        """The accepted-connections counter reads the server's own count when one is watched."""
        m = Metrics()
        accepted = [0]
        m.watch_connections(lambda: 1, accepted=lambda: accepted[0])
        accepted[0] = 41
        self.assertEqual(_value(m, "metaproxy_client_connections_accepted_total"), 41.0)


class TableLabelTests(SynchronousTestCase):
    def setUp(self):
        self.cached = {"temp", "stat"}
        self.asked = []

        def allowed(table):
            self.asked.append(table)
            return table in self.cached

        self.m = Metrics(const_labels={"region": "r1"}, table_allowed=allowed)

    def test_uncached_tables_share_one_label(self):
        """Tables the route table never caches are counted as _other."""
        for name in ("x1", "x2", "x3"):
            self.m.query_received(name)
        self.assertEqual(_value(self.m, "metaproxy_client_queries_total", region="r1", table=OTHER_TABLE), 3.0)
        self.assertIsNone(_value(self.m, "metaproxy_client_queries_total", region="r1", table="x1"))

    def test_first_query_before_lookup_keeps_its_table(self):
        """
        A table counted before the route table knows it (first query, before
        the lookup) is labelled with its name once the route table caches it.
        """
        self.m.query_received("new")
        self.cached.add("new")
        self.m.query_answered("new", "ERR_OK", 0.001)
        self.assertEqual(_value(self.m, "metaproxy_client_queries_total", region="r1", table="new"), 1.0)
        self.assertEqual(
            _value(self.m, "metaproxy_query_answers_total", region="r1", table="new", err="ERR_OK"), 1.0
        )
        self.assertEqual(_value(self.m, "metaproxy_client_queries_total", region="r1", table=OTHER_TABLE), 0.0)

    def test_pending_table_settled_at_scrape(self):
        """A pending table cached by scrape time keeps its name; one never cached moves to _other."""
        self.m.query_received("later")
        self.m.query_received("never")
        self.cached.add("later")
        text = generate_latest(self.m.registry).decode()
        self.assertIn('metaproxy_client_queries_total{region="r1",table="later"} 1.0', text)
        self.assertIn('metaproxy_client_queries_total{region="r1",table="_other"} 1.0', text)
        self.assertNotIn('table="never"', text)

    def test_named_table_is_not_asked_again(self):
        """Once a table has its own label, the hot path does not ask the route table again."""
        for _ in range(5):
            self.m.query_received("temp")
        self.assertEqual(self.asked, ["temp"])

    def test_table_label_values_are_capped(self):
        """Past max_table_labels distinct tables, new ones go to _other."""
        m = Metrics(max_table_labels=2)
        for name in ("a", "b", "c", "a"):
            m.query_received(name)
        self.assertEqual(_value(m, "metaproxy_client_queries_total", table="a"), 2.0)
        self.assertEqual(_value(m, "metaproxy_client_queries_total", table=OTHER_TABLE), 1.0)

    def test_pending_tables_are_capped(self):
        """At most max_table_labels tables wait for a decision; the rest go to _other at once."""
        m = Metrics(max_table_labels=2, table_allowed=lambda t: False)
        for name in ("p1", "p2", "p3"):
            m.query_received(name)
        self.assertEqual(m._labels.pending, {"p1", "p2"})
        self.assertEqual(_value(m, "metaproxy_client_queries_total", table=OTHER_TABLE), 3.0)
        self.assertEqual(m._labels.pending, set())

    def test_pending_names_bounded_in_bytes(self):
        """
        Names that are not routes pin at most PENDING_NAME_BYTES as pending
        labels, and a name longer than MAX_TABLE_NAME is never kept, however
        many arrive before a scrape.
        """
        m = Metrics(table_allowed=lambda t: False)
        m.query_received("x" * (MAX_TABLE_NAME + 1))
        self.assertEqual(m._labels.pending, set())
        for i in range(2100):
            m.query_received(f"{i:04d}" + "y" * (MAX_TABLE_NAME - 4))
        self.assertLessEqual(m._labels.pending_bytes, PENDING_NAME_BYTES)
        self.assertLessEqual(sum(len(n) for n in m._labels.pending), PENDING_NAME_BYTES)
        self.assertEqual(_value(m, "metaproxy_client_queries_total", table=OTHER_TABLE), 2101.0)
        self.assertEqual(m._labels.pending_bytes, 0)

    def test_table_labels_off(self):
        """With table_labels off no series has a table label."""
        m = Metrics(table_labels=False)
        m.query_received("temp")
        m.coalesced("temp")
        m.query_answered("temp", "ERR_OK", 0.001)
        self.assertEqual(_value(m, "metaproxy_client_queries_total"), 1.0)
        self.assertEqual(_value(m, "metaproxy_query_answers_total", err="ERR_OK"), 1.0)
        self.assertNotIn(b"table=", generate_latest(m.registry))


class TrafficTests(SynchronousTestCase):
    def setUp(self):
        self.m = Metrics(const_labels={"region": "r1"})

    def test_answers_latency_and_coalescing(self):
        """Answers count by error name; latency lands in the histogram; coalescing counts."""
        self.m.query_answered("temp", "ERR_OK", 0.002)
        self.m.query_answered("temp", "ERR_OBJECT_NOT_FOUND", 0.004)
        self.m.coalesced("stat")
        self.m.upstream_query("stat")
        self.assertEqual(_value(self.m, "metaproxy_query_answers_total", region="r1", table="temp", err="ERR_OK"), 1.0)
        self.assertEqual(_value(self.m, "metaproxy_query_latency_seconds_count", region="r1"), 2.0)
        self.assertAlmostEqual(_value(self.m, "metaproxy_query_latency_seconds_sum", region="r1"), 0.006)
        self.assertEqual(
            _value(self.m, "metaproxy_query_latency_seconds_bucket", region="r1", le="0.0025"), 1.0
        )
        self.assertEqual(_value(self.m, "metaproxy_coalesced_requests_total", region="r1", table="stat"), 1.0)
        self.assertEqual(_value(self.m, "metaproxy_upstream_queries_total", region="r1", table="stat"), 1.0)

    def test_backend_calls(self):
        """Backend latency is per cluster_name; only failed outcomes count as errors."""
        self.m.backend_call("c1", "10.0.0.1:34601", "ERR_OK", 0.001)
        self.m.backend_call("c1", "10.0.0.2:34601", "timeout", 1.0)
        self.assertEqual(_value(self.m, "metaproxy_backend_call_seconds_count", region="r1", cluster_name="c1"), 2.0)
        self.assertEqual(
            _value(self.m, "metaproxy_backend_errors_total", region="r1", cluster_name="c1", outcome="timeout"), 1.0
        )
        self.assertIsNone(
            _value(self.m, "metaproxy_backend_errors_total", region="r1", cluster_name="c1", outcome="ERR_OK")
        )

    def test_watched_gauges(self):
        """Gauges read at collection time, with or without a label, carry the const labels."""
        up = {"c1": 1, "c2": 0}
        self.m.watch_gauges("metaproxy_upstream_inflight", "doc", None, lambda: 3)
        self.m.watch_gauges("metaproxy_backend_up", "doc", "cluster_name", lambda: up)
        self.assertEqual(_value(self.m, "metaproxy_upstream_inflight", region="r1"), 3.0)
        self.assertEqual(_value(self.m, "metaproxy_backend_up", region="r1", cluster_name="c2"), 0.0)
        up["c2"] = 1
        self.assertEqual(_value(self.m, "metaproxy_backend_up", region="r1", cluster_name="c2"), 1.0)

    def test_backend_outcomes_are_capped(self):
        """Past max_outcomes distinct outcomes, new ones are counted as _other."""
        m = Metrics(max_outcomes=1)
        m.backend_call("c1", "m", "ERR_TIMEOUT", 0.1)
        m.backend_call("c1", "m", "refused", 0.1)
        m.backend_call("c1", "m", "ERR_TIMEOUT", 0.1)
        self.assertEqual(_value(m, "metaproxy_backend_errors_total", cluster_name="c1", outcome="ERR_TIMEOUT"), 2.0)
        self.assertEqual(_value(m, "metaproxy_backend_errors_total", cluster_name="c1", outcome="_other"), 1.0)

    def test_zk_requests_add_to_route_table_count(self):
        """zk_request() counts on top of the route table's own zk_request_count."""
        self.m.watch_route_table(_Routes(zk_request_count=4))
        self.m.zk_request()
        self.assertEqual(_value(self.m, "metaproxy_zk_requests_total", region="r1"), 5.0)


class RouteGaugeTests(SynchronousTestCase):
    def setUp(self):
        self.m = Metrics(const_labels={"region": "r1"})

    def test_route_cache_gauges(self):
        """Cache size, stale entries, oldest age, states and readiness come from the route table."""
        self.m.watch_route_table(_Routes())
        self.assertEqual(_value(self.m, "metaproxy_route_cache_size", region="r1"), 3.0)
        self.assertEqual(_value(self.m, "metaproxy_route_cache_stale", region="r1"), 1.0)
        self.assertEqual(_value(self.m, "metaproxy_route_cache_max_age_seconds", region="r1"), 30.0)
        self.assertEqual(_value(self.m, "metaproxy_route_cache_entries", region="r1", state="missing"), 1.0)
        self.assertEqual(_value(self.m, "metaproxy_route_cache_entries", region="r1", state="loading"), 0.0)
        self.assertEqual(_value(self.m, "metaproxy_route_source_ready", region="r1"), 1.0)

    def test_zk_state_follows_route_table(self):
        """The ZooKeeper gauges read the state at collection time; every known state is exported."""
        routes = _Routes()
        self.m.watch_route_table(routes)
        self.assertEqual(_value(self.m, "metaproxy_zk_connected", region="r1"), 1.0)
        routes.zk_state = "SUSPENDED"
        self.assertEqual(_value(self.m, "metaproxy_zk_connected", region="r1"), 0.0)
        self.assertEqual(_value(self.m, "metaproxy_zk_state", region="r1", state="SUSPENDED"), 1.0)
        self.assertEqual(_value(self.m, "metaproxy_zk_state", region="r1", state="CONNECTED"), 0.0)
        self.assertEqual(_value(self.m, "metaproxy_zk_state", region="r1", state="LOST"), 0.0)

    def test_static_routes_have_no_zk_gauges(self):
        """A route table without ZooKeeper exports no ZooKeeper state."""
        self.m.watch_route_table(_StaticRoutes())
        self.assertEqual(_value(self.m, "metaproxy_route_cache_size", region="r1"), 1.0)
        self.assertIsNone(_value(self.m, "metaproxy_zk_connected", region="r1"))
        self.assertEqual(_value(self.m, "metaproxy_zk_requests_total", region="r1"), 0.0)


class SnapshotTests(SynchronousTestCase):
    def setUp(self):
        self.m = Metrics(const_labels={"region": "r1"})

    def snap(self, window=None):
        return {(n, tuple(sorted(labels.items()))): (v, t) for n, labels, v, t in self.m.snapshot(window)}

    def test_snapshot_types(self):
        """Counters are COUNTER under their family name, gauges GAUGE, histograms count/sum/avg."""
        self.m.watch_connections(lambda: 5)
        self.m.query_received("temp")
        self.m.query_answered("temp", "ERR_OK", 0.5)
        self.m.query_answered("temp", "ERR_OK", 1.5)
        snap = self.snap()
        self.assertEqual(snap[("metaproxy_client_connections", (("region", "r1"),))], (5.0, "GAUGE"))
        self.assertEqual(snap[("metaproxy_client_queries", (("region", "r1"), ("table", "temp")))], (1.0, "COUNTER"))
        self.assertEqual(snap[("metaproxy_query_latency_seconds_count", (("region", "r1"),))], (2.0, "COUNTER"))
        self.assertEqual(snap[("metaproxy_query_latency_seconds_sum", (("region", "r1"),))], (2.0, "COUNTER"))
        self.assertEqual(snap[("metaproxy_query_latency_seconds_avg", (("region", "r1"),))], (1.0, "GAUGE"))
        self.assertFalse(any(n.endswith(("_created", "_bucket", "_total")) for n, _ in snap))

    def test_window_gives_interval_mean(self):
        """With a window, a histogram's _avg is the mean of the latest interval only (0 when idle)."""
        window = SnapshotWindow()
        key = ("metaproxy_query_latency_seconds_avg", (("region", "r1"),))
        self.m.query_answered("t", "ERR_OK", 1.0)
        self.assertEqual(self.snap(window)[key], (1.0, "GAUGE"))
        self.m.query_answered("t", "ERR_OK", 0.25)
        self.m.query_answered("t", "ERR_OK", 0.75)
        self.assertEqual(self.snap(window)[key], (0.5, "GAUGE"))
        self.assertEqual(self.snap(window)[key], (0.0, "GAUGE"))


class ConstLabelTests(SynchronousTestCase):
    def test_valid_tags(self):
        """Ordinary tags are accepted."""
        self.assertIsNone(const_label_problem({"region": "x", "service_2": "y"}))

    def test_invalid_name(self):
        """A tag that is not a Prometheus label name is refused, naming it."""
        self.assertIn("'service-name'", const_label_problem({"service-name": "x"}))
        self.assertIn("'__x'", const_label_problem({"__x": "x"}))

    def test_reserved_name(self):
        """A tag named like a label metaproxy sets itself is refused."""
        self.assertIn("'table'", const_label_problem({"table": "x"}))

    def test_metrics_refuses_bad_tags(self):
        """Metrics raises ValueError with the reason rather than building broken series."""
        e = self.assertRaises(ValueError, Metrics, const_labels={"cluster": "x"})
        self.assertIn("'cluster'", str(e))


class WatchedCountsTests(SynchronousTestCase):
    def test_watched_counts_read_at_collection(self):
        """A watched count family is read when collected, with the constant labels."""
        m = Metrics(const_labels={"region": "r1"})
        counts = {"ok": 1}
        m.watch_counts("metaproxy_test_events", "Test events.", "result", lambda: counts)
        counts["failed"] = 2
        self.assertEqual(_value(m, "metaproxy_test_events_total", region="r1", result="ok"), 1.0)
        self.assertEqual(_value(m, "metaproxy_test_events_total", region="r1", result="failed"), 2.0)


class ConventionTests(SynchronousTestCase):
    """Names, types and start-up series follow Prometheus' conventions (docs/metrics.rst)."""

    def test_build_info(self):
        """metaproxy_build_info is 1 with the version and the Python runtime, plus the config tags."""
        m = Metrics(const_labels={"region": "r1"})
        runtime = f"{platform.python_implementation()}-{platform.python_version()}"
        self.assertEqual(
            _value(m, "metaproxy_build_info", region="r1", version=__version__, runtime=runtime), 1.0)
        self.assertNotIn(" ", runtime)

    def test_process_and_platform_collectors(self):
        """The process and platform collectors are registered, with the config tags on their series."""
        m = Metrics(const_labels={"region": "r1"})
        rss = _value(m, "process_resident_memory_bytes", region="r1")
        self.assertGreater(rss, 1024 * 1024)
        self.assertIsNotNone(_value(m, "process_cpu_seconds_total", region="r1"))
        text = generate_latest(m.registry).decode()
        self.assertRegex(text, r'python_info\{.*implementation="%s".*region="r1"' % platform.python_implementation())

    def test_process_metrics_can_be_left_out(self):
        """process_metrics=False leaves the process collector out (e.g. a registry that has one)."""
        self.assertIsNone(_value(Metrics(process_metrics=False), "process_resident_memory_bytes"))

    def test_every_series_exists_from_start_up(self):
        """Before any traffic the counters and the latency histogram already have a zero series."""
        m = Metrics(const_labels={"region": "r1"})
        m.watch_connections(lambda: 0, limit=100)
        self.assertEqual(_value(m, "metaproxy_client_connections", region="r1"), 0.0)
        self.assertEqual(_value(m, "metaproxy_client_connections_limit", region="r1"), 100.0)
        self.assertEqual(_value(m, "metaproxy_client_connections_accepted_total", region="r1"), 0.0)
        self.assertEqual(_value(m, "metaproxy_zk_requests_total", region="r1"), 0.0)
        for name in ("metaproxy_client_queries_total", "metaproxy_coalesced_requests_total",
                     "metaproxy_upstream_queries_total"):
            self.assertEqual(_value(m, name, region="r1", table=OTHER_TABLE), 0.0, name)
        self.assertEqual(_value(m, "metaproxy_query_answers_total", region="r1", table=OTHER_TABLE, err="ERR_OK"), 0.0)
        self.assertEqual(_value(m, "metaproxy_query_latency_seconds_count", region="r1"), 0.0)
        self.assertEqual(
            _value(m, "metaproxy_backend_errors_total", region="r1", cluster_name=OTHER_TABLE, outcome=OTHER_TABLE), 0.0
        )

    def test_start_up_series_without_table_labels(self):
        """With table_labels off, the unlabelled counters start at 0."""
        m = Metrics(table_labels=False)
        self.assertEqual(_value(m, "metaproxy_client_queries_total"), 0.0)
        self.assertEqual(_value(m, "metaproxy_query_answers_total", err="ERR_OK"), 0.0)

    def test_old_names_are_gone(self):
        """The Go proxy's names are not exposed to Prometheus (the Falcon reporter keeps them)."""
        m = Metrics()
        m.watch_route_table(_Routes())
        m.query_received("a")
        text = generate_latest(m.registry).decode()
        for old in ("client_connection_count", "zk_request_count", "client_query_config_count"):
            self.assertNotIn(old, text)

    def test_names_follow_prometheus_rules(self):
        """
        Every family is a valid name; metaproxy's own are prefixed
        metaproxy_; counters end in _total; no gauge is named like a
        histogram or counter part (_count, _sum, _bucket, _total).
        """
        m = Metrics(const_labels={"region": "r1"})
        m.watch_connections(lambda: 1, limit=10)
        m.watch_route_table(_Routes())
        m.query_received("a")
        m.query_answered("a", "ERR_OK", 0.01)
        m.backend_call("c", "h:1", "ERR_TIMEOUT", 0.1)
        text = generate_latest(m.registry).decode()
        families = list(text_string_to_metric_families(text))
        self.assertGreater(len(families), 15)
        for family in families:
            self.assertRegex(family.name, r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
            if not family.name.startswith(("process_", "python_")):
                self.assertTrue(family.name.startswith("metaproxy_"), family.name)
            if family.type == "gauge":
                self.assertFalse(re.search(r"_(count|sum|bucket|total)$", family.name), family.name)
        for line in text.splitlines():
            if line.startswith("# TYPE ") and line.endswith(" counter"):
                self.assertTrue(line.split()[2].endswith("_total"), line)
