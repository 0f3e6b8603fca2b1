# -*- test-case-name: metaproxy.test.test_staticroutes -*-
"""
The static C{routes:} map: a route table with no ZooKeeper (the embedded
default, tests, and sites whose tables never move).
"""

from twisted.application.service import Service
from twisted.internet import defer
from zope.interface import implementer

from metaproxy.errors import TableNotFound
from metaproxy.interfaces import IRouteTable


@implementer(IRouteTable)
class StaticRouteTable(Service):
    """
    Routes from a fixed mapping; always ready, never stale.
    """

    def __init__(self, routes):
        """
        @param routes: a mapping of table name -> L{metaproxy.route.Route}.
        """
        self._routes = dict(routes)
        self._clusters = frozenset(r.meta_addrs for r in self._routes.values())

    def lookup(self, table):
        """
        @return: a L{Deferred} firing with the table's route, or failing
            with L{TableNotFound}; it has already fired when returned.
        """
        route = self._routes.get(table)
        if route is None:
            return defer.fail(TableNotFound(table))
        return defer.succeed(route)

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
        return [
            {
                "table": table,
                "cluster_name": route.cluster_name,
                "meta_addrs": route.meta_addrs.strings(),
                "state": "ok",
                "age": 0.0,
                "stale": False,
                "error": None,
                "source": "static",
            }
            for table, route in sorted(self._routes.items())
        ]
