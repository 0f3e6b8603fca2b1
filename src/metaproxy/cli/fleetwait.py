# -*- test-case-name: metaproxy.test.test_fleet -*-
"""
The fleet side of C{routes set|switch|delete}.

Before a write: a route whose meta address is a registered instance's
client address is refused (it would loop through a proxy).

After a write: wait until every instance serves the new route. "Serves"
is exact: the instance's C{/routes?table=} entry carries the C{mzxid} of
the node version it holds, which must be at least the one written (or,
after a delete, the table must be gone from it). An instance that does
not cache the table (404) serves it too: its next query reads the node.

The instances waited for are those registered just before the write
plus any that register meanwhile. One whose node goes away (its session
ended) is still asked: if its admin still answers with the old route it
stays a straggler (it lost ZooKeeper and serves stale routes); if nothing
listens there any more it is gone and no longer waited for. After
C{--fleet-timeout} the stragglers are printed by address with their state
and the command exits 1.
"""

import time

from metaproxy.cli.common import FAILED, USAGE, CommandError
from metaproxy.cli.fleetreg import loop_problem, probe_all, read_instances

#: Seconds between two rounds of asking the instances.
POLL = 0.2


def add_arguments(q):
    """Add C{--no-wait}, C{--fleet-timeout} and C{--probe-timeout} to a writing command."""
    q.add_argument("--no-wait", action="store_true", help="do not wait for every registered instance to serve it")
    q.add_argument("--fleet-timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for every registered instance to serve the change (default 30)")
    q.add_argument("--probe-timeout", type=float, default=2.0, metavar="S",
                   help="seconds each instance's admin may take to answer (default 2)")


def registered_before(store, timeout):
    """@return: the instances registered now (before a write): the wait asks them too, even if they leave."""
    return read_instances(store.client, store.fleet_path, timeout)


def refuse_loops(instances, route):
    """
    @raise CommandError: (exit 3, like every refused target: see
        L{metaproxy.cli.verify}) when C{route} names the client address of
        one of C{instances}.
    """
    from metaproxy.cli.verify import REFUSED

    problem = loop_problem(instances, route)
    if problem is not None:
        raise CommandError(f"refusing: {problem}; nothing written", REFUSED)


def refuse_registered(store, route):
    """
    Refuse a route to a registered instance before anything is asked of its
    address (the registry answers for every instance, even one that does
    not run this version and so cannot say it is a metaproxy).
    """
    refuse_loops(registered_before(store, store.timeout), route)


def _checked(args):
    no_wait = getattr(args, "no_wait", True)
    if not no_wait and not (0 < args.fleet_timeout <= 86400 and 0 < args.probe_timeout <= 600):
        raise CommandError("--fleet-timeout must be 0..86400 and --probe-timeout 0..600 seconds (> 0)", USAGE)
    return no_wait


def _state(probe, mzxid):
    """@return: C{(served, state text)} for one instance's answer."""
    if probe.status == "not-cached":
        return True, "not cached (reads the node on its next query)"
    if probe.status != "ok":
        return False, probe.why
    entry = probe.entry
    held, cluster = entry.get("mzxid"), entry.get("cluster_name")
    if mzxid is None:
        return False, f"still holds the deleted route (cluster {cluster}, mzxid {held}, state {entry.get('state')})"
    if not isinstance(held, int) or isinstance(held, bool):
        return False, f"serves cluster {cluster} but reports no mzxid (an older metaproxy?)"
    if held >= mzxid:
        return True, f"serves cluster {cluster} (mzxid {held})"
    return False, f"serves cluster {cluster} from mzxid {held}, not {mzxid} yet (state {entry.get('state')})"


def wait_for_fleet(store, table, mzxid, args, out, before=(), clock=time.monotonic, sleep=time.sleep):
    """
    Wait until every instance serves C{table}'s node at C{mzxid} (L{None}:
    deleted); see the module docstring.

    @param before: the instances registered before the write (see
        L{registered_before}); those registered during the wait are added.

    @return: the exit status: 0 when all serve it (or C{--no-wait}, or no
        fleet), 1 with stragglers after C{--fleet-timeout}.
    """
    if _checked(args) or not store.fleet_path:
        return 0
    start = clock()
    deadline = start + args.fleet_timeout
    known, served, gone, last = {i.name: i for i in before}, {}, set(), {}
    while True:
        registered = {i.name: i for i in read_instances(store.client, store.fleet_path, store.timeout)}
        known.update(registered)
        pending = [i for name, i in sorted(known.items()) if name not in served and name not in gone]
        probes = probe_all(pending, table, args.probe_timeout)
        for instance in pending:
            probe = probes[instance.name]
            ok, state = _state(probe, mzxid)
            if ok:
                served[instance.name] = state
            elif probe.refused and instance.name not in registered:
                gone.add(instance.name)
            else:
                last[instance.name] = state
        remaining = [i for name, i in sorted(known.items()) if name not in served and name not in gone]
        if not remaining:
            out.write(f"fleet: all {len(served)} instances serve it after {clock() - start:.2f}s"
                      + (f" ({len(gone)} stopped meanwhile)" if gone else "") + "\n")
            return 0
        if clock() >= deadline:
            break
        sleep(min(POLL, max(0.0, deadline - clock())))
    out.write(f"fleet: {len(remaining)} of {len(known) - len(gone)} instances do not serve it after "
              f"{args.fleet_timeout:g}s (--fleet-timeout):\n")
    for instance in remaining:
        note = "" if instance.name in registered else " [no longer registered]"
        out.write(f"  straggler {instance.address} (admin {instance.admin}): {last.get(instance.name)}{note}\n")
    return FAILED
