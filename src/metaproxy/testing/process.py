# -*- test-case-name: metaproxy.test.test_limits_process -*-
"""
Run C{twistd -n metaproxy} as a separate process on loopback, with an
embedded simulated cluster, and talk to it over plain blocking sockets:
for process-level tests and benchmarks that measure its memory and CPU
from C{/proc}.
"""

import os
import socket
import subprocess
import tempfile
import threading
import time

import attrs

from metaproxy.testing.net import free_port, stop_process, twistd_argv, wait_for_port
from metaproxy.wire import frame, querycfg

#: The simulated table every config written here routes.
TABLE = "temp"


def rss_bytes(pid):
    """@return: the resident set size of process C{pid} (C{VmRSS} in C{/proc/<pid>/status})."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid):
    """@return: user plus system CPU seconds of process C{pid} (from C{/proc/<pid>/stat})."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@attrs.define(eq=False)
class ProxyProcess:
    """
    A running C{twistd -n metaproxy} with one simulated meta serving
    L{TABLE} (C{partitions} partitions), routed statically.

    @ivar proc: the L{subprocess.Popen}.
    @ivar port: the client port; C{admin_port}: the admin HTTP port.
    """

    proc: object
    port: int
    admin_port: int
    log_path: str

    @classmethod
    def start(cls, limits=None, partitions=8, metric="prometheus", timeout=30.0, backlog=None, routes=None,
              extra=""):
        """
        Start the process and wait until it accepts connections.

        @param limits: a mapping written as the C{limits:} section.
        @param backlog: a listen backlog to put in the listen string.
        @param routes: more static routes, table -> meta address.
        @param extra: YAML appended to the config (other sections).
        @return: a L{ProxyProcess}.
        """
        port, admin, meta = free_port(), free_port(), free_port()
        tmp = tempfile.mkdtemp(prefix="metaproxy-proc-")
        lines = [
            f"listen: tcp:{port}:interface=127.0.0.1" + (f":backlog={backlog}" if backlog else ""),
            f"admin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}",
            f"metric: {{type: {metric}, table_labels: false}}",
            "logging: {level: info}",
            "routes:",
            f"  {TABLE}: {{cluster_name: sim, meta_addrs: '127.0.0.1:{meta}'}}",
            *(f"  {t}: {{cluster_name: {t}, meta_addrs: '{a}'}}" for t, a in (routes or {}).items()),
            "simulator:",
            "  clusters:",
            f"    - {{name: sim, metas: ['127.0.0.1:{meta}'], tables: {{{TABLE}: {{partition_count: {partitions}}}}}}}",
        ]
        if limits:
            lines.append("limits:")
            lines.extend(f"  {k}: {v}" for k, v in limits.items())
        if extra:
            lines.append(extra)
        config = os.path.join(tmp, "metaproxy.yaml")
        with open(config, "w") as f:
            f.write("\n".join(lines) + "\n")
        log_path = os.path.join(tmp, "metaproxy.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                twistd_argv() + ["metaproxy", f"--config={config}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
            )
        self = cls(proc, port, admin, log_path)
        try:
            wait_for_port(port, proc, timeout)
            wait_for_port(meta, proc, timeout)
            # The first query opens the meta connection; wait until it answers.
            end = time.monotonic() + timeout
            while True:
                with self.connect() as s:
                    if query(s, 1).rpc_error == "ERR_OK" and _app_error(query(s, 2)) == "ERR_OK":
                        break
                if time.monotonic() > end:
                    raise RuntimeError("metaproxy never answered a query")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def connect(self, source="127.0.0.1", timeout=10.0):
        """@return: a blocking socket connected to the proxy from C{source}."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect(("127.0.0.1", self.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def rss(self):
        """@return: the process's resident set size in bytes."""
        return rss_bytes(self.proc.pid)

    def cpu(self):
        """@return: the process's CPU seconds so far."""
        return cpu_seconds(self.proc.pid)

    def metrics_text(self):
        """@return: the C{/metrics} exposition (needs C{metric: prometheus})."""
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def log_text(self):
        """@return: what the process logged so far."""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        """SIGTERM the process and wait for it (SIGKILL after 15 s)."""
        stop_process(self.proc)


def peer_closed(sock):
    """@return: L{True} if the peer closed C{sock} (a non-blocking check; leaves C{sock} non-blocking)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def request_bytes(seqid, table=TABLE):
    """@return: one query_cfg request frame (v0, as the Go client sends it)."""
    return frame.encode_request(querycfg.QUERY_CFG, seqid, querycfg.encode_args(table))


def query(sock, seqid, table=TABLE):
    """
    Send one query_cfg on a blocking socket and read its reply.

    @return: the L{frame.Response}.
    """
    sock.sendall(request_bytes(seqid, table))
    decoder = frame.ResponseDecoder()
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before the reply")
        for response in decoder.feed(data):
            if response.seqid == seqid:
                return response


def _app_error(response):
    return querycfg.peek_result(response.body).err if response.rpc_error == "ERR_OK" else response.rpc_error


@attrs.frozen
class AbuseResult:
    """
    What L{pipeline_without_reading} saw.

    @ivar sent: bytes the abuser got into the kernel before its sends
        blocked (or the target was reached).
    @ivar seconds: how long it kept sending.
    @ivar baseline: proxy RSS before; C{peak}: the highest seen while it
        sent; C{after}: half a second after it closed (bytes).
    @ivar latencies: the neighbour's query latencies meanwhile (seconds).
    """

    sent: int
    seconds: float
    baseline: int
    peak: int
    after: int
    latencies: list


def pipeline_without_reading(proxy, megabytes=20, stall=2.0, warmup=2000, deadline=30.0):
    """
    A client pipelines up to C{megabytes} of query_cfg requests and never
    reads a reply, until its sends have blocked for C{stall} seconds; a
    neighbour connection queries sequentially meanwhile.

    @param proxy: a running L{ProxyProcess}.
    @param warmup: neighbour queries before the baseline RSS is read (lets
        caches fill and PyPy's JIT settle).
    @return: an L{AbuseResult}.
    """
    neighbour = proxy.connect()
    try:
        for i in range(warmup):
            query(neighbour, i)
        baseline = proxy.rss()
        batch = b"".join(request_bytes(i) for i in range(1000))
        state = {"sent": 0, "done": False, "sock": None}

        def abuse():
            s = proxy.connect(timeout=stall)  # sends block once metaproxy stops reading
            state["sock"] = s
            try:
                while state["sent"] < megabytes * (1 << 20):
                    s.sendall(batch)
                    state["sent"] += len(batch)
            except OSError:
                pass
            state["done"] = True

        thread = threading.Thread(target=abuse, daemon=True)
        started = time.monotonic()
        thread.start()
        latencies, peak, seqid = [], baseline, 100000
        while not state["done"] and time.monotonic() - started < deadline:
            t = time.perf_counter()
            query(neighbour, seqid)
            latencies.append(time.perf_counter() - t)
            seqid += 1
            if seqid % 20 == 0:
                peak = max(peak, proxy.rss())
        thread.join(stall + 5)
        seconds = time.monotonic() - started
        peak = max(peak, proxy.rss())
        if state["sock"] is not None:
            state["sock"].close()
        time.sleep(0.5)
        return AbuseResult(state["sent"], seconds, baseline, peak, proxy.rss(), latencies)
    finally:
        neighbour.close()


def unknown_names_rss(pid, port, names, name_bytes):
    """
    Query C{names} distinct table names of C{name_bytes} bytes each, none
    of them a route, one after the other on one connection to the proxy
    (process C{pid}, client port C{port}); no scrape.

    @return: C{(baseline RSS, RSS after, answers by error name)}.
    """
    import collections

    baseline = rss_bytes(pid)
    answers = collections.Counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for i in range(names):
            name = f"{i:08d}".ljust(name_bytes, "x")
            response = query(sock, i, name)
            err = response.rpc_error
            if err == "ERR_OK":
                err = querycfg.peek_result(response.body).err
            answers[err] += 1
    return baseline, rss_bytes(pid), answers
