# -*- test-case-name: metaproxy.test.test_server_rdsn -*-
"""
Tests for RDSN connections in L{metaproxy.frontend.server} and the per-connection
framing choice of L{metaproxy.wire.framing}: over fake transports, through
the same dispatcher and resolver as THFT, and end to end over loopback with
the harness (the C++ client's framing against simulated metas).
"""

import os
import socket
import struct
import subprocess

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metaproxy.testing.transports import connect
from metaproxy.frontend.dispatch import RpcDispatcher
from metaproxy.frontend.resolver import QueryConfigResolver, relay_reply
from metaproxy.routes.route import MetaAddrs, Route
from metaproxy.frontend.server import PegasusServerFactory
from metaproxy.routes.static import StaticRouteTable
from metaproxy.test.test_resolver import _Pools, _Routes, _table_response
from metaproxy.test.test_wire_rdsn import VECTOR, VECTOR_NOT_FOUND_REPLY
from metaproxy.testing.harness import ProxyHarness, start_cluster, stop_all
from metaproxy.testing.net import free_port, stop_process, twistd_argv, wait_for_port
from metaproxy.testing.rdsn_client import connect_rdsn_client, query_cfg_body
from metaproxy.wire import binary, codes, frame, querycfg, rdsn
from metaproxy.wire.negotiation import NEGOTIATION, SASL_AUTH_DISABLE

OK_BODY = querycfg.error_result(codes.ERR_OK)
PROXY = IPv4Address("TCP", "127.0.0.1", 34601)


class _Recorder:
    """A handler recording each request; answers at once or, when deferred, when the test fires it."""

    def __init__(self, deferred=False, reply=None):
        self.calls = []
        self.deferred = deferred
        self.reply = reply or frame.Reply(OK_BODY)

    def __call__(self, request, connection):
        if self.deferred:
            d = defer.Deferred()
            self.calls.append((request, d))
            return d
        self.calls.append((request, None))
        return self.reply


def _connect(factory, host=PROXY):
    return connect(factory, local=host)


def _rdsn_replies(transport):
    out = rdsn.RdsnResponseDecoder().feed(transport.value())
    transport.clear()
    return out


def _request(name=querycfg.QUERY_CFG, rid=1, body=None, **kw):
    if body is None:
        body = query_cfg_body("temp")
    return rdsn.encode_request(name, rid, body, client_timeout=kw.pop("client_timeout", 5000), **kw)


class _Base:
    def setUp(self):
        self.clock = Clock()
        self.query = _Recorder()
        self.slow = _Recorder(deferred=True)
        self.dispatcher = RpcDispatcher(
            {querycfg.QUERY_CFG: self.query, "RPC_SLOW": self.slow, "RPC_RAISE": lambda r, c: 1 / 0}
        )
        self.factory = PegasusServerFactory(self.dispatcher, self.clock, max_frame_bytes=4096)
        self.proto, self.transport = _connect(self.factory)


class RdsnServerTests(_Base, SynchronousTestCase):
    def test_query_cfg_answered(self):
        """A query_cfg is dispatched with the RDSN header and answered in RDSN, matched by id."""
        self.proto.dataReceived(_request(rid=0x1_0000_0007, trace_id=0xABC))
        [(request, _)] = self.query.calls
        self.assertEqual((request.name, request.seqid, request.header.client_timeout),
                         (querycfg.QUERY_CFG, 0x1_0000_0007, 5000))
        self.assertEqual(querycfg.decode_args(request.args).app_name, "temp")
        [reply] = _rdsn_replies(self.transport)
        self.assertEqual((reply.seqid, reply.name, reply.rpc_error),
                         (0x1_0000_0007, querycfg.QUERY_CFG_ACK, codes.ERR_OK))
        self.assertEqual(reply.body, OK_BODY)
        h = reply.header
        self.assertEqual((h.trace_id, h.client_timeout, h.context), (0xABC, 5000, 0x440))
        self.assertEqual(querycfg.address_host_port(reply.header.from_address), ("127.0.0.1", 34601))
        self.assertEqual(self.proto._decoder.framing, "RDSN")

    def test_unknown_rpc_exact_reply(self):
        """
        The documented test vector sent to a proxy without its handler gets
        exactly the hand-derived ERR_HANDLER_NOT_FOUND reply.
        """
        factory = PegasusServerFactory(RpcDispatcher({}), self.clock)
        proto, transport = _connect(factory)
        proto.dataReceived(VECTOR)
        self.assertEqual(transport.value(), VECTOR_NOT_FOUND_REPLY)
        self.assertTrue(transport.connected)

    def test_negotiation_auth_disabled(self):
        """RPC_NEGOTIATION is answered ERR_OK with status SASL_AUTH_DISABLE, as by a meta without auth."""
        status = binary.pack_field(binary.I32, 1) + binary.pack_i32(1)
        body = binary.pack_field(binary.STRUCT, 0) + status + b"\x00\x00"
        self.proto.dataReceived(_request(NEGOTIATION, 5, body))
        [reply] = _rdsn_replies(self.transport)
        self.assertEqual((reply.seqid, reply.name, reply.rpc_error), (5, "RPC_NEGOTIATION_ACK", codes.ERR_OK))
        self.assertEqual(reply.body[:3], b"\x0c\x00\x00")
        self.assertEqual(reply.body[3:10], binary.pack_field(binary.I32, 1) + binary.pack_i32(SASL_AUTH_DISABLE))

    def test_other_serialize_formats_refused_not_dispatched(self):
        """
        THRIFT_JSON, THRIFT_COMPACT and INVALID requests get rpc-level
        ERR_INVALID_PARAMETERS with no body and never reach a handler (so
        never a meta); the connection stays usable.
        """
        for i, fmt in enumerate((rdsn.THRIFT_JSON, rdsn.THRIFT_COMPACT, rdsn.FORMAT_INVALID)):
            self.proto.dataReceived(_request(rid=10 + i, context=rdsn.context_bits(serialize_format=fmt)))
        replies = _rdsn_replies(self.transport)
        self.assertEqual([(r.seqid, r.rpc_error, r.body) for r in replies],
                         [(10 + i, codes.ERR_INVALID_PARAMETERS, b"") for i in range(3)])
        self.assertEqual([r.header.serialize_format for r in replies], [3, 2, 0])
        self.assertEqual(self.query.calls, [])
        self.assertEqual(self.factory.counters.invalid_requests, 3)
        self.proto.dataReceived(_request(rid=20))
        self.assertEqual([r.rpc_error for r in _rdsn_replies(self.transport)], [codes.ERR_OK])

    def test_out_of_order_matched_by_id(self):
        """Deferred answers go out as they finish, each with its own 64-bit id."""
        ids = [2**63 + 5, 0, 2**32]
        self.proto.dataReceived(b"".join(_request("RPC_SLOW", rid, b"") for rid in ids))
        for request, d in reversed(self.slow.calls):
            d.callback(frame.Reply(OK_BODY))
        self.assertEqual([r.seqid for r in _rdsn_replies(self.transport)], list(reversed(ids)))

    def test_handler_exception_is_retryable(self):
        """A handler that raises is answered rpc-level ERR_TIMEOUT in RDSN framing."""
        self.proto.dataReceived(_request("RPC_RAISE", 4, b""))
        [reply] = _rdsn_replies(self.transport)
        self.assertEqual((reply.seqid, reply.rpc_error, reply.body), (4, codes.ERR_TIMEOUT, b""))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_magic_split_across_reads(self):
        """The first 4 bytes may come in several reads; nothing is decided or lost meanwhile."""
        data = _request(rid=3)
        self.proto.dataReceived(data[:2])
        self.assertEqual((self.proto._decoder.framing, self.proto._decoder.buffered()), (None, 2))
        self.proto.dataReceived(data[2:3])
        self.proto.dataReceived(data[3:])
        self.assertEqual([r.seqid for r in _rdsn_replies(self.transport)], [3])

    def test_crc_mismatch_closes_after_answering(self):
        """A frame with a wrong CRC closes the connection without a reply; the frame before it is answered."""
        bad = bytearray(rdsn.with_crc(_request(rid=2)))
        bad[-1] ^= 1
        self.proto.dataReceived(_request(rid=1) + bytes(bad))
        self.assertEqual([r.seqid for r in _rdsn_replies(self.transport)], [1])
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.factory.counters.framing_errors, 1)

    def test_good_crc_answered(self):
        """A request carrying right CRCs is answered (with CRC fields 0)."""
        self.proto.dataReceived(rdsn.with_crc(_request(rid=6)))
        [reply] = _rdsn_replies(self.transport)
        self.assertEqual((reply.seqid, reply.header.hdr_crc32, reply.header.body_crc32), (6, 0, 0))

    def test_framing_error_waits_for_pending(self):
        """After a broken frame, requests in flight are answered, then the connection closes (section 1.6)."""
        self.proto.dataReceived(_request("RPC_SLOW", 1, b"") + b"RDSX" + bytes(200))
        self.assertTrue(self.transport.connected)
        self.slow.calls[0][1].callback(frame.Reply(OK_BODY))
        self.assertEqual([r.seqid for r in _rdsn_replies(self.transport)], [1])
        self.assertFalse(self.transport.connected)


class MixedFramingTests(_Base, SynchronousTestCase):
    def test_thft_and_rdsn_connections_at_once(self):
        """One factory serves a THFT and an RDSN connection side by side, each in its own framing."""
        rproto, rtransport = _connect(self.factory)
        for i in range(3):
            self.proto.dataReceived(frame.encode_request(querycfg.QUERY_CFG, i, querycfg.encode_args("temp")))
            rproto.dataReceived(_request(rid=100 + i))
        thft = frame.ResponseDecoder().feed(self.transport.value())
        self.assertEqual([(r.seqid, r.name) for r in thft], [(i, querycfg.QUERY_CFG_ACK) for i in range(3)])
        self.assertEqual([r.seqid for r in _rdsn_replies(rtransport)], [100, 101, 102])
        self.assertEqual((self.proto._decoder.framing, rproto._decoder.framing), ("THFT", "RDSN"))
        self.assertEqual({r.header.client_timeout for r, _ in self.query.calls}, {0, 5000})

    def test_connections_counted_by_framing(self):
        """Each connection is counted once under the framing it chose; one never chosen is not counted."""
        rproto, rtransport = _connect(self.factory)
        _connect(self.factory)
        self.proto.dataReceived(frame.encode_request("RPC_X", 1, b"\x00"))
        self.proto.dataReceived(frame.encode_request("RPC_X", 2, b"\x00"))
        rproto.dataReceived(_request(rid=1))
        self.assertEqual(self.factory.counters.framings, {"THFT": 1, "RDSN": 1})

    def test_framing_metric_exposed(self):
        """The service built from a config exposes metaproxy_client_connections_by_framing_total{framing}."""
        from twisted.internet.testing import MemoryReactorClock

        from metaproxy.app import build_service
        from metaproxy.config import parse_config

        config = parse_config(
            "listen: tcp:0:interface=127.0.0.1\nadmin: {listen: 'tcp:0:interface=127.0.0.1'}\n"
            "metric: {type: none}\nroutes: {t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}}\n"
        )
        service = build_service(config, MemoryReactorClock(), fatal=lambda message: None)
        proto, _ = _connect(service.factory)
        proto.dataReceived(_request(rid=1))
        sample = service.metrics.registry.get_sample_value
        self.assertEqual(sample("metaproxy_client_connections_by_framing_total", {"framing": "RDSN"}), 1.0)

    def test_rdsn_then_thft_closed(self):
        """An RDSN connection that switches to THFT bytes is answered for its RDSN request, then closed."""
        thft = frame.encode_request(querycfg.QUERY_CFG, 2, querycfg.encode_args("t"))
        self.proto.dataReceived(_request(rid=1) + thft)
        self.assertEqual([r.seqid for r in _rdsn_replies(self.transport)], [1])
        self.assertEqual(len(self.query.calls), 1)
        self.assertFalse(self.transport.connected)

    def test_thft_then_rdsn_closed(self):
        """A THFT connection that switches to RDSN bytes is answered for its THFT request, then closed."""
        self.proto.dataReceived(frame.encode_request(querycfg.QUERY_CFG, 2, querycfg.encode_args("t")))
        self.proto.dataReceived(_request(rid=1))
        self.assertEqual([r.seqid for r in frame.ResponseDecoder().feed(self.transport.value())], [2])
        self.assertEqual(len(self.query.calls), 1)
        self.assertFalse(self.transport.connected)

    def test_unknown_magic_closed(self):
        """Neither THFT nor RDSN: closed without a reply, as a real meta does."""
        self.proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.connected)


class ResolverTests(SynchronousTestCase):
    def test_timeout_ms_is_the_budget(self):
        """
        client.timeout_ms gives the backend query the same budget as THFT's
        client_timeout: 1500 ms less the margin, max(10 %, 100 ms), and
        the new-connection margin (0.2 s: the first request on its
        connection); the upstream query may run the late-answer time (5 s)
        longer.
        """
        meta = MetaAddrs.parse("10.0.0.1:34601")
        pools = _Pools()
        clock = Clock()
        resolver = QueryConfigResolver(_Routes({"temp": Route("a", meta)}), pools, default_timeout=5.0, clock=clock)
        factory = PegasusServerFactory(RpcDispatcher({querycfg.QUERY_CFG: resolver.handle}), clock)
        proto, transport = _connect(factory)
        proto.dataReceived(_request(rid=1, client_timeout=1500))
        [(table, indices, timeout, d)] = pools.get(meta).calls
        self.assertEqual((table, indices), ("temp", ()))
        self.assertAlmostEqual(timeout, 1.15 + 5.0)
        body = querycfg.encode_result(_table_response())
        d.callback(frame.Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1, body))
        [reply] = _rdsn_replies(transport)
        resp = querycfg.decode_result(reply.body)
        self.assertEqual((resp.err, len(resp.partitions)), (codes.ERR_OK, 2))
        self.assertIsNotNone(resp.partitions[0].hp_primary)

    def test_coalesced_across_framings(self):
        """
        RDSN and THFT queries for one table join the same upstream batches:
        one query in flight, the rest queued into one more; each client
        gets the answer in its framing (RDSN with hp_*, THFT without).
        """
        meta = MetaAddrs.parse("10.0.0.1:34601")
        pools = _Pools()
        resolver = QueryConfigResolver(_Routes({"temp": Route("a", meta)}), pools)
        factory = PegasusServerFactory(RpcDispatcher({querycfg.QUERY_CFG: resolver.handle}), Clock())
        rproto, rtransport = _connect(factory)
        tproto, ttransport = _connect(factory)
        rproto.dataReceived(_request(rid=1))
        tproto.dataReceived(frame.encode_request(querycfg.QUERY_CFG, 7, querycfg.encode_args("temp")))
        rproto.dataReceived(_request(rid=2))
        body = querycfg.encode_result(_table_response(with_hp=True))
        for _ in range(2):
            calls = pools.get(meta).calls
            calls[-1][3].callback(frame.Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1, body))
        self.assertEqual(len(pools.get(meta).calls), 2)
        self.assertEqual([(r.seqid, r.body) for r in _rdsn_replies(rtransport)], [(1, body), (2, body)])
        [thft] = frame.ResponseDecoder().feed(ttransport.value())
        self.assertEqual((thft.seqid, thft.body), (7, querycfg.strip_host_port(body)))

    def test_malformed_args_rejected_like_thft(self):
        """A malformed query_cfg body gets rpc-level ERR_INVALID_PARAMETERS, as in THFT, and no backend query."""
        pools = _Pools()
        resolver = QueryConfigResolver(_Routes({}), pools)
        factory = PegasusServerFactory(RpcDispatcher({querycfg.QUERY_CFG: resolver.handle}), Clock())
        proto, transport = _connect(factory)
        proto.dataReceived(_request(rid=3, body=b"\x0c\x00\x00\x0b\x00\x01\xff\xff"))
        [reply] = _rdsn_replies(transport)
        self.assertEqual((reply.seqid, reply.rpc_error, reply.body), (3, codes.ERR_INVALID_PARAMETERS, b""))
        self.assertEqual(pools.clusters, {})
        self.assertTrue(transport.connected)

    def test_relay_keeps_native_body(self):
        """relay_reply strips hp_* for THFT and keeps the meta's body as native_body for RDSN."""
        body = querycfg.encode_result(_table_response(with_hp=True))
        reply = relay_reply(frame.Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1, body))
        self.assertEqual(reply.native_body, body)
        self.assertIsNone(querycfg.decode_result(reply.body).partitions[0].hp_primary)
        plain = querycfg.encode_result(_table_response(with_hp=False))
        reply = relay_reply(frame.Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1, plain))
        self.assertEqual((reply.body, reply.native_body), (plain, None))

    def test_forward_never_reaches_rdsn_client(self):
        """A FORWARD from a meta becomes the retryable ERR_SERVICE_NOT_ACTIVE for RDSN clients too."""
        body = querycfg.forward_result(querycfg.rpc_address("10.0.0.9", 34601))
        reply = relay_reply(frame.Response(codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1, body))
        [request] = rdsn.RdsnRequestDecoder().feed(_request())
        data = rdsn.RdsnFramer(0).encode(request, reply, reply.rpc_error)
        self.assertEqual(querycfg.decode_result(rdsn.decode_response(data).body).err, codes.ERR_SERVICE_NOT_ACTIVE)


def _frames():
    return st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1),
            st.sampled_from([querycfg.QUERY_CFG, NEGOTIATION, "RPC_OTHER"]),
            st.text(min_size=0, max_size=12),
            st.sampled_from([0x441, 0x443, 0x4C1, 0x401]),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    )


class FuzzTests(SynchronousTestCase):
    def setUp(self):
        self.factory = PegasusServerFactory(
            RpcDispatcher({querycfg.QUERY_CFG: lambda r, c: frame.Reply(OK_BODY)}), Clock(), max_frame_bytes=4096
        )

    def run_stream(self, data, chunk):
        proto, transport = _connect(self.factory)
        for i in range(0, len(data), chunk):
            if not transport.connected:
                break
            proto.dataReceived(data[i : i + chunk])
        return proto, transport, rdsn.RdsnResponseDecoder(max_frame_bytes=1 << 30).feed(transport.value())

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=600), st.integers(1, 97))
    def test_arbitrary_rdsn_streams(self, tail, chunk):
        """
        Any bytes after an RDSN magic: nothing raises, replies are
        well-formed, and the connection is answered, closed, or waiting for
        the rest of a frame.
        """
        proto, transport, replies = self.run_stream(b"RDSN" + tail, chunk)
        for r in replies:
            self.assertIn(r.rpc_error, codes.RPC_LEVEL_SAFE)
        self.assertTrue(not transport.connected or replies or proto._decoder.buffered() > 0)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_frames(), st.integers(1, 97), st.data())
    def test_valid_then_mutated(self, frames, chunk, data):
        """
        Every valid frame before a corrupted byte is answered with its id;
        after it, each connection is closed, fully answered, or waiting for
        the rest of a frame whose length was corrupted; nothing raises.
        """
        encoded = [
            rdsn.encode_request(name, rid, query_cfg_body(table), context=ctx, crc=crc)
            for rid, name, table, ctx, crc in frames
        ]
        stream = bytearray(b"".join(encoded))
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] ^= data.draw(st.integers(1, 255))
        proto, transport, replies = self.run_stream(bytes(stream), chunk)
        intact, offset = [], 0
        for (rid, *_), enc in zip(frames, encoded):
            if offset + len(enc) > pos:
                break
            intact.append(rid)
            offset += len(enc)
        self.assertEqual([r.seqid for r in replies][: len(intact)], intact)
        for r, (rid, name, table, ctx, crc) in zip(replies, frames):
            self.assertIn(r.rpc_error, codes.RPC_LEVEL_SAFE)
        self.assertTrue(not transport.connected or len(replies) == len(frames) or proto._decoder.buffered() > 0)
        if any(crc for *_, crc in frames[len(intact):len(intact) + 1]) and not 12 <= pos - offset < 16:
            # A corrupted frame that carried CRCs is never answered (unless
            # the flip hit hdr_crc32 itself and happened to zero it).
            self.assertEqual(len(replies), len(intact))


class EndToEndTests(TestCase):
    """The C++ client's framing through the real proxy parts on loopback, against simulated metas."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.a = start_cluster(reactor, "a", {"temp": (8, 2)}, replica_base=34801)
        self.addCleanup(stop_all, self.a)
        self.routes = StaticRouteTable({"temp": Route("a", MetaAddrs.parse(self.a.meta_addrs()))})
        self.proxy = ProxyHarness(reactor, self.routes)
        yield self.proxy.start()
        self.addCleanup(self.proxy.stop)

    @defer.inlineCallbacks
    def rdsn_client(self):
        client = yield connect_rdsn_client(reactor, "127.0.0.1", self.proxy.port)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        return client

    @defer.inlineCallbacks
    def test_query_cfg_keeps_host_ports(self):
        """query_cfg over RDSN gets the meta's whole answer, hp_* included, and the proxy's own address."""
        client = yield self.rdsn_client()
        reply = yield client.query("temp")
        self.assertEqual((reply.rpc_error, reply.name, reply.seqid), (codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1))
        self.assertEqual(reply.body, self.a.model.query_body("temp"))
        resp = querycfg.decode_result(reply.body)
        self.assertEqual((resp.err, resp.app_id, resp.partition_count), (codes.ERR_OK, 2, 8))
        self.assertTrue(all(p.hp_primary is not None for p in resp.partitions))
        self.assertEqual(querycfg.address_host_port(reply.header.from_address), ("127.0.0.1", self.proxy.port))
        self.assertEqual(reply.header.context, 0x440)

    @defer.inlineCallbacks
    def test_unknown_table_rpc_and_negotiation(self):
        """An unknown table, an unknown RPC and a negotiation each get what a real meta answers."""
        client = yield self.rdsn_client()
        missing, unknown, nego = yield defer.gatherResults(
            [client.query("nope"), client.call("RPC_CM_LIST_APPS", b"\x0c\x00\x00\x00\x00"),
             client.call(NEGOTIATION, b"\x0c\x00\x00\x08\x00\x01\x00\x00\x00\x01\x00\x00")]
        )
        self.assertEqual(querycfg.decode_result(missing.body).err, codes.ERR_OBJECT_NOT_FOUND)
        self.assertEqual((unknown.rpc_error, unknown.name, unknown.body),
                         (codes.ERR_HANDLER_NOT_FOUND, "RPC_CM_LIST_APPS_ACK", b""))
        self.assertEqual((nego.rpc_error, nego.name), (codes.ERR_OK, "RPC_NEGOTIATION_ACK"))
        self.assertEqual(struct.unpack_from(">i", nego.body, 6)[0], SASL_AUTH_DISABLE)

    @defer.inlineCallbacks
    def test_mixed_framings_at_once(self):
        """RDSN and THFT clients on separate connections are served at the same time, each in its framing."""
        rclient = yield self.rdsn_client()
        tclient = yield self.proxy.client("java2")
        self.addCleanup(lambda: tclient.transport.loseConnection() or tclient.closed)
        rreplies, treplies = yield defer.gatherResults(
            [defer.gatherResults([rclient.query("temp") for _ in range(20)]),
             defer.gatherResults([tclient.query("temp") for _ in range(20)])]
        )
        self.assertEqual(sorted(r.seqid for r in rreplies), list(range(1, 21)))
        self.assertEqual(sorted(r.seqid for r in treplies), list(range(20)))
        self.assertTrue(all(r.body == self.a.model.query_body("temp") for r in rreplies))
        self.assertTrue(all(r.body == querycfg.strip_host_port(self.a.model.query_body("temp")) for r in treplies))

    @defer.inlineCallbacks
    def test_switch_to_thft_closes(self):
        """An RDSN connection that sends THFT bytes gets its RDSN answer, then is closed."""
        client = yield self.rdsn_client()
        first = client.query("temp")
        client.send_raw(frame.encode_request(querycfg.QUERY_CFG, 9, querycfg.encode_args("temp")))
        reply = yield first
        self.assertEqual(reply.rpc_error, codes.ERR_OK)
        yield client.closed
        self.assertEqual(client.stray, 0)


def _recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _rdsn_call(sock, frame_bytes):
    """Send one RDSN frame on a blocking socket and read exactly one RDSN reply."""
    sock.sendall(frame_bytes)
    header = _recv_exactly(sock, rdsn.HEADER_LENGTH)
    blen = struct.unpack_from("<I", header, 16)[0]
    return rdsn.decode_response(header + _recv_exactly(sock, blen))


def _thft_call(sock, frame_bytes):
    """Send one THFT frame on a blocking socket and read exactly one THFT reply."""
    sock.sendall(frame_bytes)
    head = _recv_exactly(sock, 4)
    [response] = frame.ResponseDecoder().feed(head + _recv_exactly(sock, struct.unpack(">i", head)[0] - 4))
    return response


class TwistdLoopbackTests(SynchronousTestCase):
    """
    A real C{twistd metaproxy} process in front of a real C{twistd
    pegasus-sim} process, spoken to over loopback sockets in both framings.
    """

    def spawn(self, args, port, cwd):
        proc = subprocess.Popen(
            twistd_argv() + args,
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

        def stop():
            stop_process(proc, 20)
            proc.stdout.close()

        self.addCleanup(stop)
        try:
            wait_for_port(port, proc)
        except RuntimeError as e:
            self.fail(f"twistd {args[0]} did not open port {port} ({e}): {proc.stdout.read().decode()[-2000:]}")
        return proc

    def connect(self, port):
        sock = socket.create_connection(("127.0.0.1", port), 10)
        sock.settimeout(10)
        self.addCleanup(sock.close)
        return sock

    def test_rdsn_and_thft_through_twistd(self):
        """
        Over a real process: RDSN query_cfg (hp_* kept), an unknown RPC and
        a negotiation, a THFT query on another connection at the same time
        (hp_* stripped), and an RDSN connection switching to THFT is closed.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        meta, port, admin = free_port(), free_port(), free_port()
        sim = ["pegasus-sim", "--metas", f"127.0.0.1:{meta}", "--table", "temp:8", "--host-ports"]
        self.spawn(sim, meta, workdir)
        config = os.path.join(workdir, "metaproxy.yaml")
        with open(config, "w") as f:
            f.write(
                f"listen: tcp:{port}:interface=127.0.0.1\nadmin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}\n"
                f"metric: {{type: none}}\nroutes:\n  temp: {{cluster_name: sim, meta_addrs: '127.0.0.1:{meta}'}}\n"
            )
        self.spawn(["metaproxy", f"--config={config}"], port, workdir)
        rsock, tsock = self.connect(port), self.connect(port)
        tsock.sendall(frame.encode_request(querycfg.QUERY_CFG, 0, querycfg.encode_args("temp"), client_timeout=5000))
        reply = _rdsn_call(rsock, _request(rid=1))
        self.assertEqual((reply.rpc_error, reply.name, reply.seqid), (codes.ERR_OK, querycfg.QUERY_CFG_ACK, 1))
        resp = querycfg.decode_result(reply.body)
        self.assertEqual((resp.err, resp.partition_count, len(resp.partitions)), (codes.ERR_OK, 8, 8))
        self.assertTrue(all(p.hp_primary is not None for p in resp.partitions))
        self.assertEqual(querycfg.address_host_port(reply.header.from_address), ("127.0.0.1", port))
        thft = _thft_call(tsock, b"")
        self.assertEqual((thft.seqid, thft.rpc_error), (0, codes.ERR_OK))
        self.assertTrue(all(p.hp_primary is None for p in querycfg.decode_result(thft.body).partitions))
        unknown = _rdsn_call(rsock, _request("RPC_CM_LIST_APPS", 2, b"\x0c\x00\x00\x00\x00"))
        self.assertEqual((unknown.seqid, unknown.rpc_error, unknown.body), (2, codes.ERR_HANDLER_NOT_FOUND, b""))
        nego = _rdsn_call(rsock, _request(NEGOTIATION, 3, b"\x0c\x00\x00\x08\x00\x01\x00\x00\x00\x01\x00\x00"))
        self.assertEqual(struct.unpack_from(">i", nego.body, 6)[0], SASL_AUTH_DISABLE)
        rsock.sendall(frame.encode_request(querycfg.QUERY_CFG, 9, querycfg.encode_args("temp")))
        self.assertEqual(rsock.recv(1), b"")
