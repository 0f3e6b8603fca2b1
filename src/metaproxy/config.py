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

import difflib
import math
import os
import re
import stat
import sys
import typing
from typing import Optional

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn
from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from metaproxy.routes.route import MetaAddrs, host_port_problem, is_ip_literal, parse_host_port

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


class NameList(tuple):
    """A list of names (a YAML list of strings, or one string)."""


class AddrString(str):
    """Meta addresses as one C{"a:p,b:p"} string (a YAML list is joined)."""


@attrs.frozen
class AdminConfig:
    """
    The admin HTTP listener.

    @ivar listen: a Twisted server endpoint string (checked to parse).
    @ivar max_connections: admin HTTP connections at once; more are
        closed at once (0: no limit).
    @ivar idle_timeout: seconds an admin HTTP connection may stay idle.
    @ivar basic_auth_users: user name -> bcrypt hash: when not empty,
        every path but C{open_paths} needs HTTP basic auth (see
        L{metaproxy.ops.adminauth}).
    @ivar open_paths: the paths (C{/healthz}, C{/readyz}, C{/routes},
        C{/metrics}, C{/}) served without a credential.
    """
    max_connections: int = 64
    idle_timeout: float = 30.0

    listen: str = "tcp:24601:interface=127.0.0.1"
    #: user -> bcrypt hash (as in Prometheus' web.yml); empty: no credential asked.
    basic_auth_users: dict[str, str] = attrs.Factory(dict)
    #: paths served without the credential when C{basic_auth_users} is set.
    open_paths: tuple[str, ...] = ("/healthz", "/readyz")


@attrs.frozen
class ZooKeeperAuthConfig:
    """
    The credential metaproxy reads the route tree with (see
    L{metaproxy.routes.zkauth}).

    @ivar scheme: C{digest} or C{sasl}.
    @ivar credential_file: a file whose first line is C{user:password}
        (digest, SASL DIGEST-MD5); keeps the secret out of the YAML.
    @ivar credential: C{user:password} given inline (prefer the file).
    @ivar mechanism: SASL only: C{DIGEST-MD5} or C{GSSAPI}.
    @ivar service: SASL only: the servers' service name.
    @ivar principal: SASL GSSAPI only: the client principal.
    """

    scheme: str = "digest"
    credential_file: Optional[str] = None
    credential: Optional[str] = attrs.field(default=None, repr=False)
    mechanism: str = "DIGEST-MD5"
    service: str = "zookeeper"
    principal: Optional[str] = None


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
    @ivar max_reads_inflight: ZooKeeper reads in flight at once (1..128);
        more wait in metaproxy's own queue, never in kazoo's.
    @ivar auth: L{ZooKeeperAuthConfig}, or L{None}: read without a credential.
    @ivar acl: the ACL C{metaproxy routes} puts on nodes it creates, in
        zkCli's C{scheme:id:perms} notation; empty: operators all,
        proxies read (L{metaproxy.routes.zkauth.creation_acl}).
    @ivar fleet_path: where each instance registers its ephemeral node
        (L{metaproxy.ops.fleet}); outside C{root}; empty: no registration.
    @ivar fleet_advertise: the client C{host:port} to register (empty:
        the bound address, a wildcard replaced by the host name).
    @ivar fleet_advertise_admin: the same for the admin listener.
    @ivar fleet_update_interval: seconds between readiness checks of the
        registration; at most one write each.
    """

    address: HostList
    root: str = "/pegasus-cluster"
    timeout: int = 10000
    table_watcher_cache_capacity: int = 1024
    read_timeout: float = 5.0
    max_suspended: float = 30.0
    max_reads_inflight: int = 32
    auth: Optional[ZooKeeperAuthConfig] = None
    acl: tuple[str, ...] = ()
    fleet_path: str = "/metaproxy/instances"
    fleet_advertise: str = ""
    fleet_advertise_admin: str = ""
    fleet_update_interval: float = 1.0


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
    @ivar enable_auth: the metas negotiate Kerberos (Pegasus C{[security]
        enable_auth}) with the service keys in C{keytab}.
    @ivar mandatory_auth: they close sessions that have not negotiated.
    @ivar keytab: the metas' service keytab (the library default when empty).
    @ivar allow: principals or user names accepted (empty: all).
    """

    name: str
    metas: HostList
    tables: dict[str, SimTableConfig] = attrs.Factory(dict)
    enable_auth: bool = False
    mandatory_auth: bool = False
    keytab: str = ""
    allow: NameList = NameList()


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
    Answer budgets and backend timeouts, in seconds (all > 0).

    @ivar client_default: the answer budget of a request whose client gave
        no timeout (header 0); it must fit the most impatient client that
        sends 0 (pypegasus3 gives up after 2 s).
    @ivar client_max: cap on any request's budget (>= C{client_default}).
    @ivar margin_ratio: the budget is the client's timeout minus the larger
        of C{margin_ratio} times it and C{margin_min}.
    @ivar margin_min: see C{margin_ratio}.
    @ivar hedge_delay: wait before the other metas are asked too.
    @ivar connect: one connection attempt to a meta.
    @ivar reconnect_max: cap of the (jittered) delay between attempts to
        reconnect to a meta.
    @ivar untrusted: the budget of a request whose header timeout is known
        not to be its client's: Go's wrapped value, Java 1.x's 0 (<=
        C{client_max}; see C{docs/clients.rst}).
    @ivar new_connection_margin: budget kept besides for the first request
        on a connection (the client's timer also counted its connect).
    @ivar late_answer: how long an upstream query runs on after its
        requests' budgets ran out, and its answer is kept, for their
        retries on the same connection (0: off).
    @ivar breaker_window: how long every meta of a cluster must have been
        down before its queries get the retryable error at once (0: never).
    @ivar pool_grace: how long a meta pool no route refers to (and nothing
        queried) is kept before it is closed.
    """

    client_default: float = 1.8
    client_max: float = 30.0
    hedge_delay: float = 1.0
    connect: float = 3.0
    margin_ratio: float = 0.1
    margin_min: float = 0.1
    reconnect_max: float = 1.0
    untrusted: float = 30.0
    new_connection_margin: float = 0.2
    late_answer: float = 5.0
    breaker_window: float = 2.0
    pool_grace: float = 10.0


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
    @ivar max_buffered_bytes_per_connection: unsent reply bytes before a
        connection stops being read (until they are sent).
    @ivar max_buffered_bytes_total: bytes held for all client connections
        together (incomplete request frames, unsent replies); over it,
        connections holding some are not read. 0 means no limit.
    @ivar frame_timeout: seconds a request frame may stay incomplete
        before its connection is closed; 0 means never. Connections with
        nothing pending are never closed by it.
    @ivar requests_per_turn: requests of one connection dispatched before
        the other connections get a turn (0: no limit).
    @ivar max_connections_per_peer: client connections from one IP
        address; 0 means no limit.
    @ivar max_reply_bytes: the largest reply accepted from a meta.
    @ivar backlog: the listen backlog, used when C{listen} sets none (the
        kernel caps it at C{net.core.somaxconn}).
    """

    max_frame_bytes: int = 1048576
    max_connections: int = 10000
    idle_timeout: float = 0.0
    max_pending_per_connection: int = 1024
    max_buffered_bytes_per_connection: int = 1048576
    max_buffered_bytes_total: int = 134217728
    frame_timeout: float = 10.0
    max_connections_per_peer: int = 1000
    requests_per_turn: int = 64
    max_reply_bytes: int = 16777216
    backlog: int = 4096


@attrs.frozen
class LoggingConfig:
    """
    Logging (see L{metaproxy.ops.logs.configure_logging}).

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
class ClientAuthConfig:
    """
    Kerberos between clients and the listener (C{security.clients}).

    @ivar enabled: answer C{RPC_NEGOTIATION} with SASL GSSAPI, using the
        service keys in C{security.keytab} (off: C{SASL_AUTH_DISABLE}).
    @ivar mandatory: close sessions that send anything else before
        negotiating, as a meta with C{mandatory_auth} does.
    @ivar allow: principals or user names served (empty: any authenticated).
    """

    enabled: bool = False
    mandatory: bool = False
    allow: NameList = NameList()


@attrs.frozen
class SecurityConfig:
    """
    Kerberos (SASL GSSAPI over C{RPC_NEGOTIATION}), see docs/security-kerberos.rst.

    @ivar principal: metaproxy's own principal, used towards the metas.
    @ivar keytab: the keytab with its key (and, for C{clients}, the
        service keys clients ask for).
    @ivar service_name: the metas' service name (their C{[security]
        service_name}).
    @ivar service_fqdn: the metas' service host part (C{service_fqdn});
        each meta's configured host when empty.
    @ivar secured_clusters: cluster names negotiated with; C{"*"} all.
    @ivar negotiation_timeout: seconds one negotiation may take.
    @ivar renew_ratio: fetch a new ticket after this share of its lifetime.
    @ivar clients: L{ClientAuthConfig}.
    """

    principal: str = ""
    keytab: str = ""
    service_name: str = "pegasus"
    service_fqdn: str = ""
    secured_clusters: NameList = NameList(("*",))
    negotiation_timeout: float = 10.0
    renew_ratio: float = 0.8
    clients: ClientAuthConfig = attrs.Factory(ClientAuthConfig)

    def secures(self, cluster_name):
        """@return: L{True} if connections to C{cluster_name}'s metas negotiate."""
        return bool(self.principal) and ("*" in self.secured_clusters or cluster_name in self.secured_clusters)


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
    #: Seconds a table's last good query_cfg answer may be served while its
    #: cluster has no meta that can answer (docs/stale-if-error.rst); 0: off.
    stale_if_error: float = 600.0
    logging: LoggingConfig = attrs.Factory(LoggingConfig)
    security: SecurityConfig = attrs.Factory(SecurityConfig)


# ------------------------------------------------------------ strict hooks

#: Longest message text for one problem; longer ones are cut (a value is
#: never shown in full: a YAML alias can make it gigabytes).
MAX_MESSAGE_CHARS = 300

#: Most problems listed; the rest are counted.
MAX_PROBLEMS = 100

#: Deepest nesting accepted; metaproxy's schema needs 6 levels.
MAX_DEPTH = 32

#: Largest integer any key accepts (a 64-bit signed value).
_INT_MAX = 2**63 - 1


class _Bad(ValueError):
    pass


def _type_name(v):
    """@return: a short, user-facing name for the type of C{v}."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "str"
    if isinstance(v, dict):
        return "mapping"
    if isinstance(v, (list, tuple)):
        return "list"
    return type(v).__name__


def short(v, limit=40):
    """
    @return: a bounded repr of C{v}: scalars quoted and cut at C{limit}
        characters, containers named by type only (never walked).
    """
    if v is None or isinstance(v, (bool, int, float)):
        text = repr(v)
    elif isinstance(v, str):
        text = repr(v if len(v) <= limit else v[:limit] + "...")
    else:
        return f"<{_type_name(v)}>"
    return text if len(text) <= limit + 5 else text[:limit] + "..."


def _str(v, _):
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_type_name(v)} {short(v)}")
    return str(v)


def _int(v, _):
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"expected an integer, got {_type_name(v)} {short(v)}")
    if not -_INT_MAX <= v <= _INT_MAX:
        raise _Bad(f"integer {short(v)} is out of range")
    return int(v)


def _float(v, _):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"expected a number, got {_type_name(v)} {short(v)}")
    try:
        v = float(v)
    except OverflowError:
        raise _Bad("number is out of range") from None
    if not math.isfinite(v):
        raise _Bad(f"expected a finite number, got {v!r}")
    return v


def _bool(v, _):
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, got {_type_name(v)} {short(v)}")
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
        if len(item) > 255:
            raise _Bad(f"{short(item)}: address too long")
        parse_host_port(item)  # ValueError says what is wrong
    return HostList(items)


def _name_list(v, _):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
        raise _Bad(f"expected a list of names, got {_type_name(v)}")
    items = [i.strip() for i in v]
    if any(not i for i in items):
        raise _Bad("names must not be empty")
    return NameList(items)


def _addr_string(v, _):
    hosts = _host_list(v, None)
    MetaAddrs.parse(list(hosts))
    return AddrString(",".join(hosts))


def _tags(v, _):
    if v is None:
        return Tags()
    if isinstance(v, dict):
        out = {}
        for k, val in v.items():
            if not isinstance(k, str) or isinstance(val, bool) or not isinstance(val, (str, int, float)):
                raise _Bad(f"tag {short(k)}: expected a string or number value")
            out[k] = str(val)
        return Tags(out)
    if isinstance(v, list):
        out = {}
        for item in v:
            if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
                raise _Bad(f"tag {short(item)}: expected key=value")
            k, val = item.split("=", 1)
            out[k.strip()] = val.strip()
        return Tags(out)
    raise _Bad(f"expected a mapping or a list of key=value, got {_type_name(v)}")


def _mapping_first(converter):
    """
    @return: a structure hook factory for attrs classes that refuses a value
        that is not a mapping with a plain message (cattrs' own hook fails
        with whatever the value's type raises, e.g. on null).
    """

    def factory(cl):
        structure = make_dict_structure_fn(cl, converter)

        def hook(value, type_):
            if not isinstance(value, dict):
                raise _Bad(f"expected a mapping, got {_type_name(value)}")
            return structure(value, type_)

        return hook

    return factory


def _converter():
    c = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    c.register_structure_hook_factory(attrs.has, _mapping_first(c))
    c.register_structure_hook(str, _str)
    c.register_structure_hook(int, _int)
    c.register_structure_hook(float, _float)
    c.register_structure_hook(bool, _bool)
    c.register_structure_hook(HostList, _host_list)
    c.register_structure_hook(AddrString, _addr_string)
    c.register_structure_hook(Tags, _tags)
    c.register_structure_hook(NameList, _name_list)
    return c


_CONVERTER = _converter()

# --------------------------------------------------------------- semantics


#: Seconds no duration may exceed (a day): larger values are typos.
_MAX_SECONDS = 86400.0


def _endpoint_ok(description):
    """@return: why C{description} is no usable server endpoint, or L{None}."""
    if len(description) > 1024:
        return "not a valid Twisted endpoint (too long)"
    if description.startswith("systemd:"):  # its socket is only there at run time
        from metaproxy.ops.activation import systemd_endpoint_problem

        return systemd_endpoint_problem(description)
    if description.strip().isdigit():
        return f"not a valid Twisted endpoint: a bare port (did you mean 'tcp:{description.strip()}'?)"
    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception as e:
        return f"not a valid Twisted endpoint ({str(e)[:120]})"
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"port {port} is out of range 0..65535"
    return None


def _log_file_problem(path):
    """@return: why metaproxy could not write its log to C{path}, or L{None}."""
    if not path.strip():
        return "must not be empty (leave the key out to log to stdout only)"
    if "\0" in path:
        return "must not contain a NUL character"
    try:
        if os.path.isdir(path):
            return f"{short(path, 100)} is a directory; give a file path"
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            return f"directory {short(parent, 100)} does not exist"
        if os.path.exists(path):
            if not os.access(path, os.W_OK):
                return f"{short(path, 100)} is not writable"
            return _append_problem(path)
        elif not os.access(parent, os.W_OK | os.X_OK):
            return f"cannot create files in {short(parent, 100)}"
    except (OSError, ValueError) as e:
        return f"cannot use this path ({str(e)[:100]})"
    return None


def _append_problem(path):
    """
    @return: why the existing C{path} cannot take a log by appending (not a
        regular file, or refusing writes, as C{/proc/version} does even
        for root), or L{None}. Writes nothing.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
    except OSError as e:
        return f"{short(path, 100)} cannot be opened for appending ({e.strerror})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"{short(path, 100)} is not a regular file"
        os.write(fd, b"")
    except OSError as e:
        return f"{short(path, 100)} cannot be appended to ({e.strerror})"
    finally:
        os.close(fd)
    return None


def _reporter_problem(name):
    """@return: why C{name} names no installed metric reporter, or L{None}."""
    from metaproxy.reporters import find_reporter

    try:
        find_reporter(name)
    except ValueError as e:
        return str(e)
    return None


def _zookeeper_auth_problems(zk):
    """@return: C{(path, message)} for an unusable C{zookeeper.auth} or C{zookeeper.acl}."""
    from metaproxy.routes import zkauth

    errs = []
    for i, text in enumerate(zk.acl):
        try:
            zkauth.parse_acl(text)
        except ValueError as e:
            errs.append((f"$.zookeeper.acl[{i}]", str(e)))
    auth = zk.auth
    if auth is None:
        return errs
    if auth.scheme not in zkauth.SCHEMES:
        return errs + [("$.zookeeper.auth.scheme", "must be digest or sasl")]
    if auth.scheme == zkauth.SASL:
        if auth.mechanism not in zkauth.SASL_MECHANISMS:
            return errs + [("$.zookeeper.auth.mechanism", "must be DIGEST-MD5 or GSSAPI")]
        problem = zkauth.sasl_problem()
        if problem:
            errs.append(("$.zookeeper.auth.scheme", problem))
    gssapi = auth.scheme == zkauth.SASL and auth.mechanism == "GSSAPI"
    given = [k for k in ("credential", "credential_file") if getattr(auth, k) is not None]
    if len(given) > 1:
        return errs + [("$.zookeeper.auth.credential", "give credential_file or credential, not both")]
    if not given and not gssapi:
        return errs + [("$.zookeeper.auth", "give credential_file (a file holding user:password)")]
    try:
        zkauth.auth_from_config(auth)
    except zkauth.CredentialError as e:
        errs.append((f"$.zookeeper.auth.{given[0] if given else 'scheme'}", str(e)))
    return errs


def _admin_auth_problems(admin):
    """@return: C{(path, message)} for unusable C{admin.basic_auth_users} or C{admin.open_paths}."""
    from metaproxy.ops import adminauth

    errs = []
    for user, hashed in admin.basic_auth_users.items():
        problem = adminauth.user_problem(user, hashed)
        if problem:
            errs.append((f"$.admin.basic_auth_users['{user}']", problem))
    for i, path in enumerate(admin.open_paths):
        if path not in adminauth.PATHS:
            errs.append((f"$.admin.open_paths[{i}]", f"{short(path)}: expected one of {', '.join(adminauth.PATHS)}"))
    if admin.basic_auth_users:
        problem = adminauth.bcrypt_problem()
        if problem:
            errs.append(("$.admin.basic_auth_users", problem))
    return errs


def _table_name_ok(table):
    """@return: whether C{table} could be a table name (and a ZooKeeper node)."""
    if table in ("", ".", "..") or len(table) > 1024:
        return False
    return not any(c == "/" or c.isspace() or not c.isprintable() for c in table)


def _is_power_of_two(n):
    return n >= 1 and n & (n - 1) == 0


def _fleet_problems(zk):
    """@return: C{(path, message)} for the fleet registration keys of C{zk}."""
    errs = []
    fleet = "/" + zk.fleet_path.strip().strip("/")
    root = "/" + zk.root.strip().strip("/")
    if zk.fleet_path.strip():
        if fleet == "/" or not valid_node_path(fleet):
            errs.append(("$.zookeeper.fleet_path", "must name a node below / (or be empty: no registration)"))
        elif fleet == root or fleet.startswith(root + "/") or root.startswith(fleet + "/"):
            errs.append(("$.zookeeper.fleet_path", f"must be outside zookeeper.root ({root}): "
                         "the root's children are the table names"))
    for key in ("fleet_advertise", "fleet_advertise_admin"):
        value = getattr(zk, key)
        if value and host_port_problem(value) is not None:
            errs.append((f"$.zookeeper.{key}", f"{value!r}: expected host:port (or empty: the bound address)"))
    if not 0.05 <= zk.fleet_update_interval <= 3600:
        errs.append(("$.zookeeper.fleet_update_interval", "must be 0.05..3600 (seconds)"))
    return errs


def valid_node_path(path):
    """@return: whether C{path} (absolute, no trailing /) is a usable ZooKeeper node path."""
    parts = path.split("/")[1:]
    return all(p and p not in (".", "..") and all(0x20 <= ord(c) < 0x7F for c in p) for p in parts)


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
        need(1 <= zk.timeout <= 86_400_000, "$.zookeeper.timeout", "must be 1..86400000 (milliseconds)")
        need(
            1 <= zk.table_watcher_cache_capacity <= 10_000_000,
            "$.zookeeper.table_watcher_cache_capacity",
            "must be 1..10000000",
        )
        need(0 < zk.read_timeout <= _MAX_SECONDS, "$.zookeeper.read_timeout", "must be > 0 and <= 86400 (seconds)")
        need(0 < zk.max_suspended <= _MAX_SECONDS, "$.zookeeper.max_suspended", "must be > 0 and <= 86400 (seconds)")
        need(1 <= zk.max_reads_inflight <= 128, "$.zookeeper.max_reads_inflight", "must be 1..128")
        need(zk.root.strip("/") != "" , "$.zookeeper.root", "must name a node below /")
        errs.extend(_zookeeper_auth_problems(zk))
        errs.extend(_fleet_problems(zk))
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
                    _is_power_of_two(spec.partition_count) and spec.partition_count <= 65536,
                    f"$.simulator.clusters[{i}].tables['{table}'].partition_count",
                    "must be a power of two, at most 65536",
                )
                need(
                    spec.app_id is None or 1 <= spec.app_id <= 2**31 - 1,
                    f"$.simulator.clusters[{i}].tables['{table}'].app_id",
                    "must be 1..2147483647",
                )
    if config.metric.type != "none":
        problem = _reporter_problem(config.metric.type)
        need(problem is None, "$.metric.type", problem)
    from metaproxy.ops.metrics import const_label_problem

    tag_problem = const_label_problem(config.metric.tags)
    need(tag_problem is None, "$.metric.tags", tag_problem)
    need(1 <= config.metric.falcon.step <= 86400, "$.metric.falcon.step", "must be 1..86400 (seconds)")
    need(0 < config.metric.falcon.timeout <= _MAX_SECONDS, "$.metric.falcon.timeout", "must be > 0 and <= 86400 (seconds)")
    t = config.timeouts
    for name in ("client_default", "client_max", "hedge_delay", "connect", "margin_min", "reconnect_max",
                 "untrusted", "pool_grace"):
        need(0 < getattr(t, name) <= _MAX_SECONDS, f"$.timeouts.{name}", "must be > 0 and <= 86400 (seconds)")
    for name in ("late_answer", "breaker_window"):
        need(0 <= getattr(t, name) <= _MAX_SECONDS, f"$.timeouts.{name}", "must be 0..86400 (seconds; 0: off)")
    need(0 <= t.new_connection_margin <= 10, "$.timeouts.new_connection_margin", "must be 0..10 (seconds)")
    need(t.client_default <= t.client_max, "$.timeouts.client_default", "must not exceed timeouts.client_max")
    need(t.untrusted <= t.client_max, "$.timeouts.untrusted", "must not exceed timeouts.client_max")
    need(0 < t.margin_ratio < 0.5, "$.timeouts.margin_ratio", "must be > 0 and < 0.5")
    lim = config.limits
    need(1024 <= lim.max_frame_bytes <= 2**31 - 1, "$.limits.max_frame_bytes", "must be 1024..2147483647")
    need(0 <= lim.max_connections <= 10_000_000, "$.limits.max_connections", "must be 0..10000000 (0: no limit)")
    need(0 <= lim.idle_timeout <= _MAX_SECONDS, "$.limits.idle_timeout", "must be 0..86400 (0: never)")
    need(
        1 <= lim.max_pending_per_connection <= 1_000_000, "$.limits.max_pending_per_connection", "must be 1..1000000"
    )
    need(65536 <= lim.max_buffered_bytes_per_connection <= 2**40, "$.limits.max_buffered_bytes_per_connection",
         "must be 65536..1099511627776")
    need(lim.max_buffered_bytes_total == 0
         or lim.max_buffered_bytes_per_connection <= lim.max_buffered_bytes_total <= 2**50,
         "$.limits.max_buffered_bytes_total", "must be 0 (no limit) or >= limits.max_buffered_bytes_per_connection")
    need(0 <= lim.frame_timeout <= _MAX_SECONDS, "$.limits.frame_timeout", "must be 0..86400 (0: never)")
    need(0 <= lim.requests_per_turn <= 1_000_000, "$.limits.requests_per_turn", "must be 0..1000000 (0: no limit)")
    need(0 <= lim.max_connections_per_peer <= 10_000_000, "$.limits.max_connections_per_peer",
         "must be 0..10000000 (0: no limit)")
    need(65536 <= lim.max_reply_bytes <= 2**31 - 1, "$.limits.max_reply_bytes", "must be 65536..2147483647")
    need(1 <= lim.backlog <= 65535, "$.limits.backlog", "must be 1..65535")
    need(0 <= config.admin.max_connections <= 1_000_000, "$.admin.max_connections", "must be 0..1000000 (0: no limit)")
    need(0 < config.admin.idle_timeout <= _MAX_SECONDS, "$.admin.idle_timeout", "must be > 0 and <= 86400 (seconds)")
    errs.extend(_admin_auth_problems(config.admin))
    need(0 <= config.drain_timeout <= _MAX_SECONDS, "$.drain_timeout", "must be 0..86400 (seconds)")
    errs.extend(_security_problems(config.security))
    need(0 <= config.stale_if_error <= _MAX_SECONDS, "$.stale_if_error", "must be 0..86400 (seconds; 0: off)")
    log = config.logging
    need(log.level in LOG_LEVELS, "$.logging.level",
         "must be one of debug, info, warn (or warning), error, critical")
    need(1024 <= log.max_bytes <= 2**62, "$.logging.max_bytes", "must be >= 1024")
    need(0 <= log.backups <= 10000, "$.logging.backups", "must be 0..10000")
    if log.file is not None:
        problem = _log_file_problem(log.file)
        need(problem is None, "$.logging.file", problem)
    return errs


def _security_problems(sec):
    """@return: C{(path, message)} for the C{security:} section."""
    errs = []
    if sec.principal and not sec.keytab:
        errs.append(("$.security.keytab", "give the keytab that holds security.principal's key"))
    if sec.clients.enabled and not sec.keytab:
        errs.append(("$.security.keytab", "security.clients.enabled needs the keytab with the service keys"))
    if sec.clients.mandatory and not sec.clients.enabled:
        errs.append(("$.security.clients.mandatory", "needs security.clients.enabled: true"))
    if sec.clients.allow and not sec.clients.enabled:
        errs.append(("$.security.clients.allow", "needs security.clients.enabled: true"))
    if not sec.service_name.strip() or "/" in sec.service_name or "@" in sec.service_name:
        errs.append(("$.security.service_name", "must be a plain service name such as pegasus"))
    if "/" in sec.service_fqdn or "@" in sec.service_fqdn:
        errs.append(("$.security.service_fqdn", "must be a host name (no / or @)"))
    if not 0 < sec.negotiation_timeout <= _MAX_SECONDS:
        errs.append(("$.security.negotiation_timeout", "must be > 0 and <= 86400 (seconds)"))
    if not 0.5 <= sec.renew_ratio <= 0.95:
        errs.append(("$.security.renew_ratio", "must be 0.5..0.95"))
    return errs


#: The accepted C{logging.level} names (C{warning} is loaded as C{warn}).
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

_LEVEL_ALIASES = {"warning": "warn"}


def _normalise(config):
    level = _LEVEL_ALIASES.get(config.logging.level)
    if level is not None:
        config = attrs.evolve(config, logging=attrs.evolve(config.logging, level=level))
    zk = config.zookeeper
    if zk is not None:
        root = "/" + zk.root.strip().strip("/")
        if root != zk.root:
            config = attrs.evolve(config, zookeeper=attrs.evolve(zk, root=root))
        fleet = "/" + zk.fleet_path.strip().strip("/") if zk.fleet_path.strip() else ""
        if fleet != zk.fleet_path:
            config = attrs.evolve(config, zookeeper=attrs.evolve(config.zookeeper, fleet_path=fleet))
    return config


# ---------------------------------------------------------------- locating

_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]|\[\"([^\"]*)\"\]")


def _locate(doc, path, key=None):
    """
    @return: C{(line, col)}, 1-based, of C{path} in the ruamel document: the
        deepest part of the path that has a position (C{1:1} at worst).
    """
    node, where = doc, (0, 0)
    for m in _TOKEN.finditer(path[1:] if path.startswith("$") else path):
        name, index = m.group(1) or m.group(3) or m.group(4), m.group(2)
        try:
            if index is not None:
                found = node.lc.item(int(index))
                node = node[int(index)]
            else:
                if name not in node:
                    break
                # A null value has no position of its own: point at its key.
                found = node.lc.key(name) if node[name] is None else node.lc.value(name)
                node = node[name]
        except (AttributeError, KeyError, IndexError, TypeError):
            break
        if found is not None:
            where = found
    if key is not None:
        try:
            found = node.lc.key(key)
        except (AttributeError, KeyError, TypeError):
            found = None
        if found is not None:
            where = found
    try:
        return int(where[0]) + 1, int(where[1]) + 1
    except (TypeError, ValueError, IndexError):
        return 1, 1


def _did_you_mean(key, cl):
    """@return: C{" (did you mean 'x'?)"} for the closest field of C{cl}, or C{""}."""
    if not isinstance(key, str) or len(key) > 100 or not attrs.has(cl):
        return ""
    close = difflib.get_close_matches(key, [f.name for f in attrs.fields(cl)], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _messages(exc, path="$"):
    """@return: C{(path, message, extra_key)} for each error in a cattrs exception."""
    out = []

    def walk(e, path):
        if isinstance(e, cattrs.errors.ForbiddenExtraKeysError):
            for k in sorted(e.extra_fields, key=str):
                out.append((path, f"unknown key {short(k)}{_did_you_mean(k, e.cl)}", k))
        elif isinstance(e, (_ExceptionGroup, cattrs.errors.BaseValidationError)):
            for sub in e.exceptions:
                walk(sub, path + _note_path(sub))
        elif isinstance(e, AttributeError):
            out.append((path, "expected a mapping", None))
        elif isinstance(e, KeyError):
            name = short(e.args[0]) if e.args else ""
            out.append((path, f"required key {name} is missing" if name else "required key missing", None))
        elif isinstance(e, (ValueError, TypeError)):
            out.append((path, str(e) if str(e) else type(e).__name__, None))
        else:
            out.append((path, f"{type(e).__name__}: {e}", None))

    walk(exc, path)
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


# ------------------------------------------------------------- the document

_STANDARD_STR_TAG = "tag:yaml.org,2002:str"


def _tag_of(node):
    """@return: the explicit YAML tag of a ruamel node, or L{None}."""
    return getattr(getattr(node, "tag", None), "value", None)


def _child_location(parent, key, value):
    try:
        if isinstance(parent, dict):
            where = parent.lc.key(key) if value is None else parent.lc.value(key)
        else:
            where = parent.lc.item(key)
        return where[0] + 1, where[1] + 1
    except (AttributeError, KeyError, IndexError, TypeError):
        return 1, 1


def _scan(doc):
    """
    Walk the document once (each node once, also when aliases repeat it),
    without recursion: refuse nesting deeper than L{MAX_DEPTH} and explicit
    tags other than C{!!str} (whose scalars are replaced by their string).

    @return: a list of C{((line, col), message)}.
    """
    problems = []
    seen = set()
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for key, child in children:
            tag = _tag_of(child)
            if isinstance(child, TaggedScalar):
                if tag == _STANDARD_STR_TAG and isinstance(child.value, str):
                    node[key] = str(child.value)
                    continue
                problems.append((_child_location(node, key, child), f"unsupported YAML tag {short(tag)}"))
            elif isinstance(child, (dict, list)):
                if tag:
                    problems.append((_child_location(node, key, child), f"unsupported YAML tag {short(tag)}"))
                elif depth >= MAX_DEPTH:
                    problems.append(
                        (_child_location(node, key, child), f"nested deeper than {MAX_DEPTH} levels")
                    )
                else:
                    stack.append((child, depth + 1))
    return problems


def _unoptional(tp):
    """@return: C{X} for C{Optional[X]}, else C{tp}."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_section(tp):
    """@return: whether a key of type C{tp} holds a section (a mapping or list of settings)."""
    return attrs.has(tp) or tp is Tags or typing.get_origin(tp) in (dict, tuple)


def _drop_null_sections(node, cl):
    """
    Remove every key whose value is null and whose field is a section with
    a default, in C{node} and the sections below it: an empty section
    (all its keys commented out) means its defaults.
    """
    if not isinstance(node, dict):
        return
    for f in attrs.fields(cl):
        if f.name not in node:
            continue
        value, tp = node[f.name], _unoptional(f.type)
        if value is None:
            if f.default is not attrs.NOTHING and _is_section(tp):
                del node[f.name]
            continue
        args = typing.get_args(tp)
        if attrs.has(tp):
            _drop_null_sections(value, tp)
        elif typing.get_origin(tp) is tuple and args and attrs.has(args[0]) and isinstance(value, list):
            for item in value:
                _drop_null_sections(item, args[0])
        elif typing.get_origin(tp) is dict and len(args) == 2 and attrs.has(args[1]) and isinstance(value, dict):
            for item in value.values():
                _drop_null_sections(item, args[1])


def _structure(doc):
    """
    Build each top-level section on its own, so that one bad section does
    not hide the problems of the others.

    @return: C{(values, problems, failed)}: the built sections by name,
        C{(path, message, key)} for each problem, and the names of the
        sections that could not be built.
    """
    fields = {f.name: f for f in attrs.fields(Config)}
    values, problems, failed = {}, [], set()
    for key in doc:
        f = fields.get(key) if isinstance(key, str) else None
        if f is None:
            problems.append(("$", f"unknown key {short(key)}{_did_you_mean(key, Config)}", key))
            continue
        try:
            values[key] = _CONVERTER.structure(doc[key], f.type)
        except Exception as exc:
            failed.add(key)
            problems.extend(_refine(_messages(exc, f"$.{key}")))
    return values, problems, failed


_BARE_PORT = re.compile(r"expected a string, got integer (\d+)$")


def _refine(messages):
    """
    Help with the likeliest typos in C{(path, message, key)} problems:
     - a required key reported missing next to an unknown key that looks
       like it says so (both point at the same place, where only the first
       message is shown): C{zookeeper: {adress: ...}};
     - a bare port number as a C{listen} endpoint: C{listen: 34601}.
    """
    unknown = {}
    for path, msg, key in messages:
        if isinstance(key, str) and msg.startswith("unknown key "):
            unknown.setdefault(path, []).append(key)
    out = []
    for path, msg, key in messages:
        parent, _, name = path.rpartition(".")
        if msg.startswith("required key ") and unknown.get(parent):
            typos = [k for k in unknown[parent] if len(k) <= 100 and difflib.get_close_matches(k, [name], cutoff=0.6)]
            if typos:
                msg += f" (is {short(typos[0])} a misspelling of it?)"
        elif name == "listen":
            bare = _BARE_PORT.match(msg)
            if bare and 0 < int(bare.group(1)) <= 65535:
                msg += f" (a bare port: did you mean 'tcp:{bare.group(1)}'?)"
        out.append((path, msg, key))
    return out


def _top_name(path):
    m = re.match(r"\$\.([A-Za-z_]+)", path)
    return m.group(1) if m else None


def _semantic_problems(values, failed):
    """
    @return: the C{(path, message)} of L{_check} on the sections that were
        built (a failed section is left at its default and not judged), and
        the normalised L{Config}.
    """
    config = _normalise(Config(**values))
    out = []
    for path, msg in _check(config):
        top = _top_name(path)
        if top in failed or (top is None and failed & {"zookeeper", "routes"}):
            continue
        out.append((path, msg))
    return config, out


def _deep_position(text):
    """@return: C{(line, col)} where flow nesting first exceeds L{MAX_DEPTH}, or C{(1, 1)}."""
    depth, line, col = 0, 1, 0
    for ch in text:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line, col
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return 1, 1


def _format(filename, items):
    """@return: the L{ConfigError} text: sorted, one bounded line per problem."""
    seen, unique = set(), []
    for (line, col), msg in items:
        if (line, col) in seen:
            continue  # one message per place: the first (most basic) one
        seen.add((line, col))
        unique.append(((line, col), msg))
    unique.sort(key=lambda item: item[0])
    lines = []
    for (line, col), msg in unique[:MAX_PROBLEMS]:
        msg = " ".join(str(msg).split())
        if len(msg) > MAX_MESSAGE_CHARS:
            msg = msg[: MAX_MESSAGE_CHARS - 3] + "..."
        lines.append(f"{filename}:{line}:{col}: {msg}")
    if len(unique) > MAX_PROBLEMS:
        (line, col), _ = unique[MAX_PROBLEMS]
        lines.append(f"{filename}:{line}:{col}: ... and {len(unique) - MAX_PROBLEMS} more problems")
    return "\n".join(lines)


def _fail(filename, items):
    raise ConfigError(_format(filename, items))


def _load_yaml(text, filename):
    """@return: the ruamel document. @raise ConfigError: located, for any YAML problem."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(p for p in (e.context, e.problem) if p)
        _fail(filename, [((line, col), problem or "YAML syntax error")])
    except RecursionError:
        _fail(filename, [(_deep_position(text), f"nested deeper than {MAX_DEPTH} levels")])
    except YAMLError as e:
        _fail(filename, [((1, 1), str(e).splitlines()[0] if str(e) else "YAML error")])
    except Exception as e:  # e.g. a date that does not exist
        _fail(filename, [((1, 1), f"cannot read the YAML: {type(e).__name__}: {short(str(e), 200)}")])


def parse_config(text, filename="<config>"):
    """
    @param text: YAML.
    @param filename: what messages call the file.
    @return: a L{Config}.
    @raise ConfigError: with every problem, each as C{file:line:col: what}
        (in line order, at most L{MAX_PROBLEMS}, each bounded in size); only
        a YAML syntax error stops the search for more.
    """
    doc = _load_yaml(text, filename)
    if doc is None:
        _fail(filename, [((1, 1), "the file is empty; give at least routes: or zookeeper:")])
    if not isinstance(doc, dict):
        _fail(filename, [((1, 1), "expected a mapping of settings at the top level")])
    problems = _scan(doc)
    try:
        _drop_null_sections(doc, Config)
        values, structural, failed = _structure(doc)
        problems += [(_locate(doc, path, key), f"{msg} @ {path}") for path, msg, key in structural]
        config, semantic = _semantic_problems(values, failed)
        problems += [(_locate(doc, path), f"{msg} @ {path}") for path, msg in semantic]
    except ConfigError:
        raise
    except Exception as e:  # a bug here must still not be a traceback
        problems.append(((1, 1), f"invalid configuration: {type(e).__name__}: {short(str(e), 200)}"))
    if problems:
        _fail(filename, problems)
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
