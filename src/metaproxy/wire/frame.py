# -*- test-case-name: metaproxy.test.test_wire_frame -*-
"""
THFT framing: what clients send a meta server, and what it sends back.

Requests: C{"THFT"}, a header (version 0: 48 fixed bytes; version 1: 16
bytes plus a thrift meta struct), then a thrift message (CALL, name, seqid,
args struct). Versions may be mixed on one connection, message by message.

Replies: an i32 length that counts its own 4 bytes, the rpc error name, a
strict REPLY message begin named C{<request name>_ACK}, the echoed seqid,
then the body (absent for rpc-level errors).

Anything that would leave the stream desynchronised raises L{FramingError}:
the caller must close the connection, as a real meta server does.
"""

from typing import Optional
import struct

import attrs

from metaproxy.wire import binary
from metaproxy.wire.binary import DecodeError, Reader

MAGIC = b"THFT"
V0_HEADER_LENGTH = 48
V1_FIXED_LENGTH = 16

_VERSION_MASK = 0xFFFF0000
_VERSION_1 = 0x80010000
T_CALL, T_REPLY, T_EXCEPTION, T_ONEWAY = 1, 2, 3, 4

_V0 = struct.Struct(">4siiiiiiiiiq")  # magic .. partition_hash
_V1 = struct.Struct(">4siii")  # magic, version, meta_length, body_length
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")

#: The longest rpc name rDSN keeps (its header field is 48 bytes with NUL).
MAX_RPC_NAME = 47


class FramingError(Exception):
    """
    The stream cannot be parsed further (bad magic, version, header length,
    oversized frame, or a message begin that is not a CALL): close it.
    """


@attrs.frozen
class RequestHeader:
    """
    The routing fields of a THFT request header, either version.

    C{client_timeout} is in milliseconds (0: not given). Fields a v1 meta
    struct leaves out are 0 / L{False}.
    """

    version: int = 0
    app_id: int = 0
    partition_index: int = 0
    client_timeout: int = 0
    thread_hash: int = 0
    partition_hash: int = 0
    is_backup_request: bool = False


@attrs.frozen
class Request:
    """
    One decoded request: the header, the rpc name, the seqid (0 is a valid
    seqid) and the raw args struct bytes that follow the message begin.
    C{oneway} requests expect no reply.
    """

    header: RequestHeader
    name: str
    seqid: int
    args: bytes
    oneway: bool = False


@attrs.frozen
class Reply:
    """
    What a handler answers: the rpc-level error name and the body (the
    result struct with its C{0c 00 00} wrapper), or no body for rpc-level
    errors. The framing adds the C{_ACK} name and the client's seqid.
    """

    body: Optional[bytes]
    rpc_error: str = "ERR_OK"
    #: The app-level error in C{body}, when the handler already knows it
    #: (metrics use it instead of decoding the body again).
    app_error: Optional[str] = attrs.field(default=None, eq=False)
    #: The body as the backend sent it, when C{body} was rewritten for THFT
    #: clients (C{hp_*} fields stripped); RDSN replies send this instead.
    native_body: Optional[bytes] = attrs.field(default=None, eq=False)


@attrs.frozen
class Response:
    """One decoded reply as a client sees it."""

    rpc_error: str
    name: str
    seqid: int
    body: bytes


def ack_name(name):
    """@return: the reply name a meta server gives a request called C{name}."""
    return (name + "_ACK")[:MAX_RPC_NAME]


def _wrap32(value):
    """@return: C{value} wrapped to a signed 32-bit integer, as C++/Java arithmetic does."""
    return ((value + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def _parse_meta_v1(data, start, end):
    r = Reader(data, start, end)
    app_id = partition_index = client_timeout = partition_hash = 0
    backup = False
    while True:
        ttype, fid = r.field()
        if ttype == binary.STOP:
            break
        if fid == 1 and ttype == binary.I32:
            app_id = r.i32()
        elif fid == 2 and ttype == binary.I32:
            partition_index = r.i32()
        elif fid == 3 and ttype == binary.I32:
            client_timeout = r.i32()
        elif fid == 4 and ttype == binary.I64:
            partition_hash = r.i64()
        elif fid == 5 and ttype == binary.BOOL:
            backup = r.bool()
        else:
            r.skip(ttype)
    if r.pos != end:
        raise DecodeError("trailing bytes after request meta")
    return RequestHeader(
        version=1,
        app_id=app_id,
        partition_index=partition_index,
        client_timeout=client_timeout,
        thread_hash=_wrap32(app_id * 7919 + partition_index),
        partition_hash=partition_hash,
        is_backup_request=backup,
    )


def _parse_message_begin(data, start, end):
    """@return: C{(name, mtype, seqid, args_start)}."""
    r = Reader(data, start, end)
    first = r.i32()
    if first < 0:
        if (first & _VERSION_MASK) != _VERSION_1:
            raise DecodeError(f"bad thrift message version {first & 0xFFFFFFFF:#x}")
        mtype = first & 0xFF
        name = r.binary()
    else:  # non-strict form: name length, name, type byte
        name = r.take(first)
        mtype = r.i8()
    seqid = r.i32()
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("rpc name is not ASCII") from None
    return text, mtype, seqid, r.pos


class _Held:
    """
    The bytes a decoder holds between reads, as a list of the chunks
    received, joined only once they add up to what the frame at their
    start needs. A frame arriving in k pieces thus costs O(its size + k):
    no piece is copied again on each read, and a growing buffer leaves no
    trail of discarded copies (which PyPy's GC would keep until its next
    major collection).

    @ivar need: bytes needed before decoding is worth trying again (the
        length of the frame at the start of the held bytes, or of the part
        of its header that gives the length).
    """

    __slots__ = ("chunks", "size", "need")

    def __init__(self):
        self.chunks = []
        self.size = 0
        self.need = 0

    def __len__(self):
        return self.size

    def join(self, data):
        """
        @return: the bytes to decode from offset 0: C{data} itself when
            nothing is held, else the held bytes and C{data} joined; or
            L{None} while they are still short of L{need} (C{data} is then
            held).
        """
        if not self.size:
            return data
        self.chunks.append(data)
        self.size += len(data)
        if self.size < self.need:
            return None
        joined = b"".join(self.chunks)
        self.chunks = []
        self.size = 0
        return joined

    def keep(self, source, pos, need):
        """
        Hold C{source[pos:]} (what L{join} returned, from C{pos} on) until
        at least C{need} bytes are held.
        """
        if pos >= len(source):
            self.clear()
            return
        rest = source[pos:] if pos else source
        self.chunks = [rest if isinstance(rest, bytes) else bytes(rest)]
        self.size = len(rest)
        self.need = need

    def held_bytes(self):
        """@return: the bytes held, joined (a copy; nothing is consumed)."""
        return b"".join(self.chunks)

    def clear(self):
        """Drop everything held."""
        self.chunks = []
        self.size = 0
        self.need = 0


class RequestDecoder:
    """
    Splits a client's byte stream into L{Request}s.

    Decoding is linear: N bytes in k pieces cost O(N + k) (a partial frame
    is held as the pieces received, joined once when complete).

    @ivar max_frame_bytes: the largest frame (header and body) accepted;
        a larger declared length is a L{FramingError} before anything is
        buffered for it.
    """

    def __init__(self, max_frame_bytes=1 << 20):
        self.max_frame_bytes = max_frame_bytes
        self._held = _Held()

    def buffered(self):
        """@return: how many bytes of an incomplete frame are held."""
        return len(self._held)

    def clear(self):
        """Forget the incomplete frame held (the stream is being abandoned)."""
        self._held.clear()

    def held_bytes(self):
        """@return: the bytes of the incomplete frame held (a copy)."""
        return self._held.held_bytes()

    def feed(self, data):
        """
        Add bytes and decode every complete frame.

        @return: a L{list} of L{Request}, possibly empty.
        @raise FramingError: the stream is broken; the frames before the bad
            one are lost with the exception, so callers that want them should
            feed small chunks or use L{feed_iter}.
        """
        return list(self.feed_iter(data))

    def feed_iter(self, data):
        """
        Like L{feed}, but yield each request as soon as it is decoded, so
        that requests before a broken frame are still answered.

        A bad magic or header version is detected from the first 8 bytes of
        a frame, without waiting for a whole header. A caller may stop
        iterating early: the bytes not decoded yet stay held.
        """
        held = self._held
        buf = held.join(data)
        if buf is None:
            return
        pos = 0
        need = 8
        n = len(buf)
        limit = self.max_frame_bytes
        try:
            while n - pos >= 8:
                need = 8
                if buf[pos : pos + 4] != MAGIC:
                    raise FramingError(f"bad magic {bytes(buf[pos:pos + 4])!r}")
                version = _I32.unpack_from(buf, pos + 4)[0]
                if version == 0:
                    if n - pos < V0_HEADER_LENGTH:
                        need = V0_HEADER_LENGTH
                        break
                    hlen, _, blen = _V0_LENGTHS.unpack_from(buf, pos + 8)
                    if hlen != V0_HEADER_LENGTH:
                        raise FramingError(f"v0 header length {hlen}, expected 48")
                    if blen < 0 or V0_HEADER_LENGTH + blen > limit:
                        raise FramingError(f"frame of {blen} body bytes exceeds the limit")
                    body_start = pos + V0_HEADER_LENGTH
                    end = body_start + blen
                    if end > n:
                        need = end - pos
                        break
                    key = bytes(buf[pos + 24 : body_start])
                    header = _V0_HEADERS.get(key)
                    if header is None:
                        header = RequestHeader(0, *_V0_ROUTING.unpack(key))
                        _remember(_V0_HEADERS, key, header)
                elif version == 1:
                    if n - pos < V1_FIXED_LENGTH:
                        need = V1_FIXED_LENGTH
                        break
                    mlen, blen = _V1_LENGTHS.unpack_from(buf, pos + 8)
                    if mlen < 0 or blen < 0 or V1_FIXED_LENGTH + mlen + blen > limit:
                        raise FramingError(f"v1 frame (meta {mlen}, body {blen}) exceeds the limit")
                    body_start = pos + V1_FIXED_LENGTH + mlen
                    end = body_start + blen
                    if end > n:
                        need = end - pos
                        break
                    key = bytes(buf[pos + V1_FIXED_LENGTH : body_start])
                    header = _V1_HEADERS.get(key)
                    if header is None:
                        try:
                            header = _parse_meta_v1(buf, pos + V1_FIXED_LENGTH, body_start)
                        except DecodeError as e:
                            raise FramingError(f"bad v1 request meta: {e}") from None
                        if mlen <= _MAX_CACHED_META:
                            _remember(_V1_HEADERS, key, header)
                else:
                    raise FramingError(f"unsupported THFT header version {version}")
                # The strict message begin every client writes, inline;
                # anything else goes through the general parser.
                first = _I32.unpack_from(buf, body_start)[0] if blen >= 12 else 0
                if first < 0 and (first & _VERSION_MASK) == _VERSION_1:
                    nlen = _I32.unpack_from(buf, body_start + 4)[0]
                    name_end = body_start + 8 + nlen
                    if nlen < 0 or name_end + 4 > end:
                        raise FramingError("bad thrift message begin: name overruns the frame")
                    raw = bytes(buf[body_start + 8 : name_end])
                    name = _NAMES.get(raw)
                    if name is None:
                        try:
                            name = raw.decode("ascii")
                        except UnicodeDecodeError:
                            raise FramingError("bad thrift message begin: rpc name is not ASCII") from None
                        _remember(_NAMES, raw, name)
                    mtype = first & 0xFF
                    seqid = _I32.unpack_from(buf, name_end)[0]
                    args_start = name_end + 4
                else:
                    try:
                        name, mtype, seqid, args_start = _parse_message_begin(buf, body_start, end)
                    except DecodeError as e:
                        raise FramingError(f"bad thrift message begin: {e}") from None
                if mtype != T_CALL and mtype != T_ONEWAY:
                    raise FramingError(f"thrift message type {mtype} is not CALL")
                pos = end
                yield Request(header, name, seqid, bytes(buf[args_start:end]), mtype == T_ONEWAY)
        except FramingError:
            buf = None
            held.clear()
            raise
        finally:
            if buf is not None:
                held.keep(buf, pos, need)


_V0_LENGTHS = struct.Struct(">iii")  # hdr_length, hdr_crc32, body_length
_V0_ROUTING = struct.Struct(">iiiiq")  # app_id .. client_partition_hash
_V1_LENGTHS = struct.Struct(">ii")  # meta_length, body_length
# Clients send the same header bytes and rpc names over and over: decoded
# values are kept by their raw bytes (bounded; emptied when full).
_V0_HEADERS = {}
_V1_HEADERS = {}
_NAMES = {}
_CACHE_SIZE = 512
_MAX_CACHED_META = 64


def _remember(cache, key, value):
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value


_v0_request = struct.Struct(">4siiiiiiiiiq")
_CALL_BEGIN = _U32.pack(0x80010001)


def encode_request(
    name,
    seqid,
    args,
    version=0,
    app_id=0,
    partition_index=0,
    client_timeout=0,
    thread_hash=None,
    partition_hash=0,
    is_backup_request=False,
):
    """
    Build one THFT request frame, as a client (or metaproxy towards a meta
    server) sends it.

    @param args: the encoded args struct.
    @param version: 0 (48-byte header) or 1 (16 bytes plus a meta struct
        with all five fields, as Java 2.x writes).
    @return: the frame as L{bytes}.
    """
    body = _CALL_BEGIN + binary.pack_string(name) + _I32.pack(seqid) + args
    if version == 0:
        if thread_hash is None:
            thread_hash = _wrap32(app_id * 7919 + partition_index)
        head = _v0_request.pack(
            MAGIC, 0, V0_HEADER_LENGTH, 0, len(body), 0, app_id, partition_index,
            client_timeout, thread_hash, partition_hash,
        )
        return head + body
    if version == 1:
        meta = b"".join(
            (
                binary.pack_field(binary.I32, 1), _I32.pack(app_id),
                binary.pack_field(binary.I32, 2), _I32.pack(partition_index),
                binary.pack_field(binary.I32, 3), _I32.pack(client_timeout),
                binary.pack_field(binary.I64, 4), binary.pack_i64(partition_hash),
                binary.pack_field(binary.BOOL, 5), b"\x01" if is_backup_request else b"\x00",
                b"\x00",
            )
        )
        return _V1.pack(MAGIC, 1, len(meta), len(body)) + meta + body
    raise ValueError(f"unsupported THFT header version {version}")


_REPLY_BEGIN = _U32.pack(0x80010002)
_reply_prefixes = {}


def _reply_prefix(rpc_error, name_ack):
    key = (rpc_error, name_ack)
    prefix = _reply_prefixes.get(key)
    if prefix is None:
        prefix = binary.pack_string(rpc_error) + _REPLY_BEGIN + binary.pack_string(name_ack)
        if len(_reply_prefixes) < 1024:
            _reply_prefixes[key] = prefix
    return prefix


def encode_reply(name_ack, seqid, body, rpc_error="ERR_OK"):
    """
    Build a reply frame exactly as a meta server writes it.

    @param name_ack: the reply name (see L{ack_name}).
    @param seqid: the request's seqid, echoed (0 included).
    @param body: the result bytes (C{0c 00 00 <struct> 00}) or L{None}.
    @param rpc_error: the rpc-level error name.
    @return: the frame as L{bytes}; its first i32 counts itself.
    """
    prefix = _reply_prefix(rpc_error, name_ack)
    blen = len(body) if body else 0
    total = 4 + len(prefix) + 4 + blen
    if body:
        return b"".join((_I32.pack(total), prefix, _I32.pack(seqid), body))
    return b"".join((_I32.pack(total), prefix, _I32.pack(seqid)))


def encode_reply_for(request, reply):
    """@return: the frame answering L{Request} C{request} with L{Reply} C{reply}."""
    return encode_reply(ack_name(request.name), request.seqid, reply.body, reply.rpc_error)


@attrs.frozen
class OversizedResponse:
    """
    A reply whose declared length exceeds the decoder's limit: only its
    first bytes were read (for the seqid); the rest is skipped unread.
    """

    rpc_error: str
    name: str
    seqid: int
    length: int


#: How much of an oversized reply is read to find its seqid (the rpc
#: error and reply names before it are short).
OVERSIZED_PREFIX = 1024


class ResponseDecoder:
    """
    Splits a meta server's byte stream into L{Response}s (the client side).

    Decoding is linear: N bytes in k pieces cost O(N + k). A reply
    declaring more than C{max_frame_bytes} is never held: it is reported as
    an L{OversizedResponse} as soon as its first bytes arrive, and its
    remaining bytes are discarded as they come, so the stream stays usable.
    """

    def __init__(self, max_frame_bytes=64 << 20):
        self.max_frame_bytes = max_frame_bytes
        self._held = _Held()
        self._skip = 0

    def buffered(self):
        """@return: how many bytes of an incomplete reply are held."""
        return len(self._held)

    def feed(self, data):
        """
        @return: a L{list} of complete L{Response}s, and an
            L{OversizedResponse} for each reply over the limit.
        @raise FramingError: the stream is broken; close the connection.
        """
        out = []
        skip = self._skip
        if skip:
            if len(data) <= skip:
                self._skip = skip - len(data)
                return out
            data = data[skip:]
            self._skip = 0
        held = self._held
        buf = held.join(data)
        if buf is None:
            return out
        pos = 0
        need = 4
        n = len(buf)
        limit = self.max_frame_bytes
        try:
            while n - pos >= 4:
                need = 4
                total = _I32.unpack_from(buf, pos)[0]
                if total < 4 + 4 + 4 + 4 + 4:
                    raise FramingError(f"bad reply length {total}")
                end = pos + total
                if total > limit:
                    prefix_end = pos + min(total, OVERSIZED_PREFIX)
                    try:
                        rpc_error, name, seqid, _ = _reply_begin(buf, pos + 4, min(n, prefix_end))
                    except FramingError:
                        if n < prefix_end:
                            need = prefix_end - pos
                            break  # maybe just short: wait for more of the prefix
                        raise
                    out.append(OversizedResponse(rpc_error, name, seqid, total))
                    if end > n:
                        self._skip = end - n
                        pos = n
                        break
                    pos = end
                    continue
                if end > n:
                    need = total
                    break
                rpc_error, name, seqid, body_start = _reply_begin(buf, pos + 4, end)
                out.append(Response(rpc_error, name, seqid, bytes(buf[body_start:end])))
                pos = end
        except FramingError:
            held.clear()
            self._skip = 0
            raise
        held.keep(buf, pos, need)
        return out


def _reply_begin(buf, start, end):
    """
    @return: C{(rpc_error, name, seqid, body_start)} of the reply whose
        bytes after the length are C{buf[start:end]}.
    @raise FramingError: they do not parse.
    """
    try:
        r = Reader(buf, start, end)
        rpc_error = r.string()
        begin = r.u32()
        if (begin & 0xFFFF0000) != 0x80010000:
            raise DecodeError(f"bad reply message begin {begin:#x}")
        name = r.string()
        seqid = r.i32()
    except DecodeError as e:
        raise FramingError(f"bad reply: {e}") from None
    return rpc_error, name, seqid, r.pos
