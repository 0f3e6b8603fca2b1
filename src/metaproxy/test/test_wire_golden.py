# -*- test-case-name: metaproxy.test.test_wire_golden -*-
"""
Golden bytes: every example of pegasus-protocol.md section 7, encoded and
decoded by L{metaproxy.wire}.
"""

from twisted.trial.unittest import SynchronousTestCase

from metaproxy.test.reference import samples
from metaproxy.test.reference.gen.pegasus_ref import meta as ref_meta
from metaproxy.test.reference.samples import A, hx
from metaproxy.wire import codes, frame, querycfg
from metaproxy.wire.negotiation import NEGOTIATION, auth_disable_result


class Ex1Tests(SynchronousTestCase):
    def test_encode(self):
        """ex1: a Go-style v0 query_cfg request is 122 exact bytes."""
        self.assertEqual(frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("temp")), samples.EX1)
        self.assertEqual(len(samples.EX1), 122)

    def test_decode(self):
        """ex1 decodes to v0, gpid 0/0, timeout 0, seqid 1, table temp, no indices."""
        [req] = frame.RequestDecoder().feed(samples.EX1)
        self.assertEqual(req.header, frame.RequestHeader(0, 0, 0, 0, 0, 0, False))
        self.assertEqual((req.name, req.seqid, req.oneway), (querycfg.QUERY_CFG, 1, False))
        self.assertEqual(req.args, samples.EX1[0x62:])
        self.assertEqual(querycfg.decode_args(req.args), querycfg.QueryCfgRequest("temp", ()))

    def test_java1_variant(self):
        """Java 1.x differs from ex1 only in bytes 24-39 (gpid -1/-1, timeout 1000, hash -7920), seqid 0."""
        java1 = samples.EX1[:24] + samples.EX1_JAVA1_ROUTING + samples.EX1[40:0x5E] + hx("00 00 00 00") + samples.EX1[0x62:]
        mine = frame.encode_request(
            querycfg.QUERY_CFG, 0, querycfg.encode_args("temp"), app_id=-1, partition_index=-1, client_timeout=1000
        )
        self.assertEqual(mine, java1)
        [req] = frame.RequestDecoder().feed(java1)
        self.assertEqual(req.header, frame.RequestHeader(0, -1, -1, 1000, -7920, 0, False))
        self.assertEqual(req.seqid, 0)


class Ex2Tests(SynchronousTestCase):
    def test_encode(self):
        """ex2: a Java 2.x v1 request with all five meta fields (37 bytes of meta)."""
        mine = frame.encode_request(
            querycfg.QUERY_CFG, 1, querycfg.encode_args("temp"), version=1,
            app_id=-1, partition_index=-1, client_timeout=5000,
        )
        self.assertEqual(mine, samples.EX2)

    def test_decode(self):
        """ex2 decodes to v1 with the meta fields, and the same body as ex1."""
        [req] = frame.RequestDecoder().feed(samples.EX2)
        self.assertEqual(req.header, frame.RequestHeader(1, -1, -1, 5000, -7920, 0, False))
        self.assertEqual((req.name, req.seqid), (querycfg.QUERY_CFG, 1))
        [ex1] = frame.RequestDecoder().feed(samples.EX1)
        self.assertEqual(req.args, ex1.args)

    def test_partial_meta(self):
        """A v1 meta with only fields 1 and 2 (as MPX builds it) parses; the others are 0."""
        meta = hx("08 00 01 00 00 00 02 08 00 02 00 00 00 03 00")
        body = samples.EX2[16 + 37:]
        data = b"THFT" + hx("00 00 00 01") + len(meta).to_bytes(4, "big") + len(body).to_bytes(4, "big") + meta + body
        [req] = frame.RequestDecoder().feed(data)
        self.assertEqual(req.header, frame.RequestHeader(1, 2, 3, 0, 2 * 7919 + 3, 0, False))


class Ex3Tests(SynchronousTestCase):
    def setUp(self):
        self.full = frame.encode_reply(querycfg.QUERY_CFG_ACK, 1, querycfg.encode_result(samples.ex3_response()))

    def test_total_length(self):
        """ex3 is 404 bytes and its first i32 (0x194) counts itself."""
        self.assertEqual(len(self.full), 404)
        self.assertEqual(self.full[:4], hx("00 00 01 94"))

    def test_head(self):
        """Bytes 0-0x6e (frame, result wrapper, err, app_id, count, is_stateful, list header) as in the doc."""
        self.assertEqual(self.full[:0x6E], samples.EX3_HEAD)

    def test_partition0(self):
        """Partition 0 (0x6e-0x100) is byte-identical to the annotated dump, hp_* included."""
        self.assertEqual(self.full[0x6E:0x100], samples.EX3_PARTITION0)
        self.assertEqual(self.full[0xC8:0xCB], hx("0c 00 09"))

    def test_partition1_and_tail(self):
        """Partition 1 starts at 0x100 with pid (2,1), ballot 5, primary 10.0.0.2; 0x191 is three STOPs."""
        self.assertEqual(self.full[0x100:0x10B], hx("0c 00 01 00 00 00 01 00 00 00 02"))
        self.assertEqual(self.full[0x10B:0x116], hx("0a 00 02 00 00 00 00 00 00 00 05"))
        self.assertEqual(self.full[0x11D:0x128], hx("0c 00 04 0a 00 00 02 87 f1 00 01"))
        self.assertIn(hx("0c 00 09 00 00 00 05") + b"node2" + hx("87 f1 01"), self.full[0x100:])
        self.assertEqual(self.full[0x191:], hx("00 00 00"))

    def test_decode(self):
        """The whole ex3 frame decodes back to the response it was built from."""
        [resp] = frame.ResponseDecoder().feed(self.full)
        self.assertEqual((resp.rpc_error, resp.name, resp.seqid), ("ERR_OK", querycfg.QUERY_CFG_ACK, 1))
        self.assertEqual(querycfg.decode_result(resp.body), samples.ex3_response())

    def test_new_reference_client_consumes_all(self):
        """The reference code (strict read, knows hp_*) consumes exactly the 404 - 0x44 body bytes."""
        body = self.full[0x44:]
        obj, consumed = samples.ref_read(ref_meta.query_cfg_result, body)
        self.assertEqual(consumed, len(body))
        self.assertEqual(obj.success.partitions[1].hp_primary.host, "node2")

    def test_without_hp_shrinks_55_bytes_per_partition(self):
        """Stripping hp_* removes 0x00c8-0x00fe (55 bytes) from each partition; the rest is untouched."""
        body = self.full[0x44:]
        stripped = querycfg.strip_host_port(body)
        self.assertEqual(len(body) - len(stripped), 110)
        self.assertEqual(stripped[: 0xC8 - 0x44], body[: 0xC8 - 0x44])
        self.assertEqual(stripped[0xC8 - 0x44], 0)


class Ex4Tests(SynchronousTestCase):
    def test_encode(self):
        """ex4: ERR_HANDLER_NOT_FOUND for RPC_FOO, seqid 7, no body, length 0x34."""
        self.assertEqual(
            frame.encode_reply(frame.ack_name("RPC_FOO"), 7, None, codes.ERR_HANDLER_NOT_FOUND), samples.EX4
        )

    def test_decode(self):
        """ex4 decodes with an empty body."""
        [r] = frame.ResponseDecoder().feed(samples.EX4)
        self.assertEqual((r.rpc_error, r.name, r.seqid, r.body), ("ERR_HANDLER_NOT_FOUND", "RPC_FOO_ACK", 7, b""))


class Ex5Tests(SynchronousTestCase):
    def test_encode(self):
        """ex5: a follower's forward, byte for byte (all defaults, leader in partitions[0].primary)."""
        self.assertEqual(querycfg.forward_result(A("10.0.0.9", 34601)), samples.EX5_BODY)

    def test_peek(self):
        """peek_result finds the leader in ex5, with and without the master-only hp_primary."""
        master = samples.EX5_BODY[:-3] + samples.EX5_HP_PRIMARY + samples.EX5_BODY[-3:]
        for body in (samples.EX5_BODY, master):
            peek = querycfg.peek_result(body)
            self.assertEqual(peek.err, codes.ERR_FORWARD_TO_OTHERS)
            self.assertEqual(querycfg.address_host_port(peek.leader), ("10.0.0.9", 34601))

    def test_strip_master_forward(self):
        """Stripping the master form of ex5 gives the plain ex5 bytes."""
        master = samples.EX5_BODY[:-3] + samples.EX5_HP_PRIMARY + samples.EX5_BODY[-3:]
        self.assertEqual(querycfg.strip_host_port(master), samples.EX5_BODY)

    def test_unknown_leader(self):
        """A follower that does not know the leader sends an empty list; peek says None."""
        self.assertIsNone(querycfg.peek_result(querycfg.forward_result(None)).leader)


class Ex6Tests(SynchronousTestCase):
    def test_request_decodes(self):
        """ex6: the Java 2.x negotiation request decodes (v1, timeout 10000, seqid 0)."""
        [req] = frame.RequestDecoder().feed(samples.EX6_REQUEST)
        self.assertEqual((req.name, req.seqid, req.header.version, req.header.client_timeout), (NEGOTIATION, 0, 1, 10000))

    def test_reply(self):
        """ex6: the SASL_AUTH_DISABLE reply is 64 exact bytes."""
        self.assertEqual(frame.encode_reply(frame.ack_name(NEGOTIATION), 0, auth_disable_result()), samples.EX6_REPLY)
