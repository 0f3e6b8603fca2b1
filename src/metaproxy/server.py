# -*- test-case-name: metaproxy.test.test_server -*-
"""
The server side of the THFT protocol: what clients connect to.

The protocol only frames: it decodes requests, hands each to an
L{IRequestHandler}, and writes each reply when it is ready (out of order is
fine: every client matches replies by seqid). It never lets a handler's
exception reach the reactor, and it closes a connection whose stream it can
no longer parse, as a real meta server does.

What a client is told when a handler does not produce a usable reply:

 - the handler raises (or fails with) L{metaproxy.wire.binary.DecodeError}
   (its args are malformed): rpc-level C{ERR_INVALID_PARAMETERS}, no body;
 - any other exception or failure, or a result that is not a
   L{metaproxy.wire.frame.Reply}: logged with its traceback, answered with
   rpc-level C{ERR_TIMEOUT}, no body (Java and Go retry that);
 - a reply whose rpc error is not in L{metaproxy.wire.codes.RPC_LEVEL_SAFE}:
   sent as C{ERR_UNKNOWN}, because older clients cannot parse other names.
"""

import attrs
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from metaproxy.wire import codes
from metaproxy.wire.binary import DecodeError
from metaproxy.wire.frame import FramingError, Reply, RequestDecoder, ack_name, encode_reply

log = Logger()

_INVALID_ARGS = Reply(None, codes.ERR_INVALID_PARAMETERS)
_RETRY = Reply(None, codes.ERR_TIMEOUT)
_SAFE = codes.RPC_LEVEL_SAFE
_MAX_NAMES = 64
_OTHER = "_other"
_WARN_EVERY = 10.0
#: Seconds a connection whose stream broke waits for the answers to the
#: requests decoded before the break, before it is closed regardless.
CLOSE_GRACE = 30.0


@attrs.define
class ServerCounters:
    """
    What the server saw, for metrics. Plain integers, bumped in place.

    @ivar requests: requests by rpc name (at most 64 names; the rest are
        counted under C{"_other"}, so hostile names cannot grow it).
    @ivar framing_errors: connections closed for an unparsable stream.
    @ivar rejected_connections: connections refused by C{max_connections}
        or while draining.
    @ivar handler_errors: handler failures answered with C{ERR_TIMEOUT}.
    @ivar invalid_requests: requests answered C{ERR_INVALID_PARAMETERS}.
    """

    requests: dict = attrs.Factory(dict)
    framing_errors: int = 0
    rejected_connections: int = 0
    handler_errors: int = 0
    invalid_requests: int = 0

    def count_request(self, name):
        """Count one request called C{name}, keeping the name set bounded."""
        requests = self.requests
        if name in requests:
            requests[name] += 1
        elif len(requests) < _MAX_NAMES:
            requests[name] = 1
        else:
            requests[_OTHER] = requests.get(_OTHER, 0) + 1


class PegasusServerProtocol(Protocol):
    """
    One client connection.

    Requests are answered as their handlers finish, in any order. While a
    connection has C{max_pending_per_connection} requests unanswered it is
    not read (C{pauseProducing}); it is read again as soon as it drops
    below that. (Every request of one received chunk is dispatched, so the
    count may overshoot the limit by one chunk's worth.)

    A stream that cannot be parsed further stops being read; the requests
    decoded before the break are still answered, then the connection is
    closed (after at most L{CLOSE_GRACE} seconds).
    """

    def __init__(self, factory):
        self.factory = factory
        self._decoder = RequestDecoder(factory.max_frame_bytes)
        self._pending = {}
        self._next_key = 0
        self._paused = False
        self._counted = False
        self._closing = False
        self._idle = None
        self._grace = None
        self._handing_over = False  # hot upgrade: being handed over (see the hooks at the end)

    # -- connection lifecycle

    def connectionMade(self):
        """Count the connection, or refuse it when over the limit or draining."""
        factory = self.factory
        limit = factory.max_connections
        if factory.draining or (limit and factory.connection_count >= limit):
            factory.counters.rejected_connections += 1
            factory._warn(
                "rejecting a connection from {peer}: {count} open, limit {limit}, draining {draining}",
                peer=_peer(self.transport),
                count=factory.connection_count,
                limit=limit,
                draining=factory.draining,
            )
            self._closing = True
            self.transport.loseConnection()
            return
        self._counted = True
        factory.connection_count += 1
        factory._connections.add(self)
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass
        self._arm_idle()

    def connectionLost(self, reason):
        """Forget the connection; cancel its unanswered requests and drop their replies."""
        factory = self.factory
        if self._counted:
            self._counted = False
            factory.connection_count -= 1
            factory._connections.discard(self)
        for timer in (self._idle, self._grace):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle = self._grace = None
        # Emptied first: the errbacks that cancelling triggers find nothing
        # pending, so they write nothing and swallow the CancelledError.
        pending, self._pending = self._pending, {}
        for d in pending.values():
            try:
                d.cancel()
            except Exception:
                log.failure("cancelling a request of a closed connection raised")
        factory._check_drained()

    # -- requests

    def dataReceived(self, data):
        """Decode and dispatch every complete request; on a broken stream, stop and close."""
        if self._closing:
            return
        if self._idle is not None:
            self._arm_idle()
        try:
            for request in self._decoder.feed_iter(data):
                self._dispatch(request)
                if self._closing:
                    return
        except FramingError as e:
            factory = self.factory
            factory.counters.framing_errors += 1
            factory._warn(
                "closing connection from {peer}: {error}", peer=_peer(self.transport), error=str(e)
            )
            self._close_when_answered()

    def _dispatch(self, request):
        factory = self.factory
        factory.counters.count_request(request.name)
        try:
            result = factory.handler.handle(request, self)
        except DecodeError:
            factory.counters.invalid_requests += 1
            self._write(request, _INVALID_ARGS)
            return
        except Exception:
            factory.counters.handler_errors += 1
            log.failure("handler for {rpc} raised", rpc=request.name)
            self._write(request, _RETRY)
            return
        if not isinstance(result, defer.Deferred):
            self._write(request, result)
            return
        key = self._next_key
        self._next_key = key + 1
        pending = self._pending
        pending[key] = result
        result.addCallbacks(self._answered, self._failed, (request, key), None, (request, key))
        if not self._paused and key in pending and len(pending) >= factory.max_pending_per_connection:
            self._paused = True
            self.transport.pauseProducing()

    def _answered(self, reply, request, key):
        if self._pending.pop(key, None) is None:
            return None
        self._write(request, reply)
        self._after_answer()
        return None

    def _failed(self, failure, request, key):
        if self._pending.pop(key, None) is None:
            return None  # the connection is gone (cancelled by connectionLost)
        if failure.check(DecodeError):
            self.factory.counters.invalid_requests += 1
            reply = _INVALID_ARGS
        else:
            self.factory.counters.handler_errors += 1
            log.failure("handler for {rpc} failed", failure, rpc=request.name)
            reply = _RETRY
        self._write(request, reply)
        self._after_answer()
        return None

    def _after_answer(self):
        factory = self.factory
        if self._paused and len(self._pending) < factory.max_pending_per_connection:
            self._paused = False
            if not factory.draining and not self._closing and not self._handing_over:
                self.transport.resumeProducing()
        if self._closing and not self._pending:
            self.transport.loseConnection()
        if factory.draining:
            factory._check_drained()
        elif self._idle is not None:
            self._arm_idle()

    def _write(self, request, reply):
        if request.oneway:
            return
        try:
            rpc_error = reply.rpc_error
            if rpc_error not in _SAFE:
                rpc_error = codes.ERR_UNKNOWN
            data = encode_reply(ack_name(request.name), request.seqid, reply.body, rpc_error)
        except Exception:
            self.factory.counters.handler_errors += 1
            log.failure("handler for {rpc} gave an unusable reply {reply!r}", rpc=request.name, reply=reply)
            data = encode_reply(ack_name(request.name), request.seqid, None, codes.ERR_TIMEOUT)
        self.transport.write(data)

    def _close_when_answered(self):
        self._closing = True
        if not self._pending:
            self.transport.loseConnection()
            return
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        self._grace = self.factory.clock.callLater(CLOSE_GRACE, self._grace_expired)

    def _grace_expired(self):
        self._grace = None
        self.transport.loseConnection()

    def pending_count(self):
        """@return: how many of this connection's requests are unanswered."""
        return len(self._pending)

    # -- idle timeout

    def _arm_idle(self):
        timeout = self.factory.idle_timeout
        if not timeout:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self.factory.clock.callLater(timeout, self._idle_expired)

    def _idle_expired(self):
        self._idle = None
        if self._pending:
            self._arm_idle()
            return
        self._closing = True
        self.transport.loseConnection()

    # -- hot upgrade hooks (metaproxy.upgrade sends, metaproxy.takeover adopts; issue 18)

    def hold_for_handover(self):
        """
        Stop reading this connection and its idle timer: it is being handed over.

        @return: L{False} if it is closing anyway (it is not handed over).
        """
        if self._closing:
            return False
        self._handing_over = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        return True

    def release_hold(self):
        """The hand-over failed: serve this connection again as before."""
        if not self._handing_over:
            return
        self._handing_over = False
        if self._closing:
            return
        self._arm_idle()
        if self._paused and len(self._pending) < self.factory.max_pending_per_connection and not self.factory.draining:
            self._paused = False
            self.transport.resumeProducing()

    def handover_state(self):
        """
        @return: L{None} while the connection is not held, closing, has a
            request unanswered or reply bytes unsent; else C{(partial,
            framing)}: the bytes of an incomplete frame already read, and
            the framing kind (L{None}: THFT) the new process must keep.
        """
        transport = self.transport
        unsent = len(getattr(transport, "dataBuffer", b"")) + getattr(transport, "_tempDataLen", 0)
        if not self._handing_over or self._closing or self._pending or unsent:
            return None
        return bytes(self._decoder._buf), None

    def detach_for_handover(self):
        """
        Forget a connection the new process has adopted: close this
        process's descriptor without C{shutdown()}, so the client sees
        neither FIN nor RST (the socket lives on in the new process).
        """
        self._closing = True
        self.transport._shouldShutdown = False
        self.transport.loseConnection()

    def restore_handover(self, partial, framing=None):
        """
        Go on with a connection adopted from the old process: C{partial}
        (bytes of an incomplete frame it had read) is decoded first.
        C{framing} is the kind L{handover_state} gave (L{None}: THFT).
        Every frame of either framing starts with its magic, so replaying
        the partial bytes into a fresh decoder keeps the connection's kind;
        C{framing} is there to force it where that does not hold.
        """
        if partial:
            self.dataReceived(partial)


def _peer(transport):
    try:
        peer = transport.getPeer()
        return f"{peer.host}:{peer.port}"
    except Exception:
        return "?"


class PegasusServerFactory(Factory):
    """
    Builds L{PegasusServerProtocol}s sharing one handler and the limits.

    @ivar connection_count: connections open now.
    @ivar counters: a L{ServerCounters}.
    @ivar draining: L{True} once L{drain} was called; new connections are
        then refused.
    """

    noisy = False  # no "Starting factory" lines per listener

    def __init__(
        self,
        handler,
        clock,
        max_frame_bytes=1 << 20,
        max_pending_per_connection=1024,
        max_connections=0,
        idle_timeout=0.0,
    ):
        """
        @param handler: an L{metaproxy.interfaces.IRequestHandler}.
        @param clock: an L{IReactorTime} for idle timeouts and drains.
        @param max_frame_bytes: a larger request frame closes its connection.
        @param max_pending_per_connection: stop reading a connection with
            this many requests unanswered.
        @param max_connections: refuse connections beyond this (0: no limit).
        @param idle_timeout: close a connection with no traffic and nothing
            pending for this many seconds (0: never).
        """
        self.handler = handler
        self.clock = clock
        self.max_frame_bytes = max_frame_bytes
        self.max_pending_per_connection = max(1, max_pending_per_connection)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connection_count = 0
        self.counters = ServerCounters()
        self.draining = False
        self._connections = set()
        self._drain_waiters = []
        self._drain_result = None
        self._drain_timer = None
        self._last_warn = {}

    def buildProtocol(self, addr):
        """@return: a new L{PegasusServerProtocol} for this factory."""
        return PegasusServerProtocol(self)

    def _warn(self, fmt, **kw):
        """Log C{fmt} at warn level, at most once per 10 s per message."""
        now = self.clock.seconds()
        if now - self._last_warn.get(fmt, -_WARN_EVERY) >= _WARN_EVERY:
            self._last_warn[fmt] = now
            log.warn(fmt, **kw)

    def open_connections(self):
        """@return: the open L{PegasusServerProtocol}s (a copy; for a hot upgrade)."""
        return list(self._connections)

    def in_flight(self):
        """@return: requests unanswered across all connections."""
        return sum(p.pending_count() for p in self._connections)

    def drain(self, timeout):
        """
        Stop reading every connection, wait until every request in flight
        is answered (at most C{timeout} seconds, on the clock), then close
        every connection. Calling it again waits for the same drain.

        @return: a L{Deferred} firing with the number of requests that were
            still unanswered when the connections were closed (0: clean).
        """
        d = defer.Deferred()
        if self._drain_result is not None:
            d.callback(self._drain_result)
            return d
        self._drain_waiters.append(d)
        if self.draining:
            return d
        self.draining = True
        for proto in list(self._connections):
            if not proto._paused:
                proto._paused = True
                proto.transport.pauseProducing()
        self._drain_timer = self.clock.callLater(timeout, self._finish_drain)
        self._check_drained()
        return d

    def _check_drained(self):
        if self._drain_timer is not None and self.in_flight() == 0:
            self._finish_drain()

    def _finish_drain(self):
        timer, self._drain_timer = self._drain_timer, None
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        unanswered = self.in_flight()
        self._drain_result = unanswered
        for proto in list(self._connections):
            proto._closing = True
            proto.transport.loseConnection()
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(unanswered)
