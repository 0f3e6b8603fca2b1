# -*- test-case-name: metaproxy.test.test_cli_verify -*-
"""
Refuse route loops where routes are written: a route's metas must be real
metas of the named cluster, not this proxy, not another metaproxy, not
something else listening there.

Used by C{routes set}, C{routes switch} and C{check --verify-routes}. The
check is Pegasus's own migrator's: every meta of the target is asked
C{RPC_CM_CLUSTER_INFO} (L{metaproxy.wire.clusterinfo}):

 - an address that is this proxy's own client listening address (from the
   config's C{listen}) is refused without asking;
 - a meta that answers as a metaproxy (key C{metaproxy}) is refused;
 - a target where no meta answers C{ERR_OK} (the leader does) is not a
   meta cluster and is refused; one where nothing answers at all (down,
   unreachable) fails with status 1;
 - the leader's C{cluster_name} must equal the route's.

A refusal exits with L{REFUSED} (3).
"""

from twisted.internet import defer

from metaproxy.backend.connection import MetaConnection
from metaproxy.cli.common import FAILED, CommandError
from metaproxy.routes.route import SelfAddresses
from metaproxy.wire import clusterinfo
from metaproxy.wire.binary import DecodeError

#: Exit status of a command that refused a route's target.
REFUSED = 3


def listen_address(endpoint):
    """
    @param endpoint: a server endpoint string such as
        C{"tcp:34601:interface=127.0.0.1"}.
    @return: C{(interface, port)} (interface C{""}: all), or L{None} when
        it names no TCP port (C{systemd:}, C{unix:}...).
    """
    kind, _, rest = endpoint.partition(":")
    if kind not in ("tcp", "tcp6"):
        return None
    port, interface = None, ""
    for i, part in enumerate(rest.split(":")):
        key, eq, value = part.partition("=")
        if not eq:
            if i == 0:
                port = key
        elif key == "port":
            port = value
        elif key == "interface":
            interface = value
    if port is None or not port.isdigit():
        return None
    return interface, int(port)


def own_addresses(config):
    """@return: a L{SelfAddresses} holding the config's client listening address."""
    own = SelfAddresses()
    where = listen_address(config.listen)
    if where is not None:
        own.add(*where)
    return own


def ask_cluster_info(reactor, meta_addrs, timeout):
    """
    Ask every meta of C{meta_addrs} C{RPC_CM_CLUSTER_INFO} at once.

    @return: a L{Deferred} firing with C{[(address, ClusterInfo or None,
        why)]} in the list's order (C{why}: the failure, C{""} when
        answered); every connection is closed before it fires.
    """

    def one(host, port):
        conn = MetaConnection(reactor, host, port, connect_timeout=timeout)
        conn.start()
        d = conn.call(clusterinfo.CLUSTER_INFO, clusterinfo.REQUEST_ARGS, timeout, int(timeout * 1000))

        def answered(response):
            if response.rpc_error != "ERR_OK":
                return None, f"rpc error {response.rpc_error}"
            try:
                return clusterinfo.decode_result(response.body), ""
            except DecodeError as e:
                return None, f"malformed answer: {e}"

        d.addCallbacks(answered, lambda f: (None, f.getErrorMessage() or f.type.__name__))

        def close(result):
            return defer.maybeDeferred(conn.stop).addBoth(lambda _: (f"{host}:{port}",) + result)

        return d.addCallback(close)

    asks = [one(h, p) for h, p in meta_addrs.addrs]
    return defer.gatherResults(asks)


def target_problem(route, answers):
    """
    @param route: the L{metaproxy.routes.route.Route} to be written.
    @param answers: what L{ask_cluster_info} gave.
    @return: C{(problem or None, the leader's ClusterInfo or None)}.
    """
    leader = None
    failures = []
    for address, info, why in answers:
        if info is not None and info.is_metaproxy:
            return (
                f"{address} is a metaproxy ({info.info[clusterinfo.METAPROXY_KEY]}), not a meta: "
                "a route to a metaproxy is a loop",
                None,
            )
        if info is not None and info.err == "ERR_OK":
            leader = leader or info
        else:
            failures.append(f"{address}: {info.err if info is not None else why}")
    if leader is None:
        return (
            f"no meta of {route.meta_addrs} answered RPC_CM_CLUSTER_INFO as a Pegasus meta does "
            f"({'; '.join(failures)}): not a meta cluster (or down)",
            None,
        )
    if leader.cluster_name != route.cluster_name:
        return (
            f"the metas of {route.meta_addrs} say their cluster_name is {leader.cluster_name!r}, "
            f"not {route.cluster_name!r}",
            leader,
        )
    return None, leader


def verify_target(reactor, config, route, timeout, unreachable_ok=False):
    """
    Check a route's target (see the module docstring).

    @param unreachable_ok: when no meta answers at all, fire with L{None}
        (the caller reports it) instead of failing.
    @return: a L{Deferred} firing with the leader's
        L{clusterinfo.ClusterInfo}, or failing with L{CommandError}
        (status L{REFUSED}; L{FAILED} when nothing answered).
    """
    problem = own_addresses(config).problem(route.meta_addrs)
    if problem is not None:
        return defer.fail(CommandError(f"refusing {route.meta_addrs}: {problem}", REFUSED))

    def judge(answers):
        if all(info is None for _, info, _ in answers):
            if unreachable_ok:
                return None
            whys = "; ".join(f"{address}: {why}" for address, _, why in answers)
            raise CommandError(f"no meta of {route.meta_addrs} answered RPC_CM_CLUSTER_INFO ({whys})", FAILED)
        problem, leader = target_problem(route, answers)
        if problem is not None:
            raise CommandError(f"refusing {route.meta_addrs}: {problem}", REFUSED)
        return leader

    return ask_cluster_info(reactor, route.meta_addrs, timeout).addCallback(judge)
