# -*- test-case-name: metaproxy.test.test_upgrade -*-
"""
A hot upgrade of a real metaproxy process under client load, for the
process-level test and C{bench/upgrade.py}.

One client has sent the first half of a frame when the upgrade starts
and sends the rest after it. Simulated meta clusters run in the caller's reactor: C{fast} (table
C{temp}) and C{slow} (table C{slow}, every answer delayed) so that some
queries are in flight when SIGUSR2 arrives. Go-profile clients connect,
query before, keep querying during, and query after the upgrade; the
proxy tells a notify socket here (as it tells systemd) its C{READY=1},
its successor's C{MAINPID=}, and any C{STOPPING=1}.
"""

import os
import random
import signal
import tempfile
import time

import attrs
from twisted.internet import defer, task
from twisted.internet.protocol import DatagramProtocol

from metaproxy.testing.harness import start_cluster, stop_all
from metaproxy.testing.net import free_port
from metaproxy.testing.pegasus_client import connect_client
from metaproxy.testing.proxyproc import config_text, pid_alive, start_proxy
from metaproxy.wire import codes

SLOW_DELAY = 0.4


class _NotifyReceiver(DatagramProtocol):
    def __init__(self):
        self.messages = []

    def datagramReceived(self, data, addr):
        self.messages.append(data.decode(errors="replace"))


@attrs.define
class UpgradeFigures:
    """What one run saw (every count is over all clients)."""

    connections: int = 0
    old_pid: int = 0
    new_pid: int = 0
    old_exit: object = None
    seconds_to_ready: float = 0.0  # SIGUSR2 -> MAINPID/READY from the new process
    seconds_to_exit: float = 0.0  # SIGUSR2 -> old process gone
    queries: int = 0
    queries_ok: int = 0
    queries_failed: list = attrs.Factory(list)
    closed_connections: int = 0  # FIN or RST seen by a client
    stopping_sent: int = 0
    handed_over: str = ""  # the new process's log line
    refused_logged: bool = False
    log_tail: str = ""
    stuck_queries: int = 0  # queries of the client that does not read during the upgrade
    stuck_ok: int = 0
    stuck_bytes: int = 0  # reply bytes it had not read when SIGUSR2 was sent
    stuck_closed: bool = False
    fates: str = ""  # the old process's lines on connections that did not simply move


class UpgradeRun:
    """
    Set up, run and tear down one scenario (see the module docstring).

    @param workdir: an existing directory for the config and the log.
    """

    def __init__(self, reactor, workdir, connections=200, in_flight=10, log_file=None, log_max_bytes=None,
                 stuck_bytes=0):
        """
        @param log_file: also set C{logging.file} to this path (both
            processes then write to it).
        @param log_max_bytes: its C{logging.max_bytes} (the default if L{None}).
        @param stuck_bytes: if not 0, one more client (not among
            C{connections}) has this many reply bytes unread when SIGUSR2
            is sent: it queries a large table and stops reading, and reads
            again once the upgrade is over.
        """
        self.reactor = reactor
        self.log_file = log_file
        self.log_max_bytes = log_max_bytes
        self.stuck_bytes = stuck_bytes
        self.stuck = None
        self.workdir = workdir
        self.connections = connections
        self.in_flight = in_flight
        self.figures = UpgradeFigures(connections=connections)
        self.clients = []
        self._clusters = []
        self._procs = []
        self._pids = []
        self._notify = _NotifyReceiver()
        self._notify_port = None
        self.config_path = os.path.join(workdir, "metaproxy.yaml")
        self.log_path = os.path.join(workdir, "metaproxy.log")

    @defer.inlineCallbacks
    def start(self):
        """Start the clusters and the proxy; connect and check every client (one query each)."""
        fast = start_cluster(self.reactor, "fast", {"temp": 8, "big": 1024})
        slow = start_cluster(self.reactor, "slow", {"slow": 4})
        slow.set_delay(SLOW_DELAY)
        self._clusters = [fast, slow]
        self.port = free_port()
        self.config_text = config_text(
            f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
            f"tcp:{free_port()}:interface=127.0.0.1",
            {"temp": ("fast", fast.meta_addrs()), "slow": ("slow", slow.meta_addrs()),
             "big": ("fast", fast.meta_addrs())},
            extra="limits: {max_connections: 0, idle_timeout: 0}\n"
            + (f"logging: {{level: info, file: '{self.log_file}'"
               + (f", max_bytes: {self.log_max_bytes}" if self.log_max_bytes else "") + "}\n" if self.log_file else ""),
        )
        with open(self.config_path, "w") as f:
            f.write(self.config_text)
        notify_path = tempfile.mktemp(prefix="mp-notify-", dir="/tmp")
        self._notify_port = self.reactor.listenUNIXDatagram(notify_path, self._notify)
        self._notify_path = notify_path
        self._log = open(self.log_path, "wb")
        proc = start_proxy(self.config_path, self.workdir, self._log, env={"NOTIFY_SOCKET": notify_path})
        self._procs.append(proc)
        self.proc = proc
        self.figures.old_pid = proc.pid
        self._pids.append(proc.pid)
        yield self._until(lambda: "READY=1" in self._notify.messages, 30, "the proxy never sent READY=1")
        for start in range(0, self.connections, 100):
            batch = yield defer.gatherResults(
                [connect_client(self.reactor, "127.0.0.1", self.port, "go", record=False)
                 for _ in range(start, min(self.connections, start + 100))]
            )
            self.clients.extend(batch)
        yield self._query_all("temp")
        if self.stuck_bytes:
            self.stuck = yield connect_client(self.reactor, "127.0.0.1", self.port, "go", record=False)
            received = []
            deliver = self.stuck.dataReceived
            self.stuck.dataReceived = lambda data: received.append(len(data)) or deliver(data)
            response = yield self.stuck.query("big")
            assert response.rpc_error == codes.ERR_OK, response.rpc_error
            self._stuck_reply_size = sum(received)

    @defer.inlineCallbacks
    def _stop_reading_stuck(self):
        """The stuck client stops reading and asks for C{stuck_bytes} of replies."""
        figures = self.figures
        self.stuck.transport.pauseProducing()
        count = -(-self.stuck_bytes // self._stuck_reply_size)
        figures.stuck_queries = count
        figures.stuck_bytes = count * self._stuck_reply_size
        queries = []
        for _ in range(count):
            d = self.stuck.query("big")
            d.addCallbacks(self._stuck_answered, lambda f: None)
            queries.append(d)
        yield task.deferLater(self.reactor, 1.0, lambda: None)  # the proxy answers what it can read
        return queries

    def _stuck_answered(self, response):
        if response.rpc_error == codes.ERR_OK:
            self.figures.stuck_ok += 1

    def _record(self, response):
        self.figures.queries += 1
        if response.rpc_error == codes.ERR_OK:
            self.figures.queries_ok += 1
        else:
            self.figures.queries_failed.append(response.rpc_error)

    def _failed(self, failure):
        self.figures.queries += 1
        self.figures.queries_failed.append(failure.getErrorMessage())

    def _query(self, client, table):
        return client.query(table).addCallbacks(self._record, self._failed)

    def _query_all(self, table):
        return self._bounded([self._query(c, table) for c in self.clients])

    def _bounded(self, queries, timeout=30):
        """@return: a Deferred for every query, failing them (recorded) after C{timeout} s."""
        return defer.gatherResults(queries).addTimeout(timeout, self.reactor).addErrback(lambda f: None)

    @defer.inlineCallbacks
    def upgrade(self, expect_switch=True, timeout=60):
        """
        Send SIGUSR2 with C{in_flight} slow queries outstanding and steady
        queries on random connections throughout; then query on every
        connection again.
        """
        figures = self.figures
        # One client has sent half a frame when the upgrade starts, the rest after it.
        split_client = self.clients[0]
        write, held = split_client.transport.write, []
        split_client.transport.write = held.append
        split = self._query(split_client, "temp")
        split_client.transport.write = write
        write(held[0][: len(held[0]) // 2])
        others = self.clients[1:]
        stuck = (yield self._stop_reading_stuck()) if self.stuck is not None else []
        inflight = [self._query(c, "slow") for c in random.sample(others, min(self.in_flight, len(others)))]
        steady = []
        ticker = task.LoopingCall(lambda: steady.append(self._query(random.choice(others), "temp")))
        ticker.clock = self.reactor
        ticker.start(0.005)
        yield task.deferLater(self.reactor, 0.05, lambda: None)
        t0 = time.monotonic()
        os.kill(figures.old_pid, signal.SIGUSR2)
        if expect_switch:
            yield self._until(lambda: any(m.startswith("MAINPID=") for m in self._notify.messages), timeout,
                              "the new process never sent MAINPID")
            figures.seconds_to_ready = time.monotonic() - t0
            line = next(m for m in self._notify.messages if m.startswith("MAINPID="))
            figures.new_pid = int(line.split("\n")[0].split("=")[1])
            self._pids.append(figures.new_pid)
            yield self._until(lambda: self.proc.poll() is not None, timeout, "the old process did not exit")
            figures.seconds_to_exit = time.monotonic() - t0
            figures.old_exit = self.proc.returncode
        else:
            yield self._until(lambda: "hot upgrade refused" in self._read_log(), timeout, "no refusal logged")
            figures.refused_logged = True
        yield task.deferLater(self.reactor, 0.2, lambda: None)
        write(held[0][len(held[0]) // 2:])
        ticker.stop()
        yield self._bounded(inflight + steady + [split])
        yield self._query_all("temp")
        if self.stuck is not None:
            self.stuck.transport.resumeProducing()
            yield defer.DeferredList(stuck).addTimeout(30, self.reactor).addErrback(lambda f: None)
            figures.stuck_closed = self.stuck.closed.called
        figures.closed_connections = sum(1 for c in self.clients if c.closed.called)
        figures.stopping_sent = sum(1 for m in self._notify.messages if "STOPPING=1" in m)
        log = self._read_log()
        figures.handed_over = next((l for l in log.splitlines() if "connections handed over to pid" in l), "")
        figures.log_tail = log[-3000:]
        figures.fates = "\n".join(l for l in log.splitlines() if "moves with" in l or "closing the connection from" in l)
        return figures

    def _read_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    @defer.inlineCallbacks
    def _until(self, condition, timeout, why):
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                raise AssertionError(f"{why} after {timeout} s; log:\n{self._read_log()[-3000:]}")
            yield task.deferLater(self.reactor, 0.02, lambda: None)

    @defer.inlineCallbacks
    def stop(self):
        """Close the clients, end every proxy process started (by pid), stop the clusters."""
        for c in self.clients + ([self.stuck] if self.stuck is not None else []):
            c.transport.loseConnection()
        for pid in self._pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 20
        while any(pid_alive(p) for p in self._pids) and time.monotonic() < end:
            for proc in self._procs:
                proc.poll()
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        for pid in self._pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        for proc in self._procs:
            proc.poll()
        if self._notify_port is not None:
            yield self._notify_port.stopListening()
            try:
                os.unlink(self._notify_path)
            except OSError:
                pass
        self._log.close()
        yield stop_all(*self._clusters)
