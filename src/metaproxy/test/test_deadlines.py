"""
Tests for L{metaproxy.deadlines}: many deadlines on one reactor timer.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metaproxy import deadlines
from metaproxy.deadlines import Deadlines


class DeadlinesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock)
        self.fired = []

    def test_fires_at_its_time_not_before(self):
        """An entry is called with its argument at its due time, not a moment earlier."""
        self.deadlines.at(1.5, self.fired.append, "a")
        self.clock.advance(1.4999)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.0001)
        self.assertEqual(self.fired, ["a"])
        self.assertEqual(len(self.deadlines), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_in_order_of_due_time(self):
        """Entries added out of order fire in order of their due time, each at its time."""
        for due, name in ((3.0, "c"), (1.0, "a"), (2.0, "b")):
            self.deadlines.at(due, self.fired.append, name)
        self.clock.advance(1.0)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(1.0)
        self.assertEqual(self.fired, ["a", "b"])
        self.clock.advance(1.0)
        self.assertEqual(self.fired, ["a", "b", "c"])

    def test_one_reactor_timer_for_many(self):
        """However many entries are pending, one reactor timer is armed."""
        for i in range(100):
            self.deadlines.at(1.0 + i / 100.0, self.fired.append, i)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.deadlines), 100)

    def test_cancelled_never_fires(self):
        """A cancelled entry is not called; the last cancellation leaves no reactor timer."""
        a = self.deadlines.at(1.0, self.fired.append, "a")
        b = self.deadlines.at(2.0, self.fired.append, "b")
        a.cancel()
        self.assertFalse(a.active())
        self.assertTrue(b.active())
        self.clock.advance(1.5)
        self.assertEqual(self.fired, [])
        b.cancel()
        b.cancel()  # twice is harmless
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.assertEqual(self.fired, [])

    def test_earlier_entry_rearms(self):
        """An entry earlier than the armed timer moves the timer forward."""
        self.deadlines.at(5.0, self.fired.append, "late")
        self.deadlines.at(1.0, self.fired.append, "early")
        self.clock.advance(1.0)
        self.assertEqual(self.fired, ["early"])

    def test_added_and_cancelled_while_firing(self):
        """A callback may cancel a later entry due at the same time, or add a new one."""
        later = []

        def first(_):
            later[0].cancel()
            self.deadlines.at(self.clock.seconds() + 1.0, self.fired.append, "added")

        self.deadlines.at(1.0, first, None)
        later.append(self.deadlines.at(1.0, self.fired.append, "cancelled"))
        self.clock.advance(1.0)
        self.assertEqual(self.fired, [])
        self.clock.advance(1.0)
        self.assertEqual(self.fired, ["added"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_entries_are_compacted(self):
        """Cancelled entries do not pile up in the heap while others stay pending."""
        keep = self.deadlines.at(100.0, self.fired.append, "kept")
        for i in range(5000):
            self.deadlines.at(10.0 + i, self.fired.append, i).cancel()
        self.assertLessEqual(len(self.deadlines._heap), deadlines._COMPACT_MIN + 2)
        self.clock.advance(100.0)
        self.assertEqual(self.fired, ["kept"])
        self.assertFalse(keep.active())

    def test_one_per_clock(self):
        """L{Deadlines.of} gives the same queue for the same clock, another for another clock."""
        self.assertIs(Deadlines.of(self.clock), Deadlines.of(self.clock))
        self.assertIsNot(Deadlines.of(self.clock), Deadlines.of(Clock()))
