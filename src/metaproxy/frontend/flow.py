# -*- test-case-name: metaproxy.test.test_server_limits -*-
"""
Flow control for client connections: what bounds the memory one client,
and all clients together, can make metaproxy hold.

 - L{ReadGate}: a connection is read unless at least one reason says not
   to (too many requests unanswered, too many reply bytes unsent, the
   total over budget, closing).
 - L{WriteBuffer}: registered with the transport as its streaming
   producer. Replies the transport will not take yet wait in a queue of
   known size; while more than the per-connection limit is unsent the
   connection is not read, so a client that does not read its replies
   stops being read itself.
 - L{BufferBudget}: the bytes held for all connections together (request
   bytes of incomplete frames, reply bytes not sent). Over its limit,
   every connection that holds bytes stops being read until the total is
   back under three quarters of the limit.
"""

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from metaproxy.transport import send_now

#: Reasons a connection is not read.
PENDING = "pending"  # too many of its requests are unanswered
OUT = "out"  # too many of its reply bytes are unsent
TOTAL = "total"  # the total held for all connections is over budget
CLOSING = "closing"  # it is being closed (for good)
HANDOVER = "handover"  # it is being handed to a new process (hot upgrade)
TURN = "turn"  # it used its turn; the others go first (requests_per_turn)

#: What the transport is assumed to hold when it cannot say (its default
#: C{bufferSize}, the point at which it asks its producer to pause).
_TRANSPORT_BUFFER = 1 << 16


def transport_unsent(transport):
    """
    @return: the bytes C{transport} holds that the kernel has not taken
        yet, read from L{twisted.internet.abstract.FileDescriptor}'s
        buffers; its C{bufferSize} (64 KiB by default) for a transport that
        does not keep them there.
    """
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return getattr(transport, "bufferSize", _TRANSPORT_BUFFER)


class ReadGate:
    """
    Reads a transport unless at least one reason says not to.

    The transport is paused when the first reason appears and resumed when
    the last one goes; L{CLOSING} never goes.
    """

    # One per client connection: the reasons are a tuple (usually empty,
    # shared), not a set (216 bytes each, even empty).
    __slots__ = ("_transport", "reasons")

    def __init__(self, transport):
        self._transport = transport
        self.reasons = ()

    def pause(self, reason):
        """Stop reading for C{reason} (no effect if already paused for it)."""
        reasons = self.reasons
        if reason in reasons:
            return
        self.reasons = reasons + (reason,)
        if not reasons:
            self._transport.pauseProducing()

    def resume(self, reason):
        """Withdraw C{reason}; read again if no other reason remains."""
        reasons = self.reasons
        if reason not in reasons or CLOSING in reasons:
            return
        self.reasons = reasons = tuple(r for r in reasons if r != reason)
        if not reasons:
            self._transport.resumeProducing()

    def paused(self, reason=None):
        """@return: whether reading is paused (for C{reason}, if given)."""
        return bool(self.reasons) if reason is None else reason in self.reasons


class BufferBudget:
    """
    Counts the bytes held for all client connections together and starves
    the connections that hold some while the total is over C{limit}.

    @ivar limit: bytes; 0 means no limit.
    @ivar in_bytes: request bytes held in incomplete frames.
    @ivar out_bytes: reply bytes not yet sent.
    """

    def __init__(self, limit=0):
        self.limit = limit
        self.in_bytes = 0
        self.out_bytes = 0
        self._starved = set()

    def total(self):
        """@return: L{in_bytes} plus L{out_bytes}."""
        return self.in_bytes + self.out_bytes

    def over(self):
        """@return: whether the total is over the limit."""
        return bool(self.limit) and self.in_bytes + self.out_bytes > self.limit

    def add_in(self, delta):
        """Count C{delta} more (or, negative, fewer) held request bytes."""
        self.in_bytes += delta
        if delta < 0 and self._starved:
            self._release()

    def add_out(self, delta):
        """Count C{delta} more (or, negative, fewer) unsent reply bytes."""
        self.out_bytes += delta
        if delta < 0 and self._starved:
            self._release()

    def starve(self, gate):
        """Stop reading through C{gate} until the total is low again."""
        gate.pause(TOTAL)
        self._starved.add(gate)

    def forget(self, gate):
        """Drop C{gate} (its connection is gone)."""
        self._starved.discard(gate)

    def starved(self):
        """@return: how many connections are not read because of the total."""
        return len(self._starved)

    def _release(self):
        if self.in_bytes + self.out_bytes <= self.limit * 3 // 4:
            starved, self._starved = self._starved, set()
            for gate in starved:
                gate.resume(TOTAL)


@implementer(IPushProducer)
class WriteBuffer:
    """
    Writes one connection's replies, holding back what the transport will
    not take yet, and stops reading the connection while more than
    C{limit} bytes are unsent.

    It registers itself with the transport as a streaming producer: the
    transport calls L{pauseProducing} when its own buffer is full (64 KiB
    by default) and L{resumeProducing} once it is empty. In between,
    replies wait here. What is unsent is this queue plus what the
    transport held when it became full (counted until it is empty again).

    @ivar limit: unsent bytes above which the connection is not read.
    """

    # One per client connection: no instance dict, and the queue (a list
    # used from its front through an index) only once something waits.
    __slots__ = ("_transport", "_gate", "_budget", "limit", "_queue", "_head", "_queued", "_held", "_full",
                 "_done", "_on_flushed")

    def __init__(self, transport, gate, budget, limit):
        self._transport = transport
        self._gate = gate
        self._budget = budget
        self.limit = limit
        self._queue = None
        self._head = 0
        self._queued = 0
        self._held = 0
        self._full = False
        self._done = False
        self._on_flushed = None
        transport.registerProducer(self, True)

    def unsent(self):
        """@return: reply bytes written but not yet taken by the kernel (an upper bound)."""
        return self._queued + self._held

    def write(self, data):
        """Send C{data} now, or queue it while the transport is full."""
        if self._done:
            return
        if self._full or self._queue is not None:
            if self._queue is None:
                self._queue = []
            self._queue.append(data)
            self._queued += len(data)
            self._budget.add_out(len(data))
            if self._queued + self._held > self.limit:
                self._gate.pause(OUT)
        else:
            send_now(self._transport, data)

    def pauseProducing(self):
        """The transport's buffer is full: queue replies from now on."""
        if self._full or self._done:
            return
        self._full = True
        held = transport_unsent(self._transport)
        self._budget.add_out(held - self._held)
        self._held = held
        if self._queued + held > self.limit:
            self._gate.pause(OUT)

    def resumeProducing(self):
        """The transport's buffer is empty: hand it what is queued, read again if under the limit."""
        if self._done:
            return
        self._full = False
        if self._held:
            self._budget.add_out(-self._held)
            self._held = 0
        queue = self._queue
        if queue is not None:
            head = self._head
            while head < len(queue) and not self._full:
                data = queue[head]
                queue[head] = None
                head += 1
                self._queued -= len(data)
                self._budget.add_out(-len(data))
                self._transport.write(data)  # may call pauseProducing
            if head == len(queue):
                self._queue, self._head = None, 0
            elif head * 2 > len(queue):
                del queue[:head]
                self._head = 0
            else:
                self._head = head
        if self._queued + self._held <= self.limit:
            self._gate.resume(OUT)
        if self._queue is None and self._on_flushed is not None:
            on_flushed, self._on_flushed = self._on_flushed, None
            on_flushed()

    def stopProducing(self):
        """The connection is gone: forget what is unsent."""
        self.release()

    def when_flushed(self, callback):
        """
        Call C{callback()} once every queued reply was handed to the
        transport (at once if none is queued); the producer is
        unregistered first, so that the transport may close.
        """

        def done():
            self.unregister()
            callback()

        if self._queue is not None and not self._done:
            self._on_flushed = done
        else:
            done()

    def take(self):
        """
        Take every unsent byte away, in order: what the transport's buffers
        hold (not yet taken by the kernel) and what is queued here; nothing
        of it is sent from here any more (a hot upgrade moves it with the
        connection). Stops counting it.

        @return: the bytes (L{bytes}).
        """
        parts = []
        transport = self._transport
        try:
            parts.append(bytes(transport.dataBuffer[transport.offset:]))
            parts.extend(transport._tempDataBuffer)
            transport.dataBuffer, transport.offset = b"", 0
            transport._tempDataBuffer, transport._tempDataLen = [], 0
        except (AttributeError, TypeError):
            pass  # not a FileDescriptor: nothing held there
        if self._queue is not None:
            parts.extend(self._queue[self._head:])
        unsent = self._queued + self._held
        self._queue, self._head = None, 0
        self._queued = self._held = 0
        self._full = False
        if unsent:
            self._budget.add_out(-unsent)
        self._gate.resume(OUT)
        return b"".join(parts)

    def unregister(self):
        """Stop being the transport's producer (needed before it can close)."""
        if getattr(self._transport, "producer", None) is self:
            self._transport.unregisterProducer()

    def release(self):
        """Drop the queue and stop counting anything for this connection (idempotent)."""
        if self._done:
            return
        self._done = True
        self._on_flushed = None
        unsent = self._queued + self._held
        self._queue, self._head = None, 0
        self._queued = self._held = 0
        if unsent:
            self._budget.add_out(-unsent)
