"""
Tests for L{metaproxy.config}: strict loading, located errors, Go compatibility.
"""

from twisted.trial.unittest import SynchronousTestCase

from metaproxy.config import ConfigError, load_config, parse_config

GO_CONFIG = """\
zookeeper:
  address: [127.0.0.1:22181,127.0.0.2:22181]
  root: /pegasus-cluster
  timeout: 1000 # ms
  table_watcher_cache_capacity: 1024

metric:
  type: falcon
  tags: [region=local_tst,service=meta_proxy]
"""

ROUTES = "routes:\n  temp: {cluster_name: c1, meta_addrs: '127.0.0.1:34601'}\n"


class GoCompatibilityTests(SynchronousTestCase):
    def test_go_config_loads_unchanged(self):
        """A Go meta-proxy config loads, with its meaning kept."""
        c = parse_config(GO_CONFIG, "go.yaml")
        self.assertEqual(c.zookeeper.address, ("127.0.0.1:22181", "127.0.0.2:22181"))
        self.assertEqual((c.zookeeper.root, c.zookeeper.timeout), ("/pegasus-cluster", 1000))
        self.assertEqual(c.zookeeper.table_watcher_cache_capacity, 1024)
        self.assertEqual((c.metric.type, dict(c.metric.tags)), ("falcon", {"region": "local_tst", "service": "meta_proxy"}))
        self.assertEqual(c.listen, "tcp:34601")
        self.assertEqual(c.admin.listen, "tcp:9091:interface=127.0.0.1")

    def test_root_without_slash_and_tags_mapping(self):
        """A root without a leading slash is normalised; tags may be a mapping."""
        c = parse_config(
            "zookeeper:\n  address: '127.0.0.1:2181'\n  root: pegasus-cluster/\nmetric:\n  tags: {region: x}\n", "x.yaml"
        )
        self.assertEqual(c.zookeeper.root, "/pegasus-cluster")
        self.assertEqual(c.zookeeper.address, ("127.0.0.1:2181",))
        self.assertEqual(dict(c.metric.tags), {"region": "x"})


class DefaultsTests(SynchronousTestCase):
    def test_safe_defaults(self):
        """Every new key has a safe default."""
        c = parse_config(ROUTES, "r.yaml")
        self.assertEqual(c.limits.max_frame_bytes, 1048576)
        self.assertEqual(c.limits.idle_timeout, 0.0)
        self.assertEqual(c.timeouts.client_default, 5.0)
        self.assertIsNone(c.zookeeper)
        self.assertEqual(c.routes["temp"].meta_addrs, "127.0.0.1:34601")

    def test_demo_config_loads(self):
        """The shipped demo and sample configs load."""
        import os

        here = os.path.dirname(os.path.abspath(__file__))
        etc = os.path.join(here, "..", "..", "..", "etc")
        if not os.path.isdir(etc):
            raise self.skipTest("not running from a source checkout")
        demo = load_config(os.path.join(etc, "demo.yaml"))
        self.assertEqual(demo.simulator.clusters[0].name, "onebox")
        sample = load_config(os.path.join(etc, "metaproxy.yaml"))
        self.assertIsNotNone(sample.zookeeper)


class ErrorTests(SynchronousTestCase):
    def error(self, text):
        e = self.assertRaises(ConfigError, parse_config, text, "bad.yaml")
        return str(e)

    def test_unknown_key_points_at_key(self):
        """A mistyped key is reported at its own line and column."""
        msg = self.error("zookeeper:\n  address: ['a:1']\n  sesion_timeout: 5\n")
        self.assertIn("bad.yaml:3:3: unknown key 'sesion_timeout'", msg)

    def test_wrong_types_are_not_coerced(self):
        """'5' is not an int and 'yes' is not a bool: each is reported, all at once."""
        msg = self.error(ROUTES + "limits:\n  max_connections: '5'\nmetric:\n  table_labels: yes\n")
        self.assertIn("bad.yaml:4:20: expected an integer, got str '5'", msg)
        self.assertIn("bad.yaml:6:17: expected true or false, got str 'yes'", msg)

    def test_bad_address(self):
        """A meta address without a port is located."""
        msg = self.error("routes:\n  t: {cluster_name: c, meta_addrs: 'nocolon'}\n")
        self.assertIn("bad.yaml:2:36: 'nocolon' is not host:port", msg)

    def test_bad_go_tag(self):
        """A Go-style tag without '=' is located."""
        msg = self.error(ROUTES + "metric:\n  tags: [novalue]\n")
        self.assertIn("bad.yaml:4:9: tag 'novalue': expected key=value", msg)

    def test_semantic_errors(self):
        """Well-typed but wrong values (endpoint, limits) are located."""
        msg = self.error(ROUTES + "listen: 'foo:bar'\nlimits: {max_frame_bytes: 10}\n")
        self.assertIn("bad.yaml:3:9: not a valid Twisted endpoint", msg)
        self.assertIn("bad.yaml:4:27: must be >= 1024", msg)

    def test_zookeeper_and_routes_exclusive(self):
        """zookeeper: and routes: together are refused; neither is refused too."""
        self.assertIn("exclusive", self.error(ROUTES + "zookeeper: {address: 'a:1'}\n"))
        self.assertIn("give either zookeeper:", self.error("listen: tcp:1\n"))

    def test_yaml_problems(self):
        """Syntax errors, duplicate keys, empty files and a non-mapping top level are one located line."""
        self.assertIn("bad.yaml:2:", self.error("routes: [a, b\nx: 1\n"))
        self.assertIn("duplicate key", self.error("listen: a\nlisten: b\n"))
        self.assertIn("bad.yaml:1:1: the file is empty", self.error(""))
        self.assertIn("bad.yaml:1:1: expected a mapping", self.error("- a\n- b\n"))

    def test_python_tags_not_executed(self):
        """A !!python tag is refused, never executed."""
        msg = self.error("zookeeper: !!python/object/apply:os.system ['touch /tmp/pwned-metaproxy']\n")
        self.assertIn("bad.yaml:1:12", msg)

    def test_missing_file(self):
        """A missing file gives a located message, not a traceback."""
        e = self.assertRaises(ConfigError, load_config, "/nonexistent/metaproxy.yaml")
        self.assertIn("/nonexistent/metaproxy.yaml:1:1: cannot read the file", str(e))

    def test_simulator_partition_count(self):
        """A simulated table's partition count must be a power of two."""
        msg = self.error(
            ROUTES + "simulator:\n  clusters:\n    - {name: x, metas: ['127.0.0.1:1'], tables: {t: {partition_count: 3}}}\n"
        )
        self.assertIn("must be a power of two", msg)
