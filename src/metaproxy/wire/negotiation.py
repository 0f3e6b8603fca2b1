# -*- test-case-name: metaproxy.test.test_wire_frame -*-
"""
C{RPC_NEGOTIATION}: SASL negotiation, which metaproxy terminates.

Java 2.x (with a credential configured) and C++ clients negotiate first on
every session and wait for the answer. Replying C{SASL_AUTH_DISABLE} makes
both proceed at once; not replying costs Java a 10 s stall.
"""

from metaproxy.wire import binary

NEGOTIATION = "RPC_NEGOTIATION"
SASL_AUTH_DISABLE = 9


def auth_disable_result():
    """
    @return: the reply body C{negotiation_response(status=SASL_AUTH_DISABLE,
        msg="")} wrapped as result field 0.
    """
    return b"".join(
        (
            binary.pack_field(binary.STRUCT, 0),
            binary.pack_field(binary.I32, 1),
            binary.pack_i32(SASL_AUTH_DISABLE),
            binary.pack_field(binary.STRUCT, 2),
            binary.pack_binary(b""),
            b"\x00\x00",
        )
    )
