# -*- test-case-name: metaproxy.test.test_metrics -*-
"""
metaproxy's metrics, in one prometheus_client registry of its own.

The Go meta-proxy's names are kept for drop-in dashboards:
C{client_connection_count} (gauge), C{zk_request_count} and
C{client_query_config_count} (counters; Prometheus stores them with the
C{_total} suffix, as it does for the Go proxy's). Everything new is
prefixed C{metaproxy_}.

Label cardinality is bounded: a table gets its own label value only while
the route table caches it and while fewer than C{max_table_labels} distinct
values exist; every other table is counted as C{"_other"}. Config tags
become constant labels on every series.
"""

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

OTHER_TABLE = "_other"

#: Latency buckets in seconds: a meta answers in about a millisecond on a
#: LAN; hedging starts at 1 s and deadlines reach 30 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _CallbackCollector:
    """Reads gauges and counters from live objects at collection time."""

    def __init__(self, metrics):
        self._m = metrics

    def collect(self):
        m = self._m
        names, values = m._const_names, list(m._const_values)
        conn = GaugeMetricFamily("client_connection_count", "Client connections open now.", labels=names)
        conn.add_metric(values, float(m._connections() if m._connections else 0))
        yield conn

        routes = m._route_table
        zk_reads = CounterMetricFamily(
            "zk_request_count", "Route reads sent to ZooKeeper (cache misses and re-reads).", labels=names
        )
        zk_reads.add_metric(values, float(getattr(routes, "zk_request_count", 0) or 0))
        yield zk_reads
        if routes is None:
            return

        entries = routes.describe()
        size = GaugeMetricFamily("metaproxy_route_cache_size", "Tables in the route cache.", labels=names)
        size.add_metric(values, float(len(entries)))
        yield size
        stale = GaugeMetricFamily(
            "metaproxy_route_cache_stale",
            "Cached routes served without confirmation from the route source (ZooKeeper unreachable).",
            labels=names,
        )
        stale.add_metric(values, float(sum(1 for e in entries if e.get("stale"))))
        yield stale
        oldest = GaugeMetricFamily(
            "metaproxy_route_cache_max_age_seconds",
            "Seconds since the least recently confirmed cached route was confirmed.",
            labels=names,
        )
        oldest.add_metric(values, float(max((e.get("age") or 0.0 for e in entries), default=0.0)))
        yield oldest
        by_state = GaugeMetricFamily(
            "metaproxy_route_cache_entries", "Cached routes by state.", labels=names + ("state",)
        )
        counts = {}
        for e in entries:
            counts[e.get("state", "ok")] = counts.get(e.get("state", "ok"), 0) + 1
        for state in ("ok", "missing", "invalid", "loading"):
            by_state.add_metric(values + [state], float(counts.get(state, 0)))
        yield by_state

        zk_state = getattr(routes, "zk_state", None)
        if zk_state is not None:
            connected = GaugeMetricFamily(
                "metaproxy_zk_connected", "1 while the ZooKeeper session is connected.", labels=names
            )
            connected.add_metric(values, 1.0 if str(zk_state).upper() == "CONNECTED" else 0.0)
            yield connected
            state = GaugeMetricFamily(
                "metaproxy_zk_state", "The ZooKeeper connection state (value 1).", labels=names + ("state",)
            )
            state.add_metric(values + [str(zk_state)], 1.0)
            yield state


class Metrics:
    """
    Every metaproxy metric, with cheap methods for the request path.

    @ivar registry: the L{CollectorRegistry} holding them (scrape it, or
        read L{snapshot} for push reporters).
    """

    def __init__(self, const_labels=None, table_labels=True, table_allowed=None, max_table_labels=2048, registry=None):
        """
        @param const_labels: label name -> value added to every series
            (the config's C{metric.tags}).
        @param table_labels: L{False} drops the table label everywhere.
        @param table_allowed: C{callable(table) -> bool}; a table gets its
            own label value only while this says yes (the route table's
            C{is_cached}); L{None} allows every table.
        @param max_table_labels: at most this many distinct table values.
        """
        self.registry = registry if registry is not None else CollectorRegistry()
        const = dict(const_labels or {})
        self._const_names = tuple(sorted(const))
        self._const_values = tuple(str(const[k]) for k in self._const_names)
        self._table_labels = table_labels
        self._table_allowed = table_allowed
        self._max_tables = max_table_labels
        self._tables_seen = set()
        self._children = {}
        self._connections = None
        self._route_table = None
        c, t = self._const_names, ("table",) if table_labels else ()
        r = self.registry
        self._queries = Counter(
            "client_query_config_count", "query_cfg requests received from clients.", c + t, registry=r
        )
        self._answers = Counter(
            "metaproxy_query_answers", "query_cfg answers sent, by app-level error.", c + t + ("err",), registry=r
        )
        self._latency = Histogram(
            "metaproxy_query_latency_seconds", "Time from a query_cfg request to its answer.", c,
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self._coalesced = Counter(
            "metaproxy_coalesced_requests",
            "query_cfg requests that joined another's upstream query instead of sending their own.",
            c + t, registry=r,
        )
        self._upstream = Counter(
            "metaproxy_upstream_queries",
            "query_cfg queries sent to a cluster on behalf of one or more coalesced client requests.",
            c + t, registry=r,
        )
        self._backend_latency = Histogram(
            "metaproxy_backend_call_seconds", "Time of one call to one meta server.", c + ("cluster",),
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self._backend_errors = Counter(
            "metaproxy_backend_errors", "Meta server calls that did not give a usable answer, by outcome.",
            c + ("cluster", "outcome"), registry=r,
        )
        r.register(_CallbackCollector(self))

    # ------------------------------------------------------------ wiring

    def watch_connections(self, count):
        """Report C{count()} as C{client_connection_count}."""
        self._connections = count

    def watch_route_table(self, route_table):
        """Report cache size, staleness, ZK state and reads from C{route_table}."""
        self._route_table = route_table

    # ---------------------------------------------------------- hot path

    def _table(self, table):
        if table in self._tables_seen:
            return table
        allowed = self._table_allowed
        if (allowed is None or allowed(table)) and len(self._tables_seen) < self._max_tables:
            self._tables_seen.add(table)
            return table
        return OTHER_TABLE

    def _child(self, metric, *values):
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            labels = self._const_values + values
            child = metric.labels(*labels) if labels else metric
            self._children[key] = child
        return child

    def _tabled(self, metric, table, *rest):
        if self._table_labels:
            return self._child(metric, self._table(table), *rest)
        return self._child(metric, *rest)

    def query_received(self, table):
        """Count one query_cfg request for C{table}."""
        self._tabled(self._queries, table).inc()

    def query_answered(self, table, err, seconds):
        """Record one answer: its app-level error name and its latency."""
        self._tabled(self._answers, table, err).inc()
        self._child(self._latency).observe(seconds)

    def coalesced(self, table):
        """Count one request that joined a shared upstream query."""
        self._tabled(self._coalesced, table).inc()

    def upstream_query(self, table):
        """Count one query_cfg sent upstream (for any number of coalesced requests)."""
        self._tabled(self._upstream, table).inc()

    def backend_call(self, cluster, meta, outcome, seconds):
        """
        Record one call to one meta server.

        @param cluster: the cluster's meta address set as a string.
        @param meta: the meta's C{"host:port"} (kept out of labels: it
            changes as metas are replaced).
        @param outcome: C{"ERR_OK"} or the error name / exception kind.
        """
        self._child(self._backend_latency, cluster).observe(seconds)
        if outcome != "ERR_OK":
            self._child(self._backend_errors, cluster, outcome).inc()

    # --------------------------------------------------------- reporting

    def snapshot(self):
        """
        @return: a L{list} of C{(name, labels, value, counter_type)} for
            push reporters: counters as C{"COUNTER"}, everything else as
            C{"GAUGE"}; histograms as their C{_count} (COUNTER), C{_sum}
            (COUNTER) and the average over all time (GAUGE, C{_avg}).
            C{_created} samples are left out.
        """
        out = []
        for family in self.registry.collect():
            sums = {}
            for s in family.samples:
                if s.name.endswith("_created") or s.name.endswith("_bucket"):
                    continue
                if family.type == "counter":
                    out.append((s.name, dict(s.labels), s.value, "COUNTER"))
                elif family.type == "histogram":
                    out.append((s.name, dict(s.labels), s.value, "COUNTER"))
                    key = tuple(sorted(s.labels.items()))
                    sums.setdefault(key, {})[s.name[len(family.name) + 1 :]] = s.value
                else:
                    out.append((s.name, dict(s.labels), s.value, "GAUGE"))
            for key, parts in sums.items():
                count = parts.get("count", 0.0)
                avg = parts.get("sum", 0.0) / count if count else 0.0
                out.append((family.name + "_avg", dict(key), avg, "GAUGE"))
        return out
