# -*- test-case-name: metaproxy.test.test_resolver -*-
"""
The query_cfg path: route the table, ask its cluster, relay the answer.

Every request gets one answer budget from its arrival (see
L{metaproxy.backend.pools.answer_budget}): the route lookup (also a first
ZooKeeper read), connecting, leader following, hedging and retry rounds all
draw on it, and when it runs out the request is answered with the retryable
C{ERR_SERVICE_NOT_ACTIVE}, before the client's own timer fires, whatever is
still running.

Identical queries are coalesced *with freshness*: per (cluster, table,
partition_indices) at most one upstream query is in flight, plus one queued
batch. A request that arrives while a query is in flight waits for the next
one, so every answer was computed after its request arrived; but never past
its own budget: it is answered at its own deadline even if the shared query
runs on for the others. A queued batch whose waiters have all gone starts
no upstream query. This is what absorbs the herd when an operator switches
a table and every client re-queries at once. Upstream queries in flight are
capped (C{max_upstream}); beyond the cap a request gets the retryable error
at once.
"""

from typing import Optional
import time

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from metaproxy import errors
from metaproxy.backend.pools import answer_budget
from metaproxy.deadlines import Deadlines
from metaproxy.wire import codes, querycfg
from metaproxy.wire.frame import Reply

log = Logger()

def _error_reply(err):
    return Reply(querycfg.error_result(err), app_error=err)


#: How many (cluster, table, indices) keep their last relayed answer.
_RELAY_CACHE_SIZE = 4096

_NOT_FOUND = _error_reply(codes.ERR_OBJECT_NOT_FOUND)
_RETRY_LATER = _error_reply(codes.ERR_SERVICE_NOT_ACTIVE)


def relay_reply(response):
    """
    Turn a backend query_cfg response into the reply a client gets.

    The body is relayed as it came, minus the C{hp_*} fields old THFT
    clients cannot parse. The unstripped body is kept as C{native_body} for
    RDSN (C++) clients, which get what the meta sent: in Pegasus master,
    C{src/client/partition_resolver_simple.cpp} (C{get_host_port}) routes by
    C{pc.hp_primary} / C{hp_last_drops}, so a master C++ client finds no
    replica without them; a C++ client as old as a meta without C{hp_*}
    (v2.5.0 C{idl/dsn.layer2.thrift}, whose generated reader would
    desynchronise on them) never receives them. An app-level error name
    some client would not know becomes C{ERR_UNKNOWN}; a forward (which the
    pool must never return) and any rpc-level error become the retryable
    C{ERR_SERVICE_NOT_ACTIVE}.

    @param response: a L{metaproxy.wire.frame.Response}.
    @return: a L{Reply}.
    @raise metaproxy.wire.binary.DecodeError: if the body is malformed.
    """
    if response.rpc_error != codes.ERR_OK:
        return _RETRY_LATER
    body = response.body
    peek = querycfg.peek_result(body)
    if peek.err == codes.ERR_FORWARD_TO_OTHERS:
        return _RETRY_LATER
    if peek.err not in codes.CLIENT_SAFE:
        return _error_reply(codes.ERR_UNKNOWN)
    stripped = querycfg.strip_host_port(body)
    return Reply(stripped, app_error=peek.err, native_body=None if stripped is body else body)


class _Waiter:
    """
    One request: its deadline and where it waits (route lookup, batch), and
    where its answer goes: C{answer} (a L{Deferred}, for L{QueryConfigResolver.handle})
    or C{conn.request_answered(token, request, reply)} (for
    L{QueryConfigResolver.start}).
    """

    __slots__ = ("owner", "table", "deadline_at", "started", "answer", "timer", "lookup", "key", "done",
                 "conn", "token", "request")

    def __init__(self, owner, table, deadline_at, started):
        self.owner = owner
        self.table = table
        self.deadline_at = deadline_at
        self.started = started
        self.answer = self.timer = self.lookup = self.key = self.conn = self.token = self.request = None
        self.done = False

    def cancel(self):
        """The client is gone: stop waiting, answer nothing (the request's cancel handle)."""
        if not self.done:
            self.owner._detach(self)


@attrs.define(eq=False)
class _Batch:
    """Requests answered by one upstream query."""

    waiters: list = attrs.field(factory=list)
    upstream: object = None
    key: Optional[tuple] = None
    finished: bool = False


@attrs.define(eq=False)
class _Flight:
    """The running batch of one key, and the batch queued behind it."""

    running: _Batch
    cluster_name: str = ""
    queued: Optional[_Batch] = None


@attrs.define(eq=False)
class QueryConfigResolver:
    """
    Answers C{RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX} requests.

    @ivar routes: the L{metaproxy.interfaces.IRouteTable}; its lookup
        Deferreds are cancelled when a request's budget runs out first.
    @ivar pools: the L{metaproxy.interfaces.IClusterPools}.
    @ivar clock: the L{IReactorTime} of deadlines (the global reactor when
        L{None}).
    @ivar default_timeout: the answer budget, in seconds, of a request
        whose client gave no timeout (C{timeouts.client_default}).
    @ivar max_timeout: the cap on any answer budget, in seconds.
    @ivar margin_ratio: the part of the client's timeout kept as a safety
        margin (C{timeouts.margin_ratio}).
    @ivar margin_min: the least safety margin, in seconds
        (C{timeouts.margin_min}).
    @ivar max_upstream: at most this many upstream queries in flight.
    @ivar metrics: an object with the hooks of L{metaproxy.ops.metrics.Metrics},
        or L{None}.
    @ivar timer: returns the current time in seconds, for latency metrics.
    @ivar refused_upstream: requests answered at once because
        C{max_upstream} queries were in flight.
    """

    routes: object
    pools: object
    default_timeout: float = 1.5
    max_timeout: float = 30.0
    metrics: object = None
    timer: object = time.perf_counter
    clock: object = None
    margin_ratio: float = 0.1
    margin_min: float = 0.1
    max_upstream: int = 4096
    refused_upstream: int = attrs.field(init=False, default=0)
    _flights: dict = attrs.field(init=False, factory=dict)
    _relayed: dict = attrs.field(init=False, factory=dict)
    _at_cap: bool = attrs.field(init=False, default=False)
    _deadlines: object = attrs.field(init=False, default=None)
    _cached: object = attrs.field(init=False, default=None)

    def __attrs_post_init__(self):
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        # A route table may answer cached routes synchronously (no Deferred).
        self._cached = getattr(self.routes, "cached", None)

    def in_flight(self):
        """@return: how many distinct upstream queries are running now (C{metaproxy_upstream_inflight})."""
        return len(self._flights)

    def budget(self, request):
        """
        @param request: a decoded request; its client timeout is read from
            C{request.header.client_timeout} (milliseconds, 0: not given),
            whatever framing carried it.
        @return: the seconds this request may take to be answered.
        """
        return answer_budget(
            request.header.client_timeout, self.default_timeout, self.max_timeout, self.margin_ratio, self.margin_min
        )

    def handle(self, request, connection):
        """
        Answer one query_cfg request (an L{IRequestHandler}-style callable).

        @return: a L{Deferred} firing with a L{Reply} within the request's
            L{budget} (the retryable C{ERR_SERVICE_NOT_ACTIVE} when time ran
            out); it fails only with L{metaproxy.wire.binary.DecodeError}
            (raised at once) for malformed args (the protocol answers those
            with an rpc-level error) or with L{defer.CancelledError} when
            the caller cancels it.
        """
        query = querycfg.decode_args(request.args)
        waiter = self._waiter(request, query)
        d = waiter.answer = defer.Deferred(lambda _: waiter.cancel())
        self._route(waiter, query)
        return d

    def start(self, request, connection, token):
        """
        Answer one query_cfg request without a L{Deferred} (the server's
        fast path; same answers and budget as L{handle}).

        Exactly once, within the request's budget (possibly before this
        returns), C{connection.request_answered(token, request, reply)} is
        called, unless the returned handle's C{cancel()} was called first.

        @return: the cancel handle (an object with C{cancel()}).
        @raise metaproxy.wire.binary.DecodeError: at once, for malformed args.
        """
        query = querycfg.decode_args(request.args)
        waiter = self._waiter(request, query)
        waiter.conn = connection
        waiter.token = token
        waiter.request = request
        self._route(waiter, query)
        return waiter

    def _waiter(self, request, query):
        budget = self.budget(request)
        started = self.timer()
        metrics = self.metrics
        if metrics is not None:
            metrics.query_received(query.app_name)
        clock = self.clock
        waiter = _Waiter(self, query.app_name, clock.seconds() + budget, started)
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = Deadlines.of(clock)
        waiter.timer = deadlines.at(waiter.deadline_at, self._expired, waiter)
        return waiter

    def _route(self, waiter, query):
        """Find the route: a cached one at once, otherwise through the lookup's L{Deferred}."""
        cached = self._cached
        if cached is not None:
            route = cached(query.app_name)
            if route is not None:
                self._join(route, waiter, query)
                return
        lookup = self.routes.lookup(query.app_name)
        if not lookup.called:
            waiter.lookup = lookup
        lookup.addCallbacks(self._routed, self._lookup_failed, (waiter, query), errbackArgs=(waiter,))

    def _reply(self, waiter, reply):
        """Answer the request with C{reply}, recorded first in the metrics."""
        metrics = self.metrics
        if metrics is not None:
            if reply.rpc_error != codes.ERR_OK:
                err = reply.rpc_error
            else:
                err = reply.app_error or codes.ERR_OK
            metrics.query_answered(waiter.table, err, self.timer() - waiter.started)
        conn = waiter.conn
        if conn is not None:
            request, waiter.request, waiter.conn = waiter.request, None, None
            conn.request_answered(waiter.token, request, reply)
        else:
            waiter.answer.callback(reply)

    # -- one request's life

    def _answer(self, waiter, reply):
        if waiter.done:
            return
        waiter.done = True
        timer, waiter.timer = waiter.timer, None
        if timer is not None:
            timer.cancel()
        self._reply(waiter, reply)

    def _detach(self, waiter):
        """Stop waiting on the route lookup or the batch (the request is answered otherwise, or gone)."""
        waiter.done = True
        timer, waiter.timer = waiter.timer, None
        if timer is not None:
            timer.cancel()
        lookup, waiter.lookup = waiter.lookup, None
        if lookup is not None:
            lookup.cancel()
        if waiter.key is not None:
            self._leave(waiter.key, waiter)

    def _expired(self, waiter):
        """The budget ran out: answer the retryable error now, leave the rest running."""
        waiter.timer = None
        if waiter.done:
            return
        self._detach(waiter)
        self._reply(waiter, _RETRY_LATER)

    def _routed(self, route, waiter, query):
        waiter.lookup = None
        if not waiter.done:
            self._join(route, waiter, query)

    def _lookup_failed(self, failure, waiter):
        waiter.lookup = None
        if waiter.done:
            return None  # answered already (the lookup was cancelled)
        self._answer(waiter, self._error_reply(failure, waiter.table))
        return None

    def _error_reply(self, failure, table):
        if failure.check(errors.TableNotFound):
            return _NOT_FOUND
        if failure.check(errors.InvalidRoute, errors.RouteUnavailable, errors.BackendUnavailable, defer.CancelledError):
            return _RETRY_LATER
        log.failure("query_cfg for {table} failed unexpectedly", failure, table=table)
        return _RETRY_LATER

    # -- coalescing

    def _join(self, route, waiter, query):
        """Add one request to the batch for its key; start it if none runs."""
        key = (route.meta_addrs, query.app_name, query.partition_indices)
        flight = self._flights.get(key)
        if flight is None:
            if len(self._flights) >= self.max_upstream:
                self.refused_upstream += 1
                if not self._at_cap:
                    self._at_cap = True
                    log.warn(
                        "{count} upstream queries in flight (limit); answering new ones with a retryable error",
                        count=len(self._flights),
                    )
                self._answer(waiter, _RETRY_LATER)
                return
            self._at_cap = False
            waiter.key = key
            batch = _Batch([waiter])
            self._flights[key] = _Flight(batch, route.cluster_name)
            self._start(key, batch)
            return
        waiter.key = key
        if flight.queued is None:
            flight.queued = _Batch()
        if self.metrics is not None:
            self.metrics.coalesced(query.app_name)
        flight.queued.waiters.append(waiter)

    def _start(self, key, batch):
        meta_addrs, table, indices = key
        batch.key = key
        if self.metrics is not None:
            self.metrics.upstream_query(table)
        # The query may run as long as its most patient waiter.
        waiters = batch.waiters
        if len(waiters) == 1:
            timeout = waiters[0].deadline_at - self.clock.seconds()
        else:
            timeout = max(w.deadline_at for w in waiters) - self.clock.seconds()
        try:
            cluster = self.pools.get(meta_addrs, self._flights[key].cluster_name)
        except Exception as e:  # e.g. the pools are closed
            self._upstream_answered(batch, None, e)
            return
        query_then = getattr(cluster, "query_then", None)
        if query_then is None:  # an IMetaCluster with only the Deferred API
            try:
                upstream = cluster.query_config(table, indices, max(timeout, 0.0))
            except Exception:
                upstream = defer.fail()
            batch.upstream = upstream
            upstream.addCallbacks(self._upstream_done, self._upstream_done, (batch, None),
                                  errbackArgs=(batch, None))
            return
        try:
            handle = query_then(table, indices, max(timeout, 0.0), self._upstream_answered, batch)
        except Exception as e:
            handle = None
            self._upstream_answered(batch, None, e)
        if not batch.finished:
            batch.upstream = handle

    def _upstream_done(self, result, batch, error):
        """The Deferred API's outcome (a response or a L{Failure}) of C{batch}'s query."""
        if isinstance(result, Failure):
            self._upstream_answered(batch, None, result)
        elif error is not None:
            self._upstream_answered(batch, None, error)
        else:
            self._upstream_answered(batch, result, None)

    def _upstream_answered(self, batch, response, error):
        """C{batch}'s upstream query ended: relay C{response}, or the retryable error for C{error}."""
        batch.finished = True
        batch.upstream = None
        key = batch.key
        if error is None:
            reply = self._relay(response, key)
        else:
            reply = self._upstream_failed(error, key[1])
        self._finish(reply, key, batch)

    def _relay(self, response, key):
        # A table's answer rarely changes between queries: comparing bytes
        # (memcmp) is far cheaper than decoding and stripping them again.
        last = self._relayed.get(key)
        if last is not None and last[0] == response.body and response.rpc_error == codes.ERR_OK:
            return last[1]
        try:
            reply = relay_reply(response)
        except ValueError:
            log.warn("malformed query_cfg answer from a meta server ({size} bytes)", size=len(response.body))
            return _RETRY_LATER
        if response.rpc_error == codes.ERR_OK and reply.app_error == codes.ERR_OK:
            if len(self._relayed) >= _RELAY_CACHE_SIZE:
                self._relayed.clear()
            self._relayed[key] = (response.body, reply)
        return reply

    def _upstream_failed(self, error, table):
        failure = error if isinstance(error, Failure) else Failure(error)
        if not failure.check(errors.BackendUnavailable, defer.CancelledError):
            log.failure("backend query for {table} failed unexpectedly", failure, table=table)
        return _RETRY_LATER

    def _finish(self, reply, key, batch):
        flight = self._flights.get(key)
        if flight is not None and flight.running is batch:
            nxt = flight.queued
            if nxt is not None and nxt.waiters:
                flight.running, flight.queued = nxt, None
                self._start(key, nxt)
            else:
                del self._flights[key]
        waiters, batch.waiters = batch.waiters, []
        for waiter in waiters:
            self._answer(waiter, reply)

    def _leave(self, key, waiter):
        """
        A request gave up or ran out of time: drop it; cancel the upstream
        only if nobody is left, and forget a queued batch nobody waits for.
        """
        flight = self._flights.get(key)
        if flight is None:
            return
        if flight.queued is not None and waiter in flight.queued.waiters:
            flight.queued.waiters.remove(waiter)
            if not flight.queued.waiters:
                flight.queued = None
            return
        batch = flight.running
        if waiter in batch.waiters:
            batch.waiters.remove(waiter)
            upstream = batch.upstream
            if not batch.waiters and upstream is not None:
                upstream.cancel()
                # A cancelled Deferred reports through its errback; the
                # callback API says nothing more once cancelled.
                if not batch.finished:
                    self._upstream_answered(batch, None, defer.CancelledError())
