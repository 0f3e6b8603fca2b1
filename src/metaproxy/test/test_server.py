# -*- test-case-name: metaproxy.test.test_server -*-
"""
Tests for L{metaproxy.frontend.server}: the server-side protocol over a fake
transport, with the same cases for THFT header v0 and v1 (mixins).
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted.internet.testing import StringTransport
from twisted.logger import Logger

from metaproxy.testing.transports import connect
from metaproxy.frontend import server
from metaproxy.frontend.dispatch import RpcDispatcher
from metaproxy.interfaces import IRequestHandler
from metaproxy.frontend.server import CLOSE_GRACE, PegasusServerFactory
from metaproxy.test.reference import samples
from metaproxy.wire import codes, frame, querycfg
from metaproxy.wire.binary import DecodeError
from metaproxy.wire.negotiation import NEGOTIATION, SASL_AUTH_DISABLE

OK_BODY = querycfg.error_result(codes.ERR_OK)


def _reply_body(request, connection):
    return frame.Reply(OK_BODY)


class _Deferring:
    """A handler whose answers the test fires."""

    def __init__(self):
        self.calls = []
        self.cancelled = 0

    def __call__(self, request, connection):
        def cancel(d):
            self.cancelled += 1

        d = defer.Deferred(cancel)
        self.calls.append((request, d))
        return d


_connect = connect


def _replies(transport):
    out = frame.ResponseDecoder().feed(transport.value())
    transport.clear()
    return out


class _Base:
    version = None

    def setUp(self):
        self.clock = Clock()
        self.deferring = _Deferring()
        self.plain = []
        self.dispatcher = RpcDispatcher(
            {
                querycfg.QUERY_CFG: _reply_body,
                "RPC_SLOW": self.deferring,
                "RPC_BAD_ARGS": self.bad_args,
                "RPC_RAISE": lambda request, connection: 1 / 0,
                "RPC_NONE": lambda request, connection: None,
                "RPC_PLAIN": lambda request, connection: self.plain.append(defer.Deferred()) or self.plain[-1],
            }
        )
        self.factory = PegasusServerFactory(self.dispatcher, self.clock, max_frame_bytes=4096)
        self.proto, self.transport = _connect(self.factory)

    @staticmethod
    def bad_args(request, connection):
        raise DecodeError("garbage")

    def request(self, name=querycfg.QUERY_CFG, seqid=1, args=None):
        if args is None:
            args = querycfg.encode_args("temp")
        return frame.encode_request(name, seqid, args, version=self.version)


class _Cases(_Base):
    def test_dispatcher_provides_interface(self):
        """The dispatcher is an IRequestHandler."""
        verifyObject(IRequestHandler, self.dispatcher)

    def test_reply_echoes_seqid_zero(self):
        """Seqid 0 is a normal seqid and is echoed."""
        self.proto.dataReceived(self.request(seqid=0))
        [r] = _replies(self.transport)
        self.assertEqual((r.rpc_error, r.name, r.seqid, r.body), ("ERR_OK", querycfg.QUERY_CFG_ACK, 0, OK_BODY))

    def test_byte_by_byte(self):
        """A frame split into single bytes is answered once complete."""
        data = self.request(seqid=5)
        for b in data[:-1]:
            self.proto.dataReceived(bytes([b]))
        self.assertEqual(self.transport.value(), b"")
        self.proto.dataReceived(data[-1:])
        self.assertEqual([r.seqid for r in _replies(self.transport)], [5])

    def test_pipelined_out_of_order(self):
        """Pipelined requests are answered as their handlers finish, in any order."""
        self.proto.dataReceived(b"".join(self.request("RPC_SLOW", seqid=i) for i in (1, 2, 3)))
        calls = self.deferring.calls
        calls[2][1].callback(frame.Reply(OK_BODY))
        calls[0][1].callback(frame.Reply(OK_BODY))
        calls[1][1].callback(frame.Reply(OK_BODY))
        self.assertEqual([r.seqid for r in _replies(self.transport)], [3, 1, 2])
        self.assertEqual([r.name for r in _replies(self.transport)], [])

    def test_unknown_rpc(self):
        """An unknown rpc gets ERR_HANDLER_NOT_FOUND with no body (ex4)."""
        self.proto.dataReceived(self.request("RPC_FOO", seqid=7, args=b"\x00"))
        raw = self.transport.value()
        self.assertEqual(
            raw,
            b"\x00\x00\x00\x34\x00\x00\x00\x15ERR_HANDLER_NOT_FOUND\x80\x01\x00\x02"
            b"\x00\x00\x00\x0bRPC_FOO_ACK\x00\x00\x00\x07",
        )

    def test_negotiation_auth_disabled(self):
        """RPC_NEGOTIATION is answered SASL_AUTH_DISABLE."""
        self.proto.dataReceived(self.request(NEGOTIATION, seqid=0, args=b"\x0c\x00\x01\x08\x00\x01\x00\x00\x00\x01\x00\x00"))
        [r] = _replies(self.transport)
        self.assertEqual((r.rpc_error, r.name), ("ERR_OK", "RPC_NEGOTIATION_ACK"))
        self.assertIn(b"\x08\x00\x01" + SASL_AUTH_DISABLE.to_bytes(4, "big"), r.body)

    def test_malformed_args(self):
        """Malformed args get ERR_INVALID_PARAMETERS; the connection stays usable."""
        self.proto.dataReceived(self.request("RPC_BAD_ARGS", seqid=3))
        self.proto.dataReceived(self.request(seqid=4))
        replies = _replies(self.transport)
        self.assertEqual([(r.seqid, r.rpc_error) for r in replies], [(3, "ERR_INVALID_PARAMETERS"), (4, "ERR_OK")])
        self.assertTrue(self.transport.connected)

    def test_handler_exception_is_retryable(self):
        """A handler bug is logged and answered ERR_TIMEOUT (retryable), never raised into the reactor."""
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=9))
        self.deferring.calls[0][1].errback(RuntimeError("bug"))
        [r] = _replies(self.transport)
        self.assertEqual((r.seqid, r.rpc_error, r.body), (9, "ERR_TIMEOUT", b""))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.factory.counters.handler_errors, 1)

    def test_unsafe_rpc_error_is_replaced(self):
        """An rpc-level error name outside the safe subset is sent as ERR_UNKNOWN."""
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=2))
        self.deferring.calls[0][1].callback(frame.Reply(None, "ERR_ACL_DENY"))
        self.assertEqual(_replies(self.transport)[0].rpc_error, "ERR_UNKNOWN")

    def test_requests_before_bad_frame_answered_then_closed(self):
        """Frames before a broken one are answered; then the connection closes."""
        self.proto.dataReceived(self.request(seqid=1) + self.request(seqid=2) + b"XXXX" + b"\x00" * 40)
        self.assertEqual([r.seqid for r in _replies(self.transport)], [1, 2])
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.factory.counters.framing_errors, 1)

    def test_oversized_frame_closes(self):
        """A frame declaring more than max_frame_bytes closes the connection before buffering it."""
        big = self.request(args=querycfg.encode_args("t" * 5000))
        self.proto.dataReceived(big[:64])
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.transport.value(), b"")

    def test_disconnect_cancels_pending(self):
        """A client that goes away cancels its own pending requests, silently."""
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=1) + self.request("RPC_SLOW", seqid=2))
        self.transport.loseConnection()
        self.assertEqual(self.deferring.cancelled, 2)
        self.assertEqual(self.factory.connection_count, 0)

    def test_backpressure(self):
        """With max_pending unanswered requests the connection stops being read until they drain."""
        self.factory.max_pending_per_connection = 4
        self.proto.dataReceived(b"".join(self.request("RPC_SLOW", seqid=i) for i in range(4)))
        self.assertEqual(self.transport.producerState, "paused")
        self.deferring.calls[0][1].callback(frame.Reply(OK_BODY))
        self.assertEqual(self.transport.producerState, "producing")
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=9))
        self.assertEqual(self.transport.producerState, "paused")

    def test_oneway_gets_no_reply(self):
        """A ONEWAY message is handled but not answered."""
        data = bytearray(self.request(seqid=1))
        begin = data.index(b"\x80\x01\x00\x01")
        data[begin + 3] = 4
        self.proto.dataReceived(bytes(data))
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.connected)

    def test_mixed_versions_on_one_connection(self):
        """v0 and v1 frames may alternate on one connection, each answered."""
        other = 1 - self.version
        data = (
            self.request(seqid=1)
            + frame.encode_request(querycfg.QUERY_CFG, 2, querycfg.encode_args("temp"), version=other)
            + self.request(seqid=3)
        )
        self.proto.dataReceived(data)
        self.assertEqual([r.seqid for r in _replies(self.transport)], [1, 2, 3])

    def test_broken_stream_answers_pending_then_closes(self):
        """
        After a framing error the connection stops being read; requests
        decoded before the break are still answered, then it closes.
        """
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=1) + b"XXXX" + b"\x00" * 20)
        self.assertTrue(self.transport.connected)
        self.assertEqual(self.transport.producerState, "paused")
        self.proto.dataReceived(self.request(seqid=2))  # ignored: the stream is broken
        self.deferring.calls[0][1].callback(frame.Reply(OK_BODY))
        self.assertEqual([r.seqid for r in _replies(self.transport)], [1])
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.factory.counters.framing_errors, 1)

    def test_broken_stream_closes_after_grace(self):
        """A broken stream whose pending answer never comes is closed after CLOSE_GRACE."""
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=1) + b"XXXX" + b"\x00" * 20)
        self.clock.advance(CLOSE_GRACE - 1)
        self.assertTrue(self.transport.connected)
        self.clock.advance(1)
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.deferring.cancelled, 1)
        self.assertEqual(self.transport.value(), b"")

    def test_sync_handler_exception_is_retryable(self):
        """A handler raising synchronously is logged and answered ERR_TIMEOUT."""
        self.proto.dataReceived(self.request("RPC_RAISE", seqid=4))
        [r] = _replies(self.transport)
        self.assertEqual((r.seqid, r.rpc_error, r.body), (4, "ERR_TIMEOUT", b""))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_non_reply_result_is_retryable(self):
        """A handler returning something that is not a Reply gets ERR_TIMEOUT, not a traceback into the reactor."""
        self.proto.dataReceived(self.request("RPC_NONE", seqid=5) + self.request(seqid=6))
        replies = _replies(self.transport)
        self.assertEqual([(r.seqid, r.rpc_error) for r in replies], [(5, "ERR_TIMEOUT"), (6, "ERR_OK")])
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    def test_deferred_non_reply_result_is_retryable(self):
        """A Deferred firing with a non-Reply is answered ERR_TIMEOUT."""
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=5))
        self.deferring.calls[0][1].callback("junk")
        [r] = _replies(self.transport)
        self.assertEqual((r.seqid, r.rpc_error), (5, "ERR_TIMEOUT"))
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    def test_deferred_decode_error(self):
        """A Deferred failing with DecodeError is answered ERR_INVALID_PARAMETERS."""
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=8))
        self.deferring.calls[0][1].errback(DecodeError("bad"))
        [r] = _replies(self.transport)
        self.assertEqual((r.seqid, r.rpc_error, r.body), (8, "ERR_INVALID_PARAMETERS", b""))
        self.assertEqual(self.factory.counters.invalid_requests, 1)

    def test_handler_cancelled_while_connected(self):
        """A handler that cancels its own Deferred still gets its client an answer (ERR_TIMEOUT)."""
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=3))
        self.deferring.calls[0][1].cancel()
        [r] = _replies(self.transport)
        self.assertEqual((r.seqid, r.rpc_error), (3, "ERR_TIMEOUT"))
        self.flushLoggedErrors(defer.CancelledError)

    def test_cancellation_on_disconnect_is_swallowed(self):
        """
        The CancelledError of a request whose client left is consumed (no
        unhandled error in the log) and nothing is written for it.
        """
        self.proto.dataReceived(self.request("RPC_PLAIN", seqid=1))
        d = self.plain[0]
        self.transport.loseConnection()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.transport.value(), b"")

    def test_request_counters(self):
        """Requests are counted by rpc name."""
        self.proto.dataReceived(self.request(seqid=1) + self.request(seqid=2) + self.request("RPC_FOO", seqid=3))
        self.assertEqual(self.factory.counters.requests, {querycfg.QUERY_CFG: 2, "RPC_FOO": 1})


class V0Tests(_Cases, SynchronousTestCase):
    version = 0


class V1Tests(_Cases, SynchronousTestCase):
    version = 1


class FactoryTests(_Base, SynchronousTestCase):
    version = 0

    def test_connection_limit(self):
        """Connections beyond max_connections, all in use, are closed at once and counted."""
        self.factory.max_connections = 1
        self.proto.dataReceived(self.request("RPC_X", seqid=1))  # in use: not made room of
        _, transport = _connect(self.factory)
        self.assertFalse(transport.connected)
        self.assertEqual((self.factory.connection_count, self.factory.counters.rejected_connections), (1, 1))
        self.assertEqual(self.factory.counters.accepted, 1)

    def test_idle_timeout(self):
        """A connection with no traffic and nothing pending is closed after idle_timeout."""
        self.factory.idle_timeout = 30.0
        proto, transport = _connect(self.factory)
        self.clock.advance(20)
        proto.dataReceived(self.request(seqid=1))
        self.clock.advance(20)
        self.assertTrue(transport.connected)
        self.clock.advance(11)
        self.assertFalse(transport.connected)

    def test_idle_timeout_waits_for_pending(self):
        """A connection waiting for an answer is not idle."""
        self.factory.idle_timeout = 5.0
        proto, transport = _connect(self.factory)
        proto.dataReceived(self.request("RPC_SLOW", seqid=1))
        self.clock.advance(6)
        self.assertTrue(transport.connected)
        self.deferring.calls[0][1].callback(frame.Reply(OK_BODY))
        self.clock.advance(6)
        self.assertFalse(transport.connected)

    def test_drain_clean(self):
        """Drain waits for in-flight answers, closes each connection once answered, and fires 0."""
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=1))
        d = self.factory.drain(10)
        self.assertNoResult(d)
        self.assertTrue(self.transport.connected)
        self.deferring.calls[0][1].callback(frame.Reply(OK_BODY))
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual([r.seqid for r in _replies(self.transport)], [1])
        self.assertFalse(self.transport.connected)

    def test_drain_closes_idle_connections_at_once(self):
        """A connection with nothing pending is closed as soon as the drain starts; a busy one is not."""
        busy, busy_transport = _connect(self.factory)
        busy.dataReceived(self.request("RPC_SLOW", seqid=1))
        d = self.factory.drain(10)
        self.assertFalse(self.transport.connected)
        self.assertTrue(busy_transport.connected)
        self.assertNoResult(d)

    def test_drain_answers_requests_arriving_on_existing_connections(self):
        """
        During a drain a connection is still read: a request arriving on it
        is answered, and the connection closes once nothing is pending.
        """
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=1))
        d = self.factory.drain(10)
        self.assertEqual(self.transport.producerState, "producing")
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=2) + self.request(seqid=3))
        self.assertEqual(len(self.deferring.calls), 2)
        self.deferring.calls[0][1].callback(frame.Reply(OK_BODY))
        self.assertTrue(self.transport.connected)
        self.deferring.calls[1][1].callback(frame.Reply(OK_BODY))
        self.assertFalse(self.transport.connected)
        self.assertEqual(sorted(r.seqid for r in _replies(self.transport)), [1, 2, 3])
        self.assertEqual(self.successResultOf(d), 0)

    def test_drain_waits_for_a_partial_frame(self):
        """A connection in the middle of a request frame is kept until the frame completes and is answered."""
        data = self.request(seqid=4)
        self.proto.dataReceived(data[:20])
        d = self.factory.drain(10)
        self.assertTrue(self.transport.connected)
        self.proto.dataReceived(data[20:])
        self.assertEqual([r.seqid for r in _replies(self.transport)], [4])
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.successResultOf(d), 0)

    def test_drain_stops_reading_before_its_timeout(self):
        """
        A client that keeps sending during a drain: DRAIN_QUIET seconds
        before the timeout the connection is no longer read, the requests
        it had sent are answered, and it closes then, so the drain ends
        clean (0 unanswered) instead of cutting them at the timeout.
        """
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=1))
        d = self.factory.drain(10)
        seqid = 1
        while self.clock.seconds() < 10 - server.DRAIN_QUIET:
            seqid += 1
            self.proto.dataReceived(self.request("RPC_SLOW", seqid=seqid))  # sent before the last is answered
            self.deferring.calls[-2][1].callback(frame.Reply(OK_BODY))
            self.clock.advance(0.5)
        self.assertEqual(self.transport.producerState, "paused")
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=seqid + 1))  # not read any more
        self.assertEqual(len(self.deferring.calls), seqid)
        self.assertNoResult(d)
        self.deferring.calls[-1][1].callback(frame.Reply(OK_BODY))
        self.assertEqual(self.successResultOf(d), 0)
        self.assertFalse(self.transport.connected)
        self.assertEqual([r.seqid for r in _replies(self.transport)], list(range(1, seqid + 1)))

    def test_drain_timeout(self):
        """Drain gives up after its timeout and reports what was unanswered."""
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=1))
        d = self.factory.drain(3)
        self.clock.advance(3)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertFalse(self.transport.connected)

    def test_no_connections_accepted_while_draining(self):
        """A connection that arrives during a drain is refused."""
        self.factory.drain(3)
        _, transport = _connect(self.factory)
        self.assertFalse(transport.connected)

    def test_tcp_nodelay(self):
        """Every accepted connection asks for TCP_NODELAY."""
        calls = []

        class _Transport(StringTransport):
            def setTcpNoDelay(self, enabled):
                calls.append(enabled)

        self.factory.buildProtocol(None).makeConnection(_Transport())
        self.assertEqual(calls, [True])

    def test_rejections_logged_rate_limited(self):
        """Rejected connections are each counted but warned about at most once per 10 s."""
        events = []
        self.patch(server, "log", Logger(observer=events.append))
        self.factory.max_connections = 1
        self.proto.dataReceived(self.request("RPC_X", seqid=1))  # in use: not made room of
        for _ in range(3):
            _connect(self.factory)
        self.clock.advance(10)
        _connect(self.factory)
        self.assertEqual(self.factory.counters.rejected_connections, 4)
        self.assertEqual([e["log_level"].name for e in events], ["warn", "warn"])

    def test_request_name_counter_is_bounded(self):
        """Hostile rpc names cannot grow the counters without bound."""
        data = b"".join(self.request(f"RPC_{i}", seqid=i) for i in range(100))
        self.proto.dataReceived(data)
        counts = self.factory.counters.requests
        self.assertEqual(len(counts), 65)
        self.assertEqual(sum(counts.values()), 100)

    def test_drain_without_connections(self):
        """Draining with nothing open fires 0 at once."""
        self.transport.loseConnection()
        self.assertEqual(self.successResultOf(self.factory.drain(5)), 0)

    def test_drain_twice(self):
        """A second drain waits for the same outcome, each caller getting its own Deferred."""
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=1))
        first, second = self.factory.drain(5), self.factory.drain(5)
        self.assertIsNot(first, second)
        self.clock.advance(5)
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (1, 1))
        self.assertEqual(self.successResultOf(self.factory.drain(5)), 1)

    def test_drain_closes_a_connection_paused_by_max_pending_once_answered(self):
        """A connection not read because of max_pending closes during a drain as soon as it is answered."""
        self.factory.max_pending_per_connection = 1
        self.proto.dataReceived(self.request("RPC_SLOW", seqid=1))
        d = self.factory.drain(5)
        self.assertEqual(self.transport.producerState, "paused")
        self.deferring.calls[0][1].callback(frame.Reply(OK_BODY))
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual([r.seqid for r in _replies(self.transport)], [1])

    def test_idle_timeout_counts_answers_as_traffic(self):
        """The idle countdown restarts when a pending request is answered."""
        self.factory.idle_timeout = 5.0
        proto, transport = _connect(self.factory)
        proto.dataReceived(self.request("RPC_SLOW", seqid=1))
        self.clock.advance(4)
        self.deferring.calls[0][1].callback(frame.Reply(OK_BODY))
        self.clock.advance(4)
        self.assertTrue(transport.connected)
        self.clock.advance(1)
        self.assertFalse(transport.connected)


def _valid_frames():
    return st.lists(
        st.tuples(
            st.sampled_from([0, 1]),
            st.integers(0, 2**31 - 1),
            st.sampled_from([querycfg.QUERY_CFG, NEGOTIATION, "RPC_OTHER"]),
            st.text(min_size=0, max_size=12),
        ),
        min_size=1,
        max_size=5,
    )


class GoldenThroughProtocolTests(SynchronousTestCase):
    """The section 7 examples fed to a real protocol instance."""

    def setUp(self):
        self.factory = PegasusServerFactory(RpcDispatcher({querycfg.QUERY_CFG: _reply_body}), Clock())
        self.proto, self.transport = _connect(self.factory)

    def test_ex6_negotiation_exact_reply(self):
        """ex6: the Java 2.x negotiation request gets the 64-byte SASL_AUTH_DISABLE reply, exactly."""
        self.proto.dataReceived(samples.EX6_REQUEST)
        self.assertEqual(self.transport.value(), samples.EX6_REPLY)

    def test_ex1_ex2_answered(self):
        """ex1 (v0) and ex2 (v1) on one connection are both answered with seqid 1 and the query_cfg ACK."""
        self.proto.dataReceived(samples.EX1 + samples.EX2)
        replies = _replies(self.transport)
        self.assertEqual([(r.name, r.seqid) for r in replies], [(querycfg.QUERY_CFG_ACK, 1)] * 2)

    def test_ex4_unknown_rpc_exact_reply(self):
        """ex4: RPC_FOO with seqid 7 gets exactly the ex4 bytes."""
        self.proto.dataReceived(frame.encode_request("RPC_FOO", 7, b"\x00"))
        self.assertEqual(self.transport.value(), samples.EX4)


class PropertyTests(SynchronousTestCase):
    def setUp(self):
        self.factory = PegasusServerFactory(RpcDispatcher({querycfg.QUERY_CFG: _reply_body}), Clock())

    def run_stream(self, data, chunk):
        proto, transport = _connect(self.factory)
        for i in range(0, len(data), chunk):
            if not transport.connected:
                break
            proto.dataReceived(data[i : i + chunk])
        self.proto = proto
        return transport, frame.ResponseDecoder().feed(transport.value())

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=300), st.integers(1, 64))
    def test_arbitrary_bytes_never_escape(self, data, chunk):
        """Arbitrary bytes never raise; whatever is answered is well-formed."""
        transport, replies = self.run_stream(data, chunk)
        for r in replies:
            self.assertIn(r.rpc_error, codes.RPC_LEVEL_SAFE)

    @settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(_valid_frames(), st.integers(1, 97), st.data())
    def test_valid_then_mutated(self, frames, chunk, data):
        """
        Every valid frame before a corrupted byte is answered with its
        seqid; after the corruption the frame is answered or the connection
        is closed, and nothing raises.
        """
        encoded = [
            frame.encode_request(name, seqid, querycfg.encode_args(table), version=v)
            for v, seqid, name, table in frames
        ]
        stream = bytearray(b"".join(encoded))
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] ^= data.draw(st.integers(1, 255))
        transport, replies = self.run_stream(bytes(stream), chunk)
        intact, offset = [], 0
        for (v, seqid, name, table), enc in zip(frames, encoded):
            if offset + len(enc) > pos:
                break
            intact.append(seqid)
            offset += len(enc)
        answered = [r.seqid for r in replies]
        self.assertEqual(answered[: len(intact)], intact)
        for r in replies:
            self.assertIn(r.rpc_error, codes.RPC_LEVEL_SAFE)
        # After the corruption: closed, or every frame answered, or an
        # incomplete frame (a corrupted length) is waiting for more bytes.
        self.assertTrue(
            not transport.connected or len(replies) == len(frames) or self.proto._decoder.buffered() > 0
        )

    @settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.sampled_from([0, 1]), st.integers(0, 2**31 - 1)), min_size=1, max_size=8),
           st.randoms(use_true_random=False), st.integers(1, 50))
    def test_out_of_order_answers(self, frames, rng, chunk):
        """
        Pipelined requests answered in any order each get exactly one reply
        with their own seqid, whatever the chunking.
        """
        deferring = _Deferring()
        factory = PegasusServerFactory(RpcDispatcher({"RPC_SLOW": deferring}), Clock())
        proto, transport = _connect(factory)
        data = b"".join(frame.encode_request("RPC_SLOW", seqid, b"\x00", version=v) for v, seqid in frames)
        for i in range(0, len(data), chunk):
            proto.dataReceived(data[i : i + chunk])
        calls = list(deferring.calls)
        rng.shuffle(calls)
        for request, d in calls:
            d.callback(frame.Reply(OK_BODY))
        replies = frame.ResponseDecoder().feed(transport.value())
        self.assertEqual([r.seqid for r in replies], [request.seqid for request, _ in calls])
        self.assertEqual(sorted(r.seqid for r in replies), sorted(seqid for _, seqid in frames))
        self.assertEqual(proto.pending_count(), 0)
