# -*- test-case-name: metaproxy.test.test_upgrade -*-
"""
Hot upgrade, new process: take the listeners and the client connections
over from the old process (see L{metaproxy.ops.upgrade} for the sequence).

The process finds the hand-over channel on the descriptor named by
C{METAPROXY_HANDOVER_FD}. Its client and admin services listen on the
sockets handed over (whatever the config's C{listen:} says: changing a
listen address needs a restart). It says C{ready} to the old process only
once its route source is ready, so it accepts nothing before it can
answer; route caches then fill through the resolver's coalescing lookup
(one ZooKeeper read per table however many clients ask at once), so the
first queries after the switch do not stampede ZooKeeper.
"""

import ipaddress
import os

from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from metaproxy.ops.handover import ENV_FD, Capture, HandoverChannel, adopt_channel
from metaproxy.ops.lifecycle import fatal_stop

log = Logger()

#: Seconds the hand-over waits for the fleet registration before saying C{switched}.
REGISTER_WAIT = 5.0


def _address(address):
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)


def listen_differs(description, address):
    """
    @param description: a C{listen:} endpoint string of the config
        (C{tcp:PORT:interface=HOST...}).
    @param address: the address of the listener actually handed over.
    @return: how they differ (a L{str}), or L{None} if the listener is
        what the description asks for (or it cannot be told).
    """
    if not isinstance(description, str):
        return None
    fields = description.split(":")
    if fields[0] not in ("tcp", "tcp6") or len(fields) < 2:
        return None
    options = dict(f.split("=", 1) for f in fields[2:] if "=" in f)
    port = options.get("port", fields[1] if "=" not in fields[1] else None)
    problems = []
    if port is not None and port.isdigit() and int(port) not in (0, getattr(address, "port", None)):
        problems.append(f"port {port} != {address.port}")
    interface = options.get("interface")
    if interface is not None:
        try:
            same = ipaddress.ip_address(interface) == ipaddress.ip_address(address.host)
        except (ValueError, AttributeError):
            same = True
        if not same:
            problems.append(f"interface {interface} != {address.host}")
    return "; ".join(problems) or None


@implementer(IStreamServerEndpoint)
class HandedOverEndpoint:
    """
    The endpoint of a listener the old process hands over: C{listen}
    fires with the adopted port once it has arrived.
    """

    def __init__(self, name, description):
        self.name = name
        self.description = description
        self.factory = None
        self._waiting = defer.Deferred()

    def listen(self, factory):
        """@return: a L{Deferred} firing with the L{IListeningPort} adopted for C{factory}."""
        self.factory = factory
        return self._waiting

    def _adopted(self, port):
        self._waiting.callback(port)


class Takeover:
    """
    Receives the old process's sockets over the hand-over channel.

    @ivar received: client connections adopted.
    """

    def __init__(self, reactor, fd, poll=0.05):
        self._reactor = reactor
        self._fd = fd
        self._poll = poll
        self._endpoints = {}
        self._channel = None
        self._ready_check = None
        self._done = defer.Deferred()
        self._finished = False
        self.received = 0
        self.top = None

    @classmethod
    def from_environ(cls, reactor, environ=None):
        """@return: a L{Takeover} if this process was started by a hot upgrade, else L{None}."""
        env = os.environ if environ is None else environ
        value = env.pop(ENV_FD, None)
        if not value or not value.isdigit():
            return None
        return cls(reactor, int(value))

    def endpoint_for(self, what, description):
        """For L{metaproxy.app.build_service}: listen on what is handed over."""
        endpoint = self._endpoints[what] = HandedOverEndpoint(what, description)
        return endpoint

    def attach(self, top):
        """Hook into a built service tree: READY/MAINPID wait for the whole take-over."""
        self.top = top
        top.getServiceNamed("notify").take_over(lambda: self._done)
        self._reactor.callWhenRunning(self._start)

    def _start(self):
        self._channel = adopt_channel(self._reactor, self._fd, HandoverChannel(self._record, self._lost))
        self._ready_check = LoopingCall(self._say_ready_when_routes_are)
        self._ready_check.clock = self._reactor
        self._ready_check.start(self._poll, now=True)

    def _say_ready_when_routes_are(self):
        if self.top.route_table.is_ready():
            self._ready_check.stop()
            log.info("hot upgrade: routes ready, taking over from the old process")
            self._channel.send({"type": "ready", "pid": os.getpid()})

    def _record(self, header, payload, fds):
        kind = header.get("type")
        if kind == "listener" and len(fds) == 1:
            self._adopt_listener(header, fds[0])
        elif kind == "conn" and len(fds) == 1:
            self._adopt_connection(header, payload, fds[0])
        elif kind == "done":
            self._switch(header)
        else:
            for fd in fds:
                os.close(fd)
            log.warn("hot upgrade: unexpected record {header!r} ignored", header=header)

    def _adopt_listener(self, header, fd):
        endpoint = self._endpoints.get(header.get("name"))
        try:
            if endpoint is None or endpoint.factory is None:
                log.warn("hot upgrade: no service for listener {name!r}", name=header.get("name"))
                return
            os.set_blocking(fd, False)
            port = self._reactor.adoptStreamPort(fd, header["family"], endpoint.factory)
        finally:
            os.close(fd)
        differs = listen_differs(endpoint.description, port.getHost())
        if differs is not None:
            log.warn("hot upgrade: {name} listen {description!r} is ignored ({why}): this process keeps the "
                     "listener handed over, {address}; a restart applies the new one",
                     name=endpoint.name, description=endpoint.description, why=differs,
                     address=_address(port.getHost()))
        endpoint._adopted(port)

    def _adopt_connection(self, header, payload, fd):
        capture = Capture(self.top.factory)
        try:
            os.set_blocking(fd, False)
            self._reactor.adoptStreamConnection(fd, header["family"], capture)
        finally:
            os.close(fd)
        if capture.built is not None:
            adopt = getattr(self.top.factory.handler, "adopt", None)
            if header.get("principal") and adopt is not None:  # it had negotiated Kerberos with the old process
                adopt(capture.built, header["principal"])
            unsent = header.get("unsent", 0)
            unsent = unsent if isinstance(unsent, int) and 0 < unsent <= len(payload) else 0
            cut = len(payload) - unsent
            capture.built.restore_handover(payload[:cut], header.get("framing"), payload[cut:])
        self.received += 1
        self._channel.send({"type": "ack", "id": header.get("id")})

    def _switch(self, header):
        self._finished = True
        fleet = getattr(self.top, "fleet", None)
        if fleet is None:
            self._switch_now(header)
            return
        # Listed before the old process's node goes (it goes when that process exits): no gap in the fleet.
        fleet.when_registered(REGISTER_WAIT).addCallback(lambda _: self._switch_now(header))

    def _switch_now(self, header):
        log.info("hot upgrade: took over {count} connections; this process (pid {pid}) is the main one now",
                 count=self.received, pid=os.getpid())
        self._done.callback(None)  # NotifyService: MAINPID=<pid> + READY=1
        self._channel.send({"type": "switched", "pid": os.getpid()})
        self._channel.transport.loseConnection()

    def _lost(self, reason):
        if self._ready_check is not None and self._ready_check.running:
            self._ready_check.stop()
        if not self._finished:
            fatal_stop(self._reactor, "hot upgrade: the old process closed the hand-over channel ({why}); "
                       "it keeps serving, this process exits", why=reason.getErrorMessage())
