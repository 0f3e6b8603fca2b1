# -*- test-case-name: metaproxy.test.test_tap -*-
"""
Loopback helpers for tests and benchmarks that start real processes.
"""

import socket
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
