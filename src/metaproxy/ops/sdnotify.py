# -*- test-case-name: metaproxy.test.test_sdnotify -*-
"""
systemd's notify protocol (Type=notify), without a dependency.

READY=1 once metaproxy's listeners are bound, WATCHDOG=1 at half the
watchdog interval (so a blocked reactor gets the service restarted), and
STOPPING=1 when shutdown begins. Without C{NOTIFY_SOCKET} it does nothing.
"""

import os
import socket

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


def notify(message, environ=None):
    """
    Send one notification to systemd.

    @param message: e.g. C{b"READY=1"}.
    @return: L{True} if a notify socket was configured and the datagram sent.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(message)
    except OSError as e:
        log.warn("sd_notify to {address} failed: {error}", address=address, error=e)
        return False
    return True


def watchdog_interval(environ=None):
    """
    @return: seconds between watchdog pings (half of C{WATCHDOG_USEC}), or
        L{None} when systemd does not watch this process.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


class NotifyService(Service):
    """
    Tells systemd about metaproxy's lifecycle. Add it last to the service
    tree, so READY is sent after every listener was started. Without
    C{NOTIFY_SOCKET} in the environment it does nothing at all.

    @param reactor: runs C{callWhenRunning} and the watchdog's timer.
    @param environ: the environment to read (L{os.environ} by default).
    @param send: L{notify}, or a fake in tests.
    @param ready: optional C{callable() -> Deferred} that fires when the
        process can serve (the proxy's port is bound); READY=1 waits for
        it and is never sent if it fails.
    """

    def __init__(self, reactor, environ=None, send=notify, ready=None):
        self._reactor = reactor
        self._when_ready = ready
        self._environ = os.environ if environ is None else environ
        self._send = send
        self._watchdog = None
        self._ready_message = b"READY=1"
        self._handed_over = False

    def take_over(self, ready):
        """
        Hot upgrade, new process (call before the reactor runs): READY waits
        for C{ready()} (a L{Deferred} firing once every connection was
        taken over) and says C{MAINPID=<this pid>} with it, so systemd
        follows this process from then on (the unit has C{NotifyAccess=all}).
        """
        self._when_ready = ready
        self._ready_message = b"MAINPID=%d\nREADY=1" % (os.getpid(),)

    def handed_over(self):
        """
        Hot upgrade, old process: another process is the main PID now, so
        stop the watchdog pings and never send STOPPING=1.
        """
        self._handed_over = True
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None

    def startService(self):
        """Send READY=1 once the reactor runs; start watchdog pings if asked."""
        super().startService()
        self._reactor.callWhenRunning(self._wait_ready)

    def _wait_ready(self):
        if self._when_ready is None:
            self._ready()
            return
        d = self._when_ready()
        d.addCallbacks(lambda _: self._ready(), lambda f: None)

    def _ready(self):
        if not self.running or not self._environ.get("NOTIFY_SOCKET"):
            return
        self._send(self._ready_message, self._environ)
        interval = watchdog_interval(self._environ)
        if interval:
            self._watchdog = LoopingCall(self._send, b"WATCHDOG=1", self._environ)
            self._watchdog.clock = self._reactor
            self._watchdog.start(interval, now=True)

    def stopService(self):
        """Send STOPPING=1 and stop the watchdog pings."""
        super().stopService()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
        if self._environ.get("NOTIFY_SOCKET") and not self._handed_over:
            self._send(b"STOPPING=1", self._environ)
