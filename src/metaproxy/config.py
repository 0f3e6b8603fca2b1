# -*- test-case-name: metaproxy.test.test_config -*-
"""
metaproxy's configuration: YAML in, frozen attrs objects out.

ruamel.yaml (round-trip loader: safe constructors, line and column kept)
reads the file; cattrs with strict hooks builds the objects; every problem
is reported as C{file:line:col: what is wrong}, all of them at once where
possible. A config written for the Go meta-proxy loads unchanged.

Durations of metaproxy's own keys are seconds (floats); the Go-compatible
C{zookeeper.timeout} is milliseconds, as it was there.
"""

import math
import re
import sys
from typing import Optional

import attrs
import cattrs
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from metaproxy.route import MetaAddrs, is_ip_literal, parse_host_port

if sys.version_info >= (3, 11):
    _ExceptionGroup = ExceptionGroup  # noqa: F821 (a builtin from 3.11)
else:  # cattrs depends on the backport below 3.11
    from exceptiongroup import ExceptionGroup as _ExceptionGroup


class ConfigError(Exception):
    """The configuration is unusable; C{str()} is the located message(s)."""


class HostList(tuple):
    """C{host:port} addresses, from a YAML list or a C{"a:p,b:p"} string."""


class Tags(dict):
    """Metric tags, from a mapping or a Go-style list of C{"k=v"} strings."""


class AddrString(str):
    """Meta addresses as one C{"a:p,b:p"} string (a YAML list is joined)."""


@attrs.frozen
class AdminConfig:
    """
    The admin HTTP listener.

    @ivar listen: a Twisted server endpoint string (checked to parse).
    """

    listen: str = "tcp:9091:interface=127.0.0.1"


@attrs.frozen
class ZooKeeperConfig:
    """
    Routes from ZooKeeper: node C{<root>/<table>} holds the table's route.

    @ivar address: ZooKeeper servers, C{host:port} each (at least one).
    @ivar root: the parent node, always with one leading and no trailing
        C{/} (a Go config's C{root: pegasus-cluster} is accepted).
    @ivar timeout: the ZooKeeper B{session} timeout in milliseconds (the Go
        proxy's key and unit); the server clamps it to 2..20 ticks.
    @ivar table_watcher_cache_capacity: tables cached and watched at once.
    @ivar read_timeout: seconds a table's first read may take.
    @ivar max_suspended: seconds disconnected before a new session is forced.
    """

    address: HostList
    root: str = "/pegasus-cluster"
    timeout: int = 10000
    table_watcher_cache_capacity: int = 1024
    read_timeout: float = 5.0
    max_suspended: float = 30.0


@attrs.frozen
class RouteConfig:
    """
    One static route, in the same shape as a ZooKeeper route node.

    @ivar cluster_name: the owning cluster's name (not empty).
    @ivar meta_addrs: its metas as one C{"h:p,h:p"} string (a YAML list is
        accepted and joined); every address is checked.
    """

    cluster_name: str
    meta_addrs: AddrString


@attrs.frozen
class SimTableConfig:
    """
    A table of the simulated cluster.

    @ivar partition_count: a power of two, at least 1.
    @ivar app_id: the table's id; L{None} lets the simulator assign one.
    """

    partition_count: int = 8
    app_id: Optional[int] = None


@attrs.frozen
class SimClusterConfig:
    """
    One simulated Pegasus meta cluster, run inside metaproxy's process.

    @ivar name: the cluster's name (not empty).
    @ivar metas: C{ipv4:port} of each simulated meta; the first leads.
    @ivar tables: table name -> L{SimTableConfig}.
    """

    name: str
    metas: HostList
    tables: dict[str, SimTableConfig] = attrs.Factory(dict)


@attrs.frozen
class SimulatorConfig:
    """
    Simulated meta clusters started in-process (the embedded default).

    @ivar clusters: the clusters to simulate.
    @ivar host_ports: also send the C{hp_*} fields, as Pegasus >= 2.6 does.
    """

    clusters: tuple[SimClusterConfig, ...] = ()
    host_ports: bool = False


@attrs.frozen
class FalconConfig:
    """
    Open-Falcon push settings (used when C{metric.type} is C{falcon}).

    @ivar url: the falcon-agent push URL.
    @ivar endpoint: the endpoint name pushed; empty means this host's name.
    @ivar step: seconds between pushes (>= 1).
    @ivar timeout: seconds one push may take.
    """

    url: str = "http://127.0.0.1:1988/v1/push"
    endpoint: str = ""
    step: int = 60
    timeout: float = 5.0


@attrs.frozen
class MetricConfig:
    """
    Metrics.

    @ivar type: the reporter plugin's name (checked to exist), or C{none}.
    @ivar tags: constant labels; a mapping or the Go style C{[k=v, ...]}.
    @ivar table_labels: label per-table series (bounded to cached tables).
    @ivar falcon: L{FalconConfig}.
    """

    type: str = "prometheus"
    tags: Tags = attrs.Factory(Tags)
    table_labels: bool = True
    falcon: FalconConfig = attrs.Factory(FalconConfig)


@attrs.frozen
class TimeoutConfig:
    """
    Backend timeouts, in seconds (all > 0).

    @ivar client_default: deadline of a query whose client gave none.
    @ivar client_max: cap on any query's deadline (>= C{client_default}).
    @ivar hedge_delay: wait before the other metas are asked too.
    @ivar connect: one connection attempt to a meta.
    """

    client_default: float = 5.0
    client_max: float = 30.0
    hedge_delay: float = 1.0
    connect: float = 3.0


@attrs.frozen
class LimitsConfig:
    """
    Resource limits of the client-facing listener.

    @ivar max_frame_bytes: a larger request frame closes its connection.
    @ivar max_connections: client connections at once; 0 means no limit.
    @ivar idle_timeout: seconds before an idle client connection is closed;
        0 (the default) means never, because Go clients refuse to redial a
        closed meta address for 60 s.
    @ivar max_pending_per_connection: unanswered requests before a
        connection stops being read.
    """

    max_frame_bytes: int = 1048576
    max_connections: int = 10000
    idle_timeout: float = 0.0
    max_pending_per_connection: int = 1024


@attrs.frozen
class LoggingConfig:
    """
    Logging (see L{metaproxy.logs.configure_logging}).

    @ivar level: C{debug}, C{info}, C{warn}, C{error} or C{critical}.
    @ivar file: also log to this file; L{None} means only stdout.
    @ivar max_bytes: rotate the file at this size.
    @ivar backups: rotated files kept; older ones are deleted.
    """

    level: str = "info"
    file: Optional[str] = None
    max_bytes: int = 52428800
    backups: int = 10


@attrs.frozen
class Config:
    """
    The whole configuration (README.rst, "Configuration reference", says
    what each key means). Exactly one of C{zookeeper} and C{routes} is
    given; C{simulator} adds in-process simulated clusters.
    """

    listen: str = "tcp:34601"
    admin: AdminConfig = attrs.Factory(AdminConfig)
    zookeeper: Optional[ZooKeeperConfig] = None
    routes: dict[str, RouteConfig] = attrs.Factory(dict)
    simulator: Optional[SimulatorConfig] = None
    metric: MetricConfig = attrs.Factory(MetricConfig)
    timeouts: TimeoutConfig = attrs.Factory(TimeoutConfig)
    limits: LimitsConfig = attrs.Factory(LimitsConfig)
    drain_timeout: float = 10.0
    logging: LoggingConfig = attrs.Factory(LoggingConfig)


# ------------------------------------------------------------ strict hooks


class _Bad(ValueError):
    pass


def _type_name(v):
    return "null" if v is None else type(v).__name__


def _str(v, _):
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_type_name(v)} {v!r}")
    return str(v)


def _int(v, _):
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"expected an integer, got {_type_name(v)} {v!r}")
    return int(v)


def _float(v, _):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"expected a number, got {_type_name(v)} {v!r}")
    if not math.isfinite(v):
        raise _Bad(f"expected a finite number, got {v!r}")
    return float(v)


def _bool(v, _):
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, got {_type_name(v)} {v!r}")
    return v


def _host_list(v, _):
    if isinstance(v, str):
        items = [p.strip() for p in v.split(",") if p.strip()]
    elif isinstance(v, list) and all(isinstance(i, str) for i in v):
        items = [i.strip() for i in v]
    else:
        raise _Bad(f"expected a list of host:port or a 'h:p,h:p' string, got {_type_name(v)}")
    if not items:
        raise _Bad("no address given")
    for item in items:
        parse_host_port(item)  # ValueError says what is wrong
    return HostList(items)


def _addr_string(v, _):
    hosts = _host_list(v, None)
    MetaAddrs.parse(list(hosts))
    return AddrString(",".join(hosts))


def _tags(v, _):
    if isinstance(v, dict):
        out = {}
        for k, val in v.items():
            if not isinstance(k, str) or isinstance(val, bool) or not isinstance(val, (str, int, float)):
                raise _Bad(f"tag {k!r}: expected a string or number value")
            out[k] = str(val)
        return Tags(out)
    if isinstance(v, list):
        out = {}
        for item in v:
            if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
                raise _Bad(f"tag {item!r}: expected key=value")
            k, val = item.split("=", 1)
            out[k.strip()] = val.strip()
        return Tags(out)
    raise _Bad(f"expected a mapping or a list of key=value, got {_type_name(v)}")


def _converter():
    c = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    c.register_structure_hook(str, _str)
    c.register_structure_hook(int, _int)
    c.register_structure_hook(float, _float)
    c.register_structure_hook(bool, _bool)
    c.register_structure_hook(HostList, _host_list)
    c.register_structure_hook(AddrString, _addr_string)
    c.register_structure_hook(Tags, _tags)
    return c


_CONVERTER = _converter()

# --------------------------------------------------------------- semantics


def _endpoint_ok(description):
    if description.startswith("systemd:"):  # its socket is only there at run time
        from metaproxy.activation import systemd_endpoint_problem

        return systemd_endpoint_problem(description)
    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:
        return f"not a valid Twisted endpoint ({e})"
    return None


def _reporter_problem(name):
    """@return: why C{name} names no installed metric reporter, or L{None}."""
    from metaproxy.reporters import find_reporter

    try:
        find_reporter(name)
    except ValueError as e:
        return str(e)
    return None


def _table_name_ok(table):
    """@return: whether C{table} could be a table name (and a ZooKeeper node)."""
    if table in ("", ".", "..") or len(table) > 1024:
        return False
    return not any(c == "/" or c.isspace() or not c.isprintable() for c in table)


def _is_power_of_two(n):
    return n >= 1 and n & (n - 1) == 0


def _check(config):
    """@return: a list of C{(path, message)} for values that are well-typed but wrong."""
    errs = []

    def need(ok, path, message):
        if not ok:
            errs.append((path, message))

    for path, value in (("$.listen", config.listen), ("$.admin.listen", config.admin.listen)):
        problem = _endpoint_ok(value)
        need(problem is None, path, problem)
    zk = config.zookeeper
    if zk is not None:
        need(zk.timeout >= 1, "$.zookeeper.timeout", "must be >= 1 (milliseconds)")
        need(zk.table_watcher_cache_capacity >= 1, "$.zookeeper.table_watcher_cache_capacity", "must be >= 1")
        need(zk.read_timeout > 0, "$.zookeeper.read_timeout", "must be > 0 (seconds)")
        need(zk.max_suspended > 0, "$.zookeeper.max_suspended", "must be > 0 (seconds)")
        need(zk.root.strip("/") != "" , "$.zookeeper.root", "must name a node below /")
        if config.routes:
            errs.append(("$.routes", "routes: and zookeeper: are exclusive; give one of them"))
    elif not config.routes:
        errs.append(("$", "give either zookeeper: (routes from ZooKeeper) or routes: (a static map)"))
    for table, route in config.routes.items():
        need(_table_name_ok(table), f"$.routes['{table}']", f"{table!r} is not a valid table name")
        need(route.cluster_name.strip() != "", f"$.routes['{table}'].cluster_name", "must not be empty")
    if config.simulator is not None:
        for i, cluster in enumerate(config.simulator.clusters):
            need(cluster.name.strip() != "", f"$.simulator.clusters[{i}].name", "must not be empty")
            for meta in cluster.metas:
                need(
                    is_ip_literal(parse_host_port(meta)[0]),
                    f"$.simulator.clusters[{i}].metas",
                    f"{meta!r}: simulated metas need an IPv4 address (followers name the leader by IP)",
                )
            for table, spec in cluster.tables.items():
                need(
                    _is_power_of_two(spec.partition_count),
                    f"$.simulator.clusters[{i}].tables['{table}'].partition_count",
                    "must be a power of two",
                )
    if config.metric.type != "none":
        problem = _reporter_problem(config.metric.type)
        need(problem is None, "$.metric.type", problem)
    from metaproxy.metrics import const_label_problem

    tag_problem = const_label_problem(config.metric.tags)
    need(tag_problem is None, "$.metric.tags", tag_problem)
    need(config.metric.falcon.step >= 1, "$.metric.falcon.step", "must be >= 1 (seconds)")
    need(config.metric.falcon.timeout > 0, "$.metric.falcon.timeout", "must be > 0 (seconds)")
    t = config.timeouts
    for name in ("client_default", "client_max", "hedge_delay", "connect"):
        need(getattr(t, name) > 0, f"$.timeouts.{name}", "must be > 0 (seconds)")
    need(t.client_default <= t.client_max, "$.timeouts.client_default", "must not exceed timeouts.client_max")
    lim = config.limits
    need(lim.max_frame_bytes >= 1024, "$.limits.max_frame_bytes", "must be >= 1024")
    need(lim.max_connections >= 0, "$.limits.max_connections", "must be >= 0 (0: no limit)")
    need(lim.idle_timeout >= 0, "$.limits.idle_timeout", "must be >= 0 (0: never)")
    need(lim.max_pending_per_connection >= 1, "$.limits.max_pending_per_connection", "must be >= 1")
    need(config.drain_timeout >= 0, "$.drain_timeout", "must be >= 0 (seconds)")
    log = config.logging
    need(log.level in ("debug", "info", "warn", "error", "critical"), "$.logging.level",
         "must be one of debug, info, warn, error, critical")
    need(log.max_bytes >= 1024, "$.logging.max_bytes", "must be >= 1024")
    need(log.backups >= 0, "$.logging.backups", "must be >= 0")
    return errs


def _normalise(config):
    zk = config.zookeeper
    if zk is not None:
        root = "/" + zk.root.strip().strip("/")
        if root != zk.root:
            config = attrs.evolve(config, zookeeper=attrs.evolve(zk, root=root))
    return config


# ---------------------------------------------------------------- locating

_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]|\[\"([^\"]*)\"\]")


def _locate(doc, path, key=None):
    """@return: C{(line, col)}, 1-based, of C{path} in the ruamel document."""
    node, where = doc, (0, 0)
    for m in _TOKEN.finditer(path[1:] if path.startswith("$") else path):
        name, index = m.group(1) or m.group(3) or m.group(4), m.group(2)
        try:
            if index is not None:
                where = node.lc.item(int(index))
                node = node[int(index)]
            else:
                if name not in node:
                    break
                where = node.lc.value(name)
                node = node[name]
        except (AttributeError, KeyError, IndexError, TypeError):
            break
    if key is not None:
        try:
            where = node.lc.key(key)
        except (AttributeError, KeyError, TypeError):
            pass
    return where[0] + 1, where[1] + 1


def _messages(exc):
    """@return: C{(path, message, extra_key)} for each error in a cattrs exception."""
    out = []

    def walk(e, path):
        if isinstance(e, cattrs.errors.ForbiddenExtraKeysError):
            for k in sorted(e.extra_fields, key=str):
                out.append((path, f"unknown key {k!r}", k))
        elif isinstance(e, (_ExceptionGroup, cattrs.errors.BaseValidationError)):
            for sub in e.exceptions:
                walk(sub, path + _note_path(sub))
        elif isinstance(e, AttributeError):
            out.append((path, "expected a mapping", None))
        elif isinstance(e, KeyError):
            out.append((path, f"required key {e.args[0]!r} is missing" if e.args else "required key missing", None))
        elif isinstance(e, (ValueError, TypeError)):
            out.append((path, str(e) if str(e) else type(e).__name__, None))
        else:
            out.append((path, f"{type(e).__name__}: {e}", None))

    walk(exc, "$")
    return out


def _note_path(e):
    notes = getattr(e, "__notes__", ())
    for note in notes:
        name = getattr(note, "name", None)
        if name is None:
            continue
        if getattr(note, "type", None) is not None and note.__class__.__name__ == "AttributeValidationNote":
            return f".{name}"
        if note.__class__.__name__ == "IterableValidationNote":
            return f"[{note.index}]"
    for note in notes:
        idx = getattr(note, "index", None)
        if idx is not None:
            if isinstance(idx, str):
                return f"['{idx}']"
            return f"[{idx}]"
    return ""


def _located(doc, exc):
    """
    @return: C{((line, col), message)} for each problem in a cattrs error;
        never raises (a message it cannot place goes to 1:1).
    """
    try:
        return [(_locate(doc, path, key), f"{msg} @ {path}") for path, msg, key in _messages(exc)]
    except Exception:
        return [((1, 1), f"invalid configuration: {type(exc).__name__}: {exc}")]


def _fail(filename, items):
    lines = [f"{filename}:{line}:{col}: {msg}" for (line, col), msg in items]
    raise ConfigError("\n".join(lines))


def parse_config(text, filename="<config>"):
    """
    @param text: YAML.
    @param filename: what messages call the file.
    @return: a L{Config}.
    @raise ConfigError: with every problem, each as C{file:line:col: what}.
    """
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(p for p in (e.context, e.problem) if p)
        _fail(filename, [((line, col), problem or "YAML syntax error")])
    except YAMLError as e:
        _fail(filename, [((1, 1), str(e).splitlines()[0] if str(e) else "YAML error")])
    if doc is None:
        _fail(filename, [((1, 1), "the file is empty; give at least routes: or zookeeper:")])
    if not isinstance(doc, dict):
        _fail(filename, [((1, 1), "expected a mapping of settings at the top level")])
    try:
        config = _CONVERTER.structure(doc, Config)
    except Exception as exc:
        _fail(filename, _located(doc, exc))
    config = _normalise(config)
    problems = _check(config)
    if problems:
        _fail(filename, [(_locate(doc, path), f"{msg} @ {path}") for path, msg in problems])
    return config


def load_config(path):
    """
    @return: the L{Config} in the file at C{path}.
    @raise ConfigError: located messages, also for a missing or unreadable file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}:1:1: cannot read the file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}:1:1: not UTF-8 text: {e}") from None
    return parse_config(text, path)
