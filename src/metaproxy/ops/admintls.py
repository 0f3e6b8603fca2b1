# -*- test-case-name: metaproxy.test.test_adminauth -*-
"""
TLS for the admin listener: C{admin.listen} may be a Twisted C{ssl:}
endpoint string (C{ssl:24601:interface=127.0.0.1:certKey=cert.pem:privateKey=key.pem}).

The listener is opened as plain TCP and TLS is put into the factory
(L{TLSMemoryBIOFactory}), not into the endpoint: a hot upgrade hands the
listening socket to the new process, which adopts it with its factory,
so the new process serves TLS on it too (an C{ssl:} endpoint's TLS would
stay behind with the old process's endpoint).
"""

from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

PREFIX = "ssl:"


def split_tls(description):
    """
    @param description: a Twisted server endpoint string.
    @return: C{(tcp description, context factory)} for an C{ssl:} string
        (its port, interface and backlog, and the certificate and key it
        names, loaded now); C{(description, None)} for any other.
    @raise Exception: what Twisted's parser raises for a bad C{ssl:} string
        (the config check has reported it already).
    """
    if not description.startswith(PREFIX):
        return description, None
    reactor = MemoryReactor()
    serverFromString(reactor, description).listen(Factory())
    port, _, context, backlog, interface = reactor.sslServers[0]
    tcp = f"tcp:{port}:backlog={backlog}"
    if interface:
        tcp += f":interface={quoteStringArgument(interface)}"
    return tcp, context
