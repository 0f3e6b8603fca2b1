"""
The Pegasus (rDSN) wire protocol, THFT and RDSN framings: codecs only, no
I/O, no policy.

 - L{binary}: thrift binary-protocol primitives (big-endian).
 - L{codes}: rDSN error-code names and the subset every client understands.
 - L{frame}: THFT request headers v0/v1, reply framing, incremental decoders.
 - L{rdsn}: RDSN framing (the C++ client's 192-byte native header), same bodies.
 - L{crc32c}: the CRC-32C RDSN frames may carry.
 - L{framing}: the per-connection choice of THFT or RDSN by the first 4 bytes.
 - L{querycfg}: the query_cfg request/response structs with Pegasus's base types.
 - L{negotiation}: the SASL negotiation reply that disables auth.
"""
