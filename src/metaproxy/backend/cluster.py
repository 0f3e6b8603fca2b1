# -*- test-case-name: metaproxy.test.test_backend_cluster -*-
"""
One Pegasus cluster's meta servers: follow the leader, hedge, never hang.

Each query is run by a L{metaproxy.backend.query.Query} (leader first,
forwards followed inside the proxy, hedging, retry rounds within the
deadline). The cluster keeps what the queries share: one reconnecting
connection per meta (plus a few to leaders outside the configured list),
the believed leader, and what each meta last did (answered, failed), which
feeds the ranking of metas, L{describe} and L{is_up}.

A circuit breaker keeps a dead cluster from holding every request for its
whole budget: once every meta's link has been down (refused, unreachable,
lost) for longer than C{breaker_window}, a query only probes: it may take
C{BREAKER_PROBE} seconds (a link that connects at once, a meta just back,
still answers it), then fails with L{ClusterDown}; queries still retrying
fail at once. The links keep probing in the background too (each
reconnects at least every C{reconnect_max}), and the first meta that
connects closes the breaker. A fresh failure, such as
a meta restarting, is younger than the window and is still hidden within
the budget by retry rounds.
"""

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from metaproxy.backend.client import DEFAULT_MAX_REPLY_BYTES
from metaproxy.backend.connection import RECONNECT_MAX, MetaConnection
from metaproxy.backend.query import Query
from metaproxy.deadlines import Deadlines
from metaproxy.errors import BackendUnavailable, ClusterDown
from metaproxy.interfaces import IMetaCluster
from metaproxy.wire import querycfg
from metaproxy.wire.clusterinfo import LOOP_MARKER

log = Logger()

#: Encoded request args kept per (table, partition_indices); clients repeat them.
_ARGS_CACHE_SIZE = 1024


#: A cluster whose last usable answer is at most this old counts as up.
UP_WINDOW = 10.0

#: Seconds a query may take while the circuit breaker is open (a probe).
BREAKER_PROBE = 0.1


#: "host:port" of each meta key, made once (every answer is observed with it).
_LABELS = {}


def _fire(d, response, error):
    """The L{MetaCluster.query_then} callback behind L{MetaCluster.query_config}'s L{Deferred}."""
    if error is None:
        d.callback(response)
    else:
        d.errback(error)


def _default_connection_factory(reactor, connect_timeout, reconnect_max=RECONNECT_MAX,
                                max_reply_bytes=DEFAULT_MAX_REPLY_BYTES, negotiator=None):
    def make(host, port):
        return MetaConnection(
            reactor, host, port, connect_timeout=connect_timeout, reconnect_max=reconnect_max,
            max_frame_bytes=max_reply_bytes, partition_hash=LOOP_MARKER, negotiator=negotiator,
        )

    return make


@implementer(IMetaCluster)
@attrs.define(eq=False)
class MetaCluster:
    """
    Pooled connections to one cluster's metas, with leader tracking.

    @ivar reactor: provides L{IReactorTime} (and L{IReactorTCP} for the
        default connection factory).
    @ivar meta_addrs: the cluster's L{metaproxy.routes.route.MetaAddrs}.
    @ivar hedge_delay: seconds to wait for the believed leader before every
        other meta is asked too (at most half of a query's deadline); also
        the interval at which idle metas are asked again while an attempt
        hangs.
    @ivar retry_delay: seconds to wait before another round when every meta
        failed or gave no usable answer (links down, forwards while a new
        leader is elected) and the deadline allows it.
    @ivar max_extra: how many connections to leaders outside the configured
        list are kept at most.
    @ivar forwards_outside: forwards naming a meta outside the configured
        list, by C{followed} and C{refused} (one query sent outside at most
        L{metaproxy.backend.query.MAX_OUTSIDE_SENDS} times).
    @ivar connect_timeout: seconds one connection attempt may take.
    @ivar reconnect_max: the cap of each connection's reconnect delay.
    @ivar connection_factory: C{(host, port) -> MetaConnection}-like object
        with C{start}, C{stop}, C{call} and C{matches} (and optionally
        C{state}, C{connected_since}, C{last_error}); built from
        C{reactor}, C{connect_timeout} and C{reconnect_max} when L{None}.
    @ivar metrics: an object with C{backend_call(cluster_name, meta,
        outcome, seconds)} (L{metaproxy.ops.metrics.Metrics}), or L{None}; told
        of every answer or failure of every meta (not of calls cancelled
        because another meta already won).
    @ivar cluster_name: the name routes give this cluster (for metrics and
        status); the meta address list until a route names it.
    @ivar max_reply_bytes: the largest reply accepted from a meta (for the
        default connection factory).
    @ivar negotiator: the L{metaproxy.security.upstream.UpstreamNegotiator}
        every connection of the default factory negotiates with before use
        (a secured cluster), or L{None}; L{describe} shows its state as
        C{auth}.
    @ivar last_used: the clock time of the last L{query_config}.
    @ivar last_ok: the clock time of the last usable answer, or L{None}.
    @ivar last_error: the last failure of any meta, C{"host:port: why"}.
    @ivar last_error_at: its clock time, or L{None}.
    @ivar breaker_window: seconds every meta's link must have been down
        before queries fail at once (0: never).
    @ivar fast_failures: queries failed at once by the breaker.
    """

    reactor: object
    meta_addrs: object
    hedge_delay: float = 1.0
    retry_delay: float = 0.1
    max_extra: int = 3
    connect_timeout: float = 3.0
    connection_factory: object = None
    metrics: object = None
    reconnect_max: float = RECONNECT_MAX
    cluster_name: str = ""
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    breaker_window: float = 2.0
    fast_failures: int = attrs.field(init=False, default=0)
    _breaker_open: bool = attrs.field(init=False, default=False)
    negotiator: object = None
    last_used: float = attrs.field(init=False, default=0.0)
    last_ok: object = attrs.field(init=False, default=None)
    last_error: str = attrs.field(init=False, default="")
    last_error_at: object = attrs.field(init=False, default=None)
    _heard: dict = attrs.field(init=False, factory=dict)
    _configured: dict = attrs.field(init=False, factory=dict)
    _extra: dict = attrs.field(init=False, factory=dict)
    _leader: tuple = attrs.field(init=False, default=None)
    _queries: set = attrs.field(init=False, factory=set)
    _closed: bool = attrs.field(init=False, default=False)
    _args: dict = attrs.field(init=False, factory=dict)
    forwards_outside: dict = attrs.field(init=False, factory=lambda: {"followed": 0, "refused": 0})
    _deadlines: object = attrs.field(init=False, default=None)

    def __attrs_post_init__(self):
        # Every query's deadline and hedge time: one structure per clock.
        self._deadlines = Deadlines.of(self.reactor)
        if self.connection_factory is None:
            self.connection_factory = _default_connection_factory(
                self.reactor, self.connect_timeout, self.reconnect_max, self.max_reply_bytes, self.negotiator
            )
        if not self.cluster_name:
            self.cluster_name = str(self.meta_addrs)
        for host, port in self.meta_addrs.addrs:
            conn = self.connection_factory(host, port)
            self._configured[(host, port)] = conn
            conn.start()
        self._leader = self.meta_addrs.addrs[0]
        self.last_used = self.reactor.seconds()

    @property
    def leader(self):
        """@return: the believed leader as C{"host:port"}."""
        return self._label(self._leader)

    def in_flight(self):
        """@return: how many queries are running."""
        return len(self._queries)

    def connections(self):
        """@return: a L{dict} C{"host:port"} to connection, configured and extra."""
        return {self._label(k): c for k, c in (*self._configured.items(), *self._extra.items())}

    def describe(self):
        """
        @return: a JSON-ready L{dict}: C{cluster_name}, C{meta_addrs},
            C{leader} (believed, see C{answered}), C{answered} (whether any
            meta ever gave a usable answer), C{last_answer_age} (seconds
            since the last usable answer, or L{None}), C{last_error} and
            C{last_error_age}, C{up} (see L{is_up}), C{in_flight},
            C{last_used} and C{metas} (each meta's C{address}, C{state},
            whether it is C{configured}, C{last_heard_age}, C{last_error}).
        """
        now = self.reactor.seconds()

        def age(t):
            return None if t is None else round(now - t, 3)

        def meta(key, conn, configured):
            return {
                "address": self._label(key),
                "state": getattr(conn, "state", "?"),
                "configured": configured,
                "last_heard_age": age(self._heard.get(key)),
                "last_error": getattr(conn, "last_error", "") or "",
            }

        metas = [meta(k, c, True) for k, c in self._configured.items()]
        metas += [meta(k, c, False) for k, c in self._extra.items()]
        return {
            "cluster_name": self.cluster_name,
            "meta_addrs": str(self.meta_addrs),
            "leader": self.leader,
            "answered": self.last_ok is not None,
            "last_answer_age": age(self.last_ok),
            "last_error": self.last_error or None,
            "last_error_age": age(self.last_error_at),
            "up": self.is_up(),
            "breaker_open": self._breaker_open,
            "in_flight": len(self._queries),
            "last_used": self.last_used,
            "metas": metas,
            "auth": None if self.negotiator is None else self.negotiator.describe(),
        }

    def is_up(self):
        """
        @return: L{True} if a usable answer came within L{UP_WINDOW}
            seconds, or a meta that answered over its current link is
            still connected (for C{metaproxy_backend_up}).
        """
        now = self.reactor.seconds()
        if self.last_ok is not None and now - self.last_ok <= UP_WINDOW:
            return True
        for key, conn in (*self._configured.items(), *self._extra.items()):
            heard = self._heard.get(key)
            since = getattr(conn, "connected_since", None)
            if heard is not None and since is not None and heard >= since and self._is_up(key):
                return True
        return False

    def query_config(self, app_name, partition_indices, timeout):
        """
        Ask the leader for a table's configuration (see L{IMetaCluster}).

        @return: a L{Deferred} firing with a L{metaproxy.wire.frame.Response}
            that is not a forward, or failing with L{BackendUnavailable}
            within C{timeout} seconds. Cancelling it stops every attempt.
        """
        if self._closed:
            return defer.fail(BackendUnavailable(f"pool for {self.meta_addrs} is closed"))
        d = defer.Deferred(lambda _: query.cancel())
        query = self.query_then(app_name, partition_indices, timeout, _fire, d)
        return d

    def query_then(self, app_name, partition_indices, timeout, done, arg):
        """
        L{query_config} without a L{Deferred}: C{done(arg, response, error)}
        is called exactly once within C{timeout} seconds (possibly before
        this returns), with the response and L{None}, or L{None} and a
        L{BackendUnavailable}, unless the returned query is cancelled first.

        @return: the running L{Query} (with C{cancel()}), or L{None} when
            C{done} was already called.
        """
        if self._closed:
            done(arg, None, BackendUnavailable(f"pool for {self.meta_addrs} is closed"))
            return None
        now = self.reactor.seconds()
        self.last_used = now
        probe = self.breaker_reason() is not None
        if probe:
            self.fast_failures += 1
            timeout = min(timeout, BREAKER_PROBE)
        key = (app_name, tuple(partition_indices))
        args = self._args.get(key)
        if args is None:
            args = querycfg.encode_args(*key)
            if len(self._args) >= _ARGS_CACHE_SIZE:
                self._args.clear()
            self._args[key] = args
        query = Query(self, args, now + timeout, done, arg)
        if probe:
            query.error = ClusterDown
        self._queries.add(query)
        return query.start()

    def breaker_reason(self):
        """
        @return: why the circuit breaker is open (every meta's link down for
            longer than C{breaker_window}), or L{None} while it is closed.
            Opening and closing are logged once each.
        """
        window = self.breaker_window
        if window <= 0:
            return None
        now = self.reactor.seconds()
        shortest = None
        for conn in (*self._configured.values(), *self._extra.values()):
            since = getattr(conn, "down_since", None)
            if since is None:
                shortest = None
                break
            down_for = now - since
            shortest = down_for if shortest is None else min(shortest, down_for)
        is_open = shortest is not None and shortest > window
        if is_open != self._breaker_open:
            self._breaker_open = is_open
            if is_open:
                log.warn(
                    "every meta of {cluster} has been down for {seconds:.1f}s ({error}); answering its queries "
                    "with a retryable error at once while the links keep probing",
                    cluster=self.cluster_name, seconds=shortest, error=self.last_error or "no answer",
                )
            else:
                log.info("a meta of {cluster} is reachable again; queries go to it", cluster=self.cluster_name)
        if not is_open:
            return None
        return f"every meta of {self.meta_addrs} down for {shortest:.1f}s (last: {self.last_error or 'no answer'})"

    def close(self):
        """
        Fail every running query with L{BackendUnavailable}, close every
        connection and stop reconnecting.

        @return: a L{Deferred} firing once every connection is closed.
        """
        self._closed = True
        for query in list(self._queries):
            query.abort(f"pool for {self.meta_addrs} closed")
        conns = [*self._configured.values(), *self._extra.values()]
        self._extra.clear()
        return defer.gatherResults(
            [defer.maybeDeferred(c.stop) for c in conns], consumeErrors=True
        ).addCallback(lambda _: None)

    # -- used by Query

    def _observe(self, key, started, outcome):
        metrics = self.metrics
        if metrics is not None:
            metrics.backend_call(self.cluster_name, self._label(key), outcome, self.reactor.seconds() - started)

    def _heard_from(self, key):
        """C{key} answered (a usable answer or a forward): it is alive."""
        self._heard[key] = self.reactor.seconds()

    def _heard_error(self, key, why):
        self.last_error = f"{self._label(key)}: {why}"
        self.last_error_at = self.reactor.seconds()

    def _won(self, key):
        self.last_ok = self.reactor.seconds()
        self._set_leader(key)

    def _is_up(self, key):
        """@return: L{False} only when C{key}'s link is known to be down (not connected, no attempt running)."""
        return getattr(self._connection(key), "state", None) not in ("down", "stopped")

    def _ranked(self):
        """@return: the candidates, links up first, then most recently heard from first."""
        heard = self._heard
        return sorted(self._candidates(), key=lambda k: (not self._is_up(k), -heard.get(k, float("-inf"))))

    def _candidates(self):
        keys = list(self._configured)
        if self._leader in self._extra:
            keys.append(self._leader)
        return keys

    def _connection(self, key):
        conn = self._configured.get(key)
        if conn is None:
            conn = self._extra[key]
        return conn

    def _label(self, key):
        label = _LABELS.get(key)
        if label is None:
            if len(_LABELS) >= _ARGS_CACHE_SIZE:
                _LABELS.clear()
            label = _LABELS[key] = f"{key[0]}:{key[1]}"
        return label

    def _known_key(self, ip, port):
        """@return: the key of the connection serving C{ip:port} (configured or extra), or L{None}."""
        key = (ip, port)
        if key in self._configured or key in self._extra:
            return key
        for k, conn in self._configured.items():
            if conn.matches(ip, port):
                return k
        for k, conn in self._extra.items():
            if conn.matches(ip, port):
                return k
        return None

    def _count_forward_outside(self, outcome):
        """Count a forward to a meta outside the route: C{"followed"} or C{"refused"} (over the bound)."""
        self.forwards_outside[outcome] = self.forwards_outside.get(outcome, 0) + 1
        count = getattr(self.metrics, "forward_outside", None)
        if count is not None:
            count(outcome)

    def _key_for(self, ip, port):
        """
        @return: the key of the connection serving C{ip:port}, making a new
            extra connection when no known meta matches it.
        """
        key = self._known_key(ip, port)
        if key is not None:
            return key
        key = (ip, port)
        log.info(
            "meta {meta} of {cluster} is not in the configured list; connecting to it",
            meta=self._label(key),
            cluster=str(self.meta_addrs),
        )
        conn = self.connection_factory(ip, port)
        self._extra[key] = conn
        conn.start()
        self._trim_extra()
        return key

    def _trim_extra(self):
        while len(self._extra) > self.max_extra:
            victim = next((k for k in self._extra if k != self._leader), None)
            if victim is None:
                return
            conn = self._extra.pop(victim)
            self._heard.pop(victim, None)
            d = defer.maybeDeferred(conn.stop)
            d.addErrback(lambda f: log.failure("closing an extra meta connection failed", f))

    def _set_leader(self, key):
        if key == self._leader:
            return
        log.info(
            "meta leader of {cluster} is now {leader} (was {previous})",
            cluster=str(self.meta_addrs),
            leader=self._label(key),
            previous=self._label(self._leader),
        )
        self._leader = key
        if key in self._extra:  # most recently useful: evicted last
            self._extra[key] = self._extra.pop(key)
