# -*- test-case-name: metaproxy.test.test_route -*-
"""
Tests for L{metaproxy.routes.route}: node decoding that never echoes content, and
the refusal of routes that point at the proxy itself.
"""

from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metaproxy.errors import InvalidRoute
from metaproxy.routes.route import MetaAddrs, Route, SelfAddresses, is_local_address
from metaproxy.routes.static import StaticRouteTable


class FromJsonTests(SynchronousTestCase):
    def reason(self, data):
        return str(self.assertRaises(InvalidRoute, Route.from_json, data))

    def test_positions_not_content(self):
        """Every parse error says where, never what the node holds."""
        cases = {  # json's column differs between CPython and PyPy
            b'{"cluster_name": "c", "token": "s3cr3t"': "invalid JSON at line 1 column ",
            b"\xffs3cr3t": "not UTF-8 at byte 0",
            b'["s3cr3t"]': "expected a JSON object",
            b'{"cluster_name": "c", "meta_addrs": "1.1.1.1:1,s3cr3t"}': "meta_addrs: address 2 of 2 is not host:port",
            b'{"cluster_name": "c", "meta_addrs": "s3cr3t:99999"}': "meta_addrs: address 1 of 1 port must be 1..65535",
            b'{"cluster_name": "c", "meta_addrs": ["1.1.1.1:1", 5]}': "meta_addrs: address 2 of 2 is not a string",
        }
        for data, expected in cases.items():
            reason = self.reason(data)
            self.assertTrue(reason.startswith(expected), (data, reason))
            self.assertNotIn("s3cr3t", reason)

    def test_deep_nesting(self):
        """Absurdly nested JSON is refused without a traceback."""
        self.reason(b"[" * 100000)


class SelfAddressesTests(SynchronousTestCase):
    def setUp(self):
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_wildcard_listener_owns_every_local_address(self):
        """Bound to 0.0.0.0, the port on any local address (and localhost) is the proxy itself."""
        guard = SelfAddresses(is_local=lambda ip: ip in ("127.0.0.1", "10.1.1.1"))
        guard.add("0.0.0.0", 34601)
        for addrs in ("10.1.1.1:34601", "localhost:34601", "10.0.0.1:34601,127.0.0.1:34601"):
            self.assertIn("own listening address", guard.problem(MetaAddrs.parse(addrs)), addrs)
        for addrs in ("10.1.1.1:34602", "10.0.0.1:34601", "meta.example:34601"):
            self.assertIsNone(guard.problem(MetaAddrs.parse(addrs)), addrs)

    def test_ipv6_wildcard_listener(self):
        """A listener on all IPv6 interfaces (which also takes IPv4) owns the port on local addresses."""
        guard = SelfAddresses(is_local=lambda ip: ip == "127.0.0.1")
        guard.add("::", 34601)
        self.assertIsNotNone(guard.problem(MetaAddrs.parse("127.0.0.1:34601")))

    def test_specific_interface(self):
        """Bound to one address, only that address with that port is the proxy."""
        guard = SelfAddresses(is_local=lambda ip: True)
        guard.add("127.0.0.1", 34601)
        self.assertIsNotNone(guard.problem(MetaAddrs.parse("127.0.0.1:34601")))
        self.assertIsNone(guard.problem(MetaAddrs.parse("10.1.1.1:34601")))

    def test_warned_once_per_route(self):
        """The first refusal of an address set is a warning naming it; later ones are silent."""
        guard = SelfAddresses()
        guard.add("0.0.0.0", 34601)
        for _ in range(5):
            guard.problem(MetaAddrs.parse("127.0.0.1:34601"))
        warnings = [e for e in self.log if e["log_level"] == LogLevel.warn]
        self.assertEqual([w["meta_addrs"] for w in warnings], ["127.0.0.1:34601"])

    def test_is_local_address(self):
        """Loopback is local; an address of another network is not (a bind fails)."""
        self.assertTrue(is_local_address("127.0.0.5"))
        self.assertFalse(is_local_address("192.0.2.77"))  # TEST-NET-1
        self.assertFalse(is_local_address("not-an-ip"))

    def test_static_route_refused(self):
        """A static route to the proxy itself fails with InvalidRoute and shows as invalid."""
        guard = SelfAddresses()
        table = StaticRouteTable(
            {"loop": Route("c", MetaAddrs.parse("127.0.0.1:34601")), "ok": Route("c", MetaAddrs.parse("127.0.0.1:1"))},
            self_addresses=guard,
        )
        self.successResultOf(table.lookup("loop"))  # not listening yet
        guard.add("0.0.0.0", 34601)
        f = self.failureResultOf(table.lookup("loop"), InvalidRoute)
        self.assertIn("loop: meta 127.0.0.1:34601 is this proxy's own listening address", str(f.value))
        self.successResultOf(table.lookup("ok"))
        states = {e["table"]: (e["state"], bool(e["error"])) for e in table.describe()}
        self.assertEqual(states, {"loop": ("invalid", True), "ok": ("ok", False)})


class SelfLoopServiceTests(TestCase):
    @defer.inlineCallbacks
    def test_service_registers_its_listener(self):
        """build_service tells the route table the proxy's listening port: a route to it is answered retryably."""
        from twisted.internet import reactor

        from metaproxy.app import build_service
        from metaproxy.config import parse_config
        from metaproxy.testing.net import free_port
        from metaproxy.testing.pegasus_client import connect_client
        from metaproxy.wire import codes, querycfg

        port = free_port()
        config = parse_config(
            f"listen: tcp:{port}:interface=127.0.0.1\nadmin: {{listen: 'tcp:0:interface=127.0.0.1'}}\n"
            f"metric: {{type: none}}\nroutes:\n  loop: {{cluster_name: c, meta_addrs: '127.0.0.1:{port}'}}\n"
        )
        service = build_service(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        yield service.getServiceNamed("proxy").when_listening()
        client = yield connect_client(reactor, "127.0.0.1", port)
        self.addCleanup(client.transport.loseConnection)
        response = yield client.query("loop")
        self.assertEqual(querycfg.peek_result(response.body).err, codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual(service.resolver.in_flight(), 0)
