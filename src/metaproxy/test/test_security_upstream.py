"""
L{metaproxy.security.upstream} and its step in
L{metaproxy.backend.connection.MetaConnection}, with a scripted meta on an
in-memory transport, a fake mechanism and a L{MemoryReactorClock}: what each
meta answer does, the deadline, and that no call is sent before the
negotiation succeeded.
"""

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.backend import connection as connmod
from metaproxy.backend.client import NotConnected
from metaproxy.backend.connection import MetaConnection
from metaproxy.security.credentials import KerberosCredentials
from metaproxy.security.sasl import SaslError
from metaproxy.security.upstream import DISABLED, FAILED, OK, UpstreamNegotiator, inline_runner
from metaproxy.wire import codes, frame, querycfg
from metaproxy.wire import negotiation as nego

QCFG = querycfg.QUERY_CFG
ARGS = querycfg.encode_args("temp")


class _FakeMechanism:
    """Stands for L{GssapiClient}: one context token, then one answer per challenge."""

    instances = []

    def __init__(self, service, host, creds):
        self.target = (service, host, creds)
        self.challenges = []
        self.complete = False
        _FakeMechanism.instances.append(self)

    def start(self):
        return b"ap-req"

    def step(self, challenge):
        if challenge == b"bad":
            raise SaslError("mutual authentication failed")
        self.challenges.append(challenge)
        self.complete = True
        return b"answer-" + challenge

    def established(self):
        return self.complete


class _Addr:
    def __init__(self, host, port):
        self.host, self.port = host, port


class NegotiationTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.creds = KerberosCredentials(self.reactor, "mp@R", "/k", inline_runner,
                                         acquire=lambda p, k: ("creds", 3600.0))
        self.negotiator = UpstreamNegotiator(self.reactor, "c1", self.creds, inline_runner,
                                             service_name="pegasus", timeout=10.0, mechanism=_FakeMechanism)
        self.conn = MetaConnection(self.reactor, "10.0.0.1", 34601, retry_policy=lambda attempt: 1.0,
                                   negotiator=self.negotiator)
        self.conn.start()
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=_Addr(host, port))
        self.proto.makeConnection(self.transport)
        self.seen = 0

    def requests(self):
        """@return: the requests written since the last call."""
        reqs = frame.RequestDecoder().feed(self.transport.value())
        new, self.seen = reqs[self.seen:], len(reqs)
        return new

    def answer(self, status, msg=b"", rpc_error=codes.ERR_OK):
        [req] = self.requests()
        self.assertEqual(req.name, nego.NEGOTIATION)
        body = nego.encode_response_result(status, msg) if rpc_error == codes.ERR_OK else None
        self.proto.dataReceived(frame.encode_reply(frame.ack_name(req.name), req.seqid, body, rpc_error))
        return nego.decode_request_args(req.args)

    def full_exchange(self):
        sent = [self.answer(nego.SASL_LIST_MECHANISMS_RESP, b"GSSAPI")]
        sent.append(self.answer(nego.SASL_SELECT_MECHANISMS_RESP))
        sent.append(self.answer(nego.SASL_CHALLENGE, b"ap-rep"))
        sent.append(self.answer(nego.SASL_CHALLENGE, b"layer-offer"))
        sent.append(self.answer(nego.SASL_SUCC))
        return sent

    def test_exchange_then_usable(self):
        """
        The connection sends nothing but the negotiation until SASL_SUCC; the
        messages are those of Pegasus's client_negotiation, and the waiting
        call goes out afterwards.
        """
        call = self.conn.call(QCFG, ARGS)
        self.assertEqual(self.conn.state, connmod.CONNECTING)
        sent = self.full_exchange()
        self.assertEqual([(m.status, m.msg) for m in sent], [
            (nego.SASL_LIST_MECHANISMS, b""),
            (nego.SASL_SELECT_MECHANISMS, b"GSSAPI"),
            (nego.SASL_INITIATE, b"ap-req"),
            (nego.SASL_CHALLENGE_RESP, b"answer-ap-rep"),
            (nego.SASL_CHALLENGE_RESP, b"answer-layer-offer"),
        ])
        self.assertEqual(self.conn.state, connmod.CONNECTED)
        [req] = self.requests()
        self.assertEqual(req.name, QCFG)
        self.assertNoResult(call)
        self.assertEqual((self.negotiator.state, self.negotiator.counts[OK]), (OK, 1))
        self.assertEqual(_FakeMechanism.instances[-1].target, ("pegasus", "10.0.0.1", "creds"))

    def test_call_then_waits_for_negotiation(self):
        """
        The callback form (C{call_then}, the query path's) waits for the
        negotiation as L{MetaConnection.call} does: nothing but the
        negotiation is sent before SASL_SUCC, then the call goes out and its
        answer reaches C{done}; a failed negotiation reaches C{done} as an error.
        """
        got = []
        self.conn.call_then(QCFG, ARGS, 1000, lambda arg, response, error: got.append((arg, response, error)), "a")
        self.full_exchange()
        [req] = self.requests()
        self.assertEqual((req.name, got), (QCFG, []))
        self.proto.dataReceived(frame.encode_reply(frame.ack_name(QCFG), req.seqid, b"\x0c\x00\x00\x00"))
        [(arg, response, error)] = got
        self.assertEqual((arg, response.seqid, error), ("a", req.seqid, None))

    def test_call_then_negotiation_fails(self):
        """A call_then waiting for a negotiation that fails gets the error, not a hang."""
        got = []
        self.conn.call_then(QCFG, ARGS, 1000, lambda arg, response, error: got.append((response, error)), None)
        self.answer(nego.SASL_LIST_MECHANISMS_RESP, b"PLAIN")
        [(response, error)] = got
        self.assertIsNone(response)
        self.assertIsInstance(error, NotConnected)

    def test_service_fqdn_overrides_host(self):
        """With service_fqdn set, the target is service/fqdn whatever the meta's address."""
        self.negotiator.service_fqdn = "cluster.example"
        self.full_exchange()
        self.assertEqual(_FakeMechanism.instances[-1].target[1], "cluster.example")

    def test_auth_disabled_meta(self):
        """A meta without enable_auth (SASL_AUTH_DISABLE) is used at once."""
        self.answer(nego.SASL_AUTH_DISABLE)
        self.assertEqual((self.conn.state, self.negotiator.state), (connmod.CONNECTED, DISABLED))

    def test_meta_without_security_module(self):
        """A meta that answers ERR_HANDLER_NOT_FOUND (older than the module) is used at once."""
        self.answer(0, rpc_error=codes.ERR_HANDLER_NOT_FOUND)
        self.assertEqual((self.conn.state, self.negotiator.state), (connmod.CONNECTED, DISABLED))

    def _assert_failed(self, fragment, fails_fast=True):
        self.assertEqual(self.conn.state, connmod.DOWN)
        self.assertIn("Kerberos negotiation with cluster c1 failed", self.conn.last_error)
        self.assertIn(fragment, self.conn.last_error)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual((self.negotiator.state, self.negotiator.counts[FAILED]), (FAILED, 1))
        if fails_fast:  # (later than probe_interval after the attempt, a call starts a new one)
            self.failureResultOf(self.conn.call(QCFG, ARGS), NotConnected)

    def test_auth_fail(self):
        """SASL_AUTH_FAIL fails the attempt; the connection is closed and retried later."""
        self.answer(nego.SASL_LIST_MECHANISMS_RESP, b"GSSAPI")
        self.answer(nego.SASL_AUTH_FAIL)
        self._assert_failed("SASL_AUTH_FAIL")
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)  # re-dialled, and will negotiate again

    def test_no_gssapi_offered(self):
        """A meta offering only other mechanisms is refused."""
        self.answer(nego.SASL_LIST_MECHANISMS_RESP, b"PLAIN")
        self._assert_failed("not GSSAPI")

    def test_out_of_order(self):
        """An answer with the wrong status fails the negotiation."""
        self.answer(nego.SASL_CHALLENGE, b"x")
        self._assert_failed("expected SASL_LIST_MECHANISMS_RESP")

    def test_mechanism_failure(self):
        """A failing mechanism step (e.g. mutual authentication) fails with its reason."""
        self.answer(nego.SASL_LIST_MECHANISMS_RESP, b"GSSAPI")
        self.answer(nego.SASL_SELECT_MECHANISMS_RESP)
        self.answer(nego.SASL_CHALLENGE, b"bad")
        self._assert_failed("mutual authentication failed")

    def test_success_before_context(self):
        """SASL_SUCC before the context is complete is not believed."""
        self.answer(nego.SASL_LIST_MECHANISMS_RESP, b"GSSAPI")
        self.answer(nego.SASL_SELECT_MECHANISMS_RESP)
        self.answer(nego.SASL_SUCC)
        self._assert_failed("before the Kerberos context was complete")

    def test_endless_challenges(self):
        """A meta that keeps challenging is given up on."""
        self.answer(nego.SASL_LIST_MECHANISMS_RESP, b"GSSAPI")
        self.answer(nego.SASL_SELECT_MECHANISMS_RESP)
        for _ in range(9):  # the answer to INITIATE and to 8 challenge responses
            self.answer(nego.SASL_CHALLENGE, b"more")
        self._assert_failed("no SASL_SUCC after 8 challenges")

    def test_garbage_answer(self):
        """An undecodable negotiation answer fails the negotiation, not the process."""
        [req] = self.requests()
        self.proto.dataReceived(frame.encode_reply(frame.ack_name(req.name), req.seqid, b"\x0c\x00\x00\x08"))
        self._assert_failed("Kerberos negotiation")

    def test_silent_meta_times_out(self):
        """A meta that never answers fails the attempt after the timeout on the clock; no hang."""
        call = self.conn.call(QCFG, ARGS)
        self.reactor.advance(9.9)
        self.assertNoResult(call)
        self.reactor.advance(0.2)
        self._assert_failed("no reply within 10", fails_fast=False)
        self.failureResultOf(call, NotConnected)

    def test_connection_lost_during_negotiation(self):
        """The meta closing the session (as its fail_negotiation does) fails the attempt."""
        from twisted.python.failure import Failure
        from twisted.internet.error import ConnectionDone

        self.answer(nego.SASL_LIST_MECHANISMS_RESP, b"GSSAPI")
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.conn.state, connmod.DOWN)
        self.assertIn("Kerberos negotiation with cluster c1 failed", self.conn.last_error)

    def test_stop_during_negotiation(self):
        """Stopping while negotiating closes the connection and counts no failure."""
        self.answer(nego.SASL_LIST_MECHANISMS_RESP, b"GSSAPI")
        d = self.conn.stop()
        self.successResultOf(d)
        self.assertEqual(self.conn.state, connmod.STOPPED)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.negotiator.counts[FAILED], 0)

    def test_credentials_unavailable(self):
        """Without credentials nothing is sent and the attempt fails naming why."""
        self.conn.stop()
        creds = KerberosCredentials(self.reactor, "mp@R", "/k", inline_runner,
                                    acquire=lambda p, k: (_ for _ in ()).throw(SaslError("keytab /k does not exist")))
        negotiator = UpstreamNegotiator(self.reactor, "c1", creds, inline_runner, mechanism=_FakeMechanism)
        conn = MetaConnection(self.reactor, "10.0.0.1", 34601, negotiator=negotiator)
        conn.start()
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_Addr(host, port))
        proto.makeConnection(transport)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(conn.state, connmod.DOWN)
        self.assertIn("keytab /k does not exist", conn.last_error)
        creds.stop()
        conn.stop()
