"""
L{metaproxy.security.downstream.NegotiatingHandler} with a fake mechanism:
the server side of Pegasus's negotiation, mandatory refusal, the allow-list
and the default (SASL_AUTH_DISABLE).
"""

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metaproxy.security.downstream import NegotiatingHandler
from metaproxy.security.sasl import SaslError
from metaproxy.security.upstream import inline_runner
from metaproxy.wire import negotiation as nego
from metaproxy.wire.frame import Reply, Request, RequestHeader

_SERVED = Reply(b"served")


class _Inner:
    def __init__(self):
        self.seen = []

    def handle(self, request, connection):
        self.seen.append(request.name)
        return _SERVED


class _FakeServerMechanism:
    """Accepts token b"ok" as alice@R (or b"bob" as bob/h@R) after one challenge round."""

    def __init__(self, creds):
        self.round = 0

    def step(self, token):
        if token == b"bad":
            raise SaslError("Kerberos authentication failed: bad token")
        self.round += 1
        if self.round == 1:
            self.who = token
            return False, b"challenge"
        return True, "bob/h@R" if self.who == b"bob" else "alice@R"


class _Conn:
    def __init__(self):
        self.transport = StringTransport()


def _req(name, args=b""):
    return Request(RequestHeader(), name, 1, args)


def _nego(status, msg=b""):
    return _req(nego.NEGOTIATION, nego.encode_request_args(status, msg))


def _status(reply):
    return nego.decode_response_result(reply.body)


class HandlerTests(SynchronousTestCase):
    def setUp(self):
        self.inner = _Inner()
        self.handler = NegotiatingHandler(self.inner, lambda: "creds", inline_runner, mandatory=True,
                                          allow=frozenset({"alice"}), mechanism=_FakeServerMechanism)
        self.conn = _Conn()

    def handle(self, request):
        result = self.handler.handle(request, self.conn)
        if isinstance(result, defer.Deferred):
            return self.successResultOf(result) if result.called and not result.paused else result
        return result

    def negotiate(self, token=b"ok"):
        replies = [self.handle(_nego(nego.SASL_LIST_MECHANISMS))]
        replies.append(self.handle(_nego(nego.SASL_SELECT_MECHANISMS, b"GSSAPI")))
        replies.append(self.handle(_nego(nego.SASL_INITIATE, token)))
        replies.append(self.handle(_nego(nego.SASL_CHALLENGE_RESP, b"")))
        return replies

    def test_exchange_then_served(self):
        """The answers follow server_negotiation.cpp; afterwards requests are served."""
        replies = self.negotiate()
        self.assertEqual([(_status(r).status, _status(r).msg) for r in replies], [
            (nego.SASL_LIST_MECHANISMS_RESP, b"GSSAPI"),
            (nego.SASL_SELECT_MECHANISMS_RESP, b""),
            (nego.SASL_CHALLENGE, b"challenge"),
            (nego.SASL_SUCC, b""),
        ])
        self.assertEqual(self.handler.principal_of(self.conn), "alice@R")
        self.assertIs(self.handle(_req("RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX")), _SERVED)
        self.assertFalse(self.conn.transport.disconnecting)
        self.assertEqual(self.handler.counts["authenticated"], 1)

    def test_mandatory_refuses_unauthenticated(self):
        """Before negotiating, a query is never answered and the connection is closed."""
        result = self.handle(_req("RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX"))
        self.assertNoResult(result)
        self.assertTrue(self.conn.transport.disconnecting)
        self.assertEqual((self.inner.seen, self.handler.counts["refused_unauthenticated"]), ([], 1))

    def test_mandatory_lets_failure_detector_through(self):
        """Failure-detector pings are allowed unauthenticated, as by a meta."""
        self.assertIs(self.handle(_req("RPC_FD_FAILURE_DETECTOR_PING")), _SERVED)

    def test_not_mandatory_serves_unauthenticated(self):
        """Without mandatory, a session that never negotiates is served as before."""
        self.handler.mandatory = False
        self.assertIs(self.handle(_req("RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX")), _SERVED)

    def test_allow_list(self):
        """bob/h@R authenticates but is not allowed (by user name or principal): closed, no SASL_SUCC."""
        replies = self.negotiate(b"bob")
        self.assertNoResult(replies[-1])
        self.assertTrue(self.conn.transport.disconnecting)
        self.assertIsNone(self.handler.principal_of(self.conn))
        self.assertEqual(self.handler.counts["not_allowed"], 1)

    def test_allow_list_full_principal(self):
        """An entry may be the full principal."""
        self.handler.allow = frozenset({"bob/h@R"})
        self.assertEqual(_status(self.negotiate(b"bob")[-1]).status, nego.SASL_SUCC)

    def _assert_closed(self, result):
        self.assertNoResult(result)
        self.assertTrue(self.conn.transport.disconnecting)
        self.assertEqual(self.handler.counts["failed"], 1)

    def test_out_of_order(self):
        """A status out of order ends the session, as fail_negotiation() does."""
        self._assert_closed(self.handle(_nego(nego.SASL_INITIATE, b"ok")))

    def test_unknown_mechanism(self):
        """Selecting anything but GSSAPI ends the session."""
        self.handle(_nego(nego.SASL_LIST_MECHANISMS))
        self._assert_closed(self.handle(_nego(nego.SASL_SELECT_MECHANISMS, b"PLAIN")))

    def test_kerberos_failure(self):
        """A token the mechanism rejects ends the session."""
        self.handle(_nego(nego.SASL_LIST_MECHANISMS))
        self.handle(_nego(nego.SASL_SELECT_MECHANISMS, b"GSSAPI"))
        self._assert_closed(self.handle(_nego(nego.SASL_INITIATE, b"bad")))

    def test_renegotiation_after_success_refused(self):
        """A second negotiation on an authenticated session ends it."""
        self.negotiate()
        self._assert_closed(self.handle(_nego(nego.SASL_LIST_MECHANISMS)))

    def test_garbage(self):
        """Undecodable negotiation args end the session."""
        self._assert_closed(self.handle(_req(nego.NEGOTIATION, b"\x0c\x00")))

    def test_step_in_flight(self):
        """A second step while one runs in the thread ends the session (one step per session at a time)."""
        pending = defer.Deferred()
        self.handler.run = lambda f, *a: pending if f is not self.handler.acceptor else defer.succeed("creds")
        self.handle(_nego(nego.SASL_LIST_MECHANISMS))
        self.handle(_nego(nego.SASL_SELECT_MECHANISMS, b"GSSAPI"))
        first = self.handler.handle(_nego(nego.SASL_INITIATE, b"ok"), self.conn)
        self._assert_closed(self.handle(_nego(nego.SASL_CHALLENGE_RESP, b"")))
        self.assertNoResult(first)

    def test_adopted_connection_served(self):
        """A connection handed over by a hot upgrade after it negotiated is served under mandatory."""
        self.handler.adopt(self.conn, "alice@R")
        self.assertEqual(self.handler.principal_of(self.conn), "alice@R")
        self.assertIs(self.handle(_req("RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX")), _SERVED)
        self._assert_closed(self.handle(_nego(nego.SASL_LIST_MECHANISMS)))  # no second negotiation

    def test_disabled_answers_auth_disable(self):
        """Without an acceptor, RPC_NEGOTIATION gets SASL_AUTH_DISABLE as from an unsecured meta."""
        handler = NegotiatingHandler(self.inner)
        self.assertEqual(handler.handle(_nego(nego.SASL_LIST_MECHANISMS), self.conn).body, nego.auth_disable_result())
        self.assertIs(handler.handle(_req("RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX"), self.conn), _SERVED)


class SimulatorTests(TestCase):
    """pegasus-sim's enable_auth / mandatory_auth over real loopback connections."""

    timeout = 30

    @defer.inlineCallbacks
    def _query(self, **auth):
        from twisted.internet import reactor

        from metaproxy.sim.model import SimModel
        from metaproxy.sim.server import SimulatedCluster
        from metaproxy.testing.pegasus_client import connect_client

        sim = SimulatedCluster(reactor, ("127.0.0.1:0",), SimModel(), **auth)
        sim.create_table("temp", 4)
        sim.startService()
        self.addCleanup(sim.stopService)
        client = yield connect_client(reactor, "127.0.0.1", sim.servers[0].port, "go")
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        nego_reply = yield client.query("", name=nego.NEGOTIATION, args=nego.encode_request_args(1))
        d = client.query("temp")
        return sim, client, nego_reply, d

    @defer.inlineCallbacks
    def test_mandatory_sim_refuses_unauthenticated(self):
        """A mandatory_auth simulated meta offers GSSAPI and closes a session that queries before negotiating."""
        sim, client, nego_reply, d = yield self._query(enable_auth=True, mandatory_auth=True)
        self.assertEqual(nego.decode_response_result(nego_reply.body),
                         nego.NegotiationMessage(nego.SASL_LIST_MECHANISMS_RESP, b"GSSAPI"))
        yield self.assertFailure(d, Exception)
        yield client.closed
        self.assertEqual(sim.auth_counts()["refused_unauthenticated"], 1)
        self.assertEqual(sim.answered(), [0])

    @defer.inlineCallbacks
    def test_default_sim_unchanged(self):
        """Without enable_auth the simulated meta answers SASL_AUTH_DISABLE and serves the query."""
        sim, client, nego_reply, d = yield self._query()
        self.assertEqual(nego_reply.body, nego.auth_disable_result())
        response = yield d
        self.assertEqual(response.rpc_error, "ERR_OK")
        self.assertEqual(sim.answered(), [1])


class LogLimitTests(SynchronousTestCase):
    def test_refusals_logged_once_per_interval(self):
        """A flood of refusals gives one line per 10 s per kind, then one saying how many were left out."""
        from twisted.internet.task import Clock
        from twisted.logger import globalLogPublisher, formatEvent

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        handler = NegotiatingHandler(_Inner(), lambda: "creds", inline_runner, mandatory=True, clock=clock)
        for _ in range(100):
            handler.handle(_req("RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX"), _Conn())
        clock.advance(10)
        handler.handle(_req("RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX"), _Conn())
        lines = [formatEvent(e) for e in events if "has not negotiated" in formatEvent(e)]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("99 more like it", lines[1])
        self.assertEqual(handler.counts["refused_unauthenticated"], 101)
