"""
What Kerberos costs a meta connection: milliseconds from TCP connect to a
usable connection, with and without the SASL GSSAPI negotiation, against a
simulated meta with mandatory_auth and a throw-away MIT KDC on loopback
(metaproxy.testing.kdc). Each negotiation includes the KDC round trip for
the service ticket (the TGT is fetched once, before timing).

    PYTHONPATH=src python bench/kerberos_negotiation.py [connections]

Prints the median and 90th percentile of both, measured in the same run.
"""

import sys
import time

from twisted.internet import defer, task

from metaproxy.backend.connection import MetaConnection
from metaproxy.security.credentials import KerberosCredentials
from metaproxy.security.upstream import UpstreamNegotiator, thread_runner
from metaproxy.sim.server import SimulatedCluster
from metaproxy.testing.kdc import KDC, available


def quantiles(values):
    values = sorted(values)
    return values[len(values) // 2] * 1e3, values[int(len(values) * 0.9)] * 1e3


@defer.inlineCallbacks
def measure(reactor, host, port, negotiator, n):
    times = []
    for _ in range(n):
        conn = MetaConnection(reactor, host, port, negotiator=negotiator)
        started = time.perf_counter()
        conn.start()
        while not conn.is_connected():
            if conn.state == "down":
                raise RuntimeError(conn.last_error)
            yield task.deferLater(reactor, 0.0005, lambda: None)
        times.append(time.perf_counter() - started)
        yield conn.stop()
    return times


@defer.inlineCallbacks
def main(reactor, n=50):
    reason = available()
    if reason:
        raise SystemExit(reason)
    import os

    kdc = KDC()
    try:
        for k in ("KRB5_CONFIG", "KRB5CCNAME", "KRB5RCACHETYPE"):
            os.environ[k] = kdc.environ()[k]
        service, service_keytab = kdc.add_principal("pegasus/meta.test")
        client, client_keytab = kdc.add_principal("metaproxy")
        secured = SimulatedCluster(reactor, ("127.0.0.1:0",), enable_auth=True, mandatory_auth=True,
                                   keytab=service_keytab)
        plain = SimulatedCluster(reactor, ("127.0.0.1:0",))
        secured.startService()
        plain.startService()
        creds = KerberosCredentials(reactor, client, client_keytab, thread_runner(reactor))
        yield creds.current()
        negotiator = UpstreamNegotiator(reactor, "bench", creds, thread_runner(reactor), service_fqdn="meta.test")
        without = yield measure(reactor, "127.0.0.1", plain.servers[0].port, None, int(n))
        with_auth = yield measure(reactor, "127.0.0.1", secured.servers[0].port, negotiator, int(n))
        print("connections: %d; load average: %s" % (int(n), " ".join(open("/proc/loadavg").read().split()[:3])))
        print("plain connect:         median %.2f ms, p90 %.2f ms" % quantiles(without))
        print("connect + negotiation: median %.2f ms, p90 %.2f ms" % quantiles(with_auth))
        creds.stop()
        yield secured.stopService()
        yield plain.stopService()
    finally:
        kdc.stop()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
