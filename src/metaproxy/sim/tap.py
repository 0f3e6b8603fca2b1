# -*- test-case-name: metaproxy.test.test_sim -*-
"""
C{twistd pegasus-sim}: run one simulated meta cluster from the command line.

    twistd -n pegasus-sim --metas 127.0.0.1:34611,127.0.0.1:34612,127.0.0.1:34613 \\
        --table temp:8 --table stat:4
"""

from typing import Optional
import attrs
from twisted.python import usage

from metaproxy.routes.route import is_ip_literal, parse_host_port
from metaproxy.sim.model import is_power_of_two


@attrs.frozen
class TableSpec:
    """A table to create: its partition count and app id (L{None}: assign)."""

    partition_count: int
    app_id: Optional[int] = None


@attrs.frozen
class ClusterSpec:
    """A cluster to simulate, shaped like the config schema's simulator cluster."""

    name: str
    metas: tuple
    tables: dict
    enable_auth: bool = False
    mandatory_auth: bool = False
    keytab: str = ""
    allow: tuple = ()


@attrs.frozen
class SimulatorSpec:
    """What L{metaproxy.sim.server.build_simulator_service} takes."""

    clusters: tuple
    host_ports: bool = False


def parse_table(text):
    """
    Parse C{name:partition_count} or C{name:partition_count:app_id}.

    @return: C{(name, TableSpec)}.
    @raise usage.UsageError: saying what is wrong.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise usage.UsageError(f"--table {text!r}: expected NAME:PARTITIONS[:APP_ID]")
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        raise usage.UsageError(f"--table {text!r}: partitions and app id must be integers") from None
    if not is_power_of_two(numbers[0]):
        raise usage.UsageError(f"--table {text!r}: partition count must be a power of two")
    app_id = numbers[1] if len(numbers) == 2 else None
    if app_id is not None and app_id <= 0:
        raise usage.UsageError(f"--table {text!r}: app id must be positive")
    return parts[0], TableSpec(numbers[0], app_id)


class Options(usage.Options):
    """Command-line options of C{twistd pegasus-sim}."""

    optParameters = [
        ["metas", "m", "127.0.0.1:34611,127.0.0.1:34612,127.0.0.1:34613",
         "Comma-separated ip:port of the simulated metas; the first is the leader."],
        ["name", "n", "sim", "The cluster's name (for logs)."],
        ["keytab", None, "", "With --enable-auth: the metas' service keytab (default: the library's, KRB5_KTNAME)."],
        ["allow", None, "", "With --enable-auth: comma-separated principals or user names accepted (default: all)."],
    ]
    optFlags = [
        ["host-ports", None, "Send the hp_* fields of Pegasus master (old clients cannot parse them)."],
        ["enable-auth", None, "Negotiate Kerberos (SASL GSSAPI) as a meta with [security] enable_auth."],
        ["mandatory-auth", None, "With --enable-auth: close sessions that query before negotiating."],
    ]

    def __init__(self):
        super().__init__()
        self["tables"] = {}

    def opt_table(self, value):
        """NAME:PARTITIONS[:APP_ID], a table to serve (repeatable)."""
        name, spec = parse_table(value)
        if name in self["tables"]:
            raise usage.UsageError(f"--table {name!r} given twice")
        self["tables"][name] = spec

    opt_t = opt_table

    def postOptions(self):
        """Check the meta addresses: IPv4 literals, distinct, with ports."""
        metas = [m.strip() for m in self["metas"].split(",") if m.strip()]
        if not metas:
            raise usage.UsageError("--metas: at least one meta address is needed")
        seen = set()
        for m in metas:
            try:
                host, port = parse_host_port(m)
            except ValueError as e:
                raise usage.UsageError(f"--metas: {e}") from None
            if not is_ip_literal(host):
                raise usage.UsageError(f"--metas: {m!r} is not an IPv4 address")
            if (host, port) in seen:
                raise usage.UsageError(f"--metas: {m!r} given twice")
            seen.add((host, port))
        self["metas"] = tuple(metas)
        if (self["mandatory-auth"] or self["keytab"] or self["allow"]) and not self["enable-auth"]:
            raise usage.UsageError("--mandatory-auth, --keytab and --allow need --enable-auth")


def makeService(config, reactor=None):
    """
    @param config: parsed L{Options}.
    @param reactor: the reactor to listen on (the global one by default).
    @return: the simulator's L{twisted.application.service.MultiService}.
    """
    if reactor is None:
        from twisted.internet import reactor
    from metaproxy.sim.server import build_simulator_service

    spec = SimulatorSpec(
        (ClusterSpec(config["name"], config["metas"], dict(config["tables"]),
                     enable_auth=bool(config["enable-auth"]), mandatory_auth=bool(config["mandatory-auth"]),
                     keytab=config["keytab"], allow=tuple(a.strip() for a in config["allow"].split(",") if a.strip())),),
        host_ports=bool(config["host-ports"]),
    )
    return build_simulator_service(spec, reactor)
