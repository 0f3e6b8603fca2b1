# -*- test-case-name: metaproxy.test.test_zkroutes -*-
"""
Routes from ZooKeeper: node C{<root>/<table>} holds
C{{"cluster_name": "...", "meta_addrs": "h1:p1,h2:p2"}} (the layout of the
Go meta-proxy and of admin-cli's table migrator).

 - A table is read on its first query; concurrent first queries share one
   read.
 - Each cached table is watched; every event re-reads and re-arms.
 - kazoo forgets watches on every disconnect, so every CONNECTED (plain
   reconnect or new session) re-reads every cached table, spread with
   jitter; an unchanged version changes nothing.
 - While ZooKeeper is unreachable the last known route is served and
   reported stale; only a confirmed NoNode removes a route. A missing table
   is cached with an exists-watch, so its creation is noticed.
 - Bad data in one node fails that table's queries (and logs a warning
   naming the node); nothing else is affected and nothing raises.
 - At most C{capacity} tables are cached (least recently used out); an
   evicted table is no longer re-armed.
"""

from typing import Optional
import random
from collections import OrderedDict

import attrs
from kazoo.exceptions import NoNodeError
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from metaproxy.errors import InvalidRoute, RouteUnavailable, TableNotFound
from metaproxy.interfaces import IRouteTable
from metaproxy.route import Route
from metaproxy.zk import CONNECTED, TxZooKeeper

log = Logger()

LOADING, OK, MISSING, INVALID = "loading", "ok", "missing", "invalid"


def valid_table_name(table):
    """@return: whether C{table} can be a ZooKeeper path component."""
    if not table or table in (".", "..") or len(table) > 1024:
        return False
    return not any(c == "/" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in table)


@attrs.define(eq=False)
class _Entry:
    table: str
    state: str = LOADING
    route: Optional[Route] = None
    error: Optional[str] = None
    version: object = None
    confirmed: Optional[float] = None
    reading: bool = False
    waiters: list = attrs.Factory(list)
    watch: object = None


@implementer(IRouteTable)
class ZooKeeperRouteTable(Service):
    """
    An L{IRouteTable} kept fresh by ZooKeeper watches.

    @ivar zk_request_count: reads sent to ZooKeeper so far.
    """

    def __init__(
        self,
        hosts,
        root,
        reactor,
        capacity=1024,
        session_timeout=10.0,
        read_timeout=5.0,
        max_suspended=30.0,
        rearm_spread=1.0,
        zk=None,
        random=random.random,
    ):
        """
        @param hosts: ZooKeeper C{"host:port"} strings.
        @param root: the parent node, e.g. C{"/pegasus-cluster"}.
        @param capacity: most tables cached (and watched) at once.
        @param read_timeout: seconds a first query waits for ZooKeeper
            before it gets L{RouteUnavailable}.
        @param rearm_spread: seconds over which the re-reads after a
            reconnect are spread (at most 1 ms per table apart).
        @param zk: a L{TxZooKeeper} to use instead of building one.
        """
        self._reactor = reactor
        self.root = "/" + root.strip().strip("/")
        self.capacity = max(1, capacity)
        self.read_timeout = read_timeout
        self.rearm_spread = rearm_spread
        self._random = random
        self._zk = zk or TxZooKeeper(hosts, reactor, session_timeout, max_suspended)
        self._zk.add_state_listener(self._on_state)
        self._entries = OrderedDict()
        self._ever_connected = False
        self._connected_since = None
        self._session = None
        self._rearm_calls = []
        self.zk_request_count = 0

    # -- service

    def startService(self):
        """Start connecting in the background; never blocks on ZooKeeper."""
        super().startService()
        self._zk.start()

    def stopService(self):
        """@return: a L{Deferred} firing once the ZooKeeper client is closed."""
        super().stopService()
        for call in self._rearm_calls:
            if call.active():
                call.cancel()
        self._rearm_calls = []
        for entry in self._entries.values():
            self._fail_waiters(entry, RouteUnavailable("metaproxy is stopping"))
        return self._zk.stop()

    # -- IRouteTable

    @property
    def zk_state(self):
        """@return: the ZooKeeper connection state name."""
        return self._zk.state

    def is_ready(self):
        """@return: L{True} once a ZooKeeper session was established."""
        return self._ever_connected

    def is_cached(self, table):
        """@return: whether C{table} is in the cache (any state)."""
        return table in self._entries

    def clusters(self):
        """@return: the meta sets of the cached routes."""
        return frozenset(e.route.meta_addrs for e in self._entries.values() if e.route is not None)

    def lookup(self, table):
        """See L{IRouteTable.lookup}."""
        if not valid_table_name(table):
            return defer.fail(TableNotFound(table))
        entry = self._entries.get(table)
        if entry is not None:
            self._entries.move_to_end(table)
            if entry.state == OK:
                return defer.succeed(entry.route)
            if entry.state == MISSING:
                return defer.fail(TableNotFound(table))
            if entry.state == INVALID:
                return defer.fail(InvalidRoute(f"{self._path(table)}: {entry.error}"))
            self._read(entry)  # still loading: read again if the last read failed
        else:
            entry = _Entry(table)
            self._entries[table] = entry
            self._evict()
            self._read(entry)
        return self._wait(entry)

    def describe(self):
        """See L{IRouteTable.describe}."""
        now = self._reactor.seconds()
        out = []
        for entry in self._entries.values():
            route = entry.route
            out.append(
                {
                    "table": entry.table,
                    "node": self._path(entry.table),
                    "cluster_name": route.cluster_name if route else None,
                    "meta_addrs": route.meta_addrs.strings() if route else [],
                    "state": entry.state,
                    "age": None if entry.confirmed is None else round(now - entry.confirmed, 3),
                    "stale": self._stale(entry),
                    "error": entry.error,
                }
            )
        return out

    # -- internals

    def _path(self, table):
        return f"{self.root}/{table}"

    def _stale(self, entry):
        if entry.confirmed is None:
            return False
        return self._zk.state != CONNECTED or (
            self._connected_since is not None and entry.confirmed < self._connected_since
        )

    def _evict(self):
        while len(self._entries) > self.capacity:
            table, entry = self._entries.popitem(last=False)
            self._fail_waiters(entry, RouteUnavailable(f"{table} was evicted from the route cache"))

    def _wait(self, entry):
        def cancel(d):
            if d in entry.waiters:
                entry.waiters.remove(d)

        d = defer.Deferred(cancel)
        entry.waiters.append(d)
        timer = self._reactor.callLater(self.read_timeout, self._timed_out, entry, d)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(done)
        return d

    def _timed_out(self, entry, d):
        if d in entry.waiters:
            entry.waiters.remove(d)
            d.errback(RouteUnavailable(f"ZooKeeper did not answer for {self._path(entry.table)} in time"))

    def _fail_waiters(self, entry, exc):
        waiters, entry.waiters = entry.waiters, []
        for d in waiters:
            d.errback(exc)

    def _settle_waiters(self, entry):
        waiters, entry.waiters = entry.waiters, []
        for d in waiters:
            if entry.state == OK:
                d.callback(entry.route)
            elif entry.state == MISSING:
                d.errback(TableNotFound(entry.table))
            else:
                d.errback(InvalidRoute(f"{self._path(entry.table)}: {entry.error}"))

    def _current(self, entry):
        return self._entries.get(entry.table) is entry

    def _read(self, entry):
        """Read (and watch) the table's node; one read per table at a time."""
        if entry.reading or not self._current(entry):
            return
        entry.reading = True
        self.zk_request_count += 1
        path = self._path(entry.table)
        if entry.watch is None:
            entry.watch = self._zk.watcher(lambda event: self._on_event(entry))
        watch = entry.watch
        d = self._zk.get(path, watch)
        d.addCallbacks(self._got_data, self._get_failed, (entry,), None, (entry, watch))
        d.addErrback(lambda f: log.failure("reading {node} failed unexpectedly", f, node=path))
        d.addBoth(self._read_done, entry)

    def _read_done(self, result, entry):
        entry.reading = False
        return None

    def _got_data(self, result, entry):
        data, stat = result
        version = (stat.czxid, stat.mzxid)
        entry.confirmed = self._reactor.seconds()
        if version == entry.version and entry.state in (OK, INVALID):
            return
        entry.version = version
        try:
            route = Route.from_json(data)
        except InvalidRoute as e:
            if entry.state != INVALID or entry.error != str(e):
                log.warn("bad route data in {node}: {why}", node=self._path(entry.table), why=str(e))
            entry.state, entry.error = INVALID, str(e)
            entry.route = None
        else:
            if entry.route is not None and entry.route != route:
                log.info(
                    "table {table} moved: {old} -> {new}",
                    table=entry.table,
                    old=entry.route.cluster_name,
                    new=route.cluster_name,
                )
            entry.state, entry.route, entry.error = OK, route, None
        self._settle_waiters(entry)

    def _get_failed(self, failure, entry, watch):
        if failure.check(NoNodeError):
            d = self._zk.exists(self._path(entry.table), watch)
            self.zk_request_count += 1
            d.addCallbacks(self._got_exists, self._read_failed, (entry,), None, (entry,))
            return d
        return self._read_failed(failure, entry)

    def _got_exists(self, stat, entry):
        if stat is not None:
            # Created between the get and the exists: read it now.
            entry.reading = False
            self._read(entry)
            return
        entry.confirmed = self._reactor.seconds()
        if entry.state == OK:
            log.info("table {table} deleted from {node}", table=entry.table, node=self._path(entry.table))
        entry.state, entry.route, entry.error, entry.version = MISSING, None, None, None
        self._settle_waiters(entry)

    def _read_failed(self, failure, entry):
        """ZooKeeper could not answer: keep what we know; first queries wait for their timeout."""
        log.debug(
            "reading {node} failed: {why}", node=self._path(entry.table), why=failure.getErrorMessage()
        )
        if entry.state == LOADING and not entry.waiters and self._current(entry):
            del self._entries[entry.table]

    def _on_event(self, entry):
        if self._current(entry):
            self._read(entry)

    def _on_state(self, state, session):
        if state != CONNECTED:
            return
        first = not self._ever_connected
        self._ever_connected = True
        self._connected_since = self._reactor.seconds()
        new_session = session != self._session
        self._session = session
        if first:
            for entry in list(self._entries.values()):
                self._read(entry)
            return
        entries = list(self._entries.values())
        log.info(
            "zookeeper reconnected ({kind}): re-reading {count} cached tables",
            kind="new session" if new_session else "same session",
            count=len(entries),
        )
        spread = min(self.rearm_spread, 0.001 * len(entries))
        self._rearm_calls = [c for c in self._rearm_calls if c.active()]
        for entry in entries:
            entry.reading = False
            delay = self._random() * spread
            self._rearm_calls.append(self._reactor.callLater(delay, self._read, entry))
