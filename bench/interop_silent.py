"""
How long the real pypegasus3 client's init() takes through metaproxy when
every meta of the cluster is silent, and then once they answer again.

    METAPROXY_PYPEGASUS_PYTHON=/path/to/venv-with-pypegasus3/bin/python \\
        PYTHONPATH=src python bench/interop_silent.py [rounds]

pypegasus3 sends client_timeout 0 and gives up after 2 s; metaproxy's budget
for 0 is timeouts.client_default (1.5 s), so init() must return in about
1.5 s with the retryable error. It measures; it asserts nothing.
"""

import json
import os
import sys
import tempfile

from twisted.internet import defer, task, utils

from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.routes.static import StaticRouteTable
from metaproxy.testing.harness import ProxyHarness, start_cluster

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "metaproxy", "test", "interop",
                      "pypegasus_open_table.py")


@defer.inlineCallbacks
def init_once(python, port):
    out, _, _ = yield utils.getProcessOutputAndValue(
        python, [SCRIPT, f"127.0.0.1:{port}", "temp", "2000"], env={"PATH": os.environ.get("PATH", "")},
        path=tempfile.mkdtemp(prefix="interop-"),
    )
    return json.loads([line for line in out.decode().splitlines() if line.startswith("{")][-1])


@defer.inlineCallbacks
def main(reactor, python, rounds):
    cluster = start_cluster(reactor, "a", {"temp": (8, 2)})
    proxy = ProxyHarness(reactor, StaticRouteTable({"temp": Route("a", MetaAddrs.parse(cluster.meta_addrs()))}))
    yield proxy.start()
    try:
        for silent in (True, False):
            cluster.set_silent(silent)
            for _ in range(rounds):
                r = yield init_once(python, proxy.port)
                print(f"metas {'silent   ' if silent else 'answering'}  init() ok={r['ok']!s:<5} "
                      f"took {r['elapsed'] * 1000:7.1f} ms")
    finally:
        yield proxy.stop()
        yield cluster.stopService()


if __name__ == "__main__":
    python = os.environ.get("METAPROXY_PYPEGASUS_PYTHON")
    if not python:
        sys.exit("set METAPROXY_PYPEGASUS_PYTHON to a python with pypegasus3")
    task.react(main, (python, int(sys.argv[1]) if len(sys.argv) > 1 else 3))
