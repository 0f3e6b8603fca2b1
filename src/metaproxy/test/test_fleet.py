"""
The fleet (issue 27): registration in ZooKeeper, C{metaproxy fleet}, the
fleet-wide wait of C{routes set|switch|delete}, loop refusal.

The process tests run a real ZooKeeper (short session timeout), two
simulated meta clusters in this reactor and three C{twistd metaproxy}
processes; the CLI runs as C{python -m metaproxy.cli}.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metaproxy.cli.fleetreg import Instance, Probe, loop_problem, read_instances
from metaproxy.cli.fleetwait import _state
from metaproxy.config import ConfigError, parse_config
from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.testing.harness import start_cluster, stop_all
from metaproxy.testing.net import free_port
from metaproxy.testing.pegasus_client import connect_client
from metaproxy.testing.proxyproc import pid_alive, start_proxy
from metaproxy.testing.zookeeper import ZooKeeperServer, quiet_client
from metaproxy.wire import codes

ROOT = "/pegasus-cluster"
FLEET = "/metaproxy/instances"
SESSION_MS = 3000


class StateTests(SynchronousTestCase):
    """How one instance's C{/routes?table=} answer is judged after a write."""

    def test_newer_or_equal_mzxid_serves(self):
        self.assertTrue(_state(Probe("ok", {"mzxid": 10, "cluster_name": "c2"}), 10)[0])
        self.assertTrue(_state(Probe("ok", {"mzxid": 12, "cluster_name": "c2"}), 10)[0])

    def test_older_mzxid_is_a_straggler(self):
        ok, why = _state(Probe("ok", {"mzxid": 9, "cluster_name": "c1", "state": "stale"}), 10)
        self.assertFalse(ok)
        self.assertIn("from mzxid 9, not 10", why)

    def test_not_cached_serves(self):
        self.assertTrue(_state(Probe("not-cached"), 10)[0])
        self.assertTrue(_state(Probe("not-cached"), None)[0])

    def test_deleted_route_still_held(self):
        self.assertFalse(_state(Probe("ok", {"mzxid": 9, "cluster_name": "c1"}), None)[0])

    def test_no_mzxid_and_errors_are_stragglers(self):
        self.assertFalse(_state(Probe("ok", {"cluster_name": "c1"}), 10)[0])
        self.assertFalse(_state(Probe("ok", {"cluster_name": "c1", "mzxid": "11"}), 10)[0])
        ok, why = _state(Probe("error", why="no answer within 1s"), 10)
        self.assertEqual((ok, why), (False, "no answer within 1s"))


class LoopTests(SynchronousTestCase):
    """A route naming a registered instance's client address is refused."""

    def test_refused_by_address(self):
        fleet = [Instance("127.0.0.1:4000-1", {"address": "127.0.0.1:4000"})]
        problem = loop_problem(fleet, Route("x", MetaAddrs.parse("10.0.0.9:34601,127.0.0.1:4000")))
        self.assertIn("127.0.0.1:4000 is the metaproxy instance", problem)

    def test_refused_by_resolved_name(self):
        fleet = [Instance("n", {"address": "127.0.0.1:4000"})]
        self.assertIsNotNone(loop_problem(fleet, Route("x", MetaAddrs.parse("localhost:4000"))))

    def test_other_ports_pass(self):
        fleet = [Instance("n", {"address": "127.0.0.1:4000"})]
        self.assertIsNone(loop_problem(fleet, Route("x", MetaAddrs.parse("127.0.0.1:4001"))))


class ConfigTests(SynchronousTestCase):
    """The fleet keys are checked with located errors."""

    def _load(self, extra):
        return parse_config(f"zookeeper: {{address: [127.0.0.1:2181], root: /pegasus-cluster{extra}}}\n")

    def test_defaults(self):
        zk = self._load("").zookeeper
        self.assertEqual((zk.fleet_path, zk.fleet_advertise, zk.fleet_update_interval),
                         ("/metaproxy/instances", "", 1.0))

    def test_inside_root_refused(self):
        e = self.assertRaises(ConfigError, self._load, ", fleet_path: /pegasus-cluster/instances")
        self.assertIn("fleet_path", str(e))
        self.assertIn("outside zookeeper.root", str(e))

    def test_bad_advertise_and_interval(self):
        e = self.assertRaises(ConfigError, self._load, ", fleet_advertise: nohost, fleet_update_interval: 0")
        self.assertIn("fleet_advertise", str(e))
        self.assertIn("fleet_update_interval", str(e))

    def test_empty_disables(self):
        self.assertEqual(self._load(", fleet_path: ''").zookeeper.fleet_path, "")


def _cli(*argv, timeout=120):
    """@return: a Deferred firing with the C{subprocess.CompletedProcess} of C{python -m metaproxy.cli ARGV}."""
    return threads.deferToThread(
        subprocess.run, [sys.executable, "-m", "metaproxy.cli", *argv], capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def _until(condition, timeout, why):
    @defer.inlineCallbacks
    def wait():
        end = time.monotonic() + timeout
        while True:
            value = condition()  # may read ZooKeeper synchronously: a few ms, test code only
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(f"{why} after {timeout}s")
            yield task.deferLater(reactor, 0.05, lambda: None)

    return wait()


class _Listing(threading.Thread):
    """Reads the fleet listing every 20 ms (as C{metaproxy fleet} does) and keeps each sample's addresses."""

    def __init__(self, hosts):
        super().__init__(daemon=True)
        self.client = quiet_client(hosts)
        self.client.start(timeout=30)
        self.samples = []
        self.stopping = False

    def run(self):
        while not self.stopping:
            self.samples.append((time.monotonic(), [i.address for i in read_instances(self.client, FLEET, 10)]))
            time.sleep(0.02)

    def stop(self):
        self.stopping = True
        self.join(30)
        self.client.stop()
        self.client.close()


class FailoverClient:
    """
    A client that lists several proxy addresses, as Pegasus clients list
    their metas: an operation goes to the current address; on an error or
    a lost connection it moves to the next and retries there.
    """

    def __init__(self, ports, start=0, attempts=6, timeout=2.0):
        self.ports = list(ports)
        self.index = start % len(ports)
        self.attempts = attempts
        self.timeout = timeout
        self.conns = {}
        self.ok = self.failed = self.retries = 0

    @defer.inlineCallbacks
    def _conn(self, port):
        conn = self.conns.get(port)
        if conn is None or conn.closed.called:
            conn = yield connect_client(reactor, "127.0.0.1", port, "go", record=False)
            self.conns[port] = conn
        return conn

    @defer.inlineCallbacks
    def op(self, table):
        """One query_cfg, with fail-over; counts it as ok or failed."""
        for attempt in range(self.attempts):
            port = self.ports[self.index]
            try:
                conn = yield self._conn(port)
                response = yield conn.query(table).addTimeout(self.timeout, reactor)
                if response.rpc_error == codes.ERR_OK:
                    self.ok += 1
                    return
            except Exception:
                pass
            self.retries += 1
            self.index = (self.index + 1) % len(self.ports)
        self.failed += 1

    def close(self):
        for conn in self.conns.values():
            if not conn.closed.called:
                conn.transport.loseConnection()


class FleetProcessTests(TestCase):
    """Three metaproxy processes sharing one ZooKeeper."""

    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        self.zk = ZooKeeperServer(tick=200)
        yield threads.deferToThread(self.zk.start)
        self.addCleanup(self.zk.destroy)
        self.c1 = start_cluster(reactor, "c1", {"temp": 8})
        self.c2 = start_cluster(reactor, "c2", {"temp": 8})
        self.addCleanup(stop_all, self.c1, self.c2)
        self.admin = quiet_client(self.zk.hosts)
        yield threads.deferToThread(self.admin.start, 30)
        self.addCleanup(lambda: (self.admin.stop(), self.admin.close()))
        data = Route("c1", MetaAddrs.parse(self.c1.meta_addrs())).to_json()
        yield threads.deferToThread(self.admin.create, f"{ROOT}/temp", data, makepath=True)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.pids = []
        self.addCleanup(self._end_processes)
        self.instances = [self._start(i) for i in range(3)]
        yield _until(lambda: len(self._ready()) == 3, 90, "three ready instances not registered")
        self.config = self.instances[0]["config"]

    def _start(self, i):
        # Instance 2 (SIGSTOPped during a switch) keeps its session longer than the CLI takes on a busy machine.
        session_ms = SESSION_MS if i < 2 else 12000
        port, admin = free_port(), free_port()
        config = os.path.join(self.dir, f"mp{i}.yaml")
        with open(config, "w") as f:
            f.write(
                f"listen: 'tcp:{port}:interface=127.0.0.1'\n"
                f"admin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}\n"
                "metric: {type: none}\n"
                "logging: {level: info}\n"
                f"zookeeper: {{address: ['{self.zk.hosts}'], root: {ROOT}, timeout: {session_ms}, "
                "fleet_update_interval: 0.2}\n"
            )
        log = open(os.path.join(self.dir, f"mp{i}.log"), "ab")
        self.addCleanup(log.close)
        proc = start_proxy(config, self.dir, log)
        self.pids.append(proc.pid)
        return {"proc": proc, "port": port, "admin": admin, "config": config, "address": f"127.0.0.1:{port}",
                "log": os.path.join(self.dir, f"mp{i}.log")}

    def _listing(self):
        return {i.address: i for i in read_instances(self.admin, FLEET, 10)}

    def _ready(self):
        return [i for i in self._listing().values() if i.doc.get("ready")]

    @defer.inlineCallbacks
    def _end_processes(self):
        pids = set(self.pids)
        try:
            pids.update(i.doc.get("pid") for i in read_instances(self.admin, FLEET, 5) if i.doc.get("pid"))
        except Exception:
            pass
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 20
        while any(pid_alive(p) for p in pids) and time.monotonic() < end:
            for inst in self.instances:
                inst["proc"].poll()
            yield task.deferLater(reactor, 0.05, lambda: None)
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        for inst in self.instances:
            inst["proc"].poll()

    @defer.inlineCallbacks
    def _cache_everywhere(self):
        """Query C{temp} through every instance, so that each caches (and watches) it."""
        for inst in self.instances:
            client = yield connect_client(reactor, "127.0.0.1", inst["port"], "go", record=False)
            response = yield client.query("temp")
            client.transport.loseConnection()
            self.assertEqual(response.rpc_error, codes.ERR_OK)

    def _switch(self, cluster, *extra):
        return _cli("routes", "switch", "temp", "--config", self.config, "--cluster-name", cluster.cluster_name,
                    "--meta-addrs", cluster.meta_addrs(), "--yes", *extra)

    @defer.inlineCallbacks
    def test_listing_switch_and_loops(self):
        """
        C{metaproxy fleet} lists all 3; a switch waits until all 3 serve
        it; with one SIGSTOPped it names that one and exits 1; a route to
        an instance is refused.
        """
        listed = yield _cli("fleet", "--config", self.config, "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        rows = json.loads(listed.stdout)
        self.assertEqual(sorted(r["address"] for r in rows), sorted(i["address"] for i in self.instances))
        self.assertTrue(all(r["ready"] and r["version"] and r["uptime"] >= 0 for r in rows), rows)
        text = yield _cli("fleet", "--config", self.config)
        self.assertIn("routes_cached", text.stdout)
        print("\n" + text.stdout)

        yield self._cache_everywhere()
        t0 = time.monotonic()
        switched = yield self._switch(self.c2, "--fleet-timeout", "60")
        took = time.monotonic() - t0
        self.assertEqual(switched.returncode, 0, switched.stdout + switched.stderr)
        self.assertIn("fleet: all 3 instances serve it after", switched.stdout)
        print(f"\nhealthy switch: {switched.stdout.strip().splitlines()[-1]} (command: {took:.2f}s)")
        routes = yield _cli("fleet", "routes", "temp", "--config", self.config, "--json")
        self.assertEqual(routes.returncode, 0, routes.stderr)
        doc = json.loads(routes.stdout)
        self.assertEqual([r["cluster_name"] for r in doc["instances"]], ["c2"] * 3)
        self.assertTrue(all(r["current"] for r in doc["instances"]), doc)

        stopped = self.instances[2]
        os.kill(stopped["proc"].pid, signal.SIGSTOP)
        try:
            late = yield self._switch(self.c1, "--fleet-timeout", "3", "--probe-timeout", "1")
        finally:
            os.kill(stopped["proc"].pid, signal.SIGCONT)
        self.assertEqual(late.returncode, 1, late.stdout + late.stderr)
        stragglers = [line for line in late.stdout.splitlines() if "straggler" in line]
        self.assertEqual(len(stragglers), 1, late.stdout)
        self.assertIn(f"straggler {stopped['address']} ", stragglers[0])
        print(f"SIGSTOPped instance: {stragglers[0].strip()}")

        refused = yield _cli("routes", "set", "other", "--config", self.config, "--cluster-name", "loop",
                             "--meta-addrs", self.instances[1]["address"], "--yes")
        self.assertEqual(refused.returncode, 3, refused.stdout)
        self.assertIn(f"{self.instances[1]['address']} is the metaproxy instance", refused.stderr)
        exists = yield threads.deferToThread(self.admin.exists, f"{ROOT}/other")
        self.assertIsNone(exists)

        # The resumed instance catches up (a new session if its own expired); a delete waits for all 3.
        deleted = yield _cli("routes", "delete", "temp", "--config", self.config, "--yes", "--fleet-timeout", "60")
        self.assertEqual(deleted.returncode, 0, deleted.stdout + deleted.stderr)
        self.assertIn("fleet: all 3 instances serve it after", deleted.stdout)
        print(f"delete: {deleted.stdout.strip().splitlines()[-1]}")

    @defer.inlineCallbacks
    def test_upgrade_continuous_and_kill_under_load(self):
        """
        A SIGUSR2-upgraded instance stays listed throughout; a fail-over
        client over the 3 addresses loses no operation when one instance
        is SIGKILLed under load; the killed one leaves the listing within
        the session timeout.
        """
        upgraded = self.instances[1]
        old_pid = upgraded["proc"].pid
        listing = _Listing(self.zk.hosts)
        listing.start()
        try:
            t0 = time.monotonic()
            os.kill(old_pid, signal.SIGUSR2)
            yield _until(lambda: upgraded["proc"].poll() is not None, 90, "the old process did not exit")
            new = yield _until(
                lambda: [i for i in self._ready() if i.address == upgraded["address"] and i.doc["pid"] != old_pid],
                30, "the successor is not registered and ready")
            self.pids.append(new[0].doc["pid"])
            yield task.deferLater(reactor, 1.0, lambda: None)
        finally:
            yield threads.deferToThread(listing.stop)
        samples = listing.samples
        missing = [t - t0 for t, addresses in samples if upgraded["address"] not in addresses]
        self.assertGreater(len(samples), 20)
        self.assertEqual(missing, [], f"missing from the listing at these seconds after SIGUSR2: {missing[:10]}")
        print(f"\nupgrade: {len(samples)} listings over {samples[-1][0] - t0:.1f}s, address never missing; "
              f"old pid {old_pid} -> new pid {new[0].doc['pid']}")

        ports = [i["port"] for i in self.instances]
        clients = [FailoverClient(ports, start=n) for n in range(12)]
        victim = self.instances[0]
        stop_at = time.monotonic() + 5.0

        @defer.inlineCallbacks
        def worker(client):
            while time.monotonic() < stop_at:
                yield client.op("temp")

        work = defer.gatherResults([worker(c) for c in clients])
        yield task.deferLater(reactor, 1.5, lambda: None)
        killed_at = time.monotonic()
        os.kill(victim["proc"].pid, signal.SIGKILL)
        yield work
        for c in clients:
            c.close()
        ok, failed, retries = (sum(getattr(c, k) for c in clients) for k in ("ok", "failed", "retries"))
        self.assertGreater(ok, 100)
        self.assertEqual(failed, 0)
        print(f"SIGKILL under load: {ok} ops ok, {failed} failed, {retries} retried on another address")
        yield _until(lambda: victim["address"] not in self._listing(), 60, "the killed instance is still listed")
        gone = time.monotonic() - killed_at
        self.assertEqual(len(self._listing()), 2)
        print(f"SIGKILLed instance left the listing {gone:.2f}s after the kill (session timeout {SESSION_MS} ms)")


class _FakeZooKeeper:
    """Records requests; answers them from a dict of nodes owned by sessions."""

    def __init__(self):
        from metaproxy.routes.zkbridge import CONNECTED

        self.state = CONNECTED
        self.session = 1
        self.nodes = {}  # path -> (data, owner)
        self.requests = []
        self.listeners = []

    def session_id(self):
        return self.session

    def add_state_listener(self, listener):
        self.listeners.append(listener)

    def change(self, state, session):
        self.state, self.session = state, session
        for listener in self.listeners:
            listener(state, session)

    def create(self, path, value=b"", ephemeral=False, makepath=False):
        from kazoo.exceptions import NodeExistsError

        self.requests.append(("create", path))
        if path in self.nodes:
            return defer.fail(NodeExistsError())
        self.nodes[path] = (value, self.session)
        return defer.succeed(path)

    def set(self, path, value, version=-1):
        from kazoo.exceptions import NoNodeError

        self.requests.append(("set", path))
        if path not in self.nodes:
            return defer.fail(NoNodeError())
        self.nodes[path] = (value, self.nodes[path][1])
        return defer.succeed(None)

    def get(self, path, watch=None):
        class Stat:
            ephemeralOwner = self.nodes[path][1]

        return defer.succeed((self.nodes[path][0], Stat()))

    def delete(self, path, version=-1):
        self.requests.append(("delete", path))
        del self.nodes[path]
        return defer.succeed(None)


class RegistrationTests(SynchronousTestCase):
    """L{metaproxy.ops.fleet.FleetRegistration} against a fake ZooKeeper and a fake clock."""

    def setUp(self):
        from twisted.internet.task import Clock

        from metaproxy.ops.fleet import FleetRegistration

        self.clock = Clock()
        self.zk = _FakeZooKeeper()
        self.is_ready = False
        self.cached = 0
        self.reg = FleetRegistration(self.zk, self.clock, "/metaproxy/instances", lambda: self.is_ready,
                                     lambda: self.cached, interval=1.0, started=100.0, pid=42)
        self.reg.startService()
        self.addCleanup(self.reg.stopService)
        self.node = "/metaproxy/instances/127.0.0.1:4000-42"

    def doc(self):
        return json.loads(self.zk.nodes[self.node][0])

    def test_registers_once_advertised(self):
        self.assertEqual(self.zk.requests, [])
        self.reg.advertise("127.0.0.1:4000", "127.0.0.1:5000")
        self.assertTrue(self.reg.registered)
        doc = self.doc()
        self.assertEqual((doc["address"], doc["admin"], doc["pid"], doc["started"], doc["ready"]),
                         ("127.0.0.1:4000", "127.0.0.1:5000", 42, 100.0, False))

    def test_changes_written_at_most_once_per_interval(self):
        self.reg.advertise("127.0.0.1:4000", "127.0.0.1:5000")
        for n in range(10):  # ten changes within one interval
            self.is_ready, self.cached = True, n
            self.clock.advance(0.099)
        self.assertEqual(self.zk.requests, [("create", self.node)])
        self.clock.advance(0.02)  # the next check
        self.assertEqual(self.zk.requests, [("create", self.node), ("set", self.node)])
        self.assertEqual((self.doc()["ready"], self.doc()["routes_cached"]), (True, 9))
        self.clock.advance(5.0)  # nothing changed: nothing written
        self.assertEqual(len(self.zk.requests), 2)

    def test_new_session_registers_again(self):
        from metaproxy.routes.zkbridge import CONNECTED, LOST

        self.reg.advertise("127.0.0.1:4000", "127.0.0.1:5000")
        self.zk.change(LOST, None)
        self.zk.nodes.clear()  # the expired session's ephemeral node is gone
        self.zk.change(CONNECTED, 2)
        self.assertEqual(self.zk.nodes[self.node][1], 2)
        self.assertTrue(self.reg.registered)

    def test_node_of_an_earlier_session_replaced(self):
        from metaproxy.routes.zkbridge import CONNECTED

        self.zk.nodes[self.node] = (b"{}", 7)  # left by this process's earlier session, not expired yet
        self.reg.advertise("127.0.0.1:4000", "127.0.0.1:5000")
        self.assertEqual(self.zk.requests, [("create", self.node), ("delete", self.node), ("create", self.node)])
        self.assertEqual(self.zk.nodes[self.node][1], 1)
        self.zk.change(CONNECTED, 1)  # same session again: only what changed is written
        self.assertEqual(len(self.zk.requests), 3)

    def test_deleted_under_it_created_again(self):
        self.reg.advertise("127.0.0.1:4000", "127.0.0.1:5000")
        del self.zk.nodes[self.node]
        self.is_ready = True
        self.clock.advance(1.0)  # the set fails with NoNode
        self.assertFalse(self.reg.registered)
        self.clock.advance(1.0)
        self.assertTrue(self.reg.registered)
        self.assertTrue(self.doc()["ready"])
        self.assertEqual(self.reg.failures, 1)

    def test_stop_says_not_ready(self):
        self.is_ready = True
        self.reg.advertise("127.0.0.1:4000", "127.0.0.1:5000")
        self.assertTrue(self.doc()["ready"])
        self.successResultOf(defer.maybeDeferred(self.reg.stopService))
        self.assertFalse(self.doc()["ready"])

    def test_when_registered_bounded(self):
        from metaproxy.routes.zkbridge import LOST

        self.zk.change(LOST, None)
        results = []
        self.reg.when_registered(5.0).addCallback(results.append)
        self.reg.advertise("127.0.0.1:4000", "127.0.0.1:5000")
        self.clock.advance(5.0)
        self.assertEqual(results, [False])
        self.assertEqual(self.zk.requests, [])
