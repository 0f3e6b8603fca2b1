# -*- test-case-name: metaproxy.test.test_failover_process -*-
"""
Simulated meta servers of one cluster, each in its own process, so that a
test or a benchmark can SIGKILL or SIGSTOP one of them.

Every process runs a L{metaproxy.sim.server.SimulatedCluster} that knows all
the cluster's addresses but listens on its own only. Which meta is the
leader is read from a small control file (the leader's index, or C{none}),
polled every 20 ms, so that an election is a write of that file:

    python -m metaproxy.testing.metaprocs --metas A,B,C --index 1 \\
        --control /tmp/x/leader --table temp:8

L{MetaProcesses} starts, kills and restarts them (by PID) and writes the
control file.
"""

import os
import signal
import subprocess
import sys
import tempfile

from metaproxy.testing.net import free_port, wait_for_port


def _read_leader(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return False, None
    if text == "none":
        return True, None
    if text.isdigit():
        return True, int(text)
    return False, None


def main(argv=None):
    """Run one simulated meta until killed (the process entry point)."""
    import argparse

    from twisted.internet import reactor, task

    from metaproxy.sim.server import SimulatedCluster

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metas", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--table", action="append", default=[])
    args = parser.parse_args(argv)
    metas = tuple(args.metas.split(","))
    known, leader = _read_leader(args.control)
    cluster = SimulatedCluster(reactor, metas, leader_index=leader if known else 0)
    for spec in args.table or ["temp:8"]:
        name, count = spec.split(":")
        cluster.create_table(name, int(count))
    cluster.servers[args.index].start()

    def poll():
        ok, index = _read_leader(args.control)
        if ok and index != cluster.leader_index:
            cluster.set_leader(index)

    task.LoopingCall(poll).start(0.02)
    reactor.run()


class MetaProcesses:
    """
    N simulated metas of one cluster, one process each, on free loopback
    ports.

    @ivar addresses: the metas' C{"127.0.0.1:port"}, in index order.
    @ivar procs: the L{subprocess.Popen} of each meta (L{None} while killed).
    """

    def __init__(self, n=3, tables=("temp:8",), leader=0, ports=None):
        self.tmp = tempfile.mkdtemp(prefix="metaprocs-")
        self.control = os.path.join(self.tmp, "leader")
        self.ports = list(ports) if ports is not None else [free_port() for _ in range(n)]
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        self.tables = list(tables)
        self.procs = [None] * len(self.ports)
        self.set_leader(leader)

    def meta_addrs(self, order=None):
        """@return: the addresses joined with commas, in C{order} (indices) if given."""
        order = range(len(self.addresses)) if order is None else order
        return ",".join(self.addresses[i] for i in order)

    def set_leader(self, index):
        """Elect meta C{index} (L{None}: no leader known); the metas see it within ~20 ms."""
        part = self.control + ".new"
        with open(part, "w") as f:
            f.write("none" if index is None else str(index))
        os.replace(part, self.control)

    def start(self, index, wait=True):
        """Start (or restart) meta C{index}; by default wait until it listens."""
        cmd = [sys.executable, "-m", "metaproxy.testing.metaprocs", "--metas", self.meta_addrs(),
               "--index", str(index), "--control", self.control]
        for t in self.tables:
            cmd += ["--table", t]
        log = open(os.path.join(self.tmp, f"meta{index}.log"), "a")
        self.procs[index] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        log.close()
        if wait:
            wait_for_port(self.ports[index], self.procs[index])

    def start_all(self, wait=True):
        """Start every meta; by default wait (blocking) until each listens."""
        for i in range(len(self.ports)):
            self.start(i, wait=False)
        if wait:
            self.wait_listening()

    def wait_listening(self):
        """Block until every meta listens (run it in a thread from a reactor)."""
        for i, port in enumerate(self.ports):
            wait_for_port(port, self.procs[i])

    def kill(self, index, sig=signal.SIGKILL):
        """Send C{sig} (SIGKILL by default) to meta C{index}; for SIGKILL, reap it."""
        proc = self.procs[index]
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(10)
            self.procs[index] = None

    def stop_all(self):
        """End every meta this object started (SIGCONT first in case one was stopped)."""
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)
            self.procs[i] = None


if __name__ == "__main__":
    main()
