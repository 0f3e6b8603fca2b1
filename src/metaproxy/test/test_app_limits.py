# -*- test-case-name: metaproxy.test.test_app_limits -*-
"""
The resource limits from the config reach the running parts: the client
listener (buffers, frame timeout, per-peer cap, backlog), the meta
connections (reply cap), the admin listener, and the metrics.
"""

from prometheus_client import generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from metaproxy.ops.admin import LimitedSite
from metaproxy.app import build_service
from metaproxy.config import ConfigError, parse_config
from metaproxy.ops.lifecycle import with_backlog

ROUTES = "routes:\n  t: {cluster_name: c, meta_addrs: '127.0.0.1:1'}\nmetric: {type: prometheus}\n"


class ConfigTests(SynchronousTestCase):
    def test_defaults(self):
        """Every limit has a bounded default; idle client connections are still never closed."""
        lim = parse_config(ROUTES).limits
        self.assertEqual(
            (lim.max_buffered_bytes_per_connection, lim.max_buffered_bytes_total, lim.frame_timeout,
             lim.max_connections_per_peer, lim.max_reply_bytes, lim.backlog, lim.idle_timeout),
            (1 << 20, 128 << 20, 10.0, 1000, 16 << 20, 4096, 0.0),
        )
        admin = parse_config(ROUTES).admin
        self.assertEqual((admin.max_connections, admin.idle_timeout), (64, 30.0))

    def test_bad_values_are_located(self):
        """Out-of-range limits are reported with their place in the file."""
        e = self.assertRaises(
            ConfigError, parse_config,
            ROUTES + "limits:\n  frame_timeout: -1\n  max_reply_bytes: 10\n  backlog: 0\n"
            "  max_buffered_bytes_per_connection: 100\nadmin:\n  idle_timeout: 0\n", "l.yaml",
        )
        text = str(e)
        for key in ("limits.frame_timeout", "limits.max_reply_bytes", "limits.backlog",
                    "limits.max_buffered_bytes_per_connection", "admin.idle_timeout"):
            self.assertIn(f"@ $.{key}", text)
        self.assertRegex(text, r"l\.yaml:5:\d+: must be 0\.\.86400")


class WiringTests(SynchronousTestCase):
    def build(self, extra=""):
        config = parse_config(
            "listen: tcp:34999:interface=127.0.0.1\n" + ROUTES + extra
        )
        return build_service(config, MemoryReactorClock(), fatal=self.fail)

    def test_limits_reach_the_parts(self):
        """The factory, the meta pools, the listener's backlog and the admin site get the configured limits."""
        top = self.build(
            "limits:\n  max_buffered_bytes_per_connection: 200000\n  max_buffered_bytes_total: 9000000\n"
            "  frame_timeout: 3.5\n  max_connections_per_peer: 7\n  max_reply_bytes: 5000000\n  backlog: 777\n"
            "admin:\n  max_connections: 9\n  idle_timeout: 12.0\n"
        )
        f = top.factory
        self.assertEqual(
            (f.max_buffered_bytes_per_connection, f.budget.limit, f.frame_timeout, f.max_connections_per_peer),
            (200000, 9000000, 3.5, 7),
        )
        self.assertEqual(top.pools.max_reply_bytes, 5000000)
        proxy = top.getServiceNamed("proxy")
        self.assertEqual(proxy.endpoint._backlog, 777)
        admin = top.getServiceNamed("admin").factory
        self.assertIsInstance(admin, LimitedSite)
        self.assertEqual((admin.max_connections, admin.wrappedFactory.timeOut), (9, 12.0))

    def test_default_backlog(self):
        """Without a backlog in the listen string, the listener asks for 4096 (not Twisted's 50)."""
        self.assertEqual(self.build().getServiceNamed("proxy").endpoint._backlog, 4096)

    def test_backlog_in_the_string_wins(self):
        """A backlog the listen string sets is kept."""
        self.assertEqual(with_backlog("tcp:1:backlog=10", 4096), "tcp:1:backlog=10")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0", 4096), "systemd:domain=INET:index=0")
        self.assertEqual(with_backlog("tcp6:1:interface=\\:\\:1", 8), "tcp6:1:interface=\\:\\:1:backlog=8")

    def test_metrics_exported(self):
        """Refusals by reason, frame timeouts and buffered bytes by direction are in the exposition."""
        top = self.build("limits:\n  max_connections_per_peer: 1\n")
        factory = top.factory
        for _ in range(2):
            proto = factory.buildProtocol(None)
            transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", "10.0.0.1", 1))
            transport.protocol = proto
            proto.makeConnection(transport)
        proto = next(iter(factory._connections))
        proto.dataReceived(b"THFT\x00\x00\x00\x00")
        text = generate_latest(top.metrics.registry).decode()
        self.assertIn('metaproxy_client_connections_refused_total{reason="per_peer"} 1.0', text)
        self.assertIn('metaproxy_client_connections_refused_total{reason="limit"} 0.0', text)
        self.assertIn("metaproxy_client_frame_timeouts_total 0.0", text)
        self.assertIn('metaproxy_buffered_bytes{direction="in"} 8.0', text)
        self.assertIn('metaproxy_buffered_bytes{direction="out"} 0.0', text)
        self.assertIn("# TYPE metaproxy_buffered_bytes gauge", text)
