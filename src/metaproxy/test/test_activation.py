# -*- test-case-name: metaproxy.test.test_activation -*-
"""
Tests for systemd socket activation (L{metaproxy.ops.activation}, the units in etc/).
"""

import os
import re
import shutil
import signal
import subprocess

from twisted.internet import defer, reactor, task
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metaproxy.ops.activation import server_endpoint, systemd_endpoint_problem
from metaproxy.config import ConfigError, parse_config
from metaproxy.testing.harness import start_cluster, stop_all
from metaproxy.testing.net import free_port
from metaproxy.testing.pegasus_client import connect_client
from metaproxy.testing.proxyproc import config_text, listening_socket, pid_alive, start_proxy
from metaproxy.wire import codes, querycfg


def _source_dir(case):
    here = os.path.dirname(os.path.abspath(__file__))
    source = os.environ.get("METAPROXY_SOURCE_DIR") or os.path.join(here, "..", "..", "..")
    if not os.path.exists(os.path.join(source, "etc", "metaproxy.socket")):
        raise case.skipTest("set METAPROXY_SOURCE_DIR to the source checkout (.ci/run does)")
    return source


class EndpointStringTests(SynchronousTestCase):
    def test_good_strings(self):
        """domain + exactly one of index/name is accepted, with no LISTEN_FDS needed."""
        for s in ("systemd:domain=INET:index=0", "systemd:domain=INET6:name=metaproxy", "systemd:domain=UNIX:index=2"):
            self.assertIsNone(systemd_endpoint_problem(s), s)

    def test_bad_strings(self):
        """Each malformed string gets a message naming what is wrong."""
        cases = {
            "systemd:domain=INET": "exactly one of index= or name=",
            "systemd:domain=INET:index=0:name=x": "exactly one of index= or name=",
            "systemd:domain=FOO:index=0": "domain=",
            "systemd:domain=INET:index=-1": "index= must be an integer",
            "systemd:domain=INET:port=1:index=0": "unknown argument(s) port",
            "systemd:index": "is not a single key=value",
        }
        for s, expected in cases.items():
            self.assertIn(expected, systemd_endpoint_problem(s), s)

    def test_config_accepts_systemd_listen(self):
        """The config loader accepts listen: systemd:... even where nothing was inherited."""
        config = parse_config("listen: systemd:domain=INET:index=0\nroutes: {t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}}\n")
        self.assertEqual(config.listen, "systemd:domain=INET:index=0")

    def test_config_rejects_malformed_systemd_listen(self):
        """A malformed systemd: string is a located config error."""
        e = self.assertRaises(
            ConfigError, parse_config, "listen: systemd:domain=INET\nroutes: {t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}}\n"
        )
        self.assertIn("exactly one of index= or name=", str(e))

    def test_not_inherited_fails_to_listen_clearly(self):
        """Without LISTEN_FDS the endpoint's listen fails with a reason, not an IndexError at build time."""
        endpoint = server_endpoint(MemoryReactor(), "systemd:domain=INET:index=7")
        failure = self.failureResultOf(endpoint.listen(None), CannotListenError)
        self.assertIn("LISTEN_FDS", str(failure.value))

    def test_other_endpoints_unchanged(self):
        """Other strings are Twisted's own endpoints."""
        r = MemoryReactor()
        server_endpoint(r, "tcp:0:interface=127.0.0.1").listen(object())
        self.assertEqual(len(r.tcpServers), 1)


class UnitFileTests(SynchronousTestCase):
    def test_socket_unit_verifies(self):
        """etc/metaproxy.socket with etc/metaproxy.service passes systemd-analyze verify."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise self.skipTest("systemd-analyze is not installed")
        source = _source_dir(self)
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        shutil.copy(os.path.join(source, "etc", "metaproxy.socket"), tmp)
        with open(os.path.join(source, "etc", "metaproxy.service")) as f:
            service = f.read()
        self.assertIn("ExecReload=/bin/kill -USR2 $MAINPID", service)
        self.assertIn("NotifyAccess=all", service)
        # verify needs ExecStart's binary to exist; the installed path does not here.
        with open(os.path.join(tmp, "metaproxy.service"), "w") as f:
            f.write(service.replace("/opt/metaproxy/venv/bin/twistd", shutil.which("true") or "/bin/true"))
        result = subprocess.run(
            [analyze, "verify", os.path.join(tmp, "metaproxy.socket"), os.path.join(tmp, "metaproxy.service")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
        )
        output = result.stdout.decode()
        self.assertEqual(result.returncode, 0, output)
        self.assertNotIn("metaproxy.s", output)  # no warning about our units


class InheritedSocketTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_serves_on_inherited_socket(self):
        """
        twistd started the way systemd does (listening socket on fd 3,
        LISTEN_FDS=1, LISTEN_PID its pid) with listen: systemd:... answers a
        client's query on that socket; no port of its own is bound.
        """
        cluster = start_cluster(reactor, "a", {"temp": 8})
        self.addCleanup(stop_all, cluster)
        sock = listening_socket()
        self.addCleanup(sock.close)
        port = sock.getsockname()[1]
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        path = os.path.join(workdir, "metaproxy.yaml")
        with open(path, "w") as f:
            f.write(config_text("systemd:domain=INET:index=0", f"tcp:{free_port()}:interface=127.0.0.1",
                                {"temp": ("a", cluster.meta_addrs())}))
        log = open(os.path.join(workdir, "out.log"), "wb")
        self.addCleanup(log.close)
        proc = start_proxy(path, workdir, log, listening_socket=sock)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        sock.close()  # only the child holds it now
        client = yield connect_client(reactor, "127.0.0.1", port)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        response = yield client.query("temp")
        self.assertEqual(response.rpc_error, codes.ERR_OK)
        self.assertEqual(querycfg.decode_result(response.body).partition_count, 8)
        with open(os.path.join(workdir, "out.log")) as f:
            output = f.read()
        self.assertIn(f"proxy listening on 127.0.0.1:{port}", output)  # the inherited socket
        self.assertNotIn("Traceback", output)

    @defer.inlineCallbacks
    def test_upgrade_keeps_inherited_socket(self):
        """
        A socket-activated process hands its inherited socket over on
        SIGUSR2: the successor (started without LISTEN_FDS) answers the
        same connection and accepts new ones on that socket; the old exits 0.
        """
        cluster = start_cluster(reactor, "a", {"temp": 8})
        self.addCleanup(stop_all, cluster)
        sock = listening_socket()
        port = sock.getsockname()[1]
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        path = os.path.join(workdir, "metaproxy.yaml")
        with open(path, "w") as f:
            f.write(config_text("systemd:domain=INET:index=0", f"tcp:{free_port()}:interface=127.0.0.1",
                                {"temp": ("a", cluster.meta_addrs())}))
        log_path = os.path.join(workdir, "out.log")
        log = open(log_path, "wb")
        self.addCleanup(log.close)
        proc = start_proxy(path, workdir, log, listening_socket=sock)
        sock.close()
        pids = [proc.pid]

        def end_all():
            for pid in pids:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
            proc.poll()

        self.addCleanup(end_all)
        client = yield connect_client(reactor, "127.0.0.1", port)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        self.assertEqual((yield client.query("temp")).rpc_error, codes.ERR_OK)
        os.kill(proc.pid, signal.SIGUSR2)
        found = []
        for _ in range(600):
            yield task.deferLater(reactor, 0.05, lambda: None)
            with open(log_path) as f:
                found = re.findall(r"handed over to pid (\d+)", f.read())
            if found and proc.poll() is not None:
                break
        self.assertTrue(found, "no hand-over logged")
        pids.append(int(found[0]))
        self.assertEqual(proc.returncode, 0)
        self.assertEqual((yield client.query("temp")).rpc_error, codes.ERR_OK)
        self.assertFalse(client.closed.called)
        other = yield connect_client(reactor, "127.0.0.1", port)
        self.addCleanup(lambda: other.transport.loseConnection() or other.closed)
        self.assertEqual((yield other.query("temp")).rpc_error, codes.ERR_OK)
