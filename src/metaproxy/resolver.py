# -*- test-case-name: metaproxy.test.test_resolver -*-
"""
The query_cfg path: route the table, ask its cluster, relay the answer.

Identical queries are coalesced *with freshness*: per (cluster, table,
partition_indices) at most one upstream query is in flight, plus one queued
batch. A request that arrives while a query is in flight waits for the next
one, so every answer was computed after its request arrived. This is what
absorbs the herd when an operator switches a table and every client
re-queries at once.
"""

from typing import Optional
import time

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from metaproxy import errors
from metaproxy.backend.pools import deadline_for
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


@attrs.define(eq=False)
class _Batch:
    """Requests answered by one upstream query."""

    waiters: list = attrs.field(factory=list)
    timeout: float = 0.0
    upstream: Optional[defer.Deferred] = None


@attrs.define(eq=False)
class _Flight:
    """The running batch of one key, and the batch queued behind it."""

    running: _Batch
    queued: Optional[_Batch] = None


@attrs.define(eq=False)
class QueryConfigResolver:
    """
    Answers C{RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX} requests.

    @ivar routes: the L{metaproxy.interfaces.IRouteTable}.
    @ivar pools: the L{metaproxy.interfaces.IClusterPools}.
    @ivar default_timeout: seconds a backend query may take when the
        client's header gives no deadline.
    @ivar max_timeout: the cap on any backend query, in seconds.
    @ivar metrics: an object with the hooks of L{metaproxy.metrics.Metrics},
        or L{None}.
    @ivar timer: returns the current time in seconds, for latency metrics.
    """

    routes: object
    pools: object
    default_timeout: float = 5.0
    max_timeout: float = 30.0
    metrics: object = None
    timer: object = time.perf_counter
    _flights: dict = attrs.field(init=False, factory=dict)
    _relayed: dict = attrs.field(init=False, factory=dict)

    def in_flight(self):
        """@return: how many distinct upstream queries are running now."""
        return len(self._flights)

    def handle(self, request, connection):
        """
        Answer one query_cfg request (an L{IRequestHandler}-style callable).

        @return: a L{Deferred} firing with a L{Reply}; it fails only with
            L{metaproxy.wire.binary.DecodeError} for malformed args (the
            protocol answers those with an rpc-level error) or with
            L{defer.CancelledError} when the caller cancels it.
        """
        query = querycfg.decode_args(request.args)
        timeout = deadline_for(request.header.client_timeout, self.default_timeout, self.max_timeout)
        started = self.timer()
        metrics = self.metrics
        if metrics is not None:
            metrics.query_received(query.app_name)
        d = self.routes.lookup(query.app_name)
        d.addCallback(self._join, query, timeout)
        d.addErrback(self._error_reply, query.app_name)
        if metrics is not None:
            d.addCallback(self._observe, query.app_name, started)
        return d

    def _observe(self, reply, table, started):
        if reply.rpc_error != codes.ERR_OK:
            err = reply.rpc_error
        else:
            err = reply.app_error or codes.ERR_OK
        self.metrics.query_answered(table, err, self.timer() - started)
        return reply

    def _error_reply(self, failure, table):
        if failure.check(defer.CancelledError):
            return failure
        if failure.check(errors.TableNotFound):
            return _NOT_FOUND
        if failure.check(errors.InvalidRoute, errors.RouteUnavailable, errors.BackendUnavailable):
            return _RETRY_LATER
        log.failure("query_cfg for {table} failed unexpectedly", failure, table=table)
        return _RETRY_LATER

    def _join(self, route, query, timeout):
        """Add one request to the batch for its key; start it if none runs."""
        key = (route.meta_addrs, query.app_name, query.partition_indices)
        flight = self._flights.get(key)

        def cancel(waiter):
            self._leave(key, waiter)

        waiter = defer.Deferred(cancel)
        if flight is None:
            batch = _Batch([waiter], timeout)
            self._flights[key] = _Flight(batch)
            self._start(key, batch)
        else:
            if flight.queued is None:
                flight.queued = _Batch()
            if self.metrics is not None:
                self.metrics.coalesced(query.app_name)
            flight.queued.waiters.append(waiter)
            flight.queued.timeout = max(flight.queued.timeout, timeout)
        return waiter

    def _start(self, key, batch):
        meta_addrs, table, indices = key
        if self.metrics is not None:
            self.metrics.upstream_query(table)
        try:
            cluster = self.pools.get(meta_addrs)
            upstream = cluster.query_config(table, indices, batch.timeout)
        except Exception:
            upstream = defer.fail()
        batch.upstream = upstream
        upstream.addCallbacks(self._relay, self._upstream_failed, (key,), errbackArgs=(table,))
        upstream.addCallback(self._finish, key, batch)

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

    def _upstream_failed(self, failure, table):
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
            waiter.callback(reply)

    def _leave(self, key, waiter):
        """A caller gave up: drop it; cancel the upstream only if nobody is left."""
        flight = self._flights.get(key)
        if flight is None:
            return
        for batch in (flight.running, flight.queued):
            if batch is not None and waiter in batch.waiters:
                batch.waiters.remove(waiter)
                if batch is flight.running and not batch.waiters and batch.upstream is not None:
                    batch.upstream.cancel()
                return
