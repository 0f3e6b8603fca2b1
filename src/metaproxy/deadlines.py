# -*- test-case-name: metaproxy.test.test_deadlines -*-
"""
Many deadlines on one reactor timer.

Every request has an answer deadline and every upstream query a deadline
and a hedge time; almost all of them are cancelled long before they are
due. One C{callLater} per deadline costs a L{DelayedCall}, the reactor's
heap insertion and its cancellation bookkeeping, for nothing. A
L{Deadlines} keeps them in its own heap instead, with one reactor timer
armed for the earliest: cancelling is one attribute store, and while
requests overlap the timer is neither moved nor re-armed. When the last
deadline is cancelled the timer is cancelled too, so an idle process (or a
test) is left with no delayed call.

There is one L{Deadlines} per clock (L{Deadlines.of}): the resolver's
waiters and every cluster's queries share it.
"""

import heapq
import weakref

#: Deadlines this close to the clock's time count as due (float rounding
#: between C{clock.seconds() + delay} and the delay computed back).
_EPSILON = 1e-9

#: Cancelled entries are dropped from the heap once they outnumber the
#: live ones by this factor (and there are at least L{_COMPACT_MIN} of them).
_COMPACT_RATIO = 2
_COMPACT_MIN = 256

_queues = weakref.WeakKeyDictionary()


class Due:
    """
    One deadline: calls C{fn(arg)} at C{due} unless cancelled first.

    @ivar due: the clock time it is due.
    """

    __slots__ = ("due", "fn", "arg", "_owner")

    def __init__(self, due, fn, arg, owner):
        self.due = due
        self.fn = fn
        self.arg = arg
        self._owner = owner

    def active(self):
        """@return: L{True} until it fired or was cancelled."""
        return self.fn is not None

    def cancel(self):
        """Forget it (nothing happens if it fired or was cancelled already)."""
        if self.fn is not None:
            self.fn = self.arg = None
            self._owner._cancelled_one()


class Deadlines:
    """
    A heap of L{Due} entries served by one C{callLater} on C{clock}.
    """

    def __init__(self, clock):
        """@param clock: an L{IReactorTime}."""
        self.clock = clock
        self._heap = []
        self._seq = 0
        self._live = 0
        self._call = None
        self._armed_at = float("inf")
        self._compact_at = _COMPACT_MIN

    @classmethod
    def of(cls, clock):
        """@return: the one L{Deadlines} of C{clock}, made on first use."""
        try:
            return _queues[clock]
        except KeyError:
            queue = _queues[clock] = cls(clock)
            return queue
        except TypeError:  # a clock that cannot be weakly referenced
            return cls(clock)

    def __len__(self):
        """@return: how many deadlines are pending (not fired, not cancelled)."""
        return self._live

    def at(self, due, fn, arg):
        """
        Call C{fn(arg)} at clock time C{due} (at once on the next timer run
        if it is already past).

        @return: a L{Due} with C{cancel()} and C{active()}.
        """
        entry = Due(due, fn, arg, self)
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, entry))
        self._live += 1
        if due < self._armed_at:
            self._arm(due)
        return entry

    def _arm(self, due):
        call = self._call
        self._armed_at = due
        delay = max(due - self.clock.seconds(), 0.0)
        if call is not None and call.active():
            call.reset(delay)  # sooner: cheaper than cancelling and arming another
        else:
            self._call = self.clock.callLater(delay, self._fire)

    def _cancelled_one(self):
        self._live -= 1
        if self._live == 0:
            del self._heap[:]
            call, self._call = self._call, None
            self._armed_at = float("inf")
            if call is not None and call.active():
                call.cancel()
        elif len(self._heap) > self._compact_at:
            self._heap = [item for item in self._heap if item[2].fn is not None]
            heapq.heapify(self._heap)
            self._compact_at = len(self._heap) * (_COMPACT_RATIO + 1) + _COMPACT_MIN

    def _fire(self):
        self._call = None
        self._armed_at = float("inf")
        heap = self._heap
        now = self.clock.seconds() + _EPSILON
        due = []
        while heap and (heap[0][2].fn is None or heap[0][0] <= now):
            entry = heapq.heappop(heap)[2]
            if entry.fn is not None:
                due.append(entry)
        for entry in due:
            fn, arg = entry.fn, entry.arg
            if fn is None:  # cancelled by an earlier one of this run
                continue
            entry.fn = entry.arg = None
            self._live -= 1
            fn(arg)
        heap = self._heap
        if self._live == 0:
            del heap[:]
            call, self._call = self._call, None
            self._armed_at = float("inf")
            if call is not None and call.active():
                call.cancel()
            return
        while heap and heap[0][2].fn is None:
            heapq.heappop(heap)
        if heap and heap[0][0] < self._armed_at:
            self._arm(heap[0][0])
