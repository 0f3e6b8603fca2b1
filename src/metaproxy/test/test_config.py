# -*- test-case-name: metaproxy.test.test_config -*-
"""
Tests for L{metaproxy.config}: strict loading, located errors, Go compatibility.
"""

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metaproxy import config
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
        self.assertEqual(c.admin.listen, "tcp:24601:interface=127.0.0.1")

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
        self.assertEqual(c.timeouts.client_default, 1.8)
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
        self.assertIn("bad.yaml:4:27: must be 1024..2147483647", msg)

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

    def test_stale_if_error(self):
        """stale_if_error defaults to 600 s, 0 is allowed (off), a negative value is a located error."""
        from metaproxy.config import parse_config

        self.assertEqual(parse_config(ROUTES).stale_if_error, 600.0)
        self.assertEqual(parse_config(ROUTES + "stale_if_error: 0\n").stale_if_error, 0.0)
        msg = self.error(ROUTES + "stale_if_error: -5\n")
        self.assertIn("bad.yaml:3:", msg)
        self.assertIn("stale_if_error", msg)
        self.assertIn("must be 0..86400", msg)

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
        """A required key given as null is a type error, located at its key."""
        self.assertIn(
            "bad.yaml:1:13: expected a list of host:port",
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


class OneRoundTests(SynchronousTestCase):
    """Every problem of a file comes in one round, in line order (issue 14)."""

    def error(self, text):
        return str(self.assertRaises(ConfigError, parse_config, text, "bad.yaml"))

    def test_type_unknown_and_semantic_problems_together(self):
        """A type error, an unknown key and a semantic error are all reported at once, sorted by line."""
        msg = self.error(
            ROUTES
            + "listen: 'foo:bar'\n"  # line 3: semantic
            + "limits: {max_connections: '5'}\n"  # line 4: type
            + "lgging: {level: info}\n"  # line 5: unknown key
            + "drain_timeout: -1\n"  # line 6: semantic
        )
        lines = msg.splitlines()
        self.assertEqual([line.split(":")[1] for line in lines], ["3", "4", "5", "6"])
        self.assertIn("not a valid Twisted endpoint", lines[0])
        self.assertIn("expected an integer", lines[1])
        self.assertIn("unknown key 'lgging' (did you mean 'logging'?)", lines[2])
        self.assertIn("must be 0..86400", lines[3])

    def test_did_you_mean_nested(self):
        """An unknown key inside a section suggests the closest key of that section."""
        msg = self.error(ROUTES + "zookeeper_x: 1\nlimits:\n  max_conections: 5\n")
        self.assertIn("bad.yaml:5:3: unknown key 'max_conections' (did you mean 'max_connections'?)", msg)

    def test_did_you_mean_in_every_section(self):
        """
        A misspelt key gets a suggestion in every section, also where the
        key it misspells is required (block style puts both messages at the
        same place, where only one is shown).
        """
        text = (
            "lsten: 'tcp:1'\n"
            "admin:\n  lsten: 'tcp:2'\n"
            "zookeeper:\n  adress: '127.0.0.1:2181'\n  rot: /mp\n"
            "simulator:\n  host_port: true\n  clusters:\n  - nme: a\n    metas: ['127.0.0.1:1']\n"
            "    tables:\n      t: {partition_cont: 4}\n"
            "metric:\n  tpe: none\n  falcon: {ur: 'http://x'}\n"
            "timeouts:\n  conect: 1\n"
            "limits:\n  max_frame_byte: 1\n"
            "logging:\n  levl: info\n"
            "drain_timout: 1\n"
        )
        msg = self.error(text)
        for typo, meant in (("lsten", "listen"), ("rot", "root"), ("host_port", "host_ports"),
                            ("partition_cont", "partition_count"), ("tpe", "type"), ("ur", "url"),
                            ("conect", "connect"), ("max_frame_byte", "max_frame_bytes"), ("levl", "level"),
                            ("drain_timout", "drain_timeout")):
            self.assertIn(f"unknown key '{typo}' (did you mean '{meant}'?)", msg)
        self.assertIn("bad.yaml:5:3: required key 'address' is missing (is 'adress' a misspelling of it?)", msg)
        self.assertIn("required key 'name' is missing (is 'nme' a misspelling of it?)", msg)
        routes = self.error("routes:\n  t:\n    cluster_nme: c\n    meta_addrs: '127.0.0.1:1'\n")
        self.assertIn("bad.yaml:3:5: required key 'cluster_name' is missing (is 'cluster_nme' a misspelling of it?)",
                      routes)

    def test_bare_port_in_listen(self):
        """A port alone as a listen endpoint (a number or a string) gets a hint: tcp:PORT."""
        msg = self.error(ROUTES + "listen: 34601\nadmin: {listen: '24601'}\n")
        self.assertIn("bad.yaml:3:9: expected a string, got integer 34601 (a bare port: did you mean 'tcp:34601'?)",
                      msg)
        self.assertIn("bad.yaml:4:17: not a valid Twisted endpoint: a bare port (did you mean 'tcp:24601'?)", msg)

    def test_failed_section_hides_no_other_problem(self):
        """A section that cannot be built still lets the other sections be judged."""
        msg = self.error("zookeeper: {address: 5}\nlimits: {max_frame_bytes: 1}\n")
        self.assertIn("bad.yaml:1:22: expected a list of host:port", msg)
        self.assertIn("bad.yaml:2:27: must be 1024..2147483647", msg)
        self.assertNotIn("give either", msg)


class NullSectionTests(SynchronousTestCase):
    def test_empty_sections_mean_defaults(self):
        """A section whose keys are all commented out (null) loads as its defaults."""
        c = parse_config(
            ROUTES + "admin:\n  # listen: tcp:1\nlimits:\nmetric:\n  falcon:\n  tags:\nlogging:\nsimulator:\n",
            "n.yaml",
        )
        self.assertEqual(c.admin.listen, "tcp:24601:interface=127.0.0.1")
        self.assertEqual(c.limits.max_frame_bytes, 1048576)
        self.assertEqual(c.metric.falcon.step, 60)
        self.assertEqual(dict(c.metric.tags), {})
        self.assertIsNone(c.simulator)

    def test_null_scalar_is_still_an_error(self):
        """A null where a value is needed (listen) is still an error, at its key."""
        e = self.assertRaises(ConfigError, parse_config, ROUTES + "listen:\n", "n.yaml")
        self.assertIn("n.yaml:3:1: expected a string, got null", str(e))


class HostileInputTests(SynchronousTestCase):
    """Inputs that broke the loader: each gets one located message (issue 14)."""

    def error(self, text):
        return str(self.assertRaises(ConfigError, parse_config, text, "bad.yaml"))

    def one(self, text):
        """@return: the only line of the ConfigError for C{text} (failing if there are more)."""
        lines = self.error(text).splitlines()
        self.assertEqual(len(lines), 1, lines)
        return lines[0]

    def test_alias_bomb_in_tags_is_bounded(self):
        """YAML aliases that expand to a huge structure give a short message, fast."""
        lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
        for i in range(1, 10):
            prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
            lines.append(f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
        text = ROUTES + "x_anchors:\n" + "".join(f"  {line}\n" for line in lines) + "metric:\n  tags: [*j, *j]\n"
        msg = self.error(text)
        self.assertLess(len(msg), 2000)
        self.assertIn("unknown key 'x_anchors'", msg)
        self.assertIn("bad.yaml:15:9: tag <list>: expected key=value", msg)

    def test_deep_nesting_is_located(self):
        """20 000-deep nesting is one located message, not a RecursionError."""
        msg = self.error(ROUTES + "admin: " + "[" * 20000 + "]" * 20000 + "\n")
        self.assertEqual(len(msg.splitlines()), 1)
        self.assertRegex(msg, r"^bad\.yaml:3:\d+: nested deeper than 32 levels")

    def test_moderate_nesting_is_located(self):
        """Nesting the YAML parser survives but the schema never needs is refused at its place."""
        msg = self.error(ROUTES + "admin: " + "[" * 40 + "]" * 40 + "\n")
        self.assertIn("bad.yaml:3:", msg)
        self.assertIn("nested deeper than 32 levels", msg)

    def test_log_file_is_a_directory(self):
        """logging.file naming a directory is located."""
        import os

        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        msg = self.one(ROUTES + f"logging: {{file: '{path}'}}\n")
        self.assertRegex(msg, r"^bad\.yaml:3:17: '/.*' is a directory; give a file path")

    def test_log_file_not_appendable(self):
        """
        logging.file naming something that exists but cannot take a log by
        appending (a /proc file refuses writes even for root; a FIFO is no
        regular file) is located, not left for twistd to die on.
        """
        import os

        msg = self.one(ROUTES + "logging: {file: /proc/version}\n")
        self.assertRegex(msg, r"^bad\.yaml:3:17: '/proc/version' cannot be (appended to|opened for appending)")
        fifo = os.path.abspath(self.mktemp())
        os.mkfifo(fifo)
        msg = self.one(ROUTES + f"logging: {{file: '{fifo}'}}\n")
        self.assertIn("bad.yaml:3:17: ", msg)
        self.assertIn("(No such device or address)", msg)
        regular = os.path.abspath(self.mktemp())
        with open(regular, "w") as f:
            f.write("kept\n")
        self.assertIsNone(config._log_file_problem(regular))
        with open(regular) as f:
            self.assertEqual(f.read(), "kept\n")

    def test_log_file_in_missing_directory(self):
        """logging.file whose directory does not exist (or is a file) is located."""
        msg = self.one(ROUTES + "logging:\n  file: /nonexistent-dir/metaproxy.log\n")
        self.assertIn("bad.yaml:4:9: directory '/nonexistent-dir' does not exist", msg)

    def test_zookeeper_timeout_range(self):
        """zookeeper.timeout beyond what kazoo can send is refused before it kills kazoo's thread."""
        msg = self.one("zookeeper:\n  address: 'a:1'\n  timeout: 3000000000\n")
        self.assertIn("bad.yaml:3:12: must be 1..86400000 (milliseconds)", msg)

    def test_port_ranges(self):
        """Listener and meta ports out of range are located."""
        msg = self.error("routes:\n  t: {cluster_name: c, meta_addrs: 'a:70000'}\nlisten: tcp:99999\n")
        self.assertIn("bad.yaml:2:36: 'a:70000': port must be 1..65535", msg)
        self.assertIn("bad.yaml:3:9: port 99999 is out of range 0..65535", msg)

    def test_huge_integer(self):
        """An integer beyond 64 bits is out of range, not a crash later."""
        msg = self.one(ROUTES + "limits: {max_connections: 1" + "0" * 40 + "}\n")
        self.assertIn("bad.yaml:3:27: integer", msg)
        self.assertIn("is out of range", msg)

    def test_unknown_tags_refused(self):
        """An unknown tag such as !Foo is refused, on a scalar and on a mapping."""
        msg = self.error(ROUTES + "listen: !Foo tcp:1\nadmin: !Bar {listen: 'tcp:2'}\n")
        self.assertEqual(len(msg.splitlines()), 2)
        self.assertIn("bad.yaml:3:9: unsupported YAML tag '!Foo'", msg)
        self.assertIn("bad.yaml:4:8: unsupported YAML tag '!Bar'", msg)

    def test_str_tag_accepted(self):
        """The standard !!str tag is allowed and gives a string."""
        c = parse_config(ROUTES + "metric: {tags: {build: !!str 123}}\n", "ok.yaml")
        self.assertEqual(dict(c.metric.tags), {"build": "123"})

    def test_warning_is_warn(self):
        """logging.level: warning is accepted and means warn (as the Go proxy and Python do)."""
        c = parse_config(ROUTES + "logging: {level: warning}\n", "ok.yaml")
        self.assertEqual(c.logging.level, "warn")
        self.assertIn("bad.yaml:3:18: must be one of", self.error(ROUTES + "logging: {level: loud}\n"))

    def test_many_problems_are_capped(self):
        """More than MAX_PROBLEMS problems list that many lines plus a count of the rest."""
        from metaproxy.config import MAX_PROBLEMS

        text = ROUTES + "".join(f"k{i}: 1\n" for i in range(MAX_PROBLEMS + 20))
        lines = self.error(text).splitlines()
        self.assertEqual(len(lines), MAX_PROBLEMS + 1)
        self.assertIn("... and 20 more problems", lines[-1])
        self.assertRegex(lines[-1], _LOCATED)

    def test_invalid_date(self):
        """A value the YAML reader itself cannot build (a date that does not exist) is located, not a traceback."""
        self.assertRegex(self.error(ROUTES + "listen: 2001-13-45\n"), _LOCATED)

    def test_null_or_list_where_a_mapping_belongs(self):
        """A null or a list where one route or cluster belongs says 'expected a mapping', located."""
        msg = self.error("routes:\n  t:\n  u: [1]\nsimulator:\n  clusters:\n    -\n")
        self.assertEqual(
            msg.splitlines(),
            [
                "bad.yaml:2:3: expected a mapping, got null @ $.routes['t']",
                "bad.yaml:3:6: expected a mapping, got list @ $.routes['u']",
                "bad.yaml:6:6: expected a mapping, got null @ $.simulator.clusters[0]",
            ],
        )

    def test_positionless_nodes(self):
        """Nodes ruamel keeps no position for (an !!omap) still get a located message, not a traceback."""
        self.assertIn("bad.yaml:1:9: expected a mapping, got integer", self.error("routes: !!omap [a: 1]\n"))


class SecurityConfigTests(SynchronousTestCase):
    """The C{security:} section (Kerberos)."""

    def test_defaults_change_nothing(self):
        """Without a security section nothing negotiates and clients get SASL_AUTH_DISABLE."""
        config = parse_config(ROUTES)
        self.assertEqual((config.security.principal, config.security.clients.enabled), ("", False))
        self.assertFalse(config.security.secures("c"))

    def test_full_section(self):
        """Every key loads; a single cluster name is taken as a list; secures() follows secured_clusters."""
        config = parse_config(ROUTES + (
            "security:\n  principal: mp@R\n  keytab: /k\n  service_fqdn: meta.example\n"
            "  secured_clusters: c1\n  clients: {enabled: true, mandatory: true, allow: [alice, 'bob/h@R']}\n"))
        sec = config.security
        self.assertEqual((sec.secured_clusters, sec.clients.allow), (("c1",), ("alice", "bob/h@R")))
        self.assertEqual((sec.secures("c1"), sec.secures("c2")), (True, False))
        self.assertTrue(parse_config(ROUTES + "security: {principal: mp@R, keytab: /k}\n").security.secures("any"))

    def test_simulator_auth_keys(self):
        """Simulated clusters take enable_auth, mandatory_auth, keytab and allow."""
        config = parse_config(ROUTES + (
            "simulator:\n  clusters:\n    - {name: s, metas: ['127.0.0.1:34611'], enable_auth: true,"
            " mandatory_auth: true, keytab: /k, allow: [metaproxy]}\n"))
        c = config.simulator.clusters[0]
        self.assertEqual((c.enable_auth, c.mandatory_auth, c.keytab, c.allow), (True, True, "/k", ("metaproxy",)))

    def test_problems_located(self):
        """Inconsistent settings are reported at their keys, all at once."""
        e = self.assertRaises(ConfigError, parse_config, ROUTES + (
            "security:\n  principal: mp@R\n  service_name: 'a/b'\n  renew_ratio: 0.99\n"
            "  clients: {mandatory: true}\n"), "bad.yaml")
        msg = str(e)
        self.assertIn("give the keytab", msg)
        self.assertIn("must be a plain service name", msg)
        self.assertIn("must be 0.5..0.95", msg)
        self.assertIn("needs security.clients.enabled: true", msg)

    def test_bad_allow_type(self):
        """allow must be names, not a mapping."""
        e = self.assertRaises(ConfigError, parse_config, ROUTES + "security:\n  clients: {allow: {a: 1}}\n", "bad.yaml")
        self.assertIn("expected a list of names", str(e))
