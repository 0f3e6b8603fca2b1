# -*- test-case-name: metaproxy.test.test_wire_binary -*-
"""
Tests for L{metaproxy.wire.binary}: bounds-checked reads and generic skip.
"""

from twisted.trial.unittest import SynchronousTestCase

from metaproxy.wire import binary
from metaproxy.wire.binary import DecodeError, Reader


class ReaderTests(SynchronousTestCase):
    def test_reads_big_endian(self):
        """Integers are read big-endian and signed; u32 unsigned."""
        r = Reader(b"\xff\xfe" + b"\x80\x00\x00\x00" * 2)
        self.assertEqual((r.i16(), r.i32(), r.u32(), r.remaining()), (-2, -(2**31), 2**31, 0))

    def test_short_reads_raise(self):
        """Reading past the end raises DecodeError, for every primitive."""
        for method in ("i8", "i16", "i32", "u32", "i64", "bool", "binary", "field", "list_header"):
            self.assertRaises(DecodeError, getattr(Reader(b""), method))
        for method in ("i16", "i32", "u32", "i64", "binary", "field", "list_header"):
            self.assertRaises(DecodeError, getattr(Reader(b"\x0b"), method))

    def test_end_bound(self):
        """A Reader never reads past its C{end}, even if the data goes on."""
        r = Reader(b"\x00\x00\x00\x01", 0, 2)
        self.assertRaises(DecodeError, r.i32)

    def test_negative_lengths(self):
        """Negative string and list sizes raise DecodeError."""
        self.assertRaises(DecodeError, Reader(b"\xff\xff\xff\xff").binary)
        self.assertRaises(DecodeError, Reader(b"\x08\xff\xff\xff\xff").list_header)

    def test_string_utf8(self):
        """string() decodes UTF-8 and refuses anything else."""
        self.assertEqual(Reader(binary.pack_string("表")).string(), "表")
        self.assertRaises(DecodeError, Reader(b"\x00\x00\x00\x01\xff").string)

    def test_skip_every_type(self):
        """skip() passes over one value of each thrift type, exactly."""
        values = [
            (binary.BOOL, b"\x01"), (binary.BYTE, b"\x01"), (binary.I16, b"\x00\x01"),
            (binary.I32, b"\x00" * 4), (binary.I64, b"\x00" * 8), (binary.DOUBLE, b"\x00" * 8),
            (binary.STRING, binary.pack_string("ab")),
            (binary.STRUCT, binary.pack_field(binary.I32, 1) + b"\x00" * 4 + b"\x00"),
            (binary.LIST, binary.pack_list_header(binary.STRING, 2) + binary.pack_string("a") * 2),
            (binary.SET, binary.pack_list_header(binary.I32, 1) + b"\x00" * 4),
            (binary.MAP, b"\x08\x0b\x00\x00\x00\x01" + b"\x00" * 4 + binary.pack_string("v")),
        ]
        for ttype, raw in values:
            r = Reader(raw + b"!")
            r.skip(ttype)
            self.assertEqual(r.remaining(), 1, ttype)

    def test_skip_invalid_type(self):
        """An unknown type code is a DecodeError."""
        self.assertRaises(DecodeError, Reader(b"").skip, 99)

    def test_skip_depth_bounded(self):
        """Deeply nested structs are refused rather than recursed without bound."""
        nested = (b"\x0c\x00\x01" * (binary.MAX_DEPTH + 5)) + b"\x00" * (binary.MAX_DEPTH + 6)
        self.assertRaises(DecodeError, Reader(nested).skip, binary.STRUCT)

    def test_pack_round_trip(self):
        """pack_* and Reader agree."""
        data = (binary.pack_i8(-1) + binary.pack_i16(-2) + binary.pack_i32(-3) + binary.pack_u32(2**32 - 1)
                + binary.pack_i64(-5) + binary.pack_field(binary.I64, 7) + binary.pack_list_header(binary.I32, 3))
        r = Reader(data)
        self.assertEqual(
            (r.i8(), r.i16(), r.i32(), r.u32(), r.i64(), r.field(), r.list_header()),
            (-1, -2, -3, 2**32 - 1, -5, (binary.I64, 7), (binary.I32, 3)),
        )
