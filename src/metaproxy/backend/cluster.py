# -*- test-case-name: metaproxy.test.test_backend_cluster -*-
"""
One Pegasus cluster's meta servers: follow the leader, hedge, never hang.

A query goes to the meta believed to be the leader. A follower answers
C{ERR_FORWARD_TO_OTHERS} with the leader's address; that address is asked
next, inside the proxy (also when it is not in the configured list: a
connection is made for it). After C{hedge_delay}, or as soon as an attempt
fails or a forward names no leader, every other meta is asked at once. The
first answer that is not a forward wins and its meta becomes the believed
leader. A forward never reaches the caller; when no meta answers before the
deadline the caller gets L{BackendUnavailable}.
"""

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from metaproxy.backend.client import DEFAULT_MAX_REPLY_BYTES, NotConnected
from metaproxy.backend.connection import MetaConnection
from metaproxy.errors import BackendUnavailable
from metaproxy.interfaces import IMetaCluster
from metaproxy.wire import codes, querycfg
from metaproxy.wire.binary import DecodeError

log = Logger()

#: Encoded request args kept per (table, partition_indices); clients repeat them.
_ARGS_CACHE_SIZE = 1024


@attrs.define(eq=False)
class _Query:
    """One query_config call: its attempts, timers and outcome."""

    cluster: object
    args: bytes
    deadline_at: float
    result: defer.Deferred = attrs.field(init=False, default=None)
    attempts: dict = attrs.field(init=False, factory=dict)
    tried: set = attrs.field(init=False, factory=set)
    hedged: bool = attrs.field(init=False, default=False)
    reachable: bool = attrs.field(init=False, default=False)
    done: bool = attrs.field(init=False, default=False)
    rounds: int = attrs.field(init=False, default=0)
    last_error: str = attrs.field(init=False, default="")
    hedge_timer: object = attrs.field(init=False, default=None)
    deadline_timer: object = attrs.field(init=False, default=None)
    retry_timer: object = attrs.field(init=False, default=None)

    def start(self):
        cluster = self.cluster
        clock = cluster.reactor
        self.result = defer.Deferred(self._cancelled)
        self.deadline_timer = clock.callLater(
            max(self.deadline_at - clock.seconds(), 0.0), self._expired
        )
        self._round()
        return self.result

    def _round(self):
        self.rounds += 1
        self.retry_timer = None
        self.tried = set()
        self.hedged = False
        self.reachable = False
        if self.rounds > 1:
            self._hedge()
            return
        self._send(self.cluster._leader)
        if not self.done and not self.hedged:
            if len(self.cluster._candidates()) > 1:
                # A short deadline (Java 1.x sends 1000 ms) still leaves
                # the other metas half of it.
                clock = self.cluster.reactor
                delay = min(self.cluster.hedge_delay, (self.deadline_at - clock.seconds()) / 2)
                self.hedge_timer = clock.callLater(max(delay, 0.0), self._hedge)
            else:
                self._check_exhausted()

    def _send(self, key):
        cluster = self.cluster
        conn = cluster._connection(key)
        self.tried.add(key)
        remaining = self.deadline_at - cluster.reactor.seconds()
        d = conn.call(querycfg.QUERY_CFG, self.args, None, int(remaining * 1000))
        # A fast failure (link down) fires at once; the handlers pop it again.
        self.attempts[key] = d
        started = cluster.reactor.seconds()
        d.addCallbacks(self._answered, self._failed, (key, started), errbackArgs=(key, started))

    def _observe(self, key, started, outcome):
        metrics = self.cluster.metrics
        if metrics is not None:
            cluster = self.cluster
            metrics.backend_call(
                str(cluster.meta_addrs), cluster._label(key), outcome, cluster.reactor.seconds() - started
            )

    def _answered(self, response, key, started):
        self.attempts.pop(key, None)
        if response.rpc_error != codes.ERR_OK:
            self._observe(key, started, response.rpc_error)
        else:
            try:
                self._observe(key, started, querycfg.peek_result(response.body).err)
            except DecodeError:
                self._observe(key, started, "malformed")
        if self.done:
            return
        self.reachable = True
        if response.rpc_error != codes.ERR_OK:
            self._note_failure(key, f"rpc error {response.rpc_error}")
            return
        try:
            peek = querycfg.peek_result(response.body)
        except DecodeError as e:
            self._note_failure(key, f"malformed answer: {e}")
            return
        if peek.err != codes.ERR_FORWARD_TO_OTHERS:
            self._win(key, response)
            return
        target = querycfg.address_host_port(peek.leader) if peek.leader else None
        if target is None:
            self._note_failure(key, "forward without a leader")
            return
        leader_key = self.cluster._key_for(*target)
        if leader_key in self.tried:
            self._note_failure(key, f"forward to {target[0]}:{target[1]}, already asked")
            return
        self._send(leader_key)
        self._check_exhausted()

    def _failed(self, failure, key, started):
        self.attempts.pop(key, None)
        if self.done:
            return
        self._observe(key, started, failure.type.__name__)
        if not failure.check(NotConnected):
            self.reachable = True
        self._note_failure(key, failure.getErrorMessage())

    def _note_failure(self, key, why):
        self.last_error = f"{self.cluster._label(key)}: {why}"
        self._hedge()
        self._check_exhausted()

    def _hedge(self):
        if self.hedged or self.done:
            return
        self.hedged = True
        if self.hedge_timer is not None and self.hedge_timer.active():
            self.hedge_timer.cancel()
        self.hedge_timer = None
        for key in self.cluster._candidates():
            if self.done:
                return
            if key not in self.tried:
                self._send(key)
        self._check_exhausted()

    def _check_exhausted(self):
        """Every attempt of this round ended without a winner: retry or give up."""
        if self.done or self.attempts or not self.hedged or self.retry_timer is not None:
            return
        cluster = self.cluster
        clock = cluster.reactor
        if not self.reachable:
            # Every meta's link is down: answer now rather than at the deadline.
            self._fail(f"no meta of {cluster.meta_addrs} is reachable ({self.last_error})")
            return
        delay = cluster.retry_delay
        if clock.seconds() + delay >= self.deadline_at:
            return  # the deadline timer answers
        self.retry_timer = clock.callLater(delay, self._round)

    def _win(self, key, response):
        self.cluster._set_leader(key)
        self._finish()
        self.result.callback(response)

    def _fail(self, why):
        self._finish()
        self.result.errback(BackendUnavailable(why))

    def _expired(self):
        self.deadline_timer = None
        if self.done:
            return
        why = self.last_error or "no answer"
        self._fail(f"no meta of {self.cluster.meta_addrs} answered in time ({why})")

    def _cancelled(self, result):
        self._finish()

    def _finish(self):
        self.done = True
        self.cluster._queries.discard(self)
        for timer in (self.hedge_timer, self.deadline_timer, self.retry_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.hedge_timer = self.deadline_timer = self.retry_timer = None
        attempts, self.attempts = self.attempts, {}
        for d in attempts.values():
            d.cancel()

    def abort(self, why):
        if not self.done:
            self._fail(why)


def _default_connection_factory(reactor, connect_timeout, max_reply_bytes=DEFAULT_MAX_REPLY_BYTES):
    def make(host, port):
        return MetaConnection(reactor, host, port, connect_timeout=connect_timeout, max_frame_bytes=max_reply_bytes)

    return make


@implementer(IMetaCluster)
@attrs.define(eq=False)
class MetaCluster:
    """
    Pooled connections to one cluster's metas, with leader tracking.

    @ivar reactor: provides L{IReactorTime} (and L{IReactorTCP} for the
        default connection factory).
    @ivar meta_addrs: the cluster's L{metaproxy.route.MetaAddrs}.
    @ivar hedge_delay: seconds to wait for the believed leader before every
        other meta is asked too (at most half of a query's deadline).
    @ivar retry_delay: seconds to wait before another round when every meta
        answered without a usable answer (e.g. forwards while a new leader
        is elected) and the deadline allows it.
    @ivar max_extra: how many connections to leaders outside the configured
        list are kept at most.
    @ivar connect_timeout: seconds one connection attempt may take.
    @ivar connection_factory: C{(host, port) -> MetaConnection}-like object
        with C{start}, C{stop}, C{call} and C{matches}; built from
        C{reactor} and C{connect_timeout} when L{None}.
    @ivar metrics: an object with C{backend_call(cluster, meta, outcome,
        seconds)} (L{metaproxy.metrics.Metrics}), or L{None}; told of every
        answer or failure of every meta (not of calls cancelled because
        another meta already won).
    @ivar last_used: the clock time of the last L{query_config}.
    @ivar max_reply_bytes: the largest reply accepted from a meta (for the
        default connection factory).
    """

    reactor: object
    meta_addrs: object
    hedge_delay: float = 1.0
    retry_delay: float = 0.25
    max_extra: int = 3
    connect_timeout: float = 3.0
    connection_factory: object = None
    metrics: object = None
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    last_used: float = attrs.field(init=False, default=0.0)
    _configured: dict = attrs.field(init=False, factory=dict)
    _extra: dict = attrs.field(init=False, factory=dict)
    _leader: tuple = attrs.field(init=False, default=None)
    _queries: set = attrs.field(init=False, factory=set)
    _closed: bool = attrs.field(init=False, default=False)
    _args: dict = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self):
        if self.connection_factory is None:
            self.connection_factory = _default_connection_factory(
                self.reactor, self.connect_timeout, self.max_reply_bytes
            )
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
        @return: a JSON-ready L{dict}: C{meta_addrs}, C{leader}, C{in_flight},
            C{last_used} and C{metas} (each meta's C{address}, C{state} and
            whether it is C{configured}).
        """
        metas = [
            {"address": self._label(k), "state": getattr(c, "state", "?"), "configured": True}
            for k, c in self._configured.items()
        ]
        metas += [
            {"address": self._label(k), "state": getattr(c, "state", "?"), "configured": False}
            for k, c in self._extra.items()
        ]
        return {
            "meta_addrs": str(self.meta_addrs),
            "leader": self.leader,
            "in_flight": len(self._queries),
            "last_used": self.last_used,
            "metas": metas,
        }

    def query_config(self, app_name, partition_indices, timeout):
        """
        Ask the leader for a table's configuration (see L{IMetaCluster}).

        @return: a L{Deferred} firing with a L{metaproxy.wire.frame.Response}
            that is not a forward, or failing with L{BackendUnavailable}
            within C{timeout} seconds. Cancelling it stops every attempt.
        """
        if self._closed:
            return defer.fail(BackendUnavailable(f"pool for {self.meta_addrs} is closed"))
        now = self.reactor.seconds()
        self.last_used = now
        key = (app_name, tuple(partition_indices))
        args = self._args.get(key)
        if args is None:
            args = querycfg.encode_args(*key)
            if len(self._args) >= _ARGS_CACHE_SIZE:
                self._args.clear()
            self._args[key] = args
        query = _Query(self, args, now + timeout)
        self._queries.add(query)
        return query.start()

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

    # -- used by _Query

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
        return f"{key[0]}:{key[1]}"

    def _key_for(self, ip, port):
        """
        @return: the key of the connection serving C{ip:port}, making a new
            extra connection when no known meta matches it.
        """
        key = (ip, port)
        if key in self._configured:
            return key
        if key in self._extra:
            return key
        for k, conn in self._configured.items():
            if conn.matches(ip, port):
                return k
        for k, conn in self._extra.items():
            if conn.matches(ip, port):
                return k
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
