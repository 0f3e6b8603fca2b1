# -*- test-case-name: metaproxy.test.test_tap -*-
"""
Loopback helpers for tests and benchmarks that start real processes.
"""

import signal
import socket
import subprocess
import sys
import time


def free_port():
    """
    @return: a TCP port on 127.0.0.1 that was free a moment ago (for
        processes that must be told their port on the command line).
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for_port(port, proc=None, timeout=30.0):
    """
    Block until something accepts connections on 127.0.0.1:C{port}.

    @param proc: a L{subprocess.Popen} whose early exit ends the wait.
    @raise RuntimeError: on timeout or when C{proc} exited.
    """
    end = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s") from None
            time.sleep(0.05)


def twistd_argv(python=None, nodaemon=True):
    """
    @param python: the interpreter to run twistd with (default: this one).
    @param nodaemon: add C{-n --pidfile=} (run in the foreground, no pid file).
    @return: the argv prefix that runs twistd with C{python}; append the
        plugin name and its options.
    """
    argv = [python or sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    return argv + ["-n", "--pidfile="] if nodaemon else argv


def stop_process(proc, timeout=15.0):
    """
    End a process this test or benchmark started: SIGTERM (so it drains as
    in production), then SIGKILL if it has not exited after C{timeout}
    seconds. Does nothing if it already exited.

    @param proc: a L{subprocess.Popen}.
    @return: its exit status.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
