# -*- test-case-name: metaproxy.test.test_config -*-
"""
Tests for L{metaproxy.config}: strict loading, located errors, Go compatibility.
"""

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st
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
        self.assertEqual(c.timeouts.client_default, 1.5)
        self.assertIsNone(c.zookeeper)
        self.assertEqual(c.routes["temp"].meta_addrs, "127.0.0.1:34601")

    def test_demo_config_loads(self):
        """The shipped demo and sample configs load."""
        import os

        here = os.path.dirname(os.path.abspath(__file__))
        source = os.environ.get("METAPROXY_SOURCE_DIR") or os.path.join(here, "..", "..", "..")
        etc = os.path.join(source, "etc")
        if not os.path.isdir(etc):
            raise self.skipTest("set METAPROXY_SOURCE_DIR to the source checkout (.ci/run does)")
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

    def test_unknown_reporter(self):
        """A metric.type naming no installed reporter is located, naming those that exist."""
        msg = self.error(ROUTES + "metric: {type: statsd}\n")
        self.assertIn("bad.yaml:3:16: no metric reporter 'statsd'", msg)
        self.assertIn("prometheus", msg)

    def test_non_finite_numbers(self):
        """.inf and .nan are not durations."""
        msg = self.error(ROUTES + "drain_timeout: .inf\ntimeouts: {connect: .nan}\n")
        self.assertIn("bad.yaml:3:16: expected a finite number, got inf", msg)
        self.assertIn("bad.yaml:4:21: expected a finite number, got nan", msg)

    def test_bool_tag_and_empty_cluster_name(self):
        """A boolean tag value and an empty cluster name are errors, each located."""
        self.assertIn(
            "bad.yaml:3:16: tag 'a': expected a string or number value",
            self.error(ROUTES + "metric: {tags: {a: true}}\n"),
        )
        self.assertIn(
            "bad.yaml:1:28: must not be empty",
            self.error("routes: {t: {cluster_name: '', meta_addrs: 'a:1'}}\n"),
        )

    def test_non_string_keys(self):
        """Keys that are not strings are reported, not a crash."""
        msg = self.error("1: a\nb: c\n")
        self.assertIn("bad.yaml:1:1: unknown key 1", msg)
        self.assertIn("bad.yaml:2:1: unknown key 'b'", msg)

    def test_null_required_key(self):
        """A required key given as null is a type error at its value."""
        self.assertIn(
            "bad.yaml:1:21: expected a list of host:port",
            self.error("zookeeper: {address: }\n"),
        )

    def test_missing_required_key(self):
        """A missing required key is reported at the mapping that lacks it."""
        self.assertIn(
            "bad.yaml:1:12: required key 'address' is missing",
            self.error("zookeeper: {root: /x}\n"),
        )


class RouteFormsTests(SynchronousTestCase):
    def test_meta_addrs_list_is_joined(self):
        """meta_addrs may be a YAML list; it is stored as one 'h:p,h:p' string."""
        c = parse_config("routes:\n  t: {cluster_name: c, meta_addrs: ['a:1', 'b:2']}\n", "r.yaml")
        self.assertEqual(c.routes["t"].meta_addrs, "a:1,b:2")

    def test_go_address_string(self):
        """zookeeper.address may be one 'h:p,h:p' string, as some Go configs have."""
        c = parse_config("zookeeper:\n  address: 'z1:2181, z2:2181'\n", "z.yaml")
        self.assertEqual(c.zookeeper.address, ("z1:2181", "z2:2181"))


_LOCATED = re.compile(r"^bad\.yaml:\d+:\d+: \S")
_KEYS = [
    "listen", "admin", "zookeeper", "address", "root", "timeout", "routes", "temp", "cluster_name",
    "meta_addrs", "simulator", "clusters", "metas", "tables", "partition_count", "metric", "type",
    "tags", "falcon", "timeouts", "limits", "logging", "level", "file", "drain_timeout", "x",
]
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70000), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["127.0.0.1:34601", "tcp:0", "a:1,b:2", "", "none", "k=v", "info"]),
)
_DOCS = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
    max_leaves=12,
)


class NoTracebackTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(_DOCS)
    def test_any_document_loads_or_gives_located_errors(self, doc):
        """Whatever the document, the result is a Config or a ConfigError whose every line is located."""
        try:
            parse_config(json.dumps(doc, indent=1), "bad.yaml")
        except ConfigError as e:
            for line in str(e).splitlines():
                self.assertRegex(line, _LOCATED)


class TagNameTests(SynchronousTestCase):
    def test_bad_tag_name_is_located(self):
        """A tag that cannot be a Prometheus label is a located config error, not a traceback later."""
        e = self.assertRaises(ConfigError, parse_config, ROUTES + "metric:\n  tags: {service-name: x}\n", "t.yaml")
        self.assertIn("t.yaml:4:", str(e))
        self.assertIn("'service-name' is not a valid label name", str(e))
