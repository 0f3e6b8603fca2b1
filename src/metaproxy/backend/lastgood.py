# -*- test-case-name: metaproxy.test.test_lastgood -*-
"""
Stale-if-error for query_cfg: the last good answer of each routed table,
served only when the table's cluster has no meta that can answer.

This is not an answer cache. Every client query still goes to the
cluster; an answer is kept here only so that, when the cluster cannot
answer (every meta refused or stayed silent for the request's budget, or
the leader said C{ERR_SERVICE_NOT_ACTIVE} / C{ERR_UNDER_RECOVERY} during an
election), the client gets the cluster's last word instead of the
retryable error. Partition placement cannot change while no meta runs
(only a meta moves a primary), so that last word is the best truth there
is. The conditions (docs/stale-if-error.rst):

  - the answer is at most C{max_age} seconds old (C{stale_if_error});
  - it was taken from the route the request was routed by, and that route
    is still the table's route now: never across a switch (an answer of
    another route is dropped as soon as the change is seen);
  - a live answer always wins: this is asked only once the live path has
    given up.

What is kept is the L{Reply} the live path built (the meta's body, and its
C{hp_*}-stripped variant for THFT clients), so a stale answer is framed
for each client, with its own seqid, exactly as a live one would be.
Memory: one entry per (table, partition_indices) asked, at most
C{capacity} entries and C{_MAX_VARIANTS} per table, each at most
C{limits.max_reply_bytes}; L{entries} and L{size_bytes} are exported as
metrics.
"""

from collections import OrderedDict

import attrs
from twisted.logger import Logger

log = Logger()

#: Most partition_indices variants kept per table (the C++ client asks for
#: single partitions; other clients ask for all of them).
_MAX_VARIANTS = 16

#: Most clusters counted with a zero before their first stale answer.
_MAX_CLUSTERS = 1024


@attrs.define(eq=False)
class _Answer:
    reply: object
    taken_at: float
    size: int


@attrs.define(eq=False)
class _Table:
    """The kept answers of one table, all taken from one route."""

    route: object
    answers: dict = attrs.field(factory=dict)


@attrs.define(eq=False)
class _Episode:
    """One cluster's current stretch of stale answers (for the start/stop log lines)."""

    since: float
    served: int = 0
    expired_logged: bool = False


def _reply_size(reply):
    native = getattr(reply, "native_body", None)
    return len(reply.body) + (len(native) if native is not None else 0)


@attrs.define(eq=False)
class LastGoodAnswers:
    """
    The last good query_cfg answer per (table, partition_indices), and the
    rule that decides when one may be served.

    @ivar clock: an L{IReactorTime}.
    @ivar max_age: seconds a kept answer may be served for after it was
        taken (C{stale_if_error}); 0 turns the feature off (nothing is
        kept).
    @ivar capacity: most answers kept (the least recently refreshed
        table's go first).
    @ivar served: stale answers served so far, by cluster name
        (C{metaproxy_stale_answers_total}).
    """

    clock: object
    max_age: float = 600.0
    capacity: int = 1024
    served: dict = attrs.field(init=False, factory=dict)
    _tables: OrderedDict = attrs.field(init=False, factory=OrderedDict)
    _count: int = attrs.field(init=False, default=0)
    _bytes: int = attrs.field(init=False, default=0)
    _episodes: dict = attrs.field(init=False, factory=dict)

    # -- the live path tells what the cluster said

    def remember(self, route, table, indices, reply):
        """
        A live C{ERR_OK} answer was relayed: keep it as the table's last
        good answer for C{indices} (replacing any answer of another route).

        @param route: the L{metaproxy.routes.route.Route} it was asked by.
        @param indices: the request's C{partition_indices}, as a L{tuple}.
        @param reply: the L{metaproxy.wire.frame.Reply} given to clients.
        """
        self.cluster_answered(route.cluster_name)
        if self.max_age <= 0:
            return
        kept = self._tables.get(table)
        if kept is not None and kept.route is not route and kept.route != route:
            self._drop(table)
            kept = None
        if kept is None:
            kept = self._tables[table] = _Table(route)
        else:
            self._tables.move_to_end(table)
        answers = kept.answers
        old = answers.get(indices)
        if old is not None and old.reply is reply:
            old.taken_at = self.clock.seconds()  # the same answer again (the relay reuses its Reply)
            return
        if old is not None:
            del answers[indices]
            self._count -= 1
            self._bytes -= old.size
        elif len(answers) >= _MAX_VARIANTS:
            oldest = next(iter(answers))
            self._bytes -= answers.pop(oldest).size
            self._count -= 1
        size = _reply_size(reply)
        answers[indices] = _Answer(reply, self.clock.seconds(), size)
        self._count += 1
        self._bytes += size
        while self._count > self.capacity and self._tables:
            self._drop(next(iter(self._tables)))

    def forget(self, route, table):
        """
        The cluster gave a live final answer other than C{ERR_OK} (the
        table is gone, being created or dropped): keep nothing for it.
        """
        self.cluster_answered(route.cluster_name)
        self._drop(table)

    def route_seen(self, table, route):
        """A request for C{table} was routed by C{route}: drop answers of any other route."""
        kept = self._tables.get(table)
        if kept is not None and kept.route is not route and kept.route != route:
            self._drop(table)

    def cluster_answered(self, cluster_name):
        """A meta of C{cluster_name} answered: a stretch of stale answers (if any) ends."""
        if cluster_name not in self.served and len(self.served) < _MAX_CLUSTERS:
            self.served[cluster_name] = 0  # the series exists before the first stale answer
        episode = self._episodes.pop(cluster_name, None)
        if episode is not None:
            log.info(
                "cluster {cluster_name} answers again: stopped serving last good query_cfg answers "
                "({served} stale answers over {seconds:.1f} s)",
                cluster_name=cluster_name, served=episode.served, seconds=self.clock.seconds() - episode.since,
            )

    # -- the failure path

    def stale_reply(self, route, table, indices, current_route):
        """
        The cluster could not answer: the answer to give instead of the
        retryable error, if any.

        @param route: the route the request was routed by.
        @param current_route: the table's route now (L{None} if the route
            table cannot tell at once): a stale answer is only given when
            it is C{route}.
        @return: the kept L{Reply}, or L{None} (no answer, too old, or the
            route changed).
        """
        if self.max_age <= 0:
            return None
        kept = self._tables.get(table)
        if kept is None:
            return None
        if kept.route != route or current_route != route:
            if current_route is not None and kept.route != current_route:
                self._drop(table)
            return None
        answer = kept.answers.get(indices)
        if answer is None:
            return None
        now = self.clock.seconds()
        cluster = route.cluster_name
        episode = self._episodes.get(cluster)
        age = now - answer.taken_at
        if age > self.max_age:
            if episode is None:
                episode = self._start(cluster, now)
            if not episode.expired_logged:
                episode.expired_logged = True
                log.warn(
                    "cluster {cluster_name}: the last good answer of {table} is {age:.0f} s old, more than "
                    "stale_if_error ({max_age:g} s): answering the retryable error",
                    cluster_name=cluster, table=table, age=age, max_age=self.max_age,
                )
            return None
        if episode is None:
            episode = self._start(cluster, now)
        episode.served += 1
        self.served[cluster] = self.served.get(cluster, 0) + 1
        return answer.reply

    # -- what operators see

    def ages(self):
        """@return: C{{table: seconds since its youngest kept answer was taken}}."""
        now = self.clock.seconds()
        return {
            table: round(now - max(a.taken_at for a in kept.answers.values()), 3)
            for table, kept in self._tables.items() if kept.answers
        }

    def entries(self):
        """@return: how many answers are kept (C{metaproxy_last_good_answers})."""
        return self._count

    def size_bytes(self):
        """@return: the bytes of the kept answers' bodies (C{metaproxy_last_good_answer_bytes})."""
        return self._bytes

    def served_by_cluster(self):
        """@return: a copy of L{served}, for the metrics."""
        return dict(self.served)

    # -- inside

    def _start(self, cluster, now):
        episode = self._episodes[cluster] = _Episode(now)
        log.warn(
            "cluster {cluster_name} has no meta that can answer: serving last good query_cfg answers "
            "(at most {max_age:g} s old) instead of the retryable error",
            cluster_name=cluster, max_age=self.max_age,
        )
        return episode

    def _drop(self, table):
        kept = self._tables.pop(table, None)
        if kept is not None:
            self._count -= len(kept.answers)
            self._bytes -= sum(a.size for a in kept.answers.values())
