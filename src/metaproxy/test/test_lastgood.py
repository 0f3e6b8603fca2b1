"""
Tests for stale-if-error (L{metaproxy.backend.lastgood}) through the
resolver's failure path, on a L{Clock}.
"""

import json

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from metaproxy import errors
from metaproxy.backend.lastgood import LastGoodAnswers
from metaproxy.frontend.resolver import QueryConfigResolver
from metaproxy.ops.admin import build_admin_root
from metaproxy.routes.route import Route
from metaproxy.test.test_admin import _get
from metaproxy.test.test_zkroutes import _ZKBase, node, wait_until
from metaproxy.test.test_resolver import META1, META2, _ok, _Pools, _request, _Routes, _table_response
from metaproxy.wire import codes, querycfg
from metaproxy.wire.frame import Reply, Response

ROUTE1 = Route("c1", META1)
ROUTE2 = Route("c2", META2)


class _CachedRoutes(_Routes):
    """The test routes, with C{is_cached} as both real route tables have it."""

    def is_cached(self, table):
        return table in self.table


def _not_active():
    body = querycfg.error_result(codes.ERR_SERVICE_NOT_ACTIVE)
    return Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1, body)


def _not_found():
    return Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1, querycfg.error_result(codes.ERR_OBJECT_NOT_FOUND))


class _Setup:
    """A resolver on a Clock with a L{LastGoodAnswers} of C{max_age}."""

    max_age = 600.0

    def setUp(self):
        self.clock = Clock()
        self.routes = _CachedRoutes({"temp": ROUTE1, "other": ROUTE1})
        self.pools = _Pools()
        self.last_good = LastGoodAnswers(self.clock, max_age=self.max_age, capacity=8)
        self.resolver = QueryConfigResolver(
            self.routes, self.pools, clock=self.clock, default_timeout=1.5, last_good=self.last_good
        )

    def ask(self, table="temp", indices=()):
        results = []
        self.resolver.handle(_request(table, indices), None).addCallback(results.append)
        return results

    def calls(self, meta=META1):
        return self.pools.clusters[meta].calls

    def serve_live(self, table="temp", resp=None, indices=()):
        """One query answered live; @return: its reply."""
        got = self.ask(table, indices)
        self.calls()[-1][3].callback(_ok(resp))
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0].app_error, codes.ERR_OK)
        return got[0]


class StaleIfErrorTests(_Setup, SynchronousTestCase):
    """The resolver answers the last good answer only when the cluster could not answer."""

    def test_backend_unavailable_gives_last_answer(self):
        """When the cluster fails, a table served before gets its last answer, body and native body alike."""
        live = self.serve_live()
        got = self.ask()
        self.calls()[-1][3].errback(errors.BackendUnavailable("all refused"))
        self.assertEqual(len(got), 1)
        self.assertEqual((got[0].body, got[0].native_body), (live.body, live.native_body))
        self.assertEqual(self.last_good.served, {"c1": 1})

    def test_budget_spent_gives_last_answer_at_the_deadline(self):
        """A silent cluster: the last answer comes at the budget's end, not before."""
        live = self.serve_live()
        budget = self.resolver.budget(_request("temp"))
        got = self.ask()
        self.clock.advance(budget - 0.01)
        self.assertEqual(got, [])
        self.clock.advance(0.01)
        self.assertEqual([r.body for r in got], [live.body])

    def test_live_answer_wins_within_the_budget(self):
        """A live answer arriving within the budget is relayed, not the kept one."""
        self.serve_live()
        got = self.ask()
        self.clock.advance(1.0)
        newer = _table_response(count=4)
        self.calls()[-1][3].callback(_ok(newer))
        self.assertEqual(len(got), 1)
        self.assertEqual(querycfg.peek_result(got[0].native_body or got[0].body).err, codes.ERR_OK)
        self.assertEqual(self.last_good.served, {"c1": 0})
        # And the newer answer is now the one kept.
        stale = self.ask()
        self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual(stale[0].body, got[0].body)

    def test_service_not_active_gives_last_answer(self):
        """ERR_SERVICE_NOT_ACTIVE from the leader (an election) is answered with the last answer."""
        live = self.serve_live()
        got = self.ask()
        self.calls()[-1][3].callback(_not_active())
        self.assertEqual([r.body for r in got], [live.body])

    def test_never_served_table_gets_retryable_error(self):
        """A table with no last good answer gets ERR_SERVICE_NOT_ACTIVE, as without the feature."""
        self.serve_live("temp")
        got = self.ask("other")
        self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.app_error for r in got], [codes.ERR_SERVICE_NOT_ACTIVE])

    def test_other_partition_indices_are_not_served(self):
        """An answer is kept per partition_indices: a query for other indices gets the retryable error."""
        self.serve_live(indices=())
        got = self.ask(indices=(1,))
        self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.app_error for r in got], [codes.ERR_SERVICE_NOT_ACTIVE])

    def test_bound_honoured(self):
        """After stale_if_error seconds the retryable error comes back."""
        live = self.serve_live()
        self.clock.advance(self.max_age - 1)
        got = self.ask()
        self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.body for r in got], [live.body])
        self.clock.advance(2)
        with capturedLogs() as events:
            got = self.ask()
            self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
            again = self.ask()
            self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.app_error for r in got + again], [codes.ERR_SERVICE_NOT_ACTIVE] * 2)
        expired = [e for e in events if "more than stale_if_error" in e["log_format"]]
        self.assertEqual(len(expired), 1)

    def test_switch_never_answered_from_old_cluster(self):
        """After a switch, the new cluster failing gives the retryable error, and the old answer is dropped."""
        self.serve_live()
        self.routes.table["temp"] = ROUTE2
        got = self.ask()
        self.calls(META2)[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.app_error for r in got], [codes.ERR_SERVICE_NOT_ACTIVE])
        self.assertEqual(self.last_good.entries(), 0)
        # Even if the route comes back, the dropped answer is not served.
        self.routes.table["temp"] = ROUTE1
        got = self.ask()
        self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.app_error for r in got], [codes.ERR_SERVICE_NOT_ACTIVE])

    def test_switch_while_waiting(self):
        """A request routed before a switch and failing after it does not get the old cluster's answer."""
        self.serve_live()
        got = self.ask()
        self.routes.table["temp"] = ROUTE2
        self.clock.advance(self.resolver.budget(_request("temp")))
        self.assertEqual([r.app_error for r in got], [codes.ERR_SERVICE_NOT_ACTIVE])
        self.assertEqual(self.last_good.served, {"c1": 0})

    def test_route_being_read_gives_no_stale_answer(self):
        """If the route table cannot tell the table's route at once, no stale answer, and its lookup is cancelled."""
        self.serve_live()
        got = self.ask()
        cancelled = []
        self.routes.lookup = lambda table: defer.Deferred(cancelled.append)
        self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.app_error for r in got], [codes.ERR_SERVICE_NOT_ACTIVE])
        self.assertEqual(len(cancelled), 1)

    def test_cluster_known_down_answers_at_once(self):
        """
        A cluster that fails at once (as a circuit breaker's fast answer
        does): a served table gets its last answer and a never-served one
        the retryable error, both without waiting for the budget.
        """
        live = self.serve_live("temp")
        cluster = self.pools.get(META1)
        cluster.query_config = lambda *a: defer.fail(errors.BackendUnavailable("cluster known down"))
        self.routes.table["never-served"] = ROUTE1
        served = self.ask("temp")
        never = self.ask("never-served")
        self.assertEqual([r.body for r in served], [live.body])
        self.assertEqual([r.app_error for r in never], [codes.ERR_SERVICE_NOT_ACTIVE])
        self.assertEqual(self.clock.seconds(), 0.0)

    def test_same_addresses_other_cluster_name(self):
        """The route identity is cluster name and metas: a renamed cluster is another route."""
        self.serve_live()
        self.routes.table["temp"] = Route("renamed", META1)
        got = self.ask()
        self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.app_error for r in got], [codes.ERR_SERVICE_NOT_ACTIVE])

    def test_final_live_error_forgets(self):
        """A live ERR_OBJECT_NOT_FOUND (table dropped) forgets the last answer: no resurrection later."""
        self.serve_live()
        got = self.ask()
        self.calls()[-1][3].callback(_not_found())
        self.assertEqual([r.app_error for r in got], [codes.ERR_OBJECT_NOT_FOUND])
        got = self.ask()
        self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.app_error for r in got], [codes.ERR_SERVICE_NOT_ACTIVE])

    def test_healthy_cluster_always_asked(self):
        """Every request still goes upstream while the cluster answers."""
        self.serve_live()
        self.serve_live()
        self.assertEqual(len(self.calls()), 2)
        self.assertEqual(self.last_good.served, {"c1": 0})

    def test_logs_once_per_cluster_start_and_stop(self):
        """One warning when stale answers start, none for the next ones, one info line when the cluster is back."""
        self.serve_live("temp")
        self.serve_live("other")
        with capturedLogs() as events:
            for table in ("temp", "other", "temp"):
                got = self.ask(table)
                self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
                self.assertEqual(got[0].app_error, codes.ERR_OK)
            self.clock.advance(5)
            self.serve_live("temp")
            self.serve_live("other")
        texts = [e["log_format"] for e in events]
        self.assertEqual(len([t for t in texts if "has no meta that can answer" in t]), 1)
        stops = [e for e in events if "stopped serving last good" in e["log_format"]]
        self.assertEqual(len(stops), 1)
        self.assertEqual((stops[0]["served"], stops[0]["cluster_name"]), (3, "c1"))

    def test_routes_shows_age(self):
        """/routes shows each table's last_good_age (null for a table without one)."""
        self.serve_live("temp")
        self.clock.advance(7)

        class _Describe(_CachedRoutes):
            def describe(self):
                return [{"table": t, "cluster_name": r.cluster_name, "meta_addrs": r.meta_addrs.strings()}
                        for t, r in self.table.items()]

        root = build_admin_root(_Describe(self.routes.table), lambda: True, last_good_ages=self.last_good.ages)
        code, body, _ = _get(root, b"/routes")
        ages = {e["table"]: e["last_good_age"] for e in json.loads(body)["routes"]}
        self.assertEqual((code, ages), (200, {"temp": 7.0, "other": None}))


class _CachedStartRoutes(_CachedRoutes):
    """The test routes with C{cached()} too: the resolver's synchronous route path."""

    #: tables whose route is being read (C{cached()} cannot tell it)
    reading = frozenset()

    def cached(self, table):
        if table in self.reading:
            return None
        value = self.table.get(table)
        return value if isinstance(value, Route) else None


class _Answers:
    """The server side of L{QueryConfigResolver.start}: collects the replies."""

    def __init__(self, results):
        self.results = results

    def request_answered(self, token, request, reply):
        self.results.append(reply)


class StaleIfErrorStartTests(StaleIfErrorTests):
    """
    The same, over the server's callback path (L{QueryConfigResolver.start},
    cached routes answered without a L{Deferred}).
    """

    def setUp(self):
        StaleIfErrorTests.setUp(self)
        self.routes = _CachedStartRoutes(self.routes.table)
        self.resolver = QueryConfigResolver(
            self.routes, self.pools, clock=self.clock, default_timeout=1.5, last_good=self.last_good
        )

    def ask(self, table="temp", indices=()):
        results = []
        self.resolver.start(_request(table, indices), _Answers(results), 1)
        return results

    def test_route_being_read_gives_no_stale_answer(self):
        """If C{cached()} cannot tell the table's route at once, no stale answer, and no lookup is started."""
        self.serve_live()
        got = self.ask()
        lookups = []
        self.routes.reading = {"temp"}
        self.routes.lookup = lambda table: lookups.append(table) or defer.Deferred()
        self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.app_error for r in got], [codes.ERR_SERVICE_NOT_ACTIVE])
        self.assertEqual(lookups, [])


class DisabledTests(_Setup, SynchronousTestCase):
    """stale_if_error: 0 keeps nothing and serves nothing."""

    max_age = 0.0

    def test_off(self):
        """Nothing is kept; a failing cluster gives the retryable error."""
        self.serve_live()
        got = self.ask()
        self.calls()[-1][3].errback(errors.BackendUnavailable("down"))
        self.assertEqual([r.app_error for r in got], [codes.ERR_SERVICE_NOT_ACTIVE])
        self.assertEqual((self.last_good.entries(), self.last_good.size_bytes()), (0, 0))



class BoundsTests(SynchronousTestCase):
    """Memory: capacity, variants per table, bytes."""

    def test_capacity_and_bytes(self):
        """At most C{capacity} answers are kept, the least recently refreshed table first out; bytes follow."""
        clock = Clock()
        store = LastGoodAnswers(clock, capacity=2)
        for name in ("a", "b", "c"):
            store.remember(ROUTE1, name, (), Reply(b"x" * 10, native_body=b"y" * 5))
        self.assertEqual((store.entries(), store.size_bytes()), (2, 30))
        self.assertEqual(sorted(store.ages()), ["b", "c"])
        for i in range(40):
            store.remember(ROUTE1, "c", (i,), Reply(b"z"))
        self.assertLessEqual(store.entries(), 16)
        self.assertEqual(store.size_bytes(), store.entries())


class ZooKeeperSwitchTests(_ZKBase):
    """With the real ZooKeeper route table, a switch is never answered from the old cluster's answer."""

    @defer.inlineCallbacks
    def test_switch_with_zookeeper_routes(self):
        """Stale answers of c1 are served before the node is rewritten to c2, never after."""
        yield self.write("temp", node("c1", str(META1)))
        routes = yield self.table()
        pools = _Pools()
        last_good = LastGoodAnswers(reactor)
        resolver = QueryConfigResolver(routes, pools, clock=reactor, default_timeout=10.0, last_good=last_good)

        @defer.inlineCallbacks
        def ask(meta, outcome):
            answered = resolver.handle(_request("temp"), None)
            cluster = yield wait_until(lambda: pools.clusters.get(meta))
            yield wait_until(lambda: [c for c in cluster.calls if not c[3].called])
            [pending] = [c for c in cluster.calls if not c[3].called]
            if outcome is not None:
                outcome(pending[3])
            return answered, pending[3]

        live, _ = yield ask(META1, lambda d: d.callback(_ok()))
        live = yield live
        stale, _ = yield ask(META1, lambda d: d.errback(errors.BackendUnavailable("down")))
        stale = yield stale
        self.assertEqual((stale.app_error, stale.body), (codes.ERR_OK, live.body))
        waiting, upstream = yield ask(META1, None)  # routed to c1, still waiting at the switch

        yield self.write("temp", node("c2", str(META2)))
        yield wait_until(lambda: self.cluster_of(routes, "temp").addCallback(lambda c: c == "c2"))
        upstream.errback(errors.BackendUnavailable("down"))
        waiting = yield waiting
        self.assertEqual(waiting.app_error, codes.ERR_SERVICE_NOT_ACTIVE)
        after, _ = yield ask(META2, lambda d: d.errback(errors.BackendUnavailable("down")))
        after = yield after
        self.assertEqual(after.app_error, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual((last_good.served, last_good.entries()), ({"c1": 1}, 0))
