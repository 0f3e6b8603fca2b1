# -*- test-case-name: metaproxy.test.test_activation -*-
"""
systemd socket activation: C{listen: systemd:domain=INET:index=0}.

Twisted's C{systemd:} server endpoint adopts a socket that systemd passed
in C{LISTEN_FDS}. Its parser looks the descriptor up when the string is
parsed, so a config that names one would not even parse on a machine (or
in C{metaproxy check}) where nothing was inherited. This module checks the
string's shape without needing the descriptor, and turns a missing one
into a clear bind failure at start (never a traceback).
"""

import socket

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from zope.interface import implementer
from twisted.internet.interfaces import IStreamServerEndpoint

PREFIX = "systemd:"


def systemd_endpoint_problem(description):
    """
    Check a C{systemd:} endpoint string without looking at C{LISTEN_FDS}.

    @return: what is wrong with it, or L{None} if it is well-formed: a
        C{domain} naming an address family (C{INET}, C{INET6}, C{UNIX})
        and exactly one of C{index} (an integer >= 0) or C{name}.
    """
    args = {}
    for part in description[len(PREFIX):].split(":"):
        key, sep, value = part.partition("=")
        if not sep or not key or key in args:
            return f"not a valid systemd endpoint: {part!r} is not a single key=value"
        args[key] = value
    unknown = set(args) - {"domain", "index", "name"}
    if unknown:
        return f"not a valid systemd endpoint: unknown argument(s) {', '.join(sorted(unknown))}"
    if not isinstance(getattr(socket, "AF_" + args.get("domain", ""), None), int):
        return "not a valid systemd endpoint: domain= must be INET, INET6 or UNIX"
    if ("index" in args) == ("name" in args):
        return "not a valid systemd endpoint: give exactly one of index= or name="
    if "index" in args and not (args["index"].isdigit()):
        return "not a valid systemd endpoint: index= must be an integer >= 0"
    return None


@implementer(IStreamServerEndpoint)
class _Unavailable:
    """An endpoint whose C{listen} fails with C{CannotListenError(why)}."""

    def __init__(self, description, why):
        self._description = description
        self._why = why

    def listen(self, factory):
        """@return: a failed L{Deferred} saying why nothing can listen."""
        return defer.fail(CannotListenError(None, self._description, self._why))


def server_endpoint(reactor, description):
    """
    L{serverFromString}, except that a C{systemd:} endpoint whose socket
    was not inherited gives an endpoint that fails to listen with a clear
    reason (so the service's bind-failure path reports it).
    """
    if not description.startswith(PREFIX):
        return serverFromString(reactor, description)
    try:
        return serverFromString(reactor, description)
    except (IndexError, KeyError):
        return _Unavailable(
            description,
            "systemd passed no such socket (LISTEN_FDS/LISTEN_PID unset or not for this process;"
            " start it through metaproxy.socket)",
        )
