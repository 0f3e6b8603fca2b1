"""
The Pegasus (rDSN) THFT wire protocol: framing and codecs, no I/O, no policy.

 - L{binary}: thrift binary-protocol primitives (big-endian).
 - L{codes}: rDSN error-code names and the subset every client understands.
 - L{frame}: THFT request headers v0/v1, reply framing, incremental decoders.
 - L{querycfg}: the query_cfg request/response structs with Pegasus's base types.
 - L{negotiation}: the SASL negotiation reply that disables auth.
"""
