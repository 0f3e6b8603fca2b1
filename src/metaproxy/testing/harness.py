# -*- test-case-name: metaproxy.test.test_e2e -*-
"""
An end-to-end harness: metaproxy's real parts on loopback in one reactor,
in front of simulated meta clusters, for tests and demos.
"""

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint

from metaproxy.backend.lastgood import LastGoodAnswers
from metaproxy.backend.pools import ClusterPools
from metaproxy.frontend.dispatch import RpcDispatcher
from metaproxy.ops.lifecycle import DrainingServerService, OrderedMultiService
from metaproxy.ops.metrics import Metrics
from metaproxy.frontend.resolver import QueryConfigResolver
from metaproxy.frontend.server import PegasusServerFactory
from metaproxy.sim.model import SimModel
from metaproxy.sim.server import SimulatedCluster
from metaproxy.testing.pegasus_client import connect_client
from metaproxy.wire.querycfg import QUERY_CFG


def start_cluster(reactor, name, tables, metas=3, host_ports=True, replica_base=34801):
    """
    Start a simulated meta cluster on free loopback ports.

    @param tables: a mapping of table name -> partition count, or -> C{(count,
        app_id)}.
    @return: the started L{SimulatedCluster}.
    """
    replicas = tuple(("127.0.0.1", replica_base + i) for i in range(3))
    cluster = SimulatedCluster(
        reactor,
        tuple("127.0.0.1:0" for _ in range(metas)),
        SimModel(replicas=replicas, host_ports=host_ports),
        cluster_name=name,
    )
    for table, spec in tables.items():
        count, app_id = spec if isinstance(spec, tuple) else (spec, None)
        cluster.create_table(table, count, app_id)
    cluster.startService()
    return cluster


@attrs.define(eq=False)
class ProxyHarness:
    """
    A running metaproxy: route table, pools, resolver and listener.

    @ivar routes: the route table (a started Service).
    @ivar port: the proxy's listening port number.
    """

    reactor: object
    routes: object
    default_timeout: float = 1.5  # as timeouts.client_default
    hedge_delay: float = 0.2
    drain_timeout: float = 5.0
    stale_if_error: float = 600.0
    service: object = attrs.field(init=False, default=None)
    listener: object = attrs.field(init=False, default=None)
    factory: object = attrs.field(init=False, default=None)
    pools: object = attrs.field(init=False, default=None)
    resolver: object = attrs.field(init=False, default=None)
    metrics: object = attrs.field(init=False, default=None)
    last_good: object = attrs.field(init=False, default=None)
    port: int = attrs.field(init=False, default=0)

    @defer.inlineCallbacks
    def start(self):
        """Start everything; fires once the listener is bound."""
        top = OrderedMultiService()
        self.routes.setServiceParent(top)
        self.metrics = Metrics()
        self.metrics.watch_route_table(self.routes)
        self.pools = ClusterPools(
            self.reactor,
            referenced=self.routes.clusters,
            hedge_delay=self.hedge_delay,
            connect_timeout=1.0,
            metrics=self.metrics,
        )
        self.last_good = LastGoodAnswers(self.reactor, max_age=self.stale_if_error)
        self.resolver = QueryConfigResolver(
            self.routes,
            self.pools,
            default_timeout=self.default_timeout,
            max_timeout=10.0,
            metrics=self.metrics,
            clock=self.reactor,
            last_good=self.last_good,
        )
        self.factory = PegasusServerFactory(RpcDispatcher({QUERY_CFG: self.resolver.handle}, {QUERY_CFG: self.resolver.start}), self.reactor)
        self.metrics.watch_connections(lambda: self.factory.connection_count)
        self.listener = DrainingServerService(
            TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1"), self.factory, self.drain_timeout
        )
        self.listener.setServiceParent(top)
        self.service = top
        top.startService()
        port = yield self.listener.when_listening()
        self.port = port.getHost().port
        return self

    def client(self, flavour="go"):
        """@return: a L{Deferred} firing with a connected test client."""
        return connect_client(self.reactor, "127.0.0.1", self.port, flavour)

    @defer.inlineCallbacks
    def stop(self):
        """Drain and stop the proxy, then close the pools."""
        if self.service is not None and self.service.running:
            yield self.service.stopService()
        if self.pools is not None:
            yield self.pools.close()


def stop_all(*services):
    """@return: a L{Deferred} stopping every running service given."""
    return defer.gatherResults(
        [defer.maybeDeferred(s.stopService) for s in services if s is not None and s.running]
    )

