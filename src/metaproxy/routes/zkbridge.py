# -*- test-case-name: metaproxy.test.test_zkroutes -*-
"""
kazoo bridged into the Twisted reactor.

kazoo runs its own threads; everything it reports (results, watch events,
connection states) is handed to the reactor thread with C{callFromThread},
so callers only ever see L{Deferred}s and callbacks in the reactor.

The reactor never waits on kazoo. kazoo queues each request and writes one
byte to a wake-up socketpair that only its connection thread drains, and
only while connected: a few hundred requests sent while ZooKeeper is away
fill that pipe and the next C{send} blocks the reactor thread. So every
request goes through a gate here:
 - while the session is not C{CONNECTED} it fails at once with
   L{ZooKeeperUnavailable} (with kazoo's last reason);
 - at most C{max_inflight} requests are handed to kazoo at a time; the
   others wait in metaproxy's own bounded queue, which is failed as soon as
   the connection goes away.

What kazoo does not do, and callers must know (stack.md section 1):
 - it drops every watch on each disconnect and does not re-register them:
   listeners get C{CONNECTED} and must re-read what they watch;
 - against a server that lost its data ("has seen a newer zxid") it retries
   forever without reporting LOST: a watchdog here forces a fresh session
   when the client stays suspended longer than C{max_suspended}.

kazoo's own log lines (two every second or two while ZooKeeper is down) are
not logged: the last one is kept as the reason shown in metaproxy's single
line per state change and in a reminder every C{reminder} seconds while the
session stays down. kazoo's errors are still logged.
"""

import logging
from collections import deque

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import AuthFailedError, NoAuthError
from kazoo.protocol.states import EventType
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

CONNECTED = "CONNECTED"
SUSPENDED = "SUSPENDED"
LOST = "LOST"
STOPPED = "STOPPED"


class ZooKeeperUnavailable(Exception):
    """A request was not sent: the session is not connected, or too many wait."""


def failure_reason(failure_or_exc):
    """
    @return: a non-empty one-line reason for a L{Failure} or exception: its
        message, or the repr of its type when the message is empty (kazoo's
        C{ConnectionLoss()} has none).
    """
    exc = failure_or_exc.value if isinstance(failure_or_exc, Failure) else failure_or_exc
    if isinstance(exc, NoAuthError):
        return "not allowed by the node's ACL (NoAuth): check zookeeper.auth and the ACL"
    if isinstance(exc, AuthFailedError):
        return "ZooKeeper refused the credential (AuthFailed): check zookeeper.auth"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or f"{type(exc).__name__}()"


class OneAtATime:
    """
    Runs one read at a time; a request made while it runs runs it once
    more afterwards. kazoo hands results and watch events to the reactor
    from two threads, so a change event may arrive before the answer to a
    read that ZooKeeper served before the change: that event must not be
    lost.
    """

    def __init__(self, start, may_rerun):
        """
        @param start: C{start()} begins the read and returns a L{Deferred}
            that fires (never fails) once its answer was handled.
        @param may_rerun: C{may_rerun()}: whether a pending request may run
            now (e.g. the session is connected).
        """
        self._start = start
        self._may_rerun = may_rerun
        self.running = False
        self._again = False
        self._generation = 0

    def request(self):
        """Run now, or once more after the running read."""
        if self.running:
            self._again = True
            return
        self.running, self._again = True, False
        self._generation += 1
        self._start().addBoth(self._done, self._generation)

    def _done(self, _, generation):
        if generation != self._generation:
            return  # forgotten by reset(); a newer read runs or may run
        self.running = False
        if self._again and self._may_rerun():
            self.request()

    def reset(self):
        """Forget the running read (its session is gone: it does not block the next one)."""
        self._generation += 1
        self.running = self._again = False


class _KazooChatter(logging.Handler):
    """
    Keeps kazoo's last log line as the connection's reason; forwards only
    its errors (to the reactor thread's logger).
    """

    def __init__(self, owner):
        super().__init__(logging.DEBUG)
        self._owner = owner

    def emit(self, record):  # a kazoo thread: never block
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.levelno >= logging.ERROR:
            self._owner._reactor.callFromThread(log.error, "kazoo: {text}", text=text)
        elif record.levelno >= logging.WARNING and not text.startswith("Transition to"):
            self._owner.reason = text


def _kazoo_logger(owner):
    logger = logging.Logger("kazoo.metaproxy", logging.INFO)
    logger.propagate = False
    logger.addHandler(_KazooChatter(owner))
    return logger


class TxZooKeeper:
    """
    A kazoo client whose results and events arrive in the reactor thread.

    @ivar state: the last connection state: C{"CONNECTED"}, C{"SUSPENDED"},
        C{"LOST"}, or C{"STOPPED"} before start and after stop.
    @ivar reason: the last reason kazoo gave for a connection problem (a
        L{str}, empty when none).
    @ivar inflight: requests handed to kazoo and not answered yet (at most
        C{max_inflight}).
    """

    def __init__(
        self, hosts, reactor, session_timeout=10.0, max_suspended=30.0, client=None,
        max_inflight=32, max_queued=4096, reminder=60.0, auth=None,
    ):
        """
        @param hosts: C{"host:port"} strings.
        @param session_timeout: seconds; the server clamps it to its limits.
        @param max_suspended: seconds in SUSPENDED before a new session is forced.
        @param client: a pre-built L{KazooClient} (tests).
        @param max_inflight: requests handed to kazoo at once (keep it well
            below the ~280 that fill kazoo's wake-up pipe).
        @param max_queued: requests waiting for a slot; beyond, they fail.
        @param reminder: seconds between "still down" lines.
        @param auth: the L{metaproxy.routes.zkauth.ZooKeeperAuth} the
            session presents, or L{None}.
        """
        self._reactor = reactor
        self.reason = ""
        self.auth = auth
        self.client = client or KazooClient(
            hosts=",".join(hosts),
            timeout=session_timeout,
            connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 2.0},
            logger=_kazoo_logger(self),
            **(auth.kazoo_options() if auth is not None else {}),
        )
        self.client.add_listener(self._state_from_thread)
        self.max_suspended = max_suspended
        self.max_inflight = max(1, max_inflight)
        self.max_queued = max_queued
        self.reminder = reminder
        self.state = STOPPED
        self.inflight = 0
        self._queue = deque()
        self._listeners = []
        self._watchdog = None
        self._reminder_call = None
        self._down_since = None
        self._stopping = False

    # -- threads -> reactor

    def _deferred(self, async_result):
        d = defer.Deferred()

        def done(result):  # a kazoo thread
            try:
                value = result.get_nowait()
            except BaseException:
                self._reactor.callFromThread(d.errback, Failure())
            else:
                self._reactor.callFromThread(d.callback, value)

        async_result.rawlink(done)
        return d

    def _state_from_thread(self, state):  # kazoo's connection thread: never block
        self._reactor.callFromThread(self._on_state, state)

    def watcher(self, callback):
        """
        @param callback: C{callback(event)}, run in the reactor thread for
            each watch event (type not NONE: the session-reset pseudo events
            are dropped; a C{CONNECTED} state follows them).
        @return: a watch function to pass to L{get}, L{exists} or
            L{get_children}. Pass the same function for every path: kazoo
            keeps one entry per distinct function and path.
        """

        def from_thread(event):
            if event.type != EventType.NONE:
                self._reactor.callFromThread(callback, event)

        return from_thread

    # -- lifecycle

    def add_state_listener(self, listener):
        """Call C{listener(state, session_id)} in the reactor on every state change."""
        self._listeners.append(listener)

    def start(self):
        """Connect in the background; never blocks, never fails while ZooKeeper is down."""
        self._stopping = False
        self.state = LOST  # kazoo's state until its first session
        self._down_since = self._reactor.seconds()
        if self._reminder_call is None and self.reminder > 0:
            self._reminder_call = self._reactor.callLater(self.reminder, self._remind)
        self.client.start_async()

    def stop(self):
        """@return: a L{Deferred} firing once the client is stopped and closed."""
        self._stopping = True
        self._cancel_watchdog()
        self._cancel_reminder()
        self._fail_queued("metaproxy is stopping")

        def stop_and_close():
            self.client.stop()
            self.client.close()

        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), stop_and_close)

        def stopped(result):
            self.state = STOPPED
            return result

        return d.addBoth(stopped)

    # -- reads, through the gate

    def get(self, path, watch=None):
        """@return: a L{Deferred} firing with C{(data, stat)}; fails with NoNodeError, L{ZooKeeperUnavailable}..."""
        return self._submit(lambda: self.client.get_async(path, watch=watch))

    def exists(self, path, watch=None):
        """@return: a L{Deferred} firing with the stat or L{None}."""
        return self._submit(lambda: self.client.exists_async(path, watch=watch))

    def sync(self, path):
        """
        @return: a L{Deferred} firing once the server this session talks to
            has caught up with the leader (reads sent after it see every
            write acknowledged before it).
        """
        return self._submit(lambda: self.client.sync_async(path))

    def get_children(self, path, watch=None):
        """@return: a L{Deferred} firing with the list of child names; fails with NoNodeError etc."""
        return self._submit(lambda: self.client.get_children_async(path, watch=watch))

    # -- writes, through the same gate (the fleet registration's ephemeral node)

    def create(self, path, value=b"", ephemeral=False, makepath=False):
        """@return: a L{Deferred} firing with the created path; fails with NodeExistsError, L{ZooKeeperUnavailable}..."""
        return self._submit(lambda: self.client.create_async(path, value, ephemeral=ephemeral, makepath=makepath))

    def set(self, path, value, version=-1):
        """@return: a L{Deferred} firing with the new stat; fails with NoNodeError, BadVersionError..."""
        return self._submit(lambda: self.client.set_async(path, value, version))

    def delete(self, path, version=-1):
        """@return: a L{Deferred} firing once C{path} is deleted; fails with NoNodeError..."""
        return self._submit(lambda: self.client.delete_async(path, version))

    def _unavailable(self):
        why = f": {self.reason}" if self.reason else ""
        return ZooKeeperUnavailable(f"ZooKeeper is {self.state}{why}")

    def _submit(self, send):
        if self.state != CONNECTED:
            return defer.fail(self._unavailable())
        if self.inflight < self.max_inflight:
            return self._send(send)
        if len(self._queue) >= self.max_queued:
            return defer.fail(ZooKeeperUnavailable(f"{len(self._queue)} ZooKeeper reads already wait"))
        d = defer.Deferred()
        self._queue.append((send, d))
        return d

    def _send(self, send):
        self.inflight += 1
        try:
            d = self._deferred(send())
        except Exception:
            d = defer.fail()
        return d.addBoth(self._answered)

    def _answered(self, result):
        self.inflight -= 1
        while self._queue and self.inflight < self.max_inflight and self.state == CONNECTED:
            send, d = self._queue.popleft()
            self._send(send).chainDeferred(d)
        return result

    def _fail_queued(self, why):
        queued, self._queue = self._queue, deque()
        for _, d in queued:
            d.errback(ZooKeeperUnavailable(why))

    def session_id(self):
        """@return: the current session id, or L{None}."""
        cid = self.client.client_id
        return cid[0] if cid else None

    # -- states, the reminder and the watchdog

    def _on_state(self, state):
        name = {KazooState.CONNECTED: CONNECTED, KazooState.SUSPENDED: SUSPENDED, KazooState.LOST: LOST}.get(
            state, str(state)
        )
        if self._stopping:
            return
        self.state = name
        sid = self.session_id()
        if name == CONNECTED:
            log.info("zookeeper CONNECTED (session {sid}, {auth})", sid=f"{sid:x}" if sid else "-",
                     auth=self.auth.describe() if self.auth is not None else "no credential")
            self._down_since = None
            self.reason = ""
            self._cancel_reminder()
        else:
            if self._down_since is None:
                self._down_since = self._reactor.seconds()
            log.warn("zookeeper {state}: {why}", state=name, why=self.reason or "connection lost")
            self._fail_queued(str(self._unavailable()))
            if self._reminder_call is None and self.reminder > 0:
                self._reminder_call = self._reactor.callLater(self.reminder, self._remind)
        if name == SUSPENDED:
            if self._watchdog is None:
                self._watchdog = self._reactor.callLater(self.max_suspended, self._new_session)
        else:
            self._cancel_watchdog()
        for listener in list(self._listeners):
            try:
                listener(name, sid)
            except Exception:
                log.failure("zookeeper state listener failed")

    def _remind(self):
        self._reminder_call = None
        if self._stopping or self.state == CONNECTED:
            return
        now = self._reactor.seconds()
        down = now - (now if self._down_since is None else self._down_since)
        log.warn(
            "zookeeper still {state} after {seconds}s: {why}",
            state=self.state, seconds=int(down), why=self.reason or "no answer",
        )
        self._reminder_call = self._reactor.callLater(self.reminder, self._remind)

    def _cancel_reminder(self):
        if self._reminder_call is not None and self._reminder_call.active():
            self._reminder_call.cancel()
        self._reminder_call = None

    def _cancel_watchdog(self):
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _new_session(self):
        self._watchdog = None
        if self._stopping:
            return
        log.warn(
            "zookeeper suspended for more than {seconds}s: starting a new session", seconds=self.max_suspended
        )

        def restart():
            self.client.stop()  # also forgets the last zxid the server refused
            self.client.start_async()

        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), restart)
        d.addErrback(lambda f: log.failure("forcing a new zookeeper session failed", f))
