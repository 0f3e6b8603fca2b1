"""
SIGTERM under steady load: are the requests in flight answered or cut?

    PYTHONPATH=src python bench/drain_under_load.py                # 20 clients, drain_timeout 6 s
    PYTHONPATH=src python bench/drain_under_load.py --clients 50 --drain-timeout 10

Starts metaproxy (C{twistd -n metaproxy}) with table C{slow} routed to a
meta that accepts connections and never answers (so every query is
answered with the retryable error when its 1.5 s budget ends, and every
connection always has queries in flight), and C{--clients} threads, each sending a query every 0.1 s on its own
connection, whatever is answered (so it always has some in flight), until
the connection closes. Two seconds in, the process gets
SIGTERM. Prints the queries answered, the queries that got no answer
(sent, then the connection closed: those sent after metaproxy stopped
reading it, or cut by the drain's timeout), metaproxy's own drain line (requests it
had read and did not answer), the time to exit and the exit status. It measures; it asserts nothing. The process it starts is stopped
by PID.
"""

import argparse
import os
import select
import signal
import socket
import threading
import time

from metaproxy.testing.process import ProxyProcess, request_bytes
from metaproxy.wire import frame


def _client(proxy, counts, lock, interval=0.1):
    """Send a query every C{interval} seconds on one connection, whatever is answered, until it closes."""
    try:
        sock = proxy.connect()
    except OSError:
        return
    decoder, seqid, outstanding = frame.ResponseDecoder(), 0, 0
    next_send = time.monotonic()
    with sock:
        try:
            while True:
                now = time.monotonic()
                if now >= next_send:
                    seqid += 1
                    sock.sendall(request_bytes(seqid, "slow"))
                    outstanding += 1
                    next_send = now + interval
                readable, _, _ = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
                if not readable:
                    continue
                data = sock.recv(65536)
                if not data:
                    break
                answered = len(decoder.feed(data))
                outstanding -= answered
                with lock:
                    counts["answered"] += answered
        except OSError:
            pass
    with lock:
        counts["cut"] += outstanding


def main(clients, drain_timeout):
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    meta = "127.0.0.1:%d" % blackhole.getsockname()[1]
    proxy = ProxyProcess.start(routes={"slow": meta},
                               extra=f"drain_timeout: {drain_timeout}\ntimeouts: {{client_default: 1.5}}")
    counts, lock = {"answered": 0, "cut": 0}, threading.Lock()
    threads = [threading.Thread(target=_client, args=(proxy, counts, lock), daemon=True) for _ in range(clients)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        before = counts["answered"]
        t0 = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        rc = proxy.proc.wait(drain_timeout + 15)
        seconds = time.monotonic() - t0
        for t in threads:
            t.join(5)
        drain = [line.split("] ", 1)[-1] for line in proxy.log_text().splitlines() if "drain" in line]
    finally:
        proxy.stop()
        blackhole.close()
    print(f"load average {os.getloadavg()[0]:.2f}; {clients} clients, drain_timeout {drain_timeout} s: "
          f"{counts['answered']} queries answered ({counts['answered'] - before} after SIGTERM), "
          f"{counts['cut']} without an answer; exit {rc} after {seconds:.2f} s; metaproxy: {drain}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--drain-timeout", type=float, default=6.0)
    args = parser.parse_args()
    main(args.clients, args.drain_timeout)
