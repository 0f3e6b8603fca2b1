# -*- test-case-name: metaproxy.test.test_wire_rdsn -*-
"""
Tests for L{metaproxy.wire.rdsn} and L{metaproxy.wire.crc32c}: golden bytes
built by hand from the documented RDSN layout (C{rdsn-layout.md}, checked
there against the real C{message_header} compiled with g++), not from the
code under test.
"""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.testing.rdsn_client import query_cfg_body
from metaproxy.wire import codes, querycfg, rdsn
from metaproxy.wire.crc32c import CHECK_VALUE, crc32c
from metaproxy.wire.frame import FramingError, Reply


def hx(text):
    """@return: the bytes of a hex dump (offset columns C{NNN:} ignored)."""
    out = []
    for line in text.strip().splitlines():
        line = line.split(":", 1)[1] if ":" in line else line
        out.append(line.replace(" ", ""))
    return bytes.fromhex("".join(out))


# The example meta query of rdsn-layout.md ("Test vector"), 216 bytes.
VECTOR_HEADER = hx(
    """
    000: 52 44 53 4e 00 00 00 00 c0 00 00 00 00 00 00 00
    016: 18 00 00 00 00 00 00 00 71 56 34 12 01 00 00 00
    032: 1e ab 57 7e 00 00 00 00 52 50 43 5f 43 4d 5f 51
    048: 55 45 52 59 5f 50 41 52 54 49 54 49 4f 4e 5f 43
    064: 4f 4e 46 49 47 5f 42 59 5f 49 4e 44 45 58 00 00
    080: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    096: 00 00 00 00 00 00 00 00 41 04 00 00 00 00 00 00
    112: 01 00 01 00 01 00 00 7f 88 13 00 00 00 00 00 00
    128: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    144: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    160: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    176: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    """
)
VECTOR_BODY = hx("0c 00 00 0b 00 01 00 00 00 04 74 65 6d 70 0f 00 02 08 00 00 00 00 00 00")
VECTOR = VECTOR_HEADER + VECTOR_BODY

# What a server listening on 127.0.0.1:34601 answers to VECTOR when the
# RPC has no handler, derived by hand with the reply rules: body_length 0,
# id / trace_id / timeout echoed, rpc_name + "_ACK", context 0x441 -> 0x440,
# from_address = 127.0.0.1:34601, error_name ERR_HANDLER_NOT_FOUND, codes 0.
VECTOR_NOT_FOUND_REPLY = hx(
    """
    000: 52 44 53 4e 00 00 00 00 c0 00 00 00 00 00 00 00
    016: 00 00 00 00 00 00 00 00 71 56 34 12 01 00 00 00
    032: 1e ab 57 7e 00 00 00 00 52 50 43 5f 43 4d 5f 51
    048: 55 45 52 59 5f 50 41 52 54 49 54 49 4f 4e 5f 43
    064: 4f 4e 46 49 47 5f 42 59 5f 49 4e 44 45 58 5f 41
    080: 43 4b 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    096: 00 00 00 00 00 00 00 00 40 04 00 00 00 00 00 00
    112: 01 00 29 87 01 00 00 7f 88 13 00 00 00 00 00 00
    128: 00 00 00 00 00 00 00 00 45 52 52 5f 48 41 4e 44
    144: 4c 45 52 5f 4e 4f 54 5f 46 4f 55 4e 44 00 00 00
    160: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    176: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    """
)

PROXY_ADDRESS = querycfg.rpc_address("127.0.0.1", 34601)


def vector_request():
    [request] = rdsn.RdsnRequestDecoder().feed(VECTOR)
    return request


class Crc32cTests(SynchronousTestCase):
    def test_check_value(self):
        """CRC-32C of "123456789" is the standard check value 0xE3069283."""
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(CHECK_VALUE, 0xE3069283)

    def test_empty(self):
        """The CRC of nothing is 0."""
        self.assertEqual(crc32c(b""), 0)

    def test_continued_equals_one_pass(self):
        """Continuing a CRC over a second buffer equals one pass ("hello rdsn world": 0xa81494fd)."""
        self.assertEqual(crc32c(b"hello rdsn world"), 0xA81494FD)
        self.assertEqual(crc32c(b" world", crc32c(b"hello rdsn")), 0xA81494FD)

    def test_vector_crcs(self):
        """
        The test vector's header CRC (0x48365b0b), body CRC (0xb47a9c7b),
        and header CRC with the body CRC filled in (0xa9e529ba).
        """
        self.assertEqual(crc32c(VECTOR_HEADER), 0x48365B0B)
        self.assertEqual(crc32c(VECTOR_BODY), 0xB47A9C7B)
        with_crc = rdsn.with_crc(VECTOR)
        self.assertEqual(with_crc[12:16], struct.pack("<I", 0xA9E529BA))
        self.assertEqual(with_crc[20:24], bytes.fromhex("7b 9c 7a b4"))
        self.assertEqual(with_crc[24:], VECTOR[24:])


class LayoutTests(SynchronousTestCase):
    def test_vector_encoded_exactly(self):
        """encode_request with the vector's values gives the documented 216 bytes."""
        data = rdsn.encode_request(
            querycfg.QUERY_CFG, 0x112345671, query_cfg_body("temp"), trace_id=0x7E57AB1E,
            client_timeout=5000, from_address=querycfg.rpc_address("127.0.0.1", 1),
        )
        self.assertEqual(data, VECTOR)

    def test_vector_decoded(self):
        """Every header field of the vector decodes to its documented value."""
        request = vector_request()
        h = request.header
        self.assertEqual(
            (h.hdr_version, h.hdr_length, h.hdr_crc32, h.body_length, h.body_crc32, h.id, h.trace_id),
            (0, 192, 0, 24, 0, 0x112345671, 0x7E57AB1E),
        )
        self.assertEqual((h.rpc_name, h.rpc_code, h.rpc_code_hash), (querycfg.QUERY_CFG, 0, 0))
        self.assertEqual((h.app_id, h.partition_index, h.context), (0, 0, 0x441))
        self.assertEqual(querycfg.address_host_port(h.from_address), ("127.0.0.1", 1))
        self.assertEqual((h.client_timeout, h.thread_hash, h.partition_hash), (5000, 0, 0))
        self.assertEqual((h.error_name, h.error_code, h.error_code_hash), ("", 0, 0))
        self.assertEqual((request.name, request.seqid, request.args, request.oneway),
                         (querycfg.QUERY_CFG, 0x112345671, VECTOR_BODY, False))
        self.assertEqual(querycfg.decode_args(request.args), querycfg.QueryCfgRequest("temp"))

    def test_offsets_and_endianness(self):
        """Each field sits at its documented offset, little-endian."""
        header = rdsn.RdsnHeader(
            id=0x0102030405060708, trace_id=0x1112131415161718, rpc_name="N", rpc_code=0x21222324,
            rpc_code_hash=0x25262728, app_id=0x31323334, partition_index=0x35363738, context=0x441,
            from_address=0x4142434445464748, client_timeout=0x51525354, thread_hash=0x55565758,
            partition_hash=0x6162636465666768, error_name="E", error_code=0x71727374,
            error_code_hash=0x75767778, hdr_version=0x0A0B0C0D, hdr_crc32=0x0E0F1011,
            body_crc32=0x12131415,
        ).pack(body_length=0x7A7B7C7D)
        self.assertEqual(len(header), 192)
        expect = {
            0: b"RDSN", 4: hx("0d 0c 0b 0a"), 8: hx("c0 00 00 00"), 12: hx("11 10 0f 0e"),
            16: hx("7d 7c 7b 7a"), 20: hx("15 14 13 12"), 24: hx("08 07 06 05 04 03 02 01"),
            32: hx("18 17 16 15 14 13 12 11"), 40: b"N\x00", 88: hx("24 23 22 21"), 92: hx("28 27 26 25"),
            96: hx("34 33 32 31"), 100: hx("38 37 36 35"), 104: hx("41 04 00 00 00 00 00 00"),
            112: hx("48 47 46 45 44 43 42 41"), 120: hx("54 53 52 51"), 124: hx("58 57 56 55"),
            128: hx("68 67 66 65 64 63 62 61"), 136: b"E\x00", 184: hx("74 73 72 71"),
            188: hx("78 77 76 75"),
        }
        for offset, raw in expect.items():
            self.assertEqual(header[offset : offset + len(raw)], raw, f"offset {offset}")
        self.assertEqual(header[42:88], bytes(46))
        self.assertEqual(header[138:184], bytes(46))

    def test_context_bitfield(self):
        """Each context member alone has its documented value; requests are 0x441, replies 0x440."""
        cases = [
            (dict(is_request=True, serialize_format=0, is_forward_supported=False), 0x001),
            (dict(is_request=False, is_forwarded=True, serialize_format=0, is_forward_supported=False), 0x002),
            (dict(is_request=False, serialize_format=1, is_forward_supported=False), 0x040),
            (dict(is_request=False, serialize_format=3, is_forward_supported=False), 0x0C0),
            (dict(is_request=False, serialize_format=15, is_forward_supported=False), 0x3C0),
            (dict(is_request=False, serialize_format=0, is_forward_supported=True), 0x400),
            (dict(is_request=False, serialize_format=0, is_forward_supported=False, is_backup_request=True),
             0x800),
            (dict(), 0x441),
            (dict(is_request=False), 0x440),
            (dict(is_forwarded=True), 0x443),
        ]
        for kw, value in cases:
            self.assertEqual(rdsn.context_bits(**kw), value, kw)
        self.assertEqual(rdsn.REQUEST_CONTEXT, 0x441)
        h = rdsn.RdsnHeader(1, context=0xCC3)
        self.assertEqual(
            (h.is_request, h.is_forwarded, h.serialize_format, h.is_forward_supported, h.is_backup_request),
            (True, True, 3, True, True),
        )

    def test_rpc_address_in_header(self):
        """from_address holds the rpc_address u64, little-endian (measured values of rdsn-layout.md)."""
        for host, port, raw in [
            ("127.0.0.1", 34601, "01 00 29 87 01 00 00 7f"),
            ("127.0.0.1", 1, "01 00 01 00 01 00 00 7f"),
            ("10.1.2.3", 34801, "01 00 f1 87 03 02 01 0a"),
        ]:
            header = rdsn.RdsnHeader(1, from_address=querycfg.rpc_address(host, port)).pack(0)
            self.assertEqual(header[112:120], hx(raw))

    def test_long_name_cut_to_47(self):
        """A name longer than 47 characters is cut so that the field keeps its NUL."""
        header = rdsn.RdsnHeader(1, rpc_name="R" * 60, error_name="E" * 60).pack(0)
        self.assertEqual(header[40:88], b"R" * 47 + b"\x00")
        self.assertEqual(header[136:184], b"E" * 47 + b"\x00")

    @settings(max_examples=100, deadline=None)
    @given(
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=47),
        st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(-(2**31), 2**31 - 1),
        st.integers(0, 2**64 - 1), st.binary(max_size=40), st.booleans(),
    )
    def test_round_trip(self, name, rid, trace, timeout, phash, body, crc):
        """Whatever is encoded (with or without CRCs) decodes to the same fields and body."""
        data = rdsn.encode_request(name, rid, body, trace_id=trace, client_timeout=timeout,
                                   partition_hash=phash, crc=crc)
        [request] = rdsn.RdsnRequestDecoder().feed(data)
        self.assertEqual((request.name, request.seqid, request.args), (name, rid, body))
        h = request.header
        self.assertEqual((h.trace_id, h.client_timeout, h.partition_hash), (trace, timeout, phash))
        self.assertEqual(h.raw, data[:192])


class ReplyTests(SynchronousTestCase):
    def setUp(self):
        self.framer = rdsn.RdsnFramer(PROXY_ADDRESS)

    def test_not_found_golden(self):
        """The vector answered ERR_HANDLER_NOT_FOUND gives the hand-derived 192 bytes, no body."""
        data = self.framer.encode(vector_request(), Reply(None, codes.ERR_HANDLER_NOT_FOUND),
                                  codes.ERR_HANDLER_NOT_FOUND)
        self.assertEqual(data, VECTOR_NOT_FOUND_REPLY)

    def test_body_reply(self):
        """A reply with a body: body_length counts it, error_name ERR_OK, the body follows the header."""
        body = querycfg.error_result(codes.ERR_OBJECT_NOT_FOUND)
        data = self.framer.encode(vector_request(), Reply(body), codes.ERR_OK)
        self.assertEqual(data[16:24], struct.pack("<II", len(body), 0))
        self.assertEqual(data[136:184], b"ERR_OK" + bytes(42))
        self.assertEqual(data[192:], body)
        expect = bytearray(VECTOR_NOT_FOUND_REPLY)
        expect[16:20] = struct.pack("<I", len(body))
        expect[136:184] = b"ERR_OK" + bytes(42)
        self.assertEqual(data[:192], bytes(expect))
        response = rdsn.decode_response(data)
        self.assertEqual((response.rpc_error, response.name, response.seqid),
                         (codes.ERR_OK, querycfg.QUERY_CFG_ACK, 0x112345671))
        self.assertEqual(querycfg.decode_result(response.body).err, codes.ERR_OBJECT_NOT_FOUND)

    def test_native_body_preferred(self):
        """A reply's native_body (hp_* kept) is what an RDSN client gets."""
        data = self.framer.encode(vector_request(), Reply(b"stripped", native_body=b"native"), codes.ERR_OK)
        self.assertEqual(data[192:], b"native")

    def test_forwarded_flag_copied(self):
        """Only is_request is cleared: a forwarded request (0x443) is answered 0x442; other bits kept."""
        for ctx, expect in [(0x443, 0x442), (0xCC1, 0xCC0), (0x041, 0x040)]:
            [request] = rdsn.RdsnRequestDecoder().feed(rdsn.encode_request("RPC_X", 9, b"", context=ctx))
            data = self.framer.encode(request, Reply(None), codes.ERR_OK)
            self.assertEqual(struct.unpack_from("<Q", data, 104)[0], expect)

    def test_crcs_zeroed(self):
        """A request that carried CRCs gets a reply with both CRC fields 0."""
        [request] = rdsn.RdsnRequestDecoder().feed(rdsn.with_crc(VECTOR))
        data = self.framer.encode(request, Reply(b"\x00"), codes.ERR_OK)
        self.assertEqual((data[12:16], data[20:24]), (bytes(4), bytes(4)))

    def test_codes_zeroed_and_ack_cut(self):
        """rpc_code and error_code are 0/0; a 47-character name's ACK is cut to 47 characters."""
        name = "RPC_" + "Z" * 43
        data = rdsn.encode_request(name, 3, b"")
        raw = bytearray(data)
        raw[88:96] = hx("05 00 00 00 07 00 00 00")
        raw[184:192] = hx("01 00 00 00 02 00 00 00")
        [request] = rdsn.RdsnRequestDecoder().feed(bytes(raw))
        out = self.framer.encode(request, Reply(None), codes.ERR_OK)
        self.assertEqual((out[88:96], out[184:192]), (bytes(8), bytes(8)))
        self.assertEqual(out[40:88], (name + "_ACK")[:47].encode() + b"\x00")

    def test_refuses_other_serialize_formats(self):
        """Only THRIFT_BINARY requests are dispatched; any other format is refused with an rpc error."""
        for fmt in range(16):
            [request] = rdsn.RdsnRequestDecoder().feed(
                rdsn.encode_request("RPC_X", 1, b"", context=rdsn.context_bits(serialize_format=fmt))
            )
            refusal = self.framer.refuse(request)
            if fmt == rdsn.THRIFT_BINARY:
                self.assertIsNone(refusal)
            else:
                self.assertEqual((refusal.rpc_error, refusal.body), (codes.ERR_INVALID_PARAMETERS, None))

    def test_address_value(self):
        """The framer's from_address comes from an IPv4 host address; anything else is 0."""
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

        self.assertEqual(rdsn.address_value(IPv4Address("TCP", "127.0.0.1", 34601)), PROXY_ADDRESS)
        self.assertEqual(rdsn.address_value(IPv6Address("TCP", "::1", 34601)), 0)
        self.assertEqual(rdsn.address_value(UNIXAddress(b"/x")), 0)
        self.assertEqual(rdsn.address_value(None), 0)


class DecoderTests(SynchronousTestCase):
    def test_byte_by_byte(self):
        """A frame fed one byte at a time is decoded once, when its last byte arrives."""
        decoder = rdsn.RdsnRequestDecoder()
        out = []
        for i in range(len(VECTOR)):
            out += decoder.feed(VECTOR[i : i + 1])
            if i < len(VECTOR) - 1:
                self.assertEqual(out, [])
                self.assertEqual(decoder.buffered(), i + 1)
        self.assertEqual([r.seqid for r in out], [0x112345671])
        self.assertEqual(decoder.buffered(), 0)

    def test_pipelined_chunks_bounded(self):
        """
        Many pipelined frames in odd chunks all decode in order; the buffer
        never holds much more than a frame and a chunk.
        """
        frames = [rdsn.encode_request(querycfg.QUERY_CFG, i, query_cfg_body(f"t{i}")) for i in range(200)]
        stream = b"".join(frames)
        decoder = rdsn.RdsnRequestDecoder()
        ids = []
        for i in range(0, len(stream), 37):
            ids += [r.seqid for r in decoder.feed(stream[i : i + 37])]
            self.assertLess(decoder.buffered(), 2 * max(map(len, frames)) + 37)
            self.assertLess(len(decoder._buf), 4 * (max(map(len, frames)) + 37))
        self.assertEqual(ids, list(range(200)))

    def test_crc_verified(self):
        """Right non-zero CRCs are accepted, each field on its own."""
        good = rdsn.with_crc(VECTOR)
        only_body = bytearray(good)
        only_body[12:16] = bytes(4)
        only_header = bytearray(VECTOR)
        only_header[12:16] = struct.pack("<I", rdsn.header_crc(only_header[:192]))
        for data in (good, bytes(only_body), bytes(only_header)):
            self.assertEqual(len(rdsn.RdsnRequestDecoder().feed(data)), 1)

    def test_header_crc_mismatch_before_body(self):
        """A wrong header CRC is refused as soon as the header is complete, before the body arrives."""
        bad = bytearray(rdsn.with_crc(VECTOR))
        bad[12] ^= 1
        decoder = rdsn.RdsnRequestDecoder()
        self.assertRaises(FramingError, decoder.feed, bytes(bad[:192]))
        self.assertEqual(decoder.buffered(), 0)

    def test_header_crc_covers_every_byte(self):
        """Flipping any header byte other than the CRC field itself breaks a non-zero header CRC."""
        good = rdsn.with_crc(VECTOR)
        for offset in list(range(4, 12)) + list(range(16, 192)):
            bad = bytearray(good)
            bad[offset] ^= 0x80
            self.assertRaises(FramingError, rdsn.RdsnRequestDecoder().feed, bytes(bad))

    def test_body_crc_mismatch(self):
        """A wrong body CRC is refused once the body is complete."""
        bad = bytearray(rdsn.with_crc(VECTOR))
        bad[200] ^= 1
        # the header CRC still matches: only the body check can catch it
        self.assertRaises(FramingError, rdsn.RdsnRequestDecoder().feed, bytes(bad))

    def test_thft_after_rdsn_refused(self):
        """THFT bytes after an RDSN frame are refused after 4 bytes; the RDSN request before is yielded."""
        decoder = rdsn.RdsnRequestDecoder()
        out = []
        with self.assertRaises(FramingError):
            for request in decoder.feed_iter(VECTOR + b"THFT"):
                out.append(request)
        self.assertEqual([r.seqid for r in out], [0x112345671])

    def test_oversized_refused_before_buffering(self):
        """A declared body beyond max_frame_bytes is refused as soon as the header is in."""
        data = bytearray(VECTOR_HEADER)
        data[16:20] = struct.pack("<I", 4096)
        self.assertRaises(FramingError, rdsn.RdsnRequestDecoder(max_frame_bytes=4096).feed, bytes(data))
        decoder = rdsn.RdsnRequestDecoder(max_frame_bytes=4096 + 192)
        self.assertEqual(len(decoder.feed(bytes(data) + bytes(4096))), 1)

    def test_name_without_nul_refused(self):
        """A 48-byte name field without its NUL terminator cannot be read: refused."""
        data = bytearray(VECTOR)
        data[40:88] = b"A" * 48
        self.assertRaises(FramingError, rdsn.RdsnRequestDecoder().feed, bytes(data))

    def test_non_ascii_name_refused(self):
        """A non-ASCII rpc name is refused, as in THFT."""
        data = bytearray(VECTOR)
        data[40] = 0xFF
        self.assertRaises(FramingError, rdsn.RdsnRequestDecoder().feed, bytes(data))

    def test_reply_from_client_refused(self):
        """A frame with is_request=0 is not a request: refused."""
        data = rdsn.encode_request("RPC_X", 1, b"", context=0x440)
        self.assertRaises(FramingError, rdsn.RdsnRequestDecoder().feed, data)

    def test_request_to_client_refused(self):
        """The client-side decoder refuses a frame with is_request=1."""
        self.assertRaises(FramingError, rdsn.RdsnResponseDecoder().feed, VECTOR)

    def test_unchecked_fields_ignored(self):
        """hdr_version and hdr_length are never checked on receive, as in rDSN."""
        data = bytearray(VECTOR)
        data[4:12] = hx("07 00 00 00 10 00 00 00")
        [request] = rdsn.RdsnRequestDecoder().feed(bytes(data))
        self.assertEqual((request.header.hdr_version, request.header.hdr_length), (7, 16))
