# -*- test-case-name: metaproxy.test.test_tap -*-
"""
Tests for L{metaproxy.tap}: options, the service tree, and one twistd run.
"""

import io
import os
import signal
import sys
import subprocess

from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from metaproxy import tap
from metaproxy.testing.net import free_port, twistd_argv, wait_for_port
from metaproxy.testing.proxyproc import listening_socket


def _write(case, text):
    path = case.mktemp() + ".yaml"
    with open(path, "w") as f:
        f.write(text)
    return path


class OptionsTests(SynchronousTestCase):
    def test_config_required(self):
        """Without --config twistd gets a UsageError saying so."""
        e = self.assertRaises(UsageError, tap.Options().parseOptions, [])
        self.assertIn("--config", str(e))

    def bad_config(self, argv):
        """@return: what parsing C{argv} printed on stderr; it must exit 2 (as `metaproxy check`)."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        e = self.assertRaises(SystemExit, tap.Options().parseOptions, argv)
        self.assertEqual(e.code, 2)
        self.assertNotIn("Usage", err.getvalue())
        return err.getvalue()

    def test_bad_config_exits_2_with_location(self):
        """A bad config is the file:line:col message on stderr and exit 2, without twistd's usage text."""
        path = _write(self, "listen: tcp:1\nroutes:\n  t: {cluster_name: c, meta_addrs: 'x'}\n")
        err = self.bad_config(["--config", path])
        self.assertTrue(err.startswith("twistd metaproxy: bad configuration, not started:\n"), err)
        self.assertIn(f"{path}:3:36: 'x' is not host:port", err)

    def test_config_loaded(self):
        """A good config is loaded into options["loaded"]; options["config"] keeps the path."""
        path = _write(self, "routes:\n  t: {cluster_name: c, meta_addrs: '127.0.0.1:34601'}\n")
        options = tap.Options()
        options.parseOptions([f"--config={path}"])
        self.assertEqual(options["config"], path)
        self.assertEqual(options["loaded"].routes["t"].cluster_name, "c")

    def test_every_error_reported(self):
        """All of a file's problems are printed, each located."""
        path = _write(self, "routes:\n  t: {cluster_name: c, meta_addrs: 'a:1'}\nlimits: {max_connections: '5'}\nlisten: 5\n")
        err = self.bad_config(["-c", path])
        self.assertIn(f"{path}:3:27: expected an integer", err)
        self.assertIn(f"{path}:4:9: expected a string", err)

    def test_missing_config_file(self):
        """A config path that does not exist is one located line and exit 2, not a traceback."""
        self.assertIn("cannot read the file", self.bad_config(["-c", "/nonexistent.yaml"]))


class MakeServiceTests(SynchronousTestCase):
    def test_service_tree(self):
        """makeService builds the named children, listening where the config says."""
        path = _write(
            self,
            "listen: tcp:34999:interface=127.0.0.1\nadmin: {listen: 'tcp:19091:interface=127.0.0.1'}\n"
            "routes:\n  t: {cluster_name: c, meta_addrs: '127.0.0.1:34601'}\n",
        )
        options = tap.Options()
        options.parseOptions(["--config", path])
        reactor = MemoryReactorClock()
        service = tap.makeService(options, reactor)
        names = [s.name for s in service]
        self.assertEqual(names, ["startup", "routes", "pools", "admin", "proxy", "notify"])
        service.startService()
        ports = sorted(p[0] for p in reactor.tcpServers)
        self.assertEqual(ports, [19091, 34999])
        self.assertTrue(service.getServiceNamed("proxy").listening)
        self.successResultOf(service.stopService())
        self.assertFalse(service.getServiceNamed("proxy").listening)

    def test_startup_line(self):
        """Starting the tree logs one line with version, runtime, route source, listeners and reporter."""
        import platform

        from twisted.logger import capturedLogs, formatEvent

        from metaproxy import __version__

        path = _write(
            self,
            "listen: tcp:34999:interface=127.0.0.1\nadmin: {listen: 'tcp:19091:interface=127.0.0.1'}\n"
            "zookeeper: {address: '127.0.0.1:2181,127.0.0.2:2181', root: /pc}\n"
            "metric: {type: falcon, falcon: {url: 'http://127.0.0.1:1988/v1/push', step: 30}}\n",
        )
        options = tap.Options()
        options.parseOptions(["--config", path])
        service = tap.makeService(options, MemoryReactorClock())
        startup = service.getServiceNamed("startup")
        with capturedLogs() as events:
            startup.privilegedStartService()
            startup.startService()
        lines = [formatEvent(e) for e in events if "starting:" in formatEvent(e)]
        self.assertEqual(lines, [
            f"metaproxy {__version__} ({platform.python_implementation()} {platform.python_version()}, "
            f"Twisted {__import__('twisted').__version__}) starting: routes from ZooKeeper "
            "127.0.0.1:2181,127.0.0.2:2181 under /pc; clients on tcp:34999:interface=127.0.0.1; "
            "admin on tcp:19091:interface=127.0.0.1; metrics: falcon (push to http://127.0.0.1:1988/v1/push every 30 s)"
        ])

    def test_process_hooks(self):
        """As twistd calls it, makeService adds the log filter (started first) and the SIGHUP handler."""
        path = _write(self, "routes:\n  t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}\n")
        options = tap.Options()
        options.parseOptions(["--config", path])
        names = [s.name for s in tap.makeService(options, MemoryReactorClock(), process=True)]
        self.assertEqual(names[0], "logfilter")
        self.assertEqual(names[-1], "sighup")

    def test_logging_section_applied(self):
        """makeService applies the config's logging level before building the tree."""
        from twisted.logger import LogLevel

        from metaproxy.ops import logs

        path = _write(self, "routes:\n  t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}\nlogging: {level: error}\n")
        options = tap.Options()
        options.parseOptions(["--config", path])
        self.addCleanup(logs.configure_logging, options["loaded"].logging.__class__())
        tap.makeService(options, MemoryReactorClock())
        self.assertEqual(logs.current_level(), LogLevel.error)

    def test_falcon_reporter_adds_service(self):
        """metric.type falcon adds a pushing reporter service."""
        path = _write(self, "routes:\n  t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}\nmetric: {type: falcon}\n")
        options = tap.Options()
        options.parseOptions(["--config", path])
        service = tap.makeService(options, MemoryReactorClock())
        self.assertIn("reporter", [s.name for s in service])


class TwistdSmokeTests(SynchronousTestCase):
    def test_twistd_runs_and_stops(self):
        """
        `twistd -n metaproxy --config=...` opens its port, answers a TCP
        connect, and exits on SIGTERM.
        """
        port, admin = free_port(), free_port()
        path = os.path.abspath(
            _write(
                self,
                f"listen: tcp:{port}:interface=127.0.0.1\nadmin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}\n"
                "metric: {type: none}\nroutes:\n  t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}\n",
            )
        )
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        proc = subprocess.Popen(
            twistd_argv() + ["metaproxy", f"--config={path}"],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        try:
            wait_for_port(port, proc)
        except RuntimeError as e:
            self.fail(f"twistd did not open port {port} ({e}): {proc.stdout.read().decode()[-2000:]}")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        output = proc.stdout.read().decode()
        self.assertIn(rc, (0, -signal.SIGTERM))
        self.assertIn("drained", output)
        self.assertNotIn("Traceback", output)


class FailedStartTests(SynchronousTestCase):
    """Real twistd processes that cannot start: quiet, accurate output and the right exit status."""

    def twistd(self, config_text):
        path = os.path.abspath(_write(self, config_text))
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        result = subprocess.run(
            twistd_argv() + ["--logger=metaproxy.ops.logs.journal_text", "metaproxy", f"--config={path}"],
            cwd=workdir, capture_output=True, text=True, timeout=60,
        )
        return path, result

    def test_ports_taken(self):
        """
        Both ports taken: one critical line per port, exit 1, and no
        ReactorNotRunning traceback, "drained" line or "(TCP Port ... Closed)".
        """
        holders = []
        for _ in range(2):
            holder = listening_socket()
            self.addCleanup(holder.close)
            holders.append(holder.getsockname()[1])
        port, admin = holders
        _, result = self.twistd(
            f"listen: tcp:{port}:interface=127.0.0.1\nadmin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}\n"
            "metric: {type: none}\nroutes:\n  t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}\n"
        )
        out = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, out)
        critical = [line for line in out.splitlines() if line.startswith("<2>")]
        self.assertEqual(len(critical), 2, out)
        self.assertIn(f"cannot listen for clients on 'tcp:{port}:interface=127.0.0.1'", out)
        self.assertIn(f"cannot listen for admin HTTP on 'tcp:{admin}:interface=127.0.0.1'", out)
        for absent in ("Traceback", "ReactorNotRunning", "drained", "Closed)"):
            self.assertNotIn(absent, out)

    def test_admin_port_taken(self):
        """Only the admin port taken: the proxy port it bound closes quietly, no drain line."""
        holder = listening_socket()
        self.addCleanup(holder.close)
        _, result = self.twistd(
            f"listen: tcp:0:interface=127.0.0.1\nadmin: {{listen: 'tcp:{holder.getsockname()[1]}:interface=127.0.0.1'}}\n"
            "metric: {type: none}\nroutes:\n  t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}\n"
        )
        out = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, out)
        self.assertEqual(len([line for line in out.splitlines() if line.startswith("<2>")]), 1, out)
        for absent in ("Traceback", "drained", "Closed)"):
            self.assertNotIn(absent, out)

    def test_bad_config(self):
        """A bad config: the located errors, exit 2 (as `metaproxy check`), no usage block."""
        path, result = self.twistd("listen: 34601\nzookeeper: {adress: '127.0.0.1:2181'}\n")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertNotIn("Usage", result.stdout + result.stderr)
        self.assertNotIn("Options:", result.stdout + result.stderr)
        self.assertIn(f"{path}:1:9: expected a string", result.stderr)


class PortTakenTests(SynchronousTestCase):
    def test_taken_port_is_fatal_with_a_clear_message(self):
        """If the proxy's port is taken, build_service reports it as fatal (no silent half-start)."""
        import socket as _socket

        from twisted.internet import reactor

        from metaproxy.app import build_service
        from metaproxy.config import parse_config

        holder = _socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        config = parse_config(
            f"listen: tcp:{port}:interface=127.0.0.1\nadmin: {{listen: 'tcp:0:interface=127.0.0.1'}}\n"
            "metric: {type: none}\nroutes: {t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}}\n"
        )
        fatal = []
        service = build_service(config, reactor, fatal=fatal.append)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(fatal), 1)
        self.assertIn(f"cannot listen for clients on 'tcp:{port}:interface=127.0.0.1'", fatal[0])
        self.assertIn("Address already in use", fatal[0])
