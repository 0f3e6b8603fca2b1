# -*- test-case-name: metaproxy.test.test_resolver -*-
"""
The query_cfg path: route the table, ask its cluster, relay the answer.

Every request gets one answer budget from its arrival, by its client
family (see L{metaproxy.frontend.families}): the route lookup (also a first
ZooKeeper read), connecting, leader following, hedging and retry rounds all
draw on it, and when it runs out the request is answered with the retryable
C{ERR_SERVICE_NOT_ACTIVE}, before the client's own timer fires, whatever is
still running.

When the cluster could not answer (budget spent, every meta failed, or the
leader said C{ERR_SERVICE_NOT_ACTIVE} / C{ERR_UNDER_RECOVERY}), the one place
that turns this into an answer is L{QueryConfigResolver.could_not_answer}:
the table's last good answer if L{metaproxy.backend.lastgood} may serve it
(stale-if-error), else the retryable error.

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

A late answer is not wasted: when a request's budget runs out, the upstream
query it waited for keeps running (until C{late_answer} seconds past the
latest budget of its batch), and a retry of the same query I{from the same
connection} joins it instead of queueing for a new one: NodeJS and Java 1.x
retry on the same connection, so a meta slower than their budget still
answers them. An answer that comes after every waiter left is kept
C{late_answer} seconds for the connections that left, and only for them.
Freshness holds: that query started after the retried request first
arrived, so the client gets what a direct meta would have given its first
attempt. The key includes the route's meta addresses, so a route change
never serves an answer of the old cluster.

A cluster the backend knows to be down (its circuit breaker is open, see
L{metaproxy.backend.cluster.MetaCluster}) fails the query at once; every
"cluster unavailable" outcome becomes the client's answer in one place,
L{QueryConfigResolver.cluster_unavailable}, and then, per request,
L{QueryConfigResolver.could_not_answer} (so an open breaker gives a served
table its last good answer at once, and others the retryable error).
"""

from typing import Optional
import time
import weakref

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from metaproxy import errors
from metaproxy.deadlines import Deadlines
from metaproxy.frontend import families
from metaproxy.wire import codes, querycfg
from metaproxy.wire.clusterinfo import LOOP_MARKER
from metaproxy.wire.frame import Reply

log = Logger()

def _error_reply(err):
    return Reply(querycfg.error_result(err), app_error=err)


#: How many (cluster, table, indices) keep their last relayed answer.
_RELAY_CACHE_SIZE = 4096

_NOT_FOUND = _error_reply(codes.ERR_OBJECT_NOT_FOUND)
#: The answer to a query marked as sent by a metaproxy: an rpc-level error
#: no meta gives query_cfg, so the sender knows its route loops.
_LOOP = Reply(None, codes.ERR_HANDLER_NOT_FOUND)
_RETRY_LATER = _error_reply(codes.ERR_SERVICE_NOT_ACTIVE)
_SAFE_ERRORS = {}


def _safe_error_reply(err):
    """@return: the (shared) error reply for a client-safe app-level C{err}."""
    reply = _SAFE_ERRORS.get(err)
    if reply is None:
        reply = _SAFE_ERRORS[err] = _error_reply(err)
    return reply

#: Answers meaning "this cluster could not answer now" (an election, a
#: recovering leader, or the proxy's own retryable error).
_UNANSWERED = (codes.ERR_SERVICE_NOT_ACTIVE, codes.ERR_UNDER_RECOVERY)


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
    some client would not know becomes its nearest known name
    (L{metaproxy.wire.codes.client_safe}: C{ERR_UNDER_RECOVERY} becomes the
    retryable C{ERR_SERVICE_NOT_ACTIVE}, others C{ERR_UNKNOWN}); a forward (which the
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
        return _safe_error_reply(codes.client_safe(peek.err))
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
                 "conn", "token", "request", "connection", "route")

    def __init__(self, owner, table, deadline_at, started, connection):
        self.owner = owner
        self.table = table
        self.deadline_at = deadline_at
        self.started = started
        #: the client connection (its retries' late answers), whichever way the answer goes
        self.connection = connection
        self.answer = self.timer = self.lookup = self.key = self.conn = self.token = self.request = None
        #: the route it was routed by (stale-if-error), once routed
        self.route = None
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
    #: Connections that had a request in this batch (their retries join it).
    connections: set = attrs.field(factory=set)
    #: Connections whose request ran out of budget while the query ran.
    orphans: set = attrs.field(factory=set)


@attrs.define(eq=False)
class _Flight:
    """The running batch of one key, and the batch queued behind it."""

    running: _Batch
    cluster_name: str = ""
    queued: Optional[_Batch] = None
    route: object = None


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
    @ivar untrusted_timeout: the budget, in seconds, of a request whose
        header timeout is known not to be its client's (Go's wrapped value,
        Java 1.x's 0; C{timeouts.untrusted}).
    @ivar new_connection_margin: seconds of budget kept besides for the
        first request on a connection (C{timeouts.new_connection_margin}).
    @ivar late_answer: seconds an upstream query may run on after its
        waiters' budgets, and its answer is kept for their retries
        (C{timeouts.late_answer}); 0 turns late answers off.
    @ivar family_counts: requests by client family (see
        L{metaproxy.frontend.families.classify}).
    @ivar suspicious_counts: requests by suspicious-header reason.
    @ivar late_answers: requests answered by a query started for an
        earlier attempt of theirs (joined, or its kept answer).
    @ivar unavailable_answers: requests answered with the retryable error
        because their cluster was unavailable.
    @ivar metrics: an object with the hooks of L{metaproxy.ops.metrics.Metrics},
        or L{None}.
    @ivar timer: returns the current time in seconds, for latency metrics.
    @ivar refused_upstream: requests answered at once because
        C{max_upstream} queries were in flight.
    @ivar last_good: a L{metaproxy.backend.lastgood.LastGoodAnswers}
        (stale-if-error), or L{None} for none.
    """

    routes: object
    pools: object
    default_timeout: float = 1.8
    max_timeout: float = 30.0
    metrics: object = None
    timer: object = time.perf_counter
    clock: object = None
    margin_ratio: float = 0.1
    margin_min: float = 0.1
    max_upstream: int = 4096
    untrusted_timeout: float = 30.0
    new_connection_margin: float = 0.2
    late_answer: float = 5.0
    last_good: object = None
    refused_upstream: int = attrs.field(init=False, default=0)
    family_counts: dict = attrs.field(init=False, factory=dict)
    suspicious_counts: dict = attrs.field(init=False, factory=dict)
    late_answers: int = attrs.field(init=False, default=0)
    unavailable_answers: int = attrs.field(init=False, default=0)
    _budgets: object = attrs.field(init=False, default=None)
    _seen: object = attrs.field(init=False, factory=weakref.WeakSet)
    _late: dict = attrs.field(init=False, factory=dict)
    _flights: dict = attrs.field(init=False, factory=dict)
    _relayed: dict = attrs.field(init=False, factory=dict)
    _at_cap: bool = attrs.field(init=False, default=False)
    _deadlines: object = attrs.field(init=False, default=None)
    _cached: object = attrs.field(init=False, default=None)

    def __attrs_post_init__(self):
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        self._budgets = families.FamilyBudgets(
            default=self.default_timeout,
            maximum=self.max_timeout,
            untrusted=self.untrusted_timeout,
            margin_ratio=self.margin_ratio,
            margin_min=self.margin_min,
            new_connection_margin=self.new_connection_margin,
        )
        # A route table may answer cached routes synchronously (no Deferred).
        self._cached = getattr(self.routes, "cached", None)

    def in_flight(self):
        """@return: how many distinct upstream queries are running now (C{metaproxy_upstream_inflight})."""
        return len(self._flights)

    def budget(self, request, connection=None):
        """
        Classify the request's client family (counted in L{family_counts},
        a suspicious header in L{suspicious_counts}) and choose its budget
        (L{metaproxy.frontend.families.FamilyBudgets}).

        @param request: a decoded request; its header (either framing) is
            read.
        @param connection: the client connection, or L{None}; its first
            request keeps C{new_connection_margin} more.
        @return: the seconds this request may take to be answered.
        """
        header = request.header
        family, suspicious = families.classify(header)
        counts = self.family_counts
        counts[family] = counts.get(family, 0) + 1
        if suspicious is not None:
            self.suspicious_counts[suspicious] = self.suspicious_counts.get(suspicious, 0) + 1
        new_connection = False
        if connection is not None:
            try:
                if connection not in self._seen:
                    self._seen.add(connection)
                    new_connection = True
            except TypeError:  # not weak-referenceable: never "new"
                pass
        return self._budgets.budget(family, header.client_timeout, new_connection)

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
        if request.header.partition_hash == LOOP_MARKER:
            return defer.succeed(self._refuse_loop())
        waiter = self._waiter(request, query, connection)
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
        A query marked as sent by a metaproxy is answered by the returned
        L{Reply} itself instead.

        @return: the cancel handle (an object with C{cancel()}), or a
            L{Reply} answered at once.
        @raise metaproxy.wire.binary.DecodeError: at once, for malformed args.
        """
        query = querycfg.decode_args(request.args)
        if request.header.partition_hash == LOOP_MARKER:
            return self._refuse_loop()
        waiter = self._waiter(request, query, connection)
        waiter.conn = connection
        waiter.token = token
        waiter.request = request
        self._route(waiter, query)
        return waiter

    def _refuse_loop(self):
        """Another metaproxy (or this one) routes a table to us: @return: the refusal."""
        self.suspicious_counts["from_metaproxy"] = self.suspicious_counts.get("from_metaproxy", 0) + 1
        return _LOOP

    def _waiter(self, request, query, connection):
        budget = self.budget(request, connection)
        started = self.timer()
        metrics = self.metrics
        if metrics is not None:
            metrics.query_received(query.app_name)
        clock = self.clock
        waiter = _Waiter(self, query.app_name, clock.seconds() + budget, started, connection)
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
                self._routed(route, waiter, query)
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

    def _detach(self, waiter, expired=False):
        """Stop waiting on the route lookup or the batch (the request is answered otherwise, or gone)."""
        waiter.done = True
        timer, waiter.timer = waiter.timer, None
        if timer is not None:
            timer.cancel()
        lookup, waiter.lookup = waiter.lookup, None
        if lookup is not None:
            lookup.cancel()
        if waiter.key is not None:
            self._leave(waiter.key, waiter, expired)

    def _expired(self, waiter):
        """The budget ran out: answer the retryable error now, leave the rest running."""
        waiter.timer = None
        if waiter.done:
            return
        self._detach(waiter, expired=True)
        # Routed and waiting for its cluster: the cluster could not answer
        # in time. Still waiting for its route: nothing is known.
        self._reply(waiter, _RETRY_LATER if waiter.route is None else self.could_not_answer(waiter, _RETRY_LATER))

    def _routed(self, route, waiter, query):
        waiter.lookup = None
        if not waiter.done:
            if self.last_good is not None:
                self.last_good.route_seen(query.app_name, route)
            waiter.route = route
            self._join(route, waiter, query)

    def could_not_answer(self, waiter, reply):
        """
        The one place where "the table's cluster could not answer" becomes
        the answer: the table's last good answer when stale-if-error allows
        it (see L{metaproxy.backend.lastgood}), else C{reply} (the
        retryable error, or what the meta said, e.g. C{ERR_UNDER_RECOVERY}).

        @param waiter: the request; its C{route} and C{key} are set.
        @return: a L{Reply}.
        """
        last_good = self.last_good
        if last_good is None or waiter.route is None or waiter.key is None:
            return reply
        table = waiter.table
        stale = last_good.stale_reply(waiter.route, table, waiter.key[2], self._current_route(table))
        return reply if stale is None else stale

    def _current_route(self, table):
        """@return: the table's route now if the route table knows it at once, else L{None}."""
        cached = self._cached
        if cached is not None:
            return cached(table)
        is_cached = getattr(self.routes, "is_cached", None)
        if is_cached is None or not is_cached(table):
            return None
        found = []
        lookup = self.routes.lookup(table)
        lookup.addCallbacks(found.append, lambda _: None)
        if not lookup.called:
            lookup.cancel()  # a read would be needed: do not wait for it, nor leave it waiting
        return found[0] if found else None

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
        """
        Add one request to the batch for its key; start it if none runs. A
        retry from a connection that waited on the running batch joins it,
        or gets the answer it left behind.
        """
        key = (route.meta_addrs, query.app_name, query.partition_indices)
        conn = waiter.connection
        if self._late:
            late = self._late.get(key)
            if late is not None:
                reply, expires_at, connections = late
                if self.clock.seconds() > expires_at:
                    del self._late[key]
                elif conn is not None and conn in connections:
                    self.late_answers += 1
                    self._answer(waiter, reply)
                    return
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
            if conn is not None:
                batch.connections.add(conn)
            self._flights[key] = _Flight(batch, route.cluster_name, route=route)
            self._start(key, batch)
            return
        waiter.key = key
        running = flight.running
        if conn is not None and conn in running.connections:
            # A retry (same query, same connection): the running query
            # started after its first attempt arrived.
            self.late_answers += 1
            running.waiters.append(waiter)
            return
        if flight.queued is None:
            flight.queued = _Batch()
        if self.metrics is not None:
            self.metrics.coalesced(query.app_name)
        flight.queued.waiters.append(waiter)
        if conn is not None:
            flight.queued.connections.add(conn)

    def _start(self, key, batch):
        meta_addrs, table, indices = key
        batch.key = key
        if self.metrics is not None:
            self.metrics.upstream_query(table)
        # The query may run as long as its most patient waiter, and
        # late_answer more for their retries.
        waiters = batch.waiters
        if len(waiters) == 1:
            timeout = waiters[0].deadline_at - self.clock.seconds()
        else:
            timeout = max(w.deadline_at for w in waiters) - self.clock.seconds()
        timeout = min(timeout + self.late_answer, self.max_timeout + self.late_answer)
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
            reply = self._upstream_failed(error, key)
        self._finish(reply, key, batch)

    def _relay(self, response, key):
        # A table's answer rarely changes between queries: comparing bytes
        # (memcmp) is far cheaper than decoding and stripping them again.
        last = self._relayed.get(key)
        if last is not None and last[0] == response.body and response.rpc_error == codes.ERR_OK:
            return self._live(key, last[1])
        try:
            reply = relay_reply(response)
        except ValueError:
            log.warn("malformed query_cfg answer from a meta server ({size} bytes)", size=len(response.body))
            return _RETRY_LATER
        if response.rpc_error == codes.ERR_OK and reply.app_error == codes.ERR_OK:
            if len(self._relayed) >= _RELAY_CACHE_SIZE:
                self._relayed.clear()
            self._relayed[key] = (response.body, reply)
        return self._live(key, reply)

    def _live(self, key, reply):
        """
        A meta answered: keep an C{ERR_OK} answer as the table's last good
        one, forget the table on a final error (stale-if-error).

        @return: C{reply}.
        """
        if self.last_good is None or reply.rpc_error != codes.ERR_OK or reply.app_error in _UNANSWERED:
            return reply
        flight = self._flights.get(key)
        route = None if flight is None else flight.route
        if route is None:
            return reply
        if reply.app_error == codes.ERR_OK:
            self.last_good.remember(route, key[1], key[2], reply)
        else:
            self.last_good.forget(route, key[1])
        return reply

    def _upstream_failed(self, error, key):
        failure = error if isinstance(error, Failure) else Failure(error)
        if failure.check(errors.RouteLoop):
            reject = getattr(self.routes, "reject_route", None)
            if reject is not None:
                reject(key[1], key[0], failure.getErrorMessage())
        if failure.check(errors.BackendUnavailable):
            return self.cluster_unavailable(key, failure)
        if not failure.check(defer.CancelledError):
            log.failure("backend query for {table} failed unexpectedly", failure, table=key[1])
        return _RETRY_LATER

    def cluster_unavailable(self, key, failure):
        """
        The one place where "this cluster cannot answer" becomes a client's
        answer: no meta answered within the query's deadline, or the
        cluster's circuit breaker is open (L{errors.ClusterDown}, answered
        at once).

        @param key: C{(meta_addrs, table, partition_indices)}.
        @param failure: the L{errors.BackendUnavailable} failure.
        @return: the L{Reply} for the batch: the retryable
            C{ERR_SERVICE_NOT_ACTIVE}, which L{_finish} turns into
            L{could_not_answer} for each request (its table's last good
            answer when stale-if-error may serve it).
        """
        self.unavailable_answers += 1
        return _RETRY_LATER

    def _finish(self, reply, key, batch):
        if batch.orphans and self.late_answer > 0 and reply.rpc_error == codes.ERR_OK \
                and reply.app_error == codes.ERR_OK:
            if len(self._late) >= _RELAY_CACHE_SIZE:
                self._late.clear()
            self._late[key] = (reply, self.clock.seconds() + self.late_answer, frozenset(batch.orphans))
        flight = self._flights.get(key)
        if flight is not None and flight.running is batch:
            nxt = flight.queued
            if nxt is not None and nxt.waiters:
                flight.running, flight.queued = nxt, None
                self._start(key, nxt)
            else:
                del self._flights[key]
        waiters, batch.waiters = batch.waiters, []
        unanswered = reply.rpc_error == codes.ERR_OK and reply.app_error in _UNANSWERED
        for waiter in waiters:
            self._answer(waiter, self.could_not_answer(waiter, reply) if unanswered else reply)

    def _leave(self, key, waiter, expired=False):
        """
        A request gave up or ran out of time: drop it; cancel the upstream
        only if nobody is left and nobody may retry (a request that ran out
        of time leaves it running for its retries, within C{late_answer}),
        and forget a queued batch nobody waits for.
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
            if expired and self.late_answer > 0 and waiter.connection is not None:
                batch.orphans.add(waiter.connection)
            upstream = batch.upstream
            if not batch.waiters and not batch.orphans and upstream is not None:
                upstream.cancel()
                # A cancelled Deferred reports through its errback; the
                # callback API says nothing more once cancelled.
                if not batch.finished:
                    self._upstream_answered(batch, None, defer.CancelledError())
