# -*- test-case-name: metaproxy.test.test_wire_negotiation -*-
"""
C{RPC_NEGOTIATION}: the SASL exchange of Pegasus security (PEG
C{idl/security.thrift}).

Both C{negotiation_request} and C{negotiation_response} are
C{{1: status (i32 enum), 2: msg (dsn.blob, a bare thrift binary under a
STRUCT field header)}}. The request is the args struct's field 1, the
response the result's field 0.

Java 2.x (with a credential configured) and C++ clients negotiate first on
every session and wait for the answer. Replying C{SASL_AUTH_DISABLE} makes
both proceed at once (unless a C++ client has C{mandatory_auth}); not
replying costs Java a 10 s stall.
"""

import attrs

from metaproxy.wire import binary
from metaproxy.wire.binary import DecodeError, Reader

NEGOTIATION = "RPC_NEGOTIATION"
NEGOTIATION_ACK = "RPC_NEGOTIATION_ACK"

#: C{negotiation_status} values.
INVALID = 0
SASL_LIST_MECHANISMS = 1
SASL_LIST_MECHANISMS_RESP = 2
SASL_SELECT_MECHANISMS = 3
SASL_SELECT_MECHANISMS_RESP = 4
SASL_INITIATE = 5
SASL_CHALLENGE = 6
SASL_CHALLENGE_RESP = 7
SASL_SUCC = 8
SASL_AUTH_DISABLE = 9
SASL_AUTH_FAIL = 10

STATUS_NAMES = {
    INVALID: "INVALID",
    SASL_LIST_MECHANISMS: "SASL_LIST_MECHANISMS",
    SASL_LIST_MECHANISMS_RESP: "SASL_LIST_MECHANISMS_RESP",
    SASL_SELECT_MECHANISMS: "SASL_SELECT_MECHANISMS",
    SASL_SELECT_MECHANISMS_RESP: "SASL_SELECT_MECHANISMS_RESP",
    SASL_INITIATE: "SASL_INITIATE",
    SASL_CHALLENGE: "SASL_CHALLENGE",
    SASL_CHALLENGE_RESP: "SASL_CHALLENGE_RESP",
    SASL_SUCC: "SASL_SUCC",
    SASL_AUTH_DISABLE: "SASL_AUTH_DISABLE",
    SASL_AUTH_FAIL: "SASL_AUTH_FAIL",
}

#: The only mechanism Pegasus offers and accepts (its C{supported_mechanisms}).
GSSAPI = "GSSAPI"

#: Largest C{msg} accepted when decoding (GSSAPI tokens are a few KiB; a
#: Kerberos ticket with a large PAC stays well below this).
MAX_MSG_BYTES = 1 << 20


@attrs.frozen
class NegotiationMessage:
    """
    One C{negotiation_request} or C{negotiation_response}.

    @ivar status: a C{negotiation_status} value.
    @ivar msg: the blob, raw L{bytes}.
    """

    status: int
    msg: bytes = b""

    def status_name(self):
        """@return: the status's enum name (C{"status 42"} for an unknown value)."""
        return status_name(self.status)


def status_name(status):
    """@return: the enum name of a C{negotiation_status} value."""
    return STATUS_NAMES.get(status, f"status {status}")


def _pack_message(fid, status, msg):
    return b"".join(
        (
            binary.pack_field(binary.STRUCT, fid),
            binary.pack_field(binary.I32, 1),
            binary.pack_i32(status),
            binary.pack_field(binary.STRUCT, 2),
            binary.pack_binary(msg),
            b"\x00\x00",
        )
    )


def encode_request_args(status, msg=b""):
    """@return: the args struct of an C{RPC_NEGOTIATION} request."""
    return _pack_message(1, status, msg)


def encode_response_result(status, msg=b""):
    """@return: a reply body: the C{negotiation_response} as result field 0."""
    return _pack_message(0, status, msg)


def auth_disable_result():
    """
    @return: the reply body C{negotiation_response(status=SASL_AUTH_DISABLE,
        msg="")} wrapped as result field 0.
    """
    return encode_response_result(SASL_AUTH_DISABLE)


def _read_message(data, what):
    r = Reader(data)
    ttype, _ = r.field()
    if ttype != binary.STRUCT:
        raise DecodeError(f"{what}: expected a negotiation struct")
    status, msg = INVALID, b""
    while True:
        ttype, fid = r.field()
        if ttype == binary.STOP:
            break
        if fid == 1 and ttype == binary.I32:
            status = r.i32()
        elif fid == 2 and ttype == binary.STRUCT:
            n = r.i32()
            if n < 0 or n > MAX_MSG_BYTES:
                raise DecodeError(f"{what}: msg length {n} out of range")
            msg = r.take(n)
        else:
            r.skip(ttype)
    if r.field()[0] != binary.STOP or r.remaining():
        raise DecodeError(f"{what}: trailing data")
    return NegotiationMessage(status, bytes(msg))


def decode_request_args(args):
    """
    @return: the L{NegotiationMessage} of a request's args struct.
    @raise DecodeError: if malformed.
    """
    return _read_message(args, "negotiation_request")


def decode_response_result(body):
    """
    @return: the L{NegotiationMessage} of a reply body.
    @raise DecodeError: if malformed.
    """
    return _read_message(body, "negotiation_response")
