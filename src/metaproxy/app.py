# -*- test-case-name: metaproxy.test.test_app -*-
"""
Wires metaproxy's parts into one service tree (the owner's card):
Thrift-framed protocol factory -> Deferred table resolver -> route source
(ZooKeeper data-watch cache or static routes) + per-cluster meta pools.
"""

from twisted.application.service import Service
from twisted.logger import Logger

from metaproxy.activation import server_endpoint
from metaproxy.admin import QuietSite, build_admin_root
from metaproxy.backend.pools import ClusterPools
from metaproxy.dispatch import RpcDispatcher
from metaproxy.lifecycle import DrainingServerService, GuardedService, OrderedMultiService, fatal_stop
from metaproxy.metrics import Metrics
from metaproxy.reporters import find_reporter
from metaproxy.resolver import QueryConfigResolver
from metaproxy.route import MetaAddrs, Route
from metaproxy.sdnotify import NotifyService
from metaproxy.server import PegasusServerFactory
from metaproxy.wire.querycfg import QUERY_CFG

log = Logger()


class _ClosingService(Service):
    """Calls C{target.close()} when stopped (for the meta pools)."""

    def __init__(self, target):
        self.target = target

    def stopService(self):
        super().stopService()
        return self.target.close()


def build_route_table(config, reactor):
    """
    @return: the route source the config asks for: a ZooKeeper registry
        when C{zookeeper:} is given, else the static C{routes:} map.
    """
    if config.zookeeper is not None:
        from metaproxy.zkroutes import ZooKeeperRouteTable

        zk = config.zookeeper
        return ZooKeeperRouteTable(
            hosts=list(zk.address),
            root=zk.root,
            reactor=reactor,
            capacity=zk.table_watcher_cache_capacity,
            session_timeout=zk.timeout / 1000.0,
            read_timeout=zk.read_timeout,
            max_suspended=zk.max_suspended,
        )
    from metaproxy.staticroutes import StaticRouteTable

    return StaticRouteTable(
        {
            table: Route(r.cluster_name, MetaAddrs.parse(r.meta_addrs))
            for table, r in config.routes.items()
        }
    )


def _cached_tables(routes):
    def allowed(table):
        cached = getattr(routes, "is_cached", None)
        return cached(table) if cached is not None else True

    return allowed


def build_service(config, reactor, fatal=None, endpoint_for=None):
    """
    Build metaproxy's service tree.

    Children, in start order (they stop in reverse, one at a time, so the
    listener drains before what it drains through is closed): C{routes},
    C{simulator} (only with a C{simulator:} section), C{pools}, C{admin},
    C{reporter} (only for push reporters), C{proxy}, C{notify}.

    @param config: a loaded L{metaproxy.config.Config}.
    @param reactor: the reactor everything runs on.
    @param fatal: C{callable(message)} that ends the process when it
        cannot serve (a port is taken); L{fatal_stop} by default.
    @param endpoint_for: C{callable(what, description)} returning the server
        endpoint for C{"proxy"} or C{"admin"}; by default the config's
        endpoint string (a hot upgrade's new process passes the handed-over
        listeners instead, see L{metaproxy.takeover}).
    @return: an L{OrderedMultiService}; its C{metrics}, C{resolver} and
        C{factory} attributes expose the live objects (tests, benchmarks).
    """
    top = OrderedMultiService()
    if endpoint_for is None:

        def endpoint_for(what, description):
            return server_endpoint(reactor, description)

    if fatal is None:

        def fatal(message):
            fatal_stop(reactor, "{message}; stopping", message=message)

    def cannot_listen(what, endpoint):
        def failed(failure):
            fatal(f"cannot listen for {what} on {endpoint!r}: {failure.getErrorMessage()}")

        return failed

    routes = build_route_table(config, reactor)
    routes.setName("routes")
    routes.setServiceParent(top)

    if config.simulator is not None:
        from metaproxy.sim.server import build_simulator_service

        guard = GuardedService(lambda f: fatal(f"cannot start the simulated meta cluster: {f.getErrorMessage()}"))
        build_simulator_service(config.simulator, reactor).setServiceParent(guard)
        guard.setName("simulator")
        guard.setServiceParent(top)

    metrics = Metrics(
        const_labels=dict(config.metric.tags),
        table_labels=config.metric.table_labels,
        table_allowed=_cached_tables(routes),
    )
    metrics.watch_route_table(routes)

    pools = ClusterPools(
        reactor,
        referenced=routes.clusters,
        hedge_delay=config.timeouts.hedge_delay,
        connect_timeout=config.timeouts.connect,
        metrics=metrics,
    )
    pools_service = _ClosingService(pools)
    pools_service.setName("pools")
    pools_service.setServiceParent(top)

    resolver = QueryConfigResolver(
        routes,
        pools,
        default_timeout=config.timeouts.client_default,
        max_timeout=config.timeouts.client_max,
        metrics=metrics,
    )
    factory = PegasusServerFactory(
        RpcDispatcher({QUERY_CFG: resolver.handle}),
        reactor,
        max_frame_bytes=config.limits.max_frame_bytes,
        max_pending_per_connection=config.limits.max_pending_per_connection,
        max_connections=config.limits.max_connections,
        idle_timeout=config.limits.idle_timeout,
    )
    metrics.watch_connections(lambda: factory.connection_count)
    proxy = DrainingServerService(
        endpoint_for("proxy", config.listen),
        factory,
        config.drain_timeout,
        on_bind_failure=cannot_listen("clients", config.listen),
    )

    def ready():
        return proxy.listening and routes.is_ready()

    def leader_of(meta_addrs):
        pool = pools.pools().get(MetaAddrs.parse(meta_addrs))
        return None if pool is None else pool.leader

    root = build_admin_root(routes, ready, leaders=leader_of)
    reporter = find_reporter(config.metric.type) if config.metric.type != "none" else None
    reporter_service = None
    if reporter is not None:
        reporter_service = reporter.makeService(metrics, config.metric, reactor, root)

    admin = DrainingServerService(
        endpoint_for("admin", config.admin.listen),
        QuietSite(root),
        0.0,
        on_bind_failure=cannot_listen("admin HTTP", config.admin.listen),
    )
    admin.setName("admin")
    admin.setServiceParent(top)
    if reporter_service is not None:
        reporter_service.setName("reporter")
        reporter_service.setServiceParent(top)

    proxy.setName("proxy")
    proxy.setServiceParent(top)

    notify = NotifyService(reactor=reactor, ready=proxy.when_listening)
    notify.setName("notify")
    notify.setServiceParent(top)

    top.metrics = metrics
    top.resolver = resolver
    top.factory = factory
    top.pools = pools
    top.route_table = routes
    return top
