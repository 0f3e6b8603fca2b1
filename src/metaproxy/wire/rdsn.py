# -*- test-case-name: metaproxy.test.test_wire_rdsn -*-
"""
RDSN native framing: what the C++ client library and the Pegasus shell send.

A frame is a 192-byte C{message_header}, copied from memory and therefore
little-endian, followed by C{body_length} body bytes. The body is the same
thrift binary value a THFT frame carries after its message begin: a field
header (STRUCT, id 0 for replies and RDSN requests), the struct, then STOP.
So this module only frames; the bodies go through the same codecs
(L{metaproxy.wire.querycfg}, L{metaproxy.wire.negotiation}) as THFT.

Layout (offset, size, field; every integer little-endian)::

      0  4  hdr_type "RDSN"        104  8  context bitfield
      4  4  hdr_version            112  8  from_address (rpc_address)
      8  4  hdr_length (192)       120  4  client.timeout_ms (i32)
     12  4  hdr_crc32              124  4  client.thread_hash (i32)
     16  4  body_length            128  8  client.partition_hash
     20  4  body_crc32             136 48  server.error_name, NUL-terminated
     24  8  id (reply match key)   184  4  server.error_code.local_code
     32  8  trace_id               188  4  server.error_code.local_hash
     40 48  rpc_name, NUL-terminated
     88  4  rpc_code.local_code
     92  4  rpc_code.local_hash
     96  4  gpid.app_id, 100 4 gpid.partition_index

Context bits (GCC, LSB first): 0 is_request, 1 is_forwarded, 6-9
serialize_format (1 = THRIFT_BINARY), 10 is_forward_supported, 11
is_backup_request. A C++ client's request carries C{0x441}.

CRC fields are CRC-32C (L{metaproxy.wire.crc32c}); 0 means "not checked",
each on its own. The header CRC covers all 192 bytes with its own field
zeroed and the body CRC already filled in.

Replies are derived from the request header as rDSN's C{create_response} and
C{rpc_engine::reply} do (see L{RdsnFramer}).
"""

import struct

import attrs

from metaproxy.wire import codes, querycfg
from metaproxy.wire.crc32c import crc32c
from metaproxy.wire.frame import FramingError, Reply, Request, ack_name

MAGIC = b"RDSN"
HEADER_LENGTH = 192
#: Both name fields are 48 bytes; a name keeps at most 47 characters.
NAME_FIELD = 48

# context bitfield
IS_REQUEST = 0x001
IS_FORWARDED = 0x002
IS_FORWARD_SUPPORTED = 0x400
IS_BACKUP_REQUEST = 0x800
_FORMAT_SHIFT = 6
_FORMAT_MASK = 0xF << _FORMAT_SHIFT

# serialize formats (rDSN dsn_msg_serialize_format)
FORMAT_INVALID = 0
THRIFT_BINARY = 1
THRIFT_COMPACT = 2
THRIFT_JSON = 3

#: What C{create_request} writes for a C++ client's request: is_request,
#: THRIFT_BINARY, is_forward_supported.
REQUEST_CONTEXT = IS_REQUEST | (THRIFT_BINARY << _FORMAT_SHIFT) | IS_FORWARD_SUPPORTED

_HEADER = struct.Struct("<4sIIIIIQQ48sIIiiQQiiQ48sII")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_TWO_U32 = struct.Struct("<II")
_LENGTHS = struct.Struct("<II")  # body_length, body_crc32 at offset 16

# offsets the reply derivation rewrites
OFF_HDR_CRC = 12
OFF_BODY_LENGTH = 16
OFF_BODY_CRC = 20
OFF_ID = 24
OFF_RPC_NAME = 40
OFF_RPC_CODE = 88
OFF_CONTEXT = 104
OFF_FROM = 112
OFF_ERROR_NAME = 136
OFF_ERROR_CODE = 184


def context_bits(is_request=True, is_forwarded=False, serialize_format=THRIFT_BINARY,
                 is_forward_supported=True, is_backup_request=False):
    """@return: the u64 C{context} value with the given members set."""
    value = (serialize_format & 0xF) << _FORMAT_SHIFT
    if is_request:
        value |= IS_REQUEST
    if is_forwarded:
        value |= IS_FORWARDED
    if is_forward_supported:
        value |= IS_FORWARD_SUPPORTED
    if is_backup_request:
        value |= IS_BACKUP_REQUEST
    return value


def _name_field(text):
    """@return: C{text} as a 48-byte NUL-padded field, cut to 47 characters."""
    raw = text.encode("ascii", "replace")[: NAME_FIELD - 1]
    return raw + b"\x00" * (NAME_FIELD - len(raw))


def _read_name(raw):
    """@return: the text before the NUL of a 48-byte name field. @raise FramingError."""
    nul = raw.find(b"\x00")
    if nul < 0:
        raise FramingError("RDSN name field has no NUL terminator")
    try:
        return raw[:nul].decode("ascii")
    except UnicodeDecodeError:
        raise FramingError("RDSN rpc name is not ASCII") from None


@attrs.frozen
class RdsnHeader:
    """
    A decoded 192-byte RDSN message header.

    The names L{client_timeout} (C{client.timeout_ms}), L{app_id},
    L{partition_index}, L{thread_hash}, L{partition_hash} and
    L{is_backup_request} match L{metaproxy.wire.frame.RequestHeader}, so the
    request path reads either framing the same way. L{raw} keeps the header
    bytes as received: a reply is derived from them.
    """

    id: int
    trace_id: int = 0
    rpc_name: str = ""
    rpc_code: int = 0
    rpc_code_hash: int = 0
    app_id: int = 0
    partition_index: int = 0
    context: int = REQUEST_CONTEXT
    from_address: int = 0
    client_timeout: int = 0
    thread_hash: int = 0
    partition_hash: int = 0
    error_name: str = ""
    error_code: int = 0
    error_code_hash: int = 0
    hdr_version: int = 0
    hdr_length: int = HEADER_LENGTH
    hdr_crc32: int = 0
    body_length: int = 0
    body_crc32: int = 0
    raw: bytes = attrs.field(default=b"", eq=False, repr=False)

    is_request = property(lambda self: bool(self.context & IS_REQUEST), doc="context bit 0")
    is_forwarded = property(lambda self: bool(self.context & IS_FORWARDED), doc="context bit 1")
    is_forward_supported = property(
        lambda self: bool(self.context & IS_FORWARD_SUPPORTED), doc="context bit 10"
    )
    is_backup_request = property(lambda self: bool(self.context & IS_BACKUP_REQUEST), doc="context bit 11")

    @property
    def serialize_format(self):
        """@return: context bits 6-9: how the body is serialised (1: thrift binary)."""
        return (self.context & _FORMAT_MASK) >> _FORMAT_SHIFT

    @classmethod
    def unpack(cls, raw):
        """
        @param raw: exactly 192 header bytes, magic included.
        @return: the decoded L{RdsnHeader}. @raise FramingError: a name
            field without NUL or with non-ASCII bytes, or a bad magic.
        """
        (magic, version, hlen, hcrc, blen, bcrc, mid, trace, name, code, code_hash, app_id, pidx,
         context, from_address, timeout, thread_hash, partition_hash, ename, ecode, ecode_hash) = (
            _HEADER.unpack(raw)
        )
        if magic != MAGIC:
            raise FramingError(f"bad magic {magic!r} on an RDSN connection")
        return cls(
            mid, trace, _read_name(name), code, code_hash, app_id, pidx, context, from_address,
            timeout, thread_hash, partition_hash, _read_name(ename), ecode, ecode_hash,
            version, hlen, hcrc, blen, bcrc, bytes(raw),
        )

    def pack(self, body_length=None):
        """
        @param body_length: overrides L{body_length} when given.
        @return: the 192 header bytes for these fields (the CRC fields as
            they are; see L{with_crc}).
        """
        return _HEADER.pack(
            MAGIC, self.hdr_version, self.hdr_length, self.hdr_crc32,
            self.body_length if body_length is None else body_length, self.body_crc32,
            self.id, self.trace_id, _name_field(self.rpc_name), self.rpc_code, self.rpc_code_hash,
            self.app_id, self.partition_index, self.context, self.from_address, self.client_timeout,
            self.thread_hash, self.partition_hash, _name_field(self.error_name), self.error_code,
            self.error_code_hash,
        )


def header_crc(header):
    """@return: the CRC-32C of 192 header bytes with the hdr_crc32 field taken as 0."""
    return crc32c(
        header[OFF_BODY_LENGTH:HEADER_LENGTH], crc32c(b"\x00\x00\x00\x00", crc32c(header[:OFF_HDR_CRC]))
    )


def with_crc(frame):
    """
    @param frame: a whole RDSN frame (header and body) with CRC fields 0.
    @return: the frame as a sender with CRC required writes it: body_crc32
        first, then hdr_crc32 over the header that already holds it.
    """
    out = bytearray(frame)
    _U32.pack_into(out, OFF_BODY_CRC, crc32c(out[HEADER_LENGTH:]))
    _U32.pack_into(out, OFF_HDR_CRC, header_crc(out[:HEADER_LENGTH]))
    return bytes(out)


def encode_request(name, id, body, trace_id=0, client_timeout=0, from_address=0, context=REQUEST_CONTEXT,
                   app_id=0, partition_index=0, thread_hash=0, partition_hash=0, crc=False):
    """
    Build one RDSN request frame as the C++ client's C{create_request} and
    C{rpc_engine::call} do.

    @param body: the marshalled value (C{0c 00 00 <struct> 00} for meta RPCs).
    @param crc: fill both CRC fields, as a task with CRC required does.
    @return: the frame as L{bytes}.
    """
    header = RdsnHeader(
        id, trace_id, name, app_id=app_id, partition_index=partition_index, context=context,
        from_address=from_address, client_timeout=client_timeout, thread_hash=thread_hash,
        partition_hash=partition_hash,
    )
    frame = header.pack(len(body)) + bytes(body)
    return with_crc(frame) if crc else frame


def address_value(address):
    """
    @param address: a Twisted address (C{transport.getHost()}), or L{None}.
    @return: its rpc_address value for an IPv4 address, else 0 (a C++
        receiver fills a zero C{from_address} with the peer's address).
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if getattr(address, "type", None) != "TCP" or not isinstance(port, int):
        return 0
    try:
        return querycfg.rpc_address(host, port)
    except ValueError:
        return 0


class _FrameSplitter:
    """
    Splits an RDSN byte stream into C{(RdsnHeader, body)} frames, linearly:
    one growing L{bytearray} and an offset, compacted only when the consumed
    part is at least half of it.

    Checks, each raising L{FramingError} (the stream cannot go on): the
    magic of every frame (so THFT bytes on an RDSN connection are refused as
    soon as 4 bytes are in), the declared size against C{max_frame_bytes}
    and a non-zero hdr_crc32 as soon as the header is complete, a non-zero
    body_crc32 once the body is, and L{_accept} (what the side expects).
    """

    def __init__(self, max_frame_bytes=1 << 20):
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._pos = 0

    def buffered(self):
        """@return: how many bytes of an incomplete frame are held."""
        return len(self._buf) - self._pos

    def clear(self):
        """Forget the incomplete frame held (the stream is being abandoned)."""
        self._buf = bytearray()
        self._pos = 0

    def held_bytes(self):
        """@return: the bytes of the incomplete frame held (a copy)."""
        return bytes(self._buf[self._pos:])

    def feed(self, data):
        """
        Add bytes and decode every complete frame.

        @return: a L{list} of decoded frames, possibly empty.
        @raise FramingError: the stream is broken (the frames before the bad
            one are lost with the exception; use L{feed_iter} to keep them).
        """
        return list(self.feed_iter(data))

    def feed_iter(self, data):
        """
        Like L{feed}, but yield each frame as soon as it is decoded, so that
        frames before a broken one are still handled. The decoder's state is
        updated before each yield: stopping early loses nothing.
        """
        buf = self._buf
        pos = self._pos
        if pos and pos * 2 >= len(buf):
            del buf[:pos]
            self._pos = pos = 0
        buf += data
        limit = self.max_frame_bytes
        try:
            while True:
                avail = len(buf) - pos
                if avail < 4:
                    break
                if buf[pos : pos + 4] != MAGIC:
                    raise FramingError(f"bad magic {bytes(buf[pos:pos + 4])!r} on an RDSN connection")
                if avail < HEADER_LENGTH:
                    break
                body_start = pos + HEADER_LENGTH
                blen, bcrc = _LENGTHS.unpack_from(buf, pos + OFF_BODY_LENGTH)
                if HEADER_LENGTH + blen > limit:
                    raise FramingError(f"RDSN frame of {blen} body bytes exceeds the limit")
                hcrc = _U32.unpack_from(buf, pos + OFF_HDR_CRC)[0]
                if hcrc and header_crc(buf[pos:body_start]) != hcrc:
                    raise FramingError("RDSN header CRC mismatch")
                end = body_start + blen
                if end > len(buf):
                    break
                body = bytes(buf[body_start:end])
                if bcrc and crc32c(body) != bcrc:
                    raise FramingError("RDSN body CRC mismatch")
                header = RdsnHeader.unpack(bytes(buf[pos:body_start]))
                item = self._accept(header, body)
                self._pos = pos = end
                yield item
        except FramingError:
            del buf[:]
            self._pos = 0
            raise
        if pos == len(buf):
            del buf[:]
            self._pos = 0

    def _accept(self, header, body):
        return header, body


class RdsnRequestDecoder(_FrameSplitter):
    """
    Splits a client's RDSN stream into L{metaproxy.wire.frame.Request}s,
    with the interface of L{metaproxy.wire.frame.RequestDecoder}.

    Each request has an L{RdsnHeader} as C{header}, the header's C{id} as
    C{seqid} (the key the client matches the reply by), and the whole body
    as C{args}. A frame that is not a request (is_request clear) is a
    L{FramingError}: a client has no business sending replies.
    """

    def _accept(self, header, body):
        if not header.context & IS_REQUEST:
            raise FramingError("RDSN frame from a client is not a request (is_request=0)")
        return Request(header, header.rpc_name, header.id, body)


@attrs.frozen
class RdsnResponse:
    """One decoded RDSN reply as a client sees it: the header and the body."""

    header: RdsnHeader
    body: bytes

    @property
    def rpc_error(self):
        """@return: the rpc-level error name (C{server.error_name})."""
        return self.header.error_name

    @property
    def name(self):
        """@return: the reply's rpc name."""
        return self.header.rpc_name

    @property
    def seqid(self):
        """@return: the id the reply is matched by."""
        return self.header.id


class RdsnResponseDecoder(_FrameSplitter):
    """Splits a server's RDSN stream into L{RdsnResponse}s (the client side)."""

    def _accept(self, header, body):
        if header.context & IS_REQUEST:
            raise FramingError("RDSN frame from a server is a request (is_request=1)")
        return RdsnResponse(header, body)


_ZERO_CODE = _TWO_U32.pack(0, 0)


@attrs.define
class RdsnFramer:
    """
    Encodes replies on an RDSN connection, as a real server derives them
    from the request (C{message_ex::create_response}, C{rpc_engine::reply}):

     - the whole request header is copied (hdr_type, version, length, id,
       trace_id, gpid, client fields all echoed);
     - is_request is cleared; is_forwarded, serialize_format,
       is_forward_supported and is_backup_request are kept;
     - rpc_name becomes C{<name>_ACK} (47 characters at most), the rpc
       error goes to C{server.error_name};
     - rpc_code and error_code are C{{0, 0}}: with local_hash 0 the C++
       receiver resolves both by name;
     - from_address is L{from_address}, the proxy's own listening address;
     - body_length is set and both CRC fields are 0 (rDSN computes CRCs
       only for tasks that require them; meta RPCs do not).

    The body is the reply's L{native_body<metaproxy.wire.frame.Reply>} when
    it has one: query_cfg answers relayed from a meta keep their C{hp_*}
    fields for C++ clients (see L{metaproxy.frontend.resolver.relay_reply}).

    @ivar from_address: the rpc_address value written in every reply.
    """

    from_address: int = 0

    name = "RDSN"

    def refuse(self, request):
        """
        @return: the reply a request gets without being dispatched, or
            L{None} to dispatch it. A body in any serialize_format other than
            THRIFT_BINARY is refused with rpc-level
            C{ERR_INVALID_PARAMETERS} and no body (a real meta aborts on
            unsupported formats; it must never be forwarded).
        """
        if request.header.serialize_format != THRIFT_BINARY:
            return _BAD_FORMAT
        return None

    def encode(self, request, reply, rpc_error):
        """
        @param request: the L{Request} with an L{RdsnHeader} being answered.
        @param reply: a L{metaproxy.wire.frame.Reply}.
        @param rpc_error: the rpc-level error name to send.
        @return: the reply frame as L{bytes}.
        """
        body = getattr(reply, "native_body", None)
        if body is None:
            body = reply.body
        body = body or b""
        out = bytearray(request.header.raw)
        _U32.pack_into(out, OFF_HDR_CRC, 0)
        _LENGTHS.pack_into(out, OFF_BODY_LENGTH, len(body), 0)
        out[OFF_RPC_NAME : OFF_RPC_NAME + NAME_FIELD] = _name_field(ack_name(request.name))
        out[OFF_RPC_CODE : OFF_RPC_CODE + 8] = _ZERO_CODE
        context = _U64.unpack_from(out, OFF_CONTEXT)[0] & ~IS_REQUEST
        _U64.pack_into(out, OFF_CONTEXT, context)
        _U64.pack_into(out, OFF_FROM, self.from_address)
        out[OFF_ERROR_NAME : OFF_ERROR_NAME + NAME_FIELD] = _name_field(rpc_error)
        out[OFF_ERROR_CODE : OFF_ERROR_CODE + 8] = _ZERO_CODE
        out += body
        return bytes(out)


_BAD_FORMAT = Reply(None, codes.ERR_INVALID_PARAMETERS)


def decode_response(data):
    """@return: the single L{RdsnResponse} in C{data}. @raise FramingError: if it is not exactly one."""
    decoder = RdsnResponseDecoder(max_frame_bytes=1 << 30)
    out = decoder.feed(data)
    if len(out) != 1 or decoder.buffered():
        raise FramingError(f"expected one RDSN reply, got {len(out)} and {decoder.buffered()} spare bytes")
    return out[0]
