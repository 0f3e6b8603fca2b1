# -*- test-case-name: metaproxy.test.test_server_rdsn -*-
"""
A minimal RDSN (C++ client / Pegasus shell) client for tests.

It writes requests as the C++ client's C{create_request} and
C{rpc_engine::call} do (context 0x441, a process-style id counter starting
at 1, a random-looking trace id, the client's own address with a port of
at most 1023), pipelines them, and matches replies by header id.
"""

import itertools

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from metaproxy.wire import binary, querycfg, rdsn

#: What the C++ client puts in from_address: its local IP, port = app id.
CLIENT_ADDRESS = querycfg.rpc_address("127.0.0.1", 1)


def query_cfg_body(table, partition_indices=()):
    """
    @return: a query_cfg request body as C{marshall_thrift_internal} writes
        it: field 0 STRUCT, the request struct, STOP.
    """
    args = querycfg.encode_args(table, partition_indices)
    # The THFT args struct differs only in its field id (1 there, 0 here).
    return binary.pack_field(binary.STRUCT, 0) + args[3:]


class RdsnTestClient(Protocol):
    """
    Sends RDSN requests and matches the replies by id.

    @ivar stray: replies whose id matched no request.
    @ivar closed: fires when the connection is lost.
    """

    def __init__(self, first_id=1, timeout_ms=5000):
        self._ids = itertools.count(first_id)
        self._timeout_ms = timeout_ms
        self._pending = {}
        self._decoder = rdsn.RdsnResponseDecoder(max_frame_bytes=64 << 20)
        self.closed = defer.Deferred()
        self.stray = 0

    def call(self, name, body, **fields):
        """
        Send one request.

        @param fields: header fields for L{rdsn.encode_request} (context,
            crc, client_timeout, ...), overriding the C++ client's values.
        @return: a L{Deferred} firing with the L{rdsn.RdsnResponse}.
        """
        rid = next(self._ids)
        fields.setdefault("client_timeout", self._timeout_ms)
        fields.setdefault("trace_id", (rid * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        fields.setdefault("from_address", CLIENT_ADDRESS)
        d = defer.Deferred()
        self._pending[rid] = d
        self.transport.write(rdsn.encode_request(name, rid, body, **fields))
        return d

    def query(self, table, partition_indices=(), **fields):
        """@return: a L{Deferred} firing with the reply to a query_cfg for C{table}."""
        return self.call(querycfg.QUERY_CFG, query_cfg_body(table, partition_indices), **fields)

    def send_raw(self, data):
        """Write bytes as they are (malformed frames, another framing)."""
        self.transport.write(data)

    def pending(self):
        """@return: how many requests wait for an answer."""
        return len(self._pending)

    def dataReceived(self, data):
        try:
            responses = self._decoder.feed(data)
        except rdsn.FramingError:
            self.transport.loseConnection()
            return
        for response in responses:
            d = self._pending.pop(response.seqid, None)
            if d is None:
                self.stray += 1
            else:
                d.callback(response)

    def connectionLost(self, reason):
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(reason)
        self.closed.callback(None)


def connect_rdsn_client(reactor, host, port, **kw):
    """@return: a L{Deferred} firing with a connected L{RdsnTestClient}."""
    return connectProtocol(TCP4ClientEndpoint(reactor, host, port), RdsnTestClient(**kw))
