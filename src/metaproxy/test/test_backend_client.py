# -*- test-case-name: metaproxy.test.test_backend_client -*-
"""
Tests for L{metaproxy.backend.client} and L{metaproxy.backend.connection}.
"""

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted.logger import Logger, formatEvent

from metaproxy.backend import client as clientmod
from metaproxy.backend import connection as connmod
from metaproxy.backend.client import (
    CallTimedOut,
    ConnectionClosed,
    MetaClientProtocol,
    DEFAULT_MAX_REPLY_BYTES,
    NotConnected,
    ReplyTooLarge,
    WrongReply,
    next_seqid,
)
from metaproxy.backend.connection import CONNECTING, MetaConnection
from metaproxy.wire import frame, querycfg
from metaproxy.wire.clusterinfo import LOOP_MARKER
from metaproxy.wire.frame import RequestDecoder, encode_reply

ARGS = querycfg.encode_args("temp")
QCFG = querycfg.QUERY_CFG


def connected_protocol(clock=None):
    """@return: C{(protocol, transport)}, connected to a L{StringTransport}."""
    proto = MetaClientProtocol(clock or Clock())
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def sent_requests(transport):
    """@return: the L{frame.Request}s written to C{transport} so far."""
    return RequestDecoder().feed(transport.value())


def reply_to(request, body=b"\x0c\x00\x00\x00", rpc_error="ERR_OK"):
    """@return: a reply frame answering C{request}."""
    return encode_reply(frame.ack_name(request.name), request.seqid, body, rpc_error)


class SeqidTests(SynchronousTestCase):
    """L{next_seqid} stays inside a signed 32-bit field."""

    def test_counts_up(self):
        """The seqid after C{n} is C{n + 1}."""
        self.assertEqual(next_seqid(0), 1)
        self.assertEqual(next_seqid(-5), -4)

    def test_wraps_at_i32_max(self):
        """After the largest i32 comes the smallest one."""
        self.assertEqual(next_seqid(0x7FFFFFFF), -0x80000000)


class MetaClientProtocolTests(SynchronousTestCase):
    """L{MetaClientProtocol} pipelines calls and matches replies by seqid."""

    def test_request_is_a_thft_v0_frame(self):
        """A call writes one THFT v0 request carrying the name, args and header timeout."""
        proto, transport = connected_protocol()
        proto.call(QCFG, ARGS, client_timeout_ms=1500)
        [request] = sent_requests(transport)
        self.assertEqual(request.name, QCFG)
        self.assertEqual(request.args, ARGS)
        self.assertEqual(request.header.version, 0)
        self.assertEqual(request.header.client_timeout, 1500)

    def test_seqids_are_distinct(self):
        """Pipelined calls get distinct seqids."""
        proto, transport = connected_protocol()
        for _ in range(3):
            proto.call(QCFG, ARGS)
        seqids = [r.seqid for r in sent_requests(transport)]
        self.assertEqual(len(set(seqids)), 3)
        self.assertEqual(proto.pending_count(), 3)

    def test_out_of_order_replies(self):
        """Replies arriving in another order fire the calls they answer."""
        proto, transport = connected_protocol()
        d1 = proto.call(QCFG, ARGS)
        d2 = proto.call(QCFG, ARGS)
        r1, r2 = sent_requests(transport)
        proto.dataReceived(reply_to(r2, b"\x0c\x00\x00\x02") + reply_to(r1, b"\x0c\x00\x00\x01"))
        self.assertEqual(self.successResultOf(d1).body, b"\x0c\x00\x00\x01")
        second = self.successResultOf(d2)
        self.assertEqual((second.body, second.seqid), (b"\x0c\x00\x00\x02", r2.seqid))

    def test_reply_split_across_reads(self):
        """A reply delivered one byte at a time is still decoded."""
        proto, transport = connected_protocol()
        d = proto.call(QCFG, ARGS)
        [r] = sent_requests(transport)
        data = reply_to(r)
        for i in range(len(data)):
            self.assertNoResult(d)
            proto.dataReceived(data[i : i + 1])
        self.assertEqual(self.successResultOf(d).rpc_error, "ERR_OK")

    def test_rpc_error_is_delivered(self):
        """An rpc-level error reply is a result, not a failure: the caller judges it."""
        proto, transport = connected_protocol()
        d = proto.call(QCFG, ARGS)
        [r] = sent_requests(transport)
        proto.dataReceived(reply_to(r, None, "ERR_HANDLER_NOT_FOUND"))
        self.assertEqual(self.successResultOf(d).rpc_error, "ERR_HANDLER_NOT_FOUND")

    def test_reply_for_another_rpc_is_not_the_answer(self):
        """
        A reply with the call's seqid but another rpc's name
        (RPC_CM_LIST_APPS_ACK for a query_cfg) fails the call with
        WrongReply instead of being taken as its answer; the connection
        goes on serving the other calls.
        """
        proto, transport = connected_protocol()
        d1, d2 = proto.call(QCFG, ARGS), proto.call(QCFG, ARGS)
        r1, r2 = sent_requests(transport)
        proto.dataReceived(encode_reply("RPC_CM_LIST_APPS_ACK", r1.seqid, b"\x0c\x00\x00\x00", "ERR_OK"))
        f = self.failureResultOf(d1, WrongReply)
        self.assertIn("'RPC_CM_LIST_APPS_ACK', expected RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX_ACK", str(f.value))
        proto.dataReceived(reply_to(r2))
        self.assertEqual(self.successResultOf(d2).rpc_error, "ERR_OK")
        self.assertTrue(proto.is_open())

    def test_deadline(self):
        """A call not answered within its timeout fails with L{CallTimedOut}; a late reply is dropped."""
        clock = Clock()
        proto, transport = connected_protocol(clock)
        d = proto.call(QCFG, ARGS, timeout=2.0)
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, CallTimedOut)
        [r] = sent_requests(transport)
        proto.dataReceived(reply_to(r))
        self.assertEqual(proto.stray_replies, 1)
        self.assertEqual(proto.pending_count(), 0)

    def test_answer_cancels_deadline(self):
        """An answered call leaves no timer behind."""
        clock = Clock()
        proto, transport = connected_protocol(clock)
        proto.call(QCFG, ARGS, timeout=2.0)
        [r] = sent_requests(transport)
        proto.dataReceived(reply_to(r))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_forgets_call(self):
        """Cancelling a call removes it and its timer; its reply is then a stray."""
        clock = Clock()
        proto, transport = connected_protocol(clock)
        d = proto.call(QCFG, ARGS, timeout=2.0)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(proto.pending_count(), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        [r] = sent_requests(transport)
        proto.dataReceived(reply_to(r))
        self.assertEqual(proto.stray_replies, 1)

    def test_connection_lost_fails_pending(self):
        """Losing the connection fails every pending call with L{ConnectionClosed}."""
        lost = []
        proto = MetaClientProtocol(Clock(), on_lost=lost.append)
        proto.makeConnection(StringTransport())
        d1 = proto.call(QCFG, ARGS, timeout=5)
        d2 = proto.call(QCFG, ARGS)
        proto.connectionLost(Failure(ConnectionRefusedError()))
        self.failureResultOf(d1, ConnectionClosed)
        self.failureResultOf(d2, ConnectionClosed)
        self.assertEqual(lost, [proto])
        self.failureResultOf(proto.call(QCFG, ARGS), NotConnected)

    def test_framing_error_drops_connection(self):
        """A reply that cannot be framed aborts the connection and fails what is pending."""
        proto, transport = connected_protocol()
        d = proto.call(QCFG, ARGS)
        proto.dataReceived(b"\x00\x00\x00\x01garbage")
        self.assertTrue(transport.disconnecting)
        self.assertFalse(proto.is_open())
        proto.connectionLost(Failure(ConnectionClosed("aborted")))
        self.failureResultOf(d, ConnectionClosed)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_oversized_reply_fails_fast(self):
        """
        A reply declaring more than max_frame_bytes fails its call with
        ReplyTooLarge as soon as its first bytes arrive, with a warning
        naming the meta; the rest is skipped unheld, and another call on
        the same connection is still answered.
        """
        events = []
        self.patch(clientmod, "log", Logger(observer=events.append))
        proto = MetaClientProtocol(Clock(), max_frame_bytes=4096)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 34601))
        proto.makeConnection(transport)
        big_call = proto.call(QCFG, ARGS, timeout=5)
        small_call = proto.call(QCFG, ARGS, timeout=5)
        first, second = sent_requests(transport)
        big = reply_to(first, body=b"\x00" * 100000)
        proto.dataReceived(big[:300])
        failure = self.failureResultOf(big_call, ReplyTooLarge)
        self.assertIn("meta 10.1.2.3:34601 sent", str(failure.value))
        self.assertIn(f"reply of {len(big)} bytes", str(failure.value))
        self.assertEqual(proto._decoder.buffered(), 0)
        [event] = events
        self.assertEqual(event["log_level"].name, "warn")
        self.assertIn("10.1.2.3", formatEvent(event))
        for i in range(300, len(big), 8192):
            proto.dataReceived(big[i : i + 8192])
            self.assertEqual(proto._decoder.buffered(), 0)
        proto.dataReceived(reply_to(second))
        self.assertEqual(self.successResultOf(small_call).seqid, second.seqid)
        self.assertTrue(proto.is_open())
        self.assertFalse(transport.disconnecting)

    def test_default_reply_cap_fits_the_largest_table(self):
        """The default cap admits a 65 536-partition, 3-replica answer with hp_* fields (10.4 MB)."""
        self.assertEqual(MetaClientProtocol(Clock()).max_frame_bytes, DEFAULT_MAX_REPLY_BYTES)
        self.assertEqual(MetaConnection(Clock(), "127.0.0.1", 1).max_frame_bytes, DEFAULT_MAX_REPLY_BYTES)
        self.assertGreater(DEFAULT_MAX_REPLY_BYTES, 10354800)
        self.assertLessEqual(DEFAULT_MAX_REPLY_BYTES, 16 << 20)

    def test_no_delay(self):
        """The connection disables Nagle's algorithm, as a meta server does."""
        proto = MetaClientProtocol(Clock())
        transport = _NoDelayTransport()
        proto.makeConnection(transport)
        self.assertEqual(transport.no_delay, [True])

    def test_not_connected_before_connection(self):
        """A protocol that never connected refuses calls at once."""
        proto = MetaClientProtocol(Clock())
        self.failureResultOf(proto.call(QCFG, ARGS), NotConnected)


class CallThenTests(SynchronousTestCase):
    """L{MetaClientProtocol.call_then}: the same calls with a plain callback and no timer."""

    def setUp(self):
        self.results = []

    def done(self, arg, response, error):
        self.results.append((arg, response, error))

    def test_answer_calls_back_once(self):
        """The reply goes to the callback with its argument; no timer is armed."""
        clock = Clock()
        proto, transport = connected_protocol(clock)
        proto.call_then(QCFG, ARGS, 1500, self.done, "x")
        self.assertEqual(clock.getDelayedCalls(), [])
        [r] = sent_requests(transport)
        self.assertEqual(r.header.client_timeout, 1500)
        proto.dataReceived(reply_to(r) + reply_to(r))
        [(arg, response, error)] = self.results
        self.assertEqual((arg, response.seqid, error), ("x", r.seqid, None))
        self.assertEqual(proto.stray_replies, 1)

    def test_loop_marker_sent(self):
        """
        call_then sends the protocol's partition_hash (metaproxy's loop
        marker, which a metaproxy refuses) exactly as call does.
        """
        proto, transport = connected_protocol()
        proto.partition_hash = LOOP_MARKER
        proto.call(QCFG, ARGS)
        proto.call_then(QCFG, ARGS, 0, self.done, "x")
        self.assertEqual([r.header.partition_hash for r in sent_requests(transport)], [LOOP_MARKER, LOOP_MARKER])

    def test_cancel_drops_the_reply(self):
        """A cancelled call is forgotten: its reply is a stray and the callback is not called."""
        proto, transport = connected_protocol()
        handle = proto.call_then(QCFG, ARGS, 0, self.done, "x")
        handle.cancel()
        self.assertEqual(proto.pending_count(), 0)
        [r] = sent_requests(transport)
        proto.dataReceived(reply_to(r))
        self.assertEqual((self.results, proto.stray_replies), ([], 1))

    def test_connection_lost_and_not_connected(self):
        """Losing the link reports L{ConnectionClosed}; a closed link L{NotConnected}, at once."""
        proto = MetaClientProtocol(Clock())
        proto.makeConnection(StringTransport())
        proto.call_then(QCFG, ARGS, 0, self.done, 1)
        proto.connectionLost(Failure(ConnectionRefusedError()))
        proto.call_then(QCFG, ARGS, 0, self.done, 2)
        self.assertEqual([(a, r) for a, r, _ in self.results], [(1, None), (2, None)])
        self.assertIsInstance(self.results[0][2], ConnectionClosed)
        self.assertIsInstance(self.results[1][2], NotConnected)

    def test_connection_waits_while_connecting(self):
        """Through a L{MetaConnection} still connecting, the call is sent once connected."""
        reactor = MemoryReactorClock()
        conn = MetaConnection(reactor, "127.0.0.1", 34601, retry_policy=lambda attempt: 1.0)
        conn.start()
        conn.call_then(QCFG, ARGS, 0, self.done, "w")
        host, port, factory, timeout, _ = reactor.tcpClients[-1]
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_Addr("127.0.0.1", port))
        proto.makeConnection(transport)
        [r] = sent_requests(transport)
        self.assertEqual(self.results, [])
        proto.dataReceived(reply_to(r))
        self.assertEqual([(a, resp.seqid, e) for a, resp, e in self.results], [("w", r.seqid, None)])
        conn.call_then(QCFG, ARGS, 0, self.done, "open")  # the open link: straight to the protocol
        [_, r2] = sent_requests(transport)
        proto.dataReceived(reply_to(r2))
        self.assertEqual(self.results[-1][0], "open")


class MetaConnectionTests(SynchronousTestCase):
    """L{MetaConnection} keeps one reconnecting link and fails fast while it is down."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.conn = MetaConnection(
            self.reactor, "127.0.0.1", 34601, retry_policy=lambda attempt: 1.0
        )

    def _connect(self):
        """Complete the pending connection attempt; @return: (protocol, transport)."""
        host, port, factory, timeout, _ = self.reactor.tcpClients[-1]
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_Addr("127.0.0.1", port))
        proto.makeConnection(transport)
        return proto, transport

    def test_connects_to_address_with_timeout(self):
        """Starting dials the configured address with the connect timeout."""
        self.conn.start()
        host, port, _, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 34601, 3.0))
        self.assertEqual(self.conn.state, connmod.CONNECTING)

    def test_call_waits_while_connecting(self):
        """A call made during a connection attempt is sent once it succeeds."""
        self.conn.start()
        d = self.conn.call(QCFG, ARGS)
        self.assertNoResult(d)
        proto, transport = self._connect()
        self.assertTrue(self.conn.is_connected())
        [r] = sent_requests(transport)
        proto.dataReceived(reply_to(r))
        self.assertEqual(self.successResultOf(d).seqid, r.seqid)

    def test_fails_fast_when_down(self):
        """After a failed attempt, calls fail at once until the next attempt starts."""
        self.conn.start()
        waiting = self.conn.call(QCFG, ARGS)
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(waiting, NotConnected)
        self.assertEqual(self.conn.state, connmod.DOWN)
        self.failureResultOf(self.conn.call(QCFG, ARGS), NotConnected)
        self.reactor.advance(1.0)  # the retry policy's delay
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.conn.state, connmod.CONNECTING)

    def test_reconnects_after_loss(self):
        """A lost connection is re-dialled after the backoff delay."""
        self.conn.start()
        proto, transport = self._connect()
        proto.connectionLost(Failure(ConnectionClosed("gone")))
        self.assertEqual(self.conn.state, connmod.DOWN)
        self.assertIsNone(self.conn.peer())
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_peer_matching(self):
        """C{matches} knows the meta by its configured address and by its peer address."""
        conn = MetaConnection(self.reactor, "meta1.example", 34601, endpoint=_MemoryEndpoint(self))
        conn.start()
        self.assertFalse(conn.matches("10.1.1.1", 34601))
        self.assertTrue(conn.matches("meta1.example", 34601))
        proto = self.endpoint_factory.buildProtocol(None)
        proto.makeConnection(StringTransport(peerAddress=_Addr("10.1.1.1", 34601)))
        self.endpoint_deferred.callback(proto)
        self.assertEqual(conn.peer(), ("10.1.1.1", 34601))
        self.assertTrue(conn.matches("10.1.1.1", 34601))
        self.assertFalse(conn.matches("10.1.1.1", 34602))

    def test_stop_closes_and_fails_waiters(self):
        """Stopping fails waiting calls and closes the connection; later calls fail fast."""
        self.conn.start()
        waiting = self.conn.call(QCFG, ARGS)
        d = self.conn.stop()
        self.failureResultOf(waiting, NotConnected)
        self.successResultOf(d)
        self.failureResultOf(self.conn.call(QCFG, ARGS), NotConnected)
        self.assertEqual(self.conn.state, connmod.STOPPED)

    def test_stop_disconnects(self):
        """Stopping a connected link closes its transport."""
        self.conn.start()
        proto, transport = self._connect()
        d = self.conn.stop()
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionClosed("closed")))
        self.successResultOf(d)

    def test_cancel_waiting_call(self):
        """Cancelling a call that waits for the connection forgets it."""
        self.conn.start()
        d = self.conn.call(QCFG, ARGS)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        proto, transport = self._connect()
        self.assertEqual(transport.value(), b"")

    def test_host_name_uses_hostname_endpoint(self):
        """A host name is resolved at every attempt; an IP literal is dialled directly."""
        from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint

        self.assertIsInstance(
            connmod.default_endpoint(self.reactor, "meta1.example", 1, 3.0), HostnameEndpoint
        )
        self.assertIsInstance(
            connmod.default_endpoint(self.reactor, "10.0.0.1", 1, 3.0), TCP4ClientEndpoint
        )

    def test_default_policy_has_jitter_and_cap(self):
        """The default backoff starts small, grows, is jittered and never exceeds about 1 s."""
        policy = connmod.default_retry_policy()
        firsts = {policy(1) for _ in range(50)}
        self.assertTrue(all(0.025 <= f <= 0.05 for f in firsts))
        self.assertGreater(len(firsts), 1)  # jitter
        lates = [policy(n) for n in (10, 50, 10_000) for _ in range(20)]
        self.assertTrue(all(0.5 <= d <= 1.0 for d in lates), lates)

    def _refuse(self):
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def test_call_while_down_starts_attempt(self):
        """A call while the link is down starts an attempt at once and waits for it."""
        self.conn.start()
        self._refuse()
        self.reactor.advance(0.3)  # past probe_interval, before the retry (1 s)
        d = self.conn.call(QCFG, ARGS)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.conn.state, connmod.CONNECTING)
        self.assertNoResult(d)
        proto, transport = self._connect()
        [r] = sent_requests(transport)
        proto.dataReceived(reply_to(r))
        self.successResultOf(d)

    def test_on_demand_attempts_are_rate_limited(self):
        """Calls right after a failed attempt fail fast instead of dialling again."""
        self.conn.start()
        self._refuse()
        for _ in range(10):
            self.failureResultOf(self.conn.call(QCFG, ARGS), NotConnected)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_down_meta_probed_every_second(self):
        """With the default policy a down meta is re-dialled at least once a second."""
        conn = MetaConnection(self.reactor, "127.0.0.1", 34602)
        conn.start()
        for _ in range(40):
            self._refuse()
            before = len(self.reactor.tcpClients)
            self.reactor.advance(1.0)
            self.assertEqual(len(self.reactor.tcpClients), before + 1)

    def test_dead_meta_logs_a_few_lines(self):
        """
        A meta that stays dead for 60 s gives a handful of metaproxy lines
        (down once, a reminder), none of them with object reprs.
        """
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        conn = MetaConnection(self.reactor, "127.0.0.1", 34602)
        conn.start()
        attempts = 0
        while self.reactor.seconds() < 61.0:
            if self.reactor.tcpClients:
                self._refuse()
                self.reactor.tcpClients.clear()
                attempts += 1
            self.reactor.advance(0.05)
        from twisted.logger import formatEvent

        lines = [formatEvent(e) for e in events if e.get("log_level") is not None]
        self.assertGreater(attempts, 60)
        self.assertLessEqual(len(lines), 3, lines)
        self.assertIn("127.0.0.1:34602 is down", lines[0])
        self.assertTrue(all(len(line) < 200 and " object at 0x" not in line for line in lines), lines)
        self._up_again(conn)
        lines = [formatEvent(e) for e in events if e.get("log_level") is not None]
        self.assertIn("is up again", lines[-1])

    def _up_again(self, conn):
        """Let the next attempt (probe or retry) start, and let it succeed."""
        if conn.state != CONNECTING:  # an attempt already under way is the last one listed: keep it
            self.reactor.tcpClients.clear()
        for _ in range(40):
            if self.reactor.tcpClients:
                break
            self.reactor.advance(0.05)
        self._connect_last()
        self.assertTrue(conn.is_connected())

    def _connect_last(self):
        _, port, factory, _, _ = self.reactor.tcpClients[-1]
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport(peerAddress=_Addr("127.0.0.1", port)))
        return proto

    def test_state_for_status(self):
        """The link reports why it is down and since when, and when it came up."""
        self.conn.start()
        self._refuse()
        self.assertEqual(self.conn.state, connmod.DOWN)
        self.assertIn("refused", self.conn.last_error)
        self.assertEqual(self.conn.down_since, 0.0)
        self.reactor.advance(1.0)
        self._connect()
        self.assertEqual((self.conn.last_error, self.conn.down_since, self.conn.connected_since), ("", None, 1.0))


class _NoDelayTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.no_delay = []

    def setTcpNoDelay(self, enabled):
        self.no_delay.append(enabled)


class _Addr:
    def __init__(self, host, port):
        self.host, self.port = host, port


class _MemoryEndpoint:
    """An endpoint whose single attempt the test completes by hand."""

    def __init__(self, test):
        self.test = test

    def connect(self, factory):
        self.test.endpoint_factory = factory
        self.test.endpoint_deferred = defer.Deferred()
        return self.test.endpoint_deferred
