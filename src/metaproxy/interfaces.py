# -*- test-case-name: metaproxy.test.test_interfaces -*-
"""
The seams between metaproxy's parts.

Each interface is implemented by a real component and by an in-package fake
(under L{metaproxy.testing}); both are checked with C{verifyObject}.
"""

from zope.interface import Attribute, Interface


class IRouteTable(Interface):
    """
    Knows which Pegasus cluster owns each table.

    Implemented by the ZooKeeper-backed registry and by the static C{routes:}
    map of the embedded default.
    """

    def lookup(table):
        """
        Find the route of C{table}.

        @param table: the table name as the client sent it.
        @type table: L{str}

        @return: a L{Deferred} that fires with a L{metaproxy.routes.route.Route}, or
            fails with L{metaproxy.errors.TableNotFound} (no such table is
            configured), L{metaproxy.errors.InvalidRoute} (the table's route
            data is malformed) or L{metaproxy.errors.RouteUnavailable} (the
            route source cannot be read right now and nothing is cached).
            It never fails with anything else and never hangs longer than the
            route source's own timeout.
        """

    def is_ready():
        """
        @return: L{True} once the route source is usable (for ZooKeeper: a
            session was established at least once).
        """

    def clusters():
        """
        @return: the L{frozenset} of L{metaproxy.routes.route.MetaAddrs} referenced
            by the routes currently cached; pools for any other meta set may
            be closed once idle.
        """

    def describe():
        """
        @return: a L{list} of L{dict}, one per cached table, JSON-ready:
            C{table}, C{cluster_name}, C{meta_addrs} (list of str), C{state}
            (C{"ok"}, C{"stale"} (bad data, the last good route is served),
            C{"missing"}, C{"invalid"}, C{"loading"}, C{"error"} (the first
            read failed; C{error} says why)), C{age}
            (seconds since last confirmed from the source), C{stale} (bool),
            C{error} (str or None).
        """


class IMetaCluster(Interface):
    """
    One Pegasus cluster's meta servers, reached through pooled connections.

    Follows the leader itself: C{ERR_FORWARD_TO_OTHERS} never comes out.
    """

    meta_addrs = Attribute("The L{metaproxy.routes.route.MetaAddrs} of this cluster.")

    def query_config(app_name, partition_indices, timeout):
        """
        Ask the cluster's leader for a table's partition configuration.

        @param app_name: the table name.
        @type app_name: L{str}
        @param partition_indices: the partition indices the client asked for
            (empty means all).
        @type partition_indices: L{tuple} of L{int}
        @param timeout: seconds this call may take at most.
        @type timeout: L{float}

        @return: a L{Deferred} firing with a L{metaproxy.wire.frame.Response}
            whose rpc error is not a forward and whose body (for rpc
            C{ERR_OK}) is a query_cfg result that is not
            C{ERR_FORWARD_TO_OTHERS}; or failing with
            L{metaproxy.errors.BackendUnavailable} when no meta answered in
            time. It always fires within C{timeout} (plus scheduling slack).
        """

    def close():
        """
        Close every connection and stop reconnecting.

        Pending calls fail with L{metaproxy.errors.BackendUnavailable}.

        @return: a L{Deferred} that fires once every connection is closed.
        """


class IClusterPools(Interface):
    """
    Hands out one L{IMetaCluster} per distinct set of meta addresses.
    """

    def get(meta_addrs):
        """
        @param meta_addrs: a L{metaproxy.routes.route.MetaAddrs}.
        @return: the L{IMetaCluster} for that set, created on first use.
        """

    def close():
        """
        Close every pool. @return: a L{Deferred} fired when all are closed.
        """


class IRequestHandler(Interface):
    """
    Answers decoded Pegasus requests for the server-side protocol.
    """

    def handle(request, connection):
        """
        Answer one request.

        @param request: the decoded request, THFT or RDSN: its C{header}
            is a L{metaproxy.wire.frame.RequestHeader} or a
            L{metaproxy.wire.rdsn.RdsnHeader}, which share the routing
            fields (C{client_timeout} and the rest); C{args} is the body
            struct (field 1 in THFT, field 0 in RDSN: readers ignore it).
        @type request: L{metaproxy.wire.frame.Request}
        @param connection: an opaque object identifying the client
            connection (for per-connection state such as framing version).

        @return: a L{metaproxy.wire.frame.Reply}, or a L{Deferred} firing
            with one. The protocol never lets a failure escape: a
            L{metaproxy.wire.binary.DecodeError} is answered with rpc-level
            C{ERR_INVALID_PARAMETERS}, any other failure with the retryable
            C{ERR_TIMEOUT} (and logged); an rpc-level error name outside
            the safe subset is sent as C{ERR_UNKNOWN}.
        """


class IMetricsReporter(Interface):
    """
    A way of getting metrics out of the process (Prometheus scrape,
    Open-Falcon push, or a site's own), discovered with L{twisted.plugin}
    (provide L{twisted.plugin.IPlugin} too, from a module in a
    C{twisted/plugins} directory; see L{metaproxy.reporters.find_reporter}).
    The config's C{metric.type} selects one by C{name}; C{none} selects
    none and needs no plugin.
    """

    name = Attribute("The C{metric.type} value that selects this reporter (a L{str}).")

    def makeService(metrics, metric_config, reactor, admin_root):
        """
        Set the reporter up; called once, while the service tree is built
        and before anything listens.

        @param metrics: the process's L{metaproxy.ops.metrics.Metrics}: read
            it with C{snapshot()} (push) or serve its C{registry} (pull);
            C{watch_counts()} adds counters of the reporter's own.
        @param metric_config: the config's C{metric:} section
            (C{.type}, C{.tags}, C{.table_labels}, C{.falcon}).
        @param reactor: the reactor to run on (time and network); never use
            the global one.
        @param admin_root: the admin listener's root
            L{twisted.web.resource.Resource}, for reporters that serve
            (Prometheus mounts C{/metrics} there with C{putChild}).
        @return: an L{twisted.application.service.IService} that reports
            while running (started and stopped with metaproxy; its
            C{stopService} may return a L{Deferred}, and must not wait on
            an unresponsive peer longer than its own timeout), or L{None}
            if mounting a resource was all it needed. It must never block
            the reactor or raise from a timer.
        """
