# -*- test-case-name: metaproxy.test.test_backend_pools -*-
"""
One L{MetaCluster} per distinct set of meta addresses, for the whole process.

Routes name their cluster by a meta address list; two lists naming the same
metas in another order share one pool (L{metaproxy.routes.route.MetaAddrs} is
normalised). A periodic sweep closes pools that no route references any
more and that have been idle for C{idle_close} seconds (C{timeouts.pool_grace},
10 s by default: a switched-away cluster's pool, which nothing queries any
more, is gone within it plus one sweep interval), so connections to
decommissioned (or dead) metas do not leak nor keep reconnecting.
"""

from typing import Optional
import attrs
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from metaproxy.backend.client import DEFAULT_MAX_REPLY_BYTES
from metaproxy.backend.cluster import MetaCluster
from metaproxy.interfaces import IClusterPools
from metaproxy.routes.route import MetaAddrs

log = Logger()

#: A header C{client_timeout} above this (ms) is not a real deadline: Go
#: computes it as C{uint32(ns)/1e6}, and other garbage shows up as huge or
#: negative values.
MAX_SANE_CLIENT_TIMEOUT_MS = 3_600_000


def answer_budget(client_timeout_ms, default, maximum, margin_ratio=0.1, margin_min=0.1, extra_margin=0.0):
    """
    Choose how many seconds metaproxy may take to answer one request, so
    that even the retryable error reaches the client before its own timer
    fires.

    @param client_timeout_ms: the request's client timeout (the THFT
        header's C{client_timeout}, the RDSN C{client.timeout_ms}); 0
        (not given), negative or absurdly large values count as unset.
    @param default: the budget, in seconds, when no sane value is given
        (C{timeouts.client_default}; it must fit the most impatient client
        that sends 0: pypegasus3 waits 2 s).
    @param maximum: the cap of any budget, in seconds.
    @param margin_ratio: the safety margin as a part of the client's
        timeout (network, the client's own scheduling).
    @param margin_min: the least safety margin, in seconds.
    @param extra_margin: seconds kept besides (the first request on a new
        connection: the client's timer also counted the connect).
    @return: seconds: the client's timeout minus the larger margin and
        C{extra_margin} (at least half of the client's timeout), at most
        C{maximum}. Which clients' timeouts are taken as true is
        L{metaproxy.frontend.families}' business.
    """
    if 0 < client_timeout_ms <= MAX_SANE_CLIENT_TIMEOUT_MS:
        t = client_timeout_ms / 1000.0
        budget = max(t - max(t * margin_ratio, margin_min) - extra_margin, t / 2.0)
        return min(budget, maximum)
    return min(default, maximum)


@implementer(IClusterPools)
@attrs.define(eq=False)
class ClusterPools:
    """
    Hands out one L{MetaCluster} per L{MetaAddrs} and closes unused ones.

    @ivar reactor: provides L{IReactorTime} and L{IReactorTCP}; its clock
        runs the sweep, hedging and deadlines.
    @ivar referenced: a callable returning the L{frozenset} of L{MetaAddrs}
        that current routes use; those pools are never swept.
    @ivar idle_close: seconds a pool must go unused (and unreferenced)
        before the sweep closes it.
    @ivar hedge_delay: see L{MetaCluster.hedge_delay}.
    @ivar connect_timeout: seconds one connection attempt may take.
    @ivar retry_delay: see L{MetaCluster.retry_delay}.
    @ivar max_extra: see L{MetaCluster.max_extra}.
    @ivar sweep_interval: seconds between sweeps; by default a quarter of
        C{idle_close}, between 0.5 and 60 seconds.
    @ivar breaker_window: see L{MetaCluster.breaker_window}.
    @ivar closed_count: pools closed by the sweep so far.
    @ivar reconnect_max: see L{MetaCluster.reconnect_max}.
    @ivar metrics: passed to each L{MetaCluster} (backend call metrics).
    @ivar cluster_factory: C{(meta_addrs) -> IMetaCluster} with C{last_used},
        C{in_flight()} and C{close()}; a L{MetaCluster} by default.
    @ivar max_reply_bytes: see L{MetaCluster.max_reply_bytes}.
    @ivar negotiator_for: C{(cluster_name) -> negotiator or None}: the
        L{MetaCluster.negotiator} of a new pool (secured clusters), or
        L{None} for no negotiation anywhere.
    """

    reactor: object
    referenced: object = frozenset
    idle_close: float = 300.0
    hedge_delay: float = 1.0
    connect_timeout: float = 3.0
    retry_delay: float = 0.1
    reconnect_max: float = 1.0
    max_extra: int = 3
    sweep_interval: Optional[float] = None
    cluster_factory: object = None
    metrics: object = None
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    breaker_window: float = 2.0
    closed_count: int = attrs.field(init=False, default=0)
    negotiator_for: object = None
    _pools: dict = attrs.field(init=False, factory=dict)
    _sweeper: object = attrs.field(init=False, default=None)
    _closed: bool = attrs.field(init=False, default=False)

    def get(self, meta_addrs, cluster_name=None):
        """
        @param meta_addrs: a L{MetaAddrs} (a C{"h:p,h:p"} string or a list
            is parsed into one).
        @param cluster_name: the route's cluster name, or L{None}; the pool
            takes the latest one it is given (pools are keyed by meta set,
            metrics and status pages by name).
        @return: the L{metaproxy.interfaces.IMetaCluster} for that set,
            created (and its connections started) on first use.
        @raise RuntimeError: after L{close}.
        """
        pool = self._pools.get(meta_addrs)
        if pool is None:
            if not isinstance(meta_addrs, MetaAddrs):
                meta_addrs = MetaAddrs.parse(meta_addrs)
                pool = self._pools.get(meta_addrs)
        if pool is None:
            if self._closed:
                raise RuntimeError("the meta pools are closed")
            pool = self._make(meta_addrs, cluster_name)
            self._pools[meta_addrs] = pool
            log.info("opened a meta pool for {name} ({cluster})", name=cluster_name or "?", cluster=str(meta_addrs))
            self._start_sweeping()
        if cluster_name and getattr(pool, "cluster_name", cluster_name) != cluster_name:
            pool.cluster_name = cluster_name
        return pool

    def _make(self, meta_addrs, cluster_name=None):
        if self.cluster_factory is not None:
            return self.cluster_factory(meta_addrs)
        return MetaCluster(
            self.reactor,
            meta_addrs,
            hedge_delay=self.hedge_delay,
            retry_delay=self.retry_delay,
            max_extra=self.max_extra,
            connect_timeout=self.connect_timeout,
            metrics=self.metrics,
            reconnect_max=self.reconnect_max,
            cluster_name=cluster_name or "",
            max_reply_bytes=self.max_reply_bytes,
            breaker_window=self.breaker_window,
            negotiator=None if self.negotiator_for is None else self.negotiator_for(cluster_name or ""),
        )

    def pools(self):
        """@return: a L{dict} of the open pools by L{MetaAddrs} (a copy)."""
        return dict(self._pools)

    def describe(self):
        """
        @return: a JSON-ready L{list}, one L{dict} per open pool (see
            L{MetaCluster.describe}), for status pages.
        """
        return [p.describe() for p in self._pools.values() if hasattr(p, "describe")]

    def backend_up(self):
        """
        @return: C{{cluster_name: 1 or 0}} over the open pools (1 when any
            pool of that name L{is up<MetaCluster.is_up>}), for
            C{metaproxy_backend_up}.
        """
        up = {}
        for pool in self._pools.values():
            is_up = getattr(pool, "is_up", None)
            name = getattr(pool, "cluster_name", None) or str(pool.meta_addrs)
            up[name] = max(up.get(name, 0), 1 if is_up is not None and is_up() else 0)
        return up

    def _start_sweeping(self):
        if self._sweeper is not None:
            return
        interval = self.sweep_interval
        if interval is None:
            interval = max(0.5, min(60.0, self.idle_close / 4.0))
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.reactor
        d = self._sweeper.start(interval, now=False)
        d.addErrback(lambda f: log.failure("the meta pool sweep stopped", f))

    def sweep(self):
        """
        Close every pool that no route references and that has had no query
        for C{idle_close} seconds (and none running).

        @return: a L{Deferred} firing once the swept pools are closed.
        """
        try:
            keep = self.referenced()
        except Exception:
            log.failure("cannot tell which meta pools are referenced; sweeping none")
            return defer.succeed(None)
        now = self.reactor.seconds()
        closing = []
        for addrs, pool in list(self._pools.items()):
            if addrs in keep or pool.in_flight():
                continue
            if now - pool.last_used < self.idle_close:
                continue
            del self._pools[addrs]
            self.closed_count += 1
            log.info("closing idle meta pool for {cluster}", cluster=str(addrs))
            closing.append(defer.maybeDeferred(pool.close))
        return defer.gatherResults(closing, consumeErrors=True).addCallbacks(
            lambda _: None,
            lambda f: log.failure("closing an idle meta pool failed", f),
        )

    def close(self):
        """
        Stop sweeping and close every pool; pending queries fail with
        L{metaproxy.errors.BackendUnavailable}.

        @return: a L{Deferred} firing once every connection is closed.
        """
        self._closed = True
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        pools, self._pools = list(self._pools.values()), {}
        return defer.gatherResults(
            [defer.maybeDeferred(p.close) for p in pools], consumeErrors=True
        ).addCallback(lambda _: None)
