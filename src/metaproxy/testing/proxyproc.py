# -*- test-case-name: metaproxy.test.test_upgrade -*-
"""
Run metaproxy as a real C{twistd} process, for process-level tests and
benchmarks (socket activation, hot upgrade).
"""

import os
import socket
import subprocess
import sys

#: How C{python -c} starts twistd (the same in the process and its successor).
TWISTD = "from twisted.scripts.twistd import run; run()"

#: Puts the inherited socket on fd 3 and says so the way systemd does
#: (C{LISTEN_PID} must be the pid of the process that reads it; Twisted 26
#: also wants C{LISTEN_FDNAMES}, which systemd >= 227 always sets), then
#: becomes twistd. argv: C{FD twistd-args...}.
_ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_FDNAMES='metaproxy.socket', LISTEN_PID=str(os.getpid()))\n"
    "os.execv(sys.executable, [sys.executable, '-c', " + repr(TWISTD) + "] + sys.argv[2:])\n"
)


def config_text(listen, admin_listen, routes, extra=""):
    """
    @param routes: C{{table: (cluster_name, meta_addrs)}}.
    @return: a metaproxy YAML config.
    """
    lines = [f"listen: '{listen}'", f"admin: {{listen: '{admin_listen}'}}", "metric: {type: prometheus}", "routes:"]
    for table, (cluster, addrs) in routes.items():
        lines.append(f"  {table}: {{cluster_name: {cluster}, meta_addrs: '{addrs}'}}")
    return "\n".join(lines) + "\n" + extra


def start_proxy(config_path, workdir, output, env=None, listening_socket=None):
    """
    Start C{twistd -n --pidfile= metaproxy --config=PATH} in C{workdir}.

    @param output: an open file for its stdout and stderr (not a pipe: a
        successor started by a hot upgrade inherits them and outlives it).
    @param env: extra environment variables.
    @param listening_socket: a listening L{socket.socket} to pass the way
        systemd socket activation does (fd 3, C{LISTEN_FDS=1}).
    @return: the L{subprocess.Popen}.
    """
    environ = dict(os.environ)
    environ.update(env or {})
    twistd_args = ["-n", "--pidfile=", "metaproxy", f"--config={config_path}"]
    if listening_socket is None:
        argv = [sys.executable, "-c", TWISTD] + twistd_args
        pass_fds = ()
    else:
        fd = listening_socket.fileno()
        argv = [sys.executable, "-c", _ACTIVATE, str(fd)] + twistd_args
        pass_fds = (fd,)
    return subprocess.Popen(
        argv, cwd=workdir, env=environ, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        pass_fds=pass_fds,
    )


def listening_socket():
    """@return: a TCP socket listening on a free loopback port (for socket activation)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    return s


def pid_alive(pid):
    """@return: whether a process with this pid exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
