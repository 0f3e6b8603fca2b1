# -*- test-case-name: metaproxy.test.test_cli -*-
"""
C{metaproxy check --config FILE} (and C{twistd metaproxy --check}): load a
config as the service would and say what would run, or every problem.

A static route naming the proxy's own listening address is refused (exit
3); with C{--verify-routes} every static route's metas are also asked
C{RPC_CM_CLUSTER_INFO} (L{metaproxy.cli.verify}): another metaproxy,
something that is not a meta, or another C{cluster_name} is refused too.
"""

from twisted.internet import defer

from metaproxy.cli.common import CommandError, add_global_arguments, add_wait_argument, load, run_on_reactor, wait_seconds
from metaproxy.cli.verify import REFUSED, own_addresses, verify_target
from metaproxy.routes.route import MetaAddrs, Route


def add_parser(subparsers):
    """Add the C{check} command to an argparse subparsers object."""
    p = subparsers.add_parser(
        "check",
        help="check a configuration file without serving",
        description="Load FILE as `twistd metaproxy` would. Print every problem as file:line:col (exit 2), "
        "a static route that loops (exit 3), or one line saying what would run (exit 0).",
    )
    add_global_arguments(p)
    add_wait_argument(p, "--zk-timeout", 5.0, "seconds to wait for ZooKeeper when checking the route tree's ACL")
    add_wait_argument(p, "--target-timeout", 5.0, "seconds to wait for each static route's metas (--verify-routes)")
    p.add_argument("--offline", action="store_true", help="do not connect to ZooKeeper (no ACL check)")
    p.add_argument("--verify-routes", action="store_true",
                   help="ask each static route's metas RPC_CM_CLUSTER_INFO: refuse metaproxies, non-metas and "
                   "another cluster_name (exit 3)")
    p.set_defaults(command=run, accepts={"config"})


def summary(config):
    """
    @param config: a loaded L{metaproxy.config.Config}.
    @return: one line: route source, listeners and metric reporter.
    """
    zk = config.zookeeper
    if zk is not None:
        source = f"routes from ZooKeeper {','.join(zk.address)} under {zk.root}"
    else:
        source = f"{len(config.routes)} static routes"
    if config.simulator is not None and config.simulator.clusters:
        names = ", ".join(c.name for c in config.simulator.clusters)
        source += f", simulated clusters: {names}"
    return (
        f"{source}; clients on {config.listen}; admin on {config.admin.listen}; "
        f"metrics: {config.metric.type}; log level {config.logging.level}"
    )


def check_file(path):
    """
    @return: the one-line summary of the config at C{path}, prefixed C{"ok: "}.
    @raise metaproxy.cli.common.CommandError: every problem, located.
    """
    return f"{path}: ok: {summary(load(path))}"


def static_route_problems(config, verify=False, timeout=5.0):
    """
    @return: one line per static route that loops: names this proxy's own
        listening address, or (with C{verify}) fails L{verify_target}.
    """
    routes = {t: Route(r.cluster_name, MetaAddrs.parse(r.meta_addrs)) for t, r in sorted(config.routes.items())}
    own = own_addresses(config)
    problems = []
    for table, route in routes.items():
        problem = own.problem(route.meta_addrs)
        if problem is not None:
            problems.append(f"route of {table}: refusing {route.meta_addrs}: {problem}")
    if verify and not problems and routes:

        def work(reactor):
            checks = [verify_target(reactor, config, r, timeout) for r in routes.values()]
            return defer.DeferredList(checks, consumeErrors=True)

        for table, (ok, result) in zip(routes, run_on_reactor(work)):
            if not ok:
                problems.append(f"route of {table}: {result.getErrorMessage()}")
    return problems


def run(args, out):
    """
    Run C{check}; @return: the exit status. Warnings (see
    L{metaproxy.cli.securitycheck}) do not change it; a static route that
    loops does (L{static_route_problems}).
    """
    from metaproxy.cli import securitycheck

    config = load(args.config)
    problems = static_route_problems(config, args.verify_routes, wait_seconds(args, "--target-timeout"))
    if problems:
        raise CommandError(f"{args.config}: " + "\n".join(problems), REFUSED)
    out.write(f"{args.config}: ok: {summary(config)}\n")
    warnings = securitycheck.config_warnings(config)
    if not args.offline:
        warnings += securitycheck.tree_warnings(config, wait_seconds(args, "--zk-timeout"))
    for line in warnings:
        out.write(f"warning: {line}\n")
    return 0
