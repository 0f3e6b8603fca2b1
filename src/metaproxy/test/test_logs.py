# -*- test-case-name: metaproxy.test.test_logs -*-
"""
Tests for L{metaproxy.ops.logs}.
"""

from typing import Optional
import io
import json
import logging
import os
import sys

import attrs
from twisted.logger import ILogObserver, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.ops import logs


def _event(level, text, **kw):
    return dict(log_level=level, log_namespace="metaproxy.x", log_format=text, log_time=0.0, **kw)


@attrs.frozen
class _Cfg:
    level: str = "info"
    file: Optional[str] = None
    max_bytes: int = 1024
    backups: int = 2


def keep_logging_state(case):
    """
    Make C{case} restore metaproxy's logging (level, file observer) and the
    stdlib root logger's handlers and level when it ends.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def restore():
        logs.configure_logging(_Cfg())
        root.handlers[:] = handlers
        root.setLevel(level)

    case.addCleanup(restore)


class LogsTests(SynchronousTestCase):
    def setUp(self):
        keep_logging_state(self)

    def stdout(self):
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        return out

    def test_journal_text_is_a_filtered_observer(self):
        """journal_text() makes a twistd --logger observer writing to stdout, below-level events dropped."""
        out = self.stdout()
        observer = logs.journal_text()
        self.assertTrue(ILogObserver.providedBy(observer))
        observer(_event(LogLevel.debug, "quiet"))
        observer(_event(LogLevel.info, "hello {who}", who="you"))
        self.assertEqual(out.getvalue(), "<6>[metaproxy.x] hello you\n")

    def test_debug_level_lets_debug_through(self):
        """With logging.level debug, debug events are written (with priority 7)."""
        logs.configure_logging(_Cfg(level="debug"), LogPublisher())
        out = self.stdout()
        logs.journal_text()(_event(LogLevel.debug, "detail"))
        self.assertEqual(out.getvalue(), "<7>[metaproxy.x] detail\n")

    def test_journal_multiline_and_failure(self):
        """Every line of a multi-line event, traceback included, carries the priority prefix."""
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        text = logs.format_journal(_event(LogLevel.error, "boom\nsecond", log_failure=failure))
        lines = text.splitlines()
        self.assertGreater(len(lines), 3)
        self.assertTrue(all(line.startswith("<3>[metaproxy.x] ") for line in lines))
        self.assertIn("ZeroDivisionError", text)

    def test_json_lines_observer(self):
        """json_lines() writes one parseable JSON object per event; unserialisable fields become repr."""
        out = self.stdout()
        logs.json_lines()(_event(LogLevel.warn, "x {obj}", obj=object()))
        [line] = out.getvalue().splitlines()
        doc = json.loads(line)
        self.assertEqual(doc["level"], "warn")
        self.assertTrue(doc["obj"].startswith("<object object"))

    def test_stdlib_level_follows_config(self):
        """The stdlib bridge drops records below the configured level."""
        got = []
        logs.configure_logging(_Cfg(level="warn"), LogPublisher(got.append))
        logging.getLogger("kazoo.client").info("noise")
        logging.getLogger("kazoo.client").error("trouble")
        self.assertEqual([e["text"] for e in got], ["trouble"])

    def test_journal_priorities(self):
        """Journal lines carry syslog priorities by level."""
        self.assertEqual(logs.format_journal(_event(LogLevel.warn, "zk {s}", s="LOST")), "<4>[metaproxy.x] zk LOST\n")
        self.assertTrue(logs.format_journal(_event(LogLevel.error, "x")).startswith("<3>"))

    def test_json_lines(self):
        """JSON lines carry the rendered message and the named fields."""
        doc = json.loads(logs.format_json(_event(LogLevel.info, "table {table}", table="temp")))
        self.assertEqual((doc["msg"], doc["table"], doc["level"]), ("table temp", "temp", "info"))

    def test_stdlib_bridge(self):
        """stdlib logging records (kazoo's) arrive as twisted.logger events."""
        got = []
        publisher = LogPublisher(got.append)
        handler = logs.bridge_stdlib_logging(publisher)
        self.addCleanup(logging.getLogger().removeHandler, handler)
        logging.getLogger("kazoo.client").warning("Connection dropped: %s", "socket")
        [event] = [e for e in got if e["log_namespace"] == "kazoo.client"]
        self.assertEqual((event["log_level"], event["text"]), (LogLevel.warn, "Connection dropped: socket"))

    def test_file_with_rotation_and_retention(self):
        """The log file rotates by size and keeps only `backups` old files."""
        path = os.path.abspath(self.mktemp())
        publisher = LogPublisher()
        observer = logs.configure_logging(_Cfg(level="info", file=path, max_bytes=1024, backups=2), publisher)
        for i in range(200):
            publisher(_event(LogLevel.info, "line {i} " + "x" * 40, i=i))
        publisher(_event(LogLevel.debug, "hidden debug line"))
        self.assertIsNotNone(observer)
        files = sorted(f for f in os.listdir(os.path.dirname(path)) if f.startswith(os.path.basename(path)))
        self.assertEqual(len(files), 3)
        with open(path) as f:
            self.assertNotIn("hidden debug line", f.read())

    def test_reconfigure_replaces_file_observer(self):
        """Configuring again removes the previous file observer."""
        path = os.path.abspath(self.mktemp())
        publisher = LogPublisher()
        logs.configure_logging(_Cfg(file=path), publisher)
        logs.configure_logging(_Cfg(), publisher)
        publisher(_event(LogLevel.info, "after"))
        with open(path) as f:
            self.assertNotIn("after", f.read())


class SharedLogFileTests(SynchronousTestCase):
    """L{logs.SharedLogFile}: several writers (as processes of one service) on one path."""

    def writers(self, count, rotate_at=None, backups=3):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        files = [logs.SharedLogFile("mp.log", directory, rotateLength=rotate_at, maxRotatedFiles=backups)
                 for _ in range(count)]
        for f in files:
            self.addCleanup(f.close)
        return directory, files

    def lines(self, directory):
        found = []
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name)) as f:
                found.extend(f.read().splitlines(keepends=True))
        return found

    def test_two_writers_never_overwrite_each_other(self):
        """
        Two files opened on the same path (as the old and the new process
        of an upgrade do) append: every line of both is there, whole, in
        the order written. (Twisted's LogFile loses the first writer's lines.)
        """
        directory, (old, new) = self.writers(2)
        for i in range(50):
            old.write(f"old {i}\n")
            new.write(f"new {i}\n")
        expected = [f"{who} {i}\n" for i in range(50) for who in ("old", "new")]
        self.assertEqual(self.lines(directory), expected)

    def test_rotation_by_one_writer_is_followed_by_the_other(self):
        """
        The file rotates at its size (what every writer wrote); the other
        writer then writes to the new file instead of rotating again, and
        no line is lost or split.
        """
        directory, (a, b) = self.writers(2, rotate_at=200, backups=5)
        for i in range(30):
            (a if i % 3 else b).write(f"line {i:02d} " + "x" * 20 + "\n")
        names = sorted(os.listdir(directory))
        self.assertEqual(names, ["mp.log", "mp.log.1", "mp.log.2", "mp.log.3", "mp.log.4"])
        got = sorted(self.lines(directory))
        self.assertEqual(got, sorted(f"line {i:02d} " + "x" * 20 + "\n" for i in range(30)))
        for name in names[1:]:
            size = os.path.getsize(os.path.join(directory, name))
            self.assertLess(size, 200 + 40, name)  # rotated once full, not twice

    def test_keeps_at_most_backups(self):
        """Old files beyond maxRotatedFiles are deleted, whichever writer rotates."""
        directory, (a, b) = self.writers(2, rotate_at=50, backups=2)
        for i in range(40):
            (a, b)[i % 2].write("y" * 30 + "\n")
        self.assertEqual(sorted(os.listdir(directory)), ["mp.log", "mp.log.1", "mp.log.2"])

    def test_moved_away_and_reopened(self):
        """After the path is moved away (logrotate) and reopened, writes go to the new file."""
        directory, (a,) = self.writers(1)
        a.write("before\n")
        os.rename(os.path.join(directory, "mp.log"), os.path.join(directory, "mp.log.old"))
        a.reopen()
        a.write("after\n")
        with open(os.path.join(directory, "mp.log")) as f:
            self.assertEqual(f.read(), "after\n")


class ForeignObserverTests(SynchronousTestCase):
    def setUp(self):
        self.addCleanup(logs.set_level, "info")

    def test_foreign_observers_are_filtered(self):
        """logging.level is put in front of observers metaproxy did not make (twistd's), once."""
        self.patch(sys, "stdout", io.StringIO())
        got, ours = [], logs.journal_text()
        publisher = LogPublisher(got.append, ours)
        self.assertEqual(logs.filter_foreign_observers(publisher), 1)
        self.assertEqual(logs.filter_foreign_observers(publisher), 0)
        logs.set_level("warn")
        publisher(_event(LogLevel.info, "quiet"))
        publisher(_event(LogLevel.warn, "loud"))
        self.assertEqual([e["log_format"] for e in got], ["loud"])

    def test_service_filters_when_started(self):
        """ForeignObserverFilter wraps the observers when started (privileged start included)."""
        got = []
        publisher = LogPublisher(got.append)
        service = logs.ForeignObserverFilter(publisher)
        service.privilegedStartService()
        logs.set_level("error")
        publisher(_event(LogLevel.warn, "dropped"))
        self.assertEqual(got, [])

    def test_set_level_returns_the_old_one(self):
        """set_level accepts warning for warn and returns the level it replaced."""
        self.assertEqual(logs.set_level("warning"), LogLevel.info)
        self.assertEqual(logs.current_level(), LogLevel.warn)
