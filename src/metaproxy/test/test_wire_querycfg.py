# -*- test-case-name: metaproxy.test.test_wire_querycfg -*-
"""
Tests for L{metaproxy.wire.querycfg}: round trips, the fast paths (args
decode, peek, strip) against the general code, and malformed input.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.test.reference import samples
from metaproxy.test.test_wire_reference import _responses
from metaproxy.wire import binary, codes, querycfg
from metaproxy.wire.binary import DecodeError


def _apply(body, cuts):
    out, pos = [], 0
    for start, end in cuts:
        out.append(body[pos:start])
        pos = end
    return b"".join(out) + body[pos:]


class ArgsTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(st.text(max_size=40), st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20))
    def test_fast_path_agrees(self, name, indices):
        """The fixed-offset args decoder and the general one agree, whatever the field order."""
        args = querycfg.encode_args(name, indices)
        self.assertEqual(querycfg.decode_args(args), querycfg.QueryCfgRequest(name, tuple(indices)))
        reordered = (binary.pack_field(binary.STRUCT, 1) + binary.pack_field(binary.LIST, 2)
                     + binary.pack_list_header(binary.I32, len(indices))
                     + b"".join(i.to_bytes(4, "big", signed=True) for i in indices)
                     + binary.pack_field(binary.STRING, 1) + binary.pack_string(name) + b"\x00\x00")
        self.assertEqual(querycfg.decode_args(reordered), querycfg.QueryCfgRequest(name, tuple(indices)))

    def test_any_args_field_id(self):
        """The args field id is ignored, as the meta server's unmarshall does."""
        args = querycfg.encode_args("t", [1])
        self.assertEqual(querycfg.decode_args(b"\x0c\x00\x07" + args[3:]), querycfg.QueryCfgRequest("t", (1,)))

    def test_malformed(self):
        """Malformed args raise DecodeError: not a struct, two fields, bad list type, bad UTF-8, truncation."""
        good = querycfg.encode_args("temp", [1, 2])
        bad = [
            b"\x08\x00\x01\x00\x00\x00\x01\x00",
            good[:-1] + b"\x0c\x00\x02\x00\x00",
            good.replace(b"\x0f\x00\x02\x08", b"\x0f\x00\x02\x0b"),
            good.replace(b"temp", b"te\xffp"),
            b"",
        ] + [good[:i] for i in range(1, len(good))]
        for args in bad:
            self.assertRaises(DecodeError, querycfg.decode_args, args)


class ResponseTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(_responses)
    def test_round_trip(self, resp):
        """encode_result then decode_result gives back the response."""
        self.assertEqual(querycfg.decode_result(querycfg.encode_result(resp)), resp)

    def test_error_result(self):
        """error_result carries only the app-level error, everything else at its default."""
        resp = querycfg.decode_result(querycfg.error_result(codes.ERR_OBJECT_NOT_FOUND))
        self.assertEqual(resp, querycfg.QueryCfgResponse(codes.ERR_OBJECT_NOT_FOUND))

    def test_unknown_fields_skipped(self):
        """Unknown fields in the response and in partitions are skipped."""
        body = querycfg.encode_result(samples.big_response(2, False))
        extra = b"\x0b\x00\x63\x00\x00\x00\x01z"
        # before partition 0's STOP and before the response's STOP
        first_stop = body.index(b"\x08\x00\x08") + 7
        patched = body[:first_stop] + extra + body[first_stop:-2] + extra + body[-2:]
        self.assertEqual(querycfg.decode_result(patched), samples.big_response(2, False))

    def test_rpc_address(self):
        """rpc_address packs ip<<32 | port<<16 | 1; address_host_port reverses it, None for invalid."""
        value = querycfg.rpc_address("10.0.0.1", 34801)
        self.assertEqual(value.to_bytes(8, "big"), bytes.fromhex("0a00000187f10001"))
        self.assertEqual(querycfg.address_host_port(value), ("10.0.0.1", 34801))
        self.assertIsNone(querycfg.address_host_port(0))


class PeekTests(SynchronousTestCase):
    @settings(max_examples=200)
    @given(st.sampled_from(sorted(codes.CLIENT_SAFE)), st.integers(-(2**31), 2**31 - 1), st.integers(0, 4))
    def test_agrees_with_decode(self, err, app_id, n):
        """peek_result agrees with a full decode for any error, app id and size."""
        resp = querycfg.QueryCfgResponse(err, app_id, n, True, samples.big_response(n, False).partitions)
        body = querycfg.encode_result(resp)
        peek = querycfg.peek_result(body)
        self.assertEqual((peek.err, peek.app_id, peek.partition_count), (err, app_id, n))

    def test_reordered_fields(self):
        """A response whose fields are not in id order is peeked the general way."""
        body = (b"\x0c\x00\x00" + b"\x08\x00\x03\x00\x00\x00\x04" + b"\x08\x00\x02\x00\x00\x00\x09"
                + b"\x0c\x00\x01" + binary.pack_string("ERR_OK") + b"\x00\x00")
        self.assertEqual(querycfg.peek_result(body), querycfg.QueryCfgPeek("ERR_OK", 9, 4, None))


class StripTests(SynchronousTestCase):
    def test_keeps_everything_else(self):
        """Stripping drops exactly hp_* and nothing else."""
        body = querycfg.encode_result(samples.big_response(32, True))
        self.assertEqual(querycfg.decode_result(querycfg.strip_host_port(body)), samples.big_response(32, False))

    def test_absent_returns_same_object(self):
        """A body without hp_* is returned as is (no copy)."""
        body = querycfg.encode_result(samples.big_response(8, False))
        self.assertIs(querycfg.strip_host_port(body), body)

    @settings(max_examples=200, deadline=None)
    @given(_responses)
    def test_fast_path_agrees_with_walk(self, resp):
        """Whenever the fast path applies, it removes the same bytes as the general walk."""
        body = querycfg.encode_result(resp)
        fast = querycfg._hp_cuts_fast(body)
        self.assertIsNotNone(fast)  # every encoder-made body has the standard layout
        self.assertEqual(_apply(body, fast), _apply(body, querycfg._hp_cuts_walk(body)))

    def test_nonstandard_layout_uses_walk(self):
        """A partition with an unknown extra field is stripped by the walk, keeping the extra field."""
        body = querycfg.encode_result(samples.big_response(1, True))
        extra = b"\x0b\x00\x63\x00\x00\x00\x01z"
        stop = len(body) - 3
        patched = body[:stop] + extra + body[stop:]
        self.assertIsNone(querycfg._hp_cuts_fast(patched))
        stripped = querycfg.strip_host_port(patched)
        self.assertIn(extra, stripped)
        self.assertIsNone(querycfg.decode_result(stripped).partitions[0].hp_primary)


    def test_top_level_host_port_fields_stripped(self):
        """hp_*-shaped fields at the top level of the response, outside the partitions, are cut too."""
        body = querycfg.encode_result(samples.big_response(2, False))
        hp = querycfg.HostPort("meta1.example", 34601, 1)
        extra = (
            binary.pack_field(binary.STRUCT, 9) + querycfg._pack_host_port(hp)
            + querycfg._pack_hp_list(10, (hp, hp))
        )
        patched = body[:-2] + extra + body[-2:]
        self.assertIsNone(querycfg._hp_cuts_fast(patched))
        self.assertEqual(querycfg.strip_host_port(patched), body)

class MalformedTests(SynchronousTestCase):
    def test_truncations_raise_decode_error_only(self):
        """Every truncation of a body is a DecodeError (or a harmless read), never another exception."""
        bodies = [
            querycfg.encode_result(samples.ex3_response()),
            querycfg.error_result(codes.ERR_OK),
            querycfg.forward_result(querycfg.rpc_address("10.0.0.9", 34601)),
        ]
        for body in bodies:
            for cut in range(len(body)):
                for fn in (querycfg.decode_result, querycfg.strip_host_port, querycfg.peek_result):
                    try:
                        fn(body[:cut])
                    except DecodeError:
                        pass

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_mutations_raise_decode_error_only(self, data):
        """A body with a flipped byte is read or refused with DecodeError, never another exception."""
        body = bytearray(querycfg.encode_result(samples.ex3_response()))
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] ^= data.draw(st.integers(1, 255))
        for fn in (querycfg.decode_result, querycfg.strip_host_port, querycfg.peek_result):
            try:
                fn(bytes(body))
            except DecodeError:
                pass
