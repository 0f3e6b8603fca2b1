# -*- test-case-name: metaproxy.test.test_staticroutes -*-
"""
The static C{routes:} map: a route table with no ZooKeeper (the embedded
default, tests, and sites whose tables never move).
"""

from twisted.application.service import Service
from twisted.internet import defer
from zope.interface import implementer

from metaproxy.errors import InvalidRoute, TableNotFound
from metaproxy.interfaces import IRouteTable


@implementer(IRouteTable)
class StaticRouteTable(Service):
    """
    Routes from a fixed mapping; always ready, never stale.
    """

    def __init__(self, routes, self_addresses=None):
        """
        @param routes: a mapping of table name -> L{metaproxy.routes.route.Route}.
        @param self_addresses: a L{metaproxy.routes.route.SelfAddresses}: routes
            naming one of them fail with L{InvalidRoute}.
        """
        self._routes = dict(routes)
        self.self_addresses = self_addresses
        self._clusters = frozenset(r.meta_addrs for r in self._routes.values())

    def lookup(self, table):
        """
        @return: a L{Deferred} firing with the table's route, or failing
            with L{TableNotFound} (or L{InvalidRoute} for a route to the
            proxy itself); it has already fired when returned.
        """
        route = self._routes.get(table)
        if route is None:
            return defer.fail(TableNotFound(table))
        problem = self._problem(route)
        if problem is not None:
            return defer.fail(InvalidRoute(f"{table}: {problem}"))
        return defer.succeed(route)

    def cached(self, table):
        """
        @return: the route L{lookup} would give, without a L{Deferred}, or
            L{None} when L{lookup} must be asked (it fails).
        """
        route = self._routes.get(table)
        if route is None or (self.self_addresses is not None and self._problem(route) is not None):
            return None
        return route

    def _problem(self, route):
        guard = self.self_addresses
        return None if guard is None else guard.problem(route.meta_addrs)

    def is_cached(self, table):
        """@return: whether C{table} has a route."""
        return table in self._routes

    def is_ready(self):
        """@return: L{True}: a static map is always usable."""
        return True

    def clusters(self):
        """@return: every meta set the map names."""
        return self._clusters

    def describe(self):
        """@return: one JSON-ready entry per table (see L{IRouteTable.describe})."""
        out = []
        for table, route in sorted(self._routes.items()):
            problem = self._problem(route)
            out.append(
                {
                    "table": table,
                    "cluster_name": route.cluster_name,
                    "meta_addrs": route.meta_addrs.strings(),
                    "state": "ok" if problem is None else "invalid",
                    "age": 0.0,
                    "stale": False,
                    "error": problem,
                    "source": "static",
                }
            )
        return out
