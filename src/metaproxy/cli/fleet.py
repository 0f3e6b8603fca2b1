# -*- test-case-name: metaproxy.test.test_fleet -*-
"""
C{metaproxy fleet [list]}: the registered metaproxy instances (address,
version, uptime, readiness, routes cached), from ZooKeeper.

C{metaproxy fleet routes TABLE}: which cluster each instance serves for
TABLE, and which version of its node (mzxid), asked of every instance's
admin C{/routes?table=} in parallel, each within C{--probe-timeout}.
"""

import argparse
import json
import time

from metaproxy.cli.common import USAGE, CommandError, add_global_arguments, add_wait_argument, load, wait_seconds
from metaproxy.cli.fleetreg import probe_all, read_instances
from metaproxy.cli.zkstore import RouteStore, check_table


def add_parser(subparsers):
    """Add the C{fleet} command and its sub-commands."""
    p = subparsers.add_parser("fleet", help="list the metaproxy instances registered in ZooKeeper")
    sub = p.add_subparsers(dest="fleet_command", metavar="{list,routes}")

    def common(q, command):
        add_global_arguments(q)
        add_wait_argument(q, "--zk-timeout", 10.0, "seconds to connect to ZooKeeper, and for each of its answers")
        q.add_argument("--timeout", type=float, default=None, help=argparse.SUPPRESS)  # old: every wait at once
        q.set_defaults(command=command, accepts={"config", "json"})
        return q

    common(p, run_list)  # "metaproxy fleet" lists; a sub-command takes its own options
    common(sub.add_parser("list", help="every registered instance (the default)"), run_list)
    routes = sub.add_parser("routes", help="which cluster each instance serves for a table")
    routes.add_argument("table")
    common(routes, run_routes).add_argument(
        "--probe-timeout", type=float, default=2.0, metavar="S", help="seconds each instance's admin may take to answer"
    )


def _registry(args):
    config = load(args.config)
    zk = config.zookeeper
    if zk is None:
        raise CommandError(f"{args.config} has static routes: instances register only with zookeeper:", USAGE)
    if not zk.fleet_path:
        raise CommandError(f"{args.config} sets zookeeper.fleet_path empty: instances do not register", USAGE)
    return zk


def fleet_rows(instances, now=None):
    """@return: the JSON-ready rows of C{metaproxy fleet}."""
    now = time.time() if now is None else now
    rows = []
    for i in instances:
        started = i.doc.get("started")
        rows.append({
            "address": i.address,
            "admin": i.admin,
            "version": i.doc.get("version"),
            "runtime": i.doc.get("runtime"),
            "pid": i.doc.get("pid"),
            "uptime": round(now - started, 1) if isinstance(started, (int, float)) else None,
            "ready": i.doc.get("ready"),
            "routes_cached": i.doc.get("routes_cached"),
            "node": i.name,
        })
    return rows


def print_table(rows, header, out):
    """Print C{rows} (dicts) as aligned columns named by C{header}."""
    table = [header] + [tuple("-" if r.get(k) is None else str(r[k]) for k in header) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def _uptime(seconds):
    if seconds is None:
        return None
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def run_list(args, out):
    """Run C{fleet [list]}; @return: the exit status (1 when no instance is registered)."""
    zk = _registry(args)
    with RouteStore(zk, wait_seconds(args, "--zk-timeout")) as store:
        instances = read_instances(store.client, zk.fleet_path, store.timeout)
    rows = fleet_rows(instances)
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
    else:
        shown = [dict(r, uptime=_uptime(r["uptime"])) for r in rows]
        print_table(shown, ("address", "admin", "version", "runtime", "uptime", "ready", "routes_cached"), out)
    if not instances:
        raise CommandError(f"no instance is registered under {zk.fleet_path}")
    return 0


def run_routes(args, out):
    """Run C{fleet routes TABLE}; @return: 1 when an instance did not answer, else 0."""
    zk = _registry(args)
    check_table(args.table)
    if not 0 < args.probe_timeout <= 600:
        raise CommandError("--probe-timeout must be > 0 and <= 600 seconds", USAGE)
    with RouteStore(zk, wait_seconds(args, "--zk-timeout")) as store:
        instances = read_instances(store.client, zk.fleet_path, store.timeout)
        node = store.get(args.table)
    probes = probe_all(instances, args.table, args.probe_timeout)
    rows = []
    for i in instances:
        p = probes[i.name]
        e = p.entry or {}
        rows.append({
            "address": i.address,
            "admin": i.admin,
            "answer": p.status if p.status != "error" else p.why,
            "cluster_name": e.get("cluster_name"),
            "meta_addrs": ",".join(e.get("meta_addrs") or []) or None,
            "state": e.get("state"),
            "mzxid": e.get("mzxid"),
            "current": None if node is None or p.status != "ok" else e.get("mzxid") == node.mzxid,
        })
    if args.json:
        out.write(json.dumps({"table": args.table, "node_mzxid": None if node is None else node.mzxid,
                              "instances": rows}, indent=2) + "\n")
    else:
        where = "no node" if node is None else f"node mzxid {node.mzxid}: {node.route and node.route.cluster_name}"
        out.write(f"{args.table} ({where})\n")
        print_table(rows, ("address", "answer", "cluster_name", "meta_addrs", "state", "mzxid", "current"), out)
    if not instances:
        raise CommandError(f"no instance is registered under {zk.fleet_path}")
    return 1 if any(probes[i.name].status == "error" for i in instances) else 0
