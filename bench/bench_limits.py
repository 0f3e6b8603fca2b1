"""
Figures for metaproxy's resource bounds, against a real C{twistd -n
metaproxy} process (embedded simulated meta) on loopback; memory and CPU
from /proc.

    .venv/bin/python bench/bench_limits.py abuse    # a client pipelining without reading
    .venv/bin/python bench/bench_limits.py stalled  # 300 stalled frames, 1 s frame timeout
    .venv/bin/python bench/bench_limits.py hoard    # 200 partial frames of ~1 MiB against the total budget
    .venv/bin/python bench/bench_limits.py storm    # 10 000 connections opened at once
    .venv/bin/python bench/bench_limits.py all

C{storm} raises this process's RLIMIT_NOFILE (the proxy inherits it) and
compares the default listen backlog with Twisted's old 50.
"""

import argparse
import resource
import select
import socket
import statistics
import sys
import time

from metaproxy.testing.process import ProxyProcess, pipeline_without_reading, request_bytes

MIB = 1 << 20


def abuse(args):
    """A client pipelines up to --megabytes of queries and never reads; a neighbour queries meanwhile."""
    proxy = ProxyProcess.start()
    try:
        cpu0 = proxy.cpu()
        r = pipeline_without_reading(proxy, args.megabytes, args.stall)
        lat = sorted(r.latencies)
        print(f"abuser: {r.sent / MIB:.1f} MiB sent in {r.seconds:.1f} s before its sends blocked "
              f"for {args.stall:.0f} s (target {args.megabytes} MiB)")
        print(f"proxy RSS: baseline {r.baseline / MIB:.1f} MiB, peak +{(r.peak - r.baseline) / MIB:.1f} MiB, "
              f"0.5 s after the abuser closed +{(r.after - r.baseline) / MIB:.1f} MiB; "
              f"proxy CPU {proxy.cpu() - cpu0:.2f} s (warm-up included)")
        print(f"neighbour: {len(lat)} queries, p50 {statistics.median(lat) * 1000:.2f} ms, "
              f"p99 {lat[int(len(lat) * 0.99)] * 1000:.2f} ms, max {lat[-1] * 1000:.1f} ms")
    finally:
        proxy.stop()


def stalled(args):
    """300 connections stall mid-frame; how long until the frame timeout closed them all."""
    proxy = ProxyProcess.start(limits={"frame_timeout": 1.0})
    try:
        socks = [proxy.connect() for _ in range(300)]
        idle = [proxy.connect() for _ in range(100)]
        baseline = proxy.rss()
        for s in socks:
            s.sendall(request_bytes(1)[:30])
            s.setblocking(False)
        started = time.monotonic()
        left = socks
        while left and time.monotonic() - started < 30:
            time.sleep(0.05)
            still = []
            for s in left:
                try:
                    if s.recv(1) != b"":
                        still.append(s)
                except BlockingIOError:
                    still.append(s)
                except OSError:
                    pass
            left = still
        closed_after = time.monotonic() - started
        idle_open = 0
        for s in idle:
            s.setblocking(False)
            try:
                s.recv(1)
            except BlockingIOError:
                idle_open += 1
        print(f"300 stalled frames (frame_timeout 1.0 s): {300 - len(left)} closed within {closed_after:.2f} s; "
              f"{idle_open}/100 idle connections still open; RSS {baseline / MIB:.1f} -> {proxy.rss() / MIB:.1f} MiB")
        for s in socks + idle:
            s.close()
    finally:
        proxy.stop()


def hoard(args):
    """200 connections each send most of a 1 MiB frame and stall; RSS against the total budget."""
    proxy = ProxyProcess.start(limits={"frame_timeout": 3.0})
    try:
        baseline = proxy.rss()
        head = request_bytes(1)
        frame_bytes = (head[:16] + (MIB - 64).to_bytes(4, "big") + head[20:48]) + b"\x00" * (MIB - 64)
        partial = frame_bytes[: MIB - 100]
        socks = [proxy.connect() for _ in range(200)]
        offsets = [0] * len(socks)
        for s in socks:
            s.setblocking(False)
        started = time.monotonic()
        peak = baseline
        # Push the partial frames as far as TCP lets us, for at most 3 s.
        while time.monotonic() - started < 3.0:
            progress = False
            for i, s in enumerate(socks):
                if offsets[i] < len(partial):
                    try:
                        offsets[i] += s.send(partial[offsets[i] : offsets[i] + 262144])
                        progress = True
                    except (BlockingIOError, OSError):
                        pass
            peak = max(peak, proxy.rss())
            if not progress:
                time.sleep(0.05)
        sent = sum(offsets)
        held = int(float([l for l in proxy.metrics_text().splitlines()
                          if l.startswith('metaproxy_buffered_bytes{direction="in"}')][0].split()[1]))
        while time.monotonic() - started < 8.0:
            peak = max(peak, proxy.rss())
            time.sleep(0.2)
        after = proxy.rss()
        timeouts = [l for l in proxy.metrics_text().splitlines() if l.startswith("metaproxy_client_frame_timeouts_total")]
        print(f"200 connections hoarding 1 MiB - 100 B partial frames (budget 128 MiB, frame_timeout 3 s): "
              f"{sent / MIB:.0f} MiB sent by the clients, {held / MIB:.1f} MiB held by the proxy at 3 s; "
              f"RSS baseline {baseline / MIB:.1f} MiB, peak +{(peak - baseline) / MIB:.1f} MiB, "
              f"+{(after - baseline) / MIB:.1f} MiB at 8 s; {timeouts[0] if timeouts else ''}")
        for s in socks:
            s.close()
    finally:
        proxy.stop()


def _connect_all(n, port, timeout):
    """Open n non-blocking connections at once; @return: (seconds until all completed, failures, sockets)."""
    socks = []
    started = time.monotonic()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    poller = select.epoll()
    waiting = {}
    for s in socks:
        poller.register(s.fileno(), select.EPOLLOUT)
        waiting[s.fileno()] = s
    failed = 0
    while waiting and time.monotonic() - started < timeout:
        for fd, _ in poller.poll(0.5):
            s = waiting.pop(fd, None)
            if s is None:
                continue
            poller.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                failed += 1
    poller.close()
    return time.monotonic() - started, failed + len(waiting), socks


def _connection_count(proxy):
    for line in proxy.metrics_text().splitlines():
        if line.startswith(("client_connection_count ", "metaproxy_client_connections ")):
            return int(float(line.split()[1]))
    return -1


def storm(args):
    """Open --connections at once, with the default backlog and with Twisted's 50."""
    need = args.connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    limits = {"max_connections": args.connections + 100, "max_connections_per_peer": 0}
    for label, backlog in (("default backlog (4096)", None), ("backlog 50 (Twisted's default)", 50)):
        proxy = ProxyProcess.start(limits=limits, backlog=backlog)
        try:
            spent, failed, socks = _connect_all(args.connections, proxy.port, 60.0)
            started = time.monotonic()
            count = _connection_count(proxy)
            while count < args.connections - failed and time.monotonic() - started < 60:
                time.sleep(0.05)
                count = _connection_count(proxy)
            accepted = spent + (time.monotonic() - started)
            print(f"{label}: {args.connections} connections: all connects completed in {spent:.2f} s "
                  f"({failed} failed); the proxy counted {count} open after {accepted:.2f} s")
            for s in socks:
                s.close()
        finally:
            proxy.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("abuse", "stalled", "hoard", "storm", "all"))
    parser.add_argument("--megabytes", type=int, default=20)
    parser.add_argument("--stall", type=float, default=3.0, help="seconds of blocked sends that end the abuser")
    parser.add_argument("--connections", type=int, default=10000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]} ({sys.implementation.name})")
    for name, fn in (("abuse", abuse), ("stalled", stalled), ("hoard", hoard), ("storm", storm)):
        if args.what in (name, "all"):
            fn(args)


if __name__ == "__main__":
    main()
