"""
Open a Pegasus table with the real Python client (pypegasus3 from PyPI) and
print what it learnt, as one JSON line.

Run with the interpreter of a virtualenv where pypegasus3 is installed (it
pins Twisted 21.2 and thrift 0.13, so it cannot share metaproxy's venv):

    python pypegasus_open_table.py 127.0.0.1:34601 temp [timeout_ms [handshake_dir]]

The JSON line includes C{elapsed}: the seconds C{init()} took. With a
handshake directory the client calls C{init()} twice: after the first it
writes C{first.json} there and waits (up to 30 s) for a file named C{go},
then calls C{init()} again on the same client; the JSON line describes the
second call and holds the first under C{first}.

Exit status 0 when the client received a partition configuration, 1 when it
did not, 2 on bad arguments.
"""

import json
import sys


def main(argv):
    if len(argv) not in (3, 4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    meta, table = argv[1], argv[2]
    timeout = int(argv[3]) if len(argv) >= 4 else 2000
    handshake = argv[4] if len(argv) == 5 else None
    import os
    import time

    from pypegasus.pgclient import Pegasus
    from twisted.internet import reactor

    outcome = {"ok": False}
    started = [time.time()]

    def opened(_):
        resp = client.table.query_cfg_response
        if resp is not None:
            outcome.update(
                ok=True,
                app_id=resp.app_id,
                partition_count=resp.partition_count,
                is_stateful=resp.is_stateful,
                partitions=[
                    {
                        "pidx": p.pid.get_pidx(),
                        "app_id": p.pid.get_app_id(),
                        "ballot": p.ballot,
                        "primary": "%s:%d" % p.primary.to_host_port(),
                    }
                    for p in resp.partitions
                ],
            )

    def failed(f):
        outcome["error"] = f.getErrorMessage()

    def finish(_):
        outcome["elapsed"] = time.time() - started[0]
        client.close()
        reactor.stop()

    def first_done(_):
        outcome["elapsed"] = time.time() - started[0]
        first = dict(outcome)
        with open(os.path.join(handshake, "first.json"), "w") as f:
            json.dump(first, f)
        outcome.clear()
        outcome.update(ok=False, first=first)
        deadline = time.time() + 30

        def wait_for_go():
            if os.path.exists(os.path.join(handshake, "go")) or time.time() > deadline:
                started[0] = time.time()
                again = client.init()
                again.addCallbacks(opened, failed)
                again.addBoth(finish)
            else:
                reactor.callLater(0.05, wait_for_go)

        wait_for_go()

    client = Pegasus([meta], table, timeout)
    d = client.init()
    d.addCallbacks(opened, failed)
    d.addBoth(first_done if handshake else finish)
    limit = timeout / 1000.0 * 5 + (35 if handshake else 0)
    reactor.callLater(limit, lambda: reactor.running and reactor.stop())
    reactor.run()
    print(json.dumps(outcome))
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
