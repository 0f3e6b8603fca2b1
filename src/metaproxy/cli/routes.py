# -*- test-case-name: metaproxy.test.test_cli_routes -*-
"""
C{metaproxy routes list|get|set|delete}: the routes a metaproxy config
points at, from its ZooKeeper or its static C{routes:} map. (C{switch} is
in L{metaproxy.cli.switch}.)
"""

import json

from metaproxy.cli import fleetwait
from metaproxy.cli.common import USAGE, CommandError, confirm, load
from metaproxy.cli.zkstore import RouteStore, check_table
from metaproxy.routes.route import MetaAddrs, Route


def add_parsers(subparsers):
    """Add the C{routes} command and its sub-commands (C{switch} included)."""
    from metaproxy.cli import switch

    p = subparsers.add_parser("routes", help="list, read and change table routes")
    sub = p.add_subparsers(dest="routes_command", metavar="{list,get,switch,set,delete}")
    sub.required = True

    def common(q, writes=False):
        q.add_argument("--config", "-c", required=True, metavar="FILE")
        q.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for ZooKeeper")
        if writes:
            q.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
            q.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
            fleetwait.add_arguments(q)
        else:
            q.add_argument("--json", action="store_true", help="print a JSON list")

    q = sub.add_parser("list", help="every table's route")
    common(q)
    q.set_defaults(command=run_list)
    q = sub.add_parser("get", help="one table's route")
    q.add_argument("table")
    common(q)
    q.set_defaults(command=run_get)
    switch.add_parser(sub, common)
    q = sub.add_parser("set", help="write a table's route without validating it (bootstrapping)")
    q.add_argument("table")
    target_arguments(q)
    common(q, writes=True)
    q.set_defaults(command=run_set)
    q = sub.add_parser("delete", help="delete a table's route")
    q.add_argument("table")
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


def check_timeout(args):
    """@raise CommandError: when C{--timeout} is not a usable number of seconds."""
    if not 0 < args.timeout <= 3600:
        raise CommandError("--timeout must be > 0 and <= 3600 seconds", USAGE)


def zookeeper_store(args, config, writing):
    """
    @return: a L{RouteStore} for the config's ZooKeeper.
    @raise CommandError: when the config has static routes and C{writing}.
    """
    check_timeout(args)
    if config.zookeeper is None:
        if writing:
            raise CommandError(
                f"{args.config} has static routes (routes:), not ZooKeeper; edit the file to change them", USAGE
            )
        return None
    return RouteStore(config.zookeeper, args.timeout)


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
        rows = [r for r in static_rows(config) if r["table"] == args.table]
        where = f"the static routes of {args.config}"
    else:
        with store:
            node = store.get(args.table)
            rows = [] if node is None else [node.as_json()]
            where = store.path(args.table)
    if not rows:
        raise CommandError(f"table {args.table!r} has no route ({where} does not exist)")
    _print_rows(rows, args.json, out)
    return 1 if rows[0].get("error") else 0


def write_route(store, table, node, route, args, out):
    """
    Print before and after, then (unless C{--dry-run}, and once confirmed)
    write C{route} with a compare-and-set on C{node}'s version.

    @param node: the L{metaproxy.cli.zkstore.RouteNode} read, or L{None}.
    @return: the exit status.
    """
    fleet = fleetwait.registered_before(store, args.timeout)
    fleetwait.refuse_loops(fleet, route)
    out.write(f"before: {describe_route(node.route if node else None)}"
              f"{'' if node is None else f' (version {node.version}, modified {node.mtime})'}\n")
    out.write(f"after:  {describe_route(route)}\n")
    if node is not None and node.route == route:
        out.write(f"{store.path(table)} already holds this route; nothing to do\n")
        return 0
    if args.dry_run:
        out.write("dry run: nothing written\n")
        return 0
    confirm(f"write {store.path(table)}?", args.yes, stdout=out)
    written = store.write(table, route, None if node is None else node.version)
    out.write(f"written: {store.path(table)} (version {written.version}, modified {written.mtime})\n")
    return fleetwait.wait_for_fleet(store, table, written.mzxid, args, out, fleet)


def run_set(args, out):
    """Run C{routes set}; @return: the exit status."""
    config = load(args.config)
    check_table(args.table)
    route = target_route(args)
    with zookeeper_store(args, config, writing=True) as store:
        return write_route(store, args.table, store.get(args.table), route, args, out)


def run_delete(args, out):
    """Run C{routes delete}; @return: the exit status."""
    config = load(args.config)
    check_table(args.table)
    with zookeeper_store(args, config, writing=True) as store:
        node = store.get(args.table)
        if node is None:
            raise CommandError(f"table {args.table!r} has no route ({store.path(args.table)} does not exist)")
        out.write(f"before: {describe_route(node.route)} (version {node.version}, modified {node.mtime})\n")
        out.write("after:  (none): clients will get ERR_OBJECT_NOT_FOUND for this table\n")
        if args.dry_run:
            out.write("dry run: nothing deleted\n")
            return 0
        confirm(f"delete {store.path(args.table)}?", args.yes, stdout=out)
        fleet = fleetwait.registered_before(store, args.timeout)
        store.delete(args.table, node.version)
        out.write(f"deleted: {store.path(args.table)}\n")
        return fleetwait.wait_for_fleet(store, args.table, None, args, out, fleet)
