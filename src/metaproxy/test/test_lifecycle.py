"""
Tests for L{metaproxy.ops.lifecycle}: ordered stop and draining listener.
"""

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.ops.lifecycle import DrainingServerService, OrderedMultiService


class _Recording(Service):
    def __init__(self, name, log, stopped=None):
        self.setName(name)
        self.log = log
        self.stopped = stopped

    def stopService(self):
        super().stopService()
        self.log.append(("stop", self.name))
        return self.stopped


class OrderedMultiServiceTests(SynchronousTestCase):
    def test_children_stop_one_at_a_time_in_reverse(self):
        """The last child stops first, and the next waits for its Deferred."""
        log = []
        slow = defer.Deferred()
        top = OrderedMultiService()
        for name, stopped in (("a", None), ("b", None), ("c", slow)):
            _Recording(name, log, stopped).setServiceParent(top)
        top.startService()
        d = top.stopService()
        self.assertEqual(log, [("stop", "c")])
        self.assertNoResult(d)
        slow.callback(None)
        self.assertEqual(log, [("stop", "c"), ("stop", "b"), ("stop", "a")])
        self.successResultOf(d)

    def test_failing_child_does_not_block_others(self):
        """A child whose stop fails is logged; the rest still stop."""
        log = []
        top = OrderedMultiService()
        _Recording("a", log).setServiceParent(top)
        _Recording("b", log, defer.fail(RuntimeError("nope"))).setServiceParent(top)
        top.startService()
        self.successResultOf(top.stopService())
        self.assertEqual(log, [("stop", "b"), ("stop", "a")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _DrainFactory(Factory):
    def __init__(self):
        self.drains = []

    def drain(self, timeout):
        d = defer.Deferred()
        self.drains.append((timeout, d))
        return d


class DrainingServerServiceTests(SynchronousTestCase):
    def test_stop_closes_port_then_drains(self):
        """Stopping stops listening first, then waits for the factory's drain."""
        reactor = MemoryReactor()
        factory = _DrainFactory()
        service = DrainingServerService(TCP4ServerEndpoint(reactor, 0), factory, 7.5)
        service.startService()
        self.assertTrue(service.listening)
        port = reactor.tcpServers[0]
        self.assertEqual(port[1], factory)
        d = service.stopService()
        self.assertFalse(service.listening)
        [(timeout, drained)] = factory.drains
        self.assertEqual(timeout, 7.5)
        self.assertNoResult(d)
        drained.callback(0)
        self.successResultOf(d)


class _FailingEndpoint:
    def listen(self, factory):
        from twisted.internet.error import CannotListenError

        return defer.fail(CannotListenError("127.0.0.1", 1, OSError(98, "Address already in use")))


class BindFailureTests(SynchronousTestCase):
    def test_bind_failure_is_reported_not_raised(self):
        """A port that cannot be bound is reported to on_bind_failure; waiters see the failure."""
        seen = []
        service = DrainingServerService(_FailingEndpoint(), _DrainFactory(), 1.0, on_bind_failure=seen.append)
        waiting = service.when_listening()
        service.startService()
        self.assertEqual(len(seen), 1)
        self.assertIn("Address already in use", seen[0].getErrorMessage())
        self.failureResultOf(waiting)
        self.assertFalse(service.listening)

    def test_site_without_drain_stops(self):
        """A listener whose factory cannot drain (the admin Site) still stops."""
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        reactor = MemoryReactor()
        service = DrainingServerService(TCP4ServerEndpoint(reactor, 0), Site(Resource()), 0.0)
        service.startService()
        self.successResultOf(service.stopService())
