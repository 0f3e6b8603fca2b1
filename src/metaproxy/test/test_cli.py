# -*- test-case-name: metaproxy.test.test_cli -*-
"""
Tests for the C{metaproxy} command: C{--version}, C{check} and C{resolve},
each run as a subprocess of the command (the installed script when there
is one) against simulated clusters run by C{twistd pegasus-sim}.
"""

import json
import os
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from metaproxy import __version__
from metaproxy.cli.metaquery import as_json
from metaproxy.config import AdminConfig
from metaproxy.sim.model import DEFAULT_REPLICAS, SimModel
from metaproxy.testing.net import free_port, twistd_argv
from metaproxy.testing.commandline import run_cli, start_simulator, stop_at_exit
from metaproxy.testing.proxyproc import listening_socket
from metaproxy.wire import querycfg

_SIM = {}


def simulator():
    """@return: the shared C{pegasus-sim} process (table temp: 8 partitions, app_id 2), started on first use."""
    if "alpha" not in _SIM:
        workdir = os.path.abspath("cli-sim")
        os.makedirs(workdir, exist_ok=True)
        _SIM["alpha"] = stop_at_exit(start_simulator(workdir, "alpha", ["temp:8:2", "stat:4:3"]))
    return _SIM["alpha"]


def _write(case, text):
    path = os.path.abspath(case.mktemp() + ".yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


class VersionTests(SynchronousTestCase):
    def test_version(self):
        """`metaproxy --version` prints metaproxy's version and exits 0."""
        result = run_cli("--version")
        self.assertEqual((result.returncode, result.stdout.strip()), (0, f"metaproxy {__version__}"))

    def test_twistd_version(self):
        """`twistd metaproxy --version` prints metaproxy's version, not Twisted's."""
        result = subprocess.run(
            twistd_argv(nodaemon=False) + ["metaproxy", "--version"],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, f"metaproxy {__version__}"))

    def test_no_command(self):
        """Without a command the usage is printed and the exit status is 2."""
        result = run_cli()
        self.assertEqual(result.returncode, 2)
        self.assertIn("usage: metaproxy", result.stderr)


GOOD = "routes:\n  temp: {cluster_name: c1, meta_addrs: '127.0.0.1:34611'}\nmetric: {type: none}\n"

BAD = """\
routes:
  temp: {cluster_name: c1, meta_addrs: '127.0.0.1:34601'}
listen: 'foo:bar'
limits: {max_connections: '5'}
lgging: {level: info}
zookeeper_x: 1
"""


class CheckTests(SynchronousTestCase):
    def test_several_errors_at_once(self):
        """`metaproxy check` reports every problem in one run, located, in line order, exit 2."""
        path = _write(self, BAD)
        result = run_cli("check", "--config", path)
        self.assertEqual(result.returncode, 2)
        lines = [line for line in result.stderr.splitlines() if line.startswith(path)]
        self.assertEqual([int(line[len(path) + 1 :].split(":")[0]) for line in lines], [3, 4, 5, 6])
        self.assertIn("did you mean 'logging'?", result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_good_config_summary(self):
        """A good config exits 0 with one line naming the route source, listeners and reporter."""
        path = _write(self, GOOD)
        result = run_cli("check", "-c", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout.strip(),
            f"{path}: ok: 1 static routes; clients on tcp:34601; admin on {AdminConfig().listen}; "
            "metrics: none; log level info",
        )

    def test_log_path_that_cannot_be_appended_to(self):
        """`metaproxy check` refuses logging.file /proc/version (twistd used to die on it with a traceback)."""
        path = _write(self, GOOD + "logging: {file: /proc/version}\n")
        result = run_cli("check", "--config", path)
        self.assertEqual(result.returncode, 2)
        self.assertIn(f"{path}:4:17: '/proc/version' cannot be", result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_twistd_check(self):
        """`twistd metaproxy --check` does what `metaproxy check` does, without serving."""
        twistd = twistd_argv(nodaemon=False) + ["metaproxy", "--check"]
        good = subprocess.run(twistd + ["--config", _write(self, GOOD)], capture_output=True, text=True, timeout=60)
        self.assertEqual(good.returncode, 0, good.stderr)
        self.assertIn(": ok: 1 static routes", good.stdout)
        path = _write(self, BAD)
        bad = subprocess.run(twistd + ["--config", path], capture_output=True, text=True, timeout=60)
        self.assertEqual(bad.returncode, 2)
        self.assertIn(f"{path}:3:9: not a valid Twisted endpoint", bad.stderr)
        self.assertIn(f"{path}:6:1: unknown key 'zookeeper_x'", bad.stderr)
        self.assertNotIn("Traceback", bad.stderr)

    def test_missing_file(self):
        """A config that cannot be read is one located line, exit 2."""
        result = run_cli("check", "--config", "/nonexistent/metaproxy.yaml")
        self.assertEqual(result.returncode, 2)
        self.assertIn("/nonexistent/metaproxy.yaml:1:1: cannot read the file", result.stderr)


    def test_config_from_environment(self):
        """Without --config, $METAPROXY_CONFIG names the file; without either, the default path is named."""
        path = _write(self, GOOD)
        result = run_cli("check", env={"METAPROXY_CONFIG": path})
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith(f"{path}: ok:"), result.stdout)
        result = run_cli("--config", path, "check", env={"METAPROXY_CONFIG": "/nonexistent/x.yaml"})
        self.assertEqual(result.returncode, 0, result.stderr)  # --config wins, also before the command
        if not os.path.exists("/etc/metaproxy/metaproxy.yaml"):
            result = run_cli("check", env={"METAPROXY_CONFIG": None})
            self.assertEqual(result.returncode, 2)
            self.assertIn("/etc/metaproxy/metaproxy.yaml does not exist; give --config FILE or set METAPROXY_CONFIG",
                          result.stderr)

    def test_global_flag_a_command_does_not_use(self):
        """A global flag the command has no use for is a usage error, not silently ignored."""
        result = run_cli("--yes", "check", "--config", _write(self, GOOD))
        self.assertEqual(result.returncode, 2)
        self.assertIn("--yes does not apply to this command", result.stderr)


class ResolveTests(SynchronousTestCase):
    """`metaproxy resolve` against a simulated cluster in its own process."""

    def expected(self):
        model = SimModel(replicas=DEFAULT_REPLICAS)
        model.create_table("temp", 8, 2)
        return as_json(querycfg.decode_result(model.query_body("temp")))

    def test_partition_table(self):
        """The text output shows app_id, partition count, status and one row per partition."""
        sim = simulator()
        result = run_cli("resolve", "temp", "--via", f"127.0.0.1:{sim.ports[0]}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("app_id           : 2\n", result.stdout)
        self.assertIn("partition_count  : 8\n", result.stdout)
        self.assertIn("status           : ERR_OK, 8/8 partitions with a primary", result.stdout)
        rows = [line.split() for line in result.stdout.splitlines()[-8:]]
        expected = self.expected()["partitions"]
        self.assertEqual(
            rows,
            [[str(p["pidx"]), str(p["ballot"]), p["primary"], ",".join(p["secondaries"])] for p in expected],
        )

    def test_json_matches_simulator(self):
        """--json is exactly what the simulator serves, also asked at a follower (the forward is followed) and with --v1."""
        sim = simulator()
        expected = self.expected()
        for via, extra in ((sim.ports[0], []), (sim.ports[2], []), (sim.ports[1], ["--v1"])):
            result = run_cli("resolve", "temp", "--via", f"127.0.0.1:{via}", "--json", *extra)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(json.loads(result.stdout), expected)
        self.assertEqual(set(expected), {"err", "app_id", "partition_count", "is_stateful", "partitions"})
        self.assertEqual(set(expected["partitions"][0]), {"pidx", "ballot", "primary", "secondaries"})

    def test_missing_table_names_the_error(self):
        """A table the cluster does not have exits 1 naming ERR_OBJECT_NOT_FOUND."""
        sim = simulator()
        result = run_cli("resolve", "nosuch", "--via", f"127.0.0.1:{sim.ports[0]}")
        self.assertEqual(result.returncode, 1)
        self.assertIn("ERR_OBJECT_NOT_FOUND", result.stderr)
        result = run_cli("resolve", "nosuch", "--via", f"127.0.0.1:{sim.ports[0]}", "--json")
        self.assertEqual((result.returncode, json.loads(result.stdout)["err"]), (1, "ERR_OBJECT_NOT_FOUND"))

    def test_nothing_listening(self):
        """An address where nothing listens exits 1 with one clear line, no traceback."""
        port = free_port()
        result = run_cli("resolve", "temp", "--via", f"127.0.0.1:{port}", "--timeout", "600")
        self.assertEqual(result.returncode, 1)
        # Refused: it says so at once (a 600 s wait would end the test by its own timeout).
        self.assertIn(f"127.0.0.1:{port} refused the connection", result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1)

    def test_silent_address_times_out(self):
        """An address that accepts but never answers is waited for --timeout, then named."""
        silent = listening_socket()
        self.addCleanup(silent.close)
        port = silent.getsockname()[1]
        result = run_cli("resolve", "temp", "--via", f"127.0.0.1:{port}", "--timeout", "1")
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"127.0.0.1:{port} did not answer for 'temp'", result.stderr)

    def test_json_before_the_command(self):
        """--json is a global flag: accepted before the command name too."""
        sim = simulator()
        result = run_cli("--json", "resolve", "temp", "--via", f"127.0.0.1:{sim.ports[0]}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["partition_count"], 8)

    def test_bad_address(self):
        """A --via that is not host:port is a usage error (exit 2)."""
        result = run_cli("resolve", "temp", "--via", "nocolon")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--via: 'nocolon' is not host:port", result.stderr)


class HeaderVersionTests(SynchronousTestCase):
    """resolve --v1 reaches the wire: the meta client can send the v1 header."""

    def test_v1_frames(self):
        """A connection built with header_version=1 sends v1 requests; the default stays v0."""
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from metaproxy.backend.connection import _ProtocolFactory
        from metaproxy.wire.frame import RequestDecoder

        versions = []
        for kw in ({"header_version": 1}, {}):
            proto = _ProtocolFactory(Clock(), 1 << 20, None, **kw).buildProtocol(None)
            transport = StringTransport()
            proto.makeConnection(transport)
            proto.call(querycfg.QUERY_CFG, querycfg.encode_args("temp"), None, 2000)
            (request,) = RequestDecoder().feed(transport.value())
            versions.append((request.header.version, request.header.client_timeout, request.name))
        self.assertEqual(versions, [(1, 2000, querycfg.QUERY_CFG), (0, 2000, querycfg.QUERY_CFG)])


class SummaryTests(SynchronousTestCase):
    def test_zookeeper_summary(self):
        """The check summary names the ZooKeeper servers and root, the listeners and the reporter."""
        from metaproxy.cli.check import summary
        from metaproxy.config import parse_config

        config = parse_config(
            "zookeeper: {address: ['127.0.0.1:2181', '127.0.0.2:2181'], root: pegasus}\n"
            "listen: tcp:1234\nmetric: {type: falcon}\nlogging: {level: warning}\n"
        )
        self.assertEqual(
            summary(config),
            "routes from ZooKeeper 127.0.0.1:2181,127.0.0.2:2181 under /pegasus; clients on tcp:1234; "
            f"admin on {AdminConfig().listen}; metrics: falcon; log level warn",
        )
