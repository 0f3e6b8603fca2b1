# -*- test-case-name: metaproxy.test.test_cli_routes -*-
"""
C{metaproxy routes switch TABLE --cluster-name NAME --meta-addrs A,B}: move
a table to another cluster, safely.

 1. Read the current node (and its version).
 2. C{--expect-cluster OLD} refuses unless the current cluster is OLD.
 3. Verify the target (L{metaproxy.cli.verify}): real metas of the named
    cluster (C{RPC_CM_CLUSTER_INFO}), not this proxy nor another metaproxy
    (exit 3 otherwise). Then ask the target cluster's metas for TABLE,
    following the leader as metaproxy does: it must answer C{ERR_OK} within
    C{--target-timeout}, with a primary for every partition. The current
    cluster is asked at the same time, within C{--current-timeout}, only to
    show the differences (app_id, partition count; a different count is
    normal for a duplication switch and is shown, not refused): a dead
    current cluster (the reason for an emergency switch) is reported, not
    waited for. A cluster whose every meta refuses the connection fails at
    once.
 4. Print before and after; C{--dry-run} stops here; without C{--yes} ask
    on a terminal and refuse otherwise.
 5. Write with a compare-and-set on the version read in step 1.
"""

from twisted.internet import defer

from metaproxy.cli.common import CommandError, add_wait_argument, run_on_reactor, wait_seconds
from metaproxy.cli import fleetwait
from metaproxy.cli.metaquery import health_problem, query_table
from metaproxy.cli.routes import (
    check_expected,
    load,
    no_route,
    target_arguments,
    target_route,
    write_route,
    zookeeper_store,
)
from metaproxy.cli.verify import verify_target
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
    add_wait_argument(q, "--target-timeout", 10.0, "seconds the target cluster has to answer for TABLE")
    add_wait_argument(
        q, "--current-timeout", 3.0,
        "seconds the current cluster has to answer for TABLE; its answer is only shown, "
        "so the switch goes on without it",
    )
    common(q, writes=True)
    q.set_defaults(command=run)


def _ask_both(target, current, table, target_timeout, current_timeout, config=None, security=None):
    """
    @param config: the loaded config: the target is verified first
        (L{verify_target}), or not when L{None}.
    @return: a function for L{run_on_reactor} whose Deferred fires with
        C{[(ok, response or failure) for target, current]}; C{current} may
        be L{None} (then its entry is C{(False, None)}).
    """

    def ask(_, reactor):
        asks = [query_table(reactor, target.meta_addrs, table, target_timeout, security=security,
                            cluster_name=target.cluster_name)]
        asks.append(
            query_table(reactor, current.meta_addrs, table, current_timeout, security=security,
                        cluster_name=current.cluster_name) if current else defer.fail(ValueError())
        )
        return defer.DeferredList(asks, consumeErrors=True)

    def work(reactor):
        if config is None:
            return ask(None, reactor)
        return verify_target(reactor, config, target, target_timeout, unreachable_ok=True).addCallback(ask, reactor)

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
    target_timeout = wait_seconds(args, "--target-timeout")
    current_timeout = wait_seconds(args, "--current-timeout")
    with zookeeper_store(args, config, writing=True) as store:
        path = store.path(args.table)
        node = store.get(args.table)
        if node is None:
            raise no_route(store, args.table, "; to route a new table, use routes set")
        current = node.route
        check_expected(node, args.expect_cluster, "switch")
        if current == target:
            out.write(f"{path} already routes {args.table} to {target.cluster_name}; nothing to do\n")
            return 0
        fleetwait.refuse_registered(store, target)
        out.write(f"checking that {target.cluster_name} ({target.meta_addrs}) serves {args.table} ...\n")
        (ok_new, new), (ok_old, old) = run_on_reactor(
            _ask_both(target, current, args.table, target_timeout, current_timeout, config, config.security)
        )
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
