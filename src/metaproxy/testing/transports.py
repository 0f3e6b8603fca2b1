# -*- test-case-name: metaproxy.test.test_server -*-
"""
A client connection to a server protocol over a fake transport, for unit
tests of the server side (no sockets, no reactor).
"""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransportWithDisconnection


def connect(factory, host="127.0.0.1", port=40000, local=None):
    """
    Build a protocol from C{factory} and connect it to a
    L{StringTransportWithDisconnection} whose peer is C{host:port}.

    @param local: the transport's own address (C{getHost()}), e.g. the
        proxy's listening address that RDSN replies carry; Twisted's default
        when L{None}.
    @return: C{(protocol, transport)}; C{transport.loseConnection()} calls
        the protocol's C{connectionLost}.
    """
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    kw = {} if local is None else {"hostAddress": local}
    transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", host, port), **kw)
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto, transport
