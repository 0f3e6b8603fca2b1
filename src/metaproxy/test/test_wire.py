"""
Tests for L{metaproxy.wire}: golden bytes from pegasus-protocol.md section 7,
round trips, and byte-for-byte agreement with thrift-generated reference
code (see reference/README).
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.transport.TTransport import TMemoryBuffer
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.test.reference.gen.dsn_base import ttypes as base
from metaproxy.test.reference.gen.pegasus_ref import meta as ref_meta
from metaproxy.test.reference.gen.pegasus_ref import ttypes as ref
from metaproxy.wire import binary, codes, frame, querycfg
from metaproxy.wire.binary import DecodeError
from metaproxy.wire.negotiation import auth_disable_result

A = querycfg.rpc_address


def hx(text):
    return bytes.fromhex("".join(text.split()))


EX1 = hx("""
54 48 46 54 00 00 00 00 00 00 00 30 00 00 00 00 00 00 00 4a 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 80 01 00 01 00 00 00 26 52 50 43 5f 43 4d 5f 51
55 45 52 59 5f 50 41 52 54 49 54 49 4f 4e 5f 43 4f 4e 46 49 47 5f 42 59 5f 49 4e 44 45 58 00 00
00 01 0c 00 01 0b 00 01 00 00 00 04 74 65 6d 70 0f 00 02 08 00 00 00 00 00 00""")

EX2 = hx("""
54 48 46 54 00 00 00 01 00 00 00 25 00 00 00 4a 08 00 01 ff ff ff ff 08 00 02 ff ff ff ff 08 00
03 00 00 13 88 0a 00 04 00 00 00 00 00 00 00 00 02 00 05 00 00 80 01 00 01 00 00 00 26 52 50 43
5f 43 4d 5f 51 55 45 52 59 5f 50 41 52 54 49 54 49 4f 4e 5f 43 4f 4e 46 49 47 5f 42 59 5f 49 4e
44 45 58 00 00 00 01 0c 00 01 0b 00 01 00 00 00 04 74 65 6d 70 0f 00 02 08 00 00 00 00 00 00""")

EX3_PARTITION0 = hx("""
0c 00 01 00 00 00 00 00 00 00 02  0a 00 02 00 00 00 00 00 00 00 03  08 00 03 00 00 00 03
0c 00 04 0a 00 00 01 87 f1 00 01
0f 00 05 0c 00 00 00 02 0a 00 00 02 87 f1 00 01 0a 00 00 03 87 f1 00 01
0f 00 06 0c 00 00 00 00  0a 00 07 00 00 00 00 00 00 00 64  08 00 08 00 00 00 00
0c 00 09 00 00 00 05 6e 6f 64 65 31 87 f1 01
0f 00 0a 0c 00 00 00 02 00 00 00 05 6e 6f 64 65 32 87 f1 01 00 00 00 05 6e 6f 64 65 33 87 f1 01
0f 00 0b 0c 00 00 00 00 00""")

EX4 = hx("00 00 00 34 00 00 00 15") + b"ERR_HANDLER_NOT_FOUND" + hx("80 01 00 02 00 00 00 0b") + b"RPC_FOO_ACK" + hx("00 00 00 07")

EX6_REQUEST = (
    hx("54 48 46 54 00000001 00000025 0000002e")
    + hx("08 00 01 00000000 08 00 02 00000000 08 00 03 00002710 0a 00 04 0000000000000000 02 00 05 00 00")
    + hx("80 01 00 01 0000000f") + b"RPC_NEGOTIATION" + hx("00000000")
    + hx("0c 00 01 08 00 01 00000001 0c 00 02 00000000 00 00")
)
EX6_REPLY = hx("""
00 00 00 40 00 00 00 06 45 52 52 5f 4f 4b 80 01 00 02 00 00 00 13 52 50 43 5f 4e 45 47 4f 54 49
41 54 49 4f 4e 5f 41 43 4b 00 00 00 00 0c 00 00 08 00 01 00 00 00 09 0c 00 02 00 00 00 00 00 00""")


def ex3_response():
    def part(pidx, ballot, primary, secondaries, lcd, hp_primary, hp_secondaries):
        return querycfg.PartitionConfig(
            2, pidx, ballot, 3, A(primary, 34801), tuple(A(s, 34801) for s in secondaries), (), lcd, 0,
            querycfg.HostPort(hp_primary, 34801),
            tuple(querycfg.HostPort(h, 34801) for h in hp_secondaries), (),
        )

    return querycfg.QueryCfgResponse(
        "ERR_OK", 2, 2, True,
        (
            part(0, 3, "10.0.0.1", ("10.0.0.2", "10.0.0.3"), 100, "node1", ("node2", "node3")),
            part(1, 5, "10.0.0.2", ("10.0.0.1", "10.0.0.3"), 200, "node2", ("node1", "node3")),
        ),
    )


class GoldenTests(SynchronousTestCase):
    def test_ex1_v0_request(self):
        """ex1: a Go-style v0 query_cfg request, byte for byte, and its decoding."""
        self.assertEqual(frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("temp")), EX1)
        [req] = frame.RequestDecoder().feed(EX1)
        self.assertEqual((req.header.version, req.header.app_id, req.name, req.seqid), (0, 0, querycfg.QUERY_CFG, 1))
        self.assertEqual(querycfg.decode_args(req.args), querycfg.QueryCfgRequest("temp", ()))

    def test_ex1_java1_variant(self):
        """The Java 1.x header differs only in bytes 24-39 (gpid -1/-1, timeout 1000, hash -7920)."""
        java1 = frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("temp"),
                                     app_id=-1, partition_index=-1, client_timeout=1000)
        self.assertEqual(java1[24:40], hx("ff ff ff ff ff ff ff ff 00 00 03 e8 ff ff e1 10"))
        self.assertEqual(java1[:24] + java1[40:], EX1[:24] + EX1[40:])

    def test_ex2_v1_request(self):
        """ex2: a Java 2.x v1 request with all five meta fields."""
        mine = frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("temp"), version=1,
                                    app_id=-1, partition_index=-1, client_timeout=5000)
        self.assertEqual(mine, EX2)
        [req] = frame.RequestDecoder().feed(EX2)
        self.assertEqual(
            req.header,
            frame.RequestHeader(1, -1, -1, 5000, -7920, 0, False),
        )

    def test_ex3_response(self):
        """ex3: 404 bytes; partition 0 exactly as annotated; partition 1 at 0x100."""
        full = frame.encode_reply(querycfg.QUERY_CFG_ACK, 1, querycfg.encode_result(ex3_response()))
        self.assertEqual(len(full), 404)
        self.assertEqual(full[:4], hx("00 00 01 94"))
        self.assertEqual(full[4:0x0E], hx("00 00 00 06") + b"ERR_OK")
        self.assertEqual(full[0x0E:0x12], hx("80 01 00 02"))
        self.assertEqual(full[0x40:0x47], hx("00 00 00 01 0c 00 00"))
        self.assertEqual(full[0x47:0x6E], hx(
            "0c 00 01 00 00 00 06 45 52 52 5f 4f 4b 08 00 02 00 00 00 02 08 00 03 00 00 00 02 02 00 04 01"
            " 0f 00 05 0c 00 00 00 02"))
        self.assertEqual(full[0x6E:0x100], EX3_PARTITION0)
        self.assertEqual(full[0x100:0x10B], hx("0c 00 01 00 00 00 01 00 00 00 02"))
        self.assertEqual(full[0x191:], hx("00 00 00"))

    def test_ex3_without_hp_shrinks_55_bytes_per_partition(self):
        """Stripping hp_* removes 0x00c8-0x00fe (55 bytes) from each partition."""
        body = querycfg.encode_result(ex3_response())
        stripped = querycfg.strip_host_port(body)
        self.assertEqual(len(body) - len(stripped), 110)
        self.assertIn(EX3_PARTITION0[: 0xC8 - 0x6E] + b"\x00", stripped)
        self.assertTrue(all(p.hp_primary is None for p in querycfg.decode_result(stripped).partitions))

    def test_ex4_unknown_rpc(self):
        """ex4: the rpc-level error for an unknown RPC, with no body."""
        self.assertEqual(frame.encode_reply(frame.ack_name("RPC_FOO"), 7, None, codes.ERR_HANDLER_NOT_FOUND), EX4)
        [r] = frame.ResponseDecoder().feed(EX4)
        self.assertEqual((r.rpc_error, r.name, r.seqid, r.body), ("ERR_HANDLER_NOT_FOUND", "RPC_FOO_ACK", 7, b""))

    def test_ex5_forward(self):
        """ex5: a follower's forward carries the leader in partitions[0].primary, defaults elsewhere."""
        body = querycfg.forward_result(A("10.0.0.9", 34601))
        self.assertEqual(body[:3], hx("0c 00 00"))
        self.assertIn(hx("0c 00 04 0a 00 00 09 87 29 00 01"), body)
        self.assertIn(hx("08 00 02 00 00 00 00 08 00 03 00 00 00 00 02 00 04 00 0f 00 05 0c 00 00 00 01"), body)
        peek = querycfg.peek_result(body)
        self.assertEqual((peek.err, querycfg.address_host_port(peek.leader)), ("ERR_FORWARD_TO_OTHERS", ("10.0.0.9", 34601)))
        self.assertIsNone(querycfg.peek_result(querycfg.forward_result(None)).leader)

    def test_ex6_negotiation(self):
        """ex6: a Java 2.x negotiation request decodes; the SASL_AUTH_DISABLE reply is 64 exact bytes."""
        [req] = frame.RequestDecoder().feed(EX6_REQUEST)
        self.assertEqual((req.name, req.seqid, req.header.client_timeout), ("RPC_NEGOTIATION", 0, 10000))
        self.assertEqual(frame.encode_reply("RPC_NEGOTIATION_ACK", 0, auth_disable_result()), EX6_REPLY)


def _ref_write(obj):
    buf = TMemoryBuffer()
    obj.write(TBinaryProtocol(buf))
    return buf.getvalue()


def _ref_read(cls, data):
    obj = cls()
    obj.read(TBinaryProtocol(TMemoryBuffer(data)))
    return obj


def _to_ref(resp, with_hp=True):
    parts = []
    for p in resp.partitions:
        kw = dict(
            pid=base.gpid(p.app_id, p.partition_index), ballot=p.ballot, max_replica_count=p.max_replica_count,
            primary=base.rpc_address(p.primary), secondaries=[base.rpc_address(a) for a in p.secondaries],
            last_drops=[base.rpc_address(a) for a in p.last_drops], last_committed_decree=p.last_committed_decree,
            partition_flags=p.partition_flags,
        )
        if with_hp and p.hp_primary is not None:
            kw.update(
                hp_primary=base.host_port(p.hp_primary.host, p.hp_primary.port, p.hp_primary.type),
                hp_secondaries=[base.host_port(h.host, h.port, h.type) for h in p.hp_secondaries],
                hp_last_drops=[base.host_port(h.host, h.port, h.type) for h in p.hp_last_drops],
            )
        parts.append(ref.partition_configuration(**kw))
    return ref.query_cfg_response(
        err=base.error_code(resp.err), app_id=resp.app_id, partition_count=resp.partition_count,
        is_stateful=resp.is_stateful, partitions=parts,
    )


def _big_response(n=256, with_hp=True):
    return querycfg.QueryCfgResponse(
        "ERR_OK", 7, n, True,
        tuple(
            querycfg.PartitionConfig(
                7, i, 10 + i, 3, A("10.1.%d.1" % (i % 250), 34801 + i % 3),
                (A("10.2.0.1", 34802), A("192.168.1.1", 65535)), (A("10.3.0.1", 1),), 1000 * i, i % 2,
                querycfg.HostPort(f"replica{i}.example", 34801) if with_hp else None,
                (querycfg.HostPort("r2", 34802), querycfg.HostPort("r3", 65535)) if with_hp else None,
                () if with_hp else None,
            )
            for i in range(n)
        ),
    )


class ReferenceTests(SynchronousTestCase):
    def test_request_args_match_generated(self):
        """The hand-encoded args equal thrift's query_cfg_args, and decode back."""
        for name, idx in (("temp", []), ("t" * 300, [0, 5, 2**31 - 1])):
            generated = _ref_write(ref_meta.query_cfg_args(query=ref.query_cfg_request(name, idx)))
            self.assertEqual(querycfg.encode_args(name, idx), generated)
            self.assertEqual(querycfg.decode_args(generated), querycfg.QueryCfgRequest(name, tuple(idx)))

    def test_response_matches_generated_both_ways(self):
        """With and without hp_*, the hand codec and generated code produce and read the same bytes."""
        for with_hp in (True, False):
            resp = _big_response(64, with_hp)
            mine = querycfg.encode_result(resp)
            generated = _ref_write(ref_meta.query_cfg_result(success=_to_ref(resp, with_hp)))
            self.assertEqual(mine, generated)
            self.assertEqual(querycfg.decode_result(generated), resp)
            back = _ref_read(ref_meta.query_cfg_result, mine).success
            self.assertEqual(back, _to_ref(resp, with_hp))

    def test_negotiation_matches_generated(self):
        """The SASL_AUTH_DISABLE body equals thrift's negotiation result."""
        generated = _ref_write(ref_meta.negotiate_result(
            success=ref.negotiation_response(ref.negotiation_status.SASL_AUTH_DISABLE, base.blob(b""))))
        self.assertEqual(auth_disable_result(), generated)

    def test_old_client_fails_on_hp_fields_but_reads_stripped(self):
        """
        A client generated without fields 9-11 desynchronises on hp_* bytes
        (section 4.3) and reads the stripped body exactly.
        """
        body = querycfg.encode_result(_big_response(4, True))
        self.assertRaises(Exception, _ref_read, ref_meta.old_query_cfg_result, body)
        old = _ref_read(ref_meta.old_query_cfg_result, querycfg.strip_host_port(body)).success
        self.assertEqual([p.pid.partition_index for p in old.partitions], [0, 1, 2, 3])
        self.assertEqual(old.partitions[0].primary.address, A("10.1.0.1", 34801))


class CodecTests(SynchronousTestCase):
    def test_strip_keeps_everything_else(self):
        """Stripping drops exactly hp_* and nothing else."""
        with_hp = _big_response(32, True)
        self.assertEqual(
            querycfg.decode_result(querycfg.strip_host_port(querycfg.encode_result(with_hp))),
            _big_response(32, False),
        )

    def test_truncated_bodies_raise_decode_error(self):
        """Every truncation of a body is a DecodeError, never another exception."""
        body = querycfg.encode_result(_big_response(2, True))
        for cut in range(len(body)):
            for fn in (querycfg.decode_result, querycfg.strip_host_port):
                try:
                    fn(body[:cut])
                except DecodeError:
                    pass

    def test_request_header_limits(self):
        """Frames over the cap, bad magic, bad version, bad v0 header length: FramingError."""
        good = frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("t"))
        for bad in (b"RDSN" + good[4:], good[:4] + b"\x00\x00\x00\x02" + good[8:],
                    good[:8] + b"\x00\x00\x00\x31" + good[12:]):
            self.assertRaises(frame.FramingError, frame.RequestDecoder().feed, bad)
        self.assertRaises(frame.FramingError, frame.RequestDecoder(max_frame_bytes=100).feed, good)

    @settings(max_examples=300)
    @given(st.text(max_size=40), st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20))
    def test_args_fast_path_agrees(self, name, indices):
        """The fixed-offset args decoder agrees with the general one on every input shape."""
        args = querycfg.encode_args(name, indices)
        self.assertEqual(querycfg.decode_args(args), querycfg.QueryCfgRequest(name, tuple(indices)))
        reordered = (binary.pack_field(binary.STRUCT, 1) + binary.pack_field(binary.LIST, 2)
                     + binary.pack_list_header(binary.I32, len(indices))
                     + b"".join(i.to_bytes(4, "big", signed=True) for i in indices)
                     + binary.pack_field(binary.STRING, 1) + binary.pack_string(name) + b"\x00\x00")
        self.assertEqual(querycfg.decode_args(reordered), querycfg.QueryCfgRequest(name, tuple(indices)))

    @settings(max_examples=200)
    @given(st.sampled_from(sorted(codes.CLIENT_SAFE)), st.integers(-(2**31), 2**31 - 1), st.integers(0, 4))
    def test_peek_fast_path_agrees(self, err, app_id, n):
        """peek_result agrees with a full decode for any error, app id and size."""
        resp = querycfg.QueryCfgResponse(err, app_id, n, True, _big_response(n, False).partitions)
        body = querycfg.encode_result(resp)
        peek = querycfg.peek_result(body)
        full = querycfg.decode_result(body)
        self.assertEqual((peek.err, peek.app_id, peek.partition_count), (full.err, full.app_id, full.partition_count))
