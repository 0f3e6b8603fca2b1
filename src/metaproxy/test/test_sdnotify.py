# -*- test-case-name: metaproxy.test.test_sdnotify -*-
"""
Tests for L{metaproxy.ops.sdnotify}.
"""

import os
import shutil
import socket
import tempfile

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.ops.sdnotify import NotifyService, notify, watchdog_interval


def _short_socket_path(case):
    """
    @return: a path for an AF_UNIX socket in a new short directory under
        /tmp (removed after the test): trial's temp directory under a
        checkout or tox's env dir can exceed the 107-byte limit of
        C{sun_path}.
    """
    directory = tempfile.mkdtemp(prefix="mp-", dir="/tmp" if os.path.isdir("/tmp") else None)
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "notify")


class NotifyTests(SynchronousTestCase):
    def test_no_socket_is_a_noop(self):
        """Without NOTIFY_SOCKET nothing is sent."""
        self.assertFalse(notify(b"READY=1", {}))

    def test_datagram_sent(self):
        """With NOTIFY_SOCKET the message arrives as one datagram."""
        path = _short_socket_path(self)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        self.addCleanup(server.close)
        self.assertTrue(notify(b"READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(server.recv(100), b"READY=1")

    def test_abstract_socket(self):
        """An '@' address names a socket in the abstract namespace."""
        name = f"metaproxy-test-{os.getpid()}-{id(self)}"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind("\0" + name)
        self.addCleanup(server.close)
        self.assertTrue(notify(b"STOPPING=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(server.recv(100), b"STOPPING=1")

    def test_unreachable_socket(self):
        """A notify socket nobody listens on is logged, not raised."""
        self.assertFalse(notify(b"READY=1", {"NOTIFY_SOCKET": _short_socket_path(self)}))

    def test_watchdog_interval(self):
        """The watchdog is pinged at half of WATCHDOG_USEC; another PID's watchdog is ignored."""
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "30000000"}), 15.0)
        self.assertIsNone(watchdog_interval({}))
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}))


class NotifyServiceTests(SynchronousTestCase):
    def test_lifecycle(self):
        """READY once running, WATCHDOG periodically, STOPPING on stop."""
        sent = []
        reactor = MemoryReactorClock()
        env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000"}
        service = NotifyService(reactor, environ=env, send=lambda m, e: sent.append(m))
        service.startService()
        self.assertEqual(sent, [])
        reactor.run()
        self.assertEqual(sent, [b"READY=1", b"WATCHDOG=1"])
        reactor.advance(1.0)
        self.assertEqual(sent[-1], b"WATCHDOG=1")
        self.assertEqual(sent.count(b"WATCHDOG=1"), 2)
        service.stopService()
        self.assertEqual(sent[-1], b"STOPPING=1")
        reactor.advance(5)
        self.assertEqual(sent.count(b"WATCHDOG=1"), 2)

    def test_noop_without_notify_socket(self):
        """Without NOTIFY_SOCKET nothing is sent and no watchdog timer runs."""
        sent = []
        reactor = MemoryReactorClock()
        service = NotifyService(reactor=reactor, environ={"WATCHDOG_USEC": "2000000"}, send=lambda m, e: sent.append(m))
        service.startService()
        reactor.run()
        self.assertEqual(reactor.getDelayedCalls(), [])
        service.stopService()
        self.assertEqual(sent, [])

    def test_stopped_before_running(self):
        """Stopped before the reactor ran: no READY=1 is sent, only STOPPING=1."""
        sent = []
        reactor = MemoryReactorClock()
        service = NotifyService(reactor=reactor, environ={"NOTIFY_SOCKET": "/x"}, send=lambda m, e: sent.append(m))
        service.startService()
        service.stopService()
        reactor.run()
        self.assertEqual(sent, [b"STOPPING=1"])


class ReadyGateTests(SynchronousTestCase):
    def test_ready_waits_for_listener(self):
        """READY=1 is sent only once the ready Deferred fires, and never if it fails."""
        from twisted.internet import defer

        for outcome in ("bound", "failed"):
            sent = []
            gate = defer.Deferred()
            reactor = MemoryReactorClock()
            service = NotifyService(reactor, environ={"NOTIFY_SOCKET": "/x"}, send=lambda m, e: sent.append(m),
                                    ready=lambda: gate)
            service.startService()
            reactor.run()
            self.assertEqual(sent, [])
            if outcome == "bound":
                gate.callback(None)
                self.assertEqual(sent, [b"READY=1"])
            else:
                gate.errback(RuntimeError("port taken"))
                self.assertEqual(sent, [])
