# -*- test-case-name: metaproxy.test.test_lifecycle -*-
"""
Service plumbing for an orderly start and a draining stop.
"""

import os
import re
import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

#: Reactors a L{fatal_stop} is stopping (each is stopped once).
_fatally_stopping = set()


def stopping_fatally():
    """@return: whether L{fatal_stop} is ending this process (e.g. a failed start)."""
    return bool(_fatally_stopping)


def fatal_stop(reactor, fmt, **fields):
    """
    Stop the process because it cannot do its job (e.g. a port is taken):
    log one critical line, shut down in order, then exit with status 1 so
    that systemd's C{Restart=on-failure} applies. A second call (another
    port is taken too) logs its own line and changes nothing else: the
    reactor is stopped once.
    """
    log.critical(fmt, **fields)
    if id(reactor) in _fatally_stopping:
        return
    _fatally_stopping.add(id(reactor))

    def exit_1():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    def stop():
        if reactor.running:
            reactor.stop()

    reactor.addSystemEventTrigger("after", "shutdown", exit_1)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(stop)


def close_quietly(port):
    """
    Make a listening port's coming close silent: Twisted logs
    C{"(TCP Port N Closed)"}, which misleads when the port is not really
    closing (its socket was handed to a new process) or was never served
    on (a failed start).
    """
    port._logConnectionLostMsg = lambda: None


#: Server endpoint types whose listen backlog can be set in the string.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})
_HAS_BACKLOG = re.compile(r"(?<!\\):backlog=")


def with_backlog(description, backlog):
    """
    Give a server endpoint string a listen backlog unless it sets one.

    Twisted listens with a backlog of 50; a reconnect storm of thousands
    of clients then overflows the kernel's accept queue and clients wait
    for SYN retries (1 s, 3 s, ...). The kernel caps the value at
    C{net.core.somaxconn}.

    @param description: a Twisted server endpoint string, e.g.
        C{"tcp:34601:interface=0.0.0.0"}.
    @param backlog: the backlog to add (0: leave the string alone).
    @return: C{description} with C{:backlog=<backlog>} appended if it is a
        C{tcp}, C{tcp6}, C{ssl} or C{unix} endpoint without a backlog
        (other types, e.g. C{systemd:}, are returned unchanged).
    """
    kind = description.split(":", 1)[0].strip().lower()
    if not backlog or kind not in _BACKLOG_TYPES or _HAS_BACKLOG.search(description):
        return description
    return f"{description}:backlog={int(backlog)}"


class GuardedService(MultiService):
    """
    Starts its children; if one raises while starting, calls C{on_failure}
    with a failure instead of letting the exception escape into twistd.
    """

    def __init__(self, on_failure):
        super().__init__()
        self._on_failure = on_failure

    def startService(self):
        try:
            super().startService()
        except Exception:
            from twisted.python.failure import Failure

            self._on_failure(Failure())


class OrderedMultiService(MultiService):
    """
    A L{MultiService} that stops its children one at a time, last added
    first, each after the previous one's stop has finished.

    Twisted's own L{MultiService} stops every child at once; metaproxy
    needs the listener to finish draining before the meta pools and the
    route source it drains through are closed.
    """

    def stopService(self):
        """
        @return: a L{Deferred} that fires once every child has stopped; a
            child whose stop fails is logged and the others still stop.
        """
        Service.stopService(self)
        d = defer.succeed(None)
        for child in reversed(list(self)):
            d.addCallback(lambda _, c=child: defer.maybeDeferred(c.stopService))
            d.addErrback(
                lambda f, c=child: log.failure("stopping {service} failed", f, service=c.name)
            )
        return d


class DrainingServerService(StreamServerEndpointService):
    """
    Listens on an endpoint; on stop, stops accepting first, then lets the
    factory answer what is in flight (bounded by C{drain_timeout}).

    @ivar listening: L{True} while the listening port is bound.
    """

    def __init__(self, endpoint, factory, drain_timeout, on_bind_failure=None):
        """
        @param on_bind_failure: C{callable(failure)} told when the port
            cannot be bound (the process should not run without it).
        """
        super().__init__(endpoint, factory)
        self.drain_timeout = drain_timeout
        self._on_bind_failure = on_bind_failure
        self.listening = False
        self.port = None
        self._listen_waiters = []

    def when_listening(self):
        """
        @return: a L{Deferred} firing with the listening port once bound
            (at once if it already is); it does not consume the service's
            own port Deferred, which L{stopService} needs.
        """
        if self.port is not None and self.listening:
            return defer.succeed(self.port)
        d = defer.Deferred()
        self._listen_waiters.append(d)
        return d

    def privilegedStartService(self):
        """Bind the endpoint; a failure goes to C{on_bind_failure} (or the log)."""
        Service.privilegedStartService(self)
        self._waitingForPort = self.endpoint.listen(self.factory)
        self._waitingForPort.addCallbacks(self._bound, self._bind_failed)

    def startService(self):
        """Bind the endpoint unless L{privilegedStartService} already did."""
        Service.startService(self)
        if self._waitingForPort is None:
            self.privilegedStartService()

    def _bound(self, port):
        self.port = port
        self.listening = True
        host = port.getHost()
        address = f"{host.host}:{host.port}" if hasattr(host, "port") else str(getattr(host, "name", host))
        log.info("{service} listening on {address}", service=self.name or "server", address=address)
        waiters, self._listen_waiters = self._listen_waiters, []
        for d in waiters:
            d.callback(port)
        return port

    def _bind_failed(self, failure):
        waiters, self._listen_waiters = self._listen_waiters, []
        for d in waiters:
            d.errback(failure)
        if self._on_bind_failure is not None:
            try:
                self._on_bind_failure(failure)
            except Exception:
                log.failure("reporting a bind failure failed")
        else:
            log.failure("cannot listen on {endpoint}", failure, endpoint=self.endpoint)
        return None

    def stopService(self):
        """
        @return: a L{Deferred} firing once the port is closed and every
            request in flight was answered or the drain timed out.
        """
        self.listening = False
        if self.port is not None and stopping_fatally():
            close_quietly(self.port)
        d = super().stopService()
        drain = getattr(self.factory, "drain", None)
        if drain is not None and self.port is not None:  # nothing to drain where nothing was accepted
            d.addCallback(lambda _: drain(self.drain_timeout))
            d.addCallback(self._drained)
        return d

    def _drained(self, unanswered):
        if stopping_fatally():
            return  # a failed start: "drained" would suggest it had served
        if unanswered:
            log.warn("drain timed out with {count} requests unanswered", count=unanswered)
        else:
            log.info("drained: every request in flight was answered")
