# -*- test-case-name: metaproxy.test.test_upgrade -*-
"""
Tests for the hot upgrade: the hand-over channel (L{metaproxy.ops.handover}),
the server's hooks, the old process (L{metaproxy.ops.upgrade}) and the new
one (L{metaproxy.ops.takeover}), down to real processes under client load.
"""

import os
import re
import socket
import sys

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metaproxy.ops import handover
from metaproxy.app import build_service
from metaproxy.config import parse_config
from metaproxy.frontend.dispatch import RpcDispatcher
from metaproxy.ops.sdnotify import NotifyService
from metaproxy.frontend.server import PegasusServerFactory
from metaproxy.testing.harness import start_cluster, stop_all
from metaproxy.testing.pegasus_client import connect_client
from metaproxy.testing.proxyproc import config_text, pid_alive
from metaproxy.testing.upgrade_run import UpgradeRun
from metaproxy.ops.upgrade import Upgrader, successor_command, successor_environ
from metaproxy.wire import codes, frame, querycfg


def _workdir(case):
    path = os.path.abspath(case.mktemp())
    os.makedirs(path)
    return path


class ProcessUpgradeTests(TestCase):
    """Real twistd processes on loopback, Go-profile clients in this process."""

    timeout = 120

    @defer.inlineCallbacks
    def test_upgrade_keeps_every_connection(self):
        """
        200 Go-profile connections, some with slow queries in flight, one
        with half a frame sent, queries before, during and after SIGUSR2:
        every query is answered ERR_OK, no client sees FIN or RST, the
        successor announces MAINPID=<its pid> with READY=1, the old process
        exits 0 without STOPPING=1.
        """
        run = UpgradeRun(reactor, _workdir(self), connections=200, in_flight=10)
        self.addCleanup(run.stop)
        yield run.start()
        figures = yield run.upgrade()
        self.assertEqual(figures.queries_failed, [], figures.log_tail)
        self.assertGreaterEqual(figures.queries_ok, 2 * 200 + 10)
        self.assertEqual(figures.closed_connections, 0)
        self.assertNotEqual(figures.new_pid, figures.old_pid)
        self.assertTrue(pid_alive(figures.new_pid))
        self.assertEqual(figures.old_exit, 0)
        self.assertEqual(figures.stopping_sent, 0)
        self.assertIn("200 connections handed over to pid", figures.handed_over)
        self.assertNotIn("Traceback", figures.log_tail)

    @defer.inlineCallbacks
    def test_shared_log_file(self):
        """
        With C{logging.file} set (rotated at 2 KiB), both processes write
        the file during the upgrade: the old one's and the new one's
        start-up lines are there, every line is whole (a timestamp, a
        namespace, a message), each rotated file was rotated once full, and
        the old process does not log Twisted's "(TCP Port ... Closed)".
        """
        workdir = _workdir(self)
        log_file = os.path.join(workdir, "file.log")
        run = UpgradeRun(reactor, workdir, connections=20, in_flight=3, log_file=log_file, log_max_bytes=2048)
        self.addCleanup(run.stop)
        yield run.start()
        figures = yield run.upgrade()
        self.assertEqual(figures.old_exit, 0)
        # Rotated at 2 KiB while both wrote: read every file, oldest first.
        rotated = sorted((name for name in os.listdir(workdir) if name.startswith("file.log.")),
                         key=lambda name: -int(name.rsplit(".", 1)[1]))
        self.assertTrue(rotated, os.listdir(workdir))
        text = ""
        for name in rotated + ["file.log"]:
            with open(os.path.join(workdir, name), encoding="utf-8") as f:
                part = f.read()
            self.assertTrue(part.endswith("\n"), name)
            if name != "file.log":
                self.assertLess(os.path.getsize(os.path.join(workdir, name)), 2048 + 1024, name)
            text += part
        starts = [line for line in text.splitlines() if "starting: routes from" in line]
        self.assertEqual(len(starts), 2, text)
        self.assertIn(f"connections handed over to pid {figures.new_pid}", text)
        whole = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] \S")
        torn = [line for line in text.splitlines() if not whole.match(line)]
        self.assertEqual(torn, [], text)
        self.assertNotIn("Closed)", text)

    @defer.inlineCallbacks
    def test_client_that_does_not_read(self):
        """
        One client holds 10 MB of replies unread while 50 others query
        under load: the upgrade is not held up by it. Every query of the 50
        is answered ERR_OK and none of them sees FIN or RST; the stuck
        connection moves with its unsent bytes (logged) and, reading again,
        gets every answer intact from the new process.
        """
        run = UpgradeRun(reactor, _workdir(self), connections=50, in_flight=5, stuck_bytes=10 << 20)
        self.addCleanup(run.stop)
        yield run.start()
        figures = yield run.upgrade()
        self.assertEqual(figures.queries_failed, [], repr(figures))
        self.assertEqual(figures.closed_connections, 0)
        self.assertGreaterEqual(figures.stuck_bytes, 10 << 20)
        self.assertIn("moves with", figures.fates, figures.log_tail)
        self.assertFalse(figures.stuck_closed)
        self.assertEqual(figures.stuck_ok, figures.stuck_queries)
        self.assertIn("51 connections handed over to pid", figures.handed_over)
        self.assertEqual(figures.old_exit, 0)
        self.assertNotIn("Traceback", figures.log_tail)

    @defer.inlineCallbacks
    def test_invalid_config_refused(self):
        """
        With an invalid config file on disk, SIGUSR2 is refused (logged with
        the config's own message), nothing is started, and the old process
        goes on serving every connection.
        """
        run = UpgradeRun(reactor, _workdir(self), connections=20, in_flight=3)
        self.addCleanup(run.stop)
        yield run.start()
        with open(run.config_path, "w") as f:
            f.write(run.config_text + "drain_timeout: soon\n")
        figures = yield run.upgrade(expect_switch=False)
        self.assertTrue(figures.refused_logged)
        self.assertIn("is not a valid config (still serving)", figures.log_tail)
        self.assertIn("metaproxy.yaml:9:", figures.log_tail)  # the loader's located message
        self.assertEqual(figures.queries_failed, [])
        self.assertEqual(figures.closed_connections, 0)
        self.assertIsNone(run.proc.poll())
        self.assertFalse(any(m.startswith("MAINPID=") for m in run._notify.messages))


class FailedUpgradeTests(TestCase):
    """The old side in this process: a successor that fails changes nothing."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.cluster = start_cluster(reactor, "a", {"temp": 8})
        self.addCleanup(stop_all, self.cluster)
        self.path = os.path.join(_workdir(self), "metaproxy.yaml")
        with open(self.path, "w") as f:
            f.write(config_text("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1",
                                {"temp": ("a", self.cluster.meta_addrs())}))
        self.fatal = []
        self.top = build_service(parse_config(open(self.path).read()), reactor, fatal=self.fatal.append)
        self.top.startService()
        self.addCleanup(self.top.stopService)
        self.proxy = self.top.getServiceNamed("proxy")
        port = yield self.proxy.when_listening()
        self.port = port.getHost().port
        self.client = yield connect_client(reactor, "127.0.0.1", self.port)
        self.addCleanup(lambda: self.client.transport.loseConnection() or self.client.closed)
        response = yield self.client.query("temp")
        self.assertEqual(response.rpc_error, codes.ERR_OK)

    def upgrader(self, code, timeout=30.0, **kw):
        return Upgrader(reactor, self.path, self.proxy, self.top.getServiceNamed("admin"), self.top.factory,
                        command=[sys.executable, "-c", code], timeout=timeout, **kw)

    @defer.inlineCallbacks
    def still_serving(self, upgrader):
        while upgrader.state != "idle":
            yield task.deferLater(reactor, 0.02, lambda: None)
        response = yield self.client.query("temp")
        self.assertEqual(response.rpc_error, codes.ERR_OK)
        self.assertFalse(self.client.closed.called)
        other = yield connect_client(reactor, "127.0.0.1", self.port)
        self.addCleanup(lambda: other.transport.loseConnection() or other.closed)
        response = yield other.query("temp")
        self.assertEqual(response.rpc_error, codes.ERR_OK)
        self.assertEqual(self.fatal, [])

    @defer.inlineCallbacks
    def test_successor_exits(self):
        """A new process that exits at once: logged, this one serves on (old and new connections)."""
        upgrader = self.upgrader("import sys; sys.exit(3)")
        self.assertTrue((yield upgrader.request()))
        yield self.still_serving(upgrader)
        self.assertEqual(upgrader.handed, 0)

    @defer.inlineCallbacks
    def test_successor_never_ready(self):
        """A new process that never says ready is killed after the timeout; this one serves on."""
        upgrader = self.upgrader("import time; time.sleep(60)", timeout=1.0)
        self.assertTrue((yield upgrader.request()))
        pid = upgrader._process.pid
        yield self.still_serving(upgrader)
        while pid_alive(pid):
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_successor_breaks_during_hand_over(self):
        """
        A new process that says ready, then dies: the listener accepts here
        again and the held connections are read again.
        """
        code = (
            "import json, os, socket, struct, time\n"
            "s = socket.socket(fileno=3)\n"
            "h = json.dumps({'type': 'ready', 'pid': os.getpid()}).encode()\n"
            "s.sendall(struct.pack('!II', len(h), 0) + h)\n"
            "time.sleep(0.3)\n"
        )
        upgrader = self.upgrader(code)
        self.assertTrue((yield upgrader.request()))
        yield self.still_serving(upgrader)

    @defer.inlineCallbacks
    def test_ready_successor_never_killed(self):
        """
        A new process that said ready has the listeners: it is not killed
        when it is slow (here it adopts nothing and never confirms). After
        the switch grace this process accepts and serves again beside it,
        and says so.
        """
        code = (
            "import json, os, socket, struct, time\n"
            "s = socket.socket(fileno=3)\n"
            "h = json.dumps({'type': 'ready', 'pid': os.getpid()}).encode()\n"
            "s.sendall(struct.pack('!II', len(h), 0) + h)\n"
            "time.sleep(12)\n"
        )
        upgrader = self.upgrader(code, timeout=4.0, switch_grace=1.0)
        started = reactor.seconds()
        self.assertTrue((yield upgrader.request()))
        pid = upgrader._process.pid
        yield self.still_serving(upgrader)
        # Past the ready timeout (which used to bound the whole upgrade and kill it): alive.
        yield task.deferLater(reactor, max(0.0, started + 5.0 - reactor.seconds()), lambda: None)
        self.assertTrue(pid_alive(pid))
        self.assertEqual(upgrader.fates["moved"], 1)

    @defer.inlineCallbacks
    def test_invalid_config_refused(self):
        """An invalid config file (read in a thread): request() refuses, starts nothing, counts it."""
        with open(self.path, "a") as f:
            f.write("drain_timeout: x\n")
        upgrader = self.upgrader("raise SystemExit(0)")
        self.assertFalse((yield upgrader.request()))
        self.assertEqual((upgrader.refused, upgrader.state, upgrader._process), (1, "idle", None))

    @defer.inlineCallbacks
    def test_second_request_ignored(self):
        """SIGUSR2 during an upgrade (also while the config is being checked) does not start a second one."""
        checks = []
        upgrader = self.upgrader("import time; time.sleep(1)",
                                 in_thread=lambda f, *a: checks.append(defer.Deferred()) or checks[-1])
        first = upgrader.request()
        self.assertFalse((yield upgrader.request()))
        checks[0].callback(None)
        self.assertTrue((yield first))
        self.assertFalse((yield upgrader.request()))
        self.assertEqual(len(checks), 1)
        upgrader._abort("test over")


class CommandTests(SynchronousTestCase):
    def test_script_argv(self):
        """A twistd script start is re-run with the same interpreter and arguments."""
        self.assertEqual(successor_command([sys.executable, "-n", "metaproxy"], "/py"), ["/py", sys.executable, "-n", "metaproxy"])

    def test_dash_c_argv(self):
        """A `python -c` start becomes twistd's entry point with the same arguments."""
        command = successor_command(["-c", "-n", "metaproxy"], "/py")
        self.assertEqual(command[:2], ["/py", "-c"])
        self.assertIn("twistd import run", command[2])
        self.assertEqual(command[3:], ["-n", "metaproxy"])

    def test_environ(self):
        """Per-process variables (LISTEN_*, WATCHDOG_PID) are dropped; the channel is fd 3."""
        env = successor_environ({"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "WATCHDOG_PID": "1",
                                 "WATCHDOG_USEC": "5", "PATH": "/bin"})
        self.assertEqual(env, {"WATCHDOG_USEC": "5", "PATH": "/bin", handover.ENV_FD: "3"})


def _connect(factory):
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransportWithDisconnection()
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto, transport


class ServerHookTests(SynchronousTestCase):
    """The hooks of L{metaproxy.frontend.server.PegasusServerProtocol} a hand-over uses."""

    def setUp(self):
        self.answers = []
        self.factory = PegasusServerFactory(
            RpcDispatcher({querycfg.QUERY_CFG: lambda r, c: self.answers.append(defer.Deferred()) or self.answers[-1]}),
            MemoryReactorClock(), idle_timeout=5.0,
        )
        self.request = frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("t"))

    def test_ready_only_when_nothing_pending(self):
        """A held connection is ready to go only once its request was answered; it is not read meanwhile."""
        proto, transport = _connect(self.factory)
        proto.dataReceived(self.request)
        self.assertTrue(proto.hold_for_handover())
        self.assertEqual(transport.producerState, "paused")
        self.assertIsNone(proto.handover_state())
        self.answers[0].callback(frame.Reply(querycfg.error_result(codes.ERR_OK)))
        self.assertEqual(transport.producerState, "paused")  # answered, but not read again
        self.assertEqual(proto.handover_state(), (b"", "THFT"))
        self.assertEqual(self.factory.open_connections(), [proto])

    def test_partial_frame_travels(self):
        """The bytes of an incomplete frame go with the connection and complete there."""
        proto, _ = _connect(self.factory)
        proto.dataReceived(self.request[:7])
        proto.hold_for_handover()
        partial, framing = proto.handover_state()
        self.assertEqual(partial, self.request[:7])
        successor, _ = _connect(self.factory)
        successor.restore_handover(partial, framing)
        successor.dataReceived(self.request[7:])
        self.assertEqual(len(self.answers), 1)

    def _stuck_reply(self):
        """A held connection with one answer the transport would not take (its client does not read)."""
        proto, transport = _connect(self.factory)
        proto.dataReceived(self.request)
        proto._out.pauseProducing()  # the transport is full
        self.answers[0].callback(frame.Reply(querycfg.error_result(codes.ERR_OK)))
        self.assertEqual(transport.value(), b"")
        proto.hold_for_handover()
        return proto, transport

    def test_unsent_bytes_travel(self):
        """
        Unsent reply bytes hold a connection back until the upgrade asks
        for them; then they are taken away (not sent here) and the new
        process sends them first.
        """
        proto, transport = self._stuck_reply()
        unsent = proto.unsent_bytes()
        self.assertGreater(unsent, 0)
        self.assertIsNone(proto.handover_state())
        self.assertEqual(proto.handover_state(with_unsent=True), (b"", "THFT"))
        moved = proto.handover_unsent()
        self.assertGreater(len(moved), 20)  # the encoded reply
        self.assertLessEqual(len(moved), unsent)
        self.assertEqual(proto.unsent_bytes(), 0)
        self.assertEqual(self.factory.budget.out_bytes, 0)
        proto._out.resumeProducing()
        self.assertEqual(transport.value(), b"")  # not sent from here any more
        successor, successor_transport = _connect(self.factory)
        successor.restore_handover(b"", "THFT", moved)
        self.assertEqual(successor_transport.value(), moved)

    def test_release_sends_taken_bytes_here(self):
        """A failed hand-over after the bytes were taken sends them here after all."""
        proto, transport = self._stuck_reply()
        proto.handover_state(with_unsent=True)
        moved = proto.handover_unsent()
        proto._out.resumeProducing()
        proto.release_hold()
        self.assertEqual(transport.value(), moved)

    def test_close_alone(self):
        """A connection that cannot be handed over is aborted by itself."""
        proto, transport = self._stuck_reply()
        proto.close_for_handover()
        self.assertFalse(transport.connected)
        self.assertEqual(self.factory.open_connections(), [])

    def test_release_reads_again(self):
        """A failed hand-over releases the connection: read again, idle timer back."""
        proto, transport = _connect(self.factory)
        proto.hold_for_handover()
        self.assertIsNone(proto._idle)
        proto.release_hold()
        self.assertEqual(transport.producerState, "producing")
        self.assertIsNotNone(proto._idle)

    def test_idle_timer_stopped_while_held(self):
        """A held connection is not closed as idle."""
        proto, transport = _connect(self.factory)
        proto.hold_for_handover()
        self.factory.clock.advance(60)
        self.assertFalse(transport.disconnecting)

    def test_closing_not_held(self):
        """A connection already closing is not handed over."""
        proto, _ = _connect(self.factory)
        proto._closing = True
        self.assertFalse(proto.hold_for_handover())

    def test_detach_without_shutdown(self):
        """Detaching closes this process's copy only: no shutdown(), so no FIN."""
        proto, transport = _connect(self.factory)
        proto.hold_for_handover()
        proto.detach_for_handover()
        self.assertIs(transport._shouldShutdown, False)
        self.assertEqual(self.factory.open_connections(), [])


class ListenDiffersTests(SynchronousTestCase):
    """A changed C{listen:} across an upgrade is told apart from the listener handed over."""

    def test_same(self):
        from metaproxy.ops.takeover import listen_differs

        address = IPv4Address("TCP", "127.0.0.1", 34601)
        self.assertIsNone(listen_differs("tcp:34601:interface=127.0.0.1:backlog=9", address))
        self.assertIsNone(listen_differs("tcp:0:interface=127.0.0.1", address))
        self.assertIsNone(listen_differs("unix:/tmp/x", address))

    def test_changed(self):
        from metaproxy.ops.takeover import listen_differs

        address = IPv4Address("TCP", "127.0.0.1", 34601)
        self.assertEqual(listen_differs("tcp:34602:interface=127.0.0.1", address), "port 34602 != 34601")
        self.assertEqual(listen_differs("tcp:port=34601:interface=127.0.0.2", address),
                         "interface 127.0.0.2 != 127.0.0.1")


class _SocketTransport(StringTransportWithDisconnection):
    """A test transport with what the upgrade reads of a TCP connection (its family and descriptor)."""

    class socket:
        family = socket.AF_INET

    def fileno(self):
        return -1


class _Channel:
    """Records what the old process sends over the hand-over channel."""

    def __init__(self):
        self.sent = []
        self.transport = StringTransportWithDisconnection()

    def send(self, header, payload=b"", fds=()):
        self.sent.append((header, payload))


class HandOverBoundsTests(SynchronousTestCase):
    """The old process's bounds on the hand-over, on a clock."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.answers = []
        self.factory = PegasusServerFactory(
            RpcDispatcher({querycfg.QUERY_CFG: lambda r, c: self.answers.append(defer.Deferred()) or self.answers[-1]}),
            self.clock,
        )
        self.upgrader = Upgrader(self.clock, "unused", None, None, self.factory, pending_wait=15.0)
        self.upgrader._channel = _Channel()
        self.upgrader._process = type("P", (), {"pid": 4242})()
        self.upgrader.state = "starting"
        self.events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self):
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = _SocketTransport(peerAddress=IPv4Address("TCP", "10.1.1.1", 4000))
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto, transport

    def test_unanswered_connection_closed_alone(self):
        """
        A connection whose request is still unanswered after pending_wait
        is closed by itself; the others moved at once, and the hand-over
        then finishes ("done"): no waiting on it, no kill.
        """
        idle, idle_transport = self.connect()
        busy, busy_transport = self.connect()
        busy.dataReceived(frame.encode_request(querycfg.QUERY_CFG, 1, querycfg.encode_args("t")))
        self.upgrader._record({"type": "ready"}, b"", [])
        kinds = [h["type"] for h, _ in self.upgrader._channel.sent]
        self.assertEqual(kinds, ["conn"])
        self.clock.advance(14.9)
        self.assertTrue(busy_transport.connected)
        self.clock.advance(0.2)
        self.assertFalse(busy_transport.connected)
        self.assertTrue(idle_transport.connected)  # still here until the new process acks it
        self.assertEqual([h["type"] for h, _ in self.upgrader._channel.sent], ["conn", "done"])
        self.assertEqual(self.upgrader.fates, {"moved": 1, "moved_unsent": 0, "closed": 1, "gone": 0})
        self.assertTrue(any("alone" in e.get("log_format", "") and "unanswered" in str(e.get("why"))
                            for e in self.events))


class ChannelTests(TestCase):
    """The hand-over channel over a real Unix socket pair."""

    timeout = 20

    def pair(self):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        got, lost = [], []
        left = handover.adopt_channel(reactor, a.detach(), handover.HandoverChannel(lambda *r: None, lambda r: None))
        right = handover.adopt_channel(
            reactor, b.detach(), handover.HandoverChannel(lambda h, p, f: got.append((h, p, f)), lost.append)
        )
        self.addCleanup(left.transport.loseConnection)
        self.addCleanup(right.transport.loseConnection)
        return left, right, got, lost

    @defer.inlineCallbacks
    def until(self, condition):
        for _ in range(500):
            if condition():
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("condition never met")

    @defer.inlineCallbacks
    def test_records_with_descriptors(self):
        """Records arrive in order with their payloads and their own descriptors, usable."""
        left, right, got, _ = self.pair()
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        left.send({"type": "a"})
        left.send({"type": "b", "n": 1}, b"partial", fds=[w])
        left.send({"type": "c"}, b"x" * 100000)
        yield self.until(lambda: len(got) == 3)
        self.assertEqual([h["type"] for h, _, _ in got], ["a", "b", "c"])
        self.assertEqual(got[1][1], b"partial")
        self.assertEqual([len(f) for _, _, f in got], [0, 1, 0])
        os.write(got[1][2][0], b"!")
        os.close(got[1][2][0])
        self.assertEqual(os.read(r, 1), b"!")

    @defer.inlineCallbacks
    def test_oversized_record_breaks_channel(self):
        """A record announcing more than the bound closes the channel; nothing is delivered."""
        left, right, got, lost = self.pair()
        left.transport.write(b"\xff\xff\xff\xff\x00\x00\x00\x00")
        yield self.until(lambda: lost)
        self.assertEqual(got, [])
        self.assertTrue(right.broken)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_unreadable_header_breaks_channel(self):
        """A header that is not JSON closes the channel."""
        left, right, got, lost = self.pair()
        left.transport.write(b"\x00\x00\x00\x03\x00\x00\x00\x00{{{")
        yield self.until(lambda: lost)
        self.assertEqual(got, [])

    def test_encode_bounds(self):
        """A payload over the bound cannot be encoded."""
        self.assertRaises(ValueError, handover.encode_record, {}, b"x" * (handover.MAX_PAYLOAD + 1))


class NotifyHookTests(SynchronousTestCase):
    def test_take_over_sends_mainpid_with_ready(self):
        """The new process's READY waits for the take-over and carries MAINPID=<its pid>."""
        sent = []
        clock = MemoryReactorClock()
        service = NotifyService(clock, environ={"NOTIFY_SOCKET": "/x"}, send=lambda m, e: sent.append(m))
        done = defer.Deferred()
        service.take_over(lambda: done)
        service.startService()
        clock.run()
        self.assertEqual(sent, [])
        done.callback(None)
        self.assertEqual(sent, [b"MAINPID=%d\nREADY=1" % os.getpid()])

    def test_handed_over_sends_no_stopping(self):
        """The old process says nothing more to systemd once it handed over (no STOPPING=1, no watchdog)."""
        sent = []
        clock = MemoryReactorClock()
        service = NotifyService(clock, environ={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000"},
                                send=lambda m, e: sent.append(m))
        service.startService()
        clock.run()
        service.handed_over()
        del sent[:]
        clock.advance(5)
        service.stopService()
        self.assertEqual(sent, [])


class WiringTests(SynchronousTestCase):
    def test_tap_attaches_upgrader_and_metric(self):
        """twistd's service tree gets an Upgrader and the hand-over counter, both directions at 0."""
        from prometheus_client import generate_latest

        from metaproxy import tap

        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("routes: {t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}}\n")
        options = tap.Options()
        options.parseOptions(["--config", path])
        top = tap.makeService(options, MemoryReactorClock())
        self.assertEqual(top.upgrader.config_path, path)
        self.assertIs(top.upgrader.factory, top.factory)
        text = generate_latest(top.metrics.registry).decode()
        self.assertIn('metaproxy_handover_connections_total{direction="sent"} 0.0', text)
        self.assertIn('metaproxy_handover_connections_total{direction="received"} 0.0', text)

    def test_takeover_only_when_started_by_an_upgrade(self):
        """The successor side exists only with METAPROXY_HANDOVER_FD, which it takes out of the environment."""
        from metaproxy.ops.takeover import HandedOverEndpoint, Takeover

        self.assertIsNone(Takeover.from_environ(MemoryReactorClock(), {}))
        env = {handover.ENV_FD: "7"}
        takeover = Takeover.from_environ(MemoryReactorClock(), env)
        self.assertEqual((takeover._fd, env), (7, {}))
        endpoint = takeover.endpoint_for("proxy", "systemd:domain=INET:index=0")
        self.assertIsInstance(endpoint, HandedOverEndpoint)
        d = endpoint.listen(object())
        self.assertNoResult(d)


@defer.inlineCallbacks
def _start_successor(case, extra=""):
    """
    Start a successor process's service tree in this process, in front of
    a simulated cluster, with C{case} playing the old process over a real
    channel; wait for its "ready".

    @param extra: YAML appended to the config.
    @return: C{(top, takeover, old channel, headers received, fatal messages)}.
    """
    from metaproxy.ops.takeover import Takeover

    cluster = start_cluster(reactor, "a", {"temp": 8})
    case.addCleanup(stop_all, cluster)
    config = parse_config(config_text("tcp:1:interface=127.0.0.1", "tcp:2:interface=127.0.0.1",
                                      {"temp": ("a", cluster.meta_addrs())}, extra))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    takeover = Takeover(reactor, theirs.detach(), poll=0.01)
    fatal = []
    top = build_service(config, reactor, fatal=fatal.append, endpoint_for=takeover.endpoint_for)
    takeover.attach(top)
    top.startService()
    case.addCleanup(top.stopService)
    got = []
    old = handover.adopt_channel(reactor, ours.detach(), handover.HandoverChannel(
        lambda h, p, f: got.append(h), lambda r: None))
    case.addCleanup(old.transport.loseConnection)
    yield case.until(lambda: got)
    return top, takeover, old, got, fatal


class TakeoverInProcessTests(TestCase):
    """The new process's side, with this test playing the old process over a real channel."""

    timeout = 30

    @defer.inlineCallbacks
    def until(self, condition):
        for _ in range(1000):
            if condition():
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("condition never met")

    @defer.inlineCallbacks
    def test_takes_over_listener_and_connection(self):
        """
        The successor says ready once its routes are, adopts the listener
        and a connection whose half frame the old process had read, acks
        it, answers the completed query, accepts new clients on the
        adopted port and says switched after done.
        """
        from twisted.logger import globalLogPublisher

        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        top, takeover, old, got, fatal = yield _start_successor(self)
        self.assertEqual(got[0], {"type": "ready", "pid": os.getpid(), "fds": 0})

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        client = yield connect_client(reactor, "127.0.0.1", port)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        server_side, _ = listener.accept()
        self.addCleanup(server_side.close)
        write, sent = client.transport.write, []
        client.transport.write = sent.append
        answered = client.query("temp")
        client.transport.write = write
        half = len(sent[0]) // 2

        old.send({"type": "listener", "name": "proxy", "family": int(socket.AF_INET)}, fds=[listener.fileno()])
        old.send({"type": "conn", "id": 5, "family": int(socket.AF_INET), "framing": None}, sent[0][:half],
                 fds=[server_side.fileno()])
        yield self.until(lambda: len(got) == 2)
        self.assertEqual(got[1]["type"], "ack")
        self.assertEqual(got[1]["id"], 5)
        listener.close()
        server_side.close()
        write(sent[0][half:])
        response = yield answered
        self.assertEqual(response.rpc_error, codes.ERR_OK)
        other = yield connect_client(reactor, "127.0.0.1", port)
        self.addCleanup(lambda: other.transport.loseConnection() or other.closed)
        response = yield other.query("temp")
        self.assertEqual(response.rpc_error, codes.ERR_OK)
        self.assertTrue(top.getServiceNamed("proxy").listening)

        old.send({"type": "done", "count": 1})
        yield self.until(lambda: len(got) == 3)
        self.assertEqual(got[2]["type"], "switched")
        self.assertEqual(takeover.received, 1)
        self.assertEqual(fatal, [])
        self.assertTrue(any("is ignored" in e.get("log_format", "") and e.get("name") == "proxy"
                            for e in self.events), "the changed listen: was not reported")


class KerberosHandoverTests(TestCase):
    """
    With security.clients.mandatory, a connection that negotiated with the
    old process keeps its principal across a hot upgrade (the conn record
    carries it), so the new process serves it instead of closing it.
    """

    timeout = 30
    until = TakeoverInProcessTests.until

    @defer.inlineCallbacks
    def _handed_over(self, header_extra):
        top, takeover, old, got, fatal = yield _start_successor(
            self, "security: {keytab: /nonexistent.keytab, clients: {enabled: true, mandatory: true}}\n")
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        self.addCleanup(listener.close)
        client = yield connect_client(reactor, "127.0.0.1", listener.getsockname()[1])
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        server_side, _ = listener.accept()
        self.addCleanup(server_side.close)
        old.send(dict({"type": "conn", "id": 1, "family": int(socket.AF_INET), "framing": None}, **header_extra),
                 b"", fds=[server_side.fileno()])
        yield self.until(lambda: len(got) == 2)
        server_side.close()
        old.send({"type": "done", "count": 1})  # finish it: a takeover left half-way stops the reactor
        yield self.until(lambda: len(got) == 3)
        return top, client

    @defer.inlineCallbacks
    def test_negotiated_connection_kept(self):
        """A handed-over connection with a principal is served under mandatory."""
        top, client = yield self._handed_over({"principal": "alice@R"})
        response = yield client.query("temp")
        self.assertEqual(response.rpc_error, codes.ERR_OK)
        self.assertEqual(top.security.handler.counts["refused_unauthenticated"], 0)

    @defer.inlineCallbacks
    def test_unauthenticated_connection_still_refused(self):
        """A handed-over connection that had not negotiated is refused as before."""
        top, client = yield self._handed_over({})
        d = client.query("temp")
        yield self.assertFailure(d, Exception)
        self.assertEqual(top.security.handler.counts["refused_unauthenticated"], 1)
