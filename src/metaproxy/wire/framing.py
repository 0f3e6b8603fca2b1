# -*- test-case-name: metaproxy.test.test_server_rdsn -*-
"""
Per-connection framing: the first 4 bytes pick THFT or RDSN for good.

As in rDSN's C{rpc_session::prepare_parser}, a connection's first 4 bytes
choose its parser for the whole life of the connection: C{THFT} (Java, Go,
Python, NodeJS, Scala) or C{RDSN} (the C++ client library and the Pegasus
shell). Anything else is a L{FramingError}. Each decoder checks the magic of
every frame, so a connection that switches framings is refused too.

A framing is a decoder (bytes in, L{metaproxy.wire.frame.Request}s out) and
a I{framer}, which encodes replies for that framing and may refuse a request
before it is dispatched.
"""

import attrs

from metaproxy.wire import frame, rdsn
from metaproxy.wire.frame import FramingError


@attrs.define
class ThftFramer:
    """Encodes replies on a THFT connection; it refuses nothing."""

    name = "THFT"

    def refuse(self, request):
        """@return: L{None}: every decoded THFT request is dispatched."""
        return None

    def encode(self, request, reply, rpc_error):
        """
        @param request: the L{metaproxy.wire.frame.Request} being answered.
        @param reply: a L{metaproxy.wire.frame.Reply}.
        @param rpc_error: the rpc-level error name to send.
        @return: the THFT reply frame as L{bytes}.
        """
        return frame.encode_reply(frame.ack_name(request.name), request.seqid, reply.body, rpc_error)


THFT_FRAMER = ThftFramer()


class FramingSelector:
    """
    A request decoder for a new connection, with the interface of
    L{metaproxy.wire.frame.RequestDecoder}: it holds the first bytes until
    it has 4, then hands everything to the decoder for that framing.

    @ivar framer: the reply encoder of the chosen framing (THFT's until one
        is chosen; nothing is answered before that).
    @ivar local_address: the connection's own address (C{transport.getHost()}),
        which RDSN replies carry as C{from_address}; set it before feeding.
    """

    # One per client connection: no instance dict.
    __slots__ = ("max_frame_bytes", "_counts", "framer", "local_address", "_decoder", "_head")

    def __init__(self, max_frame_bytes=1 << 20, counts=None):
        """
        @param counts: a L{dict} of framing name (C{"THFT"}, C{"RDSN"}) to
            connections, bumped when this connection's framing is chosen.
        """
        self.max_frame_bytes = max_frame_bytes
        self._counts = counts
        self.framer = THFT_FRAMER
        self.local_address = None
        self._decoder = None
        self._head = b""

    @property
    def framing(self):
        """@return: C{"THFT"} or C{"RDSN"} once chosen, else L{None}."""
        return None if self._decoder is None else self.framer.name

    def buffered(self):
        """@return: how many bytes of an incomplete frame are held."""
        if self._decoder is None:
            return len(self._head)
        return self._decoder.buffered()

    def clear(self):
        """Forget the incomplete frame held (the stream is being abandoned)."""
        self._head = b""
        if self._decoder is not None:
            self._decoder.clear()

    def held_bytes(self):
        """
        @return: the bytes of the incomplete frame held (a copy), including
            the first bytes while no framing is chosen yet: fed to a fresh
            selector they choose the same framing again.
        """
        if self._decoder is None:
            return self._head
        return self._decoder.held_bytes()

    def feed(self, data):
        """@return: a L{list} of the requests decoded. @raise FramingError: see L{feed_iter}."""
        return list(self.feed_iter(data))

    def feed_iter(self, data):
        """
        Yield each request decoded from C{data} (and what came before).

        @raise FramingError: the first 4 bytes are neither C{THFT} nor
            C{RDSN}, or the chosen decoder found the stream broken.
        """
        if self._decoder is None:
            head = self._head + bytes(data)
            if len(head) < 4:
                self._head = head
                return
            self._head = b""
            magic = head[:4]
            if magic == frame.MAGIC:
                self._decoder = frame.RequestDecoder(self.max_frame_bytes)
            elif magic == rdsn.MAGIC:
                self._decoder = rdsn.RdsnRequestDecoder(self.max_frame_bytes)
                self.framer = rdsn.RdsnFramer(rdsn.address_value(self.local_address))
            else:
                raise FramingError(f"bad magic {magic!r}: neither THFT nor RDSN")
            counts = self._counts
            if counts is not None:
                counts[self.framer.name] = counts.get(self.framer.name, 0) + 1
            data = head
        yield from self._decoder.feed_iter(data)
