# -*- test-case-name: metaproxy.test.test_backend_client -*-
"""
One reconnecting connection to one meta server address.

metaproxy runs its own reconnect loop (not Twisted's C{ClientService}, whose
per-retry log line carries kilobytes of object reprs): after a failed attempt
it waits a jittered, doubling delay capped at C{reconnect_max} (about 1 s),
so a meta that comes back is used within about a second, a meta that stays
away is probed about once a second, and many proxies do not reconnect in
lock step. A call made while the link is down starts an attempt at once if
none is running (at most one on-demand attempt per C{probe_interval}) and
waits for it; otherwise it fails at once (L{NotConnected}) so that a cluster
moves on to the other metas instead of waiting.

The link's state changes are logged once each: down (with the reason), up
again, and a reminder every C{remind_every} seconds while it stays down.
Several pools may hold a link to the same meta (a table switched between
meta lists that share one): a meta is logged down once by the first of its
links to go down and up again once by the last to come back
(L{DownReports}).
"""

import random

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from metaproxy.backend.client import DEFAULT_MAX_REPLY_BYTES, MetaClientProtocol, NotConnected
from metaproxy.routes.route import is_ip_literal

log = Logger()

#: Link states, as L{MetaConnection.state} reports them.
CONNECTING, CONNECTED, DOWN, STOPPED = "connecting", "connected", "down", "stopped"

#: Default cap of the reconnect delay, in seconds.
RECONNECT_MAX = 1.0


class DownReports:
    """
    Which meta addresses some link reports down, process-wide, so that a
    dead meta is logged once however many pools connect to it.
    """

    def __init__(self):
        self._down = {}

    def went_down(self, address):
        """@return: L{True} if no other link reported C{address} down (log it)."""
        count = self._down.get(address, 0)
        self._down[address] = count + 1
        return count == 0

    def came_back(self, address):
        """@return: L{True} if no other link still reports C{address} down (log it)."""
        count = self._down.get(address, 0) - 1
        if count <= 0:
            self._down.pop(address, None)
            return True
        self._down[address] = count
        return False


#: The process-wide L{DownReports}.
DOWN_REPORTS = DownReports()


def default_retry_policy(maximum=RECONNECT_MAX, initial=0.05):
    """
    @param maximum: the cap of the delay, in seconds.
    @param initial: the delay after the first failed attempt.
    @return: the reconnect delay policy (failed attempts in a row, from 1,
        to seconds): C{initial} doubling up to C{maximum}, each delay drawn
        between 50 % and 100 % of that value (jitter), so never more than
        C{maximum}.
    """

    def policy(attempt):
        base = min(maximum, initial * (2.0 ** min(max(attempt - 1, 0), 30)))
        return base * (0.5 + random.random() * 0.5)

    return policy


def _then_answered(response, done, arg):
    done(arg, response, None)


def _then_failed(failure, done, arg):
    if not failure.check(defer.CancelledError):  # cancelled: nobody waits
        done(arg, None, failure.value)


def default_endpoint(reactor, host, port, connect_timeout):
    """
    @return: the client endpoint for C{host:port}: plain TCPv4 for an IP
        literal, name resolution (re-done at every attempt) otherwise.
    """
    if is_ip_literal(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=connect_timeout)
    return HostnameEndpoint(reactor, host, port, timeout=connect_timeout)


@attrs.define(eq=False)
class _ProtocolFactory(Factory):
    noisy = False  # reconnects would log "Starting factory" each time
    clock: object
    max_frame_bytes: int
    on_lost: object
    header_version: int = 0
    partition_hash: int = 0

    def buildProtocol(self, addr):
        proto = MetaClientProtocol(
            self.clock, self.max_frame_bytes, self.on_lost, self.header_version, self.partition_hash
        )
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
    @ivar retry_policy: failed attempts in a row (from 1) to the seconds
        before the next attempt; L{default_retry_policy} with
        C{reconnect_max} when L{None}.
    @ivar reconnect_max: the cap of the default policy's delay.
    @ivar probe_interval: a call while the link is down starts an attempt
        at once unless one started less than this many seconds ago.
    @ivar remind_every: seconds between "still down" log lines.
    @ivar endpoint: the client endpoint; L{default_endpoint} when L{None}.
    @ivar max_frame_bytes: the largest reply accepted.
    @ivar header_version: the THFT request header version sent (0 or 1).
    @ivar partition_hash: the header's C{client_partition_hash} sent
        (metaproxy's pools send L{metaproxy.wire.clusterinfo.LOOP_MARKER}).
    @ivar negotiator: an object whose C{negotiate(protocol, address)}
        returns a L{Deferred} that must succeed before a new connection
        carries calls (L{metaproxy.security.upstream.UpstreamNegotiator}),
        or L{None}. Its failure closes the connection and counts as a
        failed attempt (the reason becomes C{last_error}).
    @ivar state: one of C{connecting}, C{connected}, C{down}, C{stopped}.
    @ivar last_error: why the link last went down or failed to come up
        (empty while it is up).
    @ivar connected_since: clock time the current link came up, or L{None}.
    @ivar down_since: clock time the link went down, or L{None} while up.
    """

    reactor: object
    host: str
    port: int
    connect_timeout: float = 3.0
    retry_policy: object = None
    reconnect_max: float = RECONNECT_MAX
    probe_interval: float = 0.2
    remind_every: float = 60.0
    endpoint: object = None
    max_frame_bytes: int = DEFAULT_MAX_REPLY_BYTES
    header_version: int = 0
    partition_hash: int = 0
    down_reports: object = DOWN_REPORTS
    negotiator: object = None
    state: str = attrs.field(init=False, default=STOPPED)
    last_error: str = attrs.field(init=False, default="")
    connected_since: object = attrs.field(init=False, default=None)
    down_since: object = attrs.field(init=False, default=None)
    _protocol: object = attrs.field(init=False, default=None)
    _waiters: list = attrs.field(init=False, factory=list)
    _factory: object = attrs.field(init=False, default=None)
    _attempt: object = attrs.field(init=False, default=None)
    _attempt_at: float = attrs.field(init=False, default=float("-inf"))
    _retry: object = attrs.field(init=False, default=None)
    _failures: int = attrs.field(init=False, default=0)
    _reported_down: bool = attrs.field(init=False, default=False)
    _logged_down: bool = attrs.field(init=False, default=False)
    _reminded_at: float = attrs.field(init=False, default=0.0)
    _stopped: object = attrs.field(init=False, default=None)

    @property
    def address(self):
        """@return: C{"host:port"} as configured."""
        return f"{self.host}:{self.port}"

    def start(self):
        """Start connecting (and reconnecting after every loss) until L{stop}."""
        if self._factory is not None:
            return
        if self.endpoint is None:
            self.endpoint = default_endpoint(self.reactor, self.host, self.port, self.connect_timeout)
        if self.retry_policy is None:
            self.retry_policy = default_retry_policy(self.reconnect_max)
        self._factory = _ProtocolFactory(
            self.reactor, self.max_frame_bytes, self._lost, self.header_version, self.partition_hash
        )
        self._connect()

    def stop(self):
        """
        Close the connection and stop reconnecting. Pending calls fail.

        @return: a L{Deferred} firing once the connection is closed.
        """
        self.state = STOPPED
        self._factory = None
        if self._reported_down:
            self._reported_down = False
            self.down_reports.came_back(self.address)
        self._cancel_retry()
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
        self._fail_waiters("connection stopped")
        proto, self._protocol = self._protocol, None
        if proto is None or proto.transport is None or not proto.is_open():
            return defer.succeed(None)
        self._stopped = defer.Deferred()
        proto.transport.loseConnection()
        return self._stopped

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

        @return: a L{Deferred} firing with the L{metaproxy.wire.frame.Response}.
            While the link is down it starts an attempt (unless one started
            within C{probe_interval}) and waits for it; it fails at once
            with L{NotConnected} when no attempt runs, and otherwise fails
            as L{metaproxy.backend.client.MetaClientProtocol.call} does.
            Cancelling it forgets the call.
        """
        proto = self._protocol
        if proto is not None and proto.is_open():
            return proto.call(name, args, timeout, client_timeout_ms)
        if self.state == DOWN and self.reactor.seconds() - self._attempt_at >= self.probe_interval:
            self._cancel_retry()
            self._connect()
        if self.state != CONNECTING:
            return defer.fail(NotConnected(f"meta {self.address} is {self.state} ({self.last_error})"))
        waiter = defer.Deferred(self._forget_waiter)
        self._waiters.append(waiter)
        started = self.reactor.seconds()

        def send(proto):
            left = None if timeout is None else max(timeout - (self.reactor.seconds() - started), 0.0)
            return proto.call(name, args, left, client_timeout_ms)

        waiter.addCallback(send)
        return waiter

    def call_then(self, name, args, client_timeout_ms, done, arg):
        """
        L{call} without a L{Deferred} on an open link, and without a
        per-call timer (the caller keeps the deadline): C{done(arg,
        response, error)} is called once (possibly before this returns)
        with the response and L{None}, or L{None} and the exception L{call}
        would fail with, unless the returned handle's C{cancel()} was called.

        @return: the cancel handle.
        """
        proto = self._protocol
        if proto is not None and proto.is_open():
            return proto.call_then(name, args, client_timeout_ms, done, arg)
        d = self.call(name, args, None, client_timeout_ms)
        d.addCallbacks(_then_answered, _then_failed, (done, arg), None, (done, arg))
        return d

    # -- the reconnect loop

    def _connect(self):
        if self._factory is None or self._attempt is not None:
            return
        self.state = CONNECTING
        self._attempt_at = self.reactor.seconds()
        try:
            d = self.endpoint.connect(self._factory)
        except Exception as e:
            d = defer.fail(e)
        if d.called:  # synchronous outcome: handled below without keeping it
            d.addCallbacks(self._connected, self._attempt_failed)
            return
        self._attempt = d
        d.addCallbacks(self._connected, self._attempt_failed)

    def _cancel_retry(self):
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()

    def _schedule(self, delay):
        self._cancel_retry()
        if self._factory is not None:
            self._retry = self.reactor.callLater(max(delay, 0.0), self._retry_now)

    def _retry_now(self):
        self._retry = None
        self._connect()

    def _attempt_failed(self, failure):
        self._attempt = None
        if self._factory is None:
            return None  # stopped (the attempt was cancelled)
        self._failures += 1
        self._went_down(failure.getErrorMessage() or failure.type.__name__)
        self._fail_waiters(f"cannot connect to meta {self.address}: {self.last_error}")
        self._schedule(self.retry_policy(self._failures))
        return None

    def _connected(self, proto):
        self._attempt = None
        proto = proto.unwrapped()
        if self._factory is None:
            proto.transport.loseConnection()
            return
        if self.negotiator is not None:  # the link stays CONNECTING until it succeeds
            d = self._attempt = self.negotiator.negotiate(proto, self.address)
            d.addCallbacks(lambda _: self._usable(proto), self._negotiation_failed, errbackArgs=(proto,))
            return
        self._usable(proto)

    def _negotiation_failed(self, failure, proto):
        if proto.transport is not None:
            proto.transport.loseConnection()
        self._attempt_failed(failure)

    def _usable(self, proto):
        self._attempt = None
        if self._factory is None:
            proto.transport.loseConnection()
            return
        now = self.reactor.seconds()
        self._protocol = proto
        self.state = CONNECTED
        self._failures = 0
        self.connected_since = now
        if self._reported_down and self.down_reports.came_back(self.address):
            log.info(
                "meta {meta} is up again after {seconds:.1f}s down",
                meta=self.address,
                seconds=now - (self.down_since if self.down_since is not None else now),
            )
        self._reported_down = False
        self.down_since = None
        self.last_error = ""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(proto)

    def _lost(self, proto):
        if proto is not self._protocol:
            if self._stopped is not None and self._protocol is None:
                stopped, self._stopped = self._stopped, None
                stopped.callback(None)
            return
        self._protocol = None
        self.connected_since = None
        if self._factory is None:
            return
        self._went_down("connection lost")
        self._schedule(self.retry_policy(1))

    def _went_down(self, why):
        """Enter DOWN; log it once, then only a reminder now and then."""
        now = self.reactor.seconds()
        self.state = DOWN
        self.last_error = why
        if self.down_since is None:
            self.down_since = now
        if not self._reported_down:
            self._reported_down = True
            self._reminded_at = now
            self._logged_down = self.down_reports.went_down(self.address)
            if self._logged_down:
                log.warn("meta {meta} is down: {reason}", meta=self.address, reason=why)
        elif self._logged_down and now - self._reminded_at >= self.remind_every:
            self._reminded_at = now
            log.warn(
                "meta {meta} still down after {seconds:.0f}s: {reason}",
                meta=self.address,
                seconds=now - self.down_since,
                reason=why,
            )

    def _forget_waiter(self, waiter):
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _fail_waiters(self, why):
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(NotConnected(why))
