# -*- test-case-name: metaproxy.test.test_route -*-
"""
Exceptions that cross metaproxy's seams.

Each one says what a client is told: L{metaproxy.frontend.resolver} maps them to the
Pegasus error codes of L{metaproxy.wire.codes}.
"""


class MetaProxyError(Exception):
    """Base class of metaproxy's own errors."""


class TableNotFound(MetaProxyError):
    """
    No route exists for the table (confirmed by the route source).
    Clients are told C{ERR_OBJECT_NOT_FOUND}, as a real meta would.
    """


class InvalidRoute(MetaProxyError):
    """
    The table's route data is malformed (bad JSON, bad address list).
    Clients get a retryable error; the operator gets a warning naming the node.
    """


class RouteUnavailable(MetaProxyError):
    """
    The route source cannot be read now and nothing usable is cached.
    Clients get a retryable error.
    """


class BackendUnavailable(MetaProxyError):
    """
    No meta server of the cluster gave a usable answer in time.
    Clients get a retryable error (C{ERR_SERVICE_NOT_ACTIVE} for query_cfg).
    """


class RouteLoop(BackendUnavailable):
    """
    A meta of the route is a metaproxy (it refused a query marked as coming
    from a metaproxy): the route is a loop. The route source keeps the
    table's last good route (reported stale); clients get the retryable
    error at once.
    """


class ClusterDown(BackendUnavailable):
    """
    Every meta server of the cluster has refused or failed for longer than
    the circuit breaker's window: the query is not even tried (the links
    keep probing in the background). Clients get the retryable error at
    once, through the same path as L{BackendUnavailable}.
    """
