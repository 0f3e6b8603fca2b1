# -*- test-case-name: metaproxy.test.test_fleet -*-
"""
Fleet registration: each instance keeps one ephemeral node under
C{zookeeper.fleet_path} (outside the route root, whose listing is the set
of table names), through the route source's own ZooKeeper session. So an
instance is listed exactly while it holds a session that also watches its
routes; when the session expires (SIGKILL, SIGSTOP, a partition) the node
goes with it.

The node is named C{<advertised host:port>-<pid>} and holds one JSON
object (L{FleetRegistration.document}): the advertised client and admin
addresses, version, runtime, pid, start time, readiness and the number of
routes cached. Readiness and the count are checked every C{interval}
seconds and written only when they changed: at most one write per
interval, whatever happens.

 - A new session (after expiry, or a forced one) creates the node again;
   a node left by an earlier session of this process (same name) is
   deleted first. A reconnect within the same session only rewrites what
   changed.
 - Hot upgrade: the successor is another process (another pid, another
   node). It registers as soon as it holds the listeners, and says
   C{switched} to the old process only once registered (see
   L{metaproxy.ops.takeover}); the old process's node goes when its
   session closes, as it exits. The address is listed throughout, by two
   nodes for a moment.
 - Nothing here blocks the reactor: every request goes through
   L{metaproxy.routes.zkbridge.TxZooKeeper}'s bounded gate, and a failed
   request is retried on the next tick.
"""

import json
import os
import platform
import socket
import time

from kazoo.exceptions import NodeExistsError, NoNodeError
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from metaproxy.routes.zkbridge import CONNECTED, failure_reason

log = Logger()

#: Seconds a stopping instance waits for its last write (C{ready: false}).
STOP_WRITE = 2.0

_WILDCARDS = ("", "0.0.0.0", "::", "0:0:0:0:0:0:0:0")


def advertised(configured, host, port):
    """
    @param configured: the config's C{host:port} to advertise, or empty.
    @param host: the bound interface (a wildcard is replaced by this
        machine's host name: a local call, no DNS).
    @return: the C{host:port} other instances and operators reach.
    """
    if configured:
        return configured
    if host in _WILDCARDS:
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_name(address, pid):
    """@return: the registration node's name for C{address} and C{pid}."""
    return f"{address}-{pid}".replace("/", "_")


class FleetRegistration(Service):
    """
    Keeps this instance's ephemeral node under C{path} (see the module
    docstring).

    @ivar registered: whether the node exists for the current session.
    @ivar writes: creates and updates sent so far (a metric).
    @ivar failures: requests that failed (a metric).
    """

    def __init__(self, zk, reactor, path, ready, routes_cached, interval=1.0, started=None, pid=None):
        """
        @param zk: the route source's L{metaproxy.routes.zkbridge.TxZooKeeper}.
        @param path: the fleet's parent node, e.g. C{/metaproxy/instances}.
        @param ready: C{callable() -> bool}: this instance's readiness.
        @param routes_cached: C{callable() -> int}.
        @param interval: seconds between checks; at most one write each.
        @param started: the process's start time (epoch seconds).
        """
        self._zk = zk
        self._reactor = reactor
        self.path = "/" + path.strip().strip("/")
        self._ready = ready
        self._routes_cached = routes_cached
        self.interval = interval
        self.started = time.time() if started is None else started
        self.pid = os.getpid() if pid is None else pid
        self.address = None
        self.admin = None
        self.registered = False
        self.writes = 0
        self.failures = 0
        self._session = None
        self._busy = False
        self._written = None
        self._loop = None
        self._waiting = []
        self._last_problem = None

    # -- what is advertised

    def advertise(self, address, admin):
        """Set the client and admin addresses (once the listeners are bound); registers when connected."""
        self.address, self.admin = address, admin
        self._tick()

    @property
    def node(self):
        """@return: the node's path, or L{None} before L{advertise}."""
        return None if self.address is None else f"{self.path}/{node_name(self.address, self.pid)}"

    def document(self):
        """@return: the JSON-ready content of the node."""
        from metaproxy import __version__

        return {
            "address": self.address,
            "admin": self.admin,
            "version": __version__,
            "runtime": f"{platform.python_implementation()} {platform.python_version()}",
            "host": socket.gethostname(),
            "pid": self.pid,
            "started": round(self.started, 3),
            "ready": bool(self._safe(self._ready, False)),
            "routes_cached": int(self._safe(self._routes_cached, 0)),
        }

    @staticmethod
    def _safe(read, default):
        try:
            return read()
        except Exception:
            log.failure("fleet registration: reading the instance's state failed")
            return default

    def when_registered(self, timeout):
        """
        @return: a L{Deferred} firing with L{True} once registered, or with
            L{False} after C{timeout} seconds (never fails): a hot upgrade
            waits on it, bounded.
        """
        if self.registered:
            return defer.succeed(True)
        d = defer.Deferred()
        call = self._reactor.callLater(timeout, self._gave_up, d)
        self._waiting.append((d, call))
        return d

    def _gave_up(self, d):
        self._waiting = [(w, c) for w, c in self._waiting if w is not d]
        log.warn("fleet registration: not registered after waiting ({why}); going on",
                 why=self._last_problem or "no ZooKeeper session")
        d.callback(False)

    def _now_registered(self):
        self.registered = True
        waiting, self._waiting = self._waiting, []
        for d, call in waiting:
            if call.active():
                call.cancel()
            d.callback(True)

    # -- service

    def startService(self):
        """Check every C{interval} seconds; register as soon as connected and advertised."""
        super().startService()
        self._zk.add_state_listener(self._on_state)
        self._loop = LoopingCall(self._check)
        self._loop.clock = self._reactor
        self._loop.start(self.interval, now=True)

    def stopService(self):
        """
        Stop checking and write C{ready: false} (at most C{STOP_WRITE}
        seconds): the instance drains from now on. The node itself goes
        when the route source closes the session, last.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if not self.registered or self._zk.state != CONNECTED or self._zk.session_id() != self._session:
            return None
        doc = dict(self.document(), ready=False)
        done = defer.Deferred()
        timer = self._reactor.callLater(STOP_WRITE, lambda: done.called or done.callback(None))

        def written(_):
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        # The bridge's Deferred is not cancellable (kazoo answers it later): wait on a copy.
        self._zk.set(self.node, self._encode(doc)).addBoth(written)
        return done

    def _check(self):
        try:
            self._tick()
        except Exception:  # the loop must go on
            log.failure("fleet registration: checking failed")

    # -- ZooKeeper

    def _on_state(self, state, session):
        if state != CONNECTED:
            return
        if session != self._session:
            self.registered = False  # the old session's node is gone, or goes when it expires
        self._tick()

    def _tick(self):
        if self._busy or self.address is None or self._zk.state != CONNECTED or not self.running:
            return
        doc = self.document()
        session = self._zk.session_id()
        if self.registered and session == self._session:
            if doc == self._written:
                return
            d = self._zk.set(self.node, self._encode(doc))
        else:
            d = self._create(doc, session)
        self._busy = True
        d.addCallbacks(self._done, self._failed, (doc, session), None, (doc, session))
        d.addBoth(self._idle)

    @staticmethod
    def _encode(doc):
        return json.dumps(doc, sort_keys=True).encode()

    def _create(self, doc, session):
        node = self.node

        def exists(failure):
            failure.trap(NodeExistsError)
            return self._zk.get(node).addCallback(owned)

        def owned(result):
            _, stat = result
            if stat.ephemeralOwner == session:
                return self._zk.set(node, self._encode(doc))
            log.info("fleet registration: removing {node}, left by an earlier session", node=node)
            return self._zk.delete(node).addCallback(lambda _: self._zk.create(
                node, self._encode(doc), ephemeral=True, makepath=True))

        d = self._zk.create(node, self._encode(doc), ephemeral=True, makepath=True)
        return d.addErrback(exists)

    def _done(self, _, doc, session):
        self.writes += 1
        self._written = doc
        self._last_problem = None
        if not self.registered or session != self._session:
            self._session = session
            log.info("fleet registration: registered as {node} (ready: {ready})", node=self.node, ready=doc["ready"])
            self._now_registered()

    def _failed(self, failure, doc, session):
        self.failures += 1
        if failure.check(NoNodeError):
            self.registered = False  # deleted under us: create it again on the next tick
        why = failure_reason(failure)
        if why != self._last_problem:
            log.warn("fleet registration of {node} failed: {why}; retrying", node=self.node, why=why)
        self._last_problem = why

    def _idle(self, _):
        self._busy = False


def _bound(port):
    host = port.getHost()
    return getattr(host, "host", ""), getattr(host, "port", 0)


def build_registration(config, reactor, route_table, ready, proxy, admin):
    """
    @param route_table: the route source; only a ZooKeeper one registers
        (its session is shared).
    @param ready: C{callable() -> bool}, the instance's readiness.
    @param proxy: the clients' L{metaproxy.ops.lifecycle.DrainingServerService};
        C{admin}: the admin HTTP one. The node is created once both are bound.
    @return: a L{FleetRegistration} to add to the service tree, or L{None}
        (static routes, or C{zookeeper.fleet_path} empty).
    """
    zk = config.zookeeper
    if zk is None or not zk.fleet_path or getattr(route_table, "zk", None) is None:
        return None

    def cached():
        count = getattr(route_table, "cached_count", None)
        return count if count is not None else len(route_table.describe())

    registration = FleetRegistration(route_table.zk, reactor, zk.fleet_path, ready, cached, zk.fleet_update_interval)

    def bound(ports):
        client, admin_port = _bound(ports[0]), _bound(ports[1])
        registration.advertise(advertised(zk.fleet_advertise, *client),
                               advertised(zk.fleet_advertise_admin, *admin_port))

    d = defer.gatherResults([proxy.when_listening(), admin.when_listening()], consumeErrors=True)
    d.addCallbacks(bound, lambda f: None)  # a bind failure is reported (and fatal) elsewhere
    return registration
