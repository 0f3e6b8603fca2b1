# -*- test-case-name: metaproxy.test.test_zkgate,metaproxy.test.test_zkroutes -*-
"""
The names under C{zookeeper.root}, kept by one ZooKeeper watch.

A child watch on the root notices every table created or deleted, so a
name that is not listed can be answered "no such table" with no read, no
watch and nothing remembered per name. While the root does not exist
(typically a typo in C{zookeeper.root}) an exists watch waits for it, and
the owner is told so it can report itself not ready.

The listing may lag: a node created a moment ago by another ZooKeeper
client may not be in it yet (its child event is still on its way, or this
session's server is behind the leader). L{RootListing.confirm} gives a
listing that is current: a C{sync} then a fresh listing, sent after the
call (its owner makes the callers arriving meanwhile share the next one,
so a flood of unknown names costs a few requests per round trip, and
still nothing per name).
"""

from kazoo.exceptions import NoAuthError, NoNodeError
from twisted.internet import defer
from twisted.logger import Logger

from metaproxy.routes.zkbridge import CONNECTED, OneAtATime, ZooKeeperUnavailable, failure_reason

log = Logger()


class RootListing:
    """
    The children of one ZooKeeper node.

    @ivar names: the set of child names, or L{None} while unknown.
    @ivar missing: L{True} while ZooKeeper says the root does not exist.
    @ivar refused: why listing the root is not allowed (NoAuth: the
        credential or the ACL is wrong), or L{None}.
    @ivar requests: reads sent to ZooKeeper so far.
    """

    def __init__(self, zk, root, reactor, watch, on_change, watched, retry_delay=1.0):
        """
        @param zk: a L{metaproxy.routes.zkbridge.TxZooKeeper}.
        @param watch: the watch function to arm (events for C{root} must
            reach L{refresh}).
        @param on_change: C{on_change(problem)} after each listing outcome:
            L{None} once L{names} is known, else why it is not.
        @param watched: the owner's set of watched paths (C{root} is added
            when a watch on it is armed).
        @param retry_delay: seconds before a failed listing is retried
            while connected.
        """
        self.root = root
        self.names = None
        self.missing = False
        self.refused = None
        self.requests = 0
        self._zk = zk
        self._reactor = reactor
        self._watch = watch
        self._on_change = on_change
        self._watched = watched
        self._retry_delay = retry_delay
        self._listing = OneAtATime(self._list, lambda: zk.state == CONNECTED)
        self._retry = None
        self._stopped = False
        self.confirmations = 0

    def missing_text(self):
        """@return: the sentence that says the root does not exist."""
        return f"zookeeper.root {self.root} does not exist"

    def refresh(self):
        """List the root again (with its child watch); while a listing runs, once more after it."""
        if not self._stopped:
            self._listing.request()

    def _list(self):
        self.requests += 1
        d = self._zk.get_children(self.root, self._watch)
        d.addCallbacks(self._listed, self._failed)
        return d.addErrback(lambda f: log.failure("listing {root} failed unexpectedly", f, root=self.root))

    def confirm(self):
        """
        Send a C{sync} and, right behind it, a fresh listing (ZooKeeper
        answers one session's requests in order, so the listing is current
        as of this call).

        @return: a L{Deferred} firing with L{names} from that listing, or
            failing with why it could not be had.
        """
        self.confirmations += 1
        self.requests += 2
        synced = self._zk.sync(self.root)
        listed = self._zk.get_children(self.root, self._watch)
        d = defer.gatherResults([synced, listed], consumeErrors=True)
        d.addCallbacks(self._confirmed, _first_error)
        return d

    def _confirmed(self, results):
        self._listed(results[1])
        return self.names

    def forget(self):
        """The session changed: the names are unknown until listed again."""
        self.names = None
        self._listing.reset()

    def discard(self, name):
        """ZooKeeper confirmed that C{name} is gone (its node read said NoNode)."""
        if self.names is not None:
            self.names.discard(name)

    def start(self):
        """Allow listings (again)."""
        self._stopped = False

    def stop(self):
        """Cancel a pending retry; list no more until L{start}."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _listed(self, names):
        """Keep C{names} as the listing (and say so); @return: L{None}."""
        self._watched.add(self.root)
        self.names = set(names)
        if self.missing:
            log.info("zookeeper.root {root} exists now ({count} tables)", root=self.root, count=len(names))
        self.missing = False
        if self.refused is not None:
            log.info("listing {root} is allowed again", root=self.root)
            self.refused = None
        self._on_change(None)

    def _failed(self, failure):
        self.names = None
        if failure.check(NoNodeError):
            if not self.missing:
                log.warn(
                    "zookeeper.root {root} does not exist: not ready, and tables not cached get a retryable "
                    "error until it is created (check zookeeper.root)",
                    root=self.root,
                )
            self.missing = True
            self._on_change(self.missing_text())
            self.requests += 1
            d = self._zk.exists(self.root, self._watch)
            d.addCallback(self._root_exists)
            d.addErrback(
                lambda f: log.info("watching for {root} failed: {why}", root=self.root, why=failure_reason(f))
            )
            return
        why = failure_reason(failure)
        if failure.check(NoAuthError):  # retried quietly: an ACL or credential fix needs no restart
            if self.refused is None:
                log.warn("listing {root} refused: {why}; not ready", root=self.root, why=why)
            self.refused = f"listing {self.root} failed: {why}"
        else:
            log.info("listing {root} failed: {why}", root=self.root, why=why)
        self._on_change(f"listing {self.root} failed: {why}")
        if not failure.check(ZooKeeperUnavailable) and self._zk.state == CONNECTED and not self._stopped:
            if self._retry is None or not self._retry.active():
                self._retry = self._reactor.callLater(self._retry_delay, self.refresh)

    def _root_exists(self, stat):
        self._watched.add(self.root)
        if stat is not None:
            self.refresh()


def _first_error(failure):
    """@return: the failure inside a L{defer.FirstError} (what actually went wrong)."""
    if failure.check(defer.FirstError):
        return failure.value.subFailure
    return failure

