# -*- test-case-name: metaproxy.test.test_zkroutes -*-
"""
A real ZooKeeper server for tests: Debian's jar, 127.0.0.1, a free port, a
temporary data directory.

trial runs no class or module fixtures, so L{shared_server} is a lazily
started per-process server stopped at exit; destructive tests (restart,
wipe) start a private L{ZooKeeperServer} and stop it in a cleanup. Each test
uses its own root path on the shared server.
"""

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest

from metaproxy.testing.net import free_port

JAR = os.environ.get("METAPROXY_ZOOKEEPER_JAR", "/usr/share/java/zookeeper.jar")
JAVA = shutil.which("java")


def available():
    """@return: a reason string when no ZooKeeper server can be run, else L{None}."""
    if JAVA is None:
        return "java is not installed (apt-get install default-jre-headless)"
    if not os.path.exists(JAR):
        return f"{JAR} is missing (apt-get install libzookeeper-java)"
    return None


def four_letter(port, word, timeout=1.0):
    """@return: the server's answer to a four-letter command, or b"" if none."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            s.sendall(word)
            chunks = []
            while True:
                data = s.recv(4096)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)
    except OSError:
        return b""


def quiet_client(hosts, **kw):
    """
    @return: a L{kazoo.client.KazooClient} for test set-up whose connection
        chatter (two lines a second while a test holds ZooKeeper down) is
        not printed; its errors still are.
    """
    from kazoo.client import KazooClient

    logger = logging.Logger("kazoo.test-admin", logging.ERROR)
    logger.propagate = False
    logger.addHandler(logging.StreamHandler())
    return KazooClient(hosts=hosts, logger=logger, **kw)


class ZooKeeperServer:
    """
    One standalone ZooKeeper process.

    @ivar port: its client port on 127.0.0.1 (kept across restarts).
    @ivar tick: the tick time in ms; sessions may last 2 to 20 ticks.
    """

    def __init__(self, tick=200):
        reason = available()
        if reason:
            raise SkipTest(reason)
        self.tick = tick
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="metaproxy-zk-")
        self.proc = None

    @property
    def hosts(self):
        """@return: C{"127.0.0.1:port"}."""
        return f"127.0.0.1:{self.port}"

    def _write_config(self):
        data = os.path.join(self.dir, "data")
        os.makedirs(data, exist_ok=True)
        path = os.path.join(self.dir, "zoo.cfg")
        with open(path, "w") as f:
            f.write(
                f"tickTime={self.tick}\n"
                f"minSessionTimeout={2 * self.tick}\n"
                f"maxSessionTimeout={60 * self.tick}\n"
                f"dataDir={data}\n"
                f"clientPort={self.port}\n"
                "clientPortAddress=127.0.0.1\n"
                "admin.enableServer=false\n"
                "4lw.commands.whitelist=ruok,srvr,stat,mntr,wchs\n"
                "maxClientCnxns=0\n"
            )
        return path

    def start(self, timeout=30.0):
        """Start the server and wait until it answers C{ruok}."""
        config = self._write_config()
        log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen(
            [
                JAVA, "-Xms16m", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-XX:-UsePerfData", "-Dzookeeper.jmx.log4j.disable=true",
                "-cp", JAR, "org.apache.zookeeper.server.ZooKeeperServerMain", config,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited with {self.proc.returncode}; see {self.dir}/server.log")
            if four_letter(self.port, b"ruok", 0.5) == b"imok":
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"ZooKeeper did not answer ruok within {timeout}s")

    def stop(self):
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self):
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    def wipe(self):
        """Stop, delete all data (a replaced or wiped ensemble), start again."""
        self.stop()
        shutil.rmtree(os.path.join(self.dir, "data"), ignore_errors=True)
        self.start()

    def destroy(self):
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_shared = None


def shared_server():
    """@return: the per-process shared L{ZooKeeperServer}, started on first use."""
    global _shared
    if _shared is None:
        server = ZooKeeperServer()
        server.start()
        atexit.register(server.destroy)
        _shared = server
    return _shared
