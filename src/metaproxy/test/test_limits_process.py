# -*- test-case-name: metaproxy.test.test_limits_process -*-
"""
Process-level checks of metaproxy's bounds: a real C{twistd -n metaproxy}
(with an embedded simulated meta) on loopback, driven by plain sockets,
its memory read from C{/proc}. Each test runs in a few seconds and uses
generous bounds, so that a slow, shared machine does not make it flaky.
"""

import platform
import signal
import socket
import statistics
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from metaproxy.wire import frame, querycfg
from metaproxy.testing.process import (
    ProxyProcess,
    peer_closed,
    pipeline_without_reading,
    query,
    request_bytes,
    unknown_names_rss,
)

MIB = 1 << 20


_eof = peer_closed


class _ProcessTest(SynchronousTestCase):
    limits = None

    def setUp(self):
        self.proxy = ProxyProcess.start(limits=self.limits)
        self.addCleanup(self.proxy.stop)
        self.sockets = []
        self.addCleanup(lambda: [s.close() for s in self.sockets])

    def open(self, n, source="127.0.0.1"):
        socks = [self.proxy.connect(source) for _ in range(n)]
        self.sockets.extend(socks)
        return socks

    def metric(self, line_start):
        for line in self.proxy.metrics_text().splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        self.fail(f"{line_start} not exported")


class PipeliningTests(_ProcessTest):
    def test_client_that_never_reads_is_bounded(self):
        """
        A client pipelining up to 20 MB of queries without reading a reply
        keeps the proxy's RSS within 64 MB of its baseline (metaproxy
        stops reading it, so TCP stops the client), RSS stays there after
        it closes, and a neighbour is answered quickly all along.
        """
        r = pipeline_without_reading(self.proxy, megabytes=20, stall=2.0)
        mib = f"baseline {r.baseline / MIB:.1f} MiB, peak {r.peak / MIB:.1f}, after {r.after / MIB:.1f}"
        self.assertLess(r.peak - r.baseline, 64 * MIB, mib)
        self.assertLess(r.after - r.baseline, 64 * MIB, mib)
        self.assertGreater(len(r.latencies), 10)
        self.assertLess(statistics.median(r.latencies), 0.05)
        # The proxy still answers after the abuser left, and holds nothing for it.
        with self.proxy.connect() as s:
            self.assertEqual(query(s, 1).seqid, 1)
        self.assertEqual(self.metric('metaproxy_buffered_bytes{direction="out"}'), 0.0)


class UnknownNamesTests(SynchronousTestCase):
    def test_long_unknown_names_pin_nothing(self):
        """
        With routes from ZooKeeper, 300 queries for distinct unknown names
        of 1 MB each (scaled down from the 2 100 of
        bench/unknown_names_rss.py), no scrape: each is answered
        ERR_OBJECT_NOT_FOUND and RSS grows by less than 64 MB (every name
        used to be kept as a pending metric label: +290 MB).
        """
        from metaproxy.testing.zkload import Processes

        procs = Processes(tables=2)
        self.addCleanup(procs.stop)
        procs.start()
        baseline, after, answers = unknown_names_rss(procs.proxy_pid, procs.port, 300, 1000 * 1000)
        self.assertEqual(dict(answers), {"ERR_OBJECT_NOT_FOUND": 300})
        # PyPy frees the 1 MB frames only at its next major collection: its
        # growth is that lag (about 70 MiB, the same for 300 or 2 100 names).
        bound = 128 * MIB if platform.python_implementation() == "PyPy" else 64 * MIB
        self.assertLess(after - baseline, bound, f"{baseline / MIB:.1f} -> {after / MIB:.1f} MiB")
        self.assertNotIn('table="0000', procs.http("/metrics")[1])


class StalledFrameTests(_ProcessTest):
    limits = {"frame_timeout": 1.0}

    def test_stalled_frames_closed_idle_connections_kept(self):
        """
        300 connections each stalled in the middle of a request frame are
        closed by the frame timeout; 100 idle connections (50 never used,
        50 with every query answered) stay open and keep working.
        """
        partial = request_bytes(1)[:30]
        stalled = self.open(300)
        for s in stalled:
            s.sendall(partial)
        never = self.open(50)
        used = self.open(50)
        for i, s in enumerate(used):
            query(s, i)
        deadline = time.monotonic() + 15
        open_ = stalled
        while open_ and time.monotonic() < deadline:
            time.sleep(0.2)
            open_ = [s for s in open_ if not _eof(s)]
        self.assertEqual(len(open_), 0, "stalled connections still open after 15 s")
        time.sleep(1.5)  # longer than the frame timeout: idle ones must still be open
        self.assertEqual([_eof(s) for s in never + used], [False] * 100)
        for i, s in enumerate(used[:5] + never[:5]):
            s.setblocking(True)
            self.assertEqual(query(s, 1000 + i).seqid, 1000 + i)
        self.assertEqual(self.metric("metaproxy_client_frame_timeouts_total"), 300.0)
        self.assertEqual(self.metric('metaproxy_buffered_bytes{direction="in"}'), 0.0)


class PerPeerTests(_ProcessTest):
    limits = {"max_connections_per_peer": 20}

    def test_cap_refuses_only_the_excess(self):
        """
        With a cap of 20, 25 connections from 127.0.0.1 leave 20 open and
        5 closed at once; a client from 127.0.0.2 is still served, and the
        refusals are counted.
        """
        socks = self.open(25)
        time.sleep(0.5)
        closed = [_eof(s) for s in socks]
        self.assertEqual(closed.count(True), 5)
        self.assertEqual(closed.count(False), 20)
        other = self.open(1, source="127.0.0.2")[0]
        self.assertEqual(query(other, 7).seqid, 7)
        survivor = socks[closed.index(False)]
        survivor.setblocking(True)
        self.assertEqual(query(survivor, 8).seqid, 8)
        self.assertEqual(self.metric('metaproxy_client_connections_refused_total{reason="per_peer"}'), 5.0)
        self.assertIn("limits.max_connections_per_peer 20", self.proxy.log_text())



class GlobalCapTests(_ProcessTest):
    limits = {"max_connections": 200, "max_connections_per_peer": 10}

    def test_new_clients_get_in_at_the_cap(self):
        """
        200 idle connections from 20 addresses fill max_connections (scaled
        down from the 20 000 of bench/connection_cap.py); 22 new clients
        are then all served: the oldest connections that never sent a
        request make room, counted in a metric.
        """
        idle = []
        for i in range(20):
            idle.extend(self.open(10, source=f"127.0.0.{10 + i}"))
        time.sleep(0.5)
        self.assertEqual(sum(_eof(s) for s in idle), 0)
        newcomers = [self.open(1, source=f"127.0.1.{1 + i}")[0] for i in range(22)]
        for i, s in enumerate(newcomers):
            s.setblocking(True)
            self.assertEqual(query(s, 100 + i).seqid, 100 + i)
        time.sleep(0.3)
        self.assertEqual(sum(_eof(s) for s in idle), 22)
        self.assertEqual(self.metric("metaproxy_client_connections_evicted_total"), 22.0)
        self.assertEqual(self.metric('metaproxy_client_connections_refused_total{reason="limit"}'), 0.0)


class DrainTests(SynchronousTestCase):
    """On SIGTERM, connections are drained one by one, still served meanwhile."""

    def setUp(self):
        # A "meta" that accepts connections and never answers: queries to it
        # stay pending until the backend deadline.
        self.blackhole = socket.socket()
        self.blackhole.bind(("127.0.0.1", 0))
        self.blackhole.listen(16)
        self.addCleanup(self.blackhole.close)
        address = "127.0.0.1:%d" % self.blackhole.getsockname()[1]
        self.proxy = ProxyProcess.start(
            routes={"slow": address}, extra="timeouts: {client_default: 3.0}\ndrain_timeout: 20.0"
        )
        self.addCleanup(self.proxy.stop)

    def test_drain_closes_idle_connections_and_answers_busy_ones(self):
        """
        After SIGTERM an idle connection is closed at once; a connection
        waiting for an answer stays open, gets a new request answered, is
        closed once its last answer is sent, and the process exits well
        before drain_timeout.
        """
        busy, idle = self.proxy.connect(), self.proxy.connect()
        self.addCleanup(busy.close)
        self.addCleanup(idle.close)
        self.assertEqual(query(idle, 1).seqid, 1)
        busy.sendall(request_bytes(10, table="slow"))
        time.sleep(0.2)
        started = time.monotonic()
        self.proxy.proc.send_signal(signal.SIGTERM)
        idle.settimeout(5)
        self.assertEqual(idle.recv(1), b"")  # closed by the drain
        self.assertEqual(query(busy, 11).rpc_error, "ERR_OK")  # still read and answered
        busy.settimeout(10)
        decoder, replies = frame.ResponseDecoder(), []
        while True:
            data = busy.recv(65536)
            if not data:
                break
            replies.extend(decoder.feed(data))
        self.assertEqual([r.seqid for r in replies], [10])
        reply = replies[0]  # the retryable answer of a query whose metas never answered
        err = reply.rpc_error if reply.rpc_error != "ERR_OK" else querycfg.peek_result(reply.body).err
        self.assertIn(err, ("ERR_TIMEOUT", "ERR_SERVICE_NOT_ACTIVE"))
        try:
            rc = self.proxy.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.fail("metaproxy did not exit after the drain")
        self.assertLess(time.monotonic() - started, 15)
        self.assertIn(rc, (0, -signal.SIGTERM))
        self.assertIn("drained: every request in flight was answered", self.proxy.log_text())
