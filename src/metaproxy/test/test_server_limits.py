# -*- test-case-name: metaproxy.test.test_server_limits -*-
"""
Tests for the bounds of L{metaproxy.frontend.server} and L{metaproxy.frontend.flow}: write
backpressure, the total buffer budget, stalled frames, idle connections
and the per-peer connection cap, over fake transports and a L{Clock}.
"""

from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject
from twisted.internet.interfaces import IPushProducer

from metaproxy.testing.transports import connect
from metaproxy.frontend import flow
from metaproxy.frontend import server
from metaproxy.frontend.dispatch import RpcDispatcher
from metaproxy.frontend.flow import BufferBudget, ReadGate, WriteBuffer
from metaproxy.frontend.server import CLOSE_GRACE, PegasusServerFactory
from metaproxy.wire import codes, frame, querycfg

OK_BODY = querycfg.error_result(codes.ERR_OK)
BIG_BODY = b"\x0c" + b"\x00" * 999  # a 1000-byte reply body


def _request(name=querycfg.QUERY_CFG, seqid=1):
    return frame.encode_request(name, seqid, querycfg.encode_args("temp"))


_connect = connect


def _seqids(transport):
    out = [r.seqid for r in frame.ResponseDecoder().feed(transport.value())]
    transport.clear()
    return out


class _Slow:
    """A handler whose answers the test fires."""

    def __init__(self):
        self.calls = []

    def __call__(self, request, connection):
        d = defer.Deferred(lambda d: None)
        self.calls.append(d)
        return d


class _Base:
    def setUp(self):
        self.clock = Clock()
        self.slow = _Slow()
        self.dispatcher = RpcDispatcher(
            {
                querycfg.QUERY_CFG: lambda request, connection: frame.Reply(OK_BODY),
                "RPC_BIG": lambda request, connection: frame.Reply(BIG_BODY),
                "RPC_SLOW": self.slow,
            }
        )
        self.events = []
        self.patch(server, "log", Logger(observer=self.events.append))

    def factory(self, **kw):
        kw.setdefault("max_frame_bytes", 4096)
        return PegasusServerFactory(self.dispatcher, self.clock, **kw)

    def warnings(self):
        return [formatEvent(e) for e in self.events if e["log_level"].name == "warn"]


class WriteBackpressureTests(_Base, SynchronousTestCase):
    """A client that does not read its replies stops being read."""

    def test_registered_as_streaming_producer(self):
        """Each accepted connection registers a push producer with its transport."""
        _, transport = _connect(self.factory())
        self.assertIsInstance(transport.producer, WriteBuffer)
        self.assertTrue(transport.streaming)
        verifyObject(IPushProducer, transport.producer)

    def test_unsent_replies_over_the_limit_stop_reading_until_drained(self):
        """
        While the transport is full, replies queue; past the per-connection
        limit the connection is not read. Once the transport drains, the
        queued replies go out in order and reading resumes.
        """
        factory = self.factory(max_buffered_bytes_per_connection=70000)
        proto, transport = _connect(factory)
        transport.producer.pauseProducing()  # the transport's own buffer is full
        self.assertEqual(transport.producerState, "producing")
        proto.dataReceived(b"".join(_request("RPC_BIG", seqid=i) for i in range(10)))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.producerState, "paused")
        self.assertGreater(proto.unsent_bytes(), 70000)
        self.assertEqual(factory.budget.out_bytes, proto.unsent_bytes())
        transport.producer.resumeProducing()
        self.assertEqual(_seqids(transport), list(range(10)))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual((proto.unsent_bytes(), factory.budget.out_bytes), (0, 0))

    def test_under_the_limit_keeps_reading(self):
        """Unsent replies under the limit queue without pausing the reading."""
        factory = self.factory(max_buffered_bytes_per_connection=1 << 20)
        proto, transport = _connect(factory)
        transport.producer.pauseProducing()
        proto.dataReceived(_request("RPC_BIG", seqid=1))
        self.assertEqual(transport.producerState, "producing")

    def test_pending_and_unsent_reasons_combine(self):
        """Reading resumes only when neither too many requests are unanswered nor too many bytes unsent."""
        factory = self.factory(max_buffered_bytes_per_connection=65536, max_pending_per_connection=1)
        proto, transport = _connect(factory)
        transport.producer.pauseProducing()
        proto.dataReceived(_request("RPC_BIG", seqid=1) + _request("RPC_SLOW", seqid=2))
        self.assertEqual(transport.producerState, "paused")
        transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "paused")  # still one request unanswered
        self.slow.calls[0].callback(frame.Reply(OK_BODY))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(_seqids(transport), [1, 2])

    def test_close_sends_queued_replies_first(self):
        """A connection closing with replies queued closes only once they are handed to the transport."""
        factory = self.factory()
        proto, transport = _connect(factory)
        transport.producer.pauseProducing()
        proto.dataReceived(_request(seqid=1) + b"XXXXXXXX")  # answered, then a broken frame
        self.assertTrue(transport.connected)
        transport.producer.resumeProducing()
        self.assertEqual(_seqids(transport), [1])
        self.assertFalse(transport.connected)

    def test_client_that_never_reads_is_aborted_after_grace(self):
        """A closing connection whose replies are never taken is aborted after CLOSE_GRACE."""
        factory = self.factory()
        proto, transport = _connect(factory)
        transport.producer.pauseProducing()
        proto.dataReceived(_request(seqid=1) + b"XXXXXXXX")
        self.clock.advance(CLOSE_GRACE)
        self.assertFalse(transport.connected)
        self.assertEqual(factory.budget.out_bytes, 0)

    def test_lost_connection_releases_its_bytes(self):
        """Whatever a connection held is no longer counted once it is gone."""
        factory = self.factory()
        proto, transport = _connect(factory)
        transport.producer.pauseProducing()
        proto.dataReceived(_request("RPC_BIG", seqid=1) + _request(seqid=2)[:30])
        self.assertGreater(factory.budget.out_bytes, 0)
        self.assertEqual(factory.budget.in_bytes, 30)
        transport.loseConnection()
        self.assertEqual((factory.budget.in_bytes, factory.budget.out_bytes), (0, 0))


class TotalBudgetTests(_Base, SynchronousTestCase):
    """All connections together hold at most about max_buffered_bytes_total."""

    def test_over_budget_starves_only_connections_holding_bytes(self):
        """
        Over the total, a connection holding bytes stops being read, one
        holding none still is; once the total falls under three quarters
        of the limit the starved connection is read again.
        """
        factory = self.factory(max_buffered_bytes_total=3000)
        hog, hog_t = _connect(factory, "10.0.0.1")
        other, other_t = _connect(factory, "10.0.0.2")
        clean, clean_t = _connect(factory, "10.0.0.3")
        big = frame.encode_request("RPC_X", 1, b"\x00" * 3000)
        hog.dataReceived(big[:2500])
        self.assertEqual(hog_t.producerState, "producing")
        other.dataReceived(big[:1000])
        self.assertEqual(factory.budget.in_bytes, 3500)
        self.assertEqual(other_t.producerState, "paused")
        clean.dataReceived(_request(seqid=7))
        self.assertEqual(clean_t.producerState, "producing")
        self.assertEqual(_seqids(clean_t), [7])
        hog.dataReceived(big[2500:2600])
        self.assertEqual(hog_t.producerState, "paused")
        hog_t.loseConnection()
        self.assertEqual(factory.budget.in_bytes, 1000)
        self.assertEqual(other_t.producerState, "producing")

    def test_unsent_replies_count_in_the_total(self):
        """Reply bytes waiting for a slow reader count in the total, and starve their connection."""
        factory = self.factory(max_buffered_bytes_total=50000, max_buffered_bytes_per_connection=1 << 20)
        proto, transport = _connect(factory)
        transport.producer.pauseProducing()  # counts what the transport holds: 64 KiB
        self.assertTrue(factory.budget.over())
        proto.dataReceived(_request("RPC_BIG", seqid=1))
        self.assertEqual(transport.producerState, "paused")
        transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_budget_accounting(self):
        """BufferBudget adds and releases bytes in both directions."""
        budget = BufferBudget(100)
        gate = ReadGate(StringTransport())
        budget.add_in(60)
        budget.add_out(50)
        self.assertTrue(budget.over())
        budget.starve(gate)
        self.assertEqual((budget.starved(), gate.paused(flow.TOTAL)), (1, True))
        budget.add_out(-20)  # 90: still above 75
        self.assertTrue(gate.paused())
        budget.add_in(-20)  # 70
        self.assertEqual((budget.starved(), gate.paused()), (0, False))


class FrameTimeoutTests(_Base, SynchronousTestCase):
    """An incomplete request frame may not be held for ever; idle connections may."""

    def test_300_stalled_partial_frames_are_closed(self):
        """
        300 connections each holding part of a frame are all closed after
        frame_timeout, counted, logged once (rate-limited), and what they
        held is released.
        """
        factory = self.factory(frame_timeout=10.0, max_frame_bytes=1 << 20)
        partial = frame.encode_request("RPC_X", 1, b"\x00" * 5000)[:4000]
        conns = [_connect(factory, f"10.0.{i // 250}.{i % 250}") for i in range(300)]
        for proto, _ in conns:
            proto.dataReceived(partial)
        self.assertEqual(factory.budget.in_bytes, 300 * 4000)
        self.clock.advance(9.9)
        self.assertTrue(all(t.connected for _, t in conns))
        self.clock.advance(0.1)
        self.assertEqual([t.connected for _, t in conns], [False] * 300)
        self.assertEqual(factory.counters.frame_timeouts, 300)
        self.assertEqual((factory.connection_count, factory.budget.in_bytes), (0, 0))
        [warning] = self.warnings()
        self.assertIn("a request frame stayed incomplete for 10.0 s (4000 bytes held", warning)

    def test_a_lone_magic_is_a_stalled_frame(self):
        """A connection that sent only C{THFT} is closed by the frame timeout."""
        factory = self.factory(frame_timeout=5.0)
        proto, transport = _connect(factory)
        proto.dataReceived(b"THFT")
        self.clock.advance(5)
        self.assertFalse(transport.connected)

    def test_trickling_does_not_extend_the_timeout(self):
        """One byte a second does not restart the countdown of a frame that never completes."""
        factory = self.factory(frame_timeout=10.0)
        proto, transport = _connect(factory)
        data = _request(seqid=1)
        for i in range(10):
            self.assertTrue(transport.connected)
            proto.dataReceived(data[i : i + 1])
            self.clock.advance(1)
        self.assertFalse(transport.connected)
        self.assertEqual(factory.counters.frame_timeouts, 1)

    def test_completed_frames_restart_the_countdown(self):
        """A client whose chunks always end mid-frame, but complete frames, is never timed out."""
        factory = self.factory(frame_timeout=10.0)
        proto, transport = _connect(factory)
        stream = b"".join(_request(seqid=i) for i in range(40))
        step = len(_request()) + 7
        for i in range(0, len(stream), step):
            proto.dataReceived(stream[i : i + step])
            self.clock.advance(6)
        self.assertTrue(transport.connected)
        self.assertEqual(len(_seqids(transport)), 40)

    def test_idle_connections_are_never_closed(self):
        """Connections with nothing pending (never used, or all answered) stay open indefinitely."""
        factory = self.factory(frame_timeout=10.0)
        never = [_connect(factory, f"10.1.0.{i}") for i in range(100)]
        used, used_t = _connect(factory)
        used.dataReceived(_request(seqid=1))
        self.clock.advance(7 * 24 * 3600)
        self.assertTrue(all(t.connected for _, t in never))
        self.assertTrue(used_t.connected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waiting_for_our_answers_is_not_a_stall(self):
        """
        A partial frame held back because the connection is paused by its
        own unanswered requests is not timed out; once they are answered
        the countdown applies again.
        """
        factory = self.factory(frame_timeout=10.0, max_pending_per_connection=1)
        proto, transport = _connect(factory)
        proto.dataReceived(_request("RPC_SLOW", seqid=1) + _request(seqid=2)[:20])
        self.clock.advance(25)
        self.assertTrue(transport.connected)
        self.slow.calls[0].callback(frame.Reply(OK_BODY))
        self.clock.advance(10)
        self.assertFalse(transport.connected)
        self.assertEqual(_seqids(transport), [1])

    def test_disabled(self):
        """frame_timeout 0 never closes a connection for an incomplete frame."""
        factory = self.factory(frame_timeout=0)
        proto, transport = _connect(factory)
        proto.dataReceived(b"THFT")
        self.clock.advance(3600)
        self.assertTrue(transport.connected)


class PerPeerTests(_Base, SynchronousTestCase):
    """One source address cannot take every connection."""

    def test_cap_refuses_only_the_excess(self):
        """
        With a cap of 3, the 4th and 5th connection from one address are
        refused, other addresses are unaffected, and a closed connection
        frees its place.
        """
        factory = self.factory(max_connections_per_peer=3)
        same = [_connect(factory, "10.0.0.1", 40000 + i) for i in range(5)]
        self.assertEqual([t.connected for _, t in same], [True, True, True, False, False])
        _, elsewhere = _connect(factory, "10.0.0.2")
        self.assertTrue(elsewhere.connected)
        self.assertEqual(factory.counters.refused, {"limit": 0, "per_peer": 2, "draining": 0})
        self.assertEqual(factory.counters.rejected_connections, 2)
        same[0][1].loseConnection()
        _, again = _connect(factory, "10.0.0.1")
        self.assertTrue(again.connected)
        self.assertEqual(factory.connection_count, 4)

    def test_refusals_logged_rate_limited_with_a_count(self):
        """Refusals warn at most once per 10 s; the next warning says how many were not logged."""
        factory = self.factory(max_connections_per_peer=1)
        for _ in range(6):
            _connect(factory, "10.0.0.1")
        self.clock.advance(10)
        _connect(factory, "10.0.0.1")
        first, second = self.warnings()
        self.assertIn("refusing a connection from 10.0.0.1:40000: 1 open from that address", first)
        self.assertIn("limits.max_connections_per_peer 1 (0 more refused", first)
        self.assertIn("(4 more refused since the last warning)", second)
        self.assertEqual(factory.counters.refused["per_peer"], 6)

    def test_total_limit_counted_apart(self):
        """A refusal by max_connections (every connection in use) is counted under its own reason."""
        factory = self.factory(max_connections=1, max_connections_per_peer=5)
        proto, _ = _connect(factory)
        proto.dataReceived(_request(seqid=1))
        _connect(factory)
        self.assertEqual(factory.counters.refused["limit"], 1)
        self.assertEqual(factory.counters.evicted, 0)

    def test_cap_makes_room_by_closing_the_oldest_silent(self):
        """
        At max_connections a new client is not refused: the oldest
        connection that never sent a complete request is closed instead;
        connections that did send one are kept.
        """
        factory = self.factory(max_connections=4, max_connections_per_peer=0)
        used, _ = _connect(factory, "10.0.0.1", 40000)
        used.dataReceived(_request(seqid=1))
        silent = [_connect(factory, "10.0.0.%d" % (2 + i), 40000) for i in range(3)]
        silent[1][0].dataReceived(b"THFT")  # half a frame: still never a complete request
        newcomers = [_connect(factory, "10.0.1.%d" % i, 40000) for i in range(3)]
        self.assertEqual([t.connected for _, t in newcomers], [True] * 3)
        self.assertEqual([t.connected for _, t in silent], [False] * 3)
        self.assertEqual(factory.counters.evicted, 3)
        self.assertEqual(factory.counters.refused["limit"], 0)
        self.assertIn("never sent a request, to make room", self.warnings()[0])
        for proto, _ in newcomers:
            proto.dataReceived(_request(seqid=2))
        _, refused = _connect(factory, "10.0.2.1", 40000)
        self.assertFalse(refused.connected)  # every connection is in use: refused as before
        self.assertEqual(factory.counters.refused["limit"], 1)
        self.assertEqual(factory.connection_count, 4)

    def test_address_without_host_is_not_capped(self):
        """A transport without an IP peer (a UNIX socket) is not counted per peer."""
        factory = self.factory(max_connections_per_peer=1)
        for _ in range(3):
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport(peerAddress=UNIXAddress(b"/run/metaproxy.sock")))
        self.assertEqual(factory.connection_count, 3)


class _FillingTransport(StringTransport):
    """
    A transport that, like Twisted's TCP transport, asks its streaming
    producer to pause once more than C{bufferSize} bytes are unsent, and
    resumes it when L{drain} empties its buffer.
    """

    bufferSize = 1000

    def __init__(self):
        super().__init__()
        self.sent = b""
        self.dataBuffer, self.offset, self._tempDataLen = b"", 0, 0

    def write(self, data):
        super().write(data)
        self._tempDataLen += len(data)
        if self._tempDataLen > self.bufferSize and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self):
        self.sent += self.value()
        self.clear()
        self._tempDataLen = 0
        if self.producer is not None:
            self.producer.resumeProducing()


class WriteBufferTests(SynchronousTestCase):
    """L{WriteBuffer} against a transport that fills up and drains."""

    def setUp(self):
        self.transport = _FillingTransport()
        self.gate = ReadGate(self.transport)
        self.budget = BufferBudget(0)
        self.out = WriteBuffer(self.transport, self.gate, self.budget, limit=3000)

    def test_order_and_accounting_through_many_fills(self):
        """
        Replies written while the transport fills and drains repeatedly come
        out complete and in order; reading stops past the limit and resumes;
        nothing stays counted once everything is sent.
        """
        pieces = [bytes([i]) * 300 for i in range(60)]
        paused_seen = False
        for i, piece in enumerate(pieces):
            self.out.write(piece)
            self.assertEqual(self.budget.out_bytes, self.out.unsent())
            paused_seen = paused_seen or self.gate.paused(flow.OUT)
            if i % 25 == 24:
                self.transport.drain()
        self.assertTrue(paused_seen)
        for _ in range(100):
            if not self.out.unsent():
                break
            self.transport.drain()
        self.transport.drain()
        self.assertEqual(self.transport.sent, b"".join(pieces))
        self.assertEqual((self.out.unsent(), self.budget.out_bytes), (0, 0))
        self.assertFalse(self.gate.paused())

    def test_counts_what_the_transport_holds_while_full(self):
        """While the transport is full, what it holds counts as unsent (read from its buffers)."""
        self.out.write(b"x" * 1200)
        self.assertEqual(self.out.unsent(), 1200)
        self.out.write(b"y" * 100)
        self.assertEqual((self.out.unsent(), self.budget.out_bytes), (1300, 1300))
        self.transport.drain()
        self.assertEqual((self.out.unsent(), self.budget.out_bytes), (0, 0))

    def test_when_flushed_waits_for_the_queue(self):
        """when_flushed runs once the queue is handed over, after unregistering the producer."""
        self.out.write(b"x" * 1200)
        self.out.write(b"y" * 10)
        done = []
        self.out.when_flushed(lambda: done.append(self.transport.producer))
        self.assertEqual(done, [])
        self.transport.drain()
        self.assertEqual(done, [None])

    def test_release_forgets_everything(self):
        """After release nothing is counted and later writes are dropped."""
        self.out.write(b"x" * 1200)
        self.out.write(b"y" * 10)
        self.out.release()
        self.out.write(b"z")
        self.assertEqual((self.out.unsent(), self.budget.out_bytes), (0, 0))


class TurnTests(_Base, SynchronousTestCase):
    """One connection's pipelined requests never starve the others (requests_per_turn)."""

    def test_a_turn_dispatches_at_most_requests_per_turn(self):
        """
        Ten requests in one read, four per turn: four now and the connection
        is not read; the rest on later reactor turns (a Clock runs the turns
        it schedules within one advance), in order.
        """
        factory = self.factory(requests_per_turn=4)
        proto, transport = _connect(factory)
        proto.dataReceived(b"".join(_request(seqid=i) for i in range(10)))
        self.assertEqual(_seqids(transport), [0, 1, 2, 3])
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(0)
        self.assertEqual(_seqids(transport), [4, 5, 6, 7, 8, 9])
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(factory.budget.in_bytes, 0)

    def test_others_go_first(self):
        """While one connection waits for its next turn, another connection's request is answered at once."""
        factory = self.factory(requests_per_turn=2)
        flood, flood_transport = _connect(factory, port=40001)
        other, other_transport = _connect(factory, port=40002)
        flood.dataReceived(b"".join(_request(seqid=i) for i in range(100)))
        other.dataReceived(_request(seqid=7))
        self.assertEqual(_seqids(other_transport), [7])
        self.assertEqual(len(_seqids(flood_transport)), 2)

    def test_no_limit(self):
        """requests_per_turn 0 dispatches everything read at once."""
        proto, transport = _connect(self.factory(requests_per_turn=0))
        proto.dataReceived(b"".join(_request(seqid=i) for i in range(50)))
        self.assertEqual(_seqids(transport), list(range(50)))

    def test_closed_while_waiting(self):
        """A connection lost while waiting for its turn cancels that turn."""
        proto, transport = _connect(self.factory(requests_per_turn=1))
        proto.dataReceived(_request(seqid=1) + _request(seqid=2))
        transport.loseConnection()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(_seqids(transport), [1])

    def test_held_for_handover_keeps_the_rest(self):
        """A connection held for a hot upgrade dispatches nothing more: its undecoded requests go with it."""
        proto, transport = _connect(self.factory(requests_per_turn=1))
        rest = _request(seqid=2) + _request(seqid=3)
        proto.dataReceived(_request(seqid=1) + rest)
        self.assertTrue(proto.hold_for_handover())
        self.clock.advance(0)
        self.assertEqual(_seqids(transport), [1])
        self.assertEqual(proto.handover_state(), (rest, "THFT"))
