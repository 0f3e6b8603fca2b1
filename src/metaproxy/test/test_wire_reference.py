# -*- test-case-name: metaproxy.test.test_wire_reference -*-
"""
The hand codec of L{metaproxy.wire} against thrift code generated from our
reference IDL (reference/README): identical bytes in both directions, with
and without the hp_* fields, and proof that clients generated without
fields 9-11 fail on them but read what L{querycfg.strip_host_port} leaves.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from thrift.protocol.TProtocol import TProtocolException
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.test.reference import samples
from metaproxy.test.reference.gen.dsn_base import ttypes as base
from metaproxy.test.reference.gen.pegasus_ref import meta as ref_meta
from metaproxy.test.reference.gen.pegasus_ref import ttypes as ref
from metaproxy.wire import frame, querycfg
from metaproxy.wire.negotiation import auth_disable_result

_i32 = st.integers(-(2**31), 2**31 - 1)
_i64 = st.integers(-(2**63), 2**63 - 1)
_addr = st.integers(0, 2**64 - 1)
_hp = st.builds(querycfg.HostPort, st.text(max_size=12), st.integers(0, 65535), st.sampled_from([0, 1]))


@st.composite
def _partitions(draw):
    with_hp = draw(st.booleans())
    return querycfg.PartitionConfig(
        draw(_i32), draw(_i32), draw(_i64), draw(_i32), draw(_addr),
        tuple(draw(st.lists(_addr, max_size=3))), tuple(draw(st.lists(_addr, max_size=2))),
        draw(_i64), draw(_i32),
        draw(_hp) if with_hp else None,
        tuple(draw(st.lists(_hp, max_size=3))) if with_hp else None,
        tuple(draw(st.lists(_hp, max_size=2))) if with_hp else None,
    )


_responses = st.builds(
    querycfg.QueryCfgResponse,
    st.sampled_from(["ERR_OK", "ERR_OBJECT_NOT_FOUND", "ERR_FORWARD_TO_OTHERS"]),
    _i32, _i32, st.booleans(),
    st.lists(_partitions(), max_size=4).map(tuple),
)


class RequestReferenceTests(SynchronousTestCase):
    def test_args_match_generated(self):
        """The hand-encoded args equal thrift's query_cfg_args, and the hand decoder reads thrift's."""
        for name, idx in (("temp", []), ("t" * 300, [0, 5, 2**31 - 1]), ("表", [-1])):
            generated = samples.ref_write(ref_meta.query_cfg_args(query=ref.query_cfg_request(name, idx)))
            self.assertEqual(querycfg.encode_args(name, idx), generated)
            self.assertEqual(querycfg.decode_args(generated), querycfg.QueryCfgRequest(name, tuple(idx)))

    def test_v1_meta_matches_generated(self):
        """The v1 meta struct we write equals thrift's request_meta with all five fields."""
        data = frame.encode_request("RPC_X", 1, b"\x00", version=1, app_id=-1, partition_index=-1,
                                    client_timeout=5000, partition_hash=9, is_backup_request=True)
        meta_length = int.from_bytes(data[8:12], "big")
        generated = samples.ref_write(ref.request_meta(-1, -1, 5000, 9, True))
        self.assertEqual(data[16 : 16 + meta_length], generated)

    def test_v1_meta_from_generated(self):
        """A v1 request whose meta thrift wrote with some fields unset decodes them as 0."""
        meta = samples.ref_write(ref.request_meta(app_id=3, client_timeout=250))
        body = frame.encode_request("RPC_X", 4, b"\x00")[48:]
        data = b"THFT" + (1).to_bytes(4, "big") + len(meta).to_bytes(4, "big") + len(body).to_bytes(4, "big")
        [req] = frame.RequestDecoder().feed(data + meta + body)
        self.assertEqual(req.header, frame.RequestHeader(1, 3, 0, 250, 3 * 7919, 0, False))


class ResponseReferenceTests(SynchronousTestCase):
    def test_big_response_both_ways(self):
        """256 partitions, with and without hp_*: same bytes, and each side reads the other's."""
        for with_hp in (True, False):
            resp = samples.big_response(256, with_hp)
            mine = querycfg.encode_result(resp)
            generated = samples.ref_write(ref_meta.query_cfg_result(success=samples.to_ref(resp, with_hp)))
            self.assertEqual(mine, generated)
            self.assertEqual(querycfg.decode_result(generated), resp)
            back, consumed = samples.ref_read(ref_meta.query_cfg_result, mine)
            self.assertEqual((back.success, consumed), (samples.to_ref(resp, with_hp), len(mine)))

    @settings(max_examples=150, deadline=None)
    @given(_responses)
    def test_any_response_both_ways(self, resp):
        """For any response, hand and generated code write the same bytes and read each other's."""
        mine = querycfg.encode_result(resp)
        generated = samples.ref_write(ref_meta.query_cfg_result(success=samples.to_ref(resp)))
        self.assertEqual(mine, generated)
        self.assertEqual(querycfg.decode_result(generated), resp)

    def test_negotiation_matches_generated(self):
        """The SASL_AUTH_DISABLE body equals thrift's negotiate result."""
        generated = samples.ref_write(ref_meta.negotiate_result(
            success=ref.negotiation_response(ref.negotiation_status.SASL_AUTH_DISABLE, base.blob(b""))))
        self.assertEqual(auth_disable_result(), generated)


class OldClientTests(SynchronousTestCase):
    """
    pegasus-protocol.md 4.3: why hp_* must be stripped for THFT clients.
    """

    def test_old_client_fails_on_hp_fields(self):
        """A client generated without fields 9-11 cannot read a response carrying them."""
        body = querycfg.encode_result(samples.ex3_response())
        self.assertRaises(TProtocolException, samples.ref_read, ref_meta.old_query_cfg_result, body)

    def test_old_client_reads_stripped(self):
        """After strip_host_port the same client reads every partition and consumes every byte."""
        body = querycfg.strip_host_port(querycfg.encode_result(samples.big_response(16, True)))
        old, consumed = samples.ref_read(ref_meta.old_query_cfg_result, body)
        self.assertEqual(consumed, len(body))
        self.assertEqual([p.pid.partition_index for p in old.success.partitions], list(range(16)))
        self.assertEqual(old.success.partitions[0].primary.address, querycfg.rpc_address("10.1.0.1", 34801))

    @settings(max_examples=100, deadline=None)
    @given(_responses)
    def test_old_client_reads_any_stripped(self, resp):
        """For any response, the stripped bytes are what thrift writes for it without hp_*."""
        stripped = querycfg.strip_host_port(querycfg.encode_result(resp))
        old, consumed = samples.ref_read(ref_meta.old_query_cfg_result, stripped)
        self.assertEqual(consumed, len(stripped))
        self.assertEqual(stripped, samples.ref_write(ref_meta.query_cfg_result(success=samples.to_ref(resp, False))))
