"""
A table created a moment ago: is it ever denied? (issue 23, point 3)

    PYTHONPATH=src python bench/new_table_lag.py              # 20 tables, idle then 2 000 lookups in flight
    PYTHONPATH=src python bench/new_table_lag.py --tables 5 --in-flight 500

Starts a private ZooKeeper, C{twistd pegasus-sim} and C{twistd metaproxy}
(routes from ZooKeeper, see L{metaproxy.testing.zkload}). For each table
C{t000...}, its node is deleted, then created again by another ZooKeeper
client; from the moment the create returned, the table is queried through
metaproxy every 1 ms for 100 ms. First with nothing else going on, then
with C{--in-flight} lookups of unknown names kept in flight on another
connection. Prints, per phase, the queries answered C{ERR_OBJECT_NOT_FOUND}
(a false "no such table"), the others, and the worst time from the create
to the first C{ERR_OK}. It measures; it asserts nothing. Every process it
starts is stopped by PID.
"""

import argparse
import collections
import os
import time

from twisted.internet import defer, task, threads

from metaproxy.testing.pegasus_client import connect_client
from metaproxy.testing.zkload import ROOT, Processes, answer_err
from metaproxy.testing.zookeeper import quiet_client


@defer.inlineCallbacks
def _phase(reactor, admin, client, tables):
    answers, first_ok = collections.Counter(), []
    for table in tables:
        path = f"{ROOT}/{table}"
        data, _ = yield threads.deferToThread(admin.get, path)
        yield threads.deferToThread(admin.delete, path)
        yield task.deferLater(reactor, 0.3, lambda: None)
        yield threads.deferToThread(admin.create, path, data)
        created, ok_at = time.perf_counter(), None
        while time.perf_counter() - created < 0.1:
            err = answer_err((yield client.query(table)))
            answers[err] += 1
            if err == "ERR_OK" and ok_at is None:
                ok_at = time.perf_counter() - created
            yield task.deferLater(reactor, 0.001, lambda: None)
        first_ok.append(ok_at)
    return answers, first_ok


def _keep_in_flight(client, count, state):
    def one(n):
        if not state["on"]:
            return
        d = client.query(f"unknown-{n % 1000000}")
        d.addBoth(lambda _: state.__setitem__("done", state["done"] + 1) or one(n + count))

    for n in range(count):
        one(n)


@defer.inlineCallbacks
def main(reactor, tables, in_flight):
    procs = Processes(tables=tables)
    yield threads.deferToThread(procs.start)
    admin = quiet_client(procs.zk.hosts)
    try:
        yield threads.deferToThread(admin.start, 15)
        client = yield connect_client(reactor, "127.0.0.1", procs.port, "go", record=False)
        flood = yield connect_client(reactor, "127.0.0.1", procs.port, "go", record=False)
        print(f"load average {os.getloadavg()[0]:.2f}")
        for label, load in (("idle", 0), (f"{in_flight} unknown-name lookups in flight", in_flight)):
            state = {"on": True, "done": 0}
            if load:
                _keep_in_flight(flood, load, state)
                yield task.deferLater(reactor, 0.5, lambda: None)
            answers, first_ok = yield _phase(reactor, admin, client, procs.tables)
            state["on"] = False
            worst = max((t for t in first_ok if t is not None), default=None)
            never = sum(1 for t in first_ok if t is None)
            unknown = f"; {state['done']} unknown lookups answered meanwhile" if load else ""
            print(f"{label}: {dict(answers)}; false ERR_OBJECT_NOT_FOUND: {answers['ERR_OBJECT_NOT_FOUND']}; "
                  f"worst create -> first ERR_OK {worst * 1000 if worst is not None else float('nan'):.1f} ms"
                  f"{f', {never} tables never OK' if never else ''}"
                  f"{unknown}")
            yield task.deferLater(reactor, 1.0, lambda: None)
    finally:
        yield threads.deferToThread(lambda: (admin.stop(), admin.close()))
        yield threads.deferToThread(procs.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=20)
    parser.add_argument("--in-flight", type=int, default=2000)
    args = parser.parse_args()
    task.react(main, (args.tables, args.in_flight))
