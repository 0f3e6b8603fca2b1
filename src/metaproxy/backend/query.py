# -*- test-case-name: metaproxy.test.test_backend_cluster -*-
"""
One query_config call against one cluster's metas (used by
L{metaproxy.backend.cluster.MetaCluster}).

A query first asks the meta believed to be the leader. A follower's
C{ERR_FORWARD_TO_OTHERS} names the leader, which is asked next. The other
metas are asked too (the query I{hedges}) after C{hedge_delay} (at most half
of the deadline), at once when the believed leader's link is not up, and
as soon as an attempt fails or a forward gives no usable leader. The first
answer that is not a forward wins.

A forward may name an address outside the route's metas (a leader moved,
or a lying meta): at most L{MAX_OUTSIDE_SENDS} copies of one client query
go to such addresses over the query's whole life, so at most that many
connections are opened for it; a forward beyond that is not followed
(counted by the cluster's C{forwards_outside}).

A round ends when everything it could send has been sent and every attempt
has ended without a winner; the decision is never taken while the sending
loop still runs, so a meta that fails synchronously (its link is down)
cannot end the round before the others were asked, whatever the address
order. Another round, asking every meta again, follows after
C{retry_delay} while the deadline allows (an election may be running). While
attempts hang (a silent meta), every meta is asked again every
C{hedge_delay} (beside its attempt still in flight, if any): the followers may
know a new leader by then, and a hung meta may be back. At the deadline
the caller gets L{BackendUnavailable}; before it, at the next round, when
the cluster's circuit breaker opens (L{ClusterDown}).
"""

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from metaproxy.errors import BackendUnavailable, ClusterDown, RouteLoop
from metaproxy.wire import codes, querycfg
from metaproxy.wire.binary import DecodeError

#: Copies of one query sent to metas outside the route, at most.
MAX_OUTSIDE_SENDS = 3


class _Attempt:
    """One call to one meta: the token of L{Query.attempts} and the argument of its callback."""

    __slots__ = ("query", "key", "started", "finished")

    def __init__(self, query, key, started):
        self.query = query
        self.key = key
        self.started = started
        self.finished = False


def _attempt_done(attempt, response, error):
    """The callback of a meta connection's C{call_then}."""
    attempt.finished = True
    query = attempt.query
    if error is None:
        query._answered(response, attempt.key, attempt.started, attempt)
    else:
        query._failed(Failure(error), attempt.key, attempt.started, attempt)


@attrs.define(eq=False)
class Query:
    """
    One query_config call: its attempts, timers and outcome.

    @ivar cluster: the L{metaproxy.backend.cluster.MetaCluster}.
    @ivar args: the encoded query_cfg args.
    @ivar deadline_at: clock time by which the result fires.
    @ivar done_callback: called once as C{done_callback(done_arg, response,
        error)}: the winning response and L{None}, or L{None} and a
        L{BackendUnavailable}; never after L{cancel}.
    """

    cluster: object
    args: bytes
    deadline_at: float
    done_callback: object
    done_arg: object = None
    attempts: dict = attrs.field(init=False, factory=dict)
    asked: set = attrs.field(init=False, factory=set)
    hedged: bool = attrs.field(init=False, default=False)
    done: bool = attrs.field(init=False, default=False)
    rounds: int = attrs.field(init=False, default=0)
    outside_sends: int = attrs.field(init=False, default=0)
    last_error: str = attrs.field(init=False, default="")
    #: What the caller gets at the deadline (L{ClusterDown} for a probe
    #: while the cluster's circuit breaker is open).
    error: type = attrs.field(init=False, default=BackendUnavailable)
    _sending: int = attrs.field(init=False, default=0)
    hedge_timer: object = attrs.field(init=False, default=None)
    poll_timer: object = attrs.field(init=False, default=None)
    deadline_timer: object = attrs.field(init=False, default=None)
    retry_timer: object = attrs.field(init=False, default=None)

    def start(self):
        """
        Ask the metas; C{done_callback} is called at the latest at
        C{deadline_at} (possibly before this returns).

        @return: this query (its L{cancel} stops it).
        """
        # One deadline structure per clock, not a reactor timer per query.
        self.deadline_timer = self.cluster._deadlines.at(self.deadline_at, Query._expired, self)
        self._round()
        return self

    def _left(self):
        return self.deadline_at - self.cluster.reactor.seconds()

    def _round(self):
        self.rounds += 1
        self.retry_timer = None
        self.asked = self._busy()
        self.hedged = False
        cluster = self.cluster
        if self.rounds > 1:
            why = cluster.breaker_reason() if self.error is BackendUnavailable else None
            if why is not None:
                cluster.fast_failures += 1
                self._fail(why, ClusterDown)
                return
            self._hedge()
            return
        leader = cluster._leader
        self._send_all([leader])
        if not self.done and not self.hedged:
            if len(cluster._candidates()) < 2 or not cluster._is_up(leader):
                # One meta, or the leader's link is down: nobody to wait for.
                self._hedge()
                return
            # A short deadline (Java 1.x sends 1000 ms) still leaves the
            # other metas half of it.
            delay = min(cluster.hedge_delay, self._left() / 2)
            self.hedge_timer = cluster._deadlines.at(cluster.reactor.seconds() + max(delay, 0.0), Query._hedge, self)
        self._settle()

    def _send_all(self, keys):
        """Send to each key not busy; outcomes that fire at once wait for L{_settle}."""
        self._sending += 1
        try:
            busy = self._busy()
            for key in keys:
                if self.done:
                    return
                if key not in busy:
                    self._send(key)
        finally:
            self._sending -= 1

    def _send(self, key):
        cluster = self.cluster
        if key not in cluster._configured:
            if self.outside_sends >= MAX_OUTSIDE_SENDS:
                cluster._count_forward_outside("refused")
                return
            self.outside_sends += 1
        conn = cluster._connection(key)
        self.asked.add(key)
        started = cluster.reactor.seconds()
        # No per-call timer: the query's deadline cancels every attempt
        # still in flight (L{_finish}) at the same instant.
        client_timeout_ms = int(max(self._left(), 0.0) * 1000)
        call_then = getattr(conn, "call_then", None)
        if call_then is not None:
            attempt = _Attempt(self, key, started)
            handle = call_then(querycfg.QUERY_CFG, self.args, client_timeout_ms, _attempt_done, attempt)
            if not attempt.finished:
                self.attempts[attempt] = (key, handle, started)
            return
        d = conn.call(querycfg.QUERY_CFG, self.args, None, client_timeout_ms)
        if d.called:  # failed (or answered) at once: no need to keep it
            d.addCallbacks(self._answered, self._failed, (key, started, None), errbackArgs=(key, started, None))
            return
        token = object()
        self.attempts[token] = (key, d, started)
        d.addCallbacks(self._answered, self._failed, (key, started, token), errbackArgs=(key, started, token))

    def _pop(self, key, token):
        if token is not None:
            self.attempts.pop(token, None)

    def _busy(self):
        """@return: the keys with an attempt in flight."""
        attempts = self.attempts
        if not attempts:
            return set()
        return {key for key, _, _ in attempts.values()}

    def _answered(self, response, key, started, token):
        self._pop(key, token)
        cluster = self.cluster
        if response.rpc_error != codes.ERR_OK:
            outcome, peek = response.rpc_error, None
        else:
            try:
                peek = querycfg.peek_result(response.body)
                outcome = peek.err
            except DecodeError as e:
                outcome, peek = "malformed", e
        cluster._observe(key, started, outcome)
        if self.done:
            return
        cluster._heard_from(key)
        if peek is None:
            if response.rpc_error == codes.ERR_HANDLER_NOT_FOUND:
                # Every meta handles query_cfg: this is a metaproxy that
                # saw our loop marker (metaproxy.wire.clusterinfo).
                why = f"{cluster._label(key)} is a metaproxy, not a meta (a route loop)"
                cluster._heard_error(key, why)
                self._fail(why, RouteLoop)
                return
            self._note_failure(key, f"rpc error {response.rpc_error}")
            return
        if isinstance(peek, DecodeError):
            self._note_failure(key, f"malformed answer: {peek}")
            return
        if peek.err != codes.ERR_FORWARD_TO_OTHERS:
            self._win(key, response)
            return
        target = querycfg.address_host_port(peek.leader) if peek.leader else None
        if target is None:
            self._note_failure(key, "forward without a leader")
            return
        leader_key = cluster._known_key(*target)
        if leader_key is None or leader_key not in cluster._configured:
            if self.outside_sends >= MAX_OUTSIDE_SENDS:
                cluster._count_forward_outside("refused")
                self._note_failure(key, f"forward to {target[0]}:{target[1]}, outside the route, not followed: "
                                        f"{MAX_OUTSIDE_SENDS} copies of this query went outside already")
                return
            cluster._count_forward_outside("followed")
            if leader_key is None:
                leader_key = cluster._key_for(*target)
        if leader_key in self._busy():
            return  # already waiting for that leader
        if leader_key in self.asked:
            # The named leader was asked in this round and did not answer:
            # the others may know a new one.
            self._note_failure(key, f"forward to {target[0]}:{target[1]}, which did not answer")
            return
        self._send_all([leader_key])
        self._settle()

    def _failed(self, failure, key, started, token):
        self._pop(key, token)
        if self.done or failure.check(defer.CancelledError):
            return
        self.cluster._observe(key, started, failure.type.__name__)
        self._note_failure(key, failure.getErrorMessage() or failure.type.__name__)

    def _note_failure(self, key, why):
        self.last_error = f"{self.cluster._label(key)}: {why}"
        self.cluster._heard_error(key, why)
        self._hedge()
        self._settle()

    def _hedge(self):
        if self.hedged or self.done:
            return
        self.hedged = True
        if self.hedge_timer is not None and self.hedge_timer.active():
            self.hedge_timer.cancel()
        self.hedge_timer = None
        self._send_all([k for k in self.cluster._ranked() if k not in self.asked])
        if self.poll_timer is None and not self.done and len(self.cluster._candidates()) > 1:
            self.poll_timer = self.cluster.reactor.callLater(self.cluster.hedge_delay, self._poll)
        self._settle()

    def _poll(self):
        """
        Attempts still hang: ask every meta again (they may know a new
        leader, a hung one may be back), replacing attempts older than
        C{hedge_delay}.
        """
        self.poll_timer = None
        if self.done:
            return
        if self.attempts and self.retry_timer is None:
            now = self.cluster.reactor.seconds()
            newest = {}
            for key, _, started in self.attempts.values():
                newest[key] = max(newest.get(key, started), started)
            recent = {k for k, t in newest.items() if now - t < self.cluster.hedge_delay}
            self.asked = set(recent)
            self._sending += 1
            try:
                for key in self.cluster._ranked():
                    if not self.done and key not in recent:
                        self._send(key)
            finally:
                self._sending -= 1
        if not self.done:
            self.poll_timer = self.cluster.reactor.callLater(self.cluster.hedge_delay, self._poll)
        self._settle()

    def _settle(self):
        """Decide once everything was sent: a round without a winner is retried in time."""
        if self.done or self._sending or self.attempts or not self.hedged or self.retry_timer is not None:
            return
        cluster = self.cluster
        delay = cluster.retry_delay
        if delay >= self._left():
            return  # the deadline timer answers
        self.retry_timer = cluster.reactor.callLater(delay, self._round)

    def _win(self, key, response):
        self.cluster._won(key)
        self._finish()
        self.done_callback(self.done_arg, response, None)

    def _fail(self, why, error=BackendUnavailable):
        self._finish()
        self.done_callback(self.done_arg, None, error(why))

    def _expired(self):
        self.deadline_timer = None
        if self.done:
            return
        why = self.last_error or "no answer"
        if self.error is ClusterDown:
            self._fail(f"every meta of {self.cluster.meta_addrs} is down ({why})", ClusterDown)
            return
        self._fail(f"no meta of {self.cluster.meta_addrs} answered in time ({why})")

    def cancel(self):
        """Stop every attempt; C{done_callback} is not called any more."""
        if not self.done:
            self._finish()

    def _finish(self):
        self.done = True
        self.cluster._queries.discard(self)
        for timer in (self.hedge_timer, self.deadline_timer, self.retry_timer, self.poll_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.hedge_timer = self.deadline_timer = self.retry_timer = self.poll_timer = None
        attempts, self.attempts = self.attempts, {}
        for _, d, _ in attempts.values():
            d.cancel()

    def abort(self, why):
        """Fail the query now (its pool closes)."""
        if not self.done:
            self._fail(why)
