# -*- test-case-name: metaproxy.test.test_wire_codes -*-
"""
Tests for L{metaproxy.wire.codes}: the error names metaproxy may send.
"""

from twisted.trial.unittest import SynchronousTestCase

from metaproxy.wire import codes


class CodesTests(SynchronousTestCase):
    def test_rpc_level_subset(self):
        """The rpc-level names are exactly the safe list of pegasus-protocol.md 3.4, all client-safe."""
        self.assertEqual(
            codes.RPC_LEVEL_SAFE,
            {"ERR_OK", "ERR_HANDLER_NOT_FOUND", "ERR_TIMEOUT", "ERR_SERVICE_NOT_ACTIVE", "ERR_BUSY",
             "ERR_INVALID_PARAMETERS", "ERR_INVALID_DATA", "ERR_UNKNOWN"},
        )
        self.assertTrue(codes.RPC_LEVEL_SAFE <= codes.CLIENT_SAFE)

    def test_newer_codes_not_safe(self):
        """Codes Java 1.x does not know are not client-safe and are replaced."""
        for name in ("ERR_ACL_DENY", "ERR_UNAUTHENTICATED", "ERR_RETRY_EXHAUSTED", "ERR_DISK_INSUFFICIENT"):
            self.assertNotIn(name, codes.CLIENT_SAFE)
            self.assertEqual(codes.client_safe(name), codes.ERR_UNKNOWN)

    def test_known_codes_pass(self):
        """Client-safe names pass through client_safe unchanged; the fallback is configurable."""
        self.assertEqual(codes.client_safe("ERR_ZOOKEEPER_OPERATION"), "ERR_ZOOKEEPER_OPERATION")
        self.assertEqual(codes.client_safe("ERR_NEW", codes.ERR_TIMEOUT), codes.ERR_TIMEOUT)

    def test_app_level_names_safe(self):
        """Every query_cfg err a meta can produce (section 4.5) except ACL_DENY is client-safe."""
        for name in (codes.ERR_OK, codes.ERR_FORWARD_TO_OTHERS, codes.ERR_SERVICE_NOT_ACTIVE,
                     codes.ERR_OBJECT_NOT_FOUND, codes.ERR_BUSY_CREATING,
                     codes.ERR_BUSY_DROPPING, codes.ERR_UNKNOWN):
            self.assertIn(name, codes.CLIENT_SAFE)

    def test_java_171_unknown_names_mapped(self):
        """
        The 11 names Java 1.7.1-1.8.0 cannot parse are not client-safe and
        each maps to a client-safe name; ERR_UNDER_RECOVERY is retryable.
        """
        unknown = {"ERR_APP_DROPPED", "ERR_DIR_NOT_EMPTY", "ERR_FS_INTERNAL", "ERR_IGNORE_BAD_DATA",
                   "ERR_INJECTED", "ERR_LEARNER_NOT_FOUND", "ERR_MOCK_INTERNAL", "ERR_NETWORK_FAILURE",
                   "ERR_OPERATION_DISABLED", "ERR_SERVICE_ALREADY_EXIST", "ERR_UNDER_RECOVERY"}
        self.assertEqual(set(codes.CLIENT_MAPPING), unknown)
        for name in unknown:
            self.assertNotIn(name, codes.CLIENT_SAFE)
            self.assertIn(codes.client_safe(name), codes.CLIENT_SAFE)
        self.assertEqual(codes.client_safe(codes.ERR_UNDER_RECOVERY), codes.ERR_SERVICE_NOT_ACTIVE)
        self.assertEqual(len(codes.CLIENT_SAFE), len(set(codes._RDSN_CODES_TO_ZOOKEEPER)) - 11)
