# -*- test-case-name: metaproxy.test.test_backend_client -*-
"""
The client end of one TCP connection to a Pegasus meta server.

Many calls may be in flight on one connection (pipelining); each gets its
own seqid and the answers are matched by seqid, in whatever order they
come. A reply nobody waits for any more (cancelled, timed out) is dropped.
A byte stream that cannot be parsed drops the connection, because nothing
after the bad frame can be trusted.
"""

import attrs
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from metaproxy.transport import send_now, set_nodelay
from metaproxy.wire import frame

log = Logger()

_I32_MAX = 0x7FFFFFFF
_I32_MIN = -0x80000000


class CallError(Exception):
    """A single backend call failed; the meta may still be healthy."""


class NotConnected(CallError):
    """The connection to this meta is down right now (the call was not sent)."""


class CallTimedOut(CallError):
    """The meta did not answer the call within its deadline."""


class ConnectionClosed(CallError):
    """The connection closed before the meta answered the call."""


class WrongReply(CallError):
    """
    The meta answered the call's seqid with a reply for another rpc (its
    name is not the request's C{<name>_ACK}): not taken as the answer.
    """


class ReplyTooLarge(CallError):
    """
    The meta's reply declared more bytes than C{max_frame_bytes}; it was
    skipped unread (the connection stays usable).
    """


#: The largest reply accepted from a meta by default (C{limits.max_reply_bytes}).
#: A 65 536-partition table with 3 replicas answers about 6.0 MB, 10.4 MB with
#: the C{hp_*} fields of Pegasus >= 2.6; 16 MiB leaves room above that.
DEFAULT_MAX_REPLY_BYTES = 16 << 20


def next_seqid(seqid):
    """
    @param seqid: the last seqid used.
    @return: the one after it, wrapping from the largest i32 to the smallest
        (as Go's C{atomic.AddInt32} does), so it always fits the wire field.
    """
    return _I32_MIN if seqid >= _I32_MAX else seqid + 1


class _Pending:
    """
    One call waiting for its reply: a L{Deferred} (L{MetaClientProtocol.call})
    or C{done(arg, response, error)} (L{MetaClientProtocol.call_then}); for
    the latter it is also the call's cancel handle.
    """

    __slots__ = ("deferred", "timer", "done", "arg", "owner", "seqid", "ack")

    def __init__(self, deferred, done=None, arg=None, owner=None, seqid=0, ack=""):
        self.deferred = deferred
        self.ack = ack
        self.timer = None
        self.done = done
        self.arg = arg
        self.owner = owner
        self.seqid = seqid

    def settle(self, response, error):
        """Deliver the reply (or the error) to whoever waits."""
        d = self.deferred
        if d is None:
            done, arg, self.done, self.arg = self.done, self.arg, None, None
            if done is not None:
                done(arg, response, error)
        elif error is None:
            d.callback(response)
        else:
            d.errback(error)

    def cancel(self):
        """Forget the call (L{call_then}'s handle): a late reply is dropped, C{done} is not called."""
        pending = self.owner._pending
        if pending.get(self.seqid) is self:
            del pending[self.seqid]
        self.done = self.arg = None


@attrs.define(eq=False, slots=False)
class MetaClientProtocol(Protocol):
    """
    Sends THFT (version 0) requests to a meta server and matches the
    replies to them by seqid.

    @ivar clock: the L{twisted.internet.interfaces.IReactorTime} that runs
        per-call deadlines.
    @ivar max_frame_bytes: the largest reply accepted. A larger one fails
        the call it answers with L{ReplyTooLarge} as soon as its first
        bytes arrive (logged, naming the meta); the rest of it is skipped
        without being held, so other calls on the connection go on.
    @ivar on_lost: called with this protocol once the connection is gone
        (after every pending call has failed), or L{None}.
    @ivar stray_replies: how many replies matched no pending call.
    @ivar header_version: the THFT request header version, 0 (as metaproxy
        and most clients send) or 1 (as Java 2.x sends).
    @ivar partition_hash: the header's C{client_partition_hash} (metaproxy
        sends L{metaproxy.wire.clusterinfo.LOOP_MARKER} to metas).
    """

    clock: object
    max_frame_bytes: int = DEFAULT_MAX_REPLY_BYTES
    on_lost: object = None
    header_version: int = 0
    partition_hash: int = 0
    stray_replies: int = attrs.field(init=False, default=0)
    _seqid: int = attrs.field(init=False, default=0)
    _pending: dict = attrs.field(init=False, factory=dict)
    _decoder: object = attrs.field(init=False, default=None)
    _open: bool = attrs.field(init=False, default=False)

    def connectionMade(self):
        """Disable Nagle (requests are small and latency-bound) and accept calls."""
        self._decoder = frame.ResponseDecoder(self.max_frame_bytes)
        self._open = True
        set_nodelay(self.transport)

    def unwrapped(self):
        """
        @return: this protocol itself, also when called through a wrapper
            (L{ClientService} hands out a proxy object).
        """
        return self

    def is_open(self):
        """@return: L{True} while calls can be sent on this connection."""
        return self._open

    def pending_count(self):
        """@return: how many calls are waiting for their reply."""
        return len(self._pending)

    def call(self, name, args, timeout=None, client_timeout_ms=0):
        """
        Send one request and wait for its reply.

        @param name: the rpc name, e.g. C{RPC_CM_QUERY_PARTITION_CONFIG_BY_INDEX}.
        @param args: the encoded args struct.
        @param timeout: seconds to wait for the reply, or L{None} to wait
            until the connection closes or the caller cancels.
        @param client_timeout_ms: the C{client_timeout} header field.

        @return: a L{Deferred} that fires with the L{frame.Response}, or
            fails with L{NotConnected} (not sent), L{CallTimedOut},
            L{ConnectionClosed}, L{ReplyTooLarge} or L{WrongReply} (a reply
            named for another rpc). Cancelling it forgets the call; a late reply
            is then dropped.
        """
        if not self._open:
            return defer.fail(NotConnected("connection is not open"))
        seqid = self._take_seqid()
        pending = self._pending

        def cancel(d):
            entry = pending.pop(seqid, None)
            if entry is not None and entry.timer is not None:
                entry.timer.cancel()

        d = defer.Deferred(cancel)
        entry = _Pending(d, ack=frame.ack_name(name))
        if timeout is not None:
            entry.timer = self.clock.callLater(timeout, self._expire, seqid, timeout)
        pending[seqid] = entry
        self._send(name, seqid, args, client_timeout_ms)
        return d

    def call_then(self, name, args, client_timeout_ms, done, arg):
        """
        L{call} without a L{Deferred} nor a timer (the caller keeps the
        deadline): C{done(arg, response, error)} is called once, with the
        L{frame.Response} and L{None}, or L{None} and a L{CallError}
        (possibly before this returns), unless the handle is cancelled first.

        @return: the cancel handle (an object with C{cancel()}).
        """
        if not self._open:
            entry = _Pending(None, done, arg, self, 0)
            entry.settle(None, NotConnected("connection is not open"))
            return entry
        seqid = self._take_seqid()
        entry = self._pending[seqid] = _Pending(None, done, arg, self, seqid, frame.ack_name(name))
        self._send(name, seqid, args, client_timeout_ms)
        return entry

    def _take_seqid(self):
        """@return: the next seqid no pending call holds (the last one taken is remembered)."""
        seqid = next_seqid(self._seqid)
        pending = self._pending
        while seqid in pending:  # only after ~4e9 calls with one still pending
            seqid = next_seqid(seqid)
        self._seqid = seqid
        return seqid

    def _send(self, name, seqid, args, client_timeout_ms):
        send_now(
            self.transport,
            frame.encode_request(
                name, seqid, args, version=self.header_version, client_timeout=max(0, int(client_timeout_ms)),
                partition_hash=self.partition_hash,
            ),
        )

    def _expire(self, seqid, timeout):
        entry = self._pending.pop(seqid, None)
        if entry is not None:
            entry.timer = None
            entry.settle(None, CallTimedOut(f"no reply within {timeout:.3f}s"))

    def dataReceived(self, data):
        """Decode replies and fire the calls they answer; drop the link on a framing error."""
        try:
            responses = self._decoder.feed(data)
        except frame.FramingError as e:
            log.warn(
                "dropping connection to meta {peer}: {error}",
                peer=_peer(self.transport),
                error=str(e),
            )
            self._open = False
            self.transport.abortConnection()
            return
        pending = self._pending
        for response in responses:
            entry = pending.pop(response.seqid, None)
            if isinstance(response, frame.OversizedResponse):
                self._oversized(response, entry)
                continue
            if entry is None:
                self.stray_replies += 1
                continue
            if entry.timer is not None:
                entry.timer.cancel()
            if response.name != entry.ack:
                why = (f"meta {_peer(self.transport)} answered seqid {response.seqid} with {response.name!r}, "
                       f"expected {entry.ack}")
                log.warn("{why}; the call fails", why=why)
                entry.settle(None, WrongReply(why))
                continue
            entry.settle(response, None)

    def _oversized(self, response, entry):
        why = (
            f"meta {_peer(self.transport)} sent a reply of {response.length} bytes to {response.name} "
            f"(seqid {response.seqid}), over the limit of {self.max_frame_bytes} (limits.max_reply_bytes)"
        )
        log.warn("{why}; the call fails and the reply is skipped", why=why)
        if entry is None:
            self.stray_replies += 1
            return
        if entry.timer is not None:
            entry.timer.cancel()
        entry.settle(None, ReplyTooLarge(why))

    def connectionLost(self, reason):
        """Fail every pending call with L{ConnectionClosed}."""
        self._open = False
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if entry.timer is not None:
                entry.timer.cancel()
            entry.settle(None, ConnectionClosed(reason.getErrorMessage()))
        if self.on_lost is not None:
            self.on_lost(self)


def _peer(transport):
    """@return: C{"host:port"} of the meta at the other end, or C{"?"}."""
    try:
        peer = transport.getPeer()
        return f"{peer.host}:{peer.port}"
    except Exception:
        return "?"
