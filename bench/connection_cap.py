"""
The global connection cap under a flood of idle connections: can new
clients still get in?

    PYTHONPATH=src python bench/connection_cap.py                 # 20 000 idle from 20 addresses, 22 new clients
    PYTHONPATH=src python bench/connection_cap.py --idle 2000 --addresses 20 --cap 1000

Starts metaproxy (C{twistd -n metaproxy}, embedded simulated meta, default
C{limits.max_connections} 10 000 and C{max_connections_per_peer} 1 000
unless C{--cap} is given) and opens C{--idle} connections that never send
a byte, spread over C{--addresses} source addresses 127.0.0.x (closing, as
it goes, those the proxy closed, to stay within this process's descriptor
limit). Then C{--new} clients from other addresses each send one query.
It prints how many of them were answered, how many idle connections the
proxy closed to make room (C{metaproxy_client_connections_evicted_total})
and how many it refused. It measures; it asserts nothing. The process it
starts is stopped by PID.
"""

import argparse
import os
import socket
import time

from metaproxy.testing.process import ProxyProcess, peer_closed, query


def _prune(socks):
    kept = []
    for s in socks:
        if peer_closed(s):
            s.close()
        else:
            kept.append(s)
    return kept


def _metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def main(idle, addresses, new, cap):
    limits = {} if cap is None else {"max_connections": cap, "max_connections_per_peer": max(1, cap // addresses)}
    proxy = ProxyProcess.start(limits=limits, backlog=4096)
    held = []
    try:
        t0 = time.monotonic()
        for i in range(idle):
            held.append(proxy.connect(f"127.0.0.{10 + i % addresses}"))
            if len(held) % 1000 == 0:
                held = _prune(held)
        time.sleep(1.0)
        held = _prune(held)
        opened = time.monotonic() - t0
        served = 0
        for i in range(new):
            with proxy.connect(f"127.0.1.{1 + i}") as s:
                try:
                    if query(s, 1000 + i).seqid == 1000 + i:
                        served += 1
                except OSError:
                    pass
        text = proxy.metrics_text()
        refused = "metaproxy_client_connections_refused_total{reason=%s}"
        limit, per_peer = _metric(text, refused % '"limit"'), _metric(text, refused % '"per_peer"')
        print(f"load average {os.getloadavg()[0]:.2f}; {idle} idle connections from {addresses} addresses opened "
              f"in {opened:.1f} s, {len(held)} still open; new clients served: {served}/{new}; evicted "
              f"{_metric(text, 'metaproxy_client_connections_evicted_total')}, refused: limit {limit}, "
              f"per_peer {per_peer}")
    finally:
        for s in held:
            s.close()
        proxy.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=20000)
    parser.add_argument("--addresses", type=int, default=20)
    parser.add_argument("--new", type=int, default=22)
    parser.add_argument("--cap", type=int, default=None, help="limits.max_connections (default: the config's)")
    args = parser.parse_args()
    main(args.idle, args.addresses, args.new, args.cap)
