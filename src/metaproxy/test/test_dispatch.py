# -*- test-case-name: metaproxy.test.test_dispatch -*-
"""
Tests for L{metaproxy.frontend.dispatch.RpcDispatcher}: routing by rpc name and the
RPCs it answers on its own, as a real meta server does.
"""

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from metaproxy.frontend.dispatch import RpcDispatcher
from metaproxy.interfaces import IRequestHandler
from metaproxy.wire import codes, frame, querycfg
from metaproxy.wire.negotiation import NEGOTIATION, auth_disable_result


def _request(name, seqid=1):
    return frame.Request(frame.RequestHeader(), name, seqid, querycfg.encode_args("temp"))


class RpcDispatcherTests(SynchronousTestCase):
    def test_provides_interface(self):
        """RpcDispatcher provides IRequestHandler."""
        self.assertTrue(verifyObject(IRequestHandler, RpcDispatcher({})))

    def test_routes_by_name_with_connection(self):
        """The handler for the request's rpc name gets the request and the connection; its reply is returned."""
        seen = []
        reply = frame.Reply(b"\x0c\x00\x00\x00")

        def handler(request, connection):
            seen.append((request, connection))
            return reply

        request = _request(querycfg.QUERY_CFG)
        connection = object()
        result = RpcDispatcher({querycfg.QUERY_CFG: handler}).handle(request, connection)
        self.assertIs(result, reply)
        self.assertEqual(seen, [(request, connection)])

    def test_deferred_passes_through(self):
        """A handler's Deferred is returned as is (the protocol waits on it)."""
        d = defer.Deferred()
        dispatcher = RpcDispatcher({querycfg.QUERY_CFG: lambda request, connection: d})
        self.assertIs(dispatcher.handle(_request(querycfg.QUERY_CFG), None), d)

    def test_unknown_name(self):
        """A name without a handler gets rpc-level ERR_HANDLER_NOT_FOUND with no body."""
        reply = RpcDispatcher({}).handle(_request("RPC_CM_LIST_APPS"), None)
        self.assertEqual((reply.rpc_error, reply.body), (codes.ERR_HANDLER_NOT_FOUND, None))

    def test_negotiation_answered_auth_disabled(self):
        """Without a handler for it, RPC_NEGOTIATION gets ERR_OK and SASL_AUTH_DISABLE."""
        reply = RpcDispatcher({}).handle(_request(NEGOTIATION, seqid=0), None)
        self.assertEqual((reply.rpc_error, reply.body), (codes.ERR_OK, auth_disable_result()))

    def test_negotiation_handler_overrides(self):
        """A handler given for RPC_NEGOTIATION replaces the built-in answer."""
        mine = frame.Reply(None, codes.ERR_HANDLER_NOT_FOUND)
        dispatcher = RpcDispatcher({NEGOTIATION: lambda request, connection: mine})
        self.assertIs(dispatcher.handle(_request(NEGOTIATION), None), mine)

    def test_handlers_copied(self):
        """Changing the caller's mapping later does not change the routing."""
        handlers = {}
        dispatcher = RpcDispatcher(handlers)
        handlers[querycfg.QUERY_CFG] = lambda request, connection: frame.Reply(b"")
        self.assertEqual(dispatcher.handle(_request(querycfg.QUERY_CFG), None).rpc_error, codes.ERR_HANDLER_NOT_FOUND)

    def test_handler_exception_propagates(self):
        """The dispatcher does not hide handler exceptions: the protocol turns them into replies."""

        def broken(request, connection):
            raise RuntimeError("bug")

        self.assertRaises(RuntimeError, RpcDispatcher({"RPC_X": broken}).handle, _request("RPC_X"), None)
