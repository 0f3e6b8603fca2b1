# -*- test-case-name: metaproxy.test.test_upgrade -*-
"""
Hot upgrade, old process: on SIGUSR2 (C{systemctl reload}), start the
installed code again and hand it the listeners and every client connection.

 1. The config file is loaded with the project's own loader first (in a
    thread: the reactor never waits on a disk); if it is invalid the
    upgrade is refused (each problem logged) and this process goes on
    serving.
 2. A fresh C{exec} of the same command line (same interpreter, same
    twistd arguments, so the current config file) is started with one end
    of a Unix socket pair as its fd 3 (L{metaproxy.ops.handover.ENV_FD}).
 3. It builds its services and, once its route source is ready, says
    C{ready}. Only then does this process stop accepting and send the
    listening sockets (clients, admin HTTP), then every client connection
    once nothing is pending on it (requests in flight are answered here
    first), with the bytes of an incomplete frame it had already read.
    A connection whose reply bytes are still unsent after L{UNSENT_WAIT}
    seconds (a client that does not read) moves with those bytes: the new
    process sends them first. One whose requests are still unanswered
    after L{PENDING_WAIT} seconds is closed alone. Each connection's fate
    is logged (one line for each that did not simply move, and a summary).
 4. The new process adopts each, acknowledges it (only then is it closed
    here, without C{shutdown()}: the client sees neither FIN nor RST),
    sends C{MAINPID=}/C{READY=1} to systemd and says C{switched}; this
    process then stops (no C{STOPPING=1}) and exits 0.

If the new process exits, or never says ready within L{UPGRADE_TIMEOUT}
seconds, it is killed, the listeners accept here again and every
connection not yet acknowledged is served here as before. Once it said
ready it has the listeners (and accepts on them), so it is never killed
for being slow: the hand-over is bounded instead (L{PENDING_WAIT}), and
if the new process then does not confirm within L{SWITCH_GRACE} seconds,
it keeps what it adopted and this process accepts again beside it.
"""

import os
import signal
import socket
import sys
import time

import attrs
from twisted.internet import defer, threads
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from metaproxy.config import ConfigError, load_config
from metaproxy.frontend.server import _peer
from metaproxy.ops.handover import ENV_FD, MAX_PAYLOAD, HandoverChannel, adopt_channel
from metaproxy.ops.lifecycle import close_quietly

log = Logger()

#: Seconds the new process has to say it is ready.
UPGRADE_TIMEOUT = 60.0
#: Seconds after which a held connection whose replies are still unsent
#: moves with its unsent bytes instead of waiting for them to drain.
UNSENT_WAIT = 2.0
#: Seconds after which a held connection whose requests are still
#: unanswered is closed alone (the others are not held up by it).
PENDING_WAIT = 15.0
#: Seconds the new process has to confirm once everything was sent.
SWITCH_GRACE = 10.0
#: Environment variables that describe this process only.
_PER_PROCESS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID", ENV_FD)
_TWISTD = "from twisted.scripts.twistd import run; run()"


def successor_command(argv=None, executable=None):
    """
    @return: the command line that starts this program again: the same
        interpreter and arguments (a C{python -c} start, whose code is
        lost, becomes twistd's entry point with the same arguments).
    """
    argv = sys.argv if argv is None else argv
    executable = sys.executable if executable is None else executable
    if argv and os.path.isfile(argv[0]):
        return [executable] + list(argv)
    return [executable, "-c", _TWISTD] + list(argv[1:])


def successor_environ(environ=None):
    """@return: this environment minus what only held for this process, plus the channel's fd (3)."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in _PER_PROCESS}
    env[ENV_FD] = "3"
    return env


class _Watch(ProcessProtocol):
    def __init__(self, upgrader):
        self.upgrader = upgrader

    def processEnded(self, reason):
        self.upgrader._child_ended(reason)


@attrs.define(eq=False)
class Upgrader:
    """
    Runs hot upgrades of this process (see the module docstring).

    @ivar handed: client connections handed over (acknowledged) so far.
    @ivar refused: upgrades refused because the config was invalid.
    @ivar fates: what became of the connections held by the last upgrade:
        C{moved} (sent with nothing unsent), C{moved_unsent} (sent with its
        unsent reply bytes), C{closed} (closed alone), C{gone} (closed by
        its client meanwhile).
    """

    reactor: object
    config_path: str
    proxy: object  # DrainingServerService of the clients
    admin: object  # DrainingServerService of the admin HTTP
    factory: object  # PegasusServerFactory
    notify: object = None  # NotifyService
    command: list = attrs.Factory(successor_command)
    timeout: float = UPGRADE_TIMEOUT
    unsent_wait: float = UNSENT_WAIT
    pending_wait: float = PENDING_WAIT
    switch_grace: float = SWITCH_GRACE
    poll: float = 0.01
    load: object = load_config
    in_thread: object = None  # callable(f, *args) -> Deferred; default: the reactor's thread pool
    state: str = "idle"
    handed: int = 0
    refused: int = 0
    _process: object = None
    _channel: object = None
    _timer: object = None
    _pump: object = None
    _waiting: dict = attrs.Factory(dict)
    _sent: dict = attrs.Factory(dict)
    _ports: list = attrs.Factory(list)
    _started: float = 0.0
    _done_sent: bool = False
    _hand_started: float = 0.0
    fates: dict = attrs.Factory(dict)

    def install_signal(self):
        """Run L{request} on SIGUSR2 (in the reactor thread)."""
        signal.signal(signal.SIGUSR2, lambda signum, frame: self.reactor.callFromThread(self.request))

    def request(self):
        """
        Start a hot upgrade unless one runs or the config file is invalid.

        @return: a L{Deferred} firing with L{True} if the new process was
            started, L{False} if not (the log says why).
        """
        if self.state != "idle":
            log.warn("hot upgrade already in progress ({state}); SIGUSR2 ignored", state=self.state)
            return defer.succeed(False)
        self.state = "checking"
        run = self.in_thread
        if run is None:
            def run(f, *args):
                return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)
        d = defer.maybeDeferred(run, self.load, self.config_path)
        d.addCallbacks(lambda _: self._spawn(), self._refuse)
        return d

    def _refuse(self, failure):
        self.state = "idle"
        self.refused += 1
        if failure.check(ConfigError):
            log.error("hot upgrade refused, {path} is not a valid config (still serving):\n{error}",
                      path=self.config_path, error=failure.getErrorMessage())
        else:
            log.failure("hot upgrade refused, cannot load {path} (still serving)", failure, path=self.config_path)
        return False

    def _spawn(self):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = self.reactor.spawnProcess(
                _Watch(self), self.command[0], self.command, env=successor_environ(),
                childFDs={0: 0, 1: 1, 2: 2, 3: child.fileno()},
            )
        except Exception as e:
            parent.close()
            self.state = "idle"
            log.error("hot upgrade: cannot start {command}: {error} (still serving)", command=self.command, error=e)
            return False
        finally:
            child.close()
        self.state = "starting"
        self._started = time.monotonic()
        self._done_sent = False
        self._channel = adopt_channel(self.reactor, parent.detach(), HandoverChannel(self._record, self._lost))
        self._timer = self.reactor.callLater(self.timeout, self._abort, f"not ready after {self.timeout:g} s")
        log.info("hot upgrade: started pid {pid}: {command}", pid=self._process.pid, command=" ".join(self.command))
        return True

    # -- the hand-over

    def _record(self, header, payload, fds):
        for fd in fds:  # the new process sends none
            os.close(fd)
        kind = header.get("type")
        if kind == "ready" and self.state == "starting":
            self._hand_over()
        elif kind == "ack" and self.state == "handing":
            proto = self._sent.pop(header.get("id"), None)
            if proto is not None:
                proto.detach_for_handover()
                self.handed += 1
        elif kind == "switched" and self.state == "handing":
            self._switched(header)

    def _hand_over(self):
        self.state = "handing"
        if self._timer is not None and self._timer.active():
            self._timer.cancel()  # the new process has the listeners from now on: never killed for slowness
        self._hand_started = self.reactor.seconds()
        self.fates = dict.fromkeys(("moved", "moved_unsent", "closed", "gone"), 0)
        for name, service in (("proxy", self.proxy), ("admin", self.admin)):
            port = getattr(service, "port", None)
            if port is None or not service.listening:
                continue
            port.stopReading()
            self._ports.append(port)
            self._channel.send({"type": "listener", "name": name, "family": int(port.socket.family)},
                               fds=[port.fileno()])
        for i, proto in enumerate(self.factory.open_connections()):
            if proto.hold_for_handover() is not False:
                self._waiting[i] = proto
        log.info("hot upgrade: accepting stopped, handing over {count} connections", count=len(self._waiting))
        self._timer = self.reactor.callLater(self.pending_wait, self._close_unanswered)
        self._pump = LoopingCall(self._send_idle_connections)
        self._pump.clock = self.reactor
        self._pump.start(self.poll, now=True)

    def _send_idle_connections(self):
        waited = self.reactor.seconds() - self._hand_started
        with_unsent = waited >= self.unsent_wait
        fates = self.fates
        for cid, proto in list(self._waiting.items()):
            transport = proto.transport
            if not getattr(transport, "connected", True):
                del self._waiting[cid]  # closed meanwhile: nothing to hand over
                fates["gone"] += 1
                continue
            state = proto.handover_state(with_unsent)
            if state is None:
                continue
            partial, framing = state
            unsent = proto.handover_unsent()
            del self._waiting[cid]
            if len(partial) + len(unsent) > MAX_PAYLOAD:
                self._close_alone(proto, f"{len(unsent)} reply bytes unsent, more than a hand-over record holds")
                continue
            self._sent[cid] = proto
            if unsent:
                fates["moved_unsent"] += 1
                log.info("hot upgrade: connection from {peer} moves with {unsent} reply bytes unsent "
                         "(not drained after {seconds:.1f} s)", peer=_peer(transport), unsent=len(unsent),
                         seconds=waited)
            else:
                fates["moved"] += 1
            header = {"type": "conn", "id": cid, "family": int(transport.socket.family), "framing": framing,
                      "unsent": len(unsent)}
            principal_of = getattr(self.factory.handler, "principal_of", None)  # Kerberos clients (security.clients)
            principal = principal_of(proto) if principal_of is not None else None
            if principal is not None:
                header["principal"] = principal
            self._channel.send(header, partial + unsent, fds=[transport.fileno()])
        if not self._waiting and not self._done_sent:
            self._done_sent = True
            self._channel.send({"type": "done", "count": len(self._sent) + self.handed})
            self._pump.stop()
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = self.reactor.callLater(self.switch_grace, self._never_switched)

    def _close_alone(self, proto, why):
        self.fates["closed"] += 1
        log.warn("hot upgrade: closing the connection from {peer} alone: {why}", peer=_peer(proto.transport), why=why)
        proto.close_for_handover()

    def _close_unanswered(self):
        """The hand-over bound ran out: close alone each connection still waiting for its answers."""
        self._timer = None
        if self.state != "handing":
            return
        for cid, proto in list(self._waiting.items()):
            del self._waiting[cid]
            self._close_alone(proto, f"{proto.pending_count()} requests still unanswered after "
                                     f"{self.pending_wait:g} s")
        if self._pump is not None and self._pump.running:
            self._send_idle_connections()  # sends "done" and starts the switch grace

    def _serve_here_again(self):
        """Close the channel; accept here again; serve every connection not handed over as before."""
        self._channel.transport.loseConnection()
        for port in self._ports:
            port.startReading()
        for proto in list(self._waiting.values()) + list(self._sent.values()):
            proto.release_hold()
        self._ports, self._waiting, self._sent = [], {}, {}

    def _never_switched(self):
        """The new process adopted connections but does not confirm: it keeps them; accept here again."""
        self._timer = None
        if self.state != "handing":
            return
        self.state = "idle"
        self._serve_here_again()
        log.error("hot upgrade unfinished: pid {pid} did not confirm within {grace:g} s; it keeps the {count} "
                  "connections it adopted and was not killed; this process accepts again", pid=self._process.pid,
                  grace=self.switch_grace, count=self.handed)

    def _switched(self, header):
        self.state = "done"
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for port in self._ports:
            port._shouldShutdown = False  # closing our copy must not stop the new process's listener
            close_quietly(port)  # nor be logged as "(TCP Port N Closed)": the new process serves on it
        if self.notify is not None:
            self.notify.handed_over()
        fates = self.fates
        log.info(
            "hot upgrade done in {seconds:.3f} s: {count} connections handed over to pid {pid} ({moved_unsent} "
            "of them with unsent reply bytes); {closed} closed alone, {gone} closed by their clients; exiting",
            seconds=time.monotonic() - self._started, count=self.handed, pid=self._process.pid,
            moved_unsent=fates.get("moved_unsent", 0), closed=fates.get("closed", 0), gone=fates.get("gone", 0),
        )
        self.reactor.stop()

    # -- failures: keep serving here

    def _lost(self, reason):
        if self.state in ("starting", "handing"):
            self._abort(f"the hand-over channel closed ({reason.getErrorMessage()})")

    def _child_ended(self, reason):
        if self.state in ("starting", "handing"):
            self._abort(f"the new process ended ({reason.getErrorMessage()})")

    def _abort(self, why):
        if self.state not in ("starting", "handing"):
            return
        lost = self.handed
        self.state = "idle"
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._pump is not None and self._pump.running:
            self._pump.stop()
        try:
            self._process.signalProcess("KILL")
        except Exception:
            pass  # already gone
        self._serve_here_again()
        log.error(
            "hot upgrade failed: {why}; this process keeps serving ({lost} connections had been handed over)",
            why=why, lost=lost,
        )


def attach_hot_upgrade(top, reactor, config_path, takeover=None):
    """
    Give a built service tree its hot upgrade: an L{Upgrader} (SIGUSR2,
    installed when the global reactor runs) as C{top.upgrader}; when this
    process is itself a successor, C{takeover} (a
    L{metaproxy.ops.takeover.Takeover}) is attached too. Adds the metric
    C{metaproxy_handover_connections_total{direction=sent|received}}.
    """
    from twisted.internet import reactor as global_reactor

    upgrader = Upgrader(
        reactor, config_path, top.getServiceNamed("proxy"), top.getServiceNamed("admin"), top.factory,
        top.getServiceNamed("notify"),
    )
    top.upgrader = upgrader
    if reactor is global_reactor and hasattr(signal, "SIGUSR2"):
        reactor.callWhenRunning(upgrader.install_signal)
    if takeover is not None:
        takeover.attach(top)
    top.metrics.watch_counts(
        "metaproxy_handover_connections",
        "Client connections handed over by hot upgrades (sent by this process, received from its predecessor).",
        "direction",
        lambda: {"sent": upgrader.handed, "received": 0 if takeover is None else takeover.received},
    )
    return upgrader
