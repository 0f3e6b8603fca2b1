# -*- test-case-name: metaproxy.test.test_e2e -*-
"""
A minimal Pegasus THFT client for tests and benchmarks.

It behaves like the official clients on the wire: header v0 (Go, Python,
NodeJS, Java 1.x) or v1 (Java 2.x, Scala), pipelined requests matched by
seqid, and it starts its seqids where the client it imitates does.
"""

import time

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from metaproxy.wire import frame, querycfg

#: (header version, app_id, partition_index, client_timeout ms, first seqid)
FLAVOURS = {
    "go": (0, 0, 0, 0, 1),
    "python": (0, 0, 0, 2000, 1),
    "java1": (0, -1, -1, 1000, 0),
    "nodejs": (0, -1, -1, 0, 0),
    "java2": (1, -1, -1, 5000, 0),
}


class PegasusTestClient(Protocol):
    """
    Sends query_cfg requests and matches replies by seqid.

    @ivar flavour: a key of L{FLAVOURS}.
    @ivar latencies: seconds each answered request took, in answer order.
    @ivar closed: fires when the connection is lost.
    """

    def __init__(self, flavour="go", timer=time.perf_counter, record=True, client_timeout=None):
        """
        @param client_timeout: the header's C{client_timeout} (ms), instead
            of the flavour's.
        """
        self.flavour = flavour
        version, app, pidx, tmo, first = FLAVOURS[flavour]
        if client_timeout is not None:
            tmo = client_timeout
        self._head = dict(version=version, app_id=app, partition_index=pidx, client_timeout=tmo)
        self._seqid = first
        self._pending = {}
        self._decoder = frame.ResponseDecoder()
        self._timer = timer
        self._record = record
        self.latencies = []
        self.closed = defer.Deferred()
        self.stray = 0

    def query(self, table, partition_indices=(), name=querycfg.QUERY_CFG, args=None, version=None):
        """
        Send one request.

        @param args: raw args bytes, to send something other than a
            well-formed query_cfg.
        @param version: the THFT header version for this request only
            (default: the flavour's).
        @return: a L{Deferred} firing with the L{frame.Response}.
        """
        seqid = self._seqid
        self._seqid = (seqid + 1) & 0x7FFFFFFF
        if args is None:
            args = querycfg.encode_args(table, partition_indices)
        d = defer.Deferred()
        self._pending[seqid] = (d, self._timer())
        head = self._head if version is None else dict(self._head, version=version)
        self.transport.write(frame.encode_request(name, seqid, args, **head))
        return d

    def send_raw(self, data):
        """Write bytes as they are (malformed frames, partial writes)."""
        self.transport.write(data)

    def pending(self):
        """@return: how many requests wait for an answer."""
        return len(self._pending)

    def dataReceived(self, data):
        now = self._timer()
        for response in self._decoder.feed(data):
            entry = self._pending.pop(response.seqid, None)
            if entry is None:
                self.stray += 1
                continue
            d, sent = entry
            if self._record:
                self.latencies.append(now - sent)
            d.callback(response)

    def connectionLost(self, reason):
        pending, self._pending = self._pending, {}
        for d, _ in pending.values():
            d.errback(reason)
        self.closed.callback(None)


def connect_client(reactor, host, port, flavour="go", **kw):
    """@return: a L{Deferred} firing with a connected L{PegasusTestClient}."""
    return connectProtocol(TCP4ClientEndpoint(reactor, host, port), PegasusTestClient(flavour, **kw))
