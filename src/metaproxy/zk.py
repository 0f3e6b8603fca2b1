# -*- test-case-name: metaproxy.test.test_zkroutes -*-
"""
kazoo bridged into the Twisted reactor.

kazoo runs its own threads; everything it reports (results, watch events,
connection states) is handed to the reactor thread with C{callFromThread},
so callers only ever see L{Deferred}s and callbacks in the reactor.

What kazoo does not do, and callers must know (stack.md section 1):
 - it drops every watch on each disconnect and does not re-register them:
   listeners get C{CONNECTED} and must re-read what they watch;
 - against a server that lost its data ("has seen a newer zxid") it retries
   forever without reporting LOST: a watchdog here forces a fresh session
   when the client stays suspended longer than C{max_suspended}.
"""

from kazoo.client import KazooClient, KazooState
from kazoo.protocol.states import EventType
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

CONNECTED = "CONNECTED"
SUSPENDED = "SUSPENDED"
LOST = "LOST"
STOPPED = "STOPPED"


class TxZooKeeper:
    """
    A kazoo client whose results and events arrive in the reactor thread.

    @ivar state: the last connection state: C{"CONNECTED"}, C{"SUSPENDED"},
        C{"LOST"}, or C{"STOPPED"} before start and after stop.
    """

    def __init__(self, hosts, reactor, session_timeout=10.0, max_suspended=30.0, client=None):
        """
        @param hosts: C{"host:port"} strings.
        @param session_timeout: seconds; the server clamps it to its limits.
        @param max_suspended: seconds in SUSPENDED before a new session is forced.
        @param client: a pre-built L{KazooClient} (tests).
        """
        self._reactor = reactor
        self.client = client or KazooClient(
            hosts=",".join(hosts),
            timeout=session_timeout,
            connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 2.0},
        )
        self.client.add_listener(self._state_from_thread)
        self.max_suspended = max_suspended
        self.state = STOPPED
        self._listeners = []
        self._watchdog = None
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
        @return: a watch function to pass to L{get} or L{exists}.
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
        self.client.start_async()

    def stop(self):
        """@return: a L{Deferred} firing once the client is stopped and closed."""
        self._stopping = True
        self._cancel_watchdog()

        def stop_and_close():
            self.client.stop()
            self.client.close()

        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), stop_and_close)

        def stopped(result):
            self.state = STOPPED
            return result

        return d.addBoth(stopped)

    # -- reads

    def get(self, path, watch=None):
        """@return: a L{Deferred} firing with C{(data, stat)}; fails with NoNodeError etc."""
        return self._deferred(self.client.get_async(path, watch=watch))

    def exists(self, path, watch=None):
        """@return: a L{Deferred} firing with the stat or L{None}."""
        return self._deferred(self.client.exists_async(path, watch=watch))

    def session_id(self):
        """@return: the current session id, or L{None}."""
        cid = self.client.client_id
        return cid[0] if cid else None

    # -- states and the watchdog

    def _on_state(self, state):
        name = {KazooState.CONNECTED: CONNECTED, KazooState.SUSPENDED: SUSPENDED, KazooState.LOST: LOST}.get(
            state, str(state)
        )
        if self._stopping:
            return
        self.state = name
        sid = self.session_id()
        log.info("zookeeper {state} (session {sid})", state=name, sid=f"{sid:x}" if sid else "-")
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
