# -*- test-case-name: metaproxy.test.test_cli_routes -*-
"""
Tests for C{metaproxy routes list|get|set|delete|switch}, run as
subprocesses of the command against a real ZooKeeper
(L{metaproxy.testing.zookeeper}), simulated clusters run by
C{twistd pegasus-sim}, and a C{twistd metaproxy} serving from that
ZooKeeper.
"""

import json
import os
import pty
import select
import subprocess
import time
import uuid

from kazoo.client import KazooClient
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.cli.common import CommandError
from metaproxy.cli.zkstore import Conflict, RouteStore, quiet_logger
from metaproxy.config import parse_config
from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.test.test_cli import simulator
from metaproxy.testing.net import free_port
from metaproxy.testing.commandline import cli_argv, run_cli, start_metaproxy, start_simulator, stop_at_exit
from metaproxy.testing.proxyproc import listening_socket
from metaproxy.testing.zookeeper import shared_server

_BETA = {}


def beta():
    """@return: the shared second simulated cluster (table temp: 16 partitions, app_id 7)."""
    if "beta" not in _BETA:
        workdir = os.path.abspath("cli-sim")
        os.makedirs(workdir, exist_ok=True)
        _BETA["beta"] = stop_at_exit(start_simulator(workdir, "beta", ["temp:16:7"]))
    return _BETA["beta"]


def addrs(sim):
    """@return: a simulated cluster's metas as C{"a,b,c"}."""
    return ",".join(f"127.0.0.1:{p}" for p in sim.ports)


class RoutesTestCase(SynchronousTestCase):
    """A fresh ZooKeeper root and a config naming it, per test."""

    def setUp(self):
        self.zk_server = shared_server()
        self.root = f"/cli-{uuid.uuid4().hex[:12]}"
        self.config = os.path.abspath(self.mktemp() + ".yaml")
        with open(self.config, "w") as f:
            f.write(f"zookeeper:\n  address: '{self.zk_server.hosts}'\n  root: {self.root}\nmetric: {{type: none}}\n")
        self.zk = KazooClient(hosts=self.zk_server.hosts, logger=quiet_logger())
        self.zk.start(timeout=15)
        self.addCleanup(self.zk.close)
        self.addCleanup(self.zk.stop)

    def put(self, table, cluster_name, meta_addrs):
        """Write a route node directly, as another tool would."""
        data = json.dumps({"cluster_name": cluster_name, "meta_addrs": meta_addrs}).encode()
        path = f"{self.root}/{table}"
        if self.zk.exists(path):
            self.zk.set(path, data)
        else:
            self.zk.create(path, data, makepath=True)

    def node(self, table):
        """@return: C{(json, version)} of a table's node."""
        data, stat = self.zk.get(f"{self.root}/{table}")
        return json.loads(data), stat.version

    def cli(self, *args, **kw):
        return run_cli(*args, "--config", self.config, **kw)

    def start_proxy(self, admin_port=0):
        """
        Start a C{twistd metaproxy} serving this test's ZooKeeper root; check
        that it resolves temp to app_id 2 (the alpha simulator).

        @return: the C{resolve --via} arguments that query it.
        """
        port = free_port()
        config = os.path.abspath(self.mktemp() + "-proxy.yaml")
        with open(config, "w") as f:
            f.write(
                f"listen: tcp:{port}:interface=127.0.0.1\nadmin: {{listen: 'tcp:{admin_port}:interface=127.0.0.1'}}\n"
                f"metric: {{type: none}}\nzookeeper: {{address: '{self.zk_server.hosts}', root: {self.root}}}\n"
            )
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        proxy = start_metaproxy(workdir, config, port)
        self.addCleanup(proxy.stop)
        via = ("resolve", "temp", "--via", f"127.0.0.1:{port}", "--json")
        first = run_cli(*via)
        self.assertEqual((first.returncode, json.loads(first.stdout)["app_id"]), (0, 2), first.stderr)
        self.proxy = proxy
        return via


class ListGetTests(RoutesTestCase):
    def test_list_and_get(self):
        """list and get show table, cluster_name, meta_addrs, version and mtime, as text and JSON."""
        self.put("temp", "alpha", "127.0.0.1:1,127.0.0.1:2")
        self.put("stat", "beta", "127.0.0.1:3")
        self.put("stat", "beta", "127.0.0.1:4")  # version 1
        result = self.cli("routes", "list", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        rows = json.loads(result.stdout)
        self.assertEqual([r["table"] for r in rows], ["stat", "temp"])
        self.assertEqual(set(rows[0]), {"table", "cluster_name", "meta_addrs", "version", "mtime"})
        self.assertEqual((rows[0]["cluster_name"], rows[0]["meta_addrs"], rows[0]["version"]), ("beta", "127.0.0.1:4", 1))
        self.assertRegex(rows[0]["mtime"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        text = self.cli("routes", "list").stdout.splitlines()
        self.assertEqual(text[0].split(), ["table", "cluster_name", "meta_addrs", "version", "mtime"])
        self.assertEqual(text[2].split()[:4], ["temp", "alpha", "127.0.0.1:1,127.0.0.1:2", "0"])
        got = self.cli("routes", "get", "temp", "--json")
        self.assertEqual((got.returncode, json.loads(got.stdout)[0]["cluster_name"]), (0, "alpha"))

    def test_bad_node_data(self):
        """A node that holds no route is listed with its error (JSON) or a warning (text); get exits 1."""
        self.zk.create(f"{self.root}/temp", b"not json", makepath=True)
        rows = json.loads(self.cli("routes", "list", "--json").stdout)
        self.assertEqual((rows[0]["table"], rows[0]["cluster_name"]), ("temp", None))
        self.assertIn("invalid JSON", rows[0]["error"])
        result = self.cli("routes", "get", "temp")
        self.assertEqual(result.returncode, 1)
        self.assertIn("warning: temp: bad route data: invalid JSON", result.stdout)

    def test_get_missing_table(self):
        """get of a table without a node exits 1 naming the node."""
        self.put("temp", "alpha", "127.0.0.1:1")
        result = self.cli("routes", "get", "nosuch")
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{self.root}/nosuch does not exist", result.stderr)

    def test_missing_root(self):
        """list under a root that does not exist says so (a typo in zookeeper.root)."""
        result = self.cli("routes", "list")
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"ZooKeeper root {self.root} does not exist", result.stderr)

    def test_static_routes(self):
        """With a static routes: map, list shows it (no version) and writes are refused (exit 2)."""
        with open(self.config, "w") as f:
            f.write("routes:\n  temp: {cluster_name: c1, meta_addrs: '127.0.0.1:1'}\n")
        rows = json.loads(self.cli("routes", "list", "--json").stdout)
        self.assertEqual(rows, [{"table": "temp", "cluster_name": "c1", "meta_addrs": "127.0.0.1:1", "version": None, "mtime": None}])
        result = self.cli("routes", "set", "temp", "--cluster-name", "x", "--meta-addrs", "127.0.0.1:2", "--yes", "--no-verify")
        self.assertEqual(result.returncode, 2)
        self.assertIn("static routes", result.stderr)

    def test_zookeeper_refuses(self):
        """A ZooKeeper nobody runs (connection refused) is named at once, not after --zk-timeout."""
        port = free_port()
        with open(self.config, "w") as f:
            f.write(f"zookeeper: {{address: '127.0.0.1:{port}'}}\n")
        result = self.cli("routes", "list", "--zk-timeout", "600")  # a wait would end the test by its timeout
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr, f"metaproxy routes: ZooKeeper refused the connection at 127.0.0.1:{port}: "
            "is ZooKeeper running there?\n"
        )

    def test_zookeeper_silent(self):
        """A ZooKeeper address that accepts but never answers is waited for --zk-timeout, then named."""
        silent = listening_socket()
        self.addCleanup(silent.close)
        with open(self.config, "w") as f:
            f.write(f"zookeeper: {{address: '127.0.0.1:{silent.getsockname()[1]}'}}\n")
        result = self.cli("routes", "list", "--zk-timeout", "2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("did not answer within 2s", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_global_flags_anywhere(self):
        """--json and --config are accepted before the command, between command and sub-command, and after."""
        self.put("temp", "alpha", "127.0.0.1:1")
        for argv in (
            ("--json", "--config", self.config, "routes", "list"),
            ("routes", "--json", "--config", self.config, "list"),
            ("routes", "list", "--json", "--config", self.config),
        ):
            result = run_cli(*argv)
            self.assertEqual(result.returncode, 0, (argv, result.stderr))
            self.assertEqual([r["table"] for r in json.loads(result.stdout)], ["temp"], argv)

    def test_config_from_environment(self):
        """$METAPROXY_CONFIG stands in for --config."""
        self.put("temp", "alpha", "127.0.0.1:1")
        result = run_cli("routes", "get", "temp", env={"METAPROXY_CONFIG": self.config})
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("alpha", result.stdout)

    def test_misspelt_table(self):
        """A table without a node that looks like an existing one gets a did-you-mean, and no nudge to create it."""
        self.put("temp", "alpha", "127.0.0.1:1")
        result = self.cli("routes", "get", "tmep")
        self.assertEqual(result.returncode, 1)
        self.assertIn("does not exist); did you mean 'temp'?", result.stderr)
        result = self.cli("routes", "switch", "tmep", "--cluster-name", "b", "--meta-addrs", "127.0.0.1:2", "--yes")
        self.assertEqual(result.returncode, 1)
        self.assertIn("did you mean 'temp'?", result.stderr)
        self.assertNotIn("routes set", result.stderr)
        result = self.cli("routes", "switch", "other", "--cluster-name", "b", "--meta-addrs", "127.0.0.1:2", "--yes")
        self.assertIn("to route a new table, use routes set", result.stderr)

    def test_bad_config(self):
        """A bad config is every located problem and exit 2, for every routes command."""
        with open(self.config, "w") as f:
            f.write("zookeeper: {address: 'nocolon'}\nlisten: 5\n")
        result = self.cli("routes", "get", "temp")
        self.assertEqual(result.returncode, 2)
        self.assertIn(f"{self.config}:1:22: 'nocolon' is not host:port", result.stderr)
        self.assertIn(f"{self.config}:2:9: expected a string", result.stderr)


class SetDeleteTests(RoutesTestCase):
    def test_set_creates_and_delete_removes(self):
        """set creates the node (normalised meta list); delete --yes removes it."""
        result = self.cli("routes", "set", "temp", "--cluster-name", "alpha", "--meta-addrs", "127.0.0.1:2, 127.0.0.1:1",
                          "--yes", "--allow-world-writable", "--no-verify")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("warning: the new node would be world-writable", result.stdout)
        self.assertIn("before: (none)", result.stdout)
        self.assertEqual(self.node("temp"), ({"cluster_name": "alpha", "meta_addrs": "127.0.0.1:1,127.0.0.1:2"}, 0))
        result = self.cli("routes", "delete", "temp", "--yes")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIsNone(self.zk.exists(f"{self.root}/temp"))

    def test_writes_need_confirmation(self):
        """Without --yes and without a terminal, set and delete refuse and write nothing."""
        self.put("temp", "alpha", "127.0.0.1:1")
        for args in (("set", "temp", "--cluster-name", "x", "--meta-addrs", "127.0.0.1:9", "--no-verify"), ("delete", "temp")):
            result = self.cli("routes", *args)
            self.assertEqual(result.returncode, 1)
            self.assertIn("give --yes", result.stderr)
        self.assertEqual(self.node("temp"), ({"cluster_name": "alpha", "meta_addrs": "127.0.0.1:1"}, 0))

    def test_delete_expect_cluster(self):
        """delete --expect-cluster refuses (nothing deleted) unless the node names that cluster."""
        self.put("temp", "alpha", "127.0.0.1:1")
        result = self.cli("routes", "delete", "temp", "--expect-cluster", "beta", "--yes")
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"refusing to delete: {self.root}/temp names cluster alpha, not beta", result.stderr)
        self.assertIsNotNone(self.zk.exists(f"{self.root}/temp"))
        result = self.cli("routes", "delete", "temp", "--expect-cluster", "alpha", "--yes")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIsNone(self.zk.exists(f"{self.root}/temp"))

    def test_bad_target(self):
        """A bad --meta-addrs or table name is a usage error (exit 2)."""
        result = self.cli("routes", "set", "temp", "--cluster-name", "x", "--meta-addrs", "a:99999", "--yes")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--meta-addrs: 'a:99999': port must be 1..65535", result.stderr)
        self.assertEqual(self.cli("routes", "get", "a/b").returncode, 2)


class SwitchTests(RoutesTestCase):
    def test_dead_cluster_refused(self):
        """A switch to a cluster whose metas do not answer exits 1 and leaves the node unchanged."""
        alpha = simulator()
        self.put("temp", "alpha", addrs(alpha))
        before = self.node("temp")
        dead = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
        result = self.cli(
            "routes", "switch", "temp", "--cluster-name", "dead", "--meta-addrs", dead, "--yes", "--target-timeout", "600"
        )  # refused: at once (a 600 s wait would end the test by its own timeout)
        self.assertEqual(result.returncode, 1)
        self.assertIn("refusing to switch: target cluster dead did not answer for temp", result.stderr)
        self.assertIn("refused the connection", result.stderr)
        self.assertIn("unchanged", result.stderr)
        self.assertEqual(self.node("temp"), before)

    def test_switch_away_from_dead_cluster(self):
        """
        An emergency switch away from a cluster that refuses connections
        goes ahead: the current cluster is reported, not waited for.
        """
        alpha = simulator()
        self.put("temp", "dead", f"127.0.0.1:{free_port()}")
        result = self.cli(
            "routes", "switch", "temp", "--cluster-name", "alpha", "--meta-addrs", addrs(alpha), "--yes",
            "--current-timeout", "600",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("current cluster dead: 127.0.0.1:", result.stdout)
        self.assertIn("refused the connection", result.stdout)
        self.assertEqual(self.node("temp")[0]["cluster_name"], "alpha")

    def test_cluster_without_table_refused(self):
        """A live target cluster that does not have the table is refused, naming the error."""
        alpha = simulator()
        self.put("nosuch", "alpha", addrs(alpha))
        result = self.cli("routes", "switch", "nosuch", "--cluster-name", "beta", "--meta-addrs", addrs(beta()), "--yes")
        self.assertEqual(result.returncode, 1)
        self.assertIn("does not serve nosuch: ERR_OBJECT_NOT_FOUND", result.stderr)
        self.assertEqual(self.node("nosuch")[1], 0)

    def test_dry_run_writes_nothing(self):
        """--dry-run validates and prints the differences, and writes nothing."""
        alpha, b = simulator(), beta()
        self.put("temp", "alpha", addrs(alpha))
        before = self.node("temp")
        result = self.cli("routes", "switch", "temp", "--cluster-name", "beta", "--meta-addrs", addrs(b), "--dry-run")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("app_id: 2 -> 7\n", result.stdout)
        self.assertIn("partition_count: 8 -> 16 (differs", result.stdout)
        self.assertIn("dry run: nothing written", result.stdout)
        self.assertEqual(self.node("temp"), before)

    def test_expect_cluster(self):
        """--expect-cluster refuses when the current cluster_name differs."""
        alpha, b = simulator(), beta()
        self.put("temp", "alpha", addrs(alpha))
        result = self.cli(
            "routes", "switch", "temp", "--cluster-name", "beta", "--meta-addrs", addrs(b), "--expect-cluster", "gamma", "--yes"
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("names cluster alpha, not gamma", result.stderr)
        self.assertEqual(self.node("temp")[1], 0)

    def test_switch_through_running_proxy(self):
        """
        A switch to a live cluster with another app_id succeeds, and a query
        through a running metaproxy then returns the new app_id.
        """
        alpha, b = simulator(), beta()
        self.put("temp", "alpha", addrs(alpha))
        via = self.start_proxy()
        result = self.cli(
            "routes", "switch", "temp", "--cluster-name", "beta", "--meta-addrs", addrs(b), "--expect-cluster", "alpha", "--yes"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("before: cluster_name=alpha", result.stdout)
        self.assertIn("after:  cluster_name=beta", result.stdout)
        self.assertIn("written:", result.stdout)
        self.assertEqual(self.node("temp"), ({"cluster_name": "beta", "meta_addrs": str(MetaAddrs.parse(addrs(b)))}, 1))
        deadline = time.monotonic() + 20
        while True:  # the proxy learns of the change through its watch
            answer = run_cli(*via)
            if answer.returncode == 0 and json.loads(answer.stdout)["app_id"] == 7:
                break
            self.assertLess(time.monotonic(), deadline, f"still {answer.stdout} {answer.stderr}")
            time.sleep(0.2)
        self.assertEqual(json.loads(answer.stdout)["partition_count"], 16)

    def test_compare_and_set_refuses_concurrent_change(self):
        """
        When another writer changes the node between the read and the write
        (while the switch waits for confirmation on a terminal), the write is
        refused and the other writer's route is kept.
        """
        alpha, b = simulator(), beta()
        self.put("temp", "alpha", addrs(alpha))
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        proc = subprocess.Popen(
            cli_argv() + ["routes", "switch", "temp", "--config", self.config, "--cluster-name", "beta", "--meta-addrs", addrs(b)],
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
        )
        os.close(slave)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        seen, deadline = b"", time.monotonic() + 60
        while b"[y/N]" not in seen:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            self.assertLess(time.monotonic(), deadline, f"no prompt: {seen!r}")
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    self.fail(f"no prompt: {seen!r} {proc.stderr.read()!r}")
                seen += chunk
        self.put("temp", "gamma", "127.0.0.1:9")  # the concurrent writer
        os.write(master, b"y\n")
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 1)
        self.assertIn(f"{self.root}/temp changed since it was read (version 0); nothing written", err.decode())
        self.assertEqual(self.node("temp"), ({"cluster_name": "gamma", "meta_addrs": "127.0.0.1:9"}, 1))


class RouteStoreTests(RoutesTestCase):
    """L{RouteStore}'s compare-and-set, directly against the real ZooKeeper."""

    def test_stale_version_conflicts(self):
        """write and delete with a version that is no longer current raise Conflict and change nothing."""
        config = parse_config(open(self.config).read(), self.config)
        self.put("temp", "alpha", "127.0.0.1:1")
        with RouteStore(config.zookeeper, 10.0) as store:
            node = store.get("temp")
            self.put("temp", "other", "127.0.0.1:2")
            route = Route("beta", MetaAddrs.parse("127.0.0.1:3"))
            self.assertRaises(Conflict, store.write, "temp", route, node.version)
            self.assertRaises(Conflict, store.delete, "temp", node.version)
            self.assertRaises(Conflict, store.write, "temp", route, None)  # it exists now
            written = store.write("temp", route, node.version + 1)
        self.assertEqual(written.version, 2)
        self.assertEqual(self.node("temp")[0]["cluster_name"], "beta")
        self.assertTrue(issubclass(Conflict, CommandError))
