"""
Kerberos end to end, against a real MIT KDC (L{metaproxy.testing.kdc}):
the RFC 4752 mechanism on both ends, metaproxy negotiating with a simulated
cluster that has C{mandatory_auth}, and metaproxy answering clients'
negotiations under C{security.clients.mandatory} with an allow-list.
"""

import json

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from metaproxy.app import build_service
from metaproxy.backend.connection import MetaConnection
from metaproxy.config import parse_config
from metaproxy.security.credentials import KerberosCredentials, memory_ccache
from metaproxy.security.sasl import (
    LAYER_INTEGRITY, LAYER_NONE, GssapiClient, GssapiServer, SaslError, acquire_acceptor, acquire_initiator,
    layer_message,
)
from metaproxy.security.service import KERBEROS_THREADS
from metaproxy.security.upstream import UpstreamNegotiator, thread_runner
from metaproxy.sim.model import SimModel
from metaproxy.sim.server import SimulatedCluster
from metaproxy.testing import kdc as kdctest
from metaproxy.testing.pegasus_client import connect_client
from metaproxy.wire import codes, querycfg

SERVICE_HOST = "meta.test"


class _Realm:
    """Principals for one test: the metas' service key, metaproxy, two users."""

    def __init__(self, testcase):
        self.kdc = kdc = kdctest.shared_kdc()
        kdctest.use_realm(testcase, kdc)
        # One service key per test (fresh kvno), and fresh client names.
        self.service, self.service_keytab = kdc.add_principal(f"{kdc.unique('pegasus')}/{SERVICE_HOST}")
        self.service_name = self.service.split("/")[0]
        self.proxy, self.proxy_keytab = kdc.add_principal(kdc.unique("metaproxy"))
        self.alice, self.alice_keytab = kdc.add_principal(kdc.unique("alice"))
        self.bob, self.bob_keytab = kdc.add_principal(kdc.unique("bob"))


def _exchange(client, server):
    """Run the mechanism on both ends until the server succeeds; @return: the principal."""
    token = client.start()
    for _ in range(8):
        done, value = server.step(token)
        if done:
            return value
        token = client.step(value)
    raise AssertionError("no success after 8 rounds")


class MechanismTests(TestCase):
    timeout = 60

    def setUp(self):
        self.realm = _Realm(self)
        self.creds, lifetime = acquire_initiator(self.realm.alice, self.realm.alice_keytab, memory_ccache())
        self.acceptor = acquire_acceptor(self.realm.service_keytab)

    def test_full_exchange_with_layer_step(self):
        """Context, AP-REP, then the wrapped layer offer and choice: the server learns the client principal."""
        client = GssapiClient(self.realm.service_name, SERVICE_HOST, self.creds)
        server = GssapiServer(self.acceptor)
        self.assertEqual(_exchange(client, server), self.realm.alice)
        self.assertTrue(client.done and client.established())

    def test_client_refuses_layer_it_does_not_support(self):
        """A server offering only integrity is refused (Pegasus never uses a layer)."""
        client = GssapiClient(self.realm.service_name, SERVICE_HOST, self.creds)
        server = GssapiServer(self.acceptor)
        done, rep = server.step(client.start())
        client.step(rep)
        offer = server._ctx.wrap(layer_message(LAYER_INTEGRITY, 65536), False).message
        self.assertRaises(SaslError, client.step, offer)

    def test_server_refuses_authzid_of_someone_else(self):
        """A client asking to act as another user fails."""
        client = GssapiClient(self.realm.service_name, SERVICE_HOST, self.creds, authzid="root")
        server = GssapiServer(self.acceptor)
        with self.assertRaises(SaslError) as caught:
            _exchange(client, server)
        self.assertIn("may not act as 'root'", str(caught.exception))

    def test_server_refuses_layer_choice(self):
        """A client choosing a layer that was not offered fails."""
        client = GssapiClient(self.realm.service_name, SERVICE_HOST, self.creds)
        server = GssapiServer(self.acceptor)
        done, rep = server.step(client.start())
        done, offer = server.step(client.step(rep))
        self.assertEqual(client._ctx.unwrap(offer).message, layer_message(LAYER_NONE))
        bad = client._ctx.wrap(layer_message(LAYER_INTEGRITY, 4096), False).message
        self.assertRaises(SaslError, server.step, bad)

    def test_wrong_service_key(self):
        """A ticket for a service whose key the acceptor lacks fails with the library's reason."""
        other, other_keytab = self.realm.kdc.add_principal(f"{self.realm.kdc.unique('other')}/{SERVICE_HOST}")
        client = GssapiClient(other.split("/")[0], SERVICE_HOST, self.creds)
        server = GssapiServer(self.acceptor)
        self.assertRaises(SaslError, server.step, client.start())


def _config(realm, routes, security, simulator=""):
    return parse_config(
        "listen: tcp:0:interface=127.0.0.1\nadmin: {listen: 'tcp:0:interface=127.0.0.1'}\n"
        "metric: {type: prometheus}\ntimeouts: {client_default: 2.0, connect: 1.0}\n"
        f"routes: {routes}\nsecurity: {security}\n{simulator}"
    )


class _Logs:
    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]


class _ProxyBase(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def start_proxy(self, security, routes=None):
        if routes is None:
            routes = f"{{temp: {{cluster_name: secured, meta_addrs: '{self.sim.meta_addrs()}'}}}}"
        self.top = build_service(_config(self.realm, routes, security), reactor)
        self.top.startService()
        self.addCleanup(self.top.stopService)
        port = yield self.top.getServiceNamed("proxy").when_listening()
        self.port = port.getHost().port

    def start_sim(self, **auth):
        self.sim = SimulatedCluster(reactor, ("127.0.0.1:0", "127.0.0.1:0"), SimModel(), cluster_name="secured",
                                    **auth)
        self.sim.create_table("temp", 8, 3)
        self.sim.startService()
        self.addCleanup(self.sim.stopService)

    @defer.inlineCallbacks
    def query(self, table="temp"):
        client = yield connect_client(reactor, "127.0.0.1", self.port, "go")
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        response = yield client.query(table)
        return response

    def sample(self, name, **labels):
        return self.top.metrics.registry.get_sample_value(name, labels)

    def routes_page(self):
        admin = self.top.getServiceNamed("admin")
        root = admin.factory.wrappedFactory.resource
        request = DummyRequest([b"routes"])
        return json.loads(getChildForRequest(root, request).render(request))


class UpstreamTests(_ProxyBase):
    def setUp(self):
        self.realm = _Realm(self)
        self.logs = _Logs(self)
        self.start_sim(enable_auth=True, mandatory_auth=True, keytab=self.realm.service_keytab)

    def security(self, keytab):
        return (f"{{principal: {self.realm.proxy}, keytab: '{keytab}', service_name: {self.realm.service_name},"
                f" service_fqdn: {SERVICE_HOST}}}")

    @defer.inlineCallbacks
    def test_query_through_mandatory_auth(self):
        """
        metaproxy negotiates with the mandatory_auth metas and its query
        succeeds; the metas counted the authentications, /routes and the
        metrics show the cluster authenticated.
        """
        yield self.start_proxy(self.security(self.realm.proxy_keytab))
        response = yield self.query()
        self.assertEqual(response.rpc_error, codes.ERR_OK)
        resp = querycfg.decode_result(response.body)
        self.assertEqual((resp.err, resp.app_id, resp.partition_count), ("ERR_OK", 3, 8))
        self.assertGreaterEqual(self.sim.auth_counts()["authenticated"], 1)
        self.assertEqual(self.sim.auth_counts()["refused_unauthenticated"], 0)
        [entry] = self.routes_page()["routes"]
        self.assertEqual(entry["backend"]["auth"]["state"], "authenticated")
        self.assertEqual(entry["backend"]["auth"]["credentials"]["principal"], self.realm.proxy)
        self.assertGreaterEqual(self.sample("metaproxy_upstream_auth_ok_total", cluster_name="secured"), 1)
        self.assertGreater(self.sample("metaproxy_kerberos_credential_seconds_left"), 0)
        pool = self.top.security.pool  # GSS-API calls ran in Kerberos's own bounded pool
        self.assertEqual((pool.started, pool.max, pool.name), (True, KERBEROS_THREADS, "metaproxy-kerberos"))
        self.assertNotEqual(pool, reactor.getThreadPool())

    @defer.inlineCallbacks
    def test_without_keytab_fails_clearly(self):
        """
        Without the keytab the query gets an error answer within the
        client's budget (no hang), a log line says why, and the failure is
        counted per cluster; no unauthenticated query reached the metas.
        """
        yield self.start_proxy(self.security("/nonexistent/metaproxy.keytab"))
        started = reactor.seconds()
        response = yield self.query()
        self.assertLess(reactor.seconds() - started, 10)
        self.assertNotEqual(
            (response.rpc_error, response.rpc_error == codes.ERR_OK and querycfg.decode_result(response.body).err),
            (codes.ERR_OK, "ERR_OK"))
        lines = self.logs.lines()
        self.assertTrue(
            any("Kerberos negotiation with cluster secured failed" in line
                and "keytab /nonexistent/metaproxy.keytab does not exist" in line for line in lines), lines)
        self.assertGreaterEqual(self.sample("metaproxy_upstream_auth_failures_total", cluster_name="secured"), 1)
        self.assertGreaterEqual(self.sample("metaproxy_kerberos_credential_fetches_total", outcome="failed"), 1)
        self.assertEqual(self.sim.auth_counts()["refused_unauthenticated"], 0)
        [entry] = self.routes_page()["routes"]
        self.assertEqual(entry["backend"]["auth"]["state"], "failed")

    @defer.inlineCallbacks
    def test_renegotiates_after_reconnect(self):
        """When a meta drops the connection, the new connection negotiates again before it is used."""
        yield self.start_proxy(self.security(self.realm.proxy_keytab))
        response = yield self.query()
        self.assertEqual(response.rpc_error, codes.ERR_OK)
        before = self.sim.auth_counts()["authenticated"]
        for meta in self.sim.servers:
            for proto in list(meta.factory.protocols):
                proto.transport.abortConnection()
        response = yield self.query()
        while self.sim.auth_counts()["authenticated"] <= before:  # the reconnect may be still negotiating
            yield deferLater(0.05)
        self.assertGreater(self.sim.auth_counts()["authenticated"], before)
        self.assertEqual(self.sim.auth_counts()["refused_unauthenticated"], 0)


def deferLater(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class ClientSideTests(_ProxyBase):
    """metaproxy's listener with security.clients (mandatory, allow-list) before an unsecured cluster."""

    @defer.inlineCallbacks
    def setUp(self):
        self.realm = _Realm(self)
        self.logs = _Logs(self)
        self.start_sim()
        # The proxy owns the service principal its clients ask for.
        keytab = self.realm.service_keytab
        alice_user = self.realm.alice.split("@")[0]
        yield self.start_proxy(f"{{keytab: '{keytab}', clients: {{enabled: true, mandatory: true,"
                               f" allow: [{alice_user}]}}}}")

    def connection(self, principal, keytab):
        """A client speaking the real exchange: a meta connection that negotiates as C{principal}."""
        creds = KerberosCredentials(reactor, principal, keytab, thread_runner(reactor))
        negotiator = UpstreamNegotiator(reactor, "proxy", creds, thread_runner(reactor),
                                        service_name=self.realm.service_name, service_fqdn=SERVICE_HOST, timeout=10)
        conn = MetaConnection(reactor, "127.0.0.1", self.port, negotiator=negotiator)
        conn.start()
        self.addCleanup(conn.stop)
        self.addCleanup(creds.stop)
        return conn, negotiator

    @defer.inlineCallbacks
    def test_negotiating_client_served(self):
        """A client that negotiates GSSAPI as an allowed principal gets SASL_SUCC and then its answer."""
        conn, negotiator = self.connection(self.realm.alice, self.realm.alice_keytab)
        response = yield conn.call(querycfg.QUERY_CFG, querycfg.encode_args("temp"), timeout=10)
        self.assertEqual(response.rpc_error, codes.ERR_OK)
        self.assertEqual(querycfg.decode_result(response.body).app_id, 3)
        self.assertEqual(negotiator.state, "authenticated")
        self.assertEqual(self.top.security.handler.counts["authenticated"], 1)
        self.assertEqual(self.sample("metaproxy_client_auth_total", outcome="authenticated"), 1)

    @defer.inlineCallbacks
    def test_unauthenticated_client_refused(self):
        """A client that queries without negotiating is closed without an answer, as a mandatory_auth meta does."""
        client = yield connect_client(reactor, "127.0.0.1", self.port, "go")
        d = client.query("temp")
        yield self.assertFailure(d, Exception)
        yield client.closed
        self.assertEqual(self.top.security.handler.counts["refused_unauthenticated"], 1)

    @defer.inlineCallbacks
    def test_principal_outside_allow_list_refused(self):
        """bob authenticates, but is not on the allow-list: his session is closed instead of SASL_SUCC."""
        conn, negotiator = self.connection(self.realm.bob, self.realm.bob_keytab)
        d = conn.call(querycfg.QUERY_CFG, querycfg.encode_args("temp"), timeout=10)
        yield self.assertFailure(d, Exception)
        self.assertEqual(negotiator.state, "failed")
        self.assertEqual(self.top.security.handler.counts["not_allowed"], 1)
        self.assertTrue(any("refused Kerberos principal " + self.realm.bob in line for line in self.logs.lines()))


class CommandLineTests(TestCase):
    """metaproxy routes switch validates a target whose metas have mandatory_auth with the config's principal."""

    timeout = 60

    @defer.inlineCallbacks
    def test_query_table_negotiates(self):
        """query_table with the security config gets the answer; without it the same query fails."""
        from metaproxy.cli.metaquery import query_table
        from metaproxy.errors import BackendUnavailable
        from metaproxy.routes.route import MetaAddrs

        realm = _Realm(self)
        sim = SimulatedCluster(reactor, ("127.0.0.1:0",), SimModel(), cluster_name="secured", enable_auth=True,
                               mandatory_auth=True, keytab=realm.service_keytab)
        sim.create_table("temp", 4, 7)
        sim.startService()
        self.addCleanup(sim.stopService)
        security = _config(realm, "{t: {cluster_name: x, meta_addrs: '127.0.0.1:1'}}",
                           f"{{principal: {realm.proxy}, keytab: '{realm.proxy_keytab}',"
                           f" service_name: {realm.service_name}, service_fqdn: {SERVICE_HOST}}}").security
        addrs = MetaAddrs.parse(sim.meta_addrs())
        resp = yield query_table(reactor, addrs, "temp", 5.0, security=security, cluster_name="secured")
        self.assertEqual((resp.err, resp.app_id), ("ERR_OK", 7))
        yield self.assertFailure(query_table(reactor, addrs, "temp", 1.0), BackendUnavailable)
