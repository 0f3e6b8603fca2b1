# -*- test-case-name: metaproxy.test.test_signals -*-
"""
Tests for L{metaproxy.ops.signals} (SIGHUP) and the process-level log
behaviour of a real C{twistd metaproxy}: the start-up line, the level
filter on twistd's own observer, SIGHUP survival, and a metrics scrape.
"""

import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, LogPublisher, capturedLogs, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.ops import logs
from metaproxy.config import load_config
from metaproxy.ops.signals import HangupService, LogReloader
from metaproxy.test.test_logs import keep_logging_state
from metaproxy.testing.net import free_port, twistd_argv, wait_for_port


def _now(f, *args):
    return defer.maybeDeferred(f, *args)


class _LogState(SynchronousTestCase):
    """Restores metaproxy's logging (level, file, stdlib bridge) after each test."""

    def setUp(self):
        keep_logging_state(self)

    def config(self, level="info", file=None):
        path = getattr(self, "_config_path", None) or os.path.abspath(self.mktemp() + ".yaml")
        self._config_path = path
        text = "routes: {t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}}\n"
        text += f"logging: {{level: {level}" + (f", file: '{file}'" if file else "") + "}\n"
        with open(path, "w") as f:
            f.write(text)
        return path

    def reload(self, path):
        with capturedLogs() as events:
            self.successResultOf(LogReloader(path, _now).reload())
        return [(e["log_level"], formatEvent(e)) for e in events if e.get("log_namespace") == "metaproxy.ops.signals"]


class LevelReloadTests(_LogState):
    def test_level_reloaded_from_the_file(self):
        """SIGHUP applies the file's new logging.level and says old -> new at info."""
        path = self.config("info")
        logs.configure_logging(load_config(path).logging, LogPublisher())
        self.config("error")
        said = self.reload(path)
        self.assertEqual(logs.current_level(), LogLevel.error)
        self.assertEqual(said, [(LogLevel.info, "SIGHUP: no log file to reopen; logging.level info -> error")])

    def test_raising_the_level_is_still_said(self):
        """The line about a change to a higher level is not filtered away by that level."""
        path = self.config("info")
        logs.configure_logging(load_config(path).logging, LogPublisher())
        self.config("warn")
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = logs.journal_text()
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.successResultOf(LogReloader(path, _now).reload())
        self.assertEqual(logs.current_level(), LogLevel.warn)
        self.assertIn("<6>[metaproxy.ops.signals] SIGHUP: no log file to reopen; logging.level info -> warn\n",
                      out.getvalue())

    def test_invalid_file_keeps_the_level(self):
        """A config file that no longer loads keeps the old level; the warning has the located error."""
        path = self.config("debug")
        logs.configure_logging(load_config(path).logging, LogPublisher())
        with open(path, "a") as f:
            f.write("listen: 5\n")
        [(level, text)] = self.reload(path)
        self.assertEqual(logs.current_level(), LogLevel.debug)
        self.assertEqual(level, LogLevel.warn)
        self.assertIn("logging.level stays debug", text)
        self.assertIn(f"{path}:3:9: ", text)  # the loader's located message

    def test_missing_file_keeps_the_level(self):
        """A config file that was removed keeps the old level and says so."""
        path = self.config("info")
        os.remove(path)
        [(level, text)] = self.reload(path)
        self.assertEqual((level, logs.current_level()), (LogLevel.warn, LogLevel.info))
        self.assertIn("cannot read the file", text)

    def test_unexpected_error_is_reported_not_raised(self):
        """Whatever reading the config raises becomes the reason; the Deferred never fails."""

        def broken(path):
            raise RecursionError("too deep")

        with capturedLogs() as events:
            self.successResultOf(LogReloader("x.yaml", _now, read_config=broken).reload())
        [text] = [formatEvent(e) for e in events if e.get("log_namespace") == "metaproxy.ops.signals"]
        self.assertIn("RecursionError: too deep", text)

    def test_stdlib_bridge_follows(self):
        """kazoo's stdlib records are filtered at the reloaded level too."""
        path = self.config("info")
        got = []
        logs.configure_logging(load_config(path).logging, LogPublisher(got.append))
        self.config("error")
        self.reload(path)
        logging.getLogger("kazoo.client").warning("noise")
        self.assertEqual([e for e in got if e.get("log_namespace") == "kazoo.client"], [])

    def test_changed_file_path_is_mentioned(self):
        """A new logging.file is not switched to, and the line says it applies at the next start."""
        path = self.config("info")
        logs.configure_logging(load_config(path).logging, LogPublisher())
        other = os.path.abspath(self.mktemp())
        self.config("info", file=other)
        [(_, text)] = self.reload(path)
        self.assertIn(f"logging.file {other} takes effect at the next start", text)
        self.assertFalse(os.path.exists(other))

    def test_one_reload_at_a_time(self):
        """A SIGHUP during a reload runs one more reload after it, not a parallel one."""
        path = self.config("info")
        pending = []

        def later(f, *args):
            d = defer.Deferred()
            pending.append((d, f, args))
            return d

        reloader = LogReloader(path, later)
        reloader.reload()
        reloader.reload()
        reloader.reload()
        self.assertEqual(len(pending), 1)
        d, f, args = pending.pop()
        d.callback(f(*args))
        self.assertEqual(len(pending), 1)
        d, f, args = pending.pop()
        d.callback(f(*args))
        self.assertEqual(pending, [])


class ReopenTests(_LogState):
    def test_rotated_file_is_reopened(self):
        """After logrotate moved the file, SIGHUP makes new lines go to a new file at the path."""
        logfile = os.path.abspath(self.mktemp())
        path = self.config("info", file=logfile)
        publisher = LogPublisher()
        logs.configure_logging(load_config(path).logging, publisher)
        publisher({"log_level": LogLevel.info, "log_namespace": "t", "log_format": "before", "log_time": 0.0})
        os.rename(logfile, logfile + ".1")
        [(_, text)] = self.reload(path)
        self.assertEqual(text, f"SIGHUP: log file {logfile} reopened; logging.level info")
        publisher({"log_level": LogLevel.info, "log_namespace": "t", "log_format": "after", "log_time": 0.0})
        with open(logfile) as f:
            new = f.read()
        with open(logfile + ".1") as f:
            old = f.read()
        self.assertIn("after", new)
        self.assertNotIn("before", new)
        self.assertIn("before", old)
        self.assertNotIn("after", old)

    def test_unopenable_path_keeps_the_old_file(self):
        """If the path cannot be opened again, the old file stays in use and the line says why."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        logfile = os.path.join(directory, "mp.log")
        path = self.config("info", file=logfile)
        publisher = LogPublisher()
        logs.configure_logging(load_config(path).logging, publisher)
        os.rename(logfile, logfile + ".1")
        os.makedirs(logfile)  # a directory where the file was
        [(level, text)] = self.reload(path)
        self.assertEqual(level, LogLevel.warn)
        self.assertIn(f"log file {logfile} not reopened, still writing to the old one", text)
        publisher({"log_level": LogLevel.info, "log_namespace": "t", "log_format": "still here", "log_time": 0.0})
        with open(logfile + ".1") as f:
            self.assertIn("still here", f.read())


class _Reactor(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.from_thread = []

    def callFromThread(self, f, *args, **kw):
        self.from_thread.append(f)


class HangupServiceTests(SynchronousTestCase):
    def test_sighup_reaches_the_reactor_thread(self):
        """While running, a SIGHUP to this process schedules a reload; stopping restores the old handler."""
        before = signal.getsignal(signal.SIGHUP)
        reactor = _Reactor()
        reloader = LogReloader("unused.yaml", _now)
        service = HangupService(reactor, reloader)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if reactor.from_thread:
                break
            time.sleep(0.01)
        self.assertEqual(reactor.from_thread, [reloader.reload])
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


def _twistd(case, config_text, logger=None):
    """Start C{twistd -n metaproxy} on a config; @return: (Popen, config path)."""
    path = os.path.abspath(case.mktemp() + ".yaml")
    with open(path, "w") as f:
        f.write(config_text)
    workdir = os.path.abspath(case.mktemp())
    os.makedirs(workdir)
    argv = twistd_argv()
    if logger:
        argv.append(f"--logger={logger}")
    proc = subprocess.Popen(argv + ["metaproxy", f"--config={path}"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    case.addCleanup(lambda: proc.poll() is None and proc.kill())
    return proc, path


def _wait_for(predicate, proc, what, timeout=20.0):
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > end:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.05)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _stop(case, proc):
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(30)
    output = proc.stdout.read().decode()
    case.assertIn(rc, (0, -signal.SIGTERM), output[-2000:])
    case.assertNotIn("Traceback", output)
    return output


class TwistdProcessTests(SynchronousTestCase):
    """One real C{twistd -n metaproxy} process per test, driven by signals."""

    def base(self, port, admin, logging_section):
        return (f"listen: tcp:{port}:interface=127.0.0.1\nadmin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}\n"
                f"limits: {{max_connections: 77}}\nroutes:\n  t: {{cluster_name: c, meta_addrs: '127.0.0.1:1'}}\n"
                + logging_section)

    def test_sighup_reopens_reloads_and_survives(self):
        """
        The start-up line names version, routes, listeners and reporter;
        /metrics has the conventional names; SIGHUP after a rotation makes
        the process write to a new file, and a second one applies the
        file's new level (which then filters twistd's own observer too);
        the process survives both and drains on SIGTERM.
        """
        from metaproxy import __version__

        port, admin = free_port(), free_port()
        logfile = os.path.abspath(self.mktemp() + ".log")
        proc, path = _twistd(self, self.base(port, admin, f"logging: {{level: info, file: '{logfile}'}}\n"))
        wait_for_port(admin, proc)
        wait_for_port(port, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
            scrape = response.read().decode()
        for name in ("process_resident_memory_bytes", "python_info{", "metaproxy_build_info{runtime=\"",
                     f'version="{__version__}"', "metaproxy_client_connections ",
                     "metaproxy_client_connections_limit 77.0", "metaproxy_client_queries_total{"):
            self.assertIn(name, scrape)
        # wait_for_port connected to the proxy port: that connection was accepted and counted.
        accepted = re.search(r"^metaproxy_client_connections_accepted_total (\S+)$", scrape, re.M)
        self.assertIsNotNone(accepted)
        self.assertGreaterEqual(float(accepted.group(1)), 1.0)
        for old in ("client_connection_count", "client_query_config_count", "zk_request_count"):
            self.assertNotIn(old, scrape)
        _wait_for(lambda: "proxy listening on" in _read(logfile), proc, "listening line in the log file")

        os.rename(logfile, logfile + ".1")
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "SIGHUP" in _read(logfile), proc, "SIGHUP line in the new log file")
        self.assertIn(f"SIGHUP: log file {logfile} reopened; logging.level info", _read(logfile))
        self.assertNotIn("SIGHUP", _read(logfile + ".1"))

        with open(path, "a") as f:
            f.write("\n")
        text = _read(path).replace("level: info", "level: warn")
        with open(path, "w") as f:
            f.write(text)
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "info -> warn" in _read(logfile), proc, "level change line")
        self.assertIsNone(proc.poll())

        output = _stop(self, proc)
        self.assertRegex(
            output,
            rf"metaproxy {re.escape(__version__)} \(\w+ [\d.]+, Twisted [\w.]+\) starting: routes from static routes \(1 tables\); "
            rf"clients on tcp:{port}:interface=127.0.0.1; admin on tcp:{admin}:interface=127.0.0.1; "
            r"metrics: prometheus \(/metrics on the admin listener\)",
        )
        self.assertEqual(output.count("starting: routes from"), 1)
        self.assertIn("info -> warn", output)
        after = output.split("info -> warn", 1)[1]
        # info lines after the change are filtered on twistd's default observer and in the file
        self.assertNotIn("Received SIGTERM", after)
        self.assertNotIn("drained", after)
        self.assertNotIn("drained", _read(logfile))
        self.assertNotRegex(output, r"object at 0x|Address\(type=")

    def test_level_filters_twistd_default_observer(self):
        """
        With logging.level warn and twistd's default logger, no info line
        of metaproxy's or Twisted's appears after start-up, while a warning
        (a SIGHUP with a broken config file) does.
        """
        port, admin = free_port(), free_port()
        logfile = os.path.abspath(self.mktemp() + ".log")
        proc, path = _twistd(self, self.base(port, admin, f"logging: {{level: warn, file: '{logfile}'}}\n"
                                                          "metric: {type: none}\n"))
        wait_for_port(port, proc)
        with open(path, "a") as f:
            f.write("bogus_key: 1\n")
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "logging.level stays warn" in _read(logfile), proc, "the SIGHUP warning")
        output = _stop(self, proc)
        for text in (output, _read(logfile)):
            self.assertIn("logging.level stays warn", text)
            self.assertIn("bogus_key", text)  # the loader's located message
            for info in ("listening on", "Received SIGTERM", "drained", "Main loop terminated"):
                self.assertNotIn(info, text)
