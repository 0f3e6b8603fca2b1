"""
Hot upgrade under load: how long it takes and what the clients see.

    PYTHONPATH=src python bench/upgrade.py                  # 1 000 connections, 3 runs
    PYTHONPATH=src python bench/upgrade.py --connections 200 --runs 1
    PYTHONPATH=src python bench/upgrade.py --connections 50 --stuck-mb 10   # + one client that does not read

Starts metaproxy (C{twistd -n metaproxy}, static routes) in its own
process, with simulated meta clusters and Go-profile clients in this one
(see L{metaproxy.testing.upgrade_run}): queries before, a steady stream
during, queries in flight (answers delayed 0.4 s) and one half-sent frame
across the upgrade, queries after; then SIGUSR2. For each run it prints
the time from SIGUSR2 to the successor's MAINPID/READY=1 and to the old
process's exit, the connections handed over, the FIN/RST seen by clients,
the queries answered ERR_OK out of those sent, the old process's exit
status and any STOPPING=1 sent. It measures; it asserts nothing. Every
process it starts is stopped by PID. With C{--stuck-mb}, one more client
stops reading with that many MB of replies unread before SIGUSR2 and reads
again after: its line says whether it was closed and how many of its
answers arrived.
"""

import argparse
import sys
import tempfile

from twisted.internet import defer, task

from metaproxy.testing.upgrade_run import UpgradeRun


@defer.inlineCallbacks
def main(reactor, connections, runs, in_flight, stuck_mb=0):
    print(f"python {sys.version.split()[0]} ({sys.implementation.name}); {connections} Go-profile connections, "
          f"{in_flight} slow queries in flight at SIGUSR2")
    print(f"{'run':>3} {'ready s':>8} {'exit s':>7} {'handed':>7} {'FIN/RST':>7} {'queries OK':>14} {'old rc':>6} {'STOPPING':>8}")
    for i in range(runs):
        run = UpgradeRun(reactor, tempfile.mkdtemp(prefix="mp-upgrade-"), connections=connections, in_flight=in_flight,
                         stuck_bytes=int(stuck_mb * (1 << 20)))
        try:
            yield run.start()
            f = yield run.upgrade()
        finally:
            yield run.stop()
        handed = f.handed_over.split(": ")[-1].split(" connections")[0] if f.handed_over else "?"
        print(f"{i + 1:>3} {f.seconds_to_ready:>8.3f} {f.seconds_to_exit:>7.3f} {handed:>7} {f.closed_connections:>7} "
              f"{f'{f.queries_ok}/{f.queries}':>14} {f.old_exit!s:>6} {f.stopping_sent:>8}")
        if stuck_mb:
            print(f"    client not reading: {f.stuck_bytes} bytes unread at SIGUSR2, closed: {f.stuck_closed}, "
                  f"answers {f.stuck_ok}/{f.stuck_queries}; {f.fates or 'no fate lines'}")
        if f.queries_failed:
            print("    failed:", sorted(set(map(str, f.queries_failed)))[:5])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--stuck-mb", type=float, default=0.0)
    args = parser.parse_args()
    task.react(main, (args.connections, args.runs, args.in_flight, args.stuck_mb))
