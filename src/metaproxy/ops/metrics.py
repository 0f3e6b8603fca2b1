# -*- test-case-name: metaproxy.test.test_metrics -*-
"""
metaproxy's metrics, in one prometheus_client registry of its own.

Names follow Prometheus' conventions (docs/metrics.rst lists every one):
everything metaproxy counts is prefixed C{metaproxy_}, counters end in
C{_total} in the exposition, and prometheus_client's process and platform
collectors add C{process_*} and C{python_info}. The Falcon reporter maps
three of them back to the Go meta-proxy's item names
(C{client_connection_count}, C{zk_request_count},
C{client_query_config_count}) for drop-in dashboards.

Every series a dashboard or alert needs exists from start-up: counters
without labels start at 0, and table-labelled counters start with a
zero C{table="_other"} series, so C{rate()} and C{absent()} work before
the first query.

Label cardinality is bounded:
  - a table gets its own label value only if the route table caches it
    (C{table_allowed}) and fewer than C{max_table_labels} tables have one;
    every other table is counted as C{"_other"}. A table the route table
    does not know yet (its first query, before the route lookup) is held
    back and labelled once known, at the latest when metrics are read, so
    no count lands in the wrong series;
  - C{table_labels=False} drops the table label everywhere;
  - backend outcomes are error names, capped at C{max_outcomes} values.

Config tags become constant labels on every series (see
L{const_label_problem} for the names that are refused).

Everything here runs in the reactor thread; the hot-path methods are a few
dictionary operations each.
"""

import platform
import re

import attrs
from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from metaproxy.routes.route import MAX_TABLE_NAME

OTHER = "_other"
OTHER_TABLE = OTHER

#: Label names metaproxy uses itself; a config tag may not take them.
RESERVED_LABELS = frozenset({"table", "err", "cluster", "cluster_name", "outcome", "state", "le", "quantile", "name"})

#: Latency buckets in seconds: a meta answers in about a millisecond on a
#: LAN; hedging starts at 1 s and deadlines reach 30 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: The route cache states always exported by C{metaproxy_route_cache_entries}
#: (C{stale}: bad node data, the last good route is served; C{error}: the
#: first read failed).
ROUTE_STATES = ("ok", "stale", "missing", "invalid", "loading", "error")

#: The ZooKeeper states always exported by C{metaproxy_zk_state}.
ZK_STATES = ("CONNECTED", "SUSPENDED", "LOST", "STOPPED")

#: Label values a labelled counter starts with (at 0) when all its labels
#: have one; families with other labels (e.g. backend outcomes) start empty.
_IDLE_LABELS = {"table": OTHER, "err": "ERR_OK", "cluster_name": OTHER, "outcome": OTHER}

#: Bytes of not-yet-known table names kept as pending label values.
PENDING_NAME_BYTES = 256 << 10

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def const_label_problem(labels):
    """
    Check config tags before they become constant labels.

    @param labels: a mapping of label name -> value.
    @return: why they cannot be labels (an invalid Prometheus label name,
        or one metaproxy uses itself), or L{None} if they can.
    """
    for name in labels:
        if not isinstance(name, str) or not _LABEL_NAME.match(name) or name.startswith("__"):
            return f"tag {name!r} is not a valid label name (letters, digits and _; not starting with a digit or __)"
        if name in RESERVED_LABELS:
            return f"tag {name!r} is a label metaproxy sets itself ({', '.join(sorted(RESERVED_LABELS))})"
    return None


class _Counts:
    """
    One counter family kept as a plain dict (label values -> count).

    Cheaper than prometheus_client's locked children on the request path,
    and lets table values be re-labelled before they are ever read.
    """

    def __init__(self, name, documentation, labelnames):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.values = {}
        idle = tuple(_IDLE_LABELS.get(label) for label in self.labelnames)
        if None not in idle:
            self.values[idle] = 0.0  # the series exists from start-up

    def inc(self, key, amount=1.0):
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def fold(self, tables):
        """Move the counts of C{tables} (first label value) to C{_other}."""
        values = self.values
        for key in [k for k in values if k[0] in tables]:
            other = (OTHER,) + key[1:]
            values[other] = values.get(other, 0.0) + values.pop(key)

    def family(self, const_names, const_values):
        family = CounterMetricFamily(self.name, self.documentation, labels=const_names + self.labelnames)
        for key, value in self.values.items():
            family.add_metric(const_values + list(key), value)
        return family


class _TableLabels:
    """
    Decides, once per table, whether it gets a label value of its own.

    A table becomes I{named} (its own value, for good) when C{allowed}
    says yes and fewer than C{cap} tables are named. A table not allowed
    yet (a lookup still running) is I{pending}: counted under its own name
    but re-checked later and folded into C{_other} by L{settle} if still
    not allowed. What pending names may hold is bounded in bytes as well as
    in number (L{PENDING_NAME_BYTES}, and no name longer than
    L{MAX_TABLE_NAME}), so names that are not routes, however long, never
    pin more than that until the next scrape; beyond it they go to
    C{_other} at once.
    """

    def __init__(self, allowed, cap):
        self._allowed = allowed
        self._cap = cap
        self.named = set()
        self.pending = set()
        self.pending_bytes = 0
        self.counts = []

    def of(self, table):
        """@return: the label value to count C{table} under right now."""
        if table in self.named:
            return table
        if len(self.named) < self._cap and len(table) <= MAX_TABLE_NAME:
            allowed = self._allowed
            if allowed is None or allowed(table):
                self.named.add(table)
                if table in self.pending:
                    self.pending.discard(table)
                    self.pending_bytes -= len(table)
                return table
            if table in self.pending:
                return table
            if len(self.pending) < self._cap and self.pending_bytes + len(table) <= PENDING_NAME_BYTES:
                self.pending.add(table)
                self.pending_bytes += len(table)
                return table
        return OTHER

    def settle(self):
        """Name the pending tables now allowed; fold the others into C{_other}."""
        if not self.pending:
            return
        pending, self.pending = self.pending, set()
        self.pending_bytes = 0
        fold = set()
        for table in pending:
            if len(self.named) < self._cap and self._allowed(table):
                self.named.add(table)
            else:
                fold.add(table)
        if fold:
            for counts in self.counts:
                counts.fold(fold)


class _Collector:
    """Emits metaproxy's own counters and the gauges read from live objects."""

    def __init__(self, metrics):
        self._m = metrics

    def describe(self):
        """@return: nothing: names are not checked against other collectors."""
        return []

    def collect(self):
        """Yield every family, reading the watched objects now."""
        m = self._m
        m._labels.settle()
        names, values = m._const_names, list(m._const_values)
        for counts in m._all_counts:
            yield counts.family(names, values)

        def one(family_type, name, doc, value):
            family = family_type(name, doc, labels=names)
            family.add_metric(values, float(value))
            return family

        build = GaugeMetricFamily("metaproxy_build_info", "Always 1: the metaproxy version and Python runtime.",
                                  labels=names + ("version", "runtime"))
        build.add_metric(values + [m._version, _RUNTIME], 1.0)
        yield build
        count = m._connections() if m._connections is not None else m._opened - m._closed
        yield one(GaugeMetricFamily, "metaproxy_client_connections", "Client connections open now.", count)
        if m._connection_limit is not None:
            yield one(GaugeMetricFamily, "metaproxy_client_connections_limit",
                      "Client connections allowed at once (limits.max_connections; 0 = no limit).",
                      m._connection_limit)
        accepted = m._accepted() if m._accepted is not None else m._opened
        yield one(CounterMetricFamily, "metaproxy_client_connections_accepted", "Client connections accepted.",
                  accepted)
        routes = m._route_table
        zk_reads = m._zk_requests + (getattr(routes, "zk_request_count", 0) or 0)
        yield one(CounterMetricFamily, "metaproxy_zk_requests",
                  "Route reads sent to ZooKeeper (cache misses and re-reads).", zk_reads)
        for family_type, name, doc, label, read in m._watched_counts:
            if label is None:
                yield one(family_type, name, doc, read())
                continue
            family = family_type(name, doc, labels=names + (label,))
            for value, count in read().items():
                family.add_metric(values + [str(value)], float(count))
            yield family
        for name, doc, label, read in m._watched_gauges:
            if label is None:
                yield one(GaugeMetricFamily, name, doc, read())
                continue
            family = GaugeMetricFamily(name, doc, labels=names + (label,))
            for value, number in read().items():
                family.add_metric(values + [str(value)], float(number))
            yield family
        if routes is not None:
            yield from self._routes(routes, names, values, one)

    def _routes(self, routes, names, values, one):
        entries = routes.describe()
        yield one(GaugeMetricFamily, "metaproxy_route_cache_size", "Tables in the route cache.", len(entries))
        yield one(GaugeMetricFamily, "metaproxy_route_cache_stale",
                  "Cached routes served without confirmation from the route source (it is unreachable).",
                  sum(1 for e in entries if e.get("stale")))
        yield one(GaugeMetricFamily, "metaproxy_route_cache_max_age_seconds",
                  "Seconds since the least recently confirmed cached route was confirmed.",
                  max((e.get("age") or 0.0 for e in entries), default=0.0))
        by_state = GaugeMetricFamily("metaproxy_route_cache_entries", "Cached routes by state.",
                                     labels=names + ("state",))
        counts = {state: 0 for state in ROUTE_STATES}
        for e in entries:
            state = e.get("state") or "ok"
            counts[state] = counts.get(state, 0) + 1
        for state, n in counts.items():
            by_state.add_metric(values + [state], float(n))
        yield by_state
        yield one(GaugeMetricFamily, "metaproxy_route_source_ready", "1 once the route source is usable.",
                  1.0 if routes.is_ready() else 0.0)

        zk_state = getattr(routes, "zk_state", None)
        if zk_state is None:
            return
        zk_state = str(zk_state)
        yield one(GaugeMetricFamily, "metaproxy_zk_connected", "1 while the ZooKeeper session is connected.",
                  1.0 if zk_state == "CONNECTED" else 0.0)
        for attr, name, doc in (
            ("zk_reads_inflight", "metaproxy_zk_reads_inflight", "ZooKeeper reads sent and not answered yet."),
            ("zk_watches", "metaproxy_zk_watches", "ZooKeeper nodes watched by the route cache (root included)."),
        ):
            value = getattr(routes, attr, None)
            if value is not None:
                yield one(GaugeMetricFamily, name, doc, value)
        state = GaugeMetricFamily("metaproxy_zk_state", "The ZooKeeper connection state (1 = current).",
                                  labels=names + ("state",))
        for name in ZK_STATES + (() if zk_state in ZK_STATES else (zk_state,)):
            state.add_metric(values + [name], 1.0 if name == zk_state else 0.0)
        yield state


#: The C{runtime} label of C{metaproxy_build_info}, e.g. C{"CPython-3.11.7"}
#: (no space: label values are matched and pasted by operators).
_RUNTIME = f"{platform.python_implementation()}-{platform.python_version()}"


class _ConstLabelled:
    """
    Adds the config's constant labels to every sample of another collector
    (prometheus_client's process and platform collectors take none).
    """

    def __init__(self, collector, const_labels):
        self._collector = collector
        self._const = dict(const_labels)

    def describe(self):
        """@return: nothing: names are not checked against other collectors."""
        return []

    def collect(self):
        """Yield the wrapped collector's families with the constant labels added."""
        for family in self._collector.collect():
            if self._const:
                family.samples = [s._replace(labels={**self._const, **s.labels}) for s in family.samples]
            yield family


def _registry(registry):
    return CollectorRegistry() if registry is None else registry


@attrs.define(eq=False)
class SnapshotWindow:
    """
    What a push reporter last saw of each histogram, so that
    L{Metrics.snapshot} can give the mean of the latest interval.
    """

    last: dict = attrs.field(factory=dict)


@attrs.define(eq=False, slots=False)
class Metrics:
    """
    Every metaproxy metric, with cheap methods for the request path.

    @ivar registry: the L{CollectorRegistry} holding them (scrape it, or
        read L{snapshot} for push reporters). A new one of its own unless
        one is given.
    @ivar const_labels: label name -> value added to every series (the
        config's C{metric.tags}); checked with L{const_label_problem}.
    @ivar table_labels: L{False} drops the table label everywhere.
    @ivar table_allowed: C{callable(table) -> bool}: may C{table} have its
        own label value (the route table's C{is_cached})? L{None} allows
        every table.
    @ivar max_table_labels: at most this many distinct table values.
    @ivar max_outcomes: at most this many distinct backend outcome values.
    @ivar process_metrics: also register prometheus_client's process and
        platform collectors (C{process_*}, C{python_info}) on the registry.
    @ivar version: the C{version} label of C{metaproxy_build_info}
        (metaproxy's own by default).
    """

    registry: CollectorRegistry = attrs.field(default=None, converter=_registry)
    const_labels: dict = attrs.field(default=None, converter=lambda v: dict(v or {}))
    table_labels: bool = True
    table_allowed: object = None
    max_table_labels: int = 2048
    max_outcomes: int = 64
    process_metrics: bool = True
    version: str = None

    def __attrs_post_init__(self):
        problem = const_label_problem(self.const_labels)
        if problem is not None:
            raise ValueError(problem)
        const = self.const_labels
        self._const_names = tuple(sorted(const))
        self._const_values = tuple(str(const[k]) for k in self._const_names)
        self._labels = _TableLabels(self.table_allowed, self.max_table_labels)
        self._connections = None
        self._connection_limit = None
        if self.version is None:
            from metaproxy import __version__

            self.version = __version__
        self._version = str(self.version)
        self._route_table = None
        self._watched_counts = []
        self._forwards_outside = {"followed": 0, "refused": 0}
        self.watch_counts(
            "metaproxy_backend_forwards_outside",
            "Forwards (ERR_FORWARD_TO_OTHERS) naming a meta outside the route: followed, or refused because "
            "3 copies of that query had gone outside already.",
            "outcome", lambda: self._forwards_outside,
        )
        self._watched_gauges = []
        self._opened = self._closed = self._zk_requests = 0
        self._accepted = None
        self._outcomes = set()
        self._children = {}
        t = ("table",) if self.table_labels else ()
        self._queries = _Counts("metaproxy_client_queries", "query_cfg requests received from clients.", t)
        self._answers = _Counts("metaproxy_query_answers", "query_cfg answers sent, by error name.", t + ("err",))
        self._coalesced = _Counts(
            "metaproxy_coalesced_requests",
            "query_cfg requests that joined another's upstream query instead of sending their own.", t,
        )
        self._upstream = _Counts(
            "metaproxy_upstream_queries",
            "query_cfg queries sent to a cluster on behalf of one or more coalesced requests.", t,
        )
        self._backend_errors = _Counts(
            "metaproxy_backend_errors", "Meta server calls that gave no usable answer, by outcome.",
            ("cluster_name", "outcome"),
        )
        self._all_counts = (self._queries, self._answers, self._coalesced, self._upstream, self._backend_errors)
        if self.table_labels:
            self._labels.counts = [self._queries, self._answers, self._coalesced, self._upstream]
        c, r = self._const_names, self.registry
        self._latency = Histogram(
            "metaproxy_query_latency_seconds", "Time from a query_cfg request to its answer.", c,
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self._backend_latency = Histogram(
            "metaproxy_backend_call_seconds", "Time of one call to one meta server.", c + ("cluster_name",),
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self._histogram(self._latency)  # the series exists from start-up
        r.register(_Collector(self))
        if self.process_metrics:
            for collector in (ProcessCollector(registry=None), PlatformCollector(registry=None)):
                r.register(_ConstLabelled(collector, dict(zip(self._const_names, self._const_values))))

    # ------------------------------------------------------------ wiring

    def watch_connections(self, count, limit=None, accepted=None):
        """
        Report C{count()} (read at collection time) as
        C{metaproxy_client_connections}, instead of the balance of
        L{connection_opened} and L{connection_closed}.

        @param accepted: C{callable() -> int}, connections accepted so far,
            reported as C{metaproxy_client_connections_accepted_total}
            instead of the L{connection_opened} count.

        @param limit: the configured connection limit, reported as
            C{metaproxy_client_connections_limit} (not reported if L{None}).
        """
        self._connections = count
        if accepted is not None:
            self._accepted = accepted
        if limit is not None:
            self._connection_limit = limit

    def watch_route_table(self, route_table):
        """
        Report the route cache from C{route_table} at collection time:
        size, stale entries, oldest age, entries by state (from
        C{describe()}), readiness (C{is_ready()}), and, if it has them,
        C{zk_state} and C{zk_request_count}.
        """
        self._route_table = route_table

    def watch_counts(self, name, documentation, label, read):
        """
        Add a counter family read at collection time (for reporters and
        plugins that count things of their own, e.g. failed pushes).

        @param name: the family name (no C{_total}).
        @param label: the one label that tells the series apart, or
            L{None} for a single series.
        @param read: C{callable() -> {label value: count}} (C{-> count}
            without a label).
        """
        self._watched_counts.append((CounterMetricFamily, name, documentation, label, read))

    def watch_gauges(self, name, documentation, label, read):
        """
        Like L{watch_counts}, for a gauge family read at collection time.
        """
        self._watched_counts.append((GaugeMetricFamily, name, documentation, label, read))

    def _key(self, table):
        return (self._labels.of(table),) if self.table_labels else ()

    def _histogram(self, metric, *values):
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            labels = self._const_values + values
            child = metric.labels(*labels) if labels else metric
            self._children[key] = child
        return child

    def connection_opened(self):
        """Count one client connection accepted (and now open)."""
        self._opened += 1

    def connection_closed(self):
        """Count one client connection closed."""
        self._closed += 1

    def zk_request(self):
        """Count one read sent to ZooKeeper (added to the route table's own count)."""
        self._zk_requests += 1

    def query_received(self, table):
        """Count one query_cfg request for C{table} (C{metaproxy_client_queries_total})."""
        self._queries.inc(self._key(table))

    def query_answered(self, table, err, seconds):
        """
        Record one answer to a query_cfg request.

        @param err: the error name the client got (rpc-level if not
            C{ERR_OK}, else the app-level one).
        @param seconds: the time since the request arrived.
        """
        self._answers.inc(self._key(table) + (str(err),))
        self._histogram(self._latency).observe(seconds)

    def coalesced(self, table):
        """Count one request that joined a shared upstream query."""
        self._coalesced.inc(self._key(table))

    def upstream_query(self, table):
        """Count one query_cfg sent upstream (for any number of coalesced requests)."""
        self._upstream.inc(self._key(table))

    def forward_outside(self, outcome):
        """Count one forward to a meta outside the route (C{"followed"} or C{"refused"})."""
        self._forwards_outside[outcome] = self._forwards_outside.get(outcome, 0) + 1

    def backend_call(self, cluster, meta, outcome, seconds):
        """
        Record one call to one meta server.

        @param cluster: the route's C{cluster_name} (never an address list:
            replacing metas must not create new series).
        @param meta: the meta's C{"host:port"} (kept out of labels: it
            changes as metas are replaced).
        @param outcome: C{"ERR_OK"}, or the error name or exception kind;
            anything else than C{ERR_OK} counts in
            C{metaproxy_backend_errors}.
        """
        self._histogram(self._backend_latency, cluster).observe(seconds)
        if outcome != "ERR_OK":
            outcome = str(outcome)
            if outcome not in self._outcomes:
                if len(self._outcomes) >= self.max_outcomes:
                    outcome = OTHER
                else:
                    self._outcomes.add(outcome)
            self._backend_errors.inc((cluster, outcome))

    # --------------------------------------------------------- reporting

    def snapshot(self, window=None):
        """
        Read every metric now, for push reporters.

        @param window: a L{SnapshotWindow} kept by the caller between
            calls, or L{None}.
        @return: a L{list} of C{(name, labels, value, counter_type)}:
            counters under their family name (no C{_total}) as
            C{"COUNTER"}; gauges as C{"GAUGE"}; each histogram as
            C{<name>_count} and C{<name>_sum} (C{"COUNTER"}) and
            C{<name>_avg} (C{"GAUGE"}): the mean of the observations since
            the previous snapshot with the same C{window} (all of them
            without one), 0 if there were none. Buckets and C{_created}
            samples are left out. C{labels} include the constant ones.
        """
        out = []
        for family in self.registry.collect():
            if family.type == "histogram":
                out.extend(_histogram_items(family, window))
                continue
            counter = family.type == "counter"
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                if counter:
                    out.append((family.name, dict(s.labels), s.value, "COUNTER"))
                else:
                    out.append((s.name, dict(s.labels), s.value, "GAUGE"))
        return out


def _histogram_items(family, window):
    parts = {}
    for s in family.samples:
        suffix = s.name[len(family.name) + 1:]
        if suffix in ("count", "sum"):
            parts.setdefault(tuple(sorted(s.labels.items())), {})[suffix] = s.value
    items = []
    for key, p in parts.items():
        labels = dict(key)
        count, total = p.get("count", 0.0), p.get("sum", 0.0)
        items.append((family.name + "_count", labels, count, "COUNTER"))
        items.append((family.name + "_sum", labels, total, "COUNTER"))
        last_count, last_total = 0.0, 0.0
        if window is not None:
            last_count, last_total = window.last.get((family.name, key), (0.0, 0.0))
            window.last[(family.name, key)] = (count, total)
        n = count - last_count
        items.append((family.name + "_avg", dict(key), (total - last_total) / n if n > 0 else 0.0, "GAUGE"))
    return items
