# -*- test-case-name: metaproxy.test.test_zkacl -*-
"""
ZooKeeper digest credentials and ACLs against a real ZooKeeper
(L{metaproxy.testing.zookeeper}): C{metaproxy routes} writes with the
operator's credential and protects what it creates, an unauthenticated
client cannot change a route, C{metaproxy check} warns about a
world-writable tree, and a running C{twistd metaproxy} reads the tree with
its read-only credential. Commands run as subprocesses.
"""

import json
import os
import time
import uuid

from kazoo.exceptions import NoAuthError
from kazoo.security import ACL, ANYONE_ID_UNSAFE, Id, Permissions, make_digest_acl_credential
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metaproxy.routes import zkauth
from metaproxy.routes.zookeeper import ZooKeeperRouteTable
from metaproxy.test.test_cli import simulator
from metaproxy.test.test_cli_routes import addrs, beta
from metaproxy.test.test_zkroutes import wait_until
from metaproxy.testing.commandline import run_cli, start_metaproxy
from metaproxy.testing.net import free_port
from metaproxy.testing.zookeeper import quiet_client, shared_server

OPERATOR = "ops:op-secret-7f3a"
PROXY = "proxy:px-secret-91c2"


def _digest(secret):
    user, password = secret.split(":", 1)
    return make_digest_acl_credential(user, password)


class SecuredTreeTestCase(SynchronousTestCase):
    """A fresh root, credential files, and a config whose zookeeper.auth is the proxy's read-only credential."""

    def setUp(self):
        self.zk_server = shared_server()
        self.root = f"/acl-{uuid.uuid4().hex[:12]}"
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.operator_file = self.secret_file("operator", OPERATOR)
        self.proxy_file = self.secret_file("proxy", PROXY)
        self.config = self.write_config()
        self.anonymous = self.client()

    def secret_file(self, name, secret):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(secret + "\n")
        os.chmod(path, 0o600)
        return path

    def write_config(self, extra="", name="metaproxy.yaml", zk_extra=""):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(
                f"zookeeper:\n  address: '{self.zk_server.hosts}'\n  root: {self.root}\n"
                f"  auth: {{scheme: digest, credential_file: '{self.proxy_file}'}}\n{zk_extra}"
                f"metric: {{type: none}}\n{extra}"
            )
        return path

    def client(self, secret=None):
        """@return: a started kazoo client presenting C{secret} (digest), or none."""
        kw = {"auth_data": [("digest", secret)]} if secret else {}
        zk = quiet_client(self.zk_server.hosts, **kw)
        zk.start(timeout=15)
        self.addCleanup(zk.close)
        self.addCleanup(zk.stop)
        return zk

    def cli(self, *args, env=None):
        return run_cli(*args, "--config", self.config, env=env)

    def set_route(self, table, cluster, meta_addrs, *extra, env=None):
        # --no-verify: these tests are about the ACL, not the target (test_cli_verify)
        return self.cli("routes", "set", table, "--cluster-name", cluster, "--meta-addrs", meta_addrs, "--yes",
                        "--no-verify", *extra, env=env)

    def assertNoSecret(self, *texts):
        for text in texts:
            for secret in (OPERATOR, PROXY):
                self.assertNotIn(secret.split(":", 1)[1], text)


class RoutesWriteTests(SecuredTreeTestCase):
    def test_set_with_operator_credential_protects_the_node(self):
        """
        routes set with the operator's credential creates the root and the
        node with an ACL: the operator may do everything, the proxy only read.
        """
        result = self.set_route("temp", "alpha", "127.0.0.1:1", "--zk-credential-file", self.operator_file)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("acl:    digest:ops:...:cdrwa, digest:proxy:...:r", result.stdout)
        expected = [ACL(Permissions.ALL, Id("digest", _digest(OPERATOR))),
                    ACL(Permissions.READ, Id("digest", _digest(PROXY)))]
        admin = self.client(OPERATOR)
        for path in (self.root, f"{self.root}/temp"):
            self.assertEqual(sorted(admin.get_acls(path)[0]), sorted(expected), path)
        self.assertNoSecret(result.stdout, result.stderr)

    def test_unauthenticated_client_cannot_change_a_route(self):
        """On a tree routes created, a client without credential (or with the proxy's) can change nothing."""
        self.assertEqual(self.set_route("temp", "alpha", "127.0.0.1:1", env={"METAPROXY_ZK_CREDENTIAL": OPERATOR})
                         .returncode, 0)
        node = f"{self.root}/temp"
        data = json.dumps({"cluster_name": "evil", "meta_addrs": "127.0.0.1:6"}).encode()
        reader = self.client(PROXY)
        for zk in (self.anonymous, reader):
            self.assertRaises(NoAuthError, zk.set, node, data)
            self.assertRaises(NoAuthError, zk.delete, node)
            self.assertRaises(NoAuthError, zk.create, f"{self.root}/other", data)
            self.assertRaises(NoAuthError, zk.set_acls, node, [ACL(Permissions.ALL, ANYONE_ID_UNSAFE)])
        self.assertRaises(NoAuthError, self.anonymous.get, node)
        self.assertEqual(json.loads(reader.get(node)[0])["cluster_name"], "alpha")

    def test_write_without_operator_credential_is_refused_clearly(self):
        """
        routes set on a protected node with only the proxy's credential
        fails with NoAuth, naming the flag, no secret, and writes nothing.
        """
        self.set_route("temp", "alpha", "127.0.0.1:1", "--zk-credential-file", self.operator_file)
        result = self.set_route("temp", "beta", "127.0.0.1:2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("refused to change", result.stderr)
        self.assertIn("NoAuth", result.stderr)
        self.assertIn("as digest as proxy", result.stderr)
        self.assertIn("--zk-credential-file", result.stderr)
        self.assertNoSecret(result.stdout, result.stderr)
        self.assertEqual(json.loads(self.client(OPERATOR).get(f"{self.root}/temp")[0])["cluster_name"], "alpha")

    def test_delete_needs_the_operator_credential(self):
        """routes delete of a protected node is refused (NoAuth) without the operator's credential, done with it."""
        self.set_route("temp", "alpha", "127.0.0.1:1", "--zk-credential-file", self.operator_file)
        refused = self.cli("routes", "delete", "temp", "--yes")
        self.assertEqual(refused.returncode, 1)
        self.assertIn("NoAuth", refused.stderr)
        self.assertIn("nothing deleted", refused.stderr)
        done = self.cli("routes", "delete", "temp", "--yes", env={"METAPROXY_ZK_CREDENTIAL": OPERATOR})
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIsNone(self.client(OPERATOR).exists(f"{self.root}/temp"))

    def test_world_writable_creation_needs_the_flag(self):
        """
        Without an operator credential the new node would be world-writable:
        refused (nothing created) unless --allow-world-writable is given.
        """
        result = self.set_route("temp", "alpha", "127.0.0.1:1")
        self.assertEqual(result.returncode, 1)
        self.assertIn("refusing to create", result.stderr)
        self.assertIn("world:anyone:cdwa", result.stderr)
        self.assertIsNone(self.anonymous.exists(self.root))
        result = self.set_route("temp", "alpha", "127.0.0.1:1", "--allow-world-writable")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("warning: the new node would be world-writable", result.stdout)
        self.assertEqual(self.anonymous.get_acls(f"{self.root}/temp")[0], [ACL(Permissions.ALL, ANYONE_ID_UNSAFE)])

    def test_configured_world_writable_acl_needs_the_flag(self):
        """A zookeeper.acl that lets anyone write is refused too, even with the operator's credential."""
        self.config = self.write_config(
            "", "open.yaml", zk_extra=f"  acl: ['digest:{_digest(OPERATOR)}:cdrwa', 'world:anyone:rw']\n"
        )
        result = self.set_route("temp", "alpha", "127.0.0.1:1", "--zk-credential-file", self.operator_file)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn("world:anyone:w", result.stderr)
        self.assertIn("zookeeper.acl says so", result.stderr)
        self.assertIsNone(self.anonymous.exists(f"{self.root}/temp"))

    def test_set_on_a_world_writable_node_warns(self):
        """routes set on an existing node that anyone may change writes it and warns."""
        self.anonymous.create(f"{self.root}/temp", b'{"cluster_name": "a", "meta_addrs": "127.0.0.1:1"}',
                              makepath=True)
        result = self.set_route("temp", "beta", "127.0.0.1:2", "--zk-credential-file", self.operator_file)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"warning: {self.root}/temp is world-writable (world:anyone:cdrwa)", result.stdout)
        self.assertIn(f"warning: {self.root} is world-writable (world:anyone:cdrwa)", result.stdout)

    def test_new_node_under_an_open_root_warns(self):
        """A protected node created under a root anyone may change is written, with a warning about the root."""
        self.anonymous.create(self.root, b"")
        result = self.set_route("temp", "alpha", "127.0.0.1:1", "--zk-credential-file", self.operator_file)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"warning: {self.root} is world-writable", result.stdout)
        self.assertEqual(zkauth.world_writable(self.client(OPERATOR).get_acls(f"{self.root}/temp")[0]), "")


class CheckTests(SecuredTreeTestCase):
    def test_check_warns_on_a_world_writable_tree(self):
        """check warns (exit 0) when the root or route nodes let anyone write, and names the nodes."""
        data = b'{"cluster_name": "a", "meta_addrs": "127.0.0.1:1"}'
        self.anonymous.create(f"{self.root}/temp", data, makepath=True)
        self.anonymous.create(f"{self.root}/stat", data, acl=[ACL(Permissions.READ | Permissions.WRITE,
                                                                  ANYONE_ID_UNSAFE)])
        result = run_cli("check", "--config", self.config)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"warning: {self.root} is world-writable (world:anyone:cdwa)", result.stdout)
        self.assertIn(f"warning: 2 route node(s) under {self.root} are world-writable (world:anyone has cdwa): "
                      "stat, temp", result.stdout)

    def test_check_is_quiet_on_a_protected_tree(self):
        """check gives no warning on a tree routes created with the operator's credential."""
        self.set_route("temp", "alpha", "127.0.0.1:1", "--zk-credential-file", self.operator_file)
        result = run_cli("check", "--config", self.config)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("warning", result.stdout)
        self.assertIn("ok: routes from ZooKeeper", result.stdout)

    def test_check_warns_about_an_exposed_credential_file(self):
        """check warns when the credential file is readable by every user; --offline skips ZooKeeper."""
        os.chmod(self.proxy_file, 0o644)
        result = run_cli("check", "--offline", "--config", self.config)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"warning: zookeeper.auth.credential_file: {self.proxy_file} is readable by every user",
                      result.stdout)
        self.assertNoSecret(result.stdout)


class ProxyReadsTests(SecuredTreeTestCase):
    def start_proxy(self, name):
        """@return: C{(process, client port, admin port)} of a C{twistd metaproxy} reading with C{self.proxy_file}."""
        port, admin_port = free_port(), free_port()
        config = self.write_config(
            f"listen: tcp:{port}:interface=127.0.0.1\nadmin: {{listen: 'tcp:{admin_port}:interface=127.0.0.1'}}\n",
            f"{name}.yaml",
        )
        workdir = os.path.join(self.dir, f"{name}-run")
        os.makedirs(workdir)
        proxy = start_metaproxy(workdir, config, port)
        self.addCleanup(proxy.stop)
        return proxy, port, admin_port

    def test_proxy_reads_with_its_read_only_credential(self):
        """
        A running metaproxy whose zookeeper.auth is the read-only credential
        serves the protected tree and follows a switch made with the
        operator's credential; neither its log nor /routes shows a secret.
        """
        alpha, b = simulator(), beta()
        operator = ("--zk-credential-file", self.operator_file)
        self.assertEqual(self.set_route("temp", "alpha", addrs(alpha), *operator).returncode, 0)
        proxy, port, admin_port = self.start_proxy("proxy")
        via = ("resolve", "temp", "--via", f"127.0.0.1:{port}", "--json")
        first = run_cli(*via)
        self.assertEqual((first.returncode, json.loads(first.stdout or "{}").get("app_id")), (0, 2), first.stderr)
        result = self.cli("routes", "switch", "temp", "--cluster-name", "beta", "--meta-addrs", addrs(b),
                          "--yes", *operator)
        self.assertEqual(result.returncode, 0, result.stderr)
        deadline = time.monotonic() + 20
        while True:  # the proxy learns of the change through its watch, read with its credential
            answer = run_cli(*via)
            if answer.returncode == 0 and json.loads(answer.stdout)["app_id"] == 7:
                break
            self.assertLess(time.monotonic(), deadline, f"still {answer.stdout} {answer.stderr}")
            time.sleep(0.2)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/routes", timeout=10) as r:
            routes = r.read().decode()
        self.assertIn('"cluster_name": "beta"', routes)
        self.assertNoSecret(routes, proxy.output())
        self.assertIn("digest as proxy", proxy.output())

    def test_wrong_credential_is_not_ready_and_says_why(self):
        """
        A metaproxy whose credential the ACL does not admit is not ready,
        /readyz names NoAuth, a query gets an error (no hang), and the
        refusal is logged once, without the password.
        """
        self.assertEqual(self.set_route("temp", "alpha", "127.0.0.1:1", "--zk-credential-file",
                                        self.operator_file).returncode, 0)
        self.proxy_file = self.secret_file("wrong", "proxy:not-the-password")
        proxy, port, admin_port = self.start_proxy("wrong")
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=10)
                body = "ready"
            except urllib.error.HTTPError as e:
                body = e.read().decode()
            if "NoAuth" in body:
                break
            self.assertLess(time.monotonic(), deadline, body)
            time.sleep(0.2)
        answer = run_cli("resolve", "temp", "--via", f"127.0.0.1:{port}", "--timeout", "5")
        self.assertNotEqual(answer.returncode, 0)
        time.sleep(2.5)  # two more retries of the listing: still one log line
        self.assertEqual(proxy.output().count("refused: not allowed by the node's ACL (NoAuth)"), 1, proxy.output())
        self.assertNotIn("not-the-password", proxy.output() + body)


class RouteTableAuthTests(TestCase):
    """L{ZooKeeperRouteTable} in this process, reading a protected tree with a credential."""

    timeout = 60

    def setUp(self):
        self.zk_server = shared_server()
        self.root = f"/acl-{uuid.uuid4().hex[:12]}"
        self.ops = quiet_client(self.zk_server.hosts, auth_data=[("digest", OPERATOR)])
        self.ops.start(timeout=15)
        self.addCleanup(lambda: threads.deferToThread(lambda: (self.ops.stop(), self.ops.close())))
        self.acl = [ACL(Permissions.ALL, Id("digest", _digest(OPERATOR))),
                    ACL(Permissions.READ, Id("digest", _digest(PROXY)))]
        self.ops.create(f"{self.root}/temp", b'{"cluster_name": "c1", "meta_addrs": "10.0.0.1:34601"}',
                        acl=self.acl, makepath=True)

    def table(self, secret):
        routes = ZooKeeperRouteTable([self.zk_server.hosts], self.root, reactor, read_timeout=3.0,
                                     auth=zkauth.ZooKeeperAuth("digest", secret))
        routes.startService()
        self.addCleanup(routes.stopService)
        return routes

    @defer.inlineCallbacks
    def test_reads_with_its_credential(self):
        """With the read-only credential in the ACL, the route table is ready and serves the route."""
        routes = self.table(PROXY)
        yield wait_until(lambda: routes.is_ready() and routes._listing.names is not None)
        route = yield routes.lookup("temp")
        self.assertEqual(route.cluster_name, "c1")

    @defer.inlineCallbacks
    def test_refused_credential_heals_without_restart(self):
        """
        A credential the ACL does not admit: not ready, the cause names
        NoAuth; once the ACL admits it, the table becomes ready by itself.
        """
        routes = self.table("other:pw")
        yield wait_until(lambda: "NoAuth" in (routes.unready_reason() or ""))
        self.assertFalse(routes.is_ready())
        other = ACL(Permissions.READ, Id("digest", _digest("other:pw")))
        yield threads.deferToThread(self.ops.set_acls, self.root, self.acl + [other])
        yield threads.deferToThread(self.ops.set_acls, f"{self.root}/temp", self.acl + [other])
        yield wait_until(routes.is_ready)
        route = yield routes.lookup("temp")
        self.assertEqual(route.cluster_name, "c1")
