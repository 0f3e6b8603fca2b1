# -*- test-case-name: metaproxy.test.test_cli_routes -*-
"""
C{metaproxy routes list|get|set|delete}: the routes a metaproxy config
points at, from its ZooKeeper or its static C{routes:} map. (C{switch} is
in L{metaproxy.cli.switch}.)
"""

import argparse
import difflib
import json
import os

from metaproxy.cli import fleetwait
from metaproxy.cli.common import (
    USAGE,
    CommandError,
    add_global_arguments,
    add_wait_argument,
    confirm,
    load,
    run_on_reactor,
    wait_seconds,
)
from metaproxy.cli.verify import REFUSED, own_addresses, verify_target
from metaproxy.cli.zkstore import OPERATOR_ENV, RouteStore, check_table, describe_acl_entry, operator_auth
from metaproxy.routes.zkauth import world_writable
from metaproxy.routes.route import MetaAddrs, Route


def add_parsers(subparsers):
    """Add the C{routes} command and its sub-commands (C{switch} included)."""
    from metaproxy.cli import switch

    p = subparsers.add_parser("routes", help="list, read and change table routes")
    add_global_arguments(p)
    sub = p.add_subparsers(dest="routes_command", metavar="{list,get,switch,set,delete}")
    sub.required = True

    def common(q, writes=False):
        add_global_arguments(q)
        add_wait_argument(
            q, "--zk-timeout", 10.0,
            "seconds to connect to ZooKeeper, and for each of its answers; "
            "fails at once when every ZooKeeper server refuses the connection",
        )
        q.add_argument("--timeout", type=float, default=None, help=argparse.SUPPRESS)  # old: every wait at once
        q.add_argument(
            "--zk-credential-file", metavar="FILE",
            help=f"the operator's ZooKeeper digest credential (one line user:password; also ${OPERATOR_ENV} "
            f"or ${OPERATOR_ENV}_FILE); default: the config's zookeeper.auth",
        )
        if writes:
            q.add_argument(
                "--allow-world-writable", action="store_true",
                help="create a node anyone who reaches ZooKeeper may change (refused otherwise)",
            )
            fleetwait.add_arguments(q)
        q.set_defaults(accepts={"config", "yes", "dry_run"} if writes else {"config", "json"})

    q = sub.add_parser("list", help="every table's route")
    common(q)
    q.set_defaults(command=run_list)
    q = sub.add_parser("get", help="one table's route")
    q.add_argument("table")
    common(q)
    q.set_defaults(command=run_get)
    switch.add_parser(sub, common)
    q = sub.add_parser(
        "set",
        help="write a table's route after checking that its metas are a real meta cluster of that name",
        description="Verify the target with RPC_CM_CLUSTER_INFO (real metas of --cluster-name; not this proxy, "
        "not another metaproxy: exit 3 otherwise), then write the table's node with a compare-and-set.",
    )
    q.add_argument("table")
    target_arguments(q)
    q.add_argument("--no-verify", action="store_true",
                   help="do not ask the metas (bootstrapping before they run); this proxy's own address is "
                   "still refused")
    add_wait_argument(q, "--target-timeout", 10.0, "seconds the target's metas have to answer RPC_CM_CLUSTER_INFO")
    common(q, writes=True)
    q.set_defaults(command=run_set)
    q = sub.add_parser("delete", help="delete a table's route")
    q.add_argument("table")
    q.add_argument("--expect-cluster", metavar="OLD", help="refuse unless the current cluster_name is OLD")
    common(q, writes=True)
    q.set_defaults(command=run_delete)


def target_arguments(q):
    """Add C{--cluster-name} and C{--meta-addrs} to a writing command."""
    q.add_argument("--cluster-name", required=True, metavar="NAME")
    q.add_argument("--meta-addrs", required=True, metavar="A,B", help="the cluster's metas, host:port,host:port")


def target_route(args):
    """@return: the L{Route} given by C{--cluster-name} and C{--meta-addrs}."""
    name = args.cluster_name.strip()
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        raise CommandError(f"--cluster-name {args.cluster_name!r}: expected a non-empty name without spaces", USAGE)
    try:
        return Route(name, MetaAddrs.parse(args.meta_addrs))
    except ValueError as e:
        raise CommandError(f"--meta-addrs: {e}", USAGE) from None


def check_expected(node, expected, verb):
    """
    @param node: the L{metaproxy.cli.zkstore.RouteNode} read.
    @param expected: C{--expect-cluster}, or L{None} (nothing to check).
    @raise CommandError: unless the node names cluster C{expected}.
    """
    if expected is None:
        return
    actual = node.route.cluster_name if node.route else f"unreadable ({node.error})"
    if actual != expected:
        raise CommandError(f"refusing to {verb}: {node.path} names cluster {actual}, not {expected} (--expect-cluster)")


def no_route(store, table, otherwise=""):
    """
    @return: the L{CommandError} for a table without a node: it names the
        nearest existing table when there is one (a typo must not be
        nudged toward creating it), else ends with C{otherwise}.
    """
    message = f"table {table!r} has no route ({store.path(table)} does not exist)"
    near = difflib.get_close_matches(table, [t for t in store.names() if t != table], n=1, cutoff=0.6)
    if near:
        return CommandError(f"{message}; did you mean {near[0]!r}?")
    return CommandError(message + otherwise)


def zookeeper_store(args, config, writing):
    """
    @return: a L{RouteStore} for the config's ZooKeeper.
    @raise CommandError: when the config has static routes and C{writing}.
    """
    seconds = wait_seconds(args, "--zk-timeout")
    if config.zookeeper is None:
        if writing:
            raise CommandError(
                f"{args.config} has static routes (routes:), not ZooKeeper; edit the file to change them", USAGE
            )
        return None
    operator = operator_auth(getattr(args, "zk_credential_file", None), os.environ)
    return RouteStore(config.zookeeper, seconds, operator=operator)


def static_rows(config):
    """@return: the JSON-ready rows of a config's static routes."""
    return [
        {"table": t, "cluster_name": r.cluster_name, "meta_addrs": str(r.meta_addrs), "version": None, "mtime": None}
        for t, r in sorted(_static_routes(config).items())
    ]


def _static_routes(config):
    return {t: Route(r.cluster_name, MetaAddrs.parse(r.meta_addrs)) for t, r in config.routes.items()}


def describe_route(route):
    """@return: C{"cluster_name=N meta_addrs=A,B"}, or C{"(none)"}."""
    if route is None:
        return "(none)"
    return f"cluster_name={route.cluster_name} meta_addrs={route.meta_addrs}"


def _print_rows(rows, as_json, out):
    if as_json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return
    header = ("table", "cluster_name", "meta_addrs", "version", "mtime")
    table = [header] + [
        tuple("-" if row.get(k) is None else str(row[k]) for k in header) for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    for row in rows:
        if row.get("error"):
            out.write(f"warning: {row['table']}: bad route data: {row['error']}\n")


def run_list(args, out):
    """Run C{routes list}; @return: the exit status."""
    config = load(args.config)
    store = zookeeper_store(args, config, writing=False)
    if store is None:
        rows = static_rows(config)
    else:
        with store:
            rows = [node.as_json() for node in store.list()]
    _print_rows(rows, args.json, out)
    return 0


def run_get(args, out):
    """Run C{routes get}; @return: the exit status (1 when the table has no route)."""
    config = load(args.config)
    check_table(args.table)
    store = zookeeper_store(args, config, writing=False)
    if store is None:
        tables = [r["table"] for r in static_rows(config)]
        rows = [r for r in static_rows(config) if r["table"] == args.table]
        if not rows:
            near = difflib.get_close_matches(args.table, tables, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise CommandError(f"table {args.table!r} has no route in the static routes of {args.config}{hint}")
    else:
        with store:
            node = store.get(args.table)
            if node is None:
                raise no_route(store, args.table)
            rows = [node.as_json()]
    _print_rows(rows, args.json, out)
    return 1 if rows[0].get("error") else 0


def write_route(store, table, node, route, args, out):
    """
    Print before and after, then (unless C{--dry-run}, and once confirmed)
    write C{route} with a compare-and-set on C{node}'s version.

    @param node: the L{metaproxy.cli.zkstore.RouteNode} read, or L{None}.
    @return: the exit status.
    """
    fleet = fleetwait.registered_before(store, store.timeout)
    fleetwait.refuse_loops(fleet, route)
    out.write(f"before: {describe_route(node.route if node else None)}"
              f"{'' if node is None else f' (version {node.version}, modified {node.mtime})'}\n")
    out.write(f"after:  {describe_route(route)}\n")
    if node is not None and node.route == route:
        out.write(f"{store.path(table)} already holds this route; nothing to do\n")
        return 0
    if node is None:
        refuse_world_writable(store, table, args, out)
        warn_world_writable(store, None, out)
    else:
        warn_world_writable(store, table, out)
    if args.dry_run:
        out.write("dry run: nothing written\n")
        return 0
    confirm(f"write {store.path(table)}?", args.yes, stdout=out)
    written = store.write(table, route, None if node is None else node.version)
    out.write(f"written: {store.path(table)} (version {written.version}, modified {written.mtime})\n")
    return fleetwait.wait_for_fleet(store, table, written.mzxid, args, out, fleet)


def refuse_world_writable(store, table, args, out):
    """
    Print the ACL a new node gets.

    @raise CommandError: it would be world-writable and
        C{--allow-world-writable} was not given (nothing is written).
    """
    out.write(f"acl:    {store.describe_create_acl()}\n")
    problem = store.creation_problem()
    if problem is None:
        return
    if not getattr(args, "allow_world_writable", False):
        raise CommandError(
            f"refusing to create {store.path(table)}: {problem}. Give operator credentials "
            f"(--zk-credential-file FILE or ${OPERATOR_ENV}), or --allow-world-writable to create it so anyway; "
            "nothing written"
        )
    out.write(f"warning: {problem} (--allow-world-writable)\n")


def warn_world_writable(store, table, out):
    """Print a warning for each of the root and C{table}'s node that anyone may change."""
    for name in dict.fromkeys((None, table)):
        acls = store.acl(name)
        if world_writable(acls):
            entries = ", ".join(describe_acl_entry(a) for a in acls)
            path = store.root if name is None else store.path(name)
            out.write(f"warning: {path} is world-writable ({entries}); see docs/security.rst to restrict it\n")


def run_set(args, out):
    """Run C{routes set}; @return: the exit status (3: the target was refused, see L{metaproxy.cli.verify})."""
    config = load(args.config)
    check_table(args.table)
    route = target_route(args)
    with zookeeper_store(args, config, writing=True) as store:
        fleetwait.refuse_registered(store, route)
        if args.no_verify:
            problem = own_addresses(config).problem(route.meta_addrs)
            if problem is not None:
                raise CommandError(f"refusing {route.meta_addrs}: {problem}", REFUSED)
        else:
            seconds = wait_seconds(args, "--target-timeout")
            leader = run_on_reactor(lambda reactor: verify_target(reactor, config, route, seconds))
            out.write(f"target ok: {route.meta_addrs} are metas of cluster {leader.cluster_name}\n")
        return write_route(store, args.table, store.get(args.table), route, args, out)


def run_delete(args, out):
    """Run C{routes delete}; @return: the exit status."""
    config = load(args.config)
    check_table(args.table)
    with zookeeper_store(args, config, writing=True) as store:
        node = store.get(args.table)
        if node is None:
            raise no_route(store, args.table)
        check_expected(node, args.expect_cluster, "delete")
        out.write(f"before: {describe_route(node.route)} (version {node.version}, modified {node.mtime})\n")
        out.write("after:  (none): clients will get ERR_OBJECT_NOT_FOUND for this table\n")
        if args.dry_run:
            out.write("dry run: nothing deleted\n")
            return 0
        confirm(f"delete {store.path(args.table)}?", args.yes, stdout=out)
        fleet = fleetwait.registered_before(store, store.timeout)
        store.delete(args.table, node.version)
        out.write(f"deleted: {store.path(args.table)}\n")
        return fleetwait.wait_for_fleet(store, args.table, None, args, out, fleet)
