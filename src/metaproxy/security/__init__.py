"""
Pegasus security: SASL GSSAPI (Kerberos) over C{RPC_NEGOTIATION}.

L{metaproxy.security.sasl} holds the RFC 4752 mechanism on both ends,
L{metaproxy.security.credentials} keeps metaproxy's own Kerberos
credentials fresh, L{metaproxy.security.upstream} negotiates on every meta
connection before it is used, and L{metaproxy.security.downstream} answers
clients' negotiations as a secured meta does.
"""
