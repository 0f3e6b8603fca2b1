# -*- test-case-name: metaproxy.test.test_failover_process -*-
"""
A steady query load with client-side timeouts, for failover tests and
benchmarks: each connection sends one query_cfg, waits for its answer or
its own timeout (as a real client would), pauses, and sends the next.
"""

import attrs
from twisted.internet import defer, task

from metaproxy.testing.pegasus_client import PegasusTestClient
from metaproxy.wire import querycfg


@attrs.frozen
class Sample:
    """One query: when it was sent (reactor seconds), how long its answer took (L{None}: timed out), the error."""

    sent: float
    latency: object
    err: str


def _answer_or_timeout(reactor, d, timeout):
    """@return: a L{Deferred} firing with the response, or L{None} after C{timeout} seconds."""
    out = defer.Deferred()
    timer = reactor.callLater(timeout, lambda: out.called or out.callback(None))

    def done(result):
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(result)

    d.addBoth(done)
    return out


@defer.inlineCallbacks
def connect_clients(reactor, port, n, flavour="go", client_timeout=None):
    """@return: a L{Deferred} firing with C{n} connected L{PegasusTestClient}s."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    clients = []
    for _ in range(n):
        proto = PegasusTestClient(flavour, record=False, client_timeout=client_timeout)
        clients.append((yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)))
    return clients


@defer.inlineCallbacks
def steady_load(reactor, clients, until, waits, table="temp", pause=0.05):
    """
    Query from every client until reactor time C{until}.

    @param until: reactor seconds, or a callable returning them (read
        before every query, so the end may be set later).
    @param waits: seconds a client waits for an answer before it gives up.
    @return: a L{Deferred} firing with a L{list} of L{Sample}.
    """
    samples = []
    end = until if callable(until) else (lambda: until)

    @defer.inlineCallbacks
    def one(client):
        while reactor.seconds() < end():
            sent = reactor.seconds()
            try:
                response = yield _answer_or_timeout(reactor, client.query(table), waits)
            except Exception as e:  # the connection was lost
                samples.append(Sample(sent, None, type(e).__name__))
                return
            if response is None:
                samples.append(Sample(sent, None, "timeout"))
            else:
                err = response.rpc_error
                if err == "ERR_OK":
                    err = querycfg.peek_result(response.body).err
                samples.append(Sample(sent, reactor.seconds() - sent, err))
            yield task.deferLater(reactor, pause, lambda: None)

    yield defer.gatherResults([one(c) for c in clients])
    return samples


def ok_fraction(samples, waits, since=None):
    """@return: C{(ok, total)}: queries (sent at or after C{since}) answered C{ERR_OK} within C{waits}."""
    chosen = [s for s in samples if since is None or s.sent >= since]
    ok = sum(1 for s in chosen if s.err == "ERR_OK" and s.latency is not None and s.latency < waits)
    return ok, len(chosen)
