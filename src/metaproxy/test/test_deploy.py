# -*- test-case-name: metaproxy.test.test_deploy -*-
"""
Tests for the deployment artefacts shipped in C{etc/}: the systemd unit, the
Prometheus rules, the Grafana dashboard, and the wheel that carries them.

The external tools (C{promtool} from Debian's C{prometheus} package,
C{systemd-analyze} from C{systemd}) are run when present; without them the
tests skip and say what to install (C{.ci/run} installs both).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from metaproxy.testing import zookeeper
from metaproxy.testing.net import free_port, stop_process, twistd_argv, wait_for_port
from metaproxy.testing.pegasus_client import connect_client
from metaproxy.wire import codes, querycfg

#: The exposure `systemd-analyze security` may give the unit at most.
MAX_EXPOSURE = 3.5

#: A metric name in a PromQL expression: ours and prometheus_client's
#: collectors' (process_*, python_*), not recording rules (they contain ":").
_METRIC_NAME = re.compile(r"(?<![\w:])((?:metaproxy|process|python)_[A-Za-z0-9_]*)(?![\w:])")


def source_dir():
    """
    @return: the source checkout holding C{etc/} (C{METAPROXY_SOURCE_DIR},
        else three levels above this file).
    @raise SkipTest: when no checkout is found (an installed wheel alone).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    source = os.environ.get("METAPROXY_SOURCE_DIR") or os.path.join(here, "..", "..", "..")
    if not os.path.exists(os.path.join(source, "etc", "metaproxy.service")):
        raise SkipTest("set METAPROXY_SOURCE_DIR to the source checkout (.ci/run does)")
    return os.path.abspath(source)


def _tool(name, package):
    """@return: the path of the command C{name}; skip naming the Debian package if it is missing."""
    path = shutil.which(name)
    if path is None:
        raise SkipTest(f"{name} is not installed (apt-get install {package}; .ci/run installs it)")
    return path


def _run(argv, cwd=None, timeout=120):
    """@return: (exit status, stdout and stderr together) of C{argv}."""
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def _build_wheel(case, tree, out_dir):
    """
    @return: the path of the wheel C{pip wheel} builds from C{tree} into
        C{out_dir}; skip when this Python has no pip or pip cannot fetch the
        build requirements; fail C{case} on any other error.
    """
    rc, out = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out_dir, tree], timeout=300)
    if rc != 0 and "No module named pip" in out:
        raise SkipTest(f"{sys.executable} has no pip")
    if rc != 0 and "satisfies the requirement setuptools" in out:
        raise SkipTest(f"pip cannot fetch the build requirements (offline?): {out[-500:]}")
    case.assertEqual(rc, 0, out)
    [wheel] = os.listdir(out_dir)
    return os.path.join(out_dir, wheel)


def rules_exprs(path):
    """@return: the PromQL expression of every rule in a Prometheus rules file."""
    from ruamel.yaml import YAML

    with open(path) as f:
        doc = YAML(typ="safe").load(f)
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs(path):
    """
    @return: every PromQL expression of a Grafana dashboard: panel targets and
        the queries of template variables (C{label_values(EXPR, label)}).
    """
    with open(path) as f:
        doc = json.load(f)
    exprs = []
    for panel in doc["panels"]:
        exprs.extend(t["expr"] for t in panel.get("targets", ()))
    for var in doc["templating"]["list"]:
        if var.get("type") == "query":
            exprs.append(var["definition"])
    return exprs


def as_plain_promql(expr):
    """
    @return: C{expr} with Grafana's variables replaced, so that promtool
        can parse it: C{$__rate_interval} -> C{5m}, C{$var} -> C{x}, and
        C{label_values(E, l)} -> C{E}.
    """
    expr = expr.replace("$__rate_interval", "5m")
    expr = re.sub(r"\$\{?\w+\}?", "x", expr)
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", expr, re.S)
    return match.group(1) if match else expr


def metric_names(exprs):
    """@return: the set of metaproxy/process/python metric names in C{exprs}."""
    names = set()
    for expr in exprs:
        names.update(_METRIC_NAME.findall(expr))
    return names


#: The sample names a family of each type declares, from its base name.
_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("", "_count", "_sum"), "counter": ("", "_total")}


def sample_names(exposition):
    """
    @return: the sample names (C{_total}, C{_bucket} ... included) of a
        Prometheus text scrape: those with samples, and those a C{# TYPE}
        line declares (a labelled counter such as the backend errors has no
        sample until the first error, yet a query of it is valid).
    """
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.update(name + suffix for suffix in _SUFFIXES.get(kind.strip(), ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


class MetricNameHelperTests(SynchronousTestCase):
    def test_metric_names(self):
        """Metric names are found in PromQL; recording rule names, labels and functions are not."""
        exprs = [
            'sum by (table) (rate(metaproxy_query_answers_total{err="ERR_OK"}[5m]))',
            "table:metaproxy_query_answers:rate5m > 0",
            "histogram_quantile(0.99, sum by (le) (rate(metaproxy_query_latency_seconds_bucket[5m])))",
            "process_resident_memory_bytes / 1",
            'label_values(metaproxy_backend_up{job=~"$job"}, cluster_name)',
        ]
        self.assertEqual(
            metric_names(exprs),
            {
                "metaproxy_query_answers_total",
                "metaproxy_query_latency_seconds_bucket",
                "process_resident_memory_bytes",
                "metaproxy_backend_up",
            },
        )

    def test_sample_names(self):
        """Sample names are read from samples and from the families C{# TYPE} declares."""
        text = "# HELP a_total x\n# TYPE a_total counter\na_total{t=\"x\"} 1.0\nb 2\n# TYPE h histogram\n"
        self.assertEqual(sample_names(text), {"a_total", "a_total_total", "b", "h_bucket", "h_count", "h_sum"})

    def test_plain_promql(self):
        """Grafana variables become something promtool parses."""
        self.assertEqual(
            as_plain_promql('label_values(m{job=~"$job"}, instance)'),
            'm{job=~"x"}',
        )
        self.assertEqual(as_plain_promql("rate(m[$__rate_interval])"), "rate(m[5m])")


class PrometheusRulesTests(SynchronousTestCase):
    """etc/prometheus: the rules load, their unit tests pass, the dashboard's PromQL parses."""

    def setUp(self):
        self.promtool = _tool("promtool", "prometheus")
        self.dir = os.path.join(source_dir(), "etc", "prometheus")

    def test_check_rules(self):
        """C{promtool check rules} accepts metaproxy.rules.yml."""
        rc, out = _run([self.promtool, "check", "rules", "metaproxy.rules.yml"], cwd=self.dir)
        self.assertEqual(rc, 0, out)
        self.assertIn("SUCCESS", out)

    def test_rule_unit_tests(self):
        """C{promtool test rules} passes metaproxy.rules.test.yml (every alert fires when it should)."""
        rc, out = _run([self.promtool, "test", "rules", "metaproxy.rules.test.yml"], cwd=self.dir)
        self.assertEqual(rc, 0, out)
        self.assertIn("SUCCESS", out)

    def test_dashboard_promql_parses(self):
        """Every expression of the Grafana dashboard is valid PromQL (checked as recording rules)."""
        exprs = dashboard_exprs(os.path.join(source_dir(), "etc", "grafana", "metaproxy-dashboard.json"))
        rules = [{"record": f"dashboard:check:{i}", "expr": as_plain_promql(e)} for i, e in enumerate(exprs)]
        path = os.path.join(self.mktemp() + ".rules.json")
        with open(path, "w") as f:
            json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        rc, out = _run([self.promtool, "check", "rules", path])
        self.assertEqual(rc, 0, out)
        self.assertIn(f"SUCCESS: {len(rules)} rules found", out)


class DashboardTests(SynchronousTestCase):
    """etc/grafana/metaproxy-dashboard.json: what an operator gets."""

    def setUp(self):
        with open(os.path.join(source_dir(), "etc", "grafana", "metaproxy-dashboard.json")) as f:
            self.doc = json.load(f)

    def test_panels_and_variables(self):
        """At least 6 panels with queries, and datasource, instance and cluster_name variables."""
        panels = [p for p in self.doc["panels"] if p.get("targets")]
        self.assertGreaterEqual(len(panels), 6)
        names = {v["name"] for v in self.doc["templating"]["list"]}
        self.assertLessEqual({"datasource", "instance", "cluster_name"}, names)
        ids = [p["id"] for p in self.doc["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids must be unique")

    def test_backend_panels_select_cluster_name(self):
        """Every backend series the dashboard reads is filtered by the cluster_name variable."""
        for expr in dashboard_exprs(os.path.join(source_dir(), "etc", "grafana", "metaproxy-dashboard.json")):
            if "metaproxy_backend_" in expr and not expr.startswith("label_values"):
                self.assertIn('cluster_name=~"$cluster_name"', expr)


class SystemdUnitTests(SynchronousTestCase):
    """etc/metaproxy.service: valid for systemd, sandboxed, restarted whatever ended it."""

    def setUp(self):
        self.source = source_dir()
        with open(os.path.join(self.source, "etc", "metaproxy.service")) as f:
            self.unit = f.read()

    def _copy(self, pypy):
        """
        @return: the path of a copy of the unit whose ExecStart names an
            existing binary (verify checks it exists; /opt/metaproxy is not
            installed here), with the PyPy drop-in beside it if C{pypy}.
        """
        true = shutil.which("true")
        self.assertIsNotNone(true)
        unit, n = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={true}", self.unit)
        self.assertEqual(n, 1)
        where = tempfile.mkdtemp(prefix="mp-unit-")
        self.addCleanup(shutil.rmtree, where, True)
        path = os.path.join(where, "metaproxy.service")
        with open(path, "w") as f:
            f.write(unit)
        if pypy:
            os.mkdir(path + ".d")
            shutil.copy(os.path.join(self.source, "etc", "metaproxy.service.d", "pypy.conf"), path + ".d")
        return path

    def test_directives(self):
        """Restart=always, a logs directory, Type=notify with a watchdog, docs that the wheel installs."""
        for line in ("Restart=always", "LogsDirectory=metaproxy", "Type=notify", "MemoryDenyWriteExecute=yes"):
            self.assertIn(f"\n{line}\n", self.unit)
        self.assertRegex(self.unit, r"\nWatchdogSec=\d+")
        docs = re.findall(r"(?m)^Documentation=file:///opt/metaproxy/venv/share/doc/metaproxy/(\S+)$", self.unit)
        self.assertTrue(docs)
        for name in docs:
            self.assertTrue(os.path.exists(os.path.join(self.source, "docs", name)), name)

    def test_pypy_dropin_allows_the_jit(self):
        """The PyPy drop-in turns MemoryDenyWriteExecute off, and only that."""
        with open(os.path.join(self.source, "etc", "metaproxy.service.d", "pypy.conf")) as f:
            settings = [line for line in f.read().splitlines() if line and not line.startswith(("#", "["))]
        self.assertEqual(settings, ["MemoryDenyWriteExecute=no"])

    def test_verify(self):
        """C{systemd-analyze verify} passes without a single warning, with and without the PyPy drop-in."""
        analyze = _tool("systemd-analyze", "systemd")
        for pypy in (False, True):
            rc, out = _run([analyze, "verify", self._copy(pypy)])
            self.assertEqual((rc, out), (0, ""), f"pypy={pypy}")

    def test_security_exposure(self):
        """C{systemd-analyze security --offline=yes} rates the unit at most 3.5, PyPy drop-in included."""
        analyze = _tool("systemd-analyze", "systemd")
        for pypy in (False, True):
            rc, out = _run([analyze, "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}", self._copy(pypy)])
            match = re.search(r"Overall exposure level for metaproxy.service: (\d+\.\d+)", out)
            self.assertIsNotNone(match, out)
            exposure = float(match.group(1))
            self.assertLessEqual(exposure, MAX_EXPOSURE, f"pypy={pypy}: {out}")
            self.assertEqual(rc, 0, out)


class WheelTests(SynchronousTestCase):
    """The wheel carries the docs and the etc/ samples (installed under <prefix>/share)."""

    def test_wheel_data_files(self):
        """A wheel built from the checkout installs etc/ under share/metaproxy and the docs under share/doc."""
        source = source_dir()
        work = tempfile.mkdtemp(prefix="mp-wheel-")
        self.addCleanup(shutil.rmtree, work, True)
        copy = os.path.join(work, "src")
        shutil.copytree(
            source, copy,
            ignore=shutil.ignore_patterns(".git", ".venv*", ".tox", "build", "dist", "_trial_temp*", "*.egg-info", "__pycache__"),
        )
        wheel = _build_wheel(self, copy, os.path.join(work, "out"))
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
        data = {n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n}
        expected = {
            "share/metaproxy/etc/metaproxy.yaml",
            "share/metaproxy/etc/demo.yaml",
            "share/metaproxy/etc/metaproxy.service",
            "share/metaproxy/etc/metaproxy.service.d/pypy.conf",
            "share/metaproxy/etc/prometheus/metaproxy.rules.yml",
            "share/metaproxy/etc/prometheus/metaproxy.rules.test.yml",
            "share/metaproxy/etc/grafana/metaproxy-dashboard.json",
            "share/doc/metaproxy/README.rst",
            "share/doc/metaproxy/CHANGELOG.rst",
            "share/doc/metaproxy/architecture.rst",
            "share/doc/metaproxy/operations.rst",
            "share/doc/metaproxy/troubleshooting.rst",
            "share/doc/metaproxy/performance.rst",
        }
        self.assertLessEqual(expected, data, sorted(data))
        self.assertTrue([n for n in names if n.endswith("dist-info/LICENSE") or "dist-info/licenses/LICENSE" in n])
        self.assertTrue([n for n in names if n.endswith("NOTICE")])


class ScrapeTests(TestCase):
    """
    Every metric name the dashboard and the rules use exists in a real scrape
    of the demo (C{twistd metaproxy} with the demo's simulated cluster, its
    routes in a real ZooKeeper, after a few client queries).
    """

    timeout = 90

    def _config(self, zk_hosts, root):
        """@return: the path of the demo config on free ports, routes in ZooKeeper under C{root}."""
        from ruamel.yaml import YAML

        yaml = YAML()
        with open(os.path.join(source_dir(), "etc", "demo.yaml")) as f:
            config = yaml.load(f)
        self.port, self.admin = free_port(), free_port()
        config["listen"] = f"tcp:{self.port}:interface=127.0.0.1"
        config["admin"]["listen"] = f"tcp:{self.admin}:interface=127.0.0.1"
        [cluster] = config["simulator"]["clusters"]
        cluster["metas"] = [f"127.0.0.1:{free_port()}" for _ in cluster["metas"]]
        self.tables = {t: {"cluster_name": cluster["name"], "meta_addrs": ",".join(cluster["metas"])}
                       for t in config.pop("routes")}
        config["zookeeper"] = {"address": [zk_hosts], "root": root}
        path = os.path.abspath(self.mktemp() + ".yaml")
        with open(path, "w") as f:
            yaml.dump(config, f)
        return path

    def _write_routes(self, hosts, root):
        from kazoo.client import KazooClient

        zk = KazooClient(hosts=hosts)
        zk.start(timeout=15)
        try:
            for table, route in self.tables.items():
                zk.create(f"{root}/{table}", json.dumps(route).encode(), makepath=True)
        finally:
            zk.stop()
            zk.close()

    def _start(self, path):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.log = open(os.path.join(workdir, "twistd.out"), "w+b")
        self.addCleanup(self.log.close)
        proc = subprocess.Popen(
            twistd_argv() + ["metaproxy", f"--config={path}"],
            cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT,
        )

        self.addCleanup(stop_process, proc, 20)
        try:
            wait_for_port(self.port, proc)
            wait_for_port(self.admin, proc)
        except RuntimeError as e:
            self.fail(f"twistd did not start ({e}): {self._output()}")
        return proc

    def _output(self):
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-3000:]

    @defer.inlineCallbacks
    def _query_until_ok(self):
        """
        Query each table (and one unknown) until the demo tables answer
        ERR_OK, then one burst: labelled and coalescing series then exist.
        """
        client = yield connect_client(reactor, "127.0.0.1", self.port)
        try:
            for _ in range(100):
                errs = []
                for table in list(self.tables) + ["no_such_table"]:
                    response = yield client.query(table)
                    errs.append(querycfg.peek_result(response.body).err if response.body else response.rpc_error)
                if errs == [codes.ERR_OK] * len(self.tables) + [codes.ERR_OBJECT_NOT_FOUND]:
                    # A pipelined burst for one table: all but the first are coalesced.
                    yield defer.gatherResults([client.query("temp") for _ in range(10)])
                    return
                yield task.deferLater(reactor, 0.1, lambda: None)
            self.fail(f"the demo never answered its tables: last answers {errs}")
        finally:
            client.transport.loseConnection()

    @defer.inlineCallbacks
    def _scrape(self):
        """Start the demo with its routes in ZooKeeper, query it, and fire with the text of /metrics."""
        reason = zookeeper.available()
        if reason:
            raise SkipTest(reason)
        server = zookeeper.shared_server()
        root = f"/metaproxy-test-deploy-{os.getpid()}-{self.id().rsplit('.', 1)[-1]}"
        path = self._config(server.hosts, root)
        self._write_routes(server.hosts, root)
        self._start(path)
        yield self._query_until_ok()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as r:
            return r.read().decode()

    @defer.inlineCallbacks
    def test_backend_series_are_labelled_by_cluster_name(self):
        """The backend series the dashboard selects by C{cluster_name} carry the route's cluster name."""
        text = yield self._scrape()
        lines = [line for line in text.splitlines() if line.startswith("metaproxy_backend_call_seconds_count{")]
        self.assertTrue(lines, "no metaproxy_backend_call_seconds_count sample after answered queries")
        self.assertTrue(
            [line for line in lines if 'cluster_name="onebox"' in line],
            f"no backend sample labelled cluster_name=\"onebox\": {lines}",
        )

    @defer.inlineCallbacks
    def test_referenced_metrics_exist(self):
        """Every metric the dashboard and the rules reference is in a scrape of the running demo."""
        source = source_dir()
        scraped = sample_names((yield self._scrape()))
        wanted = {}
        for where, exprs in (
            ("etc/grafana/metaproxy-dashboard.json",
             dashboard_exprs(os.path.join(source, "etc", "grafana", "metaproxy-dashboard.json"))),
            ("etc/prometheus/metaproxy.rules.yml",
             rules_exprs(os.path.join(source, "etc", "prometheus", "metaproxy.rules.yml"))),
        ):
            for name in metric_names(exprs):
                wanted.setdefault(name, []).append(where)
        self.assertGreater(len(wanted), 20)
        missing = sorted(name for name in wanted if name not in scraped)
        self.assertEqual(
            missing, [],
            f"{len(missing)} of {len(wanted)} metric names used by the dashboard or the rules are not in a "
            "scrape of the demo:\n" + "\n".join(f"  {n}  (used by {', '.join(wanted[n])})" for n in missing),
        )


def _git(source, *args):
    """@return: git's output for C{args} in C{source}; skip when it is not a git checkout."""
    git = shutil.which("git")
    if git is None:
        raise SkipTest("git is not installed")
    rc, out = _run([git, "-C", source, *args])
    if rc != 0:
        raise SkipTest(f"{source} is not a git checkout: {out.strip()[-200:]}")
    return out.strip()


class VersionTests(SynchronousTestCase):
    """Every build says which commit it is (setuptools-scm)."""

    def test_installed_version_names_the_commit(self):
        """metaproxy installed from a checkout reports that checkout's commit (C{...+g<hash>})."""
        import metaproxy
        from metaproxy import __version__

        source = source_dir()
        if os.path.abspath(metaproxy.__file__).startswith(os.path.join(source, "src", "")):
            raise SkipTest("metaproxy is imported from the source tree, not installed from it")
        if "+g" not in __version__:
            raise SkipTest(f"metaproxy is not installed from a git checkout here (version {__version__})")
        head = _git(source, "rev-parse", "HEAD")
        local = __version__.split("+g", 1)[1].split(".", 1)[0]
        self.assertTrue(len(local) >= 7 and head.startswith(local), (__version__, head))

    def test_git_archive_builds_with_the_commit_in_its_version(self):
        """A wheel built from C{git archive HEAD} (no .git) carries HEAD's abbreviated hash in its version."""
        source = source_dir()
        head = _git(source, "rev-parse", "HEAD")
        work = tempfile.mkdtemp(prefix="mp-archive-")
        self.addCleanup(shutil.rmtree, work, True)
        tree = os.path.join(work, "tree")
        os.mkdir(tree)
        archive = os.path.join(work, "head.tar")
        _git(source, "archive", "-o", archive, "HEAD")
        rc, out = _run(["tar", "-xf", archive, "-C", tree])
        self.assertEqual(rc, 0, out)
        self.assertFalse(os.path.exists(os.path.join(tree, ".git")))
        wheel = _build_wheel(self, tree, os.path.join(work, "out"))
        version = os.path.basename(wheel).split("-")[1]
        self.assertIn(f"+g{head[:7]}", version)
