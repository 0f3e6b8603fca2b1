"""
Tests for L{metaproxy.frontend.resolver}: routing, error mapping, relay, coalescing.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from metaproxy import errors
from metaproxy.interfaces import IClusterPools, IMetaCluster, IRouteTable
from metaproxy.frontend.resolver import QueryConfigResolver, relay_reply
from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.wire import codes, querycfg
from metaproxy.wire.binary import DecodeError
from metaproxy.wire.clusterinfo import LOOP_MARKER
from metaproxy.wire.frame import Request, RequestHeader, Response

A = querycfg.rpc_address
META1 = MetaAddrs.parse("10.0.0.1:34601,10.0.0.2:34601")
META2 = MetaAddrs.parse("10.0.1.1:34601")


@implementer(IRouteTable)
class _Routes:
    """Routes from a dict; a value may be an exception to fail with."""

    def __init__(self, table):
        self.table = table

    def lookup(self, table):
        value = self.table.get(table, errors.TableNotFound(table))
        if isinstance(value, Exception):
            return defer.fail(value)
        return defer.succeed(value)

    def is_ready(self):
        return True

    def clusters(self):
        return frozenset(r.meta_addrs for r in self.table.values() if isinstance(r, Route))

    def describe(self):
        return []


@implementer(IMetaCluster)
class _Cluster:
    """Records each query; the test fires its Deferred."""

    def __init__(self, meta_addrs):
        self.meta_addrs = meta_addrs
        self.calls = []
        self.cancelled = 0

    def query_config(self, app_name, partition_indices, timeout):
        def cancel(d):
            self.cancelled += 1

        d = defer.Deferred(cancel)
        self.calls.append((app_name, partition_indices, timeout, d))
        return d

    def close(self):
        return defer.succeed(None)


@implementer(IClusterPools)
class _Pools:
    def __init__(self):
        self.clusters = {}

    def get(self, meta_addrs, cluster_name=None):
        cluster = self.clusters.setdefault(meta_addrs, _Cluster(meta_addrs))
        if cluster_name is not None:
            cluster.cluster_name = cluster_name
        return cluster

    def close(self):
        return defer.succeed(None)


def _request(table, indices=(), client_timeout=0, seqid=1):
    return Request(
        # A timeout comes in Java 1.x's header shape (a true timeout; Go's
        # all-zero shape carries an untrusted one, see test_families).
        RequestHeader(0, -1, -1, client_timeout, -7921) if client_timeout else RequestHeader(),
        querycfg.QUERY_CFG,
        seqid,
        querycfg.encode_args(table, indices),
    )


def _table_response(app_id=3, count=2, with_hp=True, err=codes.ERR_OK):
    parts = tuple(
        querycfg.PartitionConfig(
            app_id,
            i,
            ballot=4,
            primary=A("10.1.0.1", 34801),
            secondaries=(A("10.1.0.2", 34801),),
            hp_primary=querycfg.HostPort("r1", 34801) if with_hp else None,
            hp_secondaries=(querycfg.HostPort("r2", 34801),) if with_hp else None,
            hp_last_drops=() if with_hp else None,
        )
        for i in range(count)
    )
    return querycfg.QueryCfgResponse(err, app_id, count, True, parts)


def _ok(resp=None):
    resp = resp or _table_response()
    return Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 99, querycfg.encode_result(resp))


class _Metrics:
    def __init__(self):
        self.events = []

    def query_received(self, table):
        self.events.append(("received", table))

    def query_answered(self, table, err, seconds):
        self.events.append(("answered", table, err))

    def coalesced(self, table):
        self.events.append(("coalesced", table))

    def upstream_query(self, table):
        self.events.append(("upstream", table))


class ResolverTestsMixin:
    def setUp(self):
        self.routes = _Routes(
            {
                "temp": Route("c1", META1),
                "other": Route("c2", META2),
                "broken": errors.InvalidRoute("not JSON"),
                "unreachable": errors.RouteUnavailable("zk down"),
            }
        )
        self.pools = _Pools()
        self.metrics = _Metrics()
        self.clock = Clock()
        self.resolver = QueryConfigResolver(
            self.routes, self.pools, default_timeout=5.0, max_timeout=30.0, metrics=self.metrics, clock=self.clock
        )

    def cluster(self, meta=META1):
        return self.pools.get(meta)

    def answer(self, call, response):
        call[3].callback(response)


class FakesConformTests(SynchronousTestCase):
    def test_fakes_provide_interfaces(self):
        """The test doubles provide the interfaces the resolver is written against."""
        verifyObject(IRouteTable, _Routes({}))
        verifyObject(IMetaCluster, _Cluster(META1))
        verifyObject(IClusterPools, _Pools())


class RelayTests(SynchronousTestCase):
    def test_hp_fields_stripped(self):
        """The relayed body carries the same table but no hp_* fields."""
        reply = relay_reply(_ok())
        decoded = querycfg.decode_result(reply.body)
        expected = _table_response(with_hp=False)
        self.assertEqual(decoded, expected)
        self.assertEqual(reply.rpc_error, codes.ERR_OK)

    def test_body_without_hp_is_relayed_unchanged(self):
        """A body with nothing to strip is passed through as the same bytes."""
        resp = _ok(_table_response(with_hp=False))
        self.assertIs(relay_reply(resp).body, resp.body)

    def test_forward_never_reaches_client(self):
        """A forward that leaked out of a pool becomes ERR_SERVICE_NOT_ACTIVE."""
        resp = Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1, querycfg.forward_result(A("10.0.0.9", 34601)))
        reply = relay_reply(resp)
        self.assertEqual(querycfg.peek_result(reply.body).err, codes.ERR_SERVICE_NOT_ACTIVE)

    def test_unsafe_app_error_becomes_unknown(self):
        """An error name old clients cannot parse (ERR_ACL_DENY) becomes ERR_UNKNOWN."""
        resp = Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1, querycfg.error_result("ERR_ACL_DENY"))
        self.assertEqual(querycfg.peek_result(relay_reply(resp).body).err, codes.ERR_UNKNOWN)

    def test_rpc_level_error_becomes_retryable(self):
        """An rpc-level error from a backend is answered with a retryable app-level error."""
        resp = Response(codes.ERR_HANDLER_NOT_FOUND, querycfg.QUERY_CFG_ACK, 1, b"")
        reply = relay_reply(resp)
        self.assertEqual(reply.rpc_error, codes.ERR_OK)
        self.assertEqual(querycfg.peek_result(reply.body).err, codes.ERR_SERVICE_NOT_ACTIVE)


class ResolverErrorTests(ResolverTestsMixin, SynchronousTestCase):
    def err_of(self, d):
        reply = self.successResultOf(d)
        self.assertEqual(reply.rpc_error, codes.ERR_OK)
        return querycfg.peek_result(reply.body).err

    def test_unknown_table_is_object_not_found(self):
        """A table with no route gets ERR_OBJECT_NOT_FOUND, as from a real meta."""
        self.assertEqual(self.err_of(self.resolver.handle(_request("nope"), None)), codes.ERR_OBJECT_NOT_FOUND)

    def test_invalid_route_is_retryable(self):
        """A table whose route data is broken gets the retryable ERR_SERVICE_NOT_ACTIVE."""
        self.assertEqual(self.err_of(self.resolver.handle(_request("broken"), None)), codes.ERR_SERVICE_NOT_ACTIVE)

    def test_route_unavailable_is_retryable(self):
        """A route source that cannot answer yields ERR_SERVICE_NOT_ACTIVE."""
        d = self.resolver.handle(_request("unreachable"), None)
        self.assertEqual(self.err_of(d), codes.ERR_SERVICE_NOT_ACTIVE)

    def test_backend_unavailable_is_retryable(self):
        """No meta answering in time yields ERR_SERVICE_NOT_ACTIVE."""
        d = self.resolver.handle(_request("temp"), None)
        self.cluster().calls[0][3].errback(errors.BackendUnavailable("all down"))
        self.assertEqual(self.err_of(d), codes.ERR_SERVICE_NOT_ACTIVE)

    def test_unexpected_backend_failure_is_retryable_and_logged(self):
        """A bug below the resolver is logged and answered, never left hanging."""
        d = self.resolver.handle(_request("temp"), None)
        self.cluster().calls[0][3].errback(RuntimeError("boom"))
        self.assertEqual(self.err_of(d), codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_malformed_args_raise_decode_error(self):
        """Malformed args raise DecodeError for the protocol to answer."""
        bad = Request(RequestHeader(), querycfg.QUERY_CFG, 1, b"\x0b\x00\x01")
        self.assertRaises(DecodeError, self.resolver.handle, bad, None)


class ResolverRelayTests(ResolverTestsMixin, SynchronousTestCase):
    def test_routes_to_owning_cluster(self):
        """
        A query goes to the cluster its route names, with table, indices and
        the answer budget (1500 ms - 10 %) plus the late-answer time.
        """
        self.resolver.handle(_request("other", (1,), client_timeout=1500), None)
        self.assertEqual(self.cluster(META1).calls, [])
        [(table, indices, timeout, _)] = self.cluster(META2).calls
        self.assertEqual((table, indices, round(timeout, 6)), ("other", (1,), 1.35 + 5.0))
        self.assertEqual(self.cluster(META2).cluster_name, "c2")

    def test_answer_relayed(self):
        """The backend's answer reaches the client without hp_* fields."""
        d = self.resolver.handle(_request("temp"), None)
        self.answer(self.cluster().calls[0], _ok())
        self.assertEqual(querycfg.decode_result(self.successResultOf(d).body), _table_response(with_hp=False))

    def test_metrics_hooks(self):
        """Each query is counted on arrival and on answer with its error code."""
        d = self.resolver.handle(_request("temp"), None)
        self.answer(self.cluster().calls[0], _ok())
        self.successResultOf(d)
        self.assertEqual(
            self.metrics.events,
            [("received", "temp"), ("upstream", "temp"), ("answered", "temp", codes.ERR_OK)],
        )


class CoalescingTests(ResolverTestsMixin, SynchronousTestCase):
    def test_concurrent_requests_share_next_query(self):
        """
        Requests arriving while a query is in flight are answered by ONE
        next query, not by the one already running (freshness).
        """
        first = self.resolver.handle(_request("temp"), None)
        later = [self.resolver.handle(_request("temp", seqid=i), None) for i in range(100)]
        calls = self.cluster().calls
        self.assertEqual(len(calls), 1)
        old = _table_response(app_id=3)
        self.answer(calls[0], _ok(old))
        self.assertEqual(querycfg.decode_result(self.successResultOf(first).body).app_id, 3)
        for d in later:
            self.assertNoResult(d)
        self.assertEqual(len(calls), 2)
        self.answer(calls[1], _ok(_table_response(app_id=7)))
        for d in later:
            self.assertEqual(querycfg.decode_result(self.successResultOf(d).body).app_id, 7)
        self.assertEqual(self.resolver.in_flight(), 0)
        self.assertEqual(self.metrics.events.count(("coalesced", "temp")), 100)
        self.assertEqual(self.metrics.events.count(("upstream", "temp")), 2)

    def test_distinct_keys_do_not_coalesce(self):
        """Different tables, clusters or partition_indices get their own queries."""
        self.resolver.handle(_request("temp"), None)
        self.resolver.handle(_request("temp", (0,)), None)
        self.resolver.handle(_request("other"), None)
        self.assertEqual(len(self.cluster(META1).calls), 2)
        self.assertEqual(len(self.cluster(META2).calls), 1)

    def test_queued_batch_uses_longest_deadline(self):
        """The queued query waits as long as the most patient request in it."""
        self.resolver.handle(_request("temp", client_timeout=1000), None)
        self.resolver.handle(_request("temp", client_timeout=2000), None)
        self.resolver.handle(_request("temp", client_timeout=3000), None)
        calls = self.cluster().calls
        self.answer(calls[0], _ok())
        self.assertAlmostEqual(calls[1][2], 2.7 + 5.0)

    def test_disconnected_client_does_not_cancel_others(self):
        """One waiter cancelling leaves the shared query running for the rest."""
        a = self.resolver.handle(_request("temp"), None)
        b = self.resolver.handle(_request("temp"), None)
        c = self.resolver.handle(_request("temp"), None)
        b.cancel()
        self.failureResultOf(b, defer.CancelledError)
        calls = self.cluster().calls
        self.assertEqual(self.cluster().cancelled, 0)
        self.answer(calls[0], _ok())
        self.successResultOf(a)
        self.assertEqual(len(calls), 2)
        self.assertFalse(calls[1][3].called)
        self.answer(calls[1], _ok())
        self.successResultOf(c)

    def test_last_waiter_gone_cancels_upstream(self):
        """When every waiter of the running query is gone, the query is cancelled."""
        a = self.resolver.handle(_request("temp"), None)
        a.cancel()
        self.failureResultOf(a, defer.CancelledError)
        self.assertEqual(self.cluster().cancelled, 1)
        self.assertEqual(self.resolver.in_flight(), 0)

    def test_cancelled_running_batch_starts_queued(self):
        """Cancelling the running batch's only waiter still serves the queued batch."""
        a = self.resolver.handle(_request("temp"), None)
        b = self.resolver.handle(_request("temp"), None)
        a.cancel()
        self.failureResultOf(a, defer.CancelledError)
        calls = self.cluster().calls
        self.assertEqual(len(calls), 2)
        self.answer(calls[1], _ok())
        self.successResultOf(b)
        self.assertEqual(self.resolver.in_flight(), 0)

    def test_gone_queued_batch_starts_nothing(self):
        """A queued batch whose waiters have all gone starts no upstream query."""
        a = self.resolver.handle(_request("temp"), None)
        b = self.resolver.handle(_request("temp"), None)
        c = self.resolver.handle(_request("temp"), None)
        b.cancel()
        c.cancel()
        self.failureResultOf(b, defer.CancelledError)
        self.failureResultOf(c, defer.CancelledError)
        calls = self.cluster().calls
        self.answer(calls[0], _ok())
        self.successResultOf(a)
        self.assertEqual(len(calls), 1)
        self.assertEqual(self.resolver.in_flight(), 0)

    def test_queued_waiter_answered_at_own_deadline(self):
        """A coalesced request is answered at its own budget while the shared query runs on."""
        a = self.resolver.handle(_request("temp", client_timeout=5000), None)
        b = self.resolver.handle(_request("temp", client_timeout=1000), None)
        self.clock.advance(0.9)
        self.assertEqual(self.successResultOf(b).app_error, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertNoResult(a)
        self.assertEqual(self.cluster().cancelled, 0)
        self.answer(self.cluster().calls[0], _ok())
        self.successResultOf(a)
        self.assertEqual(len(self.cluster().calls), 1)  # b's queued batch is gone

    def test_running_waiter_answered_at_own_deadline(self):
        """The last waiter of a running query is answered at its budget and the query is cancelled."""
        a = self.resolver.handle(_request("temp", client_timeout=2000), None)
        self.clock.advance(1.79)
        self.assertNoResult(a)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(a).app_error, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual(self.cluster().cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class UpstreamLimitTests(ResolverTestsMixin, SynchronousTestCase):
    def test_inflight_capped(self):
        """Beyond max_upstream distinct queries in flight, a new one gets the retryable error at once."""
        self.resolver.max_upstream = 2
        self.resolver.handle(_request("temp"), None)
        self.resolver.handle(_request("temp", (1,)), None)
        d = self.resolver.handle(_request("temp", (2,)), None)
        self.assertEqual(self.successResultOf(d).app_error, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual((self.resolver.in_flight(), self.resolver.refused_upstream), (2, 1))
        joined = self.resolver.handle(_request("temp"), None)  # joins a running key: still served
        self.assertNoResult(joined)



class _Connection:
    """The server side of L{QueryConfigResolver.start}: records the answers."""

    def __init__(self, answers=None):
        self.answers = [] if answers is None else answers

    def request_answered(self, token, request, reply):
        self.answers.append((token, request.seqid, reply))


class _CachingRoutes(_Routes):
    """Routes that also answer cached routes synchronously (as the static and ZooKeeper tables do)."""

    def __init__(self, table):
        _Routes.__init__(self, table)
        self.lookups = 0

    def lookup(self, table):
        self.lookups += 1
        return _Routes.lookup(self, table)

    def cached(self, table):
        value = self.table.get(table)
        return value if isinstance(value, Route) else None


class StartTests(ResolverTestsMixin, SynchronousTestCase):
    """L{QueryConfigResolver.start}: the callback form the server uses, same answers as L{handle}."""

    def setUp(self):
        ResolverTestsMixin.setUp(self)
        self.routes = _CachingRoutes(self.routes.table)
        self.resolver = QueryConfigResolver(
            self.routes, self.pools, default_timeout=5.0, max_timeout=30.0, metrics=self.metrics, clock=self.clock
        )
        self.conn = _Connection()

    def test_cached_route_answer_relayed(self):
        """A cached route needs no lookup; the relayed answer goes to request_answered with the token."""
        self.resolver.start(_request("temp", seqid=7), self.conn, "tok")
        self.assertEqual(self.routes.lookups, 0)
        [call] = self.cluster().calls
        self.assertEqual(self.conn.answers, [])
        self.answer(call, _ok())
        [(token, seqid, reply)] = self.conn.answers
        self.assertEqual((token, seqid, reply.app_error), ("tok", 7, codes.ERR_OK))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIn(("answered", "temp", codes.ERR_OK), self.metrics.events)

    def test_unknown_table(self):
        """A table with no route is looked up and answered ERR_OBJECT_NOT_FOUND (here before start returns)."""
        self.resolver.start(_request("nope"), self.conn, 1)
        self.assertEqual(self.routes.lookups, 1)
        [(_, _, reply)] = self.conn.answers
        self.assertEqual(querycfg.peek_result(reply.body).err, codes.ERR_OBJECT_NOT_FOUND)

    def test_budget(self):
        """No upstream answer: the retryable error at the budget, the upstream cancelled."""
        # Late answers off: with them the query would run on for a retry
        # (test_budget_leaves_query_for_retry). Not the connection's first
        # request, which keeps new_connection_margin more (test_families).
        self.resolver.late_answer = 0
        self.resolver.budget(_request("temp"), self.conn)
        self.resolver.start(_request("temp", client_timeout=1000), self.conn, 1)
        self.clock.advance(0.89)
        self.assertEqual(self.conn.answers, [])
        self.clock.advance(0.01)
        [(_, _, reply)] = self.conn.answers
        self.assertEqual(querycfg.peek_result(reply.body).err, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual(self.cluster().cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.resolver.in_flight(), 0)

    def test_budget_leaves_query_for_retry(self):
        """
        Past its budget a request gets the retryable error but its query runs
        on (late_answer): a retry on the same connection joins it and gets
        its answer, with no second upstream query.
        """
        self.resolver.budget(_request("temp"), self.conn)
        self.resolver.start(_request("temp", client_timeout=1000, seqid=1), self.conn, 1)
        self.clock.advance(0.9)
        [(_, _, reply)] = self.conn.answers
        self.assertEqual(reply.app_error, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual((self.cluster().cancelled, self.resolver.in_flight()), (0, 1))
        self.resolver.start(_request("temp", client_timeout=1000, seqid=2), self.conn, 2)
        [call] = self.cluster().calls
        self.answer(call, _ok())
        self.assertEqual([(t, r.app_error) for t, _, r in self.conn.answers][1:], [(2, codes.ERR_OK)])
        self.assertEqual(self.resolver.late_answers, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_handle(self):
        """The client went away: nothing is answered, the lone upstream query is cancelled."""
        handle = self.resolver.start(_request("temp"), self.conn, 1)
        handle.cancel()
        self.assertEqual(self.cluster().cancelled, 1)
        self.assertEqual(self.resolver.in_flight(), 0)
        self.clock.advance(10)
        self.assertEqual(self.conn.answers, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_coalesced_with_freshness(self):
        """Requests arriving while a query runs wait for the next one and share it."""
        # Other connections: the same connection's repeat is a retry, which
        # joins the running query (late answers, test_budget_leaves_query_for_retry).
        self.resolver.start(_request("temp", seqid=1), self.conn, 1)
        self.resolver.start(_request("temp", seqid=2), _Connection(self.conn.answers), 2)
        self.resolver.start(_request("temp", seqid=3), _Connection(self.conn.answers), 3)
        first, = self.cluster().calls
        self.answer(first, _ok())
        self.assertEqual([t for t, _, _ in self.conn.answers], [1])
        _, second = self.cluster().calls
        self.answer(second, _ok())
        self.assertEqual([t for t, _, _ in self.conn.answers], [1, 2, 3])
        self.assertEqual(len(self.cluster().calls), 2)

    def test_marked_query_refused_at_once(self):
        """
        A query carrying the loop marker (sent by a metaproxy) is refused
        with the rpc-level ERR_HANDLER_NOT_FOUND, returned at once on both
        paths, counted, never routed.
        """
        marked = Request(RequestHeader(partition_hash=LOOP_MARKER), querycfg.QUERY_CFG, 1,
                         querycfg.encode_args("temp", ()))
        reply = self.resolver.start(marked, self.conn, 1)
        self.assertEqual((reply.rpc_error, reply.body), (codes.ERR_HANDLER_NOT_FOUND, None))
        self.assertEqual(self.successResultOf(self.resolver.handle(marked, self.conn)), reply)
        self.assertEqual(self.resolver.suspicious_counts, {"from_metaproxy": 2})
        self.assertEqual((self.routes.lookups, self.conn.answers, self.clock.getDelayedCalls()), (0, [], []))

    def test_route_loop_rejects_route(self):
        """An upstream that turns out to be a metaproxy: the route is rejected, the client gets the retryable error."""
        rejected = []
        self.routes.reject_route = lambda table, meta_addrs, why: rejected.append((table, meta_addrs, why))
        self.resolver.start(_request("temp"), self.conn, 1)
        [call] = self.cluster().calls
        call[3].errback(errors.RouteLoop("10.0.0.1:34601 is a metaproxy"))
        [(_, _, reply)] = self.conn.answers
        self.assertEqual(reply.app_error, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual(rejected, [("temp", META1, "10.0.0.1:34601 is a metaproxy")])

    def test_malformed_args(self):
        """Malformed args raise L{DecodeError} at once, nothing is left waiting."""
        bad = Request(RequestHeader(), querycfg.QUERY_CFG, 1, b"\xff\xff")
        self.assertRaises(DecodeError, self.resolver.start, bad, self.conn, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pools_refuse(self):
        """Pools that raise (closed) give the retryable error, logged; nothing is left in flight."""

        def closed(meta_addrs, cluster_name=None):
            raise RuntimeError("the meta pools are closed")

        self.pools.get = closed
        self.resolver.start(_request("temp"), self.conn, 1)
        [(_, _, reply)] = self.conn.answers
        self.assertEqual(querycfg.peek_result(reply.body).err, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.resolver.in_flight(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
