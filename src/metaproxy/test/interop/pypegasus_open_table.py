"""
Open a Pegasus table with the real Python client (pypegasus3 from PyPI) and
print what it learnt, as one JSON line.

Run with the interpreter of a virtualenv where pypegasus3 is installed (it
pins Twisted 21.2 and thrift 0.13, so it cannot share metaproxy's venv):

    python pypegasus_open_table.py 127.0.0.1:34601 temp [timeout_ms]

Exit status 0 when the client received a partition configuration, 1 when it
did not, 2 on bad arguments.
"""

import json
import sys


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    meta, table = argv[1], argv[2]
    timeout = int(argv[3]) if len(argv) == 4 else 2000

    from pypegasus.pgclient import Pegasus
    from twisted.internet import reactor

    outcome = {"ok": False}

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
        client.close()
        reactor.stop()

    client = Pegasus([meta], table, timeout)
    d = client.init()
    d.addCallbacks(opened, failed)
    d.addBoth(finish)
    reactor.callLater(timeout / 1000.0 * 5, lambda: reactor.running and reactor.stop())
    reactor.run()
    print(json.dumps(outcome))
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
