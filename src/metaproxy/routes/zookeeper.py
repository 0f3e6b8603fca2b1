# -*- test-case-name: metaproxy.test.test_zkroutes -*-
"""
Routes from ZooKeeper: node C{<root>/<table>} holds
C{{"cluster_name": "...", "meta_addrs": "h1:p1,h2:p2"}} (the layout of the
Go meta-proxy and of admin-cli's table migrator).

 - The children of C{root} are listed and child-watched (one watch): a name
   that is not listed gets L{TableNotFound} with no read of its own, no
   watch and no cache entry, so unknown names cost nothing that stays. The
   listing may lag behind a node created a moment ago, so the answer waits
   for a current listing (C{sync} + list, shared by every name that waits:
   L{RootListing.confirm}); a name found there is read as usual. Never a
   false "no such table" for a table that exists. A missing
   C{root} makes the source unready (L{ZooKeeperRouteTable.unready_reason})
   and uncached tables retryable: a typo in the config is not "every table
   is gone".
 - A listed table is read on its first query (concurrent first queries
   share one read) and data-watched with one watcher function for all
   nodes; every event re-reads and re-arms. Watches stay bounded by the
   tables that exist, not by the names clients send. (A persistent
   recursive watch, ZooKeeper 3.6's C{addWatch}, would save the per-table
   watches too, but kazoo 2.11.0 has no API for it; the child watch works
   on every ZooKeeper version.)
 - Reads go through L{TxZooKeeper}'s gate: never while the session is not
   connected (an uncached table then fails fast with L{RouteUnavailable})
   and at most C{max_reads_inflight} at once; cached tables never wait.
 - kazoo forgets watches on every disconnect, so every CONNECTED re-lists
   the root and re-reads every cached table, spread with jitter; an unchanged
   version changes nothing.
 - While ZooKeeper is unreachable the last known route is served and
   reported stale; only a confirmed NoNode removes a route.
 - Bad data keeps a cached table's last good route (state C{stale}, with
   the reason, and a warning naming the node); a table never read well
   fails with L{InvalidRoute}. Reasons give positions, never node content.
 - At most C{capacity} tables are cached (least recently used out).
"""

import random
from collections import OrderedDict
from typing import Optional

import attrs
from kazoo.exceptions import NoNodeError
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from metaproxy.errors import InvalidRoute, RouteUnavailable, TableNotFound
from metaproxy.interfaces import IRouteTable
from metaproxy.routes.route import MAX_TABLE_NAME, Route
from metaproxy.routes.zkbridge import CONNECTED, OneAtATime, TxZooKeeper, failure_reason
from metaproxy.routes.zklisting import RootListing

log = Logger()

#: Confirmations of names missing from the listing (a sync + a listing
#: each) in flight at once; names arriving meanwhile share the next one.
#: (2 was measured too: a new table's first answer under a flood of
#: unknown names came later, and fewer unknown names were answered.)
_CONFIRMING = 1

LOADING, OK, STALE, INVALID, ERROR = "loading", "ok", "stale", "invalid", "error"


def valid_table_name(table):
    """@return: whether C{table} can be a ZooKeeper path component."""
    if not table or table in (".", "..") or len(table) > MAX_TABLE_NAME:
        return False
    return not any(c == "/" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in table)


def route_changes(old, new):
    """@return: what differs between two L{Route}s, e.g. C{"metas a:1 -> b:1"}."""
    parts = []
    if old.cluster_name != new.cluster_name:
        parts.append(f"cluster {old.cluster_name} -> {new.cluster_name}")
    if old.meta_addrs != new.meta_addrs:
        parts.append(f"metas {old.meta_addrs} -> {new.meta_addrs}")
    return "; ".join(parts) or "nothing"


@attrs.define(eq=False)
class _Waiter:
    key: object
    deferred: defer.Deferred = None
    timer: object = None


class Waiters:
    """
    Callers waiting for one answer (a table's read, the root's listing).
    Each may be cancelled (its request's deadline) or time out on its own;
    neither affects the others or the read they wait for.
    """

    def __init__(self):
        self._items = []

    def __len__(self):
        return len(self._items)

    def add(self, reactor, timeout, expired, key=None):
        """
        @param timeout: seconds before the waiter fails with C{expired()}.
        @param key: kept with the waiter and given back by L{take}.
        @return: a L{Deferred} for the answer.
        """
        item = _Waiter(key)

        def cancel(d):
            self._drop(item)

        item.deferred = defer.Deferred(cancel)
        item.timer = reactor.callLater(timeout, self._expire, item, expired)
        self._items.append(item)
        return item.deferred

    def _drop(self, item):
        if item in self._items:
            self._items.remove(item)
        if item.timer.active():
            item.timer.cancel()

    def _expire(self, item, expired):
        if item in self._items:
            self._items.remove(item)
            item.deferred.errback(expired())

    def take(self):
        """@return: every waiter as C{(key, deferred)}, removing them (their timers are stopped)."""
        items, self._items = self._items, []
        for item in items:
            if item.timer.active():
                item.timer.cancel()
        return [(item.key, item.deferred) for item in items]

    def fail(self, exc):
        """Fail every waiter with C{exc}."""
        for _, d in self.take():
            d.errback(exc)


class _Absent:
    """
    Names missing from the listing that wait for one confirmation: one
    timer for all of them (a flood of unknown names arms no timer each).
    """

    __slots__ = ("items", "timer")

    def __init__(self):
        self.items = {}  # Deferred -> table name
        self.timer = None

    def __len__(self):
        return len(self.items)

    def add(self, table, reactor, timeout, root):
        """@return: a L{Deferred} for C{table}; cancelling it forgets it."""
        items = self.items
        d = defer.Deferred(lambda d: items.pop(d, None))
        items[d] = table
        if self.timer is None:
            self.timer = reactor.callLater(
                timeout, self.fail, RouteUnavailable(f"ZooKeeper did not confirm the listing of {root} in time")
            )
        return d

    def take(self):
        """@return: every C{(table, deferred)} waiting, removing them (the timer is stopped)."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        items, self.items = self.items, {}
        return [(table, d) for d, table in items.items()]

    def fail(self, exc):
        """Fail every waiter with C{exc}."""
        for _, d in self.take():
            d.errback(exc)


@attrs.define(eq=False)
class _Entry:
    table: str
    state: str = LOADING
    route: Optional[Route] = None
    error: Optional[str] = None
    version: object = None
    confirmed: Optional[float] = None
    reader: Optional[OneAtATime] = None
    waiters: Waiters = attrs.Factory(Waiters)
    #: The route served before the current one (a loop falls back to it).
    previous: Optional[Route] = None
    #: Meta lists found to loop (a metaproxy), with why: never served.
    loops: dict = attrs.Factory(dict)


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
        max_reads_inflight=32,
        max_waiting=10000,
        self_addresses=None,
        auth=None,
    ):
        """
        @param hosts: ZooKeeper C{"host:port"} strings.
        @param root: the parent node, e.g. C{"/pegasus-cluster"}.
        @param capacity: most tables cached (and watched) at once.
        @param read_timeout: the longest a first query waits for ZooKeeper
            before it gets L{RouteUnavailable} (callers with a shorter
            budget cancel their L{Deferred} earlier).
        @param rearm_spread: seconds over which the re-reads after a
            reconnect are spread (at most 1 ms per table apart).
        @param zk: a L{TxZooKeeper} to use instead of building one.
        @param max_reads_inflight: ZooKeeper reads in flight at once.
        @param max_waiting: lookups that may wait for the root's listing.
        @param self_addresses: a L{metaproxy.routes.route.SelfAddresses}: routes
            naming one of them fail with L{InvalidRoute}.
        @param auth: the L{metaproxy.routes.zkauth.ZooKeeperAuth} to read
            with, or L{None} (no credential).
        """
        self._reactor = reactor
        self.root = "/" + root.strip().strip("/")
        self.capacity = max(1, capacity)
        self.read_timeout = read_timeout
        self.rearm_spread = rearm_spread
        self.max_waiting = max_waiting
        self.self_addresses = self_addresses
        self._random = random
        self._zk = zk or TxZooKeeper(
            hosts, reactor, session_timeout, max_suspended, max_inflight=max_reads_inflight, auth=auth
        )
        self._zk.add_state_listener(self._on_state)
        self._watch = self._zk.watcher(self._on_event)
        self._watched = set()
        self._listing = RootListing(self._zk, self.root, reactor, self._watch, self._listed, self._watched)
        self._listing_waiters = Waiters()
        self._absent_next = _Absent()  # names not listed, for the next confirmation
        self._absent_batches = []  # those each running confirmation answers
        self._entries = OrderedDict()
        self._ever_connected = False
        self._connected_since = None
        self._session = None
        self._rearm_calls = []
        self._reads = 0

    # -- service

    def startService(self):
        """Start connecting in the background; never blocks on ZooKeeper."""
        super().startService()
        self._listing.start()
        self._zk.start()

    def stopService(self):
        """@return: a L{Deferred} firing once the ZooKeeper client is closed."""
        super().stopService()
        for call in self._rearm_calls:
            if call.active():
                call.cancel()
        self._rearm_calls = []
        self._listing.stop()
        stopping = RouteUnavailable("metaproxy is stopping")
        for entry in self._entries.values():
            entry.waiters.fail(stopping)
        self._listing_waiters.fail(stopping)
        for batch in [self._absent_next] + self._absent_batches:
            batch.fail(stopping)
        return self._zk.stop()

    # -- state for health and metrics

    @property
    def zk_request_count(self):
        """@return: reads sent to ZooKeeper so far (tables and the root's listing)."""
        return self._reads + self._listing.requests

    @property
    def zk_state(self):
        """@return: the ZooKeeper connection state name."""
        return self._zk.state

    @property
    def zk_reads_inflight(self):
        """@return: ZooKeeper reads sent and not answered yet."""
        return self._zk.inflight

    @property
    def zk(self):
        """@return: the L{TxZooKeeper} this table watches through (the fleet registration shares its session)."""
        return self._zk

    @property
    def cached_count(self):
        """@return: tables in the route cache (any state)."""
        return len(self._entries)

    @property
    def zk_watches(self):
        """@return: nodes this table holds a ZooKeeper watch on (the root included)."""
        return len(self._watched)

    def is_ready(self):
        """@return: L{True} once a ZooKeeper session was established, unless C{root} is missing or may not be listed."""
        return self._ever_connected and not self._listing.missing and self._listing.refused is None

    def unready_reason(self):
        """@return: why L{is_ready} is false (a L{str}), or L{None}."""
        if self._listing.missing:
            return self._listing.missing_text()
        if self._listing.refused is not None:
            return self._listing.refused
        if not self._ever_connected:
            why = f": {self._zk.reason}" if self._zk.reason else ""
            return f"no ZooKeeper session yet ({self._zk.state}{why})"
        return None

    # -- IRouteTable

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
            if entry.route is not None:
                return self._serve(entry)
            if entry.state == INVALID:
                return defer.fail(InvalidRoute(f"{self._path(table)}: {entry.error}"))
            if self._zk.state != CONNECTED:
                return defer.fail(self._unavailable(table))
            self._read(entry)
            return self._wait(entry.waiters, table)
        if self._zk.state != CONNECTED:
            return defer.fail(self._unavailable(table))
        names = self._listing.names
        if names is None:
            if self._listing.missing:
                return defer.fail(RouteUnavailable(self._listing.missing_text()))
            return self._wait_listing(table)
        if table not in names:
            return self._confirm_absent(table)
        entry = _Entry(table)
        self._entries[table] = entry
        self._evict()
        self._read(entry)
        return self._wait(entry.waiters, table)

    def reject_route(self, table, meta_addrs, why):
        """
        A route's metas turned out to be a metaproxy (a loop found at run
        time): serve the table's last good route again, reported stale
        with C{why}, and never serve these metas for it until its node
        names others.

        @param table: the table.
        @param meta_addrs: the L{metaproxy.routes.route.MetaAddrs} that loop.
        @param why: the reason, for logs and C{/routes}.
        """
        entry = self._entries.get(table)
        if entry is None or entry.route is None or entry.route.meta_addrs != meta_addrs:
            return
        if len(entry.loops) >= 8:
            entry.loops.clear()
        entry.loops[meta_addrs] = why
        looping, entry.route, entry.error = entry.route, entry.previous, why
        entry.state = STALE if entry.route is not None else INVALID
        log.warn(
            "route of {table} ({cluster}: {meta_addrs}) loops: {why}; {action}",
            table=table, cluster=looping.cluster_name, meta_addrs=str(meta_addrs), why=why,
            action=f"serving its last good route (cluster {entry.route.cluster_name}) again"
            if entry.route is not None else "no last good route to serve",
        )

    def cached(self, table):
        """
        @return: the cached route L{lookup} would give at once, without a
            L{Deferred}, or L{None} when L{lookup} must be asked (nothing
            cached, a failure, a read to wait for).
        """
        entry = self._entries.get(table)
        if entry is None or entry.route is None:
            return None
        self._entries.move_to_end(table)
        if self._self_problem(entry.route) is not None:
            return None
        return entry.route

    def describe(self):
        """See L{IRouteTable.describe}."""
        now = self._reactor.seconds()
        out = []
        for entry in self._entries.values():
            route = entry.route
            state, error = entry.state, entry.error
            problem = self._self_problem(route)
            if problem is not None:
                state, error = INVALID, problem
            out.append(
                {
                    "table": entry.table,
                    "node": self._path(entry.table),
                    "cluster_name": route.cluster_name if route else None,
                    "meta_addrs": route.meta_addrs.strings() if route else [],
                    "state": state,
                    "age": None if entry.confirmed is None else round(now - entry.confirmed, 3),
                    "stale": entry.state == STALE or self._stale(entry),
                    "error": error,
                    "czxid": entry.version[0] if entry.version else None,
                    "mzxid": entry.version[1] if entry.version else None,
                }
            )
        return out

    # -- lookups

    def _path(self, table):
        return f"{self.root}/{table}"

    def _unavailable(self, table):
        why = f": {self._zk.reason}" if self._zk.reason else ""
        return RouteUnavailable(f"{table} is not cached and ZooKeeper is {self._zk.state}{why}")

    def _self_problem(self, route):
        guard = self.self_addresses
        return None if guard is None or route is None else guard.problem(route.meta_addrs)

    def _serve(self, entry):
        problem = self._self_problem(entry.route)
        if problem is not None:
            return defer.fail(InvalidRoute(f"{self._path(entry.table)}: {problem}"))
        return defer.succeed(entry.route)

    def _stale(self, entry):
        if entry.confirmed is None:
            return False
        return self._zk.state != CONNECTED or (
            self._connected_since is not None and entry.confirmed < self._connected_since
        )

    def _evict(self):
        while len(self._entries) > self.capacity:
            table, entry = self._entries.popitem(last=False)
            entry.waiters.fail(RouteUnavailable(f"{table} was evicted from the route cache"))

    def _wait(self, waiters, table, key=None):
        """@return: a L{Deferred} in C{waiters}; cancelling it leaves the read running for the others."""
        path = self._path(table)
        return waiters.add(
            self._reactor, self.read_timeout, lambda: RouteUnavailable(f"ZooKeeper did not answer for {path} in time"),
            key,
        )

    def _settle_waiters(self, entry):
        for _, d in entry.waiters.take():
            if entry.route is not None:
                self._serve(entry).chainDeferred(d)
            else:
                d.errback(InvalidRoute(f"{self._path(entry.table)}: {entry.error}"))

    def _current(self, entry):
        return self._entries.get(entry.table) is entry

    # -- the root's listing

    def _wait_listing(self, table):
        if len(self._listing_waiters) >= self.max_waiting:
            return defer.fail(RouteUnavailable(f"{len(self._listing_waiters)} lookups already wait for ZooKeeper"))
        self._listing.refresh()
        return self._wait(self._listing_waiters, table, key=table)

    def _confirm_absent(self, table):
        """A name not in the listing: answer from a current listing (see L{RootListing.confirm})."""
        waiting = len(self._absent_next) + sum(len(b) for b in self._absent_batches)
        if waiting >= self.max_waiting:
            return defer.fail(RouteUnavailable(f"{waiting} lookups already wait for ZooKeeper"))
        d = self._absent_next.add(table, self._reactor, self.read_timeout, self.root)
        if len(self._absent_batches) < _CONFIRMING:
            self._confirm_round()
        return d

    def _confirm_round(self):
        batch, self._absent_next = self._absent_next, _Absent()
        self._absent_batches.append(batch)
        self._listing.confirm().addBoth(self._absent_confirmed, batch)

    def _absent_confirmed(self, result, batch):
        if batch in self._absent_batches:
            self._absent_batches.remove(batch)
        if isinstance(result, Failure):
            batch.fail(RouteUnavailable(f"listing {self.root} failed: {failure_reason(result)}"))
        else:
            for table, d in batch.take():
                if result is not None and table not in result:
                    d.errback(TableNotFound(table))
                else:
                    self.lookup(table).chainDeferred(d)
        if len(self._absent_next) and len(self._absent_batches) < _CONFIRMING:
            if self._zk.state == CONNECTED:
                self._confirm_round()
            else:
                self._absent_next.fail(RouteUnavailable(f"ZooKeeper is {self._zk.state}"))
        return None

    def _listed(self, problem):
        """The listing is known again (C{problem} L{None}) or cannot be had: answer who waited for it."""
        if problem is not None:
            self._listing_waiters.fail(RouteUnavailable(problem))
            return
        for table, d in self._listing_waiters.take():
            self.lookup(table).chainDeferred(d)

    # -- reading one table

    def _read(self, entry):
        """Read (and watch) the table's node; one read per table at a time (see L{OneAtATime})."""
        if not self._current(entry):
            return
        if entry.reader is None:
            entry.reader = OneAtATime(lambda: self._send_read(entry), lambda: self._zk.state == CONNECTED)
        entry.reader.request()

    def _send_read(self, entry):
        self._reads += 1
        path = self._path(entry.table)
        d = self._zk.get(path, self._watch)
        d.addCallbacks(self._got_data, self._get_failed, (entry,), None, (entry,))
        return d.addErrback(lambda f: log.failure("reading {node} failed unexpectedly", f, node=path))

    def _got_data(self, result, entry):
        data, stat = result
        path = self._path(entry.table)
        self._watched.add(path)
        version = (stat.czxid, stat.mzxid)
        entry.confirmed = self._reactor.seconds()
        if version == entry.version and entry.state in (OK, STALE, INVALID):
            self._settle_waiters(entry)
            return
        entry.version = version
        try:
            route = Route.from_json(data)
        except InvalidRoute as e:
            why = str(e)
            if entry.route is not None:
                if entry.state != STALE or entry.error != why:
                    log.warn(
                        "bad route data in {node}: {why}; still serving the last good route of {table} "
                        "(cluster {cluster})",
                        node=path, why=why, table=entry.table, cluster=entry.route.cluster_name,
                    )
                entry.state = STALE
            else:
                if entry.state != INVALID or entry.error != why:
                    log.warn("bad route data in {node}: {why}", node=path, why=why)
                entry.state = INVALID
            entry.error = why
        else:
            loop = self._self_problem(route) or entry.loops.get(route.meta_addrs)
            if loop is not None:
                self._keep_last_good(entry, route, loop)
            else:
                if entry.route is not None and entry.route != route:
                    log.info(
                        "table {table} moved: {changes}", table=entry.table, changes=route_changes(entry.route, route)
                    )
                    entry.previous = entry.route
                elif entry.state == STALE:
                    log.info("route data in {node} is valid again", node=path)
                entry.loops.clear()
                entry.state, entry.route, entry.error = OK, route, None
        self._settle_waiters(entry)

    def _keep_last_good(self, entry, route, why):
        """The node names metas that loop (this proxy, a metaproxy): keep serving the last good route, stale."""
        if entry.error != why:
            log.warn(
                "refusing the new route of {table} ({meta_addrs}): {why}; {action}",
                table=entry.table, meta_addrs=str(route.meta_addrs), why=why,
                action="still serving its last good route" if entry.route is not None else "no good route to serve",
            )
        entry.state = STALE if entry.route is not None else INVALID
        entry.error = why

    def _get_failed(self, failure, entry):
        path = self._path(entry.table)
        if failure.check(NoNodeError):
            self._listing.discard(entry.table)
            if self._current(entry):
                del self._entries[entry.table]
            if entry.route is not None:
                log.info("table {table} deleted from {node}", table=entry.table, node=path)
            entry.waiters.fail(TableNotFound(entry.table))
            return
        why = f"reading {path} failed: {failure_reason(failure)}"
        log.info("{why}", why=why)
        if entry.route is None and self._current(entry):
            entry.state, entry.error = ERROR, why
        entry.waiters.fail(RouteUnavailable(why))

    # -- events and states

    def _on_event(self, event):
        path = event.path
        self._watched.discard(path)
        if path == self.root:
            self._listing.refresh()
            return
        if path.startswith(self.root + "/"):
            entry = self._entries.get(path[len(self.root) + 1:])
            if entry is not None:
                self._read(entry)

    def _on_state(self, state, session):
        if state != CONNECTED:
            self._watched.clear()  # kazoo forgets every watch on each disconnect
            why = f"ZooKeeper is {state}" + (f": {self._zk.reason}" if self._zk.reason else "")
            for entry in self._entries.values():
                if entry.route is None and entry.state in (LOADING, ERROR):
                    entry.state, entry.error = ERROR, why
                    entry.waiters.fail(RouteUnavailable(f"{entry.table} is not cached and {why}"))
            self._listing_waiters.fail(RouteUnavailable(why))
            for batch in [self._absent_next] + self._absent_batches:
                batch.fail(RouteUnavailable(why))
            return
        first = not self._ever_connected
        self._ever_connected = True
        self._connected_since = self._reactor.seconds()
        new_session = session != self._session
        self._session = session
        self._listing.forget()
        self._listing.refresh()
        entries = list(self._entries.values())
        if first:
            for entry in entries:
                self._read(entry)
            return
        log.info(
            "zookeeper reconnected ({kind}): re-reading {count} cached tables",
            kind="new session" if new_session else "same session",
            count=len(entries),
        )
        spread = min(self.rearm_spread, 0.001 * len(entries))
        self._rearm_calls = [c for c in self._rearm_calls if c.active()]
        for entry in entries:
            if entry.reader is not None:
                entry.reader.reset()
            delay = self._random() * spread
            self._rearm_calls.append(self._reactor.callLater(delay, self._read, entry))
