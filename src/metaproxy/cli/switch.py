# -*- test-case-name: metaproxy.test.test_cli_routes -*-
"""
C{metaproxy routes switch TABLE --cluster-name NAME --meta-addrs A,B}: move
a table to another cluster, safely.

 1. Read the current node (and its version).
 2. C{--expect-cluster OLD} refuses unless the current cluster is OLD.
 3. Ask the target cluster's metas for TABLE, following the leader as
    metaproxy does: it must answer C{ERR_OK} within the timeout, with a
    primary for every partition. The current cluster is asked too, to show
    the differences (app_id, partition count; a different count is normal
    for a duplication switch and is shown, not refused).
 4. Print before and after; C{--dry-run} stops here; without C{--yes} ask
    on a terminal and refuse otherwise.
 5. Write with a compare-and-set on the version read in step 1.
"""

from twisted.internet import defer

from metaproxy.cli.common import CommandError, run_on_reactor
from metaproxy.cli.metaquery import health_problem, query_table
from metaproxy.cli.routes import load, target_arguments, target_route, write_route, zookeeper_store
from metaproxy.cli.zkstore import check_table


def add_parser(sub, common):
    """Add C{routes switch} to the C{routes} sub-commands."""
    q = sub.add_parser(
        "switch",
        help="move a table to another cluster after checking that the cluster serves it",
        description="Validate the target cluster (it must serve TABLE with a primary for every partition), "
        "show the differences, and write the table's node with a compare-and-set.",
    )
    q.add_argument("table")
    target_arguments(q)
    q.add_argument("--expect-cluster", metavar="OLD", help="refuse unless the current cluster_name is OLD")
    common(q, writes=True)
    q.set_defaults(command=run)


def _ask_both(target, current, table, timeout, security=None):
    """
    @return: a function for L{run_on_reactor} whose Deferred fires with
        C{[(ok, response or failure) for target, current]}; C{current} may
        be L{None} (then its entry is C{(False, None)}).
    """

    def work(reactor):
        asks = [query_table(reactor, target.meta_addrs, table, timeout, security=security,
                            cluster_name=target.cluster_name)]
        asks.append(query_table(reactor, current.meta_addrs, table, timeout, security=security,
                                cluster_name=current.cluster_name) if current else defer.fail(ValueError()))
        return defer.DeferredList(asks, consumeErrors=True)

    return work


def _why(failure):
    return failure.getErrorMessage() if failure is not None and hasattr(failure, "getErrorMessage") else "unknown"


def _difference(name, old, new, note=""):
    if old is None:
        return f"{name}: unknown -> {new}"
    if old == new:
        return f"{name}: {new} (unchanged)"
    return f"{name}: {old} -> {new}{note}"


def run(args, out):
    """Run C{routes switch}; @return: the exit status."""
    config = load(args.config)
    check_table(args.table)
    target = target_route(args)
    with zookeeper_store(args, config, writing=True) as store:
        path = store.path(args.table)
        node = store.get(args.table)
        if node is None:
            raise CommandError(f"table {args.table!r} has no route to switch ({path} does not exist); use routes set")
        current = node.route
        if args.expect_cluster is not None:
            actual = current.cluster_name if current else f"unreadable ({node.error})"
            if actual != args.expect_cluster:
                raise CommandError(
                    f"refusing to switch: {path} names cluster {actual}, not {args.expect_cluster} (--expect-cluster)"
                )
        if current == target:
            out.write(f"{path} already routes {args.table} to {target.cluster_name}; nothing to do\n")
            return 0
        out.write(f"checking that {target.cluster_name} ({target.meta_addrs}) serves {args.table} ...\n")
        (ok_new, new), (ok_old, old) = run_on_reactor(
            _ask_both(target, current, args.table, args.timeout, config.security))
        if not ok_new:
            raise CommandError(
                f"refusing to switch: target cluster {target.cluster_name} did not answer for {args.table}: "
                f"{_why(new)}; {path} unchanged"
            )
        problem = health_problem(new)
        if problem is not None:
            raise CommandError(
                f"refusing to switch: target cluster {target.cluster_name} does not serve {args.table}: {problem}; "
                f"{path} unchanged"
            )
        out.write(f"target ok: app_id {new.app_id}, {new.partition_count} partitions, each with a primary\n")
        old_ok = ok_old and old.err == "ERR_OK"
        if current is not None and not old_ok:
            out.write(f"current cluster {current.cluster_name}: {old.err if ok_old else _why(old)}\n")
        out.write(_difference("app_id", old.app_id if old_ok else None, new.app_id) + "\n")
        out.write(
            _difference(
                "partition_count",
                old.partition_count if old_ok else None,
                new.partition_count,
                " (differs: normal for a duplication switch; clients re-resolve)",
            )
            + "\n"
        )
        return write_route(store, args.table, node, target, args, out)
