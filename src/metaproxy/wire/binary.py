# -*- test-case-name: metaproxy.test.test_wire_binary -*-
"""
Thrift TBinaryProtocol primitives, big-endian, over L{bytes}.

Pegasus writes its base types (gpid, rpc_address, error_code, host_port) as
bare values under a STRUCT field header, so a spec-driven thrift codec cannot
read them; this module gives the pieces a hand-written codec needs.
"""

import struct

BOOL, BYTE, DOUBLE, I16, I32, I64, STRING, STRUCT, MAP, SET, LIST = (
    2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15,
)
STOP = 0

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_FIELD = struct.Struct(">bh")
_LIST = struct.Struct(">bi")

_FIXED = {BOOL: 1, BYTE: 1, I16: 2, I32: 4, I64: 8, DOUBLE: 8}

#: Deepest nesting accepted by L{skip}; deeper input is rejected, not recursed.
MAX_DEPTH = 32


class DecodeError(ValueError):
    """The bytes are not a well-formed encoding of what was expected."""


class Reader:
    """
    A cursor over L{bytes}; every read checks bounds and raises
    L{DecodeError} instead of returning short data.
    """

    __slots__ = ("data", "pos", "end")

    def __init__(self, data, pos=0, end=None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self):
        """@return: how many bytes are left to read."""
        return self.end - self.pos

    def take(self, n):
        """@return: the next C{n} bytes. @raise DecodeError: if fewer remain."""
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise DecodeError(f"need {n} bytes at offset {pos}, have {self.end - pos}")
        self.pos = pos + n
        return self.data[pos : pos + n]

    def _unpack(self, st):
        pos = self.pos
        if pos + st.size > self.end:
            raise DecodeError(f"truncated at offset {pos}")
        self.pos = pos + st.size
        return st.unpack_from(self.data, pos)[0]

    def i8(self):
        """@return: a signed byte."""
        return self._unpack(_I8)

    def i16(self):
        """@return: a big-endian signed 16-bit integer."""
        return self._unpack(_I16)

    def i32(self):
        """@return: a big-endian signed 32-bit integer."""
        return self._unpack(_I32)

    def u32(self):
        """@return: a big-endian unsigned 32-bit integer."""
        return self._unpack(_U32)

    def i64(self):
        """@return: a big-endian signed 64-bit integer."""
        return self._unpack(_I64)

    def bool(self):
        """@return: a thrift bool (any non-zero byte is true)."""
        return self._unpack(_I8) != 0

    def binary(self):
        """@return: a thrift string as raw L{bytes}."""
        n = self.i32()
        if n < 0:
            raise DecodeError(f"negative string length {n}")
        return self.take(n)

    def string(self):
        """@return: a thrift string decoded as UTF-8. @raise DecodeError: if not UTF-8."""
        raw = self.binary()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"string is not UTF-8: {e}") from None

    def field(self):
        """
        @return: C{(ttype, field_id)} of the next field header, or
            C{(STOP, 0)} at the end of a struct.
        """
        ttype = self._unpack(_I8)
        if ttype == STOP:
            return STOP, 0
        return ttype, self._unpack(_I16)

    def list_header(self):
        """@return: C{(element_ttype, size)}. @raise DecodeError: if size < 0."""
        pos = self.pos
        if pos + 5 > self.end:
            raise DecodeError(f"truncated list header at offset {pos}")
        self.pos = pos + 5
        etype, size = _LIST.unpack_from(self.data, pos)
        if size < 0:
            raise DecodeError(f"negative list size {size}")
        return etype, size

    def skip(self, ttype, depth=0):
        """
        Skip one value of thrift type C{ttype}, generically (as a client that
        does not know a field would).
        """
        if depth > MAX_DEPTH:
            raise DecodeError("nesting too deep")
        size = _FIXED.get(ttype)
        if size is not None:
            self.take(size)
        elif ttype == STRING:
            self.binary()
        elif ttype == STRUCT:
            while True:
                ft, _ = self.field()
                if ft == STOP:
                    return
                self.skip(ft, depth + 1)
        elif ttype in (LIST, SET):
            etype, n = self.list_header()
            esize = _FIXED.get(etype)
            if esize is not None:
                self.take(esize * n)
            else:
                for _ in range(n):
                    self.skip(etype, depth + 1)
        elif ttype == MAP:
            ktype = self.i8()
            vtype = self.i8()
            n = self.i32()
            if n < 0:
                raise DecodeError(f"negative map size {n}")
            for _ in range(n):
                self.skip(ktype, depth + 1)
                self.skip(vtype, depth + 1)
        else:
            raise DecodeError(f"invalid thrift type {ttype}")


def pack_i8(v):
    """@return: C{v} as one signed byte."""
    return _I8.pack(v)


def pack_i16(v):
    """@return: C{v} as a big-endian i16."""
    return _I16.pack(v)


def pack_i32(v):
    """@return: C{v} as a big-endian i32."""
    return _I32.pack(v)


def pack_u32(v):
    """@return: C{v} as a big-endian u32."""
    return _U32.pack(v)


def pack_i64(v):
    """@return: C{v} as a big-endian i64."""
    return _I64.pack(v)


def pack_binary(raw):
    """@return: the thrift string encoding of the L{bytes} C{raw}."""
    return _I32.pack(len(raw)) + raw


def pack_string(text):
    """@return: the thrift string encoding of the L{str} C{text} (UTF-8)."""
    return pack_binary(text.encode("utf-8"))


def pack_field(ttype, fid):
    """@return: a field header."""
    return _FIELD.pack(ttype, fid)


def pack_list_header(etype, size):
    """@return: a list header."""
    return _LIST.pack(etype, size)
