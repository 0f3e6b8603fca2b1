# -*- test-case-name: metaproxy.test.test_server -*-
"""
The server side of the Pegasus protocol: what clients connect to.

Each connection speaks THFT or RDSN, chosen by its first 4 bytes
(L{metaproxy.wire.framing.FramingSelector}); the framer of that framing
encodes its replies, and both framings share one dispatch.

The protocol only frames: it decodes requests, hands each to an
L{IRequestHandler}, and writes each reply when it is ready (out of order is
fine: every client matches replies by seqid). It never lets a handler's
exception reach the reactor, and it closes a connection whose stream it can
no longer parse, as a real meta server does.

What one client can make it hold is bounded (see L{metaproxy.frontend.flow}): a
connection is not read while it has too many requests unanswered or too
many reply bytes unsent, or while all connections together hold too many
bytes; a request frame that stays incomplete too long closes its
connection; connections are capped in total and per source address. A
connection with nothing pending is never timed out by these (Go clients
do not redial a closed meta address for 60 s); only C{idle_timeout}, off
by default, closes idle ones.

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
from twisted.internet import defer, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from metaproxy.frontend.flow import CLOSING, HANDOVER, PENDING, TURN, BufferBudget, ReadGate, WriteBuffer
from metaproxy.transport import set_nodelay
from metaproxy.wire import codes
from metaproxy.wire.binary import DecodeError
from metaproxy.wire.frame import FramingError, Reply
from metaproxy.wire.framing import FramingSelector

log = Logger()

_INVALID_ARGS = Reply(None, codes.ERR_INVALID_PARAMETERS)
_RETRY = Reply(None, codes.ERR_TIMEOUT)
_SAFE = codes.RPC_LEVEL_SAFE
_MAX_NAMES = 64
_OTHER = "_other"
_GONE = object()
_WARN_EVERY = 10.0
#: Seconds a connection being closed (broken stream, stalled frame, drain,
#: idle) waits for the answers to the requests decoded before, and for
#: its replies to be sent, before it is aborted regardless.
CLOSE_GRACE = 30.0
#: Seconds before the drain's timeout at which connections stop being
#: read (at most half the timeout), so that the requests already in flight
#: are answered before it rather than cut by it.
DRAIN_QUIET = 3.0
#: Why connections are refused (C{ServerCounters.refused} keys).
REFUSED_REASONS = ("limit", "per_peer", "draining")


@attrs.define
class ServerCounters:
    """
    What the server saw, for metrics. Plain integers, bumped in place.

    @ivar requests: requests by rpc name (at most 64 names; the rest are
        counted under C{"_other"}, so hostile names cannot grow it).
    @ivar accepted: connections accepted (not refused) since start.
    @ivar framing_errors: connections closed for an unparsable stream.
    @ivar rejected_connections: connections refused, for any reason.
    @ivar refused: connections refused by reason: C{limit}
        (C{max_connections}), C{per_peer} (C{max_connections_per_peer}),
        C{draining}.
    @ivar frame_timeouts: connections closed because a request frame
        stayed incomplete for C{frame_timeout}.
    @ivar handler_errors: handler failures answered with C{ERR_TIMEOUT}.
    @ivar invalid_requests: requests answered C{ERR_INVALID_PARAMETERS}.
    @ivar framings: connections by the framing their first bytes chose
        (C{"THFT"}, C{"RDSN"}).
    @ivar evicted: connections closed at C{max_connections} to make room
        for a new client (each the oldest that never sent a complete
        request).
    """

    requests: dict = attrs.Factory(dict)
    accepted: int = 0
    framing_errors: int = 0
    rejected_connections: int = 0
    refused: dict = attrs.Factory(lambda: dict.fromkeys(REFUSED_REASONS, 0))
    frame_timeouts: int = 0
    handler_errors: int = 0
    invalid_requests: int = 0
    framings: dict = attrs.Factory(lambda: {"THFT": 0, "RDSN": 0})
    evicted: int = 0

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

    Requests are answered as their handlers finish, in any order. The
    connection is not read (see L{metaproxy.frontend.flow.ReadGate}) while it has
    C{max_pending_per_connection} requests unanswered, while more than
    C{max_buffered_bytes_per_connection} of its reply bytes are unsent,
    or while the factory's L{BufferBudget} is over its total and this
    connection holds bytes. (Every request of one received chunk is
    dispatched, so a limit may be overshot by one chunk's worth.)

    A request frame still incomplete C{frame_timeout} seconds after its
    first bytes arrived closes the connection, unless the rest is held
    back by metaproxy itself (its requests unanswered).

    A stream that cannot be parsed further stops being read; the requests
    decoded before the break are still answered, then the connection is
    closed (aborted after at most L{CLOSE_GRACE} seconds).
    """

    def __init__(self, factory):
        self.factory = factory
        self._decoder = FramingSelector(factory.max_frame_bytes, factory.counters.framings)
        self._pending = {}
        self._next_key = 0
        self._counted = False
        self._closing = False
        self._idle = None
        self._grace = None
        self._frame_timer = None
        self._gate = None
        self._out = None
        self._held_in = 0
        self._peer_host = None
        self._turn = None
        self._taken = b""
        self._silent = False

    # -- connection lifecycle

    def connectionMade(self):
        """Count the connection, or refuse it (limit, per-peer limit, draining)."""
        factory = self.factory
        if not factory._admit(self):
            self._closing = True
            self.transport.loseConnection()
            return
        self._counted = True
        self._decoder.local_address = _host(self.transport)
        factory.connection_count += 1
        factory.counters.accepted += 1
        factory._connections.add(self)
        self._silent = True
        factory._silent[self] = None
        self._gate = ReadGate(self.transport)
        self._out = WriteBuffer(
            self.transport, self._gate, factory.budget, factory.max_buffered_bytes_per_connection
        )
        set_nodelay(self.transport)
        self._arm_idle()

    def connectionLost(self, reason):
        """Forget the connection and what it held; cancel its unanswered requests and drop their replies."""
        factory = self.factory
        if self._counted:
            self._counted = False
            factory.connection_count -= 1
            factory._connections.discard(self)
            factory._silent.pop(self, None)
            factory._release_peer(self._peer_host)
        for timer in (self._idle, self._grace, self._frame_timer, self._turn):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle = self._grace = self._frame_timer = self._turn = None
        if self._out is not None:
            self._out.release()
            factory.budget.forget(self._gate)
        self._drop_partial()
        # Emptied first: the errbacks that cancelling triggers find nothing
        # pending, so they write nothing and swallow the CancelledError.
        pending, self._pending = self._pending, {}
        for d in pending.values():
            if d is None:
                continue
            try:
                d.cancel()
            except Exception:
                log.failure("cancelling a request of a closed connection raised")
        factory._check_drained()

    # -- requests

    def dataReceived(self, data):
        """
        Decode and dispatch the complete requests; on a broken stream, stop
        and close. At most C{requests_per_turn} are dispatched at once: the
        rest stay in the decoder, this connection is not read, and the other
        connections go first (one reactor turn), so a client that pipelines
        thousands of requests cannot starve the others.
        """
        if self._closing:
            return
        if self._idle is not None:
            self._arm_idle()
        completed = False
        turn = self.factory.requests_per_turn
        requests = self._decoder.feed_iter(data)
        try:
            for request in requests:
                completed = True
                self._dispatch(request)
                if self._closing:
                    return
                turn -= 1
                if not turn:
                    self._yield_turn()
                    break
        except FramingError as e:
            factory = self.factory
            factory.counters.framing_errors += 1
            factory._warn(
                "closing connection from {peer}: {error} ({suppressed} more since the last warning)",
                peer=_peer(self.transport), error=str(e),
            )
            self._close_when_answered()
            return
        finally:
            requests.close()
            self._account_in()
        self._watch_frame(completed)
        self._check_budget()
        if self.factory.draining:
            self._close_if_done()

    def _yield_turn(self):
        """Let the other connections go first; decode what this one sent next turn."""
        self._gate.pause(TURN)
        if self._turn is None:
            self._turn = self.factory.clock.callLater(0, self._next_turn)

    def _next_turn(self):
        self._turn = None
        if self._closing or self._gate.paused(HANDOVER):
            return  # held bytes go with the connection to the new process
        self._gate.resume(TURN)
        self.dataReceived(b"")

    def _dispatch(self, request):
        factory = self.factory
        if self._silent:
            self._silent = False
            factory._silent.pop(self, None)
        factory.counters.count_request(request.name)
        refusal = self._decoder.framer.refuse(request)
        if refusal is not None:
            factory.counters.invalid_requests += 1
            self._write(request, refusal)
            return
        start = factory.start_request
        if start is not None:
            key = self._next_key
            self._next_key = key + 1
            pending = self._pending
            pending[key] = None  # may be answered before start returns
        try:
            if start is not None:
                result = start(request, self, key)
            else:
                result = factory.handler.handle(request, self)
        except DecodeError:
            if start is not None:
                del self._pending[key]
            factory.counters.invalid_requests += 1
            self._write(request, _INVALID_ARGS)
            return
        except Exception:
            if start is not None:
                self._pending.pop(key, None)
            factory.counters.handler_errors += 1
            log.failure("handler for {rpc} raised", rpc=request.name)
            self._write(request, _RETRY)
            return
        if start is not None:
            if not isinstance(result, defer.Deferred):
                if hasattr(result, "cancel"):
                    # A cancel handle: the answer comes by request_answered.
                    if key in pending:
                        pending[key] = result
                        if len(pending) >= factory.max_pending_per_connection:
                            self._gate.pause(PENDING)
                    return
                if pending.pop(key, _GONE) is not _GONE:
                    self._write(request, result)
                return
            del pending[key]
        if not isinstance(result, defer.Deferred):
            self._write(request, result)
            return
        key = self._next_key
        self._next_key = key + 1
        pending = self._pending
        pending[key] = result
        result.addCallbacks(self._answered, self._failed, (request, key), None, (request, key))
        if key in pending and len(pending) >= factory.max_pending_per_connection:
            self._gate.pause(PENDING)

    def request_answered(self, key, request, reply):
        """
        The answer to C{request} (dispatched with C{key}) by a handler's
        callback form (see L{metaproxy.frontend.dispatch.RpcDispatcher.start}):
        write it, unless the connection is gone.
        """
        if self._pending.pop(key, _GONE) is _GONE:
            return
        self._write(request, reply)
        self._after_answer()

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
        if len(self._pending) < factory.max_pending_per_connection:
            self._gate.resume(PENDING)
        if self._closing:
            if not self._pending:
                self._shutdown()
        elif factory.draining:
            self._close_if_done()
        elif self._idle is not None:
            self._arm_idle()

    def _write(self, request, reply):
        if request.oneway:
            return
        try:
            rpc_error = reply.rpc_error
            if rpc_error not in _SAFE:
                rpc_error = codes.ERR_UNKNOWN
            data = self._decoder.framer.encode(request, reply, rpc_error)
        except Exception:
            self.factory.counters.handler_errors += 1
            log.failure("handler for {rpc} gave an unusable reply {reply!r}", rpc=request.name, reply=reply)
            data = self._decoder.framer.encode(request, _RETRY, codes.ERR_TIMEOUT)
        self._out.write(data)
        budget = self.factory.budget
        if budget.limit and budget.over():
            self._check_budget()

    def pending_count(self):
        """@return: how many of this connection's requests are unanswered."""
        return len(self._pending)

    # -- bounded buffers (see metaproxy.frontend.flow)

    def _account_in(self):
        """Tell the budget how many bytes of an incomplete frame are held now."""
        held = self._decoder.buffered()
        if held != self._held_in:
            self.factory.budget.add_in(held - self._held_in)
            self._held_in = held

    def _drop_partial(self):
        """Forget the incomplete frame held (the connection is closing) and stop counting it."""
        clear = getattr(self._decoder, "clear", None)
        if clear is not None:
            clear()
        if self._held_in:
            self.factory.budget.add_in(-self._held_in)
            self._held_in = 0

    def _check_budget(self):
        """Stop reading this connection if all together hold too much and it holds some."""
        budget = self.factory.budget
        if budget.over() and (self._held_in or self._out.unsent()):
            budget.starve(self._gate)

    def unsent_bytes(self):
        """@return: this connection's reply bytes not yet taken by the kernel (an upper bound)."""
        return self._out.unsent() if self._out is not None else 0

    # -- stalled frames

    def _watch_frame(self, completed):
        """
        Time the incomplete frame held, if any: from its first byte, restarted
        whenever a frame completes; no timer while nothing is held.
        """
        timeout = self.factory.frame_timeout
        if not timeout:
            return
        timer = self._frame_timer
        if self._held_in:
            if timer is None:
                self._frame_timer = self.factory.clock.callLater(timeout, self._frame_expired)
            elif completed:
                timer.reset(timeout)
        elif timer is not None:
            timer.cancel()
            self._frame_timer = None

    def _frame_expired(self):
        self._frame_timer = None
        if self._closing:
            return
        factory = self.factory
        if self._gate.paused(PENDING):
            # metaproxy itself holds the rest of the frame back (its
            # requests are unanswered): not the client's fault.
            self._frame_timer = factory.clock.callLater(factory.frame_timeout, self._frame_expired)
            return
        factory.counters.frame_timeouts += 1
        factory._warn(
            "closing connection from {peer}: a request frame stayed incomplete for {timeout} s "
            "({held} bytes held; {suppressed} more since the last warning)",
            peer=_peer(self.transport),
            timeout=factory.frame_timeout,
            held=self._held_in,
        )
        self._drop_partial()
        self._close_when_answered()

    # -- closing

    def _close_when_answered(self):
        """Stop reading for good; close once every decoded request is answered and sent."""
        self._closing = True
        self._gate.pause(CLOSING)
        if self._grace is None:
            self._grace = self.factory.clock.callLater(CLOSE_GRACE, self._grace_expired)
        if not self._pending:
            self._shutdown()

    def _close_if_done(self):
        """While draining: close as soon as nothing is pending (no request unanswered, no partial frame)."""
        if not self._closing and not self._pending and not self._held_in:
            self._close_when_answered()

    def _shutdown(self):
        self._out.when_flushed(self.transport.loseConnection)

    def _abandon(self):
        """Close now, whatever is pending (the drain timed out)."""
        self._closing = True
        self._gate.pause(CLOSING)
        self._out.unregister()
        self.transport.loseConnection()

    def _evict(self):
        """Close now: another client needs the place (see L{PegasusServerFactory._make_room})."""
        self._closing = True
        self._drop_partial()
        self._gate.pause(CLOSING)
        self._out.unregister()
        self.transport.abortConnection()

    def _grace_expired(self):
        self._grace = None
        self._out.unregister()
        self.transport.abortConnection()

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
        self._close_when_answered()


    # -- hot upgrade hooks (metaproxy.ops.upgrade sends, metaproxy.ops.takeover adopts)

    def hold_for_handover(self):
        """
        Stop reading this connection, and its idle and frame timers: it is
        being handed to a new process.

        @return: L{False} if it is closing anyway (it is not handed over).
        """
        if self._closing or self._gate is None:
            return False
        self._gate.pause(HANDOVER)
        for timer in (self._idle, self._frame_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle = self._frame_timer = None
        return True

    def release_hold(self):
        """The hand-over failed: serve this connection again as before (unsent bytes taken are sent here)."""
        if self._gate is None or not self._gate.paused(HANDOVER):
            return
        taken, self._taken = self._taken, b""
        if taken:
            self._out.write(taken)
        self._gate.resume(HANDOVER)
        if self._closing:
            return
        self._arm_idle()
        self._watch_frame(False)

    def handover_state(self, with_unsent=False):
        """
        @param with_unsent: also when reply bytes are unsent: they are then
            taken away from this connection (see L{handover_unsent}).
        @return: L{None} while the connection is not held, is closing, has a
            request unanswered or (unless C{with_unsent}) reply bytes
            unsent; else C{(partial, framing)}: the bytes of an incomplete
            frame already read, and the framing chosen (C{"THFT"}, C{"RDSN"}
            or L{None} before the first 4 bytes). Replayed into a fresh
            connection, the partial bytes choose the same framing: every
            frame starts with its magic.
        """
        if self._gate is None or not self._gate.paused(HANDOVER) or self._closing or self._pending:
            return None
        if self.unsent_bytes():
            if not with_unsent:
                return None
            self._taken += self._out.take()
        return self._decoder.held_bytes(), self._decoder.framing

    def handover_unsent(self):
        """
        @return: the reply bytes L{handover_state} took away (they go with
            the connection: the new process sends them first).
        """
        return self._taken

    def detach_for_handover(self):
        """
        Forget a connection the new process has adopted: close this
        process's descriptor without C{shutdown()}, so that the client sees
        neither FIN nor RST (the socket lives on in the new process).
        """
        self._closing = True
        self._taken = b""
        self._drop_partial()
        self._out.unregister()
        transport = self.transport
        transport._shouldShutdown = False  # Twisted's tcp.Connection: close without shutdown()
        if isinstance(transport, tcp.Connection) and transport.connected:
            # Closed now: loseConnection would first wait for the socket to
            # be writable, which never comes for a client that does not read.
            transport.connectionLost(Failure(ConnectionDone("handed over to the new process")))
        else:
            transport.loseConnection()

    def close_for_handover(self):
        """
        Close a held connection that cannot be handed over (the upgrade's
        bound ran out): alone, now, whatever it still holds.
        """
        self._taken = b""
        self._closing = True
        self._gate.pause(CLOSING)
        self._out.unregister()
        self.transport.abortConnection()

    def restore_handover(self, partial, framing=None, unsent=b""):
        """
        Go on with a connection adopted from the old process: C{unsent}
        (reply bytes the old process had not sent yet) is sent first, then
        C{partial} (the bytes of an incomplete frame it had read) is
        decoded. C{framing} is what L{handover_state} reported; the partial
        bytes choose it again by themselves.
        """
        if unsent and self._out is not None:
            self._out.write(unsent)
        if partial:
            self.dataReceived(partial)


def _host(transport):
    try:
        return transport.getHost()
    except Exception:
        return None


def _peer(transport):
    try:
        peer = transport.getPeer()
        return f"{peer.host}:{peer.port}"
    except Exception:
        return "?"


def _peer_host(transport):
    """@return: the peer's IP address, or L{None} for a transport without one (UNIX socket)."""
    try:
        host = transport.getPeer().host
    except Exception:
        return None
    return host if isinstance(host, str) else None


class PegasusServerFactory(Factory):
    """
    Builds L{PegasusServerProtocol}s sharing one handler and the limits.

    @ivar connection_count: connections open now.
    @ivar counters: a L{ServerCounters}.
    @ivar budget: the L{BufferBudget} of all connections (its C{limit} is
        C{max_buffered_bytes_total}; C{in_bytes} and C{out_bytes} are the
        bytes held now).
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
        max_buffered_bytes_per_connection=1 << 20,
        max_buffered_bytes_total=128 << 20,
        frame_timeout=10.0,
        max_connections_per_peer=0,
        requests_per_turn=0,
    ):
        """
        @param handler: an L{metaproxy.interfaces.IRequestHandler}.
        @param clock: an L{IReactorTime} for timeouts and drains.
        @param max_frame_bytes: a larger request frame closes its connection.
        @param max_pending_per_connection: stop reading a connection with
            this many requests unanswered.
        @param max_connections: refuse connections beyond this (0: no limit).
        @param idle_timeout: close a connection with no traffic and nothing
            pending for this many seconds (0: never).
        @param max_buffered_bytes_per_connection: stop reading a connection
            with more reply bytes unsent than this.
        @param max_buffered_bytes_total: over this many bytes held for all
            connections (incomplete request frames and unsent replies),
            stop reading every connection that holds some (0: no limit).
        @param frame_timeout: close a connection whose request frame is
            still incomplete this many seconds after it began (0: never).
        @param max_connections_per_peer: refuse a connection from an IP
            address that has this many open (0: no limit).
        @param requests_per_turn: dispatch at most this many requests of one
            connection before the other connections get a turn (0: no limit).
        """
        self.handler = handler
        #: the handler's callback form (no Deferred per request), if it has one
        self.start_request = getattr(handler, "start", None)
        self.clock = clock
        self.max_frame_bytes = max_frame_bytes
        self.max_pending_per_connection = max(1, max_pending_per_connection)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_buffered_bytes_per_connection = max_buffered_bytes_per_connection
        self.frame_timeout = frame_timeout
        self.max_connections_per_peer = max_connections_per_peer
        self.requests_per_turn = requests_per_turn
        self.budget = BufferBudget(max_buffered_bytes_total)
        self.connection_count = 0
        self.counters = ServerCounters()
        self.draining = False
        self._connections = set()
        self._silent = {}  # connections that never sent a complete request, oldest first
        self._per_peer = {}
        self._drain_waiters = []
        self._drain_result = None
        self._drain_timer = None
        self._quiet_timer = None
        self._last_warn = {}

    def buildProtocol(self, addr):
        """@return: a new L{PegasusServerProtocol} for this factory."""
        return PegasusServerProtocol(self)

    def _warn(self, fmt, **kw):
        """
        Log C{fmt} at warn level, at most once per 10 s per message; the
        event's C{suppressed} field says how many were left out since.
        """
        now = self.clock.seconds()
        last, suppressed = self._last_warn.get(fmt, (None, 0))
        if last is None or now - last >= _WARN_EVERY:
            self._last_warn[fmt] = (now, 0)
            log.warn(fmt, suppressed=suppressed, **kw)
        else:
            self._last_warn[fmt] = (last, suppressed + 1)

    # -- admission

    def _admit(self, proto):
        """
        Decide whether C{proto}'s new connection may stay; count and log
        (rate-limited) a refusal.

        @return: L{True} to accept it.
        """
        transport = proto.transport
        limit = self.max_connections
        host = _peer_host(transport)
        per_peer = self.max_connections_per_peer
        peer_full = per_peer and host is not None and self._per_peer.get(host, 0) >= per_peer
        if self.draining:
            reason = "draining"
        elif peer_full:
            reason = "per_peer"  # checked first: making room for it would not let it in
        elif limit and self.connection_count >= limit and not self._make_room(transport):
            reason = "limit"
        else:
            if host is not None:
                self._per_peer[host] = self._per_peer.get(host, 0) + 1
                proto._peer_host = host
            return True
        counters = self.counters
        counters.rejected_connections += 1
        counters.refused[reason] = counters.refused.get(reason, 0) + 1
        self._warn(
            _REFUSAL_WARNINGS[reason],
            peer=_peer(transport),
            count=self.connection_count,
            limit=limit,
            peer_count=self._per_peer.get(host, 0),
            per_peer=per_peer,
        )
        return False

    def _make_room(self, transport):
        """
        At C{max_connections}: close the oldest connection that never sent
        a complete request (idle since it connected, or slowly sending its
        first frame), so that a new client is not refused.

        @return: L{False} if there is none (every connection is in use).
        """
        silent = self._silent
        if not silent:
            return False
        oldest = next(iter(silent))
        del silent[oldest]
        oldest._silent = False
        self.counters.evicted += 1
        self._warn(
            "closing the connection from {old}, which never sent a request, to make room for {peer}: "
            "limits.max_connections {limit} ({suppressed} more since the last warning)",
            old=_peer(oldest.transport), peer=_peer(transport), limit=self.max_connections,
        )
        oldest._evict()
        return True

    def _release_peer(self, host):
        if host is None:
            return
        left = self._per_peer.get(host, 0) - 1
        if left > 0:
            self._per_peer[host] = left
        else:
            self._per_peer.pop(host, None)

    def open_connections(self):
        """@return: the open L{PegasusServerProtocol}s (a copy; for a hot upgrade)."""
        return list(self._connections)

    def in_flight(self):
        """@return: requests unanswered across all connections."""
        return sum(p.pending_count() for p in self._connections)

    # -- drain

    def drain(self, timeout):
        """
        Close every connection as soon as it has nothing pending, while
        still answering the requests that arrive on them meanwhile. Shortly
        before C{timeout} (L{DRAIN_QUIET} seconds, at most half of it) stop
        reading every connection: each closes once the requests it had
        sent are answered, so that a client sending steadily does not have
        its last requests cut. After C{timeout} seconds (on the clock)
        close the rest regardless. New connections are refused. Calling it
        again waits for the same drain.

        @return: a L{Deferred} firing once every connection is closed, with
            the number of requests that were still unanswered when the
            drain timed out (0: clean).
        """
        d = defer.Deferred()
        if self._drain_result is not None:
            d.callback(self._drain_result)
            return d
        self._drain_waiters.append(d)
        if self.draining:
            return d
        self.draining = True
        self._drain_timer = self.clock.callLater(timeout, self._finish_drain)
        self._quiet_timer = self.clock.callLater(timeout - min(DRAIN_QUIET, timeout / 2), self._stop_reading)
        for proto in list(self._connections):
            proto._close_if_done()
        self._check_drained()
        return d

    def _check_drained(self):
        if self._drain_timer is not None and not self._connections:
            self._finish_drain()

    def _stop_reading(self):
        """The drain is about to time out: read no more; close each connection once answered."""
        self._quiet_timer = None
        for proto in list(self._connections):
            if not proto._closing:
                proto._drop_partial()
                proto._close_when_answered()

    def _finish_drain(self):
        quiet, self._quiet_timer = self._quiet_timer, None
        if quiet is not None and quiet.active():
            quiet.cancel()
        timer, self._drain_timer = self._drain_timer, None
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        unanswered = self.in_flight()
        self._drain_result = unanswered
        for proto in list(self._connections):
            proto._abandon()
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(unanswered)


_REFUSAL_WARNINGS = {
    "draining": "refusing a connection from {peer}: draining ({suppressed} more refused since the last warning)",
    "limit": (
        "refusing a connection from {peer}: {count} open, limits.max_connections {limit} "
        "({suppressed} more refused since the last warning)"
    ),
    "per_peer": (
        "refusing a connection from {peer}: {peer_count} open from that address, "
        "limits.max_connections_per_peer {per_peer} ({suppressed} more refused since the last warning)"
    ),
}
