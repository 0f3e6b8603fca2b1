# -*- test-case-name: metaproxy.test.test_wire_frame -*-
"""
Tests for L{metaproxy.wire.frame}: THFT request framing (the same cases for
header v0 and v1, via mixins), reply framing and the response decoder.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.wire import codes, frame, querycfg

_i32 = st.integers(-(2**31), 2**31 - 1)


class _RequestCases:
    """Request framing cases run once per header version (C{version})."""

    version = None

    def frame(self, name=querycfg.QUERY_CFG, seqid=1, args=None, **kw):
        if args is None:
            args = querycfg.encode_args("temp")
        return frame.encode_request(name, seqid, args, version=self.version, **kw)

    @settings(max_examples=200, suppress_health_check=[HealthCheck.differing_executors])
    @given(
        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60),
        _i32, _i32, _i32, _i32, st.integers(-(2**63), 2**63 - 1), st.binary(max_size=40),
    )
    def test_round_trip(self, name, seqid, app_id, pidx, timeout, phash, args):
        """Whatever is encoded decodes to the same name, seqid, header fields and raw args."""
        data = self.frame(name, seqid, args, app_id=app_id, partition_index=pidx,
                          client_timeout=timeout, partition_hash=phash)
        [req] = frame.RequestDecoder().feed(data)
        self.assertEqual((req.name, req.seqid, req.args, req.oneway), (name, seqid, args, False))
        h = req.header
        self.assertEqual((h.version, h.app_id, h.partition_index, h.client_timeout, h.partition_hash),
                         (self.version, app_id, pidx, timeout, phash))
        self.assertTrue(-(2**31) <= h.thread_hash < 2**31)

    def test_seqid_zero(self):
        """Seqid 0 is decoded as 0 (a valid seqid, not 'unset')."""
        [req] = frame.RequestDecoder().feed(self.frame(seqid=0))
        self.assertEqual(req.seqid, 0)

    def test_byte_by_byte(self):
        """A frame fed one byte at a time is decoded once, when complete, with nothing left over."""
        data = self.frame(seqid=3)
        dec = frame.RequestDecoder()
        out = []
        for b in data:
            out.extend(dec.feed(bytes([b])))
        self.assertEqual([r.seqid for r in out], [3])
        self.assertEqual(dec.buffered(), 0)

    def test_pipelined_with_partial_tail(self):
        """Several frames in one chunk are all decoded; a partial frame waits for its rest."""
        data = b"".join(self.frame(seqid=i) for i in range(5))
        dec = frame.RequestDecoder()
        self.assertEqual([r.seqid for r in dec.feed(data + data[:30])], [0, 1, 2, 3, 4])
        self.assertEqual(dec.buffered(), 30)
        self.assertEqual([r.seqid for r in dec.feed(data[30 : len(data) // 5])], [0])

    def test_oneway(self):
        """A ONEWAY message decodes with oneway set."""
        data = bytearray(self.frame())
        data[data.index(b"\x80\x01\x00\x01") + 3] = frame.T_ONEWAY
        [req] = frame.RequestDecoder().feed(bytes(data))
        self.assertTrue(req.oneway)

    def test_reply_or_exception_type_breaks_stream(self):
        """A message begin of type REPLY or EXCEPTION is a framing error (a real meta closes)."""
        for mtype in (frame.T_REPLY, frame.T_EXCEPTION, 0, 5):
            data = bytearray(self.frame())
            data[data.index(b"\x80\x01\x00\x01") + 3] = mtype
            self.assertRaises(frame.FramingError, frame.RequestDecoder().feed, bytes(data))

    def test_bad_thrift_version_breaks_stream(self):
        """A strict message begin with another version word is a framing error."""
        data = self.frame().replace(b"\x80\x01\x00\x01", b"\x80\x02\x00\x01")
        self.assertRaises(frame.FramingError, frame.RequestDecoder().feed, data)

    def test_name_overrunning_frame_breaks_stream(self):
        """A name length past the end of the frame is a framing error, not a read into the next frame."""
        data = bytearray(self.frame())
        at = data.index(b"\x80\x01\x00\x01") + 4
        data[at : at + 4] = (1000).to_bytes(4, "big")
        self.assertRaises(frame.FramingError, frame.RequestDecoder().feed, bytes(data) + self.frame())

    def test_non_ascii_name_breaks_stream(self):
        """An rpc name that is not ASCII is a framing error."""
        data = self.frame(name="RPC_X").replace(b"RPC_X", b"RPC_\xff")
        self.assertRaises(frame.FramingError, frame.RequestDecoder().feed, data)

    def test_non_strict_begin_accepted(self):
        """The non-strict message begin (name length, name, type) is read too, as a real meta does."""
        strict = self.frame(name="RPC_X", seqid=9, args=b"\x00")
        at = strict.index(b"\x80\x01\x00\x01")
        body = (5).to_bytes(4, "big") + b"RPC_X" + b"\x01" + (9).to_bytes(4, "big") + b"\x00"
        if self.version == 0:
            data = strict[:16] + len(body).to_bytes(4, "big") + strict[20:at] + body
        else:
            data = strict[:12] + len(body).to_bytes(4, "big") + strict[16:at] + body
        [req] = frame.RequestDecoder().feed(data)
        self.assertEqual((req.name, req.seqid, req.args), ("RPC_X", 9, b"\x00"))

    def test_oversized_frame_refused_before_buffering(self):
        """A declared length over max_frame_bytes is refused from the header alone."""
        data = self.frame(args=b"\x00" * 200)
        dec = frame.RequestDecoder(max_frame_bytes=100)
        self.assertRaises(frame.FramingError, dec.feed, data[:48])
        self.assertEqual(dec.buffered(), 0)

    def test_requests_before_bad_frame_are_yielded(self):
        """feed_iter yields the frames before a bad one, then raises."""
        it = frame.RequestDecoder().feed_iter(self.frame(seqid=1) + b"XXXXXXXX")
        self.assertEqual(next(it).seqid, 1)
        self.assertRaises(frame.FramingError, next, it)


    @settings(max_examples=100, suppress_health_check=[HealthCheck.differing_executors])
    @given(st.lists(st.integers(0, 10), min_size=1, max_size=6), st.lists(st.integers(1, 300), min_size=1))
    def test_any_split_decodes_the_same(self, sizes, cuts):
        """However a stream of frames is cut into pieces, the same requests come out and nothing is left held."""
        frames = [self.frame(seqid=i, args=b"\x00" * (size * 37)) for i, size in enumerate(sizes)]
        data = b"".join(frames)
        dec = frame.RequestDecoder()
        out, pos, i = [], 0, 0
        while pos < len(data):
            step = cuts[i % len(cuts)]
            out.extend(dec.feed(data[pos : pos + step]))
            pos += step
            i += 1
            self.assertLess(dec.buffered(), max(len(f) for f in frames))
        self.assertEqual([(r.seqid, len(r.args)) for r in out], [(i, s * 37) for i, s in enumerate(sizes)])
        self.assertEqual(dec.buffered(), 0)

    def test_large_frame_in_small_pieces(self):
        """A 256 KiB frame fed in 100-byte pieces decodes intact, and the frame after it too."""
        args = bytes(range(256)) * 1024
        data = self.frame(seqid=7, args=args) + self.frame(seqid=8)
        dec = frame.RequestDecoder(max_frame_bytes=1 << 20)
        out = []
        for i in range(0, len(data), 100):
            out.extend(dec.feed(data[i : i + 100]))
        self.assertEqual([(r.seqid, r.args == args) for r in out], [(7, True), (8, False)])
        self.assertEqual(dec.buffered(), 0)

    def test_stopping_early_keeps_the_rest(self):
        """A caller that stops iterating feed_iter early finds the undecoded frames still held."""
        dec = frame.RequestDecoder()
        first, second = self.frame(seqid=1), self.frame(seqid=2)
        it = dec.feed_iter(first + second + second[:10])
        self.assertEqual(next(it).seqid, 1)
        it.close()
        self.assertEqual(dec.buffered(), len(second) + 10)
        self.assertEqual([r.seqid for r in dec.feed(second[10:])], [2, 2])

    def test_clear_drops_a_partial_frame(self):
        """clear() forgets a held partial frame; the next frame decodes normally."""
        dec = frame.RequestDecoder()
        dec.feed(self.frame(seqid=1)[:30])
        dec.clear()
        self.assertEqual(dec.buffered(), 0)
        self.assertEqual([r.seqid for r in dec.feed(self.frame(seqid=2))], [2])

class V0RequestTests(_RequestCases, SynchronousTestCase):
    version = 0

    def test_header_length_must_be_48(self):
        """A v0 header length other than 48 is a framing error."""
        data = self.frame()
        self.assertRaises(frame.FramingError, frame.RequestDecoder().feed, data[:8] + b"\x00\x00\x00\x31" + data[12:])

    def test_negative_body_length(self):
        """A negative body length is a framing error."""
        data = self.frame()
        self.assertRaises(frame.FramingError, frame.RequestDecoder().feed, data[:16] + b"\xff\xff\xff\xff" + data[20:])

    def test_thread_hash_as_sent(self):
        """The v0 thread hash is taken as sent, not derived."""
        [req] = frame.RequestDecoder().feed(self.frame(app_id=2, partition_index=3, thread_hash=77))
        self.assertEqual(req.header.thread_hash, 77)


class V1RequestTests(_RequestCases, SynchronousTestCase):
    version = 1

    def test_thread_hash_derived(self):
        """The v1 thread hash is app_id * 7919 + partition_index, and is_backup_request is read."""
        [req] = frame.RequestDecoder().feed(self.frame(app_id=2, partition_index=3, is_backup_request=True))
        self.assertEqual((req.header.thread_hash, req.header.is_backup_request), (2 * 7919 + 3, True))

    def test_bad_meta_breaks_stream(self):
        """A meta struct that does not end exactly at meta_length is a framing error."""
        data = bytearray(self.frame())
        data[16 + 36] = 8  # the meta's STOP becomes a field header
        self.assertRaises(frame.FramingError, frame.RequestDecoder().feed, bytes(data))

    def test_unknown_meta_fields_skipped(self):
        """Unknown or mistyped meta fields are skipped, as thrift does."""
        meta = b"\x0b\x00\x07\x00\x00\x00\x02hi" + b"\x0a\x00\x01" + b"\x00" * 8 + b"\x08\x00\x03\x00\x00\x00\x07\x00"
        body = self.frame()[16 + 37:]
        data = b"THFT\x00\x00\x00\x01" + len(meta).to_bytes(4, "big") + len(body).to_bytes(4, "big") + meta + body
        [req] = frame.RequestDecoder().feed(data)
        self.assertEqual((req.header.app_id, req.header.client_timeout), (0, 7))


class StreamStartTests(SynchronousTestCase):
    def test_bad_magic_detected_early(self):
        """Anything but THFT is refused as soon as 8 bytes are in (HTTP, RDSN, garbage)."""
        for start in (b"GET / HT", b"RDSN\x00\x00\x00\x00", b"\x00" * 8):
            self.assertRaises(frame.FramingError, frame.RequestDecoder().feed, start)

    def test_bad_version_detected_early(self):
        """A THFT header version other than 0 or 1 is refused from the first 8 bytes."""
        self.assertRaises(frame.FramingError, frame.RequestDecoder().feed, b"THFT\x00\x00\x00\x02")

    def test_short_prefix_waits(self):
        """Fewer than 8 bytes of a good prefix just wait."""
        dec = frame.RequestDecoder()
        self.assertEqual(dec.feed(b"THFT\x00\x00\x00"), [])
        self.assertEqual(dec.buffered(), 7)


class ReplyTests(SynchronousTestCase):
    @settings(max_examples=200)
    @given(
        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60),
        _i32, st.one_of(st.none(), st.binary(min_size=1, max_size=50)), st.sampled_from(sorted(codes.RPC_LEVEL_SAFE)),
    )
    def test_round_trip(self, name, seqid, body, rpc_error):
        """A reply frame decodes to its error, name, seqid and body; its length counts itself."""
        data = frame.encode_reply(name, seqid, body, rpc_error)
        self.assertEqual(int.from_bytes(data[:4], "big"), len(data))
        [r] = frame.ResponseDecoder().feed(data)
        self.assertEqual((r.rpc_error, r.name, r.seqid, r.body), (rpc_error, name, seqid, body or b""))

    def test_encode_reply_for(self):
        """encode_reply_for names the reply <name>_ACK and echoes the request's seqid."""
        req = frame.Request(frame.RequestHeader(), "RPC_X", 0, b"")
        data = frame.encode_reply_for(req, frame.Reply(b"\x0c\x00\x00\x00"))
        [r] = frame.ResponseDecoder().feed(data)
        self.assertEqual((r.name, r.seqid), ("RPC_X_ACK", 0))

    def test_ack_name_truncated(self):
        """The ACK name is truncated to 47 characters, as rDSN does for unknown codes."""
        self.assertEqual(frame.ack_name("R" * 50), "R" * 47)
        self.assertEqual(frame.ack_name(querycfg.QUERY_CFG), querycfg.QUERY_CFG_ACK)

    def test_response_decoder_pipelined_and_partial(self):
        """The response decoder splits pipelined replies and waits for partial ones."""
        data = frame.encode_reply("A_ACK", 1, b"x") + frame.encode_reply("B_ACK", 2, None)
        dec = frame.ResponseDecoder()
        self.assertEqual([r.seqid for r in dec.feed(data[:-3])], [1])
        self.assertEqual([r.seqid for r in dec.feed(data[-3:])], [2])

    def test_response_decoder_bad_length(self):
        """An impossible reply length is a framing error."""
        self.assertRaises(frame.FramingError, frame.ResponseDecoder().feed, b"\x00\x00\x00\x03")

    def test_response_decoder_any_split(self):
        """Replies cut at every possible point decode to the same responses."""
        data = b"".join(frame.encode_reply("A_ACK", i, b"y" * (i * 50) or None) for i in range(4))
        for cut in range(1, len(data)):
            dec = frame.ResponseDecoder()
            out = dec.feed(data[:cut]) + dec.feed(data[cut:])
            self.assertEqual([r.seqid for r in out], [0, 1, 2, 3])
            self.assertEqual(dec.buffered(), 0)

    def test_oversized_reply_reported_and_skipped(self):
        """
        A reply over the limit is reported (with its seqid) as soon as its
        first bytes arrive, its body is skipped without being held, and the
        reply after it decodes normally.
        """
        big = frame.encode_reply("A_ACK", 5, b"z" * 50000)
        after = frame.encode_reply("B_ACK", 6, b"ok")
        dec = frame.ResponseDecoder(max_frame_bytes=4096)
        [over] = dec.feed(big[:200])
        self.assertEqual(over, frame.OversizedResponse("ERR_OK", "A_ACK", 5, len(big)))
        self.assertEqual(dec.buffered(), 0)
        for i in range(200, len(big), 1000):
            self.assertEqual(dec.feed(big[i : i + 1000]), [])
            self.assertEqual(dec.buffered(), 0)
        [r] = dec.feed(after)
        self.assertEqual((r.seqid, r.body), (6, b"ok"))

    def test_oversized_reply_in_one_chunk(self):
        """An oversized reply and the next one in the same chunk: one report, then the good reply."""
        data = frame.encode_reply("A_ACK", 5, b"z" * 5000) + frame.encode_reply("B_ACK", 6, b"ok")
        out = frame.ResponseDecoder(max_frame_bytes=4096).feed(data)
        self.assertEqual([(type(r).__name__, r.seqid) for r in out], [("OversizedResponse", 5), ("Response", 6)])

    def test_oversized_reply_waits_for_its_seqid(self):
        """An oversized reply's first bytes are held (at most OVERSIZED_PREFIX) until its seqid is known."""
        big = frame.encode_reply("A_ACK", 5, b"z" * 50000)
        dec = frame.ResponseDecoder(max_frame_bytes=4096)
        self.assertEqual(dec.feed(big[:10]), [])
        self.assertLessEqual(dec.buffered(), frame.OVERSIZED_PREFIX)
        self.assertEqual([r.seqid for r in dec.feed(big[10 : frame.OVERSIZED_PREFIX])], [5])
