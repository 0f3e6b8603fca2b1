"""
Tests for L{metaproxy.logs}.
"""

import json
import logging
import os

import attrs
from twisted.logger import LogLevel, LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from metaproxy import logs


def _event(level, text, **kw):
    return dict(log_level=level, log_namespace="metaproxy.x", log_format=text, log_time=0.0, **kw)


@attrs.frozen
class _Cfg:
    level: str = "info"
    file: str | None = None
    max_bytes: int = 1024
    backups: int = 2


class LogsTests(SynchronousTestCase):
    def tearDown(self):
        logs._level["value"] = LogLevel.info

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
        self.addCleanup(lambda: logging.getLogger().handlers.clear())
        for i in range(200):
            publisher(_event(LogLevel.info, "line {i} " + "x" * 40, i=i))
        publisher(_event(LogLevel.debug, "hidden debug line"))
        self.assertIsNotNone(observer)
        files = sorted(f for f in os.listdir(os.path.dirname(path)) if f.startswith(os.path.basename(path)))
        self.assertEqual(len(files), 3)
        with open(path) as f:
            self.assertNotIn("hidden debug line", f.read())
