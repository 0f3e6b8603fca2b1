# -*- test-case-name: metaproxy.test.test_cli -*-
"""
Real processes for command-line tests: the C{metaproxy} command (the
installed script when there is one, else C{python -m metaproxy.cli}),
C{twistd pegasus-sim} and C{twistd metaproxy}. Loopback and free ports only;
every process started here is ended by its PID.
"""

import atexit
import os
import subprocess
import sys

import attrs

from metaproxy.testing.net import free_port, stop_process, twistd_argv, wait_for_port

_TWISTD = twistd_argv()


def cli_argv():
    """
    @return: the argv prefix that runs the C{metaproxy} command: the script
        installed next to this interpreter (as C{pip install .} puts it,
        and as CI tests it), else C{python -m metaproxy.cli}.
    """
    script = os.path.join(os.path.dirname(sys.executable), "metaproxy")
    if os.path.exists(script) and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "metaproxy.cli"]


def run_cli(*args, stdin=subprocess.DEVNULL, timeout=60, env=None):
    """
    Run C{metaproxy ARGS...} to completion.

    @param env: environment variables to set (or, with value L{None}, to
        remove) for the command, on top of this process's environment.

    @return: a L{subprocess.CompletedProcess} with text C{stdout}/C{stderr}.
    """
    environ = None
    if env is not None:
        environ = dict(os.environ)
        for name, value in env.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
    return subprocess.run(
        cli_argv() + list(args), stdin=stdin, capture_output=True, text=True, timeout=timeout, cwd="/", env=environ
    )


@attrs.define(eq=False)
class Process:
    """A started process and the ports it serves (ended by L{stop})."""

    proc: subprocess.Popen
    ports: tuple
    log: str

    def stop(self):
        """End the process (SIGTERM, then SIGKILL) if it still runs."""
        stop_process(self.proc)

    def output(self):
        """@return: what the process printed so far (its log file)."""
        with open(self.log, errors="replace") as f:
            return f.read()


def _start(argv, ports, log, workdir):
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    started = Process(proc, tuple(ports), log)
    try:
        for port in ports:
            wait_for_port(port, proc)
    except RuntimeError as e:
        started.stop()
        raise RuntimeError(f"{argv[5:]} did not start ({e}): {started.output()[-2000:]}") from None
    return started


def start_simulator(workdir, name, tables, metas=3):
    """
    Start C{twistd pegasus-sim} with C{metas} metas on free ports.

    @param tables: C{"NAME:PARTITIONS[:APP_ID]"} strings.
    @return: a L{Process}; C{ports} are the metas' ports, the first leads.
    """
    ports = [free_port() for _ in range(metas)]
    argv = _TWISTD + ["pegasus-sim", "--name", name, "--metas", ",".join(f"127.0.0.1:{p}" for p in ports)]
    for table in tables:
        argv += ["--table", table]
    return _start(argv, ports, os.path.join(workdir, f"sim-{name}.log"), workdir)


def start_metaproxy(workdir, config_path, port):
    """Start C{twistd metaproxy --config=CONFIG_PATH} and wait for C{port}. @return: a L{Process}."""
    argv = _TWISTD + ["metaproxy", f"--config={config_path}"]
    return _start(argv, [port], os.path.join(workdir, "metaproxy.log"), workdir)


def stop_at_exit(process):
    """Make sure C{process} ends with this test run. @return: C{process}."""
    atexit.register(process.stop)
    return process
