# -*- test-case-name: metaproxy.test.test_operator -*-
"""
Tests for what an operator reads at night: the config reload result
(L{metaproxy.ops.reloads}), the open-file limit check
(L{metaproxy.ops.fdlimit}), and, on a real C{twistd metaproxy}, every
server counter on /metrics from start-up.
"""

import os
import re
import resource
import signal
import socket
import subprocess
import urllib.request

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.config import ConfigError
from metaproxy.ops.fdlimit import RESERVED_FDS, check_fd_limit, fd_limit_too_low, soft_fd_limit
from metaproxy.ops.metrics import Metrics
from metaproxy.ops.reloads import ConfigReloads
from metaproxy.test.test_signals import _stop, _wait_for
from metaproxy.testing.net import free_port, twistd_argv, wait_for_port


def _sample(text, name):
    """@return: the value of the unlabelled sample C{name} in a scrape, or L{None}."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return None if found is None else float(found.group(1))


def _scrape(metrics):
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


class ConfigReloadsTests(SynchronousTestCase):
    def test_start_counts_as_success(self):
        """At start the last reload is successful, stamped with the start time."""
        clock = Clock()
        clock.advance(1000)
        m = Metrics(process_metrics=False)
        ConfigReloads(clock).watch(m)
        text = _scrape(m)
        self.assertEqual(_sample(text, "metaproxy_config_last_reload_successful"), 1.0)
        self.assertEqual(_sample(text, "metaproxy_config_last_reload_success_timestamp_seconds"), 1000.0)

    def test_recording_loader(self):
        """A failed load sets the gauge to 0 and keeps the last success time; a good one restores both."""
        clock = Clock()
        reloads = ConfigReloads(clock)
        m = Metrics(process_metrics=False)
        reloads.watch(m)

        def load(path):
            if path == "bad":
                raise ConfigError("bad:1:1: nope")
            return "config"

        load = reloads.recording(load)
        clock.advance(5)
        self.assertRaises(ConfigError, load, "bad")
        text = _scrape(m)
        self.assertEqual(_sample(text, "metaproxy_config_last_reload_successful"), 0.0)
        self.assertEqual(_sample(text, "metaproxy_config_last_reload_success_timestamp_seconds"), 0.0)
        clock.advance(5)
        self.assertEqual(load("good"), "config")
        text = _scrape(m)
        self.assertEqual(_sample(text, "metaproxy_config_last_reload_successful"), 1.0)
        self.assertEqual(_sample(text, "metaproxy_config_last_reload_success_timestamp_seconds"), 10.0)
        self.assertEqual(reloads.failures, 1)


class FdLimitTests(SynchronousTestCase):
    def events(self):
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        return seen

    def test_low_limit_warns_and_is_exported(self):
        """A soft limit below max_connections + the reserve: one warning naming both, gauges set."""
        seen = self.events()
        m = Metrics(process_metrics=False)
        self.assertTrue(check_fd_limit(300, m, read_limits=lambda: (256, 4096)))
        [warning] = [e for e in seen if e.get("log_level") == LogLevel.warn]
        self.assertEqual((warning["soft"], warning["limit"]), (256, 300))
        text = _scrape(m)
        self.assertEqual(_sample(text, "metaproxy_open_files_limit"), 256.0)
        self.assertEqual(_sample(text, "metaproxy_open_files_limit_too_low"), 1.0)

    def test_enough_or_unlimited(self):
        """Enough descriptors, no connection limit, or an unlimited soft limit: no warning."""
        seen = self.events()
        self.assertFalse(check_fd_limit(1000, None, read_limits=lambda: (1000 + RESERVED_FDS, 4096)))
        self.assertFalse(check_fd_limit(0, None, read_limits=lambda: (16, 16)))
        self.assertFalse(fd_limit_too_low(soft_fd_limit(lambda: (resource.RLIM_INFINITY, 0)), 10 ** 6))
        self.assertIsNone(soft_fd_limit(lambda: (_ for _ in ()).throw(OSError("no"))))
        self.assertEqual([e for e in seen if e.get("log_level") == LogLevel.warn], [])


def _limit_nofile(soft):
    def preexec():
        _old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return preexec


class TwistdMetricsTests(SynchronousTestCase):
    """A real C{twistd -n metaproxy} run with RLIMIT_NOFILE 256 and limits.max_connections 1000."""

    def test_counters_reload_result_and_fd_limit(self):
        """
        From start-up /metrics has every server counter at 0, the reload
        gauge at 1, the backend error counter, the open-file gauges (the
        limit is too low: also one warning at start); garbage on the client
        port counts one framing error; a SIGHUP with a broken config sets
        the reload gauge to 0.
        """
        port, admin = free_port(), free_port()
        path = os.path.abspath(self.mktemp() + ".yaml")
        with open(path, "w") as f:
            f.write(f"listen: tcp:{port}:interface=127.0.0.1\nadmin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}\n"
                    "limits: {max_connections: 1000}\nmetric: {type: prometheus}\n"
                    "routes:\n  t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}\n")
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        proc = subprocess.Popen(twistd_argv() + ["--logger=metaproxy.ops.logs.journal_text", "metaproxy",
                                                 f"--config={path}"],
                                cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=_limit_nofile(256))
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        wait_for_port(admin, proc)
        wait_for_port(port, proc)

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
                return response.read().decode()

        text = scrape()
        for name in ("metaproxy_client_framing_errors_total", "metaproxy_client_invalid_requests_total",
                     "metaproxy_client_handler_errors_total"):
            self.assertEqual(_sample(text, name), 0.0, name)
        self.assertEqual(_sample(text, "metaproxy_config_last_reload_successful"), 1.0)
        self.assertIsNotNone(_sample(text, "metaproxy_config_last_reload_success_timestamp_seconds"))
        self.assertIn('metaproxy_backend_errors_total{cluster_name="_other",outcome="_other"} 0.0', text)
        self.assertEqual(_sample(text, "metaproxy_open_files_limit"), 256.0)
        self.assertEqual(_sample(text, "metaproxy_open_files_limit_too_low"), 1.0)
        for line in text.splitlines():
            if not line.startswith("#"):
                labels = re.findall(r'="([^"]*)"', line)
                self.assertEqual([v for v in labels if " " in v], [], line)

        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"x" * 64)
            s.settimeout(10)
            while s.recv(4096):
                pass
        _wait_for(lambda: _sample(scrape(), "metaproxy_client_framing_errors_total") == 1.0, proc,
                  "one framing error counted")

        with open(path, "a") as f:
            f.write("bogus_key: 1\n")
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: _sample(scrape(), "metaproxy_config_last_reload_successful") == 0.0, proc,
                  "the reload gauge at 0")
        output = _stop(self, proc)
        self.assertIn("the open-file limit (RLIMIT_NOFILE) is 256, below limits.max_connections 1000", output)
        self.assertIn("closing connection from 127.0.0.1", output)
        self.assertIn("0 more since the last warning", output)
