"""
Tests for L{metaproxy.sdnotify}.
"""

import os
import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.sdnotify import NotifyService, notify, watchdog_interval


class NotifyTests(SynchronousTestCase):
    def test_no_socket_is_a_noop(self):
        """Without NOTIFY_SOCKET nothing is sent."""
        self.assertFalse(notify(b"READY=1", {}))

    def test_datagram_sent(self):
        """With NOTIFY_SOCKET the message arrives as one datagram."""
        path = os.path.abspath(self.mktemp())
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        self.addCleanup(server.close)
        self.assertTrue(notify(b"READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(server.recv(100), b"READY=1")

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
