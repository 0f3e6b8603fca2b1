# -*- test-case-name: metaproxy.test.test_backend_client -*-
"""
One reconnecting connection to one meta server address.

A L{twisted.application.internet.ClientService} keeps the link up, with an
exponential backoff plus jitter between attempts, so that a meta that went
away is not hammered and many proxies do not reconnect in lock step.

A call made while the link is down fails at once (L{NotConnected}), so that
a cluster moves on to the other metas instead of waiting; a call made while
an attempt is under way waits for that attempt.
"""

import random

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from metaproxy.backend.client import DEFAULT_MAX_REPLY_BYTES, MetaClientProtocol, NotConnected
from metaproxy.route import is_ip_literal

log = Logger()

#: Link states, as L{MetaConnection.state} reports them.
CONNECTING, CONNECTED, DOWN, STOPPED = "connecting", "connected", "down", "stopped"


def default_retry_policy():
    """
    @return: the reconnect delay policy used unless another is given:
        0.1 s doubling to at most 10 s, plus up to 0.5 s of random jitter.
    """
    return backoffPolicy(initialDelay=0.1, maxDelay=10.0, factor=2.0, jitter=_half_second_jitter)


def _half_second_jitter():
    return random.random() * 0.5


def default_endpoint(reactor, host, port, connect_timeout):
    """
    @return: the client endpoint for C{host:port}: plain TCPv4 for an IP
        literal, name resolution (re-done at every attempt) otherwise.
    """
    if is_ip_literal(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=connect_timeout)
    return HostnameEndpoint(reactor, host, port, timeout=connect_timeout)


@implementer(IStreamClientEndpoint)
@attrs.define(eq=False)
class _TrackingEndpoint:
    """Reports the start and the failure of every connection attempt."""

    _wrapped: object
    _started: object
    _failed: object

    def connect(self, protocolFactory):
        self._started()
        d = self._wrapped.connect(protocolFactory)
        d.addErrback(self._report)
        return d

    def _report(self, failure):
        self._failed(failure)
        return failure


@attrs.define(eq=False)
class _ProtocolFactory(Factory):
    noisy = False  # reconnects would log "Starting factory" each time
    clock: object
    max_frame_bytes: int
    on_lost: object
    header_version: int = 0

    def buildProtocol(self, addr):
        proto = MetaClientProtocol(self.clock, self.max_frame_bytes, self.on_lost, self.header_version)
        proto.factory = self
        return proto


@attrs.define(eq=False)
class MetaConnection:
    """
    Keeps one connection to the meta server at C{host:port} and sends calls
    over it.

    @ivar reactor: provides L{IReactorTCP} and L{IReactorTime}; also the
        clock of reconnect backoff and per-call deadlines.
    @ivar host: the address as configured (an IP literal or a host name).
    @ivar port: the port.
    @ivar connect_timeout: seconds one connection attempt may take.
    @ivar retry_policy: the C{ClientService} retry policy (attempt count to
        seconds); L{default_retry_policy} when L{None}.
    @ivar endpoint: the client endpoint; L{default_endpoint} when L{None}.
    @ivar max_frame_bytes: the largest reply accepted.
    @ivar header_version: the THFT request header version sent (0 or 1).
    """

    reactor: object
    host: str
    port: int
    connect_timeout: float = 3.0
    retry_policy: object = None
    endpoint: object = None
    max_frame_bytes: int = DEFAULT_MAX_REPLY_BYTES
    header_version: int = 0
    state: str = attrs.field(init=False, default=STOPPED)
    _protocol: object = attrs.field(init=False, default=None)
    _waiters: list = attrs.field(init=False, factory=list)
    _service: object = attrs.field(init=False, default=None)
    _last_error: str = attrs.field(init=False, default="")

    @property
    def address(self):
        """@return: C{"host:port"} as configured."""
        return f"{self.host}:{self.port}"

    def start(self):
        """Start connecting (and reconnecting after every loss) until L{stop}."""
        if self._service is not None:
            return
        endpoint = self.endpoint
        if endpoint is None:
            endpoint = default_endpoint(self.reactor, self.host, self.port, self.connect_timeout)
        policy = self.retry_policy if self.retry_policy is not None else default_retry_policy()
        self._service = ClientService(
            _TrackingEndpoint(endpoint, self._attempt_started, self._attempt_failed),
            _ProtocolFactory(self.reactor, self.max_frame_bytes, self._lost, self.header_version),
            retryPolicy=policy,
            clock=self.reactor,
            prepareConnection=self._connected,
        )
        self.state = CONNECTING
        self._service.startService()

    def stop(self):
        """
        Close the connection and stop reconnecting. Pending calls fail.

        @return: a L{Deferred} firing once the connection is closed.
        """
        service, self._service = self._service, None
        self.state = STOPPED
        self._fail_waiters("connection stopped")
        if service is None:
            return defer.succeed(None)
        return service.stopService()

    def is_connected(self):
        """@return: L{True} while a connection is open."""
        return self.state == CONNECTED

    def peer(self):
        """
        @return: C{(ip, port)} of the connected peer, or L{None} when not
            connected; lets a cluster recognise a leader address given as an
            IP when this meta was configured by host name.
        """
        proto = self._protocol
        if proto is None or proto.transport is None:
            return None
        addr = proto.transport.getPeer()
        host = getattr(addr, "host", None)
        port = getattr(addr, "port", None)
        if host is None or port is None:
            return None
        return host, port

    def matches(self, ip, port):
        """
        @return: L{True} if C{ip:port} names this meta, by its configured
            address or by the address of the connected peer.
        """
        if port != self.port:
            return False
        return ip == self.host or self.peer() == (ip, port)

    def call(self, name, args, timeout=None, client_timeout_ms=0):
        """
        Send one request to this meta.

        @return: a L{Deferred} firing with the L{metaproxy.wire.frame.Response};
            it fails at once with L{NotConnected} while the link is down
            (waiting for a reconnect), waits while an attempt is under way,
            and otherwise fails as
            L{metaproxy.backend.client.MetaClientProtocol.call} does.
            Cancelling it forgets the call.
        """
        proto = self._protocol
        if proto is not None and proto.is_open():
            return proto.call(name, args, timeout, client_timeout_ms)
        if self.state != CONNECTING:
            return defer.fail(NotConnected(f"meta {self.address} is {self.state}"))
        waiter = defer.Deferred(self._forget_waiter)
        self._waiters.append(waiter)
        if timeout is not None:
            # The connect wait counts against the call's own deadline.
            started = self.reactor.seconds()

            def send(proto):
                left = timeout - (self.reactor.seconds() - started)
                return proto.call(name, args, max(left, 0.0), client_timeout_ms)

        else:

            def send(proto):
                return proto.call(name, args, None, client_timeout_ms)

        waiter.addCallback(send)
        return waiter

    def _attempt_started(self):
        if self.state != STOPPED:
            self.state = CONNECTING

    def _attempt_failed(self, failure):
        if self.state == STOPPED:
            return
        self.state = DOWN
        error = failure.getErrorMessage()
        if error != self._last_error:
            log.warn("cannot connect to meta {meta}: {error}", meta=self.address, error=error)
            self._last_error = error
        self._fail_waiters(f"cannot connect to meta {self.address}: {error}")

    def _connected(self, proto):
        proto = proto.unwrapped()
        if self.state == STOPPED:
            proto.transport.loseConnection()
            return
        self._protocol = proto
        self.state = CONNECTED
        if self._last_error:
            log.info("connected to meta {meta}", meta=self.address)
            self._last_error = ""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(proto)

    def _lost(self, proto):
        if proto is not self._protocol:
            return
        self._protocol = None
        if self.state != STOPPED:
            self.state = DOWN
            self._last_error = "connection lost"
            log.info("connection to meta {meta} lost", meta=self.address)

    def _forget_waiter(self, waiter):
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _fail_waiters(self, why):
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(NotConnected(why))
