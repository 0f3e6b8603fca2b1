# -*- test-case-name: metaproxy.test.test_dispatch -*-
"""
Routes each decoded request to the handler for its rpc name, answering the
RPCs a real meta server answers on its own.
"""

from zope.interface import implementer

from metaproxy.interfaces import IRequestHandler
from metaproxy.wire import codes
from metaproxy.wire.frame import Reply
from metaproxy.wire.negotiation import NEGOTIATION, auth_disable_result

_AUTH_DISABLED = Reply(auth_disable_result())
_NOT_FOUND = Reply(None, codes.ERR_HANDLER_NOT_FOUND)


@implementer(IRequestHandler)
class RpcDispatcher:
    """
    An L{IRequestHandler} that looks the rpc name up in a table.

    C{RPC_NEGOTIATION} is answered with C{SASL_AUTH_DISABLE} (so Java 2.x and
    C++ clients proceed at once) unless a handler is given for it; any other
    name without a handler gets C{ERR_HANDLER_NOT_FOUND} with no body, as
    from a real meta server.
    """

    def __init__(self, handlers, starters=None):
        """
        @param handlers: a mapping of rpc name to a callable
            C{(request, connection) -> Reply | Deferred[Reply]}.
        @param starters: a mapping of rpc name to the same handler's
            callback form C{(request, connection, token) -> cancel handle}
            (see L{metaproxy.frontend.resolver.QueryConfigResolver.start}),
            which L{start} uses instead of the handler: no L{Deferred} per
            request.
        """
        self._handlers = dict(handlers)
        self._handlers.setdefault(NEGOTIATION, lambda request, connection: _AUTH_DISABLED)
        self._starters = dict(starters or {})

    def handle(self, request, connection):
        """
        @return: what the handler for C{request.name} returns, or an
            C{ERR_HANDLER_NOT_FOUND} reply.
        """
        handler = self._handlers.get(request.name)
        if handler is None:
            return _NOT_FOUND
        return handler(request, connection)

    def start(self, request, connection, token):
        """
        Like L{handle}, for a server that takes answers by callback: for an
        rpc with a starter, what the starter returns (a cancel handle; the
        answer comes as C{connection.request_answered(token, request,
        reply)}); otherwise what L{handle} returns.
        """
        starter = self._starters.get(request.name)
        if starter is not None:
            return starter(request, connection, token)
        return self.handle(request, connection)
