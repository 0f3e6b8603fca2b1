# -*- test-case-name: metaproxy.test.test_cli_verify -*-
"""
Route loops refused where routes are written and where they are served:
C{RPC_CM_CLUSTER_INFO} on the wire, from the simulator (as a real meta) and
from metaproxy (never as a meta); C{routes set}, C{routes switch} and
C{check} against this proxy's address, another running metaproxy, a
non-meta and another cluster_name (real processes, real ZooKeeper); and a
running proxy fed a route to another metaproxy keeps its last good route.
"""

import json
import os
import time
import urllib.request

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.cli.verify import listen_address, target_problem
from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.sim.server import SimulatedCluster
from metaproxy.test.test_backend_cluster import FakeNetwork
from metaproxy.test.test_cli import simulator
from metaproxy.test.test_cli_routes import RoutesTestCase, addrs, beta
from metaproxy.testing.commandline import run_cli, start_metaproxy
from metaproxy.testing.net import free_port
from metaproxy.wire import clusterinfo
from metaproxy.wire.binary import DecodeError

METAS = ("127.0.0.1:34601", "127.0.0.1:34602")


class WireTests(SynchronousTestCase):
    """L{clusterinfo} encodes and decodes the IDL's response."""

    def test_round_trip(self):
        body = clusterinfo.encode_result("ERR_OK", {"cluster_name": "onebox", "meta_servers": "a:1,b:2"})
        self.assertEqual(body[:6], b"\x0c\x00\x00\x0c\x00\x01")
        info = clusterinfo.decode_result(body)
        self.assertEqual((info.err, info.cluster_name, info.is_metaproxy), ("ERR_OK", "onebox", False))

    def test_metaproxy_answer(self):
        """A metaproxy's answer is a final, client-safe error with the metaproxy key."""
        info = clusterinfo.decode_result(clusterinfo.metaproxy_result("metaproxy 0.1.0"))
        self.assertEqual((info.err, info.is_metaproxy, info.cluster_name), ("ERR_HANDLER_NOT_FOUND", True, None))

    def test_malformed(self):
        for body in (b"", b"\x0c\x00\x00\x00", b"\x0c\x00\x00\x0f\x00\x02\x0b\x00\x00\x00\x01\x00"):
            self.assertRaises(DecodeError, clusterinfo.decode_result, body)

    def test_listen_address(self):
        self.assertEqual(listen_address("tcp:34601:interface=127.0.0.1"), ("127.0.0.1", 34601))
        self.assertEqual(listen_address("tcp:port=5"), ("", 5))
        self.assertIsNone(listen_address("systemd:domain=INET:index=0"))


class SimulatorTests(SynchronousTestCase):
    """The simulator answers RPC_CM_CLUSTER_INFO like a real meta."""

    def test_leader_and_follower(self):
        clock = MemoryReactorClock()
        sim = SimulatedCluster(clock, METAS, cluster_name="onebox")
        sim.startService()
        net = FakeNetwork(clock)
        net.add(sim)
        answers = []
        conns = [net.connection_factory("127.0.0.1", p) for p in (34601, 34602)]
        for conn in conns:
            conn.start()
        net.flush()
        for conn in conns:
            d = conn.call(clusterinfo.CLUSTER_INFO, clusterinfo.REQUEST_ARGS, 1.0)
            d.addCallback(lambda r: answers.append(clusterinfo.decode_result(r.body)))
        net.flush()
        leader, follower = answers
        self.assertEqual((leader.err, leader.cluster_name), ("ERR_OK", "onebox"))
        self.assertEqual(leader.info["primary_meta_server"], "127.0.0.1:34601")
        self.assertEqual(follower.err, "ERR_FORWARD_TO_OTHERS")
        for conn in conns:
            conn.stop()
        sim.stopService()
        net.flush()

    def test_target_problem(self):
        """The verdicts: a metaproxy, no meta, another name, fine."""
        route = Route("onebox", MetaAddrs.parse("127.0.0.1:1,127.0.0.1:2"))
        ok = clusterinfo.ClusterInfo("ERR_OK", {"cluster_name": "onebox"})
        proxy = clusterinfo.decode_result(clusterinfo.metaproxy_result("metaproxy x"))
        forward = clusterinfo.ClusterInfo("ERR_FORWARD_TO_OTHERS")
        self.assertEqual(target_problem(route, [("a", forward, ""), ("b", ok, "")]), (None, ok))
        self.assertIn("b is a metaproxy", target_problem(route, [("a", ok, ""), ("b", proxy, "")])[0])
        self.assertIn("not a meta cluster", target_problem(route, [("a", None, "refused"), ("b", forward, "")])[0])
        other = clusterinfo.ClusterInfo("ERR_OK", {"cluster_name": "prod"})
        self.assertIn("cluster_name is 'prod', not 'onebox'", target_problem(route, [("a", other, "")])[0])


def _proxy_config(path, port, routes=None):
    with open(path, "w") as f:
        f.write(f"listen: tcp:{port}:interface=127.0.0.1\nadmin: {{listen: 'tcp:0:interface=127.0.0.1'}}\n"
                "metric: {type: none}\n")
        if routes is not None:
            f.write("routes:\n")
            for table, (name, metas) in routes.items():
                f.write(f"  {table}: {{cluster_name: {name}, meta_addrs: '{metas}'}}\n")
    return path


class LoopRefusalTests(RoutesTestCase):
    """C{routes set}, C{routes switch} and C{check} refuse loops (exit 3) and accept real metas."""

    def other_metaproxy(self):
        """@return: the address of another running metaproxy (static routes to beta)."""
        port = free_port()
        config = _proxy_config(os.path.abspath(self.mktemp() + "-other.yaml"), port,
                               routes={"temp": ("beta", addrs(beta()))})
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        proxy = start_metaproxy(workdir, config, port)
        self.addCleanup(proxy.stop)
        return f"127.0.0.1:{port}"

    def with_listen(self, port):
        """Give this test's config a client listening address."""
        with open(self.config, "a") as f:
            f.write(f"listen: tcp:{port}:interface=127.0.0.1\n")

    def test_set_verifies(self):
        """set writes a route to real metas of that name; another name is refused (exit 3, nothing written)."""
        alpha = addrs(simulator())
        good = self.cli("routes", "set", "temp", "--cluster-name", "alpha", "--meta-addrs", alpha, "--yes",
                        "--allow-world-writable")
        self.assertEqual(good.returncode, 0, good.stderr)
        self.assertIn("target ok", good.stdout)
        bad = self.cli("routes", "set", "stat", "--cluster-name", "gamma", "--meta-addrs", alpha, "--yes")
        self.assertEqual(bad.returncode, 3, bad.stderr)
        self.assertIn("say their cluster_name is 'alpha', not 'gamma'", bad.stderr)
        self.assertIsNone(self.zk.exists(f"{self.root}/stat"))

    def test_own_address_refused(self):
        """set (even --no-verify) and switch refuse this proxy's own listening address."""
        port = free_port()
        self.with_listen(port)
        self.put("temp", "alpha", addrs(simulator()))
        for args in (("set", "--yes"), ("set", "--yes", "--no-verify"), ("switch", "--yes")):
            result = self.cli("routes", args[0], "temp", "--cluster-name", "alpha", "--meta-addrs",
                              f"127.0.0.1:{port}", *args[1:])
            self.assertEqual(result.returncode, 3, result.stderr)
            self.assertIn(f"meta 127.0.0.1:{port} is this proxy's own listening address", result.stderr)
        self.assertEqual(self.node("temp")[1], 0)

    def test_other_metaproxy_refused(self):
        """set and switch refuse another running metaproxy (it never answers RPC_CM_CLUSTER_INFO as a meta)."""
        other = self.other_metaproxy()
        self.put("temp", "alpha", addrs(simulator()))
        for command in ("set", "switch"):
            result = self.cli("routes", command, "temp", "--cluster-name", "beta", "--meta-addrs", other, "--yes")
            self.assertEqual(result.returncode, 3, result.stderr)
            self.assertIn(f"{other} is a metaproxy (metaproxy ", result.stderr)
            self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(self.node("temp")[1], 0)

    def test_not_a_meta_refused(self):
        """
        A pegasus-sim meta that is not the leader (it forwards) alone is not
        a meta cluster: exit 3. Nothing listening: exit 1.
        """
        follower = f"127.0.0.1:{simulator().ports[1]}"
        result = self.cli("routes", "set", "temp", "--cluster-name", "alpha", "--meta-addrs", follower, "--yes")
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn("not a meta cluster", result.stderr)
        result = self.cli("routes", "set", "temp", "--cluster-name", "x", "--meta-addrs",
                          f"127.0.0.1:{free_port()}", "--yes", "--timeout", "2")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("answered RPC_CM_CLUSTER_INFO (127.0.0.1:", result.stderr)
        self.assertIsNone(self.zk.exists(f"{self.root}/temp"))

    def test_check(self):
        """check refuses a static route to its own address; --verify-routes also another metaproxy."""
        port = free_port()
        path = _proxy_config(os.path.abspath(self.mktemp() + ".yaml"), port,
                             routes={"temp": ("alpha", f"127.0.0.1:{port}")})
        result = run_cli("check", "--config", path)
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn("own listening address", result.stderr)
        other = self.other_metaproxy()
        _proxy_config(path, port, routes={"temp": ("beta", other), "stat": ("alpha", addrs(simulator()))})
        self.assertEqual(run_cli("check", "--config", path).returncode, 0)
        result = run_cli("check", "--config", path, "--verify-routes")
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn(f"route of temp: refusing {other}: {other} is a metaproxy", result.stderr)
        self.assertNotIn("route of stat", result.stderr)

    def test_running_proxy_keeps_last_good_route(self):
        """
        A node rewritten (by another tool) to point at another metaproxy:
        the running proxy keeps answering from the last good cluster and
        /routes reports the table stale with the loop.
        """
        self.put("temp", "alpha", addrs(simulator()))
        admin = free_port()
        via = self.start_proxy(admin)
        proxy = self.proxy
        other = self.other_metaproxy()
        self.put("temp", "beta", other)
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/routes", timeout=5) as page:
                rows = [r for r in json.load(page)["routes"] if r["table"] == "temp"]
            if rows and rows[0]["stale"] and "metaproxy" in (rows[0]["error"] or ""):
                break
            run_cli(*via)  # a query finds the loop
            self.assertLess(time.monotonic(), deadline, f"{rows} {proxy.output()[-3000:]}")
            time.sleep(0.3)
        self.assertEqual(rows[0]["cluster_name"], "alpha")
        answer = run_cli(*via)
        self.assertEqual((answer.returncode, json.loads(answer.stdout)["app_id"]), (0, 2), answer.stderr)
