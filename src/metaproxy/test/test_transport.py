"""
Tests for L{metaproxy.transport}: writing at once keeps the promise of
C{transport.write} (every byte, in order) on real loopback TCP and on other
transports.
"""

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metaproxy.transport import send_now


class _Collect(Protocol):
    def __init__(self, expect):
        self.expect = expect
        self.data = []
        self.size = 0
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data.append(data)
        self.size += len(data)
        if self.size >= self.expect and not self.done.called:
            self.done.callback(b"".join(self.data))


class _Sender(Protocol):
    pass


class SendNowTCPTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def _pair(self, expect):
        receiver = _Collect(expect)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(lambda: receiver))
        self.addCleanup(port.stopListening)
        sender = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), _Sender())
        self.addCleanup(sender.transport.loseConnection)
        return sender, receiver

    @defer.inlineCallbacks
    def test_small_writes_arrive_in_order_without_buffering(self):
        """
        Small writes on an idle TCP connection leave at once (nothing stays
        in Twisted's buffer) and arrive complete and in order.
        """
        parts = [b"%05d" % i for i in range(200)]
        sender, receiver = yield self._pair(sum(map(len, parts)))
        for p in parts:
            send_now(sender.transport, p)
            self.assertEqual((sender.transport.dataBuffer, sender.transport._tempDataBuffer), (b"", []))
        got = yield receiver.done
        self.assertEqual(got, b"".join(parts))

    @defer.inlineCallbacks
    def test_what_the_kernel_refuses_is_buffered_in_order(self):
        """
        A write larger than the socket buffer is sent in part; the rest, and
        every later write, goes through Twisted's buffer, and the receiver
        gets all of it in order.
        """
        big = bytes(range(256)) * (16 * 1024 * 4)  # 16 MiB: more than loopback's socket buffers
        tail = b"the end"
        sender, receiver = yield self._pair(len(big) + len(tail))
        send_now(sender.transport, big)
        self.assertTrue(sender.transport._tempDataBuffer or sender.transport.dataBuffer)
        send_now(sender.transport, tail)
        got = yield receiver.done
        self.assertEqual(len(got), len(big) + len(tail))
        self.assertEqual(got, big + tail)


class SendNowOtherTransportTests(SynchronousTestCase):
    def test_other_transports_get_write(self):
        """Any transport that is not a plain TCP connection gets C{write}."""
        t = StringTransport()
        send_now(t, b"abc")
        send_now(t, b"def")
        self.assertEqual(t.value(), b"abcdef")
