# -*- test-case-name: metaproxy.test.test_app -*-
"""
Wires metaproxy's parts into one service tree (the owner's card):
Thrift-framed protocol factory -> Deferred table resolver -> route source
(ZooKeeper data-watch cache or static routes) + per-cluster meta pools.
"""

import os

from twisted.application.service import Service
from twisted.logger import Logger

from metaproxy.ops.activation import server_endpoint
from metaproxy.ops.admin import build_admin_root, build_admin_site
from metaproxy.ops.adminauth import guard_root
from metaproxy.ops.admintls import split_tls
from metaproxy.ops.fdlimit import check_fd_limit
from metaproxy.backend.lastgood import LastGoodAnswers
from metaproxy.backend.pools import ClusterPools
from metaproxy.frontend.dispatch import RpcDispatcher
from metaproxy.ops.lifecycle import DrainingServerService, GuardedService, OrderedMultiService, fatal_stop, with_backlog
from metaproxy.ops.metrics import Metrics
from metaproxy.reporters import find_reporter
from metaproxy.frontend.resolver import QueryConfigResolver
from metaproxy.routes.route import MetaAddrs, Route, SelfAddresses
from metaproxy.security.service import build_security
from metaproxy.ops.sdnotify import NotifyService
from metaproxy.frontend.server import PegasusServerFactory
from metaproxy.wire.clusterinfo import CLUSTER_INFO, metaproxy_result
from metaproxy.wire.querycfg import QUERY_CFG
from metaproxy.wire.frame import Reply

log = Logger()


class _ClosingService(Service):
    """Calls C{target.close()} when stopped (for the meta pools)."""

    def __init__(self, target):
        self.target = target

    def stopService(self):
        super().stopService()
        return self.target.close()


class _StartupLine(Service):
    """Logs L{STARTUP_LINE} once, when the service tree starts (before any port is bound)."""

    def __init__(self, fields):
        self._fields = fields
        self._said = False

    def privilegedStartService(self):
        """Say it (twistd binds ports in this phase)."""
        super().privilegedStartService()
        self._say()

    def startService(self):
        """Say it, unless L{privilegedStartService} did."""
        super().startService()
        self._say()

    def _say(self):
        if not self._said:
            self._said = True
            log.info(STARTUP_LINE, **self._fields)


def _identify_as_metaproxy(config):
    """
    @return: the C{RPC_CM_CLUSTER_INFO} handler of a metaproxy: it never
        answers as a meta would (see L{metaproxy.wire.clusterinfo}), so that
        route checks (ours, Pegasus's migrator) refuse a route to it.
    """
    from metaproxy import __version__

    reply = Reply(metaproxy_result(f"metaproxy {__version__} pid {os.getpid()} listening on {config.listen}"))
    return lambda request, connection: reply


def _watch_never_worse(metrics, resolver, pools):
    """Report the client families, suspicious headers, late answers, breaker and pool counts."""
    metrics.watch_counts("metaproxy_client_family_requests", "query_cfg requests by client family (header shape).",
                         "family", lambda: dict(resolver.family_counts))
    metrics.watch_counts("metaproxy_suspicious_headers", "query_cfg requests whose header timeout is not "
                         "the client's own (0 from Java 1.x, negative, huge, unknown shape).",
                         "reason", lambda: dict(resolver.suspicious_counts))
    metrics.watch_counts("metaproxy_late_answers", "Requests answered by a query started for an earlier "
                         "attempt of theirs on the same connection.", None, lambda: resolver.late_answers)
    metrics.watch_counts("metaproxy_cluster_unavailable_answers", "Batches answered with the retryable "
                         "error because their cluster was unavailable.", None, lambda: resolver.unavailable_answers)

    def fast():
        out = {}
        for pool in pools.pools().values():
            name = getattr(pool, "cluster_name", "") or str(pool.meta_addrs)
            out[name] = out.get(name, 0) + getattr(pool, "fast_failures", 0)
        return out

    metrics.watch_counts("metaproxy_breaker_fast_failures", "Queries failed at once because every meta of "
                         "the cluster was down longer than timeouts.breaker_window.", "cluster", fast)
    metrics.watch_counts("metaproxy_pools_closed", "Meta pools closed because no route referred to them.",
                         None, lambda: pools.closed_count)
    metrics.watch_gauges("metaproxy_pools", "Meta pools open now.", None, lambda: len(pools.pools()))


def build_route_table(config, reactor, self_addresses=None):
    """
    @param self_addresses: a L{SelfAddresses} the route source refuses
        routes to (the proxy's own listeners).
    @return: the route source the config asks for: a ZooKeeper registry
        when C{zookeeper:} is given, else the static C{routes:} map.
    """
    if config.zookeeper is not None:
        from metaproxy.routes.zkauth import auth_from_config
        from metaproxy.routes.zookeeper import ZooKeeperRouteTable

        zk = config.zookeeper
        return ZooKeeperRouteTable(
            hosts=list(zk.address),
            root=zk.root,
            reactor=reactor,
            capacity=zk.table_watcher_cache_capacity,
            session_timeout=zk.timeout / 1000.0,
            read_timeout=zk.read_timeout,
            max_suspended=zk.max_suspended,
            max_reads_inflight=zk.max_reads_inflight,
            self_addresses=self_addresses,
            auth=auth_from_config(zk.auth),
        )
    from metaproxy.routes.static import StaticRouteTable

    return StaticRouteTable(
        {
            table: Route(r.cluster_name, MetaAddrs.parse(r.meta_addrs))
            for table, r in config.routes.items()
        },
        self_addresses=self_addresses,
    )


def startup_fields(config):
    """
    @return: the named fields of the start-up line (see L{STARTUP_LINE}):
        metaproxy's version and runtime, the route source, the listeners
        and the metric reporter the config asks for.
    """
    import platform

    import twisted

    from metaproxy import __version__

    if config.zookeeper is not None:
        zk = config.zookeeper
        source = f"ZooKeeper {','.join(zk.address)} under {zk.root}"
    else:
        source = f"static routes ({len(config.routes)} tables)"
    if config.simulator is not None:
        source += f", simulated clusters {', '.join(c.name for c in config.simulator.clusters)}"
    reporter = config.metric.type
    if reporter == "prometheus":
        reporter = "prometheus (/metrics on the admin listener)"
    elif reporter == "falcon":
        reporter = f"falcon (push to {config.metric.falcon.url} every {config.metric.falcon.step} s)"
    return {
        "version": __version__,
        "runtime": f"{platform.python_implementation()} {platform.python_version()}, Twisted {twisted.__version__}",
        "source": source,
        "listen": config.listen,
        "admin": config.admin.listen,
        "reporter": reporter,
    }


#: The one line that says what started (fields: L{startup_fields}).
STARTUP_LINE = ("metaproxy {version} ({runtime}) starting: routes from {source}; clients on {listen}; "
                "admin on {admin}; metrics: {reporter}")


def _cached_tables(routes):
    def allowed(table):
        cached = getattr(routes, "is_cached", None)
        return cached(table) if cached is not None else True

    return allowed


def watch_server_limits(metrics, factory):
    """
    Export the client listener's bounds: refused connections by reason,
    frame timeouts, and the bytes held for all connections by direction.
    """
    budget = factory.budget
    metrics.watch_counts(
        "metaproxy_client_connections_refused", "Client connections refused, by reason.", "reason",
        lambda: factory.counters.refused,
    )
    metrics.watch_counts(
        "metaproxy_client_connections_evicted",
        "Client connections closed at limits.max_connections to make room for a new client "
        "(each the oldest that never sent a complete request).",
        None, lambda: factory.counters.evicted,
    )
    metrics.watch_counts(
        "metaproxy_client_frame_timeouts", "Client connections closed because a request frame stayed incomplete.",
        None, lambda: factory.counters.frame_timeouts,
    )
    counters = factory.counters
    for name, documentation, read in (
        ("metaproxy_client_framing_errors",
         "Client connections closed because their bytes could not be framed as Pegasus requests.",
         lambda: counters.framing_errors),
        ("metaproxy_client_invalid_requests",
         "Client requests answered ERR_INVALID_PARAMETERS (undecodable, or refused by their framing).",
         lambda: counters.invalid_requests),
        ("metaproxy_client_handler_errors",
         "Client requests whose handler failed (a metaproxy bug); answered with an error clients retry.",
         lambda: counters.handler_errors),
    ):
        metrics.watch_counts(name, documentation, None, read)
    metrics.watch_gauges(
        "metaproxy_buffered_bytes",
        "Bytes held for client connections: in = incomplete request frames, out = replies not yet sent.",
        "direction", lambda: {"in": budget.in_bytes, "out": budget.out_bytes},
    )


def build_last_good(config, reactor, metrics):
    """
    @return: the L{LastGoodAnswers} of stale-if-error, its size and stale
        answers watched by C{metrics}: at most one answer per table the
        route cache can hold (times a few partition_indices variants).
    """
    capacity = config.zookeeper.table_watcher_cache_capacity if config.zookeeper is not None else 1024
    last_good = LastGoodAnswers(reactor, max_age=config.stale_if_error, capacity=max(capacity, len(config.routes)))
    metrics.watch_counts("metaproxy_stale_answers", "query_cfg answered with the table's last good answer "
                         "because its cluster could not answer (stale-if-error).", "cluster_name",
                         last_good.served_by_cluster)
    metrics.watch_gauges("metaproxy_last_good_answers", "query_cfg answers kept for stale-if-error.", None,
                         last_good.entries)
    metrics.watch_gauges("metaproxy_last_good_answer_bytes", "Bytes of the query_cfg answers kept for stale-if-error.",
                         None, last_good.size_bytes)
    return last_good


def build_service(config, reactor, fatal=None, endpoint_for=None):
    """
    Build metaproxy's service tree.

    Children, in start order (they stop in reverse, one at a time, so the
    listener drains before what it drains through is closed): C{startup}
    (logs the start-up line), C{routes},
    C{simulator} (only with a C{simulator:} section), C{kerberos} (only
    with C{security.principal} or C{security.clients.enabled}: its thread
    pool and credentials), C{pools}, C{admin}, C{reporter} (only for push
    reporters), C{proxy}, C{notify}, C{fleet} (only with ZooKeeper routes
    and a C{zookeeper.fleet_path}).

    @param config: a loaded L{metaproxy.config.Config}.
    @param reactor: the reactor everything runs on.
    @param fatal: C{callable(message)} that ends the process when it
        cannot serve (a port is taken); L{fatal_stop} by default.
    @param endpoint_for: C{callable(what, description)} returning the server
        endpoint for C{"proxy"} or C{"admin"}; by default the config's
        endpoint string (a hot upgrade's new process passes the handed-over
        listeners instead, see L{metaproxy.ops.takeover}).
    @return: an L{OrderedMultiService}; its C{metrics}, C{resolver} and
        C{factory} attributes expose the live objects (tests, benchmarks).
    """
    top = OrderedMultiService()
    startup = _StartupLine(startup_fields(config))
    startup.setName("startup")
    startup.setServiceParent(top)
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

    self_addresses = SelfAddresses()
    routes = build_route_table(config, reactor, self_addresses)
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

    security = build_security(config.security, reactor)
    credentials_service = security.service()
    if credentials_service is not None:
        credentials_service.setName("kerberos")
        credentials_service.setServiceParent(top)

    pools = ClusterPools(
        reactor,
        referenced=routes.clusters,
        hedge_delay=config.timeouts.hedge_delay,
        connect_timeout=config.timeouts.connect,
        reconnect_max=config.timeouts.reconnect_max,
        metrics=metrics,
        max_reply_bytes=config.limits.max_reply_bytes,
        idle_close=config.timeouts.pool_grace,
        breaker_window=config.timeouts.breaker_window,
        negotiator_for=security.negotiator_for,
    )
    pools_service = _ClosingService(pools)
    pools_service.setName("pools")
    pools_service.setServiceParent(top)

    last_good = build_last_good(config, reactor, metrics)
    resolver = QueryConfigResolver(
        routes,
        pools,
        default_timeout=config.timeouts.client_default,
        max_timeout=config.timeouts.client_max,
        margin_ratio=config.timeouts.margin_ratio,
        margin_min=config.timeouts.margin_min,
        metrics=metrics,
        clock=reactor,
        untrusted_timeout=config.timeouts.untrusted,
        new_connection_margin=config.timeouts.new_connection_margin,
        late_answer=config.timeouts.late_answer,
        last_good=last_good,
    )
    _watch_never_worse(metrics, resolver, pools)
    metrics.watch_gauges("metaproxy_upstream_inflight", "query_cfg queries running upstream now.", None,
                        resolver.in_flight)
    metrics.watch_gauges("metaproxy_backend_up", "1 while a cluster answers (recently, or over a live link).",
                        "cluster_name", pools.backend_up)
    factory = PegasusServerFactory(
        security.wrap(RpcDispatcher(
            {QUERY_CFG: resolver.handle, CLUSTER_INFO: _identify_as_metaproxy(config)}, {QUERY_CFG: resolver.start}
        )),
        reactor,
        max_frame_bytes=config.limits.max_frame_bytes,
        max_pending_per_connection=config.limits.max_pending_per_connection,
        max_connections=config.limits.max_connections,
        idle_timeout=config.limits.idle_timeout,
        max_buffered_bytes_per_connection=config.limits.max_buffered_bytes_per_connection,
        max_buffered_bytes_total=config.limits.max_buffered_bytes_total,
        frame_timeout=config.limits.frame_timeout,
        max_connections_per_peer=config.limits.max_connections_per_peer,
        requests_per_turn=config.limits.requests_per_turn,
    )
    metrics.watch_connections(
        lambda: factory.connection_count, limit=config.limits.max_connections,
        accepted=lambda: factory.counters.accepted,
    )
    proxy = DrainingServerService(
        endpoint_for("proxy", with_backlog(config.listen, config.limits.backlog)),
        factory,
        config.drain_timeout,
        on_bind_failure=cannot_listen("clients", config.listen),
    )
    watch_server_limits(metrics, factory)
    check_fd_limit(config.limits.max_connections, metrics)
    security.watch(metrics)

    def listening(port):
        host = port.getHost()
        self_addresses.add(getattr(host, "host", ""), getattr(host, "port", 0))
        return port

    proxy.when_listening().addCallbacks(listening, lambda f: None)  # a bind failure is reported by fatal

    def proxy_unready():
        if proxy.port is None:
            return f"the client listener ({config.listen}) is not bound yet"
        return "the client listener is closed: the process is stopping or handed its connections over"

    def cluster_of(meta_addrs):
        pool = pools.pools().get(MetaAddrs.parse(meta_addrs))
        return None if pool is None else pool.describe()

    # Each condition alone: a missing zookeeper.root must not make "proxy" look unready.
    root = build_admin_root(
        routes, {"proxy": lambda: proxy.listening}, clusters=cluster_of, causes={"proxy": proxy_unready},
        last_good_ages=last_good.ages,
    )
    reporter = find_reporter(config.metric.type) if config.metric.type != "none" else None
    reporter_service = None
    if reporter is not None:
        reporter_service = reporter.makeService(metrics, config.metric, reactor, root)

    admin_listen, admin_tls = split_tls(config.admin.listen)
    admin_root, admin_auth = guard_root(root, config.admin, reactor)
    if admin_auth is not None:
        metrics.watch_counts("metaproxy_admin_auth_failures",
                             "Admin HTTP requests refused for their credential, by reason.", "reason",
                             lambda: admin_auth.failures)
    admin = DrainingServerService(
        endpoint_for("admin", admin_listen),
        build_admin_site(admin_root, reactor, config.admin.max_connections, config.admin.idle_timeout, admin_tls),
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

    from metaproxy.ops.fleet import build_registration

    def ready():
        return proxy.listening and routes.is_ready()

    fleet = build_registration(config, reactor, routes, ready, proxy, admin)
    if fleet is not None:
        fleet.setName("fleet")
        fleet.setServiceParent(top)
        metrics.watch_counts("metaproxy_fleet_registration_writes", "Fleet registration node writes (creates and "
                             "updates), by outcome.", "outcome", lambda: {"ok": fleet.writes, "failed": fleet.failures})
        metrics.watch_gauges("metaproxy_fleet_registered", "1 while this instance's fleet node exists.", None,
                             lambda: int(fleet.registered))

    # Connections by framing (THFT/RDSN): do C++ clients and the shell use the proxy?
    metrics.watch_counts(
        "metaproxy_client_connections_by_framing",
        "Client connections by the framing their first bytes chose (THFT or RDSN).",
        "framing",
        lambda: factory.counters.framings,
    )

    top.metrics = metrics
    top.resolver = resolver
    top.factory = factory
    top.pools = pools
    top.security = security
    top.route_table = routes
    top.fleet = fleet
    return top
