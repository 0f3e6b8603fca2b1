"""
L{metaproxy.wire.negotiation}: the negotiation request and response
structs, against thrift code generated from the reference IDL and the
ex6 bytes of pegasus-protocol.md.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.test.reference import samples
from metaproxy.test.reference.gen.dsn_base import ttypes as base
from metaproxy.test.reference.gen.pegasus_ref import meta as ref_meta
from metaproxy.test.reference.gen.pegasus_ref import ttypes as ref
from metaproxy.wire import binary, frame
from metaproxy.wire import negotiation as nego

_status = st.integers(0, 10)
_msg = st.binary(max_size=300)


class GeneratedCodeTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(_status, _msg)
    def test_request_args_match_generated(self, status, msg):
        """The args struct is what thrift writes for negotiate(1: negotiation struct), and reads back."""
        generated = samples.ref_write(ref_meta.negotiate_args(ref.negotiation_response(status, base.blob(msg))))
        self.assertEqual(nego.encode_request_args(status, msg), generated)
        self.assertEqual(nego.decode_request_args(generated), nego.NegotiationMessage(status, msg))

    @settings(max_examples=100, deadline=None)
    @given(_status, _msg)
    def test_response_result_matches_generated(self, status, msg):
        """The reply body is thrift's negotiate result, and reads back."""
        generated = samples.ref_write(
            ref_meta.negotiate_result(success=ref.negotiation_response(status, base.blob(msg))))
        self.assertEqual(nego.encode_response_result(status, msg), generated)
        self.assertEqual(nego.decode_response_result(generated), nego.NegotiationMessage(status, msg))


class Ex6Tests(SynchronousTestCase):
    def test_java_request_args(self):
        """ex6: Java 2.x's first request is SASL_LIST_MECHANISMS with an empty blob."""
        [req] = frame.RequestDecoder().feed(samples.EX6_REQUEST)
        self.assertEqual(nego.decode_request_args(req.args), nego.NegotiationMessage(nego.SASL_LIST_MECHANISMS, b""))

    def test_auth_disable_unchanged(self):
        """The SASL_AUTH_DISABLE reply is still the 64 bytes of ex6."""
        self.assertEqual(
            frame.encode_reply(frame.ack_name(nego.NEGOTIATION), 0, nego.auth_disable_result()), samples.EX6_REPLY)


class BadInputTests(SynchronousTestCase):
    def test_truncated(self):
        """Every strict prefix of a request is rejected with DecodeError."""
        data = nego.encode_request_args(nego.SASL_INITIATE, b"token")
        for n in range(len(data)):
            self.assertRaises(binary.DecodeError, nego.decode_request_args, data[:n])

    def test_huge_msg_length(self):
        """A blob length above MAX_MSG_BYTES is refused before any allocation."""
        data = (binary.pack_field(binary.STRUCT, 1) + binary.pack_field(binary.STRUCT, 2)
                + binary.pack_i32(nego.MAX_MSG_BYTES + 1) + b"x" * 8)
        self.assertRaises(binary.DecodeError, nego.decode_request_args, data)

    def test_trailing_data(self):
        """Bytes after the args struct are refused."""
        self.assertRaises(binary.DecodeError, nego.decode_request_args, nego.encode_request_args(1) + b"\x00")

    def test_unknown_fields_skipped(self):
        """Fields the struct does not define are skipped, as a thrift reader does."""
        data = (binary.pack_field(binary.STRUCT, 1) + binary.pack_field(binary.I64, 9) + binary.pack_i64(5)
                + binary.pack_field(binary.I32, 1) + binary.pack_i32(3) + b"\x00\x00")
        self.assertEqual(nego.decode_request_args(data), nego.NegotiationMessage(3, b""))

    def test_status_names(self):
        """Unknown statuses still get a printable name."""
        self.assertEqual((nego.status_name(8), nego.status_name(42)), ("SASL_SUCC", "status 42"))
