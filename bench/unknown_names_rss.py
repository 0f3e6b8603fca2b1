"""
Long unknown table names against metaproxy's memory, with no scrape.

    PYTHONPATH=src python bench/unknown_names_rss.py                  # 2 100 names of 1 MB
    PYTHONPATH=src python bench/unknown_names_rss.py --names 300 --name-bytes 1000
    PYTHONPATH=src python bench/unknown_names_rss.py --zookeeper    # routes from a private ZooKeeper

Starts metaproxy (C{twistd -n metaproxy}, static routes and an embedded
simulated meta; with C{--zookeeper}, routes from a private ZooKeeper as in
C{bench/flood_unknown.py}) and queries distinct table names that are not routes, one
after the other on one connection; C{/metrics} is never read. Prints the
answers and the process's RSS before and after. It measures; it asserts
nothing. The processes it starts are stopped by PID.
"""

import argparse
import os

from metaproxy.testing.process import ProxyProcess, unknown_names_rss
from metaproxy.testing.zkload import Processes

MIB = 1 << 20


def main(names, name_bytes, zookeeper):
    if zookeeper:
        procs = Processes()
        procs.start()
        pid, port, stop = procs.proxy_pid, procs.port, procs.stop
    else:
        proxy = ProxyProcess.start()
        pid, port, stop = proxy.proc.pid, proxy.port, proxy.stop
    try:
        baseline, after, answers = unknown_names_rss(pid, port, names, name_bytes)
    finally:
        stop()
    print(f"load average {os.getloadavg()[0]:.2f}; {'ZooKeeper' if zookeeper else 'static'} routes; {names} unknown names of {name_bytes} bytes: answers "
          f"{dict(answers)}; RSS {baseline / MIB:.1f} -> {after / MIB:.1f} MiB "
          f"(growth {(after - baseline) / MIB:.1f} MiB, target <= 64)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=2100)
    parser.add_argument("--name-bytes", type=int, default=1000 * 1000)
    parser.add_argument("--zookeeper", action="store_true")
    args = parser.parse_args()
    main(args.names, args.name_bytes, args.zookeeper)
